"""The ears of the nnU-Net masker are blanked only near the air outside the head."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from worker.deface.nnunet import outer_shell


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
