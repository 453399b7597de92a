"""NIfTI and MGZ volumes in and out, with nibabel, keeping the input's header.

A defaced file must be a drop-in for the original: the same affine, data type, scaling, units and
header fields (qform/sform codes, description, intent), so that what a researcher's pipeline reads
next sees only the face gone. nibabel reads and writes both formats and keeps the header object;
only NIfTI header extensions are dropped, because converters can put a whole DICOM header there.

Volumes are handed to the masker as :class:`~worker.types.Volume` in LPS (nibabel's affines are
RAS+: the first two rows change sign), the array in ``(k, j, i)`` order as SimpleITK would have it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.errors import InputError
from worker.types import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def load(path: Path):  # noqa: ANN201 - a nibabel image
    """The image, refused (:class:`InputError`) unless it is one readable 3D volume."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = image.shape
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on a broken file
        raise InputError(
            f"{path.name} is not a readable NIfTI/MGZ image: {exc}", code="input.unreadable"
        ) from exc
    spatial = [n for n in shape[3:] if n != 1]
    if len(shape) < 3 or spatial:
        raise InputError(
            f"{path.name} has shape {tuple(shape)}: one 3D volume per file is needed", code="input.dimensions"
        )
    return image


def stored(image) -> np.ndarray:  # noqa: ANN001
    """The voxel values as the file holds them (scaled only when the header scales them), (i, j, k)."""
    proxy = image.dataobj
    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    if hasattr(proxy, "get_unscaled") and slope == 1.0 and inter == 0.0:
        data = np.asarray(proxy.get_unscaled())
    else:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    return data.reshape(data.shape[:3])


def to_volume(image, data: np.ndarray) -> Volume:  # noqa: ANN001
    """``data`` ((i, j, k), from :func:`stored`) as a Volume in LPS patient coordinates."""
    affine = _RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)[:3]
    columns = affine[:, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(affine)):
        raise InputError(
            "the image's affine is degenerate (a zero or non-finite axis)", code="input.geometry"
        )
    direction = columns / spacing
    return Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in affine[:, 3]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),  # type: ignore[arg-type]
    )


def save_like(image, array_zyx: np.ndarray, target: Path, *, label_map: bool = False) -> Path:  # noqa: ANN001
    """Write ``array_zyx`` (a Volume-ordered array) with ``image``'s header and affine to ``target``.

    ``label_map``: a uint8 mask (data type uint8, no scaling, no intensity range of the source).
    """
    header = image.header.copy()
    extensions = getattr(header, "extensions", None)
    if extensions is not None:
        del extensions[:]
    data = np.asarray(array_zyx).transpose(2, 1, 0)
    if label_map:
        data = data.astype(np.uint8)
        header.set_data_dtype(np.uint8)
        if hasattr(header, "set_slope_inter"):
            header.set_slope_inter(1.0, 0.0)
        for field in ("cal_min", "cal_max"):
            if field in header:
                header[field] = 0
    out = type(image)(data, image.affine, header)
    import nibabel as nib

    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, str(target))
    return target
