"""Where a head is: an LPS-aligned grid covering an image, and the intensity that separates head from air.

Shared by the maskers, the QC pictures and the face renders, so that all of them see one head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    from worker.types import Volume


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of a (z, y, x) array lie, answering the geometry queries of ``sitk.Image``
    (under the same names) without a copy of the voxels: a 0.5 mm series is tens of millions of
    them, and copying them into SimpleITK only to ask where they are costs more than the answer."""

    size: tuple[int, int, int]  # (x, y, z)
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, columns the voxel axes

    @classmethod
    def of(cls, volume: Volume) -> Geometry:
        z, y, x = volume.shape
        return cls((x, y, z), tuple(volume.spacing), tuple(volume.origin), tuple(volume.direction))

    def _matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3) @ np.diag(self.spacing)

    def GetSize(self) -> tuple[int, int, int]:  # noqa: D102 - sitk.Image's names
        return self.size

    def GetSpacing(self) -> tuple[float, float, float]:  # noqa: D102
        return self.spacing

    def GetOrigin(self) -> tuple[float, float, float]:  # noqa: D102
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:  # noqa: D102
        return self.direction

    def TransformContinuousIndexToPhysicalPoint(self, index: Sequence[float]) -> tuple[float, ...]:  # noqa: D102
        return tuple(float(v) for v in np.asarray(self.origin) + self._matrix() @ np.asarray(index, float))

    TransformIndexToPhysicalPoint = TransformContinuousIndexToPhysicalPoint

    def TransformPhysicalPointToContinuousIndex(self, point: Sequence[float]) -> tuple[float, ...]:  # noqa: D102
        return tuple(
            float(v) for v in np.linalg.solve(self._matrix(), np.asarray(point, float) - self.origin)
        )


def lps_reference(image: sitk.Image | Geometry, spacing_mm: float) -> sitk.Image:
    """An empty identity-direction image covering the physical extent of ``image``."""
    return grid_reference(image, (spacing_mm,) * 3)


def grid_reference(
    image: sitk.Image, spacing_xyz: tuple[float, float, float], direction: np.ndarray | None = None
) -> sitk.Image:
    """An empty image with ``direction`` (columns: its axes in LPS; default identity) and ``spacing_xyz``
    covering the physical extent of ``image``: the grid a model with other voxel axes is run on."""
    axes = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    size = np.asarray(image.GetSize())
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) * np.array(bits)])
            for bits in np.ndindex(2, 2, 2)
        ]
    )
    local = corners @ axes  # coordinates along the grid's own axes
    low, high = local.min(axis=0), local.max(axis=0)
    spacing = np.asarray(spacing_xyz, dtype=float)
    grid_size = [int(n) for n in np.ceil((high - low) / spacing).astype(int) + 1]
    reference = sitk.Image(grid_size, sitk.sitkUInt8)
    reference.SetSpacing([float(v) for v in spacing])
    reference.SetDirection([float(v) for v in axes.ravel()])
    reference.SetOrigin([float(v) for v in axes @ low])
    return reference


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample (maximises the between-class variance)."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between)) + 1])


SKIN_FRACTION_OF_OTSU = 0.4
"""Skin threshold as a fraction of Otsu's tissue/air threshold (chosen by eye on the test heads)."""


