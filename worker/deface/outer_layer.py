"""The head's outer layer, where the nnU-Net masker may blank ears (and the teacher's ear label lives).

One definition for both sides of the evaluation: the masker (:mod:`worker.deface.nnunet`) cuts its
dilated ears to :func:`outer_shell` of :func:`head_mask` on a 2 mm LPS grid, and the teacher labels
(``training/teacher.py``) cut their ear label and place their temporalis region with the same two
functions on their own 2 mm LPS grid.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from worker.deface.template import _head_region, _intensity_window, _normalised
from worker.grid import Geometry

SHELL_GRID_MM = 2.0
"""Spacing of the grid on which the dilated ears are finally cut to the outer layer."""


def head_mask(array: np.ndarray) -> np.ndarray:
    """Head tissue of a 2 mm grid: Otsu's threshold of the windowed image, largest component, holes
    filled slice by slice along each axis (the ear canal, the sinuses, dark bone under the scalp)."""
    low, high = _intensity_window(array)
    img = sitk.GetImageFromArray(array)
    fg = sitk.GetArrayFromImage(_head_region(_normalised(img, low, high))).astype(bool)
    fg = ndi.binary_opening(fg, iterations=1)
    lab, n = ndi.label(fg)
    if n > 1:
        sizes = ndi.sum(fg, lab, range(1, n + 1))
        fg = lab == (1 + int(np.argmax(sizes)))
    fg = ndi.binary_closing(fg, iterations=2)
    for axis in range(3):
        fg = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(fg, axis, 0)], axis=axis)
    return fg


def outer_shell(
    head: np.ndarray,
    spacing_mm: float | tuple[float, ...],
    shell_mm: float,
    fov: np.ndarray | None = None,
) -> np.ndarray:
    """The air outside the head, and the head voxels within ``shell_mm`` of it.

    Air is below-threshold space connected to the edge of what was imaged (the grid's border, or
    ``fov``'s edge when the grid reaches beyond the volume). Dark tissue inside the head (bone,
    CSF) is not air, so the brain under a dark skull stays deep; and beyond the field of view is
    not air either, so a head cut by the field of view (ears outside it) is not skin at the cut.
    Where the field of view cuts the head, the dark bone, muscle and CSF on the cut lie inside the
    head's outline there: they are not edge air (:func:`_cut_seeds`), or the outer layer would be
    measured from the cut and reach the temporalis and the brain.
    """
    known = np.ones_like(head, dtype=bool) if fov is None else fov.astype(bool)
    components, _ = ndi.label(~head & known)
    seeds = _cut_seeds(head, known)
    outside_labels = np.unique(components[seeds & (components > 0)])
    outside = np.isin(components, outside_labels)
    sampling = (spacing_mm,) * head.ndim if isinstance(spacing_mm, int | float) else spacing_mm
    # Within shell_mm of the outside air: the air dilated by an ellipsoid of that radius in millimetres
    # (the same voxels as thresholding a Euclidean distance map, at a fraction of its cost).
    reach = [int(np.floor(shell_mm / float(s))) for s in sampling]
    offsets = np.mgrid[tuple(slice(-r, r + 1) for r in reach)]
    ball = sum((o * float(s)) ** 2 for o, s in zip(offsets, sampling, strict=True)) <= shell_mm**2
    return ndi.binary_dilation(outside, structure=ball) & known


def _cut_seeds(head: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Voxels on the edge of what was imaged that can start the outside air.

    An edge voxel ends the imaged region along some axis (the grid's border, or the field of view's
    edge when the grid reaches beyond it). It seeds the outside air only if it lies outside the
    head's outline in its slice across that axis: the cross-section of the head at the cut, with
    its holes filled (beyond the field of view counted as head, so a head cut obliquely still has
    a closed outline). Dark tissue on a cut through the head is inside that outline.
    """
    beyond = ~known
    seeds = np.zeros_like(head, dtype=bool)
    for axis in range(head.ndim):
        edge = np.zeros_like(head, dtype=bool)
        index = [slice(None)] * head.ndim
        for end in (0, -1):
            index[axis] = end
            edge[tuple(index)] = True
        ahead = np.zeros_like(head, dtype=bool)  # the neighbour along the axis is beyond the field of view
        index[axis] = slice(1, None)
        low = [slice(None)] * head.ndim
        low[axis] = slice(None, -1)
        ahead[tuple(low)] = beyond[tuple(index)]
        ahead[tuple(index)] |= beyond[tuple(low)]
        edge = (edge | ahead) & known & ~head
        if not edge.any():
            continue
        outline = np.zeros_like(head, dtype=bool)
        for plane in np.unique(np.nonzero(edge)[axis]):
            index[axis] = plane
            outline[tuple(index)] = ndi.binary_fill_holes(head[tuple(index)] | beyond[tuple(index)])
        seeds |= edge & ~outline
    return seeds


def whole_voxels_inside(shell: np.ndarray, image: Geometry) -> np.ndarray:
    """``shell`` (on an LPS grid of :data:`SHELL_GRID_MM`) shrunk by half a voxel of ``image``.

    The shell is carried to the volume's grid by nearest neighbour: a voxel whose centre lies in it
    is blanked whole. Thick slices across the side of the head (4.8 mm in the decubitus series) then
    reach half a slice deeper than the layer, into the temporalis; shrinking the layer by half the
    voxel's extent along each axis keeps every blanked voxel inside it. Voxels up to a grid step
    change nothing.
    """
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    half_xyz = 0.5 * direction @ np.asarray(image.GetSpacing())  # the voxel's half extent along x, y, z
    reach = [int(np.floor(h / SHELL_GRID_MM + 1e-6)) for h in half_xyz[::-1]]  # (z, y, x)
    if not any(reach):
        return shell
    offsets = np.mgrid[tuple(slice(-r, r + 1) for r in reach)]
    ellipsoid = sum((o / max(r, 1)) ** 2 for o, r in zip(offsets, reach, strict=True)) <= 1.0
    return ndi.binary_erosion(shell, structure=ellipsoid, border_value=1)
