"""Quality-control pictures of a defaced series, for a person to check at a glance.

:func:`render_before_after` writes one PNG: the mid-sagittal slice with the mask
outlined, and a depth-shaded surface render of the head seen from the front,
before (top row) and after (bottom row) defacing. Everything is resampled to an
LPS-aligned grid first, so the pictures look the same whatever the acquisition
orientation: anterior on the left and superior up in the sagittal panel; the
patient's right on the left of the front view, as when facing the patient.

numpy, scipy, OpenCV, Pillow and SimpleITK only (no plotting library, no GPU): this runs on
every worker, for every series, so it does the least work that gives the picture. The volume is
resampled and smoothed once; the defaced volume only where the blanking changed it (a box around
each piece of the mask, written over the original's grids once their panels are drawn), and the
mask's labels are looked up only at the points drawn (the sagittal plane and the surface voxels
the views hit), never resampled as a whole.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from common.files import atomic_write
from worker.grid import Geometry, bounding_box, head_threshold, lps_reference, map_box, resample
from worker.types import FaceLabel, FaceMask, Volume

PANEL_PX = 320
"""Side of one square panel in the QC picture, in pixels."""

TITLE_PX = 20
"""Height of the title band above the panels, in pixels (present even without a title)."""

QC_SIZE = (3 * PANEL_PX, TITLE_PX + 2 * PANEL_PX)
"""(width, height) of the PNG written by :func:`render_before_after`."""

_FACE_RGB = (255, 40, 40)

_EARS_RGB = (255, 200, 0)

PNG_COMPRESSION = 1
"""zlib level of the PNG: the fastest; the picture is written once per series and kept a short while."""


@dataclass(frozen=True)
class _LpsGrid:
    """A volume resampled onto an axis-aligned LPS grid (``array[z, y, x]``, isotropic)."""

    array: np.ndarray
    origin: tuple[float, float, float]
    spacing_mm: float


SMOOTH_SIGMA_MM = 1.0
"""Gaussian smoothing before the surface is found, so that noise specks in the air in front of the
face are not taken for the skin."""

_SMOOTH_TRUNCATE = 3.0
"""The smoothing kernel reaches this many sigmas (3 voxels on the 1 mm grid), and no further."""

_WINDOW_SAMPLE = 500_000
"""At most about this many voxels are sorted for the display window's percentiles (a regular subsample)."""


def _smooth(array: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``array`` (z, y, x) smoothed with a Gaussian of :data:`SMOOTH_SIGMA_MM`, edges repeated.

    A separable kernel truncated at :data:`_SMOOTH_TRUNCATE` sigmas (see :func:`_halo`), run by
    OpenCV (already a worker dependency): several times faster than scipy's or SimpleITK's
    filters, which matters on every series.
    """
    import cv2

    radius = _halo(spacing_mm)
    kernel = cv2.getGaussianKernel(2 * radius + 1, SMOOTH_SIGMA_MM / spacing_mm, cv2.CV_32F)
    array = np.ascontiguousarray(array, dtype=np.float32)
    planes = np.empty_like(array)
    for z in range(array.shape[0]):  # y and x within each plane
        cv2.sepFilter2D(array[z], cv2.CV_32F, kernel, kernel, dst=planes[z], borderType=cv2.BORDER_REPLICATE)
    out = np.empty_like(array)
    flat = planes.reshape(array.shape[0], -1)  # then z: a column filter over (z, y * x)
    cv2.sepFilter2D(
        flat, cv2.CV_32F, _ONE, kernel, dst=out.reshape(flat.shape), borderType=cv2.BORDER_REPLICATE
    )
    return out


_ONE = np.ones((1, 1), dtype=np.float32)


def _halo(spacing_mm: float) -> int:
    """How many voxels a change reaches through :func:`_smooth`."""
    return int(np.ceil(_SMOOTH_TRUNCATE * SMOOTH_SIGMA_MM / spacing_mm))


def _smoothed(grid: _LpsGrid) -> np.ndarray:
    return _smooth(grid.array, grid.spacing_mm)


def _grown(box: tuple[slice, ...], by: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(0, b.start - by), min(n, b.stop + by)) for b, n in zip(box, shape, strict=True))


def _within(box: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box`` in the coordinates of the array cut out by ``outer`` (which holds it)."""
    return tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True))


