"""The fifth sender of a soak: hostile input, one case after another, each over its own association.

Mutated copies of shared instances (random byte flips, truncations, a wrong VR, a wrong length), a Deflated
data set that inflates to gigabytes, a frame declaring 65535 x 65535 pixels, encapsulated Pixel Data with a
broken fragment table, and an association that stalls in the middle of a PDU. The bytes go on the wire as
written (pynetdicom's ``STORE_SEND_CHUNKED_DATASET``); every case records the DICOM status it got, or that
the association was aborted.
"""

from __future__ import annotations

import random
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import encode

CASES = (
    "deflate-bomb", "huge-frame", "broken-fragments", "stall", "byte-flips", "truncated", "wrong-vr",
    "wrong-length",
)  # fmt: skip
"""In turn, the bounds of gateway/limits.py first (a short soak reaches them before it kills the gateway)."""


@dataclass
class HostileSend:
    case: str
    sop: str
    outcome: str  # "0xA900", "0x0000", "aborted after 20.1 s", "refused by the sender: ..."
    at: float

    @property
    def success(self) -> bool:
        return self.outcome == "0x0000"


def raw_dicom_file(
    path: Path,
    dataset: bytes,
    sop: str,
    transfer_syntax: UID = ExplicitVRLittleEndian,
    sop_class: UID = sc.MRImageStorage,
) -> Path:
    """A DICOM file: preamble, valid file meta naming ``sop``, then ``dataset`` byte for byte (hostile
    data sets are written as they are, never decoded; also used by tests/edge)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.10.1234")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + buffer.getvalue() + dataset)
    return path


def _fresh(template: Path) -> pydicom.Dataset:
    """A real instance under new Study, Series and SOP Instance UIDs (its own one-instance series)."""
    ds = pydicom.dcmread(template)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    return ds


def _element_offset(data: bytes, group: int, element: int) -> int:
    """Offset of an explicit VR little endian element's tag in ``data`` (first match), or -1."""
    return data.find(struct.pack("<HH", group, element))


