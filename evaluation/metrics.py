"""What is measured on a defaced head: voxels changed in a region, share of a label removed, brain depth."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from worker.types import Volume


def changed_inside(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> int:
    """Voxels of ``region`` whose value differs between ``before`` and ``after``."""
    if before.shape != after.shape or before.shape != region.shape:
        raise ValueError(f"shapes differ: {before.shape}, {after.shape}, {region.shape}")
    return int(np.count_nonzero((before != after) & region.astype(bool)))


def at_background(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Voxels that hold the background after defacing: those blanked (set to ``before``'s minimum, the
    value the pipeline writes, ``worker.pipeline.blank_pixels``) and those already at it.

    A label's share "removed" counts these: a voxel of the teacher's face already at the background
    (air zeroed by the scanner or by averaging, as on mni305 and vrd-seg3d) holds nothing to blank, and
    counted only as "changed" it could never be removed (15 % of vrd-seg3d's face label).
    """
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape}, {after.shape}")
    return after == before.min()


SKIN_DEPTH_MM = 5.0
"""Brain voxels closer than this to the air outside the head are counted apart.

The registered atlas brain is a few millimetres off on some heads and then reaches the scalp or the
air (seen on mni305 and vrd-seg3d: every ear-mask voxel counted as "brain" there lay 0-3.6 mm from the
air); brain tissue lies under scalp, skull and CSF, at least 5 mm deep in the adult evaluation heads.
"""


def below_skin(volume: Volume, depth_mm: float = SKIN_DEPTH_MM) -> np.ndarray:
    """Voxels more than ``depth_mm`` inside the head (the filled above-threshold region)."""
    from scipy import ndimage as ndi

    from worker.grid import head_threshold

    head = ndi.binary_fill_holes(volume.array > head_threshold(volume.array))
    return ndi.distance_transform_edt(head, sampling=volume.spacing[::-1]) > depth_mm


def fraction_removed(blank: np.ndarray, region: np.ndarray) -> float:
    """Share of ``region``'s voxels that are in ``blank``; NaN for an empty region."""
    region = region.astype(bool)
    total = int(np.count_nonzero(region))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero(blank.astype(bool) & region)) / total


def nonzero_lost(before: np.ndarray, after: np.ndarray) -> float:
    """Share of ``before``'s non-zero voxels that ``after`` changed (skull-stripped controls)."""
    nonzero = before != 0
    total = int(np.count_nonzero(nonzero))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero(nonzero & (after != before))) / total


def on_grid(labels: np.ndarray, source: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A label array on ``source``'s grid carried (nearest neighbour) onto ``reference``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(source)
    return sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )


NEAR_HEAD_MM = 4.0
"""Over-blanking is counted within this distance of the head, the reach of the teacher's labels
(``training.teacher.HEAD_MARGIN_MM``): blanking the air further out hides and removes nothing."""


def over_blanked(blank: np.ndarray, labels: np.ndarray, near_head: np.ndarray) -> float:
    """Voxels of ``blank`` near the head but outside ``labels``, as a share of ``labels``' voxels.

    ``labels`` is the teacher's face and ears (any non-zero value); NaN when it is empty.
    """
    if not blank.shape == labels.shape == near_head.shape:
        raise ValueError(f"shapes differ: {blank.shape}, {labels.shape}, {near_head.shape}")
    inside = labels.astype(bool)
    total = int(np.count_nonzero(inside))
    if total == 0:
        return float("nan")
    outside = blank.astype(bool) & near_head.astype(bool) & ~inside
    return int(np.count_nonzero(outside)) / total


def near_head(array: np.ndarray, spacing_zyx: tuple[float, ...], mm: float = NEAR_HEAD_MM) -> np.ndarray:
    """Voxels within ``mm`` of the head (the filled above-threshold region) of a volume."""
    from scipy import ndimage as ndi

    from worker.grid import head_threshold

    head = ndi.binary_fill_holes(array > head_threshold(array))
    return ndi.distance_transform_edt(~head, sampling=spacing_zyx) <= mm
