"""Write a mask back into the original instances' own pixel grid.

Voxels outside the mask keep their stored values exactly (for native little
endian input the raw bytes themselves are edited); masked voxels take the
series' background value. Output is always uncompressed Explicit VR Little
Endian: lossless, and readable by every archive.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from pediface.errors import InputError
from worker.types import Volume
from worker.volume import frame_pixels


def _stored_frames(ds: Dataset) -> np.ndarray:
    """A writable ``(frames, rows, columns)`` copy of the stored values."""
    ts = ds.file_meta.TransferSyntaxUID
    bits = int(ds.BitsAllocated)
    if not ts.is_compressed and ts.is_little_endian and bits in (8, 16, 32):
        # Edit the bytes as they are: unused high bits (and anything else a decoder might
        # normalise) survive unchanged outside the mask.
        dtype = np.dtype(f"<{'i' if int(ds.PixelRepresentation) else 'u'}{bits // 8}")
        rows, cols, n_frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames") or 1)
        expected = rows * cols * n_frames * dtype.itemsize
        raw = ds.PixelData
        if len(raw) < expected:
            raise InputError(
                f"Pixel Data holds {len(raw)} bytes, {expected} expected for {n_frames}x{rows}x{cols}",
                code="input.pixels",
            )
        return (
            np.frombuffer(raw, dtype=dtype, count=rows * cols * n_frames).reshape(n_frames, rows, cols).copy()
        )
    frames = frame_pixels(ds)
    return frames.astype(frames.dtype.newbyteorder("<"), copy=True)


def blank_instances(
    datasets: Sequence[Dataset], volume: Volume, blank: np.ndarray, background: int
) -> list[Dataset]:
    """Copies of ``datasets`` whose pixels under ``blank`` are set to ``background``.

    ``volume`` must have been built from ``datasets`` (its ``sources`` map each
    z-slice to an instance and frame); ``blank`` is a boolean array of its shape.
    """
    if blank.shape != volume.shape:
        raise ValueError(f"mask shape {blank.shape} differs from the volume's {volume.shape}")
    if not volume.sources:
        raise ValueError("the volume does not record which instance each slice came from")
    per_instance: dict[int, list[tuple[int, int]]] = {}
    for z, source in enumerate(volume.sources):
        per_instance.setdefault(source.instance_index, []).append((z, source.frame_index))
    result = []
    for index, ds in enumerate(datasets):
        out = copy.deepcopy(ds)
        slices = per_instance.get(index)
        if slices is None:
            raise ValueError(f"instance {index + 1} has no slice in the volume; it would leave undefaced")
        frames = _stored_frames(ds)
        info = np.iinfo(frames.dtype) if frames.dtype.kind in "iu" else None
        if info is not None and not info.min <= background <= info.max:
            raise ValueError(f"background {background} does not fit the stored type {frames.dtype}")
        for z, frame in slices:
            frames[frame][blank[z]] = background
        data = frames.tobytes()
        if len(data) % 2:
            data += b"\0"  # PS3.5 7.1: values have even length
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.PixelData = data
        out["PixelData"].VR = "OW" if frames.dtype.itemsize > 1 else "OB"
        out["PixelData"].is_undefined_length = False
        result.append(out)
    return result
