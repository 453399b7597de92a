"""Access control at association time, against dcmtk's echoscu and a held pynetdicom association."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from config.settings import load_settings
from gateway.server import Gateway
from tests.conftest import free_port, need_tool


def start(tmp_path: Path, peers: list[dict]) -> Gateway:
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={"port": free_port(), "peers": peers},
        metrics={"port": 0},
    )
    gw = Gateway(settings)
    gw.start()
    return gw


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    gw = start(
        tmp_path,
        [
            {"ae_title": "PACS", "hosts": ["127.0.0.1", "::1"], "max_associations": 1},
            {"ae_title": "FARAWAY", "hosts": ["10.20.30.0/24"]},
        ],
    )
    yield gw
    gw.stop()


def echo(gw: Gateway, calling: str) -> subprocess.CompletedProcess:
    argv = [
        need_tool("echoscu"),
        "-v",
        "-aet",
        calling,
        "-aec",
        "PEDIFACE",
        "127.0.0.1",
        str(gw.settings.dicom.port),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_listed_peer_from_its_address_is_accepted(gateway: Gateway) -> None:
    result = echo(gateway, "PACS")
    assert result.returncode == 0, result.stderr


def test_unknown_calling_ae_is_rejected(gateway: Gateway) -> None:
    result = echo(gateway, "INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_listed_ae_title_from_the_wrong_address_is_rejected(gateway: Gateway) -> None:
    result = echo(gateway, "FARAWAY")  # allowed from 10.20.30.0/24 only; we come from 127.0.0.1
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stderr


def test_too_many_associations_from_one_peer_is_a_transient_rejection(gateway: Gateway) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", gateway.settings.dicom.port, ae_title="PEDIFACE")
    assert held.is_established
    try:
        result = echo(gateway, "PACS")
        assert result.returncode != 0
        assert "Local Limit Exceeded" in result.stderr and "Transient" in result.stderr
    finally:
        held.release()
    assert echo(gateway, "PACS").returncode == 0  # the slot is free again


def test_unresolvable_peer_host_is_a_start_up_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not resolve"):
        start(tmp_path, [{"ae_title": "PACS", "hosts": ["no-such-host.invalid"]}])
