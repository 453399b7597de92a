"""The gateway's bounds on hostile input (gateway/limits.py), each driven over a real association.

A deflate bomb, a header declaring 65535 x 65535 pixels, encapsulated Pixel Data with a broken fragment
table and an association that stalls in the middle of a PDU: each is refused with its DICOM status (or the
association is aborted), kept in quarantine with its reason, and the gateway keeps serving. The same
helpers as tests/edge/test_scp_refusals.py send the bytes exactly as written.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import encode

from bench.soak_hostile import raw_dicom_file
from gateway.server import Gateway
from tests.conftest import wait_until
from tests.edge.test_scp_refusals import (
    DATASET_DOES_NOT_MATCH,
    SUCCESS,
    _assert_refused,
    _echo,
    _store,
)
from tests.logevents import Events


@pytest.fixture
def start_gateway(start_gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """The edge tests' gateway (tests/edge/conftest.py) with series held open: nothing is sealed while
    a test looks at what was stored or quarantined."""

    def start(dicom: dict | None = None) -> Gateway:
        return start_gateway(dicom=dicom, series={"quiet_period_s": 60})

    return start


def _header(small_series: list[Path], rows: int, columns: int, frames: int = 1) -> pydicom.Dataset:
    ds = pydicom.dcmread(small_series[0])
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def test_a_deflate_bomb_is_refused_before_it_is_inflated(
    start_gateway: Callable[..., Gateway], events: Events, small_series: list[Path], tmp_path: Path
) -> None:
    """96 MiB of zero pixels deflate to ~100 kB; with dicom.max_inflated_bytes at 8 MiB the gateway
    answers 0xA900 ``input.inflate_limit`` and keeps the compressed bytes."""
    gw = start_gateway(dicom={"max_inflated_bytes": 8 << 20})
    ds = _header(small_series, 4096, 4096, frames=3)
    del ds.PixelData
    head = encode(ds, False, True)
    assert head is not None
    pixels = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", 4096 * 4096 * 2 * 3)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    sent = packer.compress(head + pixels)
    zeros = bytes(16 << 20)
    for _ in range(6):
        sent += packer.compress(zeros)
    sent += packer.flush()
    assert len(sent) < 1 << 20
    path = raw_dicom_file(tmp_path / "bomb.dcm", sent, str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian)
    status = _store(gw, path, (DeflatedExplicitVRLittleEndian,))
    reason = f"the Deflated data set inflates to more than {8 << 20} bytes (dicom.max_inflated_bytes)"
    _assert_refused(gw, events, status, DATASET_DOES_NOT_MATCH, "input.inflate_limit", reason, sent)


def test_a_deflated_instance_within_the_limit_is_stored(
    start_gateway: Callable[..., Gateway], small_series: list[Path], tmp_path: Path
) -> None:
    """The bound refuses bombs only: a real instance, deflated, is answered Success."""
    gw = start_gateway(dicom={"max_inflated_bytes": 8 << 20})
    ds = pydicom.dcmread(small_series[0])
    sent = encode(ds, False, True, deflated=True)
    assert sent is not None
    sop = str(ds.SOPInstanceUID)
    path = raw_dicom_file(tmp_path / "deflated.dcm", sent, sop, DeflatedExplicitVRLittleEndian)
    assert _store(gw, path, (DeflatedExplicitVRLittleEndian,)) == SUCCESS
    assert not list(gw.spool.quarantine_dir.iterdir())
    assert [p.name for p in gw.spool.incoming.glob("*/*.dcm")] == [f"{ds.SOPInstanceUID}.dcm"]


def test_frames_of_65535_x_65535_pixels_are_refused(
    start_gateway: Callable[..., Gateway], events: Events, small_series: list[Path], tmp_path: Path
) -> None:
    """A compressed instance whose header declares 65535 x 65535 pixels: no length to check, so the
    declared size itself is refused (0xA900 ``input.image_too_large``) before a worker would decode it."""
    gw = start_gateway()
    ds = _header(small_series, 65535, 65535)
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    sent = encode(ds, False, True)
    assert sent is not None
    path = raw_dicom_file(tmp_path / "huge.dcm", sent, str(ds.SOPInstanceUID), RLELossless)
    status = _store(gw, path, (RLELossless,))
    reason = (
        f"the image declares {65535 * 65535} pixel values (65535 x 65535, 1 frames), "
        f"more than {1 << 29} (dicom.max_image_pixels)"
    )
    _assert_refused(gw, events, status, DATASET_DOES_NOT_MATCH, "input.image_too_large", reason, sent)


def _rle_frames(small_series: list[Path], frames: int) -> pydicom.Dataset:
    """A real instance, RLE Lossless, as ``frames`` frames of the same slice."""
    ds = pydicom.dcmread(small_series[0])
    ds.SOPInstanceUID = generate_uid()
    ds.compress(RLELossless)
    fragment = next(iter(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
    ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([fragment] * frames, has_bot=True)
    return ds


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("offset past the end", "the Basic Offset Table does not point at the frames' fragments"),
        ("item tag overwritten", "encapsulated Pixel Data holds (FFFE,E00D) where an item was expected"),
        ("fragment length too long", "an encapsulated Pixel Data item runs past its end"),
        ("fewer fragments than frames", "encapsulated Pixel Data has 2 fragments for 3 frames"),
    ],
)
def test_encapsulated_pixel_data_with_a_broken_fragment_table_is_refused(
    start_gateway: Callable[..., Gateway],
    events: Events,
    small_series: list[Path],
    tmp_path: Path,
    damage: str,
    reason: str,
) -> None:
    gw = start_gateway()
    ds = _rle_frames(small_series, 3)
    value = bytearray(ds.PixelData)
    bot_length = struct.unpack_from("<I", value, 4)[0]
    first_fragment = 8 + bot_length
    if damage == "offset past the end":
        struct.pack_into("<I", value, 8 + 4, len(value) * 4)
    elif damage == "item tag overwritten":
        struct.pack_into("<HH", value, first_fragment, 0xFFFE, 0xE00D)
    elif damage == "fragment length too long":
        struct.pack_into("<I", value, first_fragment + 4, len(value))
    else:
        ds.NumberOfFrames = 3
        ds.PixelData = encapsulate([next(pydicom.encaps.generate_fragments(bytes(value)))] * 2)
        value = bytearray(ds.PixelData)
    ds.PixelData = bytes(value)
    sent = encode(ds, False, True)
    assert sent is not None
    path = raw_dicom_file(tmp_path / "fragments.dcm", sent, str(ds.SOPInstanceUID), RLELossless)
    status = _store(gw, path, (RLELossless,))
    _assert_refused(gw, events, status, DATASET_DOES_NOT_MATCH, "input.encapsulation", reason, sent)


def test_a_sound_multi_frame_rle_instance_is_stored(
    start_gateway: Callable[..., Gateway], small_series: list[Path], tmp_path: Path
) -> None:
    """The fragment check passes real encapsulated data: three RLE frames with their offset table."""
    gw = start_gateway()
    ds = _rle_frames(small_series, 3)
    sent = encode(ds, False, True)
    assert sent is not None
    path = raw_dicom_file(tmp_path / "rle.dcm", sent, str(ds.SOPInstanceUID), RLELossless)
    assert _store(gw, path, (RLELossless,)) == SUCCESS
    assert not list(gw.spool.quarantine_dir.iterdir())


def test_an_association_that_stalls_mid_pdu_is_aborted_and_the_gateway_serves_on(
    start_gateway: Callable[..., Gateway],
) -> None:
    """A peer announces a P-DATA-TF PDU of 4000 bytes, sends 10 and goes quiet: the gateway drops the
    connection after dicom.network_timeout_s (2 s here), not never, and answers C-ECHO meanwhile."""
    gw = start_gateway(dicom={"network_timeout_s": 2})
    ae = AE(ae_title="TESTPACS")
    ae.add_requested_context(sc.MRImageStorage, [ExplicitVRLittleEndian])
    ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", gw.settings.dicom.port, ae_title="PEDIFACE")
    assert assoc.is_established
    raw: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr]
    started = time.monotonic()
    raw.sendall(b"\x04\x00" + struct.pack(">I", 4000) + b"\x00" * 10)
    assert _echo(gw) == SUCCESS, "another association is served while one stalls"
    deadline = started + 30
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    waited = time.monotonic() - started
    assert not assoc.is_established, "the stalled association is still open after 30 s"
    assert assoc.is_aborted or assoc.is_released
    assert 1.5 <= waited <= 15, f"dropped after {waited:.1f} s with a 2 s network timeout"
    assert _echo(gw) == SUCCESS
    server = gw._server
    assert server is not None
    wait_until(lambda: not server.active_associations, 10, "the gateway to let the stalled association go")
    assert not list(gw.spool.incoming.iterdir()) and not list(gw.spool.quarantine_dir.iterdir())
