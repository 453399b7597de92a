"""The QC picture as worker/qc.py drew it before it was made fast (issue 15), kept as the reference
the fast renderer is held to (tests/unit/test_qc.py).

The straightforward way, at several times the cost: the before and after volumes and the mask's
labels each resampled whole onto the 1 mm LPS grid by SimpleITK, both volumes smoothed whole with
SimpleITK's recursive Gaussian, percentiles over every voxel, the side view cast on a transposed
copy. The shading, panel and outline helpers are worker.qc's own (they did not change).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image

from worker.grid import head_threshold, lps_reference
from worker.qc import (
    PANEL_PX,
    QC_SIZE,
    TITLE_PX,
    _depth_range,
    _fit_panel,
    _front_depth,
    _LpsGrid,
    _sagittal,
    _shade_front,
)
from worker.types import FaceLabel, FaceMask, Volume


def _to_lps(image: sitk.Image, reference: sitk.Image, *, nearest: bool = False) -> _LpsGrid:
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    pixel_type = sitk.sitkUInt8 if nearest else sitk.sitkFloat32
    resampled = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, pixel_type)
    return _LpsGrid(sitk.GetArrayFromImage(resampled), tuple(reference.GetOrigin()), 1.0)


def _smoothed(grid: _LpsGrid) -> np.ndarray:
    image = sitk.GetImageFromArray(grid.array)
    image.SetSpacing([grid.spacing_mm] * 3)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, grid.spacing_mm))


def _from_left(array: np.ndarray) -> np.ndarray:
    """The volume turned a quarter: rays from the patient's left (high x) to the right."""
    return np.ascontiguousarray(array[:, :, ::-1].transpose(0, 2, 1))


def reference_picture(before: Volume, after: Volume, mask: FaceMask, out_png: Path) -> Path:
    """The six panels of :func:`worker.qc.render_before_after`, drawn the old way (no title)."""
    before_image = before.to_sitk()
    reference = lps_reference(before_image, 1.0)
    before_grid = _to_lps(before_image, reference)
    after_grid = _to_lps(after.to_sitk(), reference)
    label_image = sitk.GetImageFromArray(mask.labels)
    label_image.CopyInformation(before_image)
    labels_grid = _to_lps(label_image, reference, nearest=True)

    threshold = head_threshold(before_grid.array)
    before_smooth = _smoothed(before_grid)
    before_fg = before_smooth > threshold
    before_hit, before_depth = _front_depth(before_smooth, threshold)
    x_index = int(round(np.nonzero(before_fg)[2].mean()))
    window = (
        float(np.percentile(before_grid.array, 1.0)),
        float(np.percentile(before_grid.array[before_fg], 99.5)),
    )
    first = np.clip(np.ceil(before_depth).astype(int), 0, before_fg.shape[1] - 1)
    tint = np.take_along_axis(labels_grid.array, first[:, None, :], axis=1)[:, 0, :] != FaceLabel.BACKGROUND
    side_smooth = _from_left(before_smooth)
    side_hit, side_depth = _front_depth(side_smooth, threshold)
    first = np.clip(np.ceil(side_depth).astype(int), 0, side_smooth.shape[1] - 1)
    side_labels = np.take_along_axis(_from_left(labels_grid.array), first[:, None, :], axis=1)[:, 0, :]
    after_smooth = _smoothed(after_grid)
    panels = [
        _sagittal(before_grid, x_index, window, labels_grid),
        _shade_front(before_hit, before_depth, tint),
        _shade_front(side_hit, side_depth, side_labels != FaceLabel.BACKGROUND),
        _sagittal(after_grid, x_index, window, labels_grid),
        _shade_front(*_front_depth(after_smooth, threshold), None, _depth_range(before_hit, before_depth)),
        _shade_front(
            *_front_depth(_from_left(after_smooth), threshold), None, _depth_range(side_hit, side_depth)
        ),
    ]
    canvas = Image.new("RGB", QC_SIZE)
    for i, rgb in enumerate(panels):
        canvas.paste(_fit_panel(rgb), ((i % 3) * PANEL_PX, TITLE_PX + (i // 3) * PANEL_PX))
    canvas.save(out_png)
    return out_png
