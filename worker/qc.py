"""Quality-control pictures of a defaced series, for a person to check at a glance.

:func:`render_before_after` writes one PNG: the mid-sagittal slice with the mask
outlined, and a depth-shaded surface render of the head seen from the front,
before (top row) and after (bottom row) defacing. Everything is resampled to an
LPS-aligned grid first, so the pictures look the same whatever the acquisition
orientation: anterior on the left and superior up in the sagittal panel; the
patient's right on the left of the front view, as when facing the patient.

numpy, Pillow and SimpleITK only (no matplotlib, no GPU): this runs on every
worker, for every series.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw

from pediface.spool import atomic_write
from worker.types import FaceLabel, FaceMask, Volume

PANEL_PX = 320
"""Side of one square panel in the QC picture, in pixels."""

TITLE_PX = 20
"""Height of the title band above the panels, in pixels (present even without a title)."""

QC_SIZE = (3 * PANEL_PX, TITLE_PX + 2 * PANEL_PX)
"""(width, height) of the PNG written by :func:`render_before_after`."""

_FACE_RGB = (255, 40, 40)
_EARS_RGB = (255, 200, 0)


@dataclass(frozen=True)
class _LpsGrid:
    """A volume resampled onto an axis-aligned LPS grid (``array[z, y, x]``, isotropic)."""

    array: np.ndarray
    origin: tuple[float, float, float]
    spacing_mm: float


def lps_reference(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty identity-direction image covering the physical extent of ``image``."""
    size = np.asarray(image.GetSize())
    corners = np.array(
        [
            image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) * np.array(bits)])
            for bits in np.ndindex(2, 2, 2)
        ]
    )
    low, high = corners.min(axis=0), corners.max(axis=0)
    grid_size = [int(n) for n in np.ceil((high - low) / spacing_mm).astype(int) + 1]
    reference = sitk.Image(grid_size, sitk.sitkUInt8)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin([float(v) for v in low])
    return reference


def _to_lps(image: sitk.Image, reference: sitk.Image, *, nearest: bool = False) -> _LpsGrid:
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    pixel_type = sitk.sitkUInt8 if nearest else sitk.sitkFloat32
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, pixel_type)
    return _LpsGrid(
        array=sitk.GetArrayFromImage(resampled),
        origin=tuple(float(v) for v in reference.GetOrigin()),  # type: ignore[arg-type]
        spacing_mm=float(reference.GetSpacing()[0]),
    )


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


def _smoothed(grid: _LpsGrid) -> np.ndarray:
    # Smooth a little first so that noise specks in the air in front of the face
    # are not taken for the skin surface.
    image = sitk.GetImageFromArray(grid.array)
    image.SetSpacing([grid.spacing_mm] * 3)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, grid.spacing_mm))


def _front_depth(smooth: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Where each anterior-to-posterior ray first crosses ``threshold``.

    Returns ``(hit, depth)``, both (z, x): whether the ray meets the head, and the
    sub-voxel y index of the crossing (linear between the two voxels around it,
    which removes the terracing of whole-voxel depths).
    """
    foreground = smooth > threshold
    hit = np.asarray(foreground.any(axis=1))
    first = np.argmax(foreground, axis=1)
    inside = np.take_along_axis(smooth, first[:, None, :], axis=1)[:, 0, :]
    previous = np.take_along_axis(smooth, np.maximum(first - 1, 0)[:, None, :], axis=1)[:, 0, :]
    step = np.where(inside > previous, inside - previous, 1.0)
    fraction = np.clip((threshold - previous) / step, 0.0, 1.0)
    depth = np.where(first > 0, first - 1 + fraction, 0.0).astype(np.float64)
    return hit, depth


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
    image = volume.to_sitk()
    grid = _to_lps(image, lps_reference(image, spacing_mm))
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
    plane = grid.array[::-1, :, x_index]
    low, high = window
    grey = np.clip((plane - low) / max(high - low, 1e-6) * 255.0, 0, 255)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    if labels is not None:
        label_plane = labels.array[::-1, :, x_index]
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
    before_image = before.to_sitk()
    reference = lps_reference(before_image, 1.0)
    before_grid = _to_lps(before_image, reference)
    after_grid = _to_lps(after.to_sitk(), reference)
    labels_grid = None
    if mask is not None:
        label_image = sitk.GetImageFromArray(mask.labels)
        label_image.CopyInformation(before_image)
        labels_grid = _to_lps(label_image, reference, nearest=True)

    threshold = head_threshold(before_grid.array)
    before_smooth = _smoothed(before_grid)
    before_fg = before_smooth > threshold
    before_hit, before_depth = _front_depth(before_smooth, threshold)
    if before_fg.any():
        centre_index = np.array([c.mean() for c in np.nonzero(before_fg)])[::-1]  # (x, y, z)
    else:
        centre_index = (np.asarray(before_grid.array.shape)[::-1] - 1) / 2.0
    x_index = int(round(centre_index[0]))
    head_values = before_grid.array[before_fg] if before_fg.any() else before_grid.array
    # Stored values may be signed with an offset: the low end of the window is
    # the background's level, not zero.
    window = (float(np.percentile(before_grid.array, 1.0)), float(np.percentile(head_values, 99.5)))

    tint = None
    if labels_grid is not None:
        # Label of the surface voxel hit by each ray, to tint the part to be removed.
        first = np.clip(np.ceil(before_depth).astype(int), 0, before_fg.shape[1] - 1)
        hit_labels = np.take_along_axis(labels_grid.array, first[:, None, :], axis=1)[:, 0, :]
        tint = hit_labels != FaceLabel.BACKGROUND

    # The side view is the front view's ray casting on the volume turned a quarter:
    # rays run from the patient's left (high x) to the right, so the face looks left.
    def from_left(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array[:, :, ::-1].transpose(0, 2, 1))

    side_smooth = from_left(before_smooth)
    side_hit, side_depth = _front_depth(side_smooth, threshold)
    side_tint = None
    if labels_grid is not None:
        first = np.clip(np.ceil(side_depth).astype(int), 0, side_smooth.shape[1] - 1)
        side_labels = np.take_along_axis(from_left(labels_grid.array), first[:, None, :], axis=1)[:, 0, :]
        side_tint = side_labels != FaceLabel.BACKGROUND
    after_smooth = _smoothed(after_grid)

    panels = [
        _sagittal(before_grid, x_index, window, labels_grid),
        _shade_front(before_hit, before_depth, tint),
        _shade_front(side_hit, side_depth, side_tint),
        _sagittal(after_grid, x_index, window, labels_grid),
        _shade_front(*_front_depth(after_smooth, threshold), None, _depth_range(before_hit, before_depth)),
        _shade_front(
            *_front_depth(from_left(after_smooth), threshold), None, _depth_range(side_hit, side_depth)
        ),
    ]
    canvas = Image.new("RGB", QC_SIZE)
    for i, rgb in enumerate(panels):
        canvas.paste(_fit_panel(rgb), ((i % 3) * PANEL_PX, TITLE_PX + (i // 3) * PANEL_PX))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(255, 255, 255))
    draw.text((4, TITLE_PX + 4), "before", fill=(255, 255, 0))
    draw.text((4, TITLE_PX + PANEL_PX + 4), "after", fill=(255, 255, 0))

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write(Path(out_png), buffer.getvalue())
    return Path(out_png)