def head_threshold(array: np.ndarray) -> float:
    """Intensity separating the head (skin included) from the air around it.

    Otsu's threshold between air and tissue lands mid-way into the tissue
    range, and the skin of the lower face, far from the head coil, is darker
    than that: rendered at Otsu's value, the lips and chin break up into holes.
    :data:`SKIN_FRACTION_OF_OTSU` of it keeps the whole face surface while the
    noise in the air stays below it. The brightest 0.5 % (fat, vessels,
    artefacts) are clipped before Otsu so that they cannot pull it up.

    Parameters
    ----------
    array : np.ndarray
        Voxel values of any numeric type.

    Returns
    -------
    float
        The threshold; voxels strictly above it are head.

    Raises
    ------
    ValueError
        If the volume is (nearly) constant.
    """
    sample = array.ravel()[:: max(1, array.size // 2_000_000)].astype(np.float32)
    low, high = np.percentile(sample, [2.0, 99.5])
    if high <= low:
        raise ValueError(f"volume has no contrast to find the head in (values {low} to {high})")
    sample = np.clip(sample[sample > low], None, high)
    return low + SKIN_FRACTION_OF_OTSU * (_otsu_threshold(sample) - low)


def binned(array: np.ndarray, image: sitk.Image | Geometry, factors_xyz: Sequence[int]) -> sitk.Image:
    """``array`` block-averaged by ``factors_xyz`` (float32), as SimpleITK's BinShrink gives it: the
    same voxels, spacing and origin (the centre of the first block); a partial block at the far end
    of an axis is dropped. Read straight from the stored values, without a float copy of them all."""
    factors = [int(min(max(f, 1), n)) for f, n in zip(factors_xyz[::-1], array.shape, strict=True)]
    size = [n // f for n, f in zip(array.shape, factors, strict=True)]
    total = array[tuple(slice(0, n * f) for n, f in zip(size, factors, strict=True))]
    # float32 sums of up to 256 16-bit integers are exact (below 2**24), at half the memory traffic.
    small = array.dtype.kind in "iu" and array.dtype.itemsize <= 2 and np.prod(factors) <= 256
    exact = np.float32 if small else np.float64
    for axis in (0, 1, 2):  # one axis at a time: whole planes, then rows, then columns
        if factors[axis] == 1:
            continue
        shape = list(total.shape)
        shape[axis] = size[axis]
        summed = np.zeros(shape, dtype=exact)
        for first in range(factors[axis]):
            summed += total[(slice(None),) * axis + (slice(first, None, factors[axis]),)]
        total = summed
    total = total / float(np.prod(factors))
    out = sitk.GetImageFromArray(total.astype(np.float32))
    out.SetSpacing([s * f for s, f in zip(image.GetSpacing(), factors[::-1], strict=True)])
    out.SetDirection(image.GetDirection())
    out.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([(f - 1) / 2.0 for f in factors[::-1]]))
    return out


def field_of_view(image: sitk.Image | Geometry, grid: sitk.Image) -> np.ndarray:
    """Which voxels of ``grid`` ((z, y, x), any direction) lie inside ``image``'s buffer.

    Computed from the geometry alone, as SimpleITK's interpolators decide it: a point is inside
    when its continuous index lies in [-0.5, size - 0.5) on every axis. No image of ``image``'s size
    is built (a 0.5 mm series has tens of millions of voxels).
    """
    to_index = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing()))
    grid_matrix = np.asarray(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    matrix = to_index @ grid_matrix  # image index per grid index
    offset = to_index @ (np.asarray(grid.GetOrigin()) - np.asarray(image.GetOrigin()))
    x, y, z = (np.arange(n, dtype=float) for n in grid.GetSize())
    inside = np.ones(grid.GetSize()[::-1], dtype=bool)
    for row, shift, size in zip(matrix, offset, image.GetSize(), strict=True):
        # This image axis' continuous index, as a sum of the three grid axes' contributions.
        along_z, along_y, along_x = row[2] * z + shift, row[1] * y, row[0] * x
        index = along_z[:, None, None] + along_y[None, :, None] + along_x[None, None, :]
        inside &= (index >= -0.5) & (index < size - 0.5)
    return inside


def map_box(
    source: sitk.Image | Geometry,
    low: np.ndarray,
    high: np.ndarray,
    target: sitk.Image | Geometry,
    pad: np.ndarray | float = 0,
) -> tuple[slice, ...]:
    """The (z, y, x) box of ``target``'s voxels covering the box of ``source``'s continuous (x, y, z)
    indices from ``low`` to ``high``, grown by ``pad`` voxels of ``target`` and clipped to it."""
    corners = [
        target.TransformPhysicalPointToContinuousIndex(
            source.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.where(bits, high, low)])
        )
        for bits in np.ndindex(2, 2, 2)
    ]
    start = np.maximum(np.floor(np.min(corners, axis=0) - pad), 0).astype(int)
    stop = np.minimum(np.ceil(np.max(corners, axis=0) + pad) + 1, target.GetSize()).astype(int)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(start[::-1], stop[::-1], strict=True))


