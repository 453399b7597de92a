"""The Storage SCP: accepts instances and makes them durable before answering.

Handlers follow pynetdicom's event-handler shape: plain functions bound with
``(event, handler, [spool])``. The C-STORE handler never talks to the broker;
series are handed over when the sealer finds them complete.

Status codes (PS3.4 Annex B.2.3 and pynetdicom's ``doc_handle_store``):
``0x0000`` stored (or already stored), ``0xA700`` out of resources (spool not
writable), ``0xA900`` data set does not match the SOP class (required UIDs or
pixel data missing), ``0xC210`` cannot understand (undecodable data set).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from io import BytesIO

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import sop_class as sc
from pynetdicom.events import Event

from common.audit import JsonLines, keyed_hash
from common.logs import get_logger
from config.sections import DicomSettings, TlsSettings
from gateway.access import AccessPolicy
from gateway.limits import LimitExceeded, Limits, bound_socket, check_encapsulation, check_image_size, inflate
from gateway.status import INSTANCES
from spool.manifest import is_valid_uid, series_key, study_key
from spool.store import Spool, SpoolError

log = get_logger("pediface.gateway.scp")

#: The storage SOP classes pediface accepts; anything else is refused at association time.
ACCEPTED_SOP_CLASSES: tuple[UID, ...] = (
    sc.MRImageStorage,
    sc.EnhancedMRImageStorage,
    sc.EnhancedMRColorImageStorage,
    sc.LegacyConvertedEnhancedMRImageStorage,
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.LegacyConvertedEnhancedCTImageStorage,
    sc.SecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameSingleBitSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


class RejectedInstance(Exception):
    """An instance the gateway will not spool, with the status to answer and the reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


def build_ae(settings: DicomSettings) -> AE:
    """An AE that accepts C-ECHO and C-STORE of :data:`ACCEPTED_SOP_CLASSES` in every transfer syntax."""
    ae = AE(ae_title=settings.ae_title)
    ae.require_called_aet = settings.require_called_ae_title
    ae.maximum_pdu_size = settings.max_pdu_bytes
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout_s
    ae.add_supported_context(sc.Verification)
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    return ae


def tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """Server-side TLS context: TLS 1.2+, client certificates required when a CA is given."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=tls.certificate, keyfile=tls.private_key)
        if tls.client_ca is not None:
            context.load_verify_locations(cafile=tls.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"DICOM TLS files cannot be used: {exc}") from exc
    return context


def check_instance(
    ds: Dataset, transfer_syntax: UID, affected_sop_uid: str | None, limits: Limits | None = None
) -> tuple[str, str, str]:
    """``(study, series, sop)`` UIDs of an instance worth spooling, or :class:`RejectedInstance`.

    Only what the spool and the sealer need is checked here, cheaply, with the size and structure
    bounds of :mod:`gateway.limits`; the worker checks everything else and quarantines what it
    cannot process.
    """
    uids = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        value = ds.get(keyword)
        if not is_valid_uid(value):
            shown = "missing" if value in (None, "") else "not a valid UID"
            raise RejectedInstance(DATASET_DOES_NOT_MATCH, "input.uid", f"{keyword} is {shown}")
        uids.append(str(value))
    if affected_sop_uid and uids[2] != affected_sop_uid:
        raise RejectedInstance(
            DATASET_DOES_NOT_MATCH,
            "input.uid",
            "SOPInstanceUID in the data set differs from the C-STORE request's Affected SOP Instance UID",
        )
    if "PixelData" not in ds:
        raise RejectedInstance(DATASET_DOES_NOT_MATCH, "input.no_pixels", "the image has no Pixel Data")
    _check_native_pixel_length(ds, transfer_syntax)
    try:
        check_image_size(ds, (limits or Limits()).max_image_pixels)
        check_encapsulation(ds, transfer_syntax)
    except LimitExceeded as exceeded:
        raise RejectedInstance(DATASET_DOES_NOT_MATCH, exceeded.code, exceeded.reason) from exceeded
    return uids[0], uids[1], uids[2]


def _check_native_pixel_length(ds: Dataset, transfer_syntax: UID) -> None:
    """Uncompressed Pixel Data must hold Rows x Columns x Samples x Frames values (PS3.5 8.1.1)."""
    if transfer_syntax.is_compressed:
        return
    try:
        expected_bits = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel") or 1)
            * int(ds.get("NumberOfFrames") or 1)
            * int(ds.BitsAllocated)
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise RejectedInstance(
            DATASET_DOES_NOT_MATCH, "input.image_pixel", "Rows, Columns or Bits Allocated missing or invalid"
        ) from exc
    actual = len(ds.PixelData)
    if actual < (expected_bits + 7) // 8:
        raise RejectedInstance(
            DATASET_DOES_NOT_MATCH,
            "input.pixels_truncated",
            f"Pixel Data holds {actual} bytes, {(expected_bits + 7) // 8} expected from the image attributes",
        )


def handle_echo(event: Event) -> int:
    log.info("c_echo", calling_ae=event.assoc.requestor.ae_title, peer=event.assoc.requestor.address)
    return SUCCESS


@dataclass(frozen=True)
class ReceiptAudit:
    """One audit line per C-STORE, naming the instance by a keyed hash of its UID."""

    lines: JsonLines
    key: bytes

    def record(
        self, event: Event, outcome: str, series: str = "", sop_uid: str = "", reason: str = ""
    ) -> None:
        try:
            self.lines.write(
                "instance_received",
                outcome=outcome,
                calling_ae=event.assoc.requestor.ae_title,
                peer=event.assoc.requestor.address,
                series=series,
                instance=keyed_hash(sop_uid, self.key) if sop_uid else "",
                reason=reason,
            )
        except OSError as exc:  # the audit trail must not refuse instances; the log says it failed
            log.error("audit_write_failed", error=str(exc))


def decoded_dataset(event: Event, limits: Limits) -> Dataset:
    """The C-STORE data set; a Deflated one is inflated within ``limits.max_inflated_bytes`` first
    (pynetdicom's own decoding would inflate it whole, however large)."""
    transfer_syntax = event.context.transfer_syntax
    if not transfer_syntax.is_deflated:
        return event.dataset
    try:
        inflated = inflate(event.encoded_dataset(include_meta=False), limits.max_inflated_bytes)
    except LimitExceeded as exceeded:
        raise RejectedInstance(DATASET_DOES_NOT_MATCH, exceeded.code, exceeded.reason) from exceeded
    ds = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
    ds.set_original_encoding(False, True)
    return ds


def handle_store(event: Event, spool: Spool, audit: ReceiptAudit, limits: Limits | None = None) -> int:
    """Spool one instance durably, then answer; never raise into pynetdicom."""
    calling_ae = event.assoc.requestor.ae_title
    try:
        data = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # noqa: BLE001 - pynetdicom could not even re-encode the bytes
        log.error("c_store_unreadable", calling_ae=calling_ae, error=str(exc))
        INSTANCES.labels("rejected").inc()
        audit.record(event, "rejected", reason="unreadable")
        return CANNOT_UNDERSTAND
    try:
        try:
            ds = decoded_dataset(event, limits or Limits())
            # Force the lazy parser over the elements we need; a corrupt stream fails here.
            study_uid, series_uid, sop_uid = check_instance(
                ds, event.context.transfer_syntax, event.request.AffectedSOPInstanceUID, limits
            )
        except RejectedInstance:
            raise
        except Exception as exc:
            raise RejectedInstance(
                CANNOT_UNDERSTAND,
                "input.undecodable",
                f"the data set cannot be decoded ({type(exc).__name__}: {str(exc)[:200]})",
            ) from exc
    except RejectedInstance as rejected:
        INSTANCES.labels("rejected").inc()
        audit.record(event, "rejected", reason=rejected.code)
        try:
            manifest = spool.quarantine_rejected(data, calling_ae, rejected.reason, rejected.code)
        except OSError as exc:
            log.error(
                "c_store_reject_not_kept", calling_ae=calling_ae, reason=rejected.reason, error=str(exc)
            )
        else:
            log.warning(
                "c_store_rejected",
                calling_ae=calling_ae,
                status=f"0x{rejected.status:04X}",
                reason=rejected.reason,
                quarantine=manifest.job_id,
            )
        return rejected.status
    key = series_key(calling_ae, study_uid, series_uid)
    try:
        stored = spool.store_instance(key, calling_ae, sop_uid, data, study_key(calling_ae, study_uid))
    except SpoolError as exc:
        log.error("c_store_spool_failed", calling_ae=calling_ae, series=key, error=str(exc))
        INSTANCES.labels("spool_error").inc()
        audit.record(event, "spool_error", key, sop_uid)
        return OUT_OF_RESOURCES
    outcome = "stored" if stored else "duplicate"
    INSTANCES.labels(outcome).inc()
    audit.record(event, outcome, key, sop_uid)
    log.debug("c_store", calling_ae=calling_ae, series=key, duplicate=not stored, bytes=len(data))
    return SUCCESS


def handlers(spool: Spool, access: AccessPolicy, audit: ReceiptAudit, limits: Limits | None = None) -> list:
    limits = limits or Limits()
    return [
        (evt.EVT_CONN_OPEN, bound_socket, [limits.network_timeout_s]),
        (evt.EVT_REQUESTED, access.on_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [spool, audit, limits]),
    ]
