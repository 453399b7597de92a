"""Pictures of the temporalis region on a head, for a person to check by eye that it sits on the muscle.

Three orthogonal slices of the teacher's 2 mm LPS grid through the centre of the head's left temporalis
region (the patient's left is on the picture's right in the coronal and axial slices, as in radiology):
the region in green, the teacher's ear label in red, its face label in blue, on the grey head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worker.types import FaceLabel

SCALE = 3
"""Picture pixels per 2 mm voxel."""


def _grey(array: np.ndarray) -> np.ndarray:
    low, high = np.percentile(array, (1.0, 99.5))
    return (np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255).astype(np.uint8)


def _overlay(grey: np.ndarray, layers: list[tuple[np.ndarray, tuple[int, int, int]]]) -> np.ndarray:
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for mask, colour in layers:
        rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.asarray(colour, dtype=np.float32)
    return rgb.astype(np.uint8)


def slice_centre(region: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) through which the slices pass: the centre of the region's left half (LPS: x grows
    to the left), or of the whole region when the left half is empty; the grid centre if it is empty."""
    points = np.argwhere(region)
    if len(points) == 0:
        return tuple(int(s // 2) for s in region.shape)  # type: ignore[return-value]
    left = points[points[:, 2] >= region.shape[2] / 2]
    chosen = left if len(left) else points
    return tuple(int(v) for v in np.round(chosen.mean(axis=0)))  # type: ignore[return-value]


def temporalis_picture(teacher: Any, centre_on: str = "temporalis") -> np.ndarray:
    """An RGB picture (axial | coronal | sagittal) of ``teacher``'s temporalis region (uint8).

    ``centre_on="ears"`` puts the slices through the left ear label instead: how deep the teacher's
    ear reaches under the skin, beside the temporalis above it.
    """
    import SimpleITK as sitk

    image = sitk.GetArrayFromImage(teacher.image)
    grey = _grey(image)
    region = np.asarray(teacher.temporalis, dtype=bool)
    ears = teacher.labels == FaceLabel.EARS
    face = teacher.labels == FaceLabel.FACE
    z, y, x = slice_centre(ears if centre_on == "ears" else region)
    cuts = (
        # axial: anterior up, patient's right on the picture's left (LPS x grows to the left)
        (np.s_[z, :, :], False),
        # coronal: superior up
        (np.s_[:, y, :], True),
        # sagittal: superior up, anterior on the left
        (np.s_[:, :, x], True),
    )
    panels = []
    for index, flip_up in cuts:
        rgb = _overlay(
            grey[index],
            [(face[index], (60, 90, 255)), (ears[index], (255, 40, 40)), (region[index], (40, 230, 40))],
        )
        if flip_up:
            rgb = rgb[::-1]
        panels.append(np.kron(rgb, np.ones((SCALE, SCALE, 1), dtype=np.uint8)))
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)


def save_temporalis_picture(teacher: Any, path: Path, title: str = "", centre_on: str = "temporalis") -> Path:
    """:func:`temporalis_picture` as a PNG, ``title`` written in its top-left corner."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(temporalis_picture(teacher, centre_on))
    if title:
        ImageDraw.Draw(picture).text((4, 4), title, fill=(255, 255, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