def reach_box(image: sitk.Image, grid: sitk.Image, region: np.ndarray, margin_mm: float) -> tuple[slice, ...]:
    """The box of ``image``'s (z, y, x) voxels within ``margin_mm`` of ``region``'s voxels on ``grid``.

    Each grid voxel stands for the cube around its centre (what a nearest-neighbour resampling
    gives it); the box holds every image voxel such a cube covers, plus the margin and one voxel.
    Empty (zero-length slices) when ``region`` is.
    """
    present = np.argwhere(region)
    if present.size == 0:
        return tuple(slice(0, 0) for _ in range(3))
    low, high = present.min(axis=0)[::-1] - 0.5, present.max(axis=0)[::-1] + 0.5  # (x, y, z) indices
    return map_box(grid, low, high, image, np.ceil(margin_mm / np.asarray(image.GetSpacing())) + 1)


def bounding_box(region: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every true voxel of ``region``; None when there is none."""
    box = []
    for axis in range(region.ndim):
        present = np.flatnonzero(region.any(axis=tuple(a for a in range(region.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def sub_grid(
    image: sitk.Image | Geometry, box: tuple[slice, ...], pixel_type: int = sitk.sitkUInt8
) -> sitk.Image:
    """An empty image on the (z, y, x) ``box`` of ``image``'s grid (same spacing and direction)."""
    reference = sitk.Image([s.stop - s.start for s in box][::-1], pixel_type)
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    reference.SetOrigin(image.TransformIndexToPhysicalPoint([s.start for s in box][::-1]))
    return reference


def carry_labels(
    labels: np.ndarray,
    grid: sitk.Image,
    image: sitk.Image | Geometry,
    box: tuple[slice, ...],
) -> np.ndarray:
    """A label array on ``grid`` carried (nearest neighbour) onto the ``box`` of ``image``'s grid, uint8.

    The same values a resampling onto the whole of ``image``'s grid gives inside the box, without
    building (and filling) an array of the whole grid.
    """
    return resample(labels.astype(np.uint8, copy=False), grid, image, box, nearest=True)


_WARPABLE = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64))
"""Pixel types OpenCV's warpAffine takes."""


