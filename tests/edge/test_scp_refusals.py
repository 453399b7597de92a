"""Every refusal of the Storage SCP, driven by a real association against a real gateway.

A :class:`gateway.server.Gateway` runs in this process on loopback with its real broker (the
embedded folder broker: no ``broker.url``); a pynetdicom SCU sends instances as raw files
(``STORE_SEND_CHUNKED_DATASET``: the bytes go on the wire exactly as written, the C-STORE
request's Affected SOP Instance UID taken from the file meta). For each refused instance the
tests prove the exact DIMSE status, that the bytes are kept in
``spool/quarantine/<job>/instances/rejected.dcm`` with the reason and its code in ``job.json``,
the audit line and the log event, that nothing reaches incoming/, jobs/ or the broker, and that
the gateway still answers C-ECHO. The last test proves a broken audit trail refuses nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import encode

from bench.soak_hostile import raw_dicom_file
from gateway.server import Gateway
from spool.manifest import JobState
from tests.conftest import wait_until
from tests.logevents import Events
from tests.taskmessages import folder_messages

SUCCESS, DATASET_DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA900, 0xC210


@contextlib.contextmanager
def _raw_sending() -> Iterator[None]:
    """pynetdicom sends a file's encoded data set as it is, without decoding it (restored after)."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def _store(
    gw: Gateway,
    path: Path,
    transfer_syntaxes: tuple[UID, ...] = (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian),
) -> int:
    """C-STORE one raw file over a fresh association, proposing these transfer syntaxes (one presentation
    context each); the status the gateway answered."""
    ae = AE(ae_title="TESTPACS")
    for transfer_syntax in transfer_syntaxes:
        ae.add_requested_context(sc.MRImageStorage, [transfer_syntax])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", gw.settings.dicom.port, ae_title="PEDIFACE")
    assert assoc.is_established, "the gateway refused the association"
    try:
        with _raw_sending():
            status = assoc.send_c_store(path)
    finally:
        assoc.release()
    assert "Status" in status, "the gateway did not answer the C-STORE"
    return int(status.Status)


def _echo(gw: Gateway) -> int:
    ae = AE(ae_title="TESTPACS")
    ae.add_requested_context(sc.Verification)
    assoc = ae.associate("127.0.0.1", gw.settings.dicom.port, ae_title="PEDIFACE")
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    return int(status.Status)


def _image(small_series: list[Path]) -> pydicom.Dataset:
    """A fresh, writable copy of one real instance of the small series."""
    return pydicom.dcmread(small_series[0])


def _encoded(ds: pydicom.Dataset) -> bytes:
    data = encode(ds, False, True)  # explicit VR little endian, as the file meta says
    assert data is not None
    return data


def _audit(gw: Gateway) -> list[dict]:
    path = gw.settings.audit_file
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _assert_refused(
    gw: Gateway, events: Events, status: int, expected_status: int, code: str, reason: str, sent: bytes
) -> None:
    """The refusal as the PACS, the spool, the audit trail and the log see it; then C-ECHO still works."""
    assert status == expected_status, f"answered 0x{status:04X}"
    spool = gw.spool
    kept = sorted(spool.quarantine_dir.iterdir())
    assert len(kept) == 1, kept
    job = json.loads((kept[0] / "job.json").read_text())
    assert job["state"] == JobState.quarantined == job["history"][-1]["state"]
    assert (job["reason"], job["reason_code"]) == (reason, code)
    assert job["history"][-1]["note"] == reason
    assert (job["calling_ae"], job["n_instances"], job["series_key"]) == ("TESTPACS", 1, "")
    rejected = kept[0] / "instances" / "rejected.dcm"
    assert sorted(p.name for p in rejected.parent.iterdir()) == ["rejected.dcm"]
    body = rejected.read_bytes()
    assert body[128:132] == b"DICM" and body.endswith(sent), "the refused bytes are kept as received"
    assert not list(spool.incoming.iterdir()) and not list(spool.jobs.iterdir()), "nothing goes on"
    assert folder_messages(gw.settings) == [], "nothing reaches the broker"
    (line,) = _audit(gw)
    assert (line["event"], line["outcome"], line["reason"], line["calling_ae"]) == (
        "instance_received",
        "rejected",
        code,
        "TESTPACS",
    )
    assert line["instance"] == "" and line["series"] == "", "a refused instance is named by nothing"
    (logged,) = events.named("c_store_rejected")
    assert logged["status"] == f"0x{expected_status:04X}" and logged["reason"] == reason
    assert logged["quarantine"] == kept[0].name and logged["calling_ae"] == "TESTPACS"
    assert _echo(gw) == SUCCESS, "the gateway keeps serving after a refusal"


def test_sop_instance_uid_differing_from_the_request_is_refused_0xa900(
    start_gateway: Callable[..., Gateway], events: Events, small_series: list[Path], tmp_path: Path
) -> None:
    """Data set says one SOP Instance UID, the C-STORE request another: 0xA900, ``input.uid``."""
    gw = start_gateway()
    ds = _image(small_series)
    in_request = str(ds.SOPInstanceUID)
    ds.SOPInstanceUID = generate_uid()
    sent = _encoded(ds)
    status = _store(gw, raw_dicom_file(tmp_path / "mismatch.dcm", sent, in_request))
    reason = "SOPInstanceUID in the data set differs from the C-STORE request's Affected SOP Instance UID"
    _assert_refused(gw, events, status, DATASET_DOES_NOT_MATCH, "input.uid", reason, sent)


