"""Running maskers over the evaluation heads: the worker's own path per head, then the measures.

``pediface evaluate`` calls :func:`run`; :mod:`evaluation.results` turns the rows into tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from common.errors import PedifaceError
from evaluation.detector import (
    CASCADES,
    MIN_CONFIRM,
    MIN_FACE_MM,
    MIN_NEIGHBOURS,
    MIN_OVERLAP,
    SCALE_FACTOR,
    FaceBox,
    FaceDetector,
    accepted_faces,
    face_found,
    save_render,
    strongest,
)
from evaluation.grid_picture import GridPictures, write_grid
from evaluation.heads import (
    AGE_BAND_SEED,
    AGE_BANDS,
    CONTRASTS,
    DEFAULT_HEADS,
    SHARED,
    SYNTH_SCALES,
    SYNTH_SEED,
    SYNTH_SOURCE,
    AgeBand,
    HeadSpec,
    eval_heads,
)
from evaluation.metrics import (
    NEAR_HEAD_MM,
    at_background,
    below_skin,
    changed_inside,
    fraction_removed,
    near_head,
    nonzero_lost,
    on_grid,
    over_blanked,
)
from evaluation.results import Result, ViewResult
from training.synth import OUT_MM
from worker.deface.base import FaceMasker
from worker.render import (
    LIGHT,
    RENDER_MM,
    VIEWS,
    lps_array,
    lps_reference,
    render_views,
    surface_threshold,
)
from worker.types import FaceLabel, FaceMask, Volume


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
    from worker.volume.read import read_instances

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return read_instances(files)


def _pipeline(masker: FaceMasker, datasets: list[Any]) -> _Defaced:
    """The worker's pipeline on one series: deface, de-identify, then read the output back."""
    from worker.deid import DeidPolicy
    from worker.pipeline import deface_series
    from worker.volume.pixels import build_volume

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
    face: np.ndarray | None = None  # teacher grid
    near_head: np.ndarray | None = None  # teacher grid: where over-blanking is counted
    temporalis: np.ndarray | None = None  # teacher grid


