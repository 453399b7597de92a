"""QC pictures of labels over a head on an LPS grid: front, left and right surface, mid-sagittal slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from worker.grid import head_threshold
from worker.qc import (
    _EARS_RGB,
    _FACE_RGB,
    PANEL_PX,
    _fit_panel,
    _front_depth,
    _LpsGrid,
    _sagittal,
    _shade_front,
)
from worker.types import FaceLabel


def _surface(smooth: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Shaded surface seen along axis 1 from index 0, tinted by the label of the surface voxel."""
    hit, depth = _front_depth(smooth, threshold)
    rgb = _shade_front(hit, depth).astype(np.float64)  # rows flipped: superior up
    first = np.clip(np.ceil(depth).astype(int) + 1, 0, smooth.shape[1] - 1)
    hit_labels = np.take_along_axis(labels, first[:, None, :], axis=1)[:, 0, :][::-1]
    hit_up = hit[::-1]
    for value, colour in ((FaceLabel.FACE, _FACE_RGB), (FaceLabel.EARS, _EARS_RGB)):
        sel = hit_up & (hit_labels == value)
        rgb[sel] = rgb[sel] * 0.45 + np.asarray(colour, dtype=np.float64) * 0.55
    return np.clip(rgb, 0, 255).astype(np.uint8)


def render_labels(
    array: np.ndarray, labels: np.ndarray, spacing_mm: float, out_png: Path, title: str
) -> Path:
    """Four panels: front, patient-left side, patient-right side, mid-sagittal (outlines).

    ``array`` and ``labels`` are (z, y, x) on an identity-direction (LPS) grid.
    """
    array = array.astype(np.float32)
    threshold = head_threshold(array)
    smooth = ndi.gaussian_filter(array, 1.0)
    front = _surface(smooth, labels, threshold)
    # Patient left is +x: look from +x towards -x (axis order z, x reversed, y).
    left = _surface(
        np.transpose(smooth, (0, 2, 1))[:, ::-1, :], np.transpose(labels, (0, 2, 1))[:, ::-1, :], threshold
    )
    right = _surface(
        np.transpose(smooth, (0, 2, 1))[:, :, ::-1], np.transpose(labels, (0, 2, 1))[:, :, ::-1], threshold
    )
    fg = smooth > threshold
    x_index = int(round(np.nonzero(fg)[2].mean())) if fg.any() else array.shape[2] // 2
    window = (float(np.percentile(array, 1.0)), float(np.percentile(array[fg] if fg.any() else array, 99.5)))
    grid = _LpsGrid(array=array, origin=(0.0, 0.0, 0.0), spacing_mm=spacing_mm)
    lgrid = _LpsGrid(array=labels.astype(np.uint8), origin=(0.0, 0.0, 0.0), spacing_mm=spacing_mm)
    sag = _sagittal(grid, x_index, window, lgrid)
    canvas = Image.new("RGB", (4 * PANEL_PX, PANEL_PX + 20))
    for i, rgb in enumerate((front, left, right, sag)):
        canvas.paste(_fit_panel(rgb), (i * PANEL_PX, 20))
    ImageDraw.Draw(canvas).text(
        (4, 4),
        f"{title}   front | left side | right side | mid-sagittal   red face, yellow ears",
        fill=(255, 255, 255),
    )
    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png)
    return out_png
