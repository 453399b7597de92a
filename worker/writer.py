"""Write masks back into the original instances' own pixel grid, losslessly.

Voxels outside the mask keep their stored values exactly: for native little
endian input the raw bytes themselves are edited (unused high bits survive);
otherwise the decoded stored values are edited. Masked voxels take the stored
value that maps to the background. A mask reaches every frame, and every tile
of a Siemens mosaic, through the volume's :class:`~worker.types.SliceSource`.

Transfer syntax of the output:

* an instance whose pixels did not change keeps its Pixel Data as received
  (compressed or not), except big endian, which becomes Explicit VR Little
  Endian;
* an instance that changed keeps its transfer syntax when it is native little
  endian (explicit or implicit VR), or lossless compressed with an encoder
  available here (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless); the
  encoded result is decoded again and compared with the intended values, and
  anything else (JPEG Lossless process 14, a failed or inexact encoding, big
  endian) is written as Explicit VR Little Endian. Nothing is ever encoded lossily.

Enhanced multi-frame objects keep their functional groups unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import DataElement, Dataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from common.errors import InputError
from common.logs import get_logger
from worker.types import SliceSource, Volume
from worker.volume.geometry import MosaicSource
from worker.volume.pixels import frame_pixels

log = get_logger("pediface.worker.writer")

#: Lossless compressed transfer syntaxes written back as they came (when the encoder is installed).
REENCODABLE = (RLELossless, JPEGLSLossless, JPEG2000Lossless)
NATIVE_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class StackMask:
    """A mask to write back: the volume it was computed on, the voxels to blank, the background value."""

    volume: Volume
    blank: np.ndarray
    background: int

    def __post_init__(self) -> None:
        if self.blank.shape != self.volume.shape:
            raise ValueError(f"mask shape {self.blank.shape} differs from the volume's {self.volume.shape}")
        if not self.volume.sources:
            raise ValueError("the volume does not record which instance each slice came from")


def _raw_frames(ds: Dataset) -> np.ndarray | None:
    """A writable ``(frames, rows, columns)`` view of native little-endian bytes, or None."""
    ts = ds.file_meta.TransferSyntaxUID
    bits = int(ds.BitsAllocated)
    if ts.is_compressed or not ts.is_little_endian or bits not in (8, 16, 32):
        return None
    dtype = np.dtype(f"<{'i' if int(ds.PixelRepresentation) else 'u'}{bits // 8}")
    rows, cols, n_frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
    expected = rows * cols * n_frames * dtype.itemsize
    raw = ds.PixelData
    if len(raw) < expected:
        raise InputError(
            f"Pixel Data holds {len(raw)} bytes, {expected} expected for {n_frames}x{rows}x{cols}",
            code="input.pixels",
        )
    return np.frombuffer(raw, dtype=dtype, count=rows * cols * n_frames).reshape(n_frames, rows, cols).copy()


def _target(ds: Dataset, source: SliceSource, frames: np.ndarray) -> np.ndarray:
    plane = frames[source.frame_index]
    if isinstance(source, MosaicSource):
        rows, columns = source.window
        return plane[rows, columns]
    return plane


PIXEL_DATA = 0x7FE00010


def _edit_copy(ds: Dataset) -> Dataset:
    """A dataset holding ``ds``'s elements, with its own file meta and encoding, for editing.

    The elements are ``ds``'s own objects, not copies (a deep copy of a series' instances, pixel
    data included, cost more than the rest of the write-back): an edit must *replace* an element
    (``out[tag] = DataElement(...)``), never assign into one, and then ``ds`` stays as it was read.
    """
    out = Dataset(dict(ds.items()))
    out.file_meta = copy.deepcopy(ds.file_meta)
    out.set_original_encoding(*ds.original_encoding)
    return out


def _set_pixel_data(out: Dataset, ts: UID, data: bytes, vr: str, undefined_length: bool) -> None:
    """Replace ``out``'s Pixel Data element and transfer syntax (see :func:`_edit_copy`)."""
    out.file_meta.TransferSyntaxUID = ts
    element = DataElement(PIXEL_DATA, vr, data, is_undefined_length=undefined_length)
    out[PIXEL_DATA] = element