def _teacher_reference(teacher: Any) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    grid = sitk.Image(teacher.image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(teacher.image)
    return grid, teacher.labels == FaceLabel.EARS, teacher.brain


def _within_mm(region: np.ndarray, mm: float, spacing_zyx: tuple[float, ...]) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.distance_transform_edt(~region, sampling=spacing_zyx) <= mm


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
        self.pictures = GridPictures()  # renders for `pediface evaluate --grid`
        self._labeller: Any = None
        self.teachers: dict[str, Any] = {}  # real heads' teacher labels, by head name (pictures)
        self._sources: dict[str, Any] = {}  # teacher labels of the synthetic heads' source heads

    # -- pieces --

    def labeller(self) -> Any:
        if self._labeller is None:
            from training.teacher import TeacherLabeller

            self._labeller = TeacherLabeller()
        return self._labeller

    def _views(
        self, volume: Volume, grid: sitk.Image, threshold: float, head: str, column: str
    ) -> dict[str, list[FaceBox]]:
        renders = render_views(lps_array(volume, RENDER_MM, grid), RENDER_MM, threshold)
        found = {view: self.detector.detect(image) for view, image in renders.items()}
        for view, image in renders.items():
            faces = accepted_faces(found[view])
            self.pictures.add(head, column, view, image, faces)
            if self.renders_dir is not None:
                save_render(image, faces, self.renders_dir / f"{head}_{column}_{view}.png")
        return found

    def _reference(
        self, name: str, volume: Volume, teacher_image: sitk.Image | None, with_teacher: bool
    ) -> _Reference:
        grid = lps_reference(volume)
        threshold = surface_threshold(lps_array(volume, RENDER_MM, grid))
        before = self._views(volume, grid, threshold, name, "before")
        image = teacher_image if teacher_image is not None else volume.to_sitk(np.float32)
        teacher_grid = ears = brain = None
        ref = _Reference(image, None, None, None, grid, threshold, before)
        if with_teacher:
            teacher = self.labeller().label(image)
            teacher_grid, ears, brain = _teacher_reference(teacher)
            ref.teacher_grid, ref.ears, ref.brain = teacher_grid, ears, brain
            ref.face = teacher.labels == FaceLabel.FACE
            spacing = tuple(teacher.image.GetSpacing()[::-1])
            ref.near_head = _within_mm(teacher.head, NEAR_HEAD_MM, spacing)
            ref.temporalis = teacher.temporalis
            self.teachers[name] = teacher
        return ref

    def _judge(
        self, name: str, spec_kind: str, held_out: bool, label: str, ref: _Reference, done: _Defaced
    ) -> Result:
        result = Result(name, spec_kind, label, held_out, done.outcome, seconds=_round(done.seconds, 2))
        after_views = None
        if done.after is not None:
            after_views = self._views(done.after, ref.render_grid, ref.threshold, name, label)
        else:
            self.pictures.refused(name, label, done.outcome)
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
            if ref.face is not None:
                result.face_fraction = 0.0
            if ref.near_head is not None:
                result.over_blanked = 0.0
            if ref.temporalis is not None:
                result.temporalis_changed = 0
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
            # Removed: at the background after defacing (blanked, or nothing there to blank); over-
            # blanking counts only what defacing changed.
            gone = at_background(done.before.array, done.after.array)
            removed_t = on_grid(gone.astype(np.uint8), before_image, ref.teacher_grid) > 0
            result.ear_fraction = fraction_removed(removed_t, ref.ears)
            if ref.face is not None:
                result.face_fraction = fraction_removed(removed_t, ref.face)
            blank_t = on_grid(changed.astype(np.uint8), before_image, ref.teacher_grid) > 0
            if ref.face is not None and ref.near_head is not None:
                result.over_blanked = over_blanked(blank_t, ref.face | ref.ears, ref.near_head)
            if ref.temporalis is not None:
                region = on_grid(ref.temporalis.astype(np.uint8), ref.teacher_grid, before_image) > 0
                result.temporalis_changed = changed_inside(done.before.array, done.after.array, region)
        if result.brain_changed is not None:
            result.brain_changed_ml = _round(result.brain_changed * voxel_ml, 3)
        return result

    # -- heads --

    def real_head(self, spec: HeadSpec) -> list[Result]:
        """Every masker on one real head (DICOM: through the whole pipeline)."""
        from training.teacher import read_head

        self.on_step(f"{spec.name}: reading")
        datasets = None
        if spec.kind == "dicom":
            from worker.volume.pixels import build_volume

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

    def source_teacher(self, source: str = SYNTH_SOURCE) -> Any:
        """The teacher labels of the held-out head the synthetic heads are made from (labelled once)."""
        if source not in self._sources:
            from training.teacher import read_head

            self.on_step(f"synthetic: teacher labels of {source}")
            self._sources[source] = self.labeller().label(read_head(eval_heads()[source].path))
        return self._sources[source]

    def synthetic_heads(self, per_contrast: int, source: str = SYNTH_SOURCE) -> list[Result]:
        """``per_contrast`` child-sized synthetic heads per contrast from a held-out head, every masker."""
        if per_contrast <= 0:
            return []
        from training.synth import FixedContrast, synthesize

        teacher = self.source_teacher(source)
        results = []
        for number, contrast in enumerate(c for c in CONTRASTS for _ in range(per_contrast)):
            rng = FixedContrast(np.random.default_rng([SYNTH_SEED, number]), contrast)
            self.on_step(f"synthetic {contrast} #{number}")
            image, labels, params = synthesize(
                teacher.tissue,
                teacher.labels,
                rng,  # type: ignore[arg-type]
                scale_range=SYNTH_SCALES,
                p_orientation=0.0,
            )
            results += self.synthetic_head(f"synth-{number:02d}", contrast, image, labels, params)
        return results

    def age_band_heads(
        self,
        per_contrast: int,
        bands: Iterable[AgeBand] = AGE_BANDS,
        source: str = SYNTH_SOURCE,
        grid_mm: float = OUT_MM,
    ) -> list[Result]:
        """``per_contrast`` heads per contrast in each band (:mod:`evaluation.age_bands`), every masker;
        each result carries its band (``Result.age_band``) and drawn scale (``params["scale"]``).
        ``grid_mm``: the heads' voxel size, 4 (the model's grid) or 2 (the same heads, finer; named
        ``synth-<band>-2mm-<n>``)."""
        if per_contrast <= 0:
            return []
        from evaluation.age_bands import band_head

        teacher = self.source_teacher(source)
        results: list[Result] = []
        for band in bands:
            for number, contrast in enumerate(c for c in CONTRASTS for _ in range(per_contrast)):
                self.on_step(f"age band {band.name}: {contrast} #{number}")
                image, labels, brain, params = band_head(
                    teacher.tissue, teacher.labels, band, contrast, number, grid_mm
                )
                grid = "" if grid_mm == OUT_MM else f"{grid_mm:g}mm-"
                name = f"synth-{band.key}-{grid}{number:02d}"
                for result in self.synthetic_head(name, contrast, image, labels, params, brain, grid_mm):
                    result.age_band = band.name
                    results.append(result)
        return results

    def synthetic_head(
        self,
        name: str,
        contrast: str,
        image: np.ndarray,
        labels: np.ndarray,
        params: dict[str, Any],
        brain: np.ndarray | None = None,
        grid_mm: float = OUT_MM,
    ) -> list[Result]:
        """Every masker on one synthetic head (``grid_mm`` voxels, LPS), judged against its own labels on
        its grid.

        ``brain``: the atlas brain on that grid (``training.synth.synthesize_with_brain``); without it
        brain voxels are not counted.
        """
        spacing = (float(grid_mm),) * 3
        volume = Volume(image, spacing, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        self.pictures.titles[name] = f"{name}\n{contrast}"
        ref = self._reference(name, volume, None, with_teacher=False)
        grid = sitk.GetImageFromArray(labels)
        grid.SetSpacing(spacing)
        ref.teacher_grid = grid
        ref.ears = labels == FaceLabel.EARS
        ref.brain = brain  # on the volume's own grid: counted as on the real heads
        reach = near_head(image, spacing)
        results = []
        for label, masker in self.maskers.items():
            done = _predict(masker, volume)
            result = self._judge(name, "synthetic", True, label, ref, done)
            result.contrast = contrast
            result.params = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in params.items()}
            blank = done.mask.blank() if done.mask is not None else np.zeros(labels.shape, bool)
            result.face_fraction = fraction_removed(blank, labels == FaceLabel.FACE)
            result.ear_fraction = fraction_removed(blank, labels == FaceLabel.EARS)
            result.over_blanked = over_blanked(blank, labels != 0, reach)
            results.append(result)
        return results


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def run(
    maskers: dict[str, FaceMasker],
    heads: Iterable[str] = DEFAULT_HEADS,
    synthetic: int = 1,
    on_item: Callable[[str], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    renders_dir: Path | None = None,
    grid: Path | None = None,
    age_bands: int = 0,
    age_band_mm: float = OUT_MM,
) -> list[Result]:
    """The whole evaluation; ``on_item`` is called once per head (and synthetic set) finished.

    ``renders_dir``: see :class:`Evaluation`. ``grid``: write the before/after picture of every head
    there (:mod:`evaluation.grid_picture`). ``age_bands``: synthetic heads per contrast in each age
    band (:mod:`evaluation.age_bands`), made on a grid of ``age_band_mm`` (4 or 2).

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
    if age_bands:
        results.extend(evaluation.age_band_heads(age_bands, grid_mm=age_band_mm))
        if on_item:
            on_item("age bands")
    if grid is not None:
        write_grid(evaluation.pictures, grid)
    return results


def run_context() -> dict[str, str]:
    """When and where a run happened: UTC date, CPU model and count, Python, kernel, OpenCV."""
    from datetime import UTC, datetime

    from common.machine import describe

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
        "age_band_scales": {band.name: band.scales for band in AGE_BANDS},
        "age_band_seed": AGE_BAND_SEED,
    }
