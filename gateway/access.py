"""Who may send: calling AE titles bound to source addresses, with per-peer limits.

Checked when an association is requested (pynetdicom's ``EVT_REQUESTED``), so a
refused peer gets an A-ASSOCIATE-RJ with the standard's reason (PS3.8 9.3.4)
before it can send anything:

* calling AE title not in the list, or the right AE title from the wrong
  address: rejected-permanent, service-user, "calling-AE-title-not-recognized";
* the peer already holds its ``max_associations``: rejected-transient,
  service-provider (presentation), "local-limit-exceeded" — it may retry later.

With no peers configured every calling AE title is accepted (the laptop
default); a site lists its PACS and scanners.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from pynetdicom.events import Event

from common.logs import get_logger
from config.sections import PeerSettings
from gateway.status import ASSOCIATIONS

log = get_logger("pediface.gateway.access")

CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Peer:
    ae_title: str
    networks: tuple[Network, ...]
    max_associations: int

    def allows(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)


def _networks(host: str) -> list[Network]:
    """An address, a CIDR network or a host name (resolved once, at start-up)."""
    try:
        return [ipaddress.ip_network(host, strict=False)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ValueError(f"peer host {host!r} does not resolve: {exc}") from exc
    return [ipaddress.ip_network(info[4][0]) for info in infos]


class AccessPolicy:
    """The allow-list of peers; an empty list allows everyone."""

    def __init__(self, peers: list[PeerSettings]) -> None:
        self.peers: dict[str, Peer] = {}
        for peer in peers:
            networks = tuple(net for host in peer.hosts for net in _networks(host))
            self.peers[peer.ae_title] = Peer(peer.ae_title, networks, peer.max_associations)

    def decide(self, calling_ae: str, address: str, open_associations: int) -> tuple[int, int, int] | None:
        """``None`` to accept, else the A-ASSOCIATE-RJ (result, source, reason)."""
        if not self.peers:
            return None
        peer = self.peers.get(calling_ae.strip())
        if peer is None or not peer.allows(address):
            return CALLING_AE_NOT_RECOGNIZED
        if open_associations >= peer.max_associations:
            return LOCAL_LIMIT_EXCEEDED
        return None

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        calling_ae = assoc.requestor.primitive.calling_ae_title.strip()
        address = assoc.requestor.address
        others = sum(
            1
            for other in assoc.ae.active_associations
            if other is not assoc and other.is_acceptor and other.requestor.ae_title.strip() == calling_ae
        )
        rejection = self.decide(calling_ae, address, others)
        if rejection is None:
            ASSOCIATIONS.labels("accepted").inc()
            return
        ASSOCIATIONS.labels("rejected").inc()
        why = "limit" if rejection == LOCAL_LIMIT_EXCEEDED else "unknown peer"
        log.warning("association_rejected", calling_ae=calling_ae, peer=address, why=why, open=others)
        assoc.acse.send_reject(*rejection)
        # As pynetdicom's own negotiation does after a rejection: let the DUL send the
        # A-ASSOCIATE-RJ and wind down before the server closes the socket.
        assoc.kill()