def _crossing(
    smooth: np.ndarray, foreground: np.ndarray, threshold: float, axis: int, reverse: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_front_depth` along any ``axis`` (from its far end with ``reverse``), ``foreground``
    being ``smooth > threshold`` computed once by the caller."""
    if reverse:
        smooth, foreground = np.flip(smooth, axis), np.flip(foreground, axis)
    hit = np.asarray(foreground.any(axis=axis))
    first = np.expand_dims(np.argmax(foreground, axis=axis), axis)
    inside = np.take_along_axis(smooth, first, axis=axis).squeeze(axis)
    previous = np.take_along_axis(smooth, np.maximum(first - 1, 0), axis=axis).squeeze(axis)
    first = first.squeeze(axis)
    step = np.where(inside > previous, inside - previous, 1.0)
    fraction = np.clip((threshold - previous) / step, 0.0, 1.0)
    depth = np.where(first > 0, first - 1 + fraction, 0.0).astype(np.float64)
    return hit, depth


class _LabelLookup:
    """The mask's label at points of the LPS grid: nearest neighbour, as a resampling would give it."""

    def __init__(self, mask: FaceMask, image: Geometry, reference: sitk.Image) -> None:
        self.labels = mask.labels
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        to_index = np.linalg.inv(direction @ np.diag(image.GetSpacing()))
        # Continuous (x, y, z) index of the image at LPS grid index (x, y, z): offset + matrix @ index.
        self.matrix = to_index * float(reference.GetSpacing()[0])
        self.offset = to_index @ (np.asarray(reference.GetOrigin()) - np.asarray(image.GetOrigin()))

    def at(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Labels at LPS grid indices (broadcast together); 0 outside the volume."""
        z, y, x = np.broadcast_arrays(z, y, x)
        shape = self.labels.shape  # (z, y, x) of the volume
        out = np.zeros(z.shape, dtype=np.uint8)
        row = self.matrix
        index = [
            np.floor(self.offset[k] + row[k, 0] * x + row[k, 1] * y + row[k, 2] * z + 0.5) for k in range(3)
        ]
        inside = np.ones(z.shape, dtype=bool)
        for k in range(3):
            inside &= (index[k] >= 0) & (index[k] < shape[2 - k])
        ix, iy, iz = (i[inside].astype(np.intp) for i in index)
        out[inside] = self.labels[iz, iy, ix]
        return out


def _front_depth(smooth: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each anterior-to-posterior ray first crosses ``threshold``.

    Returns ``(hit, depth)``, both (z, x): whether the ray meets the head, and the
    sub-voxel y index of the crossing (linear between the two voxels around it,
    which removes the terracing of whole-voxel depths).
    """
    return _crossing(smooth, smooth > threshold, threshold, axis=1)


def _depth_range(hit: np.ndarray, depth: np.ndarray) -> tuple[float, float]:
    """(nearest, farthest) surface depth, for shading; (0, 1) when nothing is hit."""
    return (float(depth[hit].min()), float(depth[hit].max())) if hit.any() else (0.0, 1.0)


def _shade_front(
    hit: np.ndarray,
    depth: np.ndarray,
    tint: np.ndarray | None = None,
    depth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Depth-shaded RGB surface from :func:`_front_depth`: superior up, patient right on the left.

    ``depth_range`` fixes the depths shaded nearest and farthest; pass the
    before-image's to the after-image so that unchanged surface shades the same.
    """
    if not hit.any():
        return np.zeros((*hit.shape, 3), dtype=np.uint8)
    near, far = depth_range if depth_range is not None else _depth_range(hit, depth)
    filled = np.where(hit, depth, far)
    # Lambertian shading with the light at the viewer: the cosine between the
    # viewing ray and the surface normal (-dd/dx, -1, -dd/dz), from the depth gradient.
    grad_z, grad_x = np.gradient(filled)
    lambert = 1.0 / np.sqrt(1.0 + grad_x**2 + grad_z**2)
    closeness = np.clip(1.0 - (filled - near) / max(far - near, 1e-6), 0.0, 1.0)
    grey = np.where(hit, 255.0 * (0.25 * closeness + 0.75 * lambert), 0.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    if tint is not None:
        tinted = hit & tint
        rgb[tinted] = rgb[tinted] * 0.45 + np.asarray(_FACE_RGB, dtype=np.float64) * 0.55
    return np.clip(rgb[::-1], 0, 255).astype(np.uint8)


def render_front(volume: Volume, *, threshold: float | None = None, spacing_mm: float = 1.0) -> np.ndarray:
    """Depth-shaded surface render of the head seen from the front.

    Parameters
    ----------
    volume : Volume
        The head, any orientation.
    threshold : float, optional
        Head/background intensity threshold in stored values; by default
        :func:`head_threshold` of the volume.
    spacing_mm : float
        Spacing of the LPS-aligned grid the render is computed on (one pixel each).

    Returns
    -------
    np.ndarray
        uint8 2D image (rows = inferior-superior reversed, so superior is up;
        columns = patient right to left), 0 where no surface is hit.
    """
    image = Geometry.of(volume)
    reference = lps_reference(image, spacing_mm)
    grid = _LpsGrid(resample(volume.array, image, reference), tuple(reference.GetOrigin()), spacing_mm)
    if threshold is None:
        threshold = head_threshold(grid.array)
    hit, depth = _front_depth(_smoothed(grid), threshold)
    return _shade_front(hit, depth)[..., 0].copy()


def _fit_panel(rgb: np.ndarray) -> Image.Image:
    """Scale an RGB image to fit a square panel (aspect kept, black borders)."""
    image = Image.fromarray(rgb)
    scale = PANEL_PX / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    panel = Image.new("RGB", (PANEL_PX, PANEL_PX))
    panel.paste(image, ((PANEL_PX - size[0]) // 2, (PANEL_PX - size[1]) // 2))
    return panel


def _outline(labels: np.ndarray) -> np.ndarray:
    """Boolean 2D map of the boundary pixels of ``labels != 0``."""
    inside = labels != 0
    padded = np.pad(inside, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & inside
    return inside & ~interior


def _sagittal(
    grid: _LpsGrid, x_index: int, window: tuple[float, float], labels: _LpsGrid | None
) -> np.ndarray:
    """RGB mid-sagittal slice: anterior (small y) on the left, superior up."""
    x_index = int(np.clip(x_index, 0, grid.array.shape[2] - 1))
    label_plane = None if labels is None else labels.array[:, :, x_index]
    return _sagittal_plane(grid.array[:, :, x_index], window, label_plane)


def _sagittal_plane(
    plane: np.ndarray, window: tuple[float, float], label_plane: np.ndarray | None
) -> np.ndarray:
    """RGB of one (z, y) plane of an LPS grid, superior up, with the labels outlined."""
    plane = plane[::-1]
    low, high = window
    grey = np.clip((plane - low) / max(high - low, 1e-6) * 255.0, 0, 255)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    if label_plane is not None:
        label_plane = label_plane[::-1]
        for value, colour in ((FaceLabel.FACE, _FACE_RGB), (FaceLabel.EARS, _EARS_RGB)):
            # Outline thickened to two pixels so that it survives the panel downscale.
            edge = _outline(label_plane == value)
            edge |= np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
            rgb[edge & (label_plane == value)] = colour
    return rgb


def render_before_after(
    before: Volume, after: Volume, mask: FaceMask | None, out_png: Path, *, title: str = ""
) -> Path:
    """Write the before/after QC picture of one defaced series.

    Two rows (before, after) by three columns (mid-sagittal slice with the mask
    outlined in red, ears in yellow; depth-shaded surface seen from the front and
    from the patient's left, the masked surface tinted in the before row). The sagittal plane goes
    through the head's centre of mass in patient coordinates; both rows use the
    plane, intensity window and head threshold of ``before``.

    Parameters
    ----------
    before, after : Volume
        The series before and after defacing (usually on the same grid).
    mask : FaceMask or None
        The mask applied, on the grid of ``before``; ``None`` draws no outline.
    out_png : Path
        Where to write the PNG (written to a temp file, then renamed).
    title : str
        Text in the band above the panels; must not carry patient identifiers.

    Returns
    -------
    Path
        ``out_png``. The image is RGB, :data:`QC_SIZE` pixels.
    """
    if mask is not None and mask.labels.shape != before.shape:
        raise ValueError(f"mask shape {mask.labels.shape} does not match the before volume {before.shape}")
    with _one_opencv_thread():
        return _render(before, after, mask, Path(out_png), title)


@contextlib.contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread while the picture is drawn, as it was before afterwards.

    The worker draws the picture while its other thread writes the output files, and the warps
    and filters here are a few milliseconds each: split over the cores, they waited for each
    other (and for the writer) longer than they ran, and took more CPU time in all.
    """
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _render(before: Volume, after: Volume, mask: FaceMask | None, out_png: Path, title: str) -> Path:
    before_image = Geometry.of(before)
    reference = lps_reference(before_image, 1.0)
    before_grid = _LpsGrid(
        resample(before.array, before_image, reference),
        tuple(float(v) for v in reference.GetOrigin()),  # type: ignore[arg-type]
        1.0,
    )
    shape = before_grid.array.shape
    grid = before_grid.array  # the before grid, turned into the after grid below (in place)
    threshold = head_threshold(grid)
    smooth = _smooth(grid, before_grid.spacing_mm)
    foreground = smooth > threshold

    counts = foreground.sum(axis=(0, 1))
    total = int(counts.sum())
    centre = float(counts @ np.arange(shape[2])) / total if total else (shape[2] - 1) / 2.0
    x_index = int(np.clip(int(round(centre)), 0, shape[2] - 1))
    step = max(1, grid.size // _WINDOW_SAMPLE)
    sample = grid.ravel()[::step]
    head_values = sample[foreground.ravel()[::step]] if total else sample
    # Stored values may be signed with an offset: the low end of the window is
    # the background's level, not zero.
    window = (float(np.percentile(sample, 1.0)), float(np.percentile(head_values, 99.5)))

    # Front view: rays along y from the face; side view: rays along x from the patient's left
    # (high x) to the right, so the face looks left.
    before_hit, before_depth = _crossing(smooth, foreground, threshold, axis=1)
    side_hit, side_depth = _crossing(smooth, foreground, threshold, axis=2, reverse=True)

    tint = side_tint = label_plane = None
    if mask is not None:
        lookup = _LabelLookup(mask, before_image, reference)
        z = np.arange(shape[0])[:, None]
        # Label of the surface voxel hit by each ray, to tint the part to be removed.
        front_y = np.clip(np.ceil(before_depth).astype(int), 0, shape[1] - 1)
        tint = before_hit & (lookup.at(z, front_y, np.arange(shape[2])[None, :]) != FaceLabel.BACKGROUND)
        side_x = shape[2] - 1 - np.clip(np.ceil(side_depth).astype(int), 0, shape[2] - 1)
        side_tint = side_hit & (lookup.at(z, np.arange(shape[1])[None, :], side_x) != FaceLabel.BACKGROUND)
        label_plane = lookup.at(z, np.arange(shape[1])[None, :], np.asarray(x_index))
    before_panels = [
        _sagittal_plane(grid[:, :, x_index], window, label_plane),
        _shade_front(before_hit, before_depth, tint),
        _shade_front(side_hit, side_depth, side_tint),
    ]

    # The defaced volume (on the original's grid) differs from the original only around the
    # blanked voxels: it is resampled, smoothed and thresholded in their boxes (one per piece of
    # the mask: the face, each ear; grown by what interpolation and the smoothing kernel reach),
    # written over the before grids, and only the rays through those boxes are cast again.
    after_front: tuple[np.ndarray, np.ndarray] = (before_hit, before_depth)
    after_side: tuple[np.ndarray, np.ndarray] = (side_hit, side_depth)
    same_grid = (after.shape, after.spacing, after.origin, after.direction) == (
        before.shape,
        before.spacing,
        before.origin,
        before.direction,
    )
    if not same_grid:
        grid = resample(after.array, Geometry.of(after), reference)
        smooth = _smooth(grid, before_grid.spacing_mm)
        foreground = smooth > threshold
        after_front = _crossing(smooth, foreground, threshold, axis=1)
        after_side = _crossing(smooth, foreground, threshold, axis=2, reverse=True)
    elif changed := _changed_boxes(before, after, before_image, reference):
        halo = _halo(before_grid.spacing_mm)
        for box in changed:
            grid[box] = resample(after.array, before_image, reference, box)
        regions = [_grown(box, halo, shape) for box in changed]  # where the smoothed values may differ
        for region in regions:
            source = _grown(region, halo, shape)  # what smoothing them needs (the grid, all boxes written)
            smooth[region] = _smooth(grid[source], before_grid.spacing_mm)[_within(region, source)]
            foreground[region] = smooth[region] > threshold
        for zs, ys, xs in regions:
            front = _crossing(smooth[zs, :, xs], foreground[zs, :, xs], threshold, axis=1)
            after_front = _patched(after_front, (zs, xs), front)
            side = _crossing(smooth[zs, ys, :], foreground[zs, ys, :], threshold, axis=2, reverse=True)
            after_side = _patched(after_side, (zs, ys), side)

    panels = [
        *before_panels,
        _sagittal_plane(grid[:, :, x_index], window, label_plane),
        _shade_front(*after_front, None, _depth_range(before_hit, before_depth)),
        _shade_front(*after_side, None, _depth_range(side_hit, side_depth)),
    ]
    canvas = Image.new("RGB", QC_SIZE)
    for i, rgb in enumerate(panels):
        canvas.paste(_fit_panel(rgb), ((i % 3) * PANEL_PX, TITLE_PX + (i // 3) * PANEL_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(255, 255, 255))
    draw.text((4, TITLE_PX + 4), "before", fill=(255, 255, 0))
    draw.text((4, TITLE_PX + PANEL_PX + 4), "after", fill=(255, 255, 0))

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=PNG_COMPRESSION)
    atomic_write(Path(out_png), buffer.getvalue())
    return Path(out_png)


def _patched(
    whole: tuple[np.ndarray, np.ndarray], box: tuple[slice, ...], part: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of ``whole``'s (hit, depth) maps with ``box`` replaced by ``part``'s."""
    hit, depth = whole[0].copy(), whole[1].copy()
    hit[box], depth[box] = part
    return hit, depth


_BLOCK = 8
"""Side, in voxels, of the blocks in which the changed voxels are gathered into pieces."""

_MAX_PIECES = 8
"""More separate pieces than this (scattered changes) are handled as one box."""


def _any_in_runs(flags: np.ndarray, axis: int, step: int) -> np.ndarray:
    """Whether any of each run of ``step`` entries along ``axis`` is true (the last run may be short)."""
    if flags.shape[axis] % step == 0:  # whole runs: a reshape, and a reduction over a short axis
        shape = flags.shape[:axis] + (flags.shape[axis] // step, step) + flags.shape[axis + 1 :]
        return flags.reshape(shape).any(axis=axis + 1)
    return np.logical_or.reduceat(flags, np.arange(0, flags.shape[axis], step), axis=axis)


def _changed_boxes(
    before: Volume, after: Volume, image: Geometry, reference: sitk.Image
) -> list[tuple[slice, ...]]:
    """Boxes of the LPS grid whose interpolated values may differ between ``before`` and ``after``
    (none when no voxel differs): one per piece of the differing voxels (the face, each ear; pieces
    found on blocks of :data:`_BLOCK` voxels), one voxel more (what linear interpolation reaches),
    carried onto the grid. Apart, their boxes hold a fraction of the voxels of one box around all."""
    from scipy import ndimage as ndi

    first, second = np.ascontiguousarray(before.array), np.ascontiguousarray(after.array)
    # Any change within each block, one axis at a time; along rows, by comparing runs of voxels
    # read as one 8, 4 or 2-byte integer (equal integers: equal voxels), which compares and writes
    # several voxels at once.
    itemsize, per_row = first.dtype.itemsize, first.shape[2] * first.dtype.itemsize
    widths = [w for w in (8, 4, 2) if w >= itemsize and per_row % w == 0 and first.dtype == second.dtype]
    if widths:
        voxels = widths[0] // itemsize  # voxels per integer: 1, 2, 4 or 8, a divisor of the block
        blocks = first.view(f"u{widths[0]}") != second.view(f"u{widths[0]}")
    else:
        voxels = 1
        blocks = np.asarray(first != second)
    # Planes first, rows last: each step works on whole planes or rows of what the last one left.
    for axis, step in ((0, _BLOCK), (1, _BLOCK), (2, _BLOCK // voxels)):
        blocks = _any_in_runs(blocks, axis, step)
    pieces, count = ndi.label(blocks, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    found = ndi.find_objects(pieces) if count <= _MAX_PIECES else [bounding_box(blocks)]
    boxes = []
    for piece in found:
        if piece is None:
            continue
        low = np.array([s.start * _BLOCK for s in piece][::-1], dtype=float) - 1.0
        high = (
            np.minimum(
                np.array([s.stop * _BLOCK - 1 for s in piece][::-1], dtype=float),
                np.asarray(image.GetSize()) - 1,
            )
            + 1.0
        )
        boxes.append(map_box(image, low, high, reference, pad=1))
    return [box for box in boxes if all(s.stop > s.start for s in box)]