def resample(
    array: np.ndarray,
    image: sitk.Image | Geometry,
    target: sitk.Image | Geometry,
    box: tuple[slice, ...] | None = None,
    *,
    nearest: bool = False,
) -> np.ndarray:
    """``array`` (the voxels of ``image``'s grid, (z, y, x)) resampled onto ``target``'s grid (or the
    (z, y, x) ``box`` of it), linearly (float32) or by nearest neighbour (``array``'s type); 0 outside.

    When an axis of the image runs along an axis of the target (axial, sagittal or coronal grids,
    and single-oblique ones turned about an axis in their slice plane), each output plane across
    that axis comes from one source plane (nearest) or a blend of two (linear) through a 2D affine
    warp (OpenCV): several times faster than a 3D resampling. Otherwise SimpleITK resamples. Both
    give SimpleITK's values, to within OpenCV's sampling of positions (1/32 voxel for linear,
    1/1024 for nearest).
    """
    box = box or tuple(slice(0, n) for n in reversed(target.GetSize()))
    out_shape = [s.stop - s.start for s in box]
    out_type = array.dtype if nearest else np.dtype(np.float32)
    if min(out_shape) <= 0:
        return np.zeros(out_shape, dtype=out_type)
    to_index = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing()))
    target_matrix = np.asarray(target.GetDirection()).reshape(3, 3) @ np.diag(target.GetSpacing())
    start = np.asarray([s.start for s in box][::-1], dtype=float)  # (x, y, z) of the box's corner
    # Continuous image index (x, y, z) of target index i (relative to the box): offset + matrix @ i.
    matrix = to_index @ target_matrix
    offset = to_index @ (
        np.asarray(target.GetOrigin()) + target_matrix @ start - np.asarray(image.GetOrigin())
    )
    scale = np.abs(matrix).max()
    # Image axis a runs along target axis b when a's index depends on b alone and b moves a alone;
    # the coarsest such axis is blended exactly (in float), the warp's sampling falls on the others.
    parallel = sorted(
        (
            (a, b)
            for a in range(3)
            for b in range(3)
            if np.abs(np.delete(matrix[a], b)).max() < 1e-9 * scale
            and np.abs(np.delete(matrix[:, b], a)).max() < 1e-9 * scale
        ),
        key=lambda pair: -image.GetSpacing()[pair[0]],
    )
    if not parallel or (nearest and array.dtype not in _WARPABLE):
        return _resample_sitk(array, image, target, box, nearest)
    import cv2

    a, b = parallel[0]
    # A (z, y, x) array without one axis keeps the others in descending order: a source plane's rows
    # are image axis v and its columns axis u (u < v); an output plane's rows are target axis r,
    # its columns axis p (p < r).
    u, v = (k for k in range(3) if k != a)
    p, r = (k for k in range(3) if k != b)
    cols, rows = out_shape[2 - p], out_shape[2 - r]
    warp = np.array([[matrix[u, p], matrix[u, r], offset[u]], [matrix[v, p], matrix[v, r], offset[v]]])
    # SimpleITK's inside test (continuous index in [-0.5, size - 0.5)), the same on every plane.
    col, row = np.meshgrid(np.arange(cols), np.arange(rows))
    size = image.GetSize()
    inside = np.ones((rows, cols), dtype=bool)
    for axis, coefficients in ((u, warp[0]), (v, warp[1])):
        index = coefficients[0] * col + coefficients[1] * row + coefficients[2]
        inside &= (index >= -0.5) & (index < size[axis] - 0.5)
    along = offset[a] + matrix[a, b] * np.arange(out_shape[2 - b])  # index along image axis a
    planes = np.flatnonzero((along >= -0.5) & (along < size[a] - 0.5))
    if nearest:
        low = np.clip(np.floor(along + 0.5).astype(int), 0, size[a] - 1)
        high, weight = low, np.zeros(len(along), dtype=np.float32)
    else:
        low = np.clip(np.floor(along).astype(int), 0, size[a] - 1)
        high = np.minimum(low + 1, size[a] - 1)
        weight = np.clip(along - low, 0.0, 1.0).astype(np.float32)
    out = np.zeros(out_shape, dtype=out_type)
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    for chunk in np.array_split(planes, max(1, len(planes) // 16)):
        if chunk.size == 0:
            continue
        # The source planes of up to 16 output planes at once: (planes, rows, cols).
        sources = np.moveaxis(np.take(array, low[chunk], axis=2 - a), 2 - a, 0)
        sources = np.ascontiguousarray(sources, dtype=out_type)
        if not nearest and weight[chunk].max() > 0:
            upper = np.moveaxis(np.take(array, high[chunk], axis=2 - a), 2 - a, 0).astype(np.float32)
            upper -= sources
            upper *= weight[chunk, None, None]
            sources += upper
        warped = np.empty((len(chunk), rows, cols), dtype=out_type)
        for i in range(len(chunk)):
            cv2.warpAffine(
                sources[i], warp, (cols, rows), dst=warped[i], flags=flags, borderMode=cv2.BORDER_REPLICATE
            )
        warped[:, ~inside] = 0
        index: list[slice | np.ndarray] = [slice(None)] * 3
        index[2 - b] = chunk
        out[tuple(index)] = np.moveaxis(warped, 0, 2 - b)
    return out


def _resample_sitk(
    array: np.ndarray,
    image: sitk.Image | Geometry,
    target: sitk.Image | Geometry,
    box: tuple[slice, ...],
    nearest: bool,
) -> np.ndarray:
    """:func:`resample` by SimpleITK, copying only the part of ``array`` the box reaches (and two voxels)."""
    reference = sub_grid(target, box, sitk.sitkUInt8)
    reach = map_box(reference, np.full(3, -0.5), np.asarray(reference.GetSize()) - 0.5, image, pad=2)
    out_type = array.dtype if nearest else np.dtype(np.float32)
    if any(s.stop <= s.start for s in reach):
        return np.zeros([s.stop - s.start for s in box], dtype=out_type)
    moving = sitk.GetImageFromArray(np.ascontiguousarray(array[reach]))
    moving.SetSpacing(image.GetSpacing())
    moving.SetDirection(image.GetDirection())
    moving.SetOrigin(image.TransformIndexToPhysicalPoint([s.start for s in reach][::-1]))
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    pixel = moving.GetPixelID() if nearest else sitk.sitkFloat32
    resampled = sitk.Resample(moving, reference, sitk.Transform(), interpolator, 0.0, pixel)
    return sitk.GetArrayFromImage(resampled).astype(out_type, copy=False)
