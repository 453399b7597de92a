"""Fixtures shared by the unit tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from worker.types import FaceLabel


@pytest.fixture(scope="session")
def toy_head() -> tuple[np.ndarray, np.ndarray]:
    """Tissue and label maps on a 2 mm LPS grid (z superior, y posterior), as the teacher makes them:
    brain classes 5-8 inside the head, face and ears on the skin and kept 6 mm from the brain."""
    z, y, x = np.mgrid[:100, :110, :90]
    head = ((z - 50) / 45.0) ** 2 + ((y - 55) / 50.0) ** 2 + ((x - 45) / 38.0) ** 2 < 1
    # Off-centre on every axis, so that a brain map not flipped with the image would miss the brain.
    brain = ((z - 60) / 30.0) ** 2 + ((y - 64) / 34.0) ** 2 + ((x - 52) / 24.0) ** 2 < 1
    tissue = np.where(head, 1, 0).astype(np.uint8)
    tissue[head & (z < 40)] = 2  # a second class outside the brain (jaw)
    tissue[brain] = 8  # T1: the brightest class, the scalp the darkest
    skin = head & ~ndi.binary_erosion(head, iterations=4)
    allowed = skin & ~ndi.binary_dilation(brain, iterations=3)
    labels = np.zeros(head.shape, dtype=np.uint8)
    labels[allowed & (y < 35) & (z < 60)] = FaceLabel.FACE
    labels[allowed & (abs(y - 60) < 8) & (abs(z - 50) < 8) & (abs(x - 45) > 30)] = FaceLabel.EARS
    assert (labels == FaceLabel.FACE).sum() > 500 and (labels == FaceLabel.EARS).sum() > 50
    return tissue, labels
