"""The ears of the nnU-Net masker are blanked only near the air outside the head."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from worker.deface.outer_layer import outer_shell


def test_the_shell_is_the_outside_air_and_the_outer_layer_not_what_lies_under_a_dark_skull() -> None:
    z, y, x = np.mgrid[:40, :40, :40]
    radius = np.sqrt((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    # A 4 mm grid: scalp (radius 16-18), dark skull (14-16, below threshold), brain (< 14).
    head = (radius < 18) & ~((radius >= 14) & (radius < 16))
    shell = outer_shell(head, spacing_mm=4.0, shell_mm=4.0)
    assert shell[radius >= 19].all(), "the air around the head is in the shell"
    touching_air = head & ndi.binary_dilation(~head & (radius >= 18))
    assert touching_air.any() and shell[touching_air].all(), "the outermost scalp is in the shell"
    assert not shell[radius < 15.5].any(), "the dark skull and the brain under it are not"
    deeper = outer_shell(head, spacing_mm=4.0, shell_mm=8.0)
    assert deeper.sum() > shell.sum() and not deeper[radius < 13].any()


def _cut_head() -> tuple[np.ndarray, np.ndarray]:
    """A 4 mm head whose lower half lies beyond the grid: scalp, dark skull and brain cut at z = 0."""
    z, y, x = np.mgrid[:30, :40, :40]
    radius = np.sqrt((z + 2) ** 2 + (y - 20) ** 2 + (x - 20) ** 2)
    head = (radius < 18) & ~((radius >= 14) & (radius < 16))
    return head, radius


def test_dark_tissue_on_a_cut_through_the_head_is_not_outside_air() -> None:
    head, radius = _cut_head()
    shell = outer_shell(head, spacing_mm=4.0, shell_mm=4.0)
    assert shell[radius >= 19].all(), "the air around the head is in the shell"
    assert not shell[radius < 15.5].any(), "the dark skull cut by the grid's edge, and the brain, are not"


def test_dark_tissue_on_a_field_of_view_cut_is_not_outside_air() -> None:
    head, radius = _cut_head()
    # The same head on a grid reaching 3 voxels beyond the volume's lower edge.
    grid = np.zeros((33, 40, 40), dtype=bool)
    grid[3:] = head
    fov = np.zeros_like(grid)
    fov[3:] = True
    shell = outer_shell(grid, spacing_mm=4.0, shell_mm=4.0, fov=fov)
    assert not shell[:3].any(), "beyond the field of view is not air"
    assert shell[3:][radius >= 19].all()
    assert not shell[3:][radius < 15.5].any(), "the dark skull at the cut and the brain are not in it"
