"""The evaluation's face detector: OpenCV's Haar cascades on surface renders (they ship in the wheel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker.render import RENDER_MM

CASCADES = ("frontalface_default", "frontalface_alt2", "profileface")
"""OpenCV Haar cascades used (``cv2.data.haarcascades``); profile runs on the image and its mirror."""

SCALE_FACTOR = 1.05

MIN_FACE_MM = 60.0
"""Smallest face looked for: 6 cm (a newborn's face is about 7 cm wide)."""

MIN_NEIGHBOURS = 40
"""Overlapping raw detections a face box needs in the primary cascade (``frontalface_default``
in the front view, the strongest of frontal and profile at 45 degrees); see :func:`face_found`."""

MIN_CONFIRM = 20
"""Neighbours a second, overlapping cascade's box needs to confirm the face."""

MIN_OVERLAP = 0.3
"""Intersection over union of two cascades' boxes for them to be the same face."""


@dataclass(frozen=True)
class FaceBox:
    """One grouped detection: pixel box, the cascade that found it and its neighbour count."""

    x: int
    y: int
    w: int
    h: int
    cascade: str
    neighbours: int

    def iou(self, other: FaceBox) -> float:
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union else 0.0


class FaceDetector:
    """OpenCV's bundled Haar cascades (:data:`CASCADES`), loaded once.

    Raises
    ------
    RuntimeError
        If OpenCV or one of its cascade files is missing.
    """

    def __init__(self, pixel_mm: float = RENDER_MM) -> None:
        import cv2

        self._cv2 = cv2
        self.min_size = max(20, int(round(MIN_FACE_MM / pixel_mm)))
        self.cascades = {}
        for name in CASCADES:
            path = Path(cv2.data.haarcascades) / f"haarcascade_{name}.xml"
            cascade = cv2.CascadeClassifier(str(path))
            if cascade.empty():
                raise RuntimeError(f"OpenCV cascade {path} is missing or unreadable")
            self.cascades[name] = cascade

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Every grouped detection of every cascade (minNeighbors 1; :func:`face_found` decides)."""
        image = np.ascontiguousarray(image, dtype=np.uint8)
        boxes: list[FaceBox] = []
        width = image.shape[1]
        for name, cascade in self.cascades.items():
            variants = [(image, False)]
            if name == "profileface":  # trained on one side only: look at the mirror too
                variants.append((np.ascontiguousarray(image[:, ::-1]), True))
            for picture, mirrored in variants:
                found, counts = cascade.detectMultiScale2(
                    picture, scaleFactor=SCALE_FACTOR, minNeighbors=1, minSize=(self.min_size, self.min_size)
                )
                for (x, y, w, h), n in zip(
                    np.asarray(found).reshape(-1, 4), np.asarray(counts).ravel(), strict=True
                ):
                    x = width - int(x) - int(w) if mirrored else int(x)
                    boxes.append(FaceBox(x, int(y), int(w), int(h), name, int(n)))
        return boxes


_DETECTOR: FaceDetector | None = None


def detect_faces(image: np.ndarray) -> list[FaceBox]:
    """The face boxes :func:`face_found` accepts in ``image`` (a 1 mm render), strongest first.

    A box is accepted when its cascade has at least :data:`MIN_NEIGHBOURS` neighbours and a
    box of another cascade with at least :data:`MIN_CONFIRM` overlaps it (IoU >=
    :data:`MIN_OVERLAP`): two independently trained detectors agree on one strong face.
    """
    global _DETECTOR
    if _DETECTOR is None:
        _DETECTOR = FaceDetector()
    return accepted_faces(_DETECTOR.detect(image))


def accepted_faces(boxes: Sequence[FaceBox]) -> list[FaceBox]:
    """The boxes of ``boxes`` that pass the rule of :func:`detect_faces`."""
    out = []
    for box in boxes:
        if box.neighbours < MIN_NEIGHBOURS:
            continue
        if any(
            other.cascade != box.cascade and other.neighbours >= MIN_CONFIRM and box.iou(other) >= MIN_OVERLAP
            for other in boxes
        ):
            out.append(box)
    return sorted(out, key=lambda b: -b.neighbours)


def face_found(boxes: Sequence[FaceBox]) -> bool:
    """Whether any box of :func:`detect_faces` was accepted."""
    return bool(accepted_faces(boxes))


def strongest(boxes: Sequence[FaceBox]) -> dict[str, int]:
    """Highest neighbour count per cascade (0 if none): the raw evidence behind a decision."""
    return {name: max((b.neighbours for b in boxes if b.cascade == name), default=0) for name in CASCADES}


def save_render(image: np.ndarray, boxes: Sequence[FaceBox], path: Path) -> Path:
    """``image`` as a PNG with ``boxes`` outlined in red."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for box in boxes:
        draw.rectangle((box.x, box.y, box.x + box.w, box.y + box.h), outline=(255, 0, 0), width=2)
    picture.save(path)
    return path