def test_an_image_without_pixel_data_is_refused_0xa900(
    start_gateway: Callable[..., Gateway], events: Events, small_series: list[Path], tmp_path: Path
) -> None:
    """No Pixel Data: nothing to deface, 0xA900 ``input.no_pixels``."""
    gw = start_gateway()
    ds = _image(small_series)
    del ds.PixelData
    sent = _encoded(ds)
    status = _store(gw, raw_dicom_file(tmp_path / "nopixels.dcm", sent, str(ds.SOPInstanceUID)))
    _assert_refused(
        gw, events, status, DATASET_DOES_NOT_MATCH, "input.no_pixels", "the image has no Pixel Data", sent
    )


@pytest.mark.parametrize("damage", ["Rows missing", "Columns empty"])
def test_invalid_rows_or_columns_are_refused_0xa900(
    start_gateway: Callable[..., Gateway],
    events: Events,
    small_series: list[Path],
    tmp_path: Path,
    damage: str,
) -> None:
    """Rows absent, or Columns present without a value: the pixel length cannot be checked, 0xA900."""
    gw = start_gateway()
    ds = _image(small_series)
    if damage == "Rows missing":
        del ds.Rows
    else:
        ds.Columns = None
    sent = _encoded(ds)
    status = _store(gw, raw_dicom_file(tmp_path / "badgrid.dcm", sent, str(ds.SOPInstanceUID)))
    reason = "Rows, Columns or Bits Allocated missing or invalid"
    _assert_refused(gw, events, status, DATASET_DOES_NOT_MATCH, "input.image_pixel", reason, sent)


#: A sequence of undefined length whose first "item" is no item and whose end never comes.
_CUT_SEQUENCE = (
    struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    + struct.pack("<HHI", 0x1234, 0x5678, 8) + b"abcdefgh"
)  # fmt: skip


@pytest.mark.parametrize(
    ("sent", "transfer_syntax", "reason"),
    [
        (
            _CUT_SEQUENCE,
            ExplicitVRLittleEndian,
            "the data set cannot be decoded (OSError: No tag to read at file position 1C)",
        ),
        (
            b"not a deflate stream",
            DeflatedExplicitVRLittleEndian,
            "the data set cannot be decoded (error: Error -3 while decompressing data: invalid block type)",
        ),
    ],
    ids=["cut-sequence", "deflated-garbage"],
)
def test_bytes_that_cannot_be_decoded_are_refused_0xc210(
    start_gateway: Callable[..., Gateway],
    events: Events,
    tmp_path: Path,
    sent: bytes,
    transfer_syntax: UID,
    reason: str,
) -> None:
    """Encoded bytes pydicom cannot parse: 0xC210 ``input.undecodable``, the bytes kept as they came."""
    gw = start_gateway()
    status = _store(gw, raw_dicom_file(tmp_path / "garbage.dcm", sent, generate_uid(), transfer_syntax))
    _assert_refused(gw, events, status, CANNOT_UNDERSTAND, "input.undecodable", reason, sent)


def test_an_unwritable_audit_trail_refuses_nothing(
    start_gateway: Callable[..., Gateway], events: Events, small_series: list[Path], tmp_path: Path
) -> None:
    """audit.file is a directory: the instance is still stored, answered 0x0000, sealed and queued on
    the broker; the log says ``audit_write_failed`` with the OS error."""
    audit = tmp_path / "audit-is-a-directory"
    audit.mkdir()
    gw = start_gateway(audit={"file": str(audit)})
    source = tmp_path / "instance.dcm"
    shutil.copyfile(small_series[0], source)
    ds = pydicom.dcmread(source)
    assert _store(gw, source) == SUCCESS

    (failed,) = events.named("audit_write_failed")
    assert failed["error"] == f"[Errno 21] Is a directory: '{audit}'"
    assert failed["level"] == "error" and failed["logger"] == "pediface.gateway.scp"
    assert list(audit.iterdir()) == [], "nothing was written into the directory"

    def dispatched() -> list[str]:
        return [m.job_id for m in gw.spool.manifests(gw.spool.jobs) if m.state == JobState.dispatched]

    (job_id,) = wait_until(dispatched, 30, "the series to be sealed and dispatched")
    assert folder_messages(gw.settings) == [("pediface.process_series", [job_id])]
    job = gw.spool.load(job_id)
    assert (job.n_instances, job.calling_ae) == (1, "TESTPACS")
    (stored,) = gw.spool.instance_files(job_id)
    assert stored.name == f"{ds.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).PixelData == ds.PixelData
    assert not list(gw.spool.quarantine_dir.iterdir()), "nothing was refused"
    assert _echo(gw) == SUCCESS
    assert len(events.named("audit_write_failed")) == 1, "C-ECHO writes no receipt; still one failure"
