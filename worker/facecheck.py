"""Is a face still recognisable? A CNN face detector run on surface renders of a head.

The pipeline's guard rail (``deface.face_check``): after the mask is blanked and before anything
is written or sent, the defaced head's skin surface is rendered from the front, both
three-quarter views and both profiles (:func:`worker.render.face_check_renders`), and dlib's MMOD
CNN face detector (``models/face-detector-mmod``, weights shipped, nothing downloaded) looks at
each render. A detection scoring at least :data:`FACE_SCORE_THRESHOLD` in any view means a face
an attacker could photograph is left: the series is quarantined. The same check, on an image
nobody defaced, is evidence that its field of view holds no face
(:func:`worker.deface.evidence.no_face_evidence`), and ``pediface check`` runs it on any file.

Detector family: a convolutional network trained on photographs, not the evaluation's Haar
cascades (``evaluation.detector``), so that the check does not share the evaluation's blind spots.
dlib is imported here only, on first use.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from worker.deface import MODELS_ROOT
from worker.render import FACE_CHECK_MM, FACE_CHECK_VIEWS, face_check_renders
from worker.types import Volume

DETECTOR_DIR = MODELS_ROOT / "face-detector-mmod"
WEIGHTS = "mmod_human_face_detector.dat"

FACE_SCORE_THRESHOLD = 0.15
"""Lowest detector score counted as a face. Chosen on the shared real heads (docs/defacing.md,
"Face check"): every view of every head with a face in the field of view scores above it before
defacing, and no view of any head defaced by the shipped masker reaches it."""

HEAD_WIDTH_PX = 128
"""Each render is cropped to the head's silhouette and scaled to this width: the face then spans
70 to 90 pixels whatever the head's size (newborn or adult), so that no upsampling (four times
the work) is needed. The detector's time grows with the pixels; at 100 pixels it misses the
three-quarter views of IXI012, at 150 it scores the three-quarter views of the 2D decubitus heads
lower (0.29-0.63 against 0.59-0.93) and takes a third longer (docs/defacing.md, "Face check")."""

MAX_HEIGHT_RATIO = 1.2
"""Rows kept below the top of the head, in widths of its silhouette (ears included): down to the
mouth of an adult (whose chin lies near 1.4) and past the chin of a child. The neck and shoulders
below only cost detector time, and the detector needs no more of the chin than that (every shared
head's face scores 0.59 or more with this crop, docs/defacing.md)."""

CROP_MARGIN = 0.06
"""Border added around the silhouette before scaling, as a fraction of its width."""


@dataclass(frozen=True)
class Detection:
    """One face the detector reports in one view: its score and its box in the view's render."""

    view: str
    score: float
    box: tuple[int, int, int, int]  # left, top, right, bottom in the render's pixels


@dataclass(frozen=True)
class FaceCheckResult:
    """What the face check saw in one volume; true (a face found) when any view holds a face."""

    detections: tuple[Detection, ...]
    threshold: float
    views: tuple[str, ...]
    seconds: float
    renders: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def faces(self) -> tuple[Detection, ...]:
        return tuple(d for d in self.detections if d.score >= self.threshold)

    @property
    def face_found(self) -> bool:
        return bool(self.faces)

    def __bool__(self) -> bool:
        return self.face_found

    @property
    def best(self) -> Detection | None:
        """The highest-scoring detection, whether or not it reaches the threshold."""
        return max(self.detections, key=lambda d: d.score, default=None)

    def best_of(self, view: str) -> float | None:
        """The best score in one view (None: no detection there)."""
        return max((d.score for d in self.detections if d.view == view), default=None)

    def describe(self) -> str:
        """One line a person can read: where the face is, or the best score that stayed below."""
        best = self.best
        if self.face_found and best is not None:
            return f"face detectable: view {best.view}, score {best.score:.2f} (threshold {self.threshold})"
        below = f"best score {best.score:.2f} in view {best.view}" if best else "no detection at all"
        return f"no face in {len(self.views)} views ({below}; threshold {self.threshold})"

    def as_record(self) -> dict[str, object]:
        """Numbers and labels for the job's manifest."""
        best = self.best
        return {
            "face_found": self.face_found,
            "best_view": best.view if best else None,
            "best_score": round(best.score, 3) if best else None,
            "threshold": self.threshold,
            "views": list(self.views),
            "seconds": round(self.seconds, 3),
        }


def verify_weights(model_dir: Path = DETECTOR_DIR) -> Path:
    """The weights file, checked against the folder's ``SHA256SUMS`` (raises ``ValueError``)."""
    sums = model_dir / "SHA256SUMS"
    if not sums.is_file():
        raise ValueError(f"face detector folder {model_dir} has no SHA256SUMS")
    expected = dict(
        reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line.strip()
    )
    weights = model_dir / WEIGHTS
    if WEIGHTS not in expected or not weights.is_file():
        raise ValueError(f"face detector weights {weights} are missing or not listed in SHA256SUMS")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != expected[WEIGHTS]:
        raise ValueError(f"face detector weights {weights} do not match SHA256SUMS")
    return weights


def fit_head(render: np.ndarray, width_px: int = HEAD_WIDTH_PX) -> tuple[np.ndarray, float, tuple[int, int]]:
    """``render`` cropped to the head (plus :data:`CROP_MARGIN`) and scaled to ``width_px`` wide.

    Returns ``(image, scale, (left, top))``: a point (x, y) of the image lies at
    ``(left + x / scale, top + y / scale)`` in the render.
    """
    import cv2

    rows = np.flatnonzero(render.any(axis=1))
    cols = np.flatnonzero(render.any(axis=0))
    if rows.size == 0:
        return np.zeros((width_px, width_px), np.uint8), 1.0, (0, 0)
    margin = int(round(CROP_MARGIN * (cols[-1] - cols[0] + 1)))
    left, right = max(0, cols[0] - margin), min(render.shape[1], cols[-1] + 1 + margin)
    top = max(0, rows[0] - margin)
    bottom = min(render.shape[0], rows[-1] + 1 + margin, top + int(MAX_HEIGHT_RATIO * (right - left)))
    crop = render[top:bottom, left:right]
    scale = width_px / crop.shape[1]
    height = max(1, int(round(crop.shape[0] * scale)))
    image = cv2.resize(crop, (width_px, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image), scale, (int(left), int(top))


class FaceDetector:
    """dlib's MMOD CNN face detector, loaded once from the shipped, checksummed weights.

    Raises
    ------
    ValueError
        If the weights do not match their ``SHA256SUMS``.
    RuntimeError
        If dlib is not installed (the worker extra, ``dlib-bin``).
    """

    def __init__(self, model_dir: Path = DETECTOR_DIR) -> None:
        weights = verify_weights(model_dir)
        try:
            import dlib
        except ImportError as exc:
            raise RuntimeError(
                "the face check needs dlib (pip install 'pediface[worker]', which brings dlib-bin)"
            ) from exc
        self._net = dlib.cnn_face_detection_model_v1(str(weights))

    def detect(self, image: np.ndarray) -> list[tuple[float, tuple[int, int, int, int]]]:
        """Every face the network reports in a uint8 image (score above 0), without upsampling."""
        found = self._net(np.ascontiguousarray(image, dtype=np.uint8), 0)
        return [
            (float(d.confidence), (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()))
            for d in found
        ]


class FaceCheck:
    """The face check: renders of a volume, the detector on each, and the threshold.

    Callable on a :class:`Volume` (what :data:`worker.deface.evidence.FaceCheck` expects): the
    result is true when a face is found and says what was seen. The detector is loaded on first
    use and kept.
    """

    def __init__(
        self,
        threshold: float = FACE_SCORE_THRESHOLD,
        views: dict[str, float] = FACE_CHECK_VIEWS,
        model_dir: Path = DETECTOR_DIR,
    ) -> None:
        self.threshold = threshold
        self.views = dict(views)
        self.model_dir = model_dir
        self._detector: FaceDetector | None = None

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(self.model_dir)
        return self._detector

    def check(self, volume: Volume, *, keep_renders: bool = False) -> FaceCheckResult:
        """Render ``volume`` from each view and look for a face in each render."""
        started = time.perf_counter()
        renders = face_check_renders(volume, spacing_mm=FACE_CHECK_MM, views=self.views)
        detections = []
        for view, render in renders.items():
            image, scale, (left, top) = fit_head(render)
            for score, (x0, y0, x1, y1) in self.detector.detect(image):
                box = (
                    int(round(left + x0 / scale)),
                    int(round(top + y0 / scale)),
                    int(round(left + x1 / scale)),
                    int(round(top + y1 / scale)),
                )
                detections.append(Detection(view, score, box))
        return FaceCheckResult(
            detections=tuple(sorted(detections, key=lambda d: -d.score)),
            threshold=self.threshold,
            views=tuple(self.views),
            seconds=time.perf_counter() - started,
            renders=renders if keep_renders else {},
        )

    def __call__(self, volume: Volume) -> FaceCheckResult:
        return self.check(volume)


def draw_detections(result: FaceCheckResult, out_png: Path) -> Path:
    """Every view's render side by side, the detections boxed (red: a face, grey: below threshold).

    Needs a result made with ``keep_renders=True``.
    """
    from PIL import Image, ImageDraw

    from common.files import atomic_write

    if not result.renders:
        raise ValueError("the face check result holds no renders (check with keep_renders=True)")
    scale = 2  # the 2 mm renders are small: drawn twice their size
    panels = []
    for view, render in result.renders.items():
        panel = Image.fromarray(render).convert("RGB")
        panel = panel.resize((panel.width * scale, panel.height * scale), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(panel)
        for detection in (d for d in result.detections if d.view == view):
            colour = (255, 40, 40) if detection.score >= result.threshold else (160, 160, 160)
            draw.rectangle([v * scale for v in detection.box], outline=colour, width=3)
            draw.text(
                (detection.box[0] * scale, detection.box[3] * scale + 2),
                f"{detection.score:.2f}",
                fill=colour,
            )
        draw.text((4, 4), view, fill=(255, 255, 0))
        panels.append(panel)
    canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)))
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    atomic_write(Path(out_png), buffer.getvalue())
    return Path(out_png)