def _set_native(out: Dataset, frames: np.ndarray, ts: UID) -> None:
    data = frames.astype(frames.dtype.newbyteorder("<"), copy=False).tobytes()
    if len(data) % 2:
        data += b"\0"  # PS3.5 7.1: values have even length
    _set_pixel_data(out, ts, data, "OW" if frames.dtype.itemsize > 1 else "OB", False)


def _to_little_endian(out: Dataset) -> None:
    """Parse every element of a big endian dataset so that it can be written little endian."""
    for _ in out.iterall():
        pass
    out.set_original_encoding(False, True, out.original_character_set)


def _try_encode(out: Dataset, frames: np.ndarray, ts: UID) -> bool:
    """Encode ``frames`` into ``out`` with ``ts``; True only if decoding gives the same values back."""
    trial = copy.deepcopy(out)
    try:
        arr = frames[0] if frames.shape[0] == 1 and int(out.get("NumberOfFrames") or 1) == 1 else frames
        trial.compress(ts, arr, generate_instance_uid=False)
        decoded = trial.pixel_array
        if decoded.ndim == 2:
            decoded = decoded[np.newaxis]
        if decoded.shape != frames.shape or not np.array_equal(decoded, frames):
            log.warning("reencode_inexact", transfer_syntax=ts.name)
            return False
    except Exception as exc:  # noqa: BLE001 - any encoder failure falls back to uncompressed
        log.warning("reencode_failed", transfer_syntax=ts.name, error=str(exc))
        return False
    _set_pixel_data(out, ts, trial.PixelData, "OB", True)
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in trial and keyword not in out:
            out[keyword] = trial[keyword]
    return True


def write_back(
    datasets: Sequence[Dataset], masks: Sequence[StackMask], *, keep_transfer_syntax: bool = True
) -> dict[int, Dataset]:
    """Copies of the instances the masks' volumes cover, with masked voxels set to background.

    Returns ``{instance index: new dataset}``. Every frame (or mosaic tile) the volumes
    reference is visited; instances no volume references are not returned.
    """
    edits: dict[int, list[tuple[SliceSource, np.ndarray, int]]] = {}
    for part in masks:
        for z, source in enumerate(part.volume.sources):
            edits.setdefault(source.instance_index, []).append((source, part.blank[z], part.background))
    result: dict[int, Dataset] = {}
    for index, todo in edits.items():
        ds = datasets[index]
        out = _edit_copy(ds)
        ts = ds.file_meta.TransferSyntaxUID
        changed = any(mask.any() for _, mask, _ in todo)
        if not changed and (ts.is_little_endian or ts.is_compressed):
            result[index] = out  # Pixel Data as received
            continue
        frames = _raw_frames(ds)
        if frames is None:
            decoded = frame_pixels(ds)
            frames = decoded.astype(decoded.dtype.newbyteorder("="), copy=True)
        info = np.iinfo(frames.dtype) if frames.dtype.kind in "iu" else None
        for source, mask, background in todo:
            if info is not None and not info.min <= background <= info.max:
                raise ValueError(f"background {background} does not fit the stored type {frames.dtype}")
            target = _target(ds, source, frames)
            if target.shape != mask.shape:
                raise ValueError(
                    f"instance {index + 1}: a {mask.shape} mask slice for a {target.shape} slice"
                )
            target[mask] = background
        if not ts.is_little_endian:
            _to_little_endian(out)
        if ts in NATIVE_LITTLE_ENDIAN and keep_transfer_syntax:
            _set_native(out, frames, ts)
        elif not (keep_transfer_syntax and ts in REENCODABLE and _try_encode(out, frames, ts)):
            _set_native(out, frames, ExplicitVRLittleEndian)
        result[index] = out
    return result