class HostileSender(threading.Thread):
    """Sends one hostile case every ``interval_s`` until stopped; ``sends`` records what came back."""

    def __init__(
        self,
        port: Callable[[], int],
        template: Path,
        stop: threading.Event,
        interval_s: float = 15,
        bomb_bytes: int = 2 << 30,
        stall_wait_s: float = 90,
        seed: int = 5,
    ) -> None:
        super().__init__(name="hostile", daemon=True)
        self.port, self.template, self.stop = port, template, stop
        self.interval_s, self.bomb_bytes, self.stall_wait_s = interval_s, bomb_bytes, stall_wait_s
        self.random = random.Random(seed)
        self.sends: list[HostileSend] = []
        self.work = Path(tempfile.mkdtemp(prefix="hostile-"))
        self._bomb_tail: bytes | None = None

    def run(self) -> None:
        _config.STORE_SEND_CHUNKED_DATASET = (
            True  # this process sends raw files only (storescu sends the rest)
        )
        index = 0
        while not self.stop.wait(self.interval_s):
            case = CASES[index % len(CASES)]
            index += 1
            try:
                self.sends.append(self.send(case))
            except Exception as exc:  # noqa: BLE001 - recorded: the sender could not even send it
                self.sends.append(HostileSend(case, "", f"refused by the sender: {type(exc).__name__}: {exc}",
                                              time.time()))  # fmt: skip

    def send(self, case: str) -> HostileSend:
        if case == "stall":
            return self._stall()
        path, sop, syntax = getattr(self, "_" + case.replace("-", "_"))()
        try:
            return HostileSend(case, sop, self._store(path, syntax), time.time())
        finally:
            path.unlink(missing_ok=True)

    # -- the cases ---------------------------------------------------------------------------------

    def _mutated(self, mutate: Callable[[bytearray], None]) -> tuple[Path, str, UID]:
        ds = _fresh(self.template)
        data = bytearray(encode(ds, False, True) or b"")
        mutate(data)
        sop = str(ds.SOPInstanceUID)
        return (
            raw_dicom_file(self.work / f"{sop}.dcm", bytes(data), sop, ExplicitVRLittleEndian),
            sop,
            ExplicitVRLittleEndian,
        )

    def _byte_flips(self) -> tuple[Path, str, UID]:
        def flip(data: bytearray) -> None:
            for _ in range(self.random.randint(1, 16)):
                position = self.random.randrange(len(data))
                data[position] ^= 1 << self.random.randrange(8)

        return self._mutated(flip)

    def _truncated(self) -> tuple[Path, str, UID]:
        def cut(data: bytearray) -> None:
            del data[int(len(data) * self.random.uniform(0.05, 0.95)) :]

        return self._mutated(cut)

    def _wrong_vr(self) -> tuple[Path, str, UID]:
        def wrong_vr(data: bytearray) -> None:
            at = _element_offset(data, 0x0010, 0x0010)  # Patient's Name, PN -> a VR with a 4-byte length
            data[at + 4 : at + 6] = b"OB"

        return self._mutated(wrong_vr)

    def _wrong_length(self) -> tuple[Path, str, UID]:
        def wrong_length(data: bytearray) -> None:
            at = _element_offset(data, 0x0028, 0x0010)  # Rows (US, 2 bytes) said to be 40000 bytes long
            struct.pack_into("<H", data, at + 6, 40000)

        return self._mutated(wrong_length)

    def _deflate_bomb(self) -> tuple[Path, str, UID]:
        """A real header, then Pixel Data of ``bomb_bytes`` zeros: MBs on the wire, gigabytes inflated."""
        ds = _fresh(self.template)
        del ds.PixelData
        head = encode(ds, False, True) or b""
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(head + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0"
                               + struct.pack("<I", self.bomb_bytes))  # fmt: skip
        if self._bomb_tail is None:
            # 16 MiB of zeros deflated and fully flushed (byte-aligned, no reference to what came before)
            # are the same bytes every time: repeated, they inflate to the whole Pixel Data. An empty
            # final block ends the stream.
            chunk = 16 << 20
            packer_unit = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            unit = packer_unit.compress(bytes(chunk)) + packer_unit.flush(zlib.Z_FULL_FLUSH)
            final = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
            self._bomb_tail = unit * (self.bomb_bytes // chunk) + final
        # The header's stream ends without its final block (Z_FULL_FLUSH), so an inflater reads on
        # into the zeros, as one stream.
        data = body + packer.flush(zlib.Z_FULL_FLUSH) + self._bomb_tail
        sop = str(ds.SOPInstanceUID)
        return (
            raw_dicom_file(self.work / f"{sop}.dcm", data, sop, DeflatedExplicitVRLittleEndian),
            sop,
            DeflatedExplicitVRLittleEndian,
        )

    def _huge_frame(self) -> tuple[Path, str, UID]:
        ds = _fresh(self.template)
        ds.Rows = ds.Columns = 65535
        ds.PixelData = encapsulate([b"\0" * 64])
        ds["PixelData"].VR = "OB"
        sop = str(ds.SOPInstanceUID)
        return (
            raw_dicom_file(self.work / f"{sop}.dcm", encode(ds, False, True) or b"", sop, RLELossless),
            sop,
            RLELossless,
        )

    def _broken_fragments(self) -> tuple[Path, str, UID]:
        ds = _fresh(self.template)
        ds.compress(RLELossless)
        frame = next(iter(generate_frames(ds.PixelData, number_of_frames=1)))
        ds.NumberOfFrames = 3
        value = bytearray(encapsulate([frame] * 3, has_bot=True))
        struct.pack_into("<I", value, 12, len(value) * 4)  # the second frame's offset points past the end
        ds.PixelData = bytes(value)
        sop = str(ds.SOPInstanceUID)
        return (
            raw_dicom_file(self.work / f"{sop}.dcm", encode(ds, False, True) or b"", sop, RLELossless),
            sop,
            RLELossless,
        )

    # -- the wire ------------------------------------------------------------------------------------

    def _ae(self) -> AE:
        ae = AE(ae_title="HOSTILE")
        for syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless):
            ae.add_requested_context(sc.MRImageStorage, [syntax])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        return ae

    def _store(self, path: Path, syntax: UID) -> str:
        assoc = self._ae().associate("127.0.0.1", self.port(), ae_title="PEDIFACE")
        if not assoc.is_established:
            return "association refused or gateway down"
        try:
            status = assoc.send_c_store(path)
        finally:
            if assoc.is_established:
                assoc.release()
        if "Status" not in status:
            return "aborted" if assoc.is_aborted else "no answer"
        return f"0x{int(status.Status):04X}"

    def _stall(self) -> HostileSend:
        """Announce a P-DATA-TF PDU of 4000 bytes, send 10, then nothing: the gateway must drop it."""
        assoc = self._ae().associate("127.0.0.1", self.port(), ae_title="PEDIFACE")
        if not assoc.is_established:
            return HostileSend("stall", "", "association refused or gateway down", time.time())
        started = time.monotonic()
        assoc.dul.socket.socket.sendall(b"\x04\x00" + struct.pack(">I", 4000) + b"\x00" * 10)  # type: ignore[union-attr]
        while assoc.is_established and time.monotonic() - started < self.stall_wait_s:
            time.sleep(0.2)
        waited = time.monotonic() - started
        if assoc.is_established:
            assoc.abort()
            return HostileSend("stall", "", f"still open after {waited:.0f} s (we aborted it)", time.time())
        return HostileSend("stall", "", f"aborted by the gateway after {waited:.1f} s", time.time())
