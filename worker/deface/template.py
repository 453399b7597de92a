"""Face masking by registering an adult head template (pydeface's) to the volume.

The template head is registered to the volume (affine, Mattes mutual
information, on ~3 mm copies of both), and the template's face region is
carried onto the volume's grid and dilated by a safety margin. The guard rails
below turn every result this method cannot vouch for into a
:class:`~common.errors.MaskingError`; their thresholds were calibrated on the
real heads in ``../shared/data`` (see ``models/template-pydeface/MODEL_CARD.md``).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import SimpleITK as sitk

from common.errors import MaskingError
from worker.deface.base import checked_image, dilate_mm, verify_model_dir
from worker.types import FaceLabel, FaceMask, Volume

HEAD_FILE = "pydeface_mean_reg2mean.nii.gz"
"""The template head (int16, 176x256x256, ~1 mm) in the model folder."""

FACE_FILE = "pydeface_facemask.nii.gz"
"""The template's mask on the same grid: 1 = keep, 0 = face region to remove."""

WORKING_SPACING_MM = 3.0
"""Registration runs on copies of both images binned to about this spacing."""

MAX_METRIC = -0.55
"""A final Mattes MI (32 bins, all voxels, lower is better) above this means "not aligned".

Calibration (``MODEL_CARD.md``): the four real heads scored -0.68 to -0.90 at
their registration, and -0.49 to -0.51 when that result was shifted 10 mm
anteriorly; skull-stripped brains scored -0.19 and -0.32.
"""

MAX_SIMILARITY_METRIC = -0.28
"""The same metric after the similarity stage, above which the affine stage is not run: refused early.

The affine stage improved the metric by 0.028 to 0.135 on the shared heads (UIH: -0.610 to -0.744); a
head above this would need twice the largest gain to reach :data:`MAX_METRIC`. After the similarity
stage the heads with a face scored -0.61 to -0.82 (MNI305's average -0.47), the skull-stripped children
-0.24 and -0.15: they are refused in half the time (MODEL_CARD.md).
"""

MIN_FACE_TISSUE = 0.60
"""Least share of the template's face tissue that must land on head tissue in the volume.

Calibration: 0.71 to 0.84 on the four real heads, 0.48 to 0.57 with a 10 mm
anterior shift, 0.00 and 0.25 on skull-stripped brains, 0.31 on the MNI305
average whose field of view cuts through the face.
"""

HEAD_FRACTION_RANGE = (0.01, 0.25)
"""Plausible share of the head's voxels that the (dilated) mask covers.

Calibration: 0.03 (field of view cut below the eyes) to 0.09 on the real
heads; a child's face is a smaller share of the head than an adult's, hence
the low floor. The ceiling is nearly three times the largest seen.
"""

SCALE_RANGE = (0.6, 1.8)
"""Plausible singular values of the volume-to-template linear map (1 = template size).

The real adult heads: 0.87 to 1.03; a newborn's head is about 0.62 times an
adult's (1.6).
"""

FACE_EXTENSION_MM = 80.0
"""How far the face region is extended below the template's field of view.

The template ends at the chin; the face region in its lowest slice is
repeated this far down so that the chin and jaw of a series that covers more
of the neck are removed too (pydeface leaves them).
"""

MAX_ANISOTROPY = 1.5
"""Largest ratio between the affine's singular values: heads are not squashed by half."""


_Filter = TypeVar("_Filter", bound=sitk.ProcessObject)


@dataclass(frozen=True)
class _Registration:
    transform: sitk.AffineTransform
    metric: float
    iterations: int


class TemplateMasker:
    """Finds the face by affine registration of pydeface's adult head template.

    Build once per process (loading and binning the template takes about a
    second) and call :meth:`predict` for each series.

    Parameters
    ----------
    model_dir : Path
        Folder holding :data:`HEAD_FILE`, :data:`FACE_FILE` and ``SHA256SUMS``.
    margin_mm : float
        Safety margin added around the registered face region, in millimetres
        of the volume (a 3 mm registration grid leaves a few mm of error).
    threads : int, optional
        Threads for binning, resampling and dilating the full-resolution
        images; by default SimpleITK's global default (all cores). The
        registration itself always runs on one thread (see ``_one_sitk_thread``).
    seed : int
        Seed of the random metric sampling, so that a series always gets the
        same mask (>= 1; SimpleITK treats 0 as "seed from the clock").

    Raises
    ------
    ValueError
        If an argument is out of range, the model folder fails its checksum
        check, or the two template files are not on the same grid.
    """

    name = "template-pydeface"

    def __init__(
        self, model_dir: Path, *, margin_mm: float = 4.0, threads: int | None = None, seed: int = 1
    ) -> None:
        if not (math.isfinite(margin_mm) and 0.0 <= margin_mm <= 30.0):
            raise ValueError(f"margin_mm must be between 0 and 30 mm, got {margin_mm}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        if seed < 1:
            raise ValueError(f"seed must be >= 1 (0 would seed from the clock), got {seed}")
        self.model_dir = Path(model_dir)
        self.margin_mm = float(margin_mm)
        self.threads = threads
        self.seed = int(seed)
        self.checksums = verify_model_dir(self.model_dir, (HEAD_FILE, FACE_FILE))

        head = sitk.ReadImage(str(self.model_dir / HEAD_FILE), sitk.sitkFloat32)
        keep = sitk.ReadImage(str(self.model_dir / FACE_FILE), sitk.sitkFloat32)
        if not _same_grid(head, keep):
            raise ValueError(f"{HEAD_FILE} and {FACE_FILE} in {self.model_dir} are not on the same grid")
        face = sitk.BinaryThreshold(
            keep, lowerThreshold=-1e9, upperThreshold=0.5, insideValue=1, outsideValue=0
        )
        self._face = _extend_face_downwards(face, FACE_EXTENSION_MM)
        self._moving = self._working_image(head)
        self._moving_head = _head_region(self._moving)
        # The face *tissue* of the template (its face region minus the air in
        # front of it), on the working grid: it must land on tissue in the volume.
        face_small = self._resample(face, self._moving, sitk.Transform(), sitk.sitkNearestNeighbor)
        self._moving_face_tissue = sitk.And(face_small, self._moving_head)

    def predict(self, volume: Volume) -> FaceMask:
        """The face region of ``volume``, dilated by :attr:`margin_mm`.

        Parameters
        ----------
        volume : Volume
            A head volume in LPS patient coordinates, any stored value type.

        Returns
        -------
        FaceMask
            ``FaceLabel.FACE`` where to blank; ``details`` holds the final
            ``metric``, ``seconds``, ``face_tissue`` overlap, ``head_fraction``
            masked, the affine's ``scale_min``/``scale_max``, ``margin_mm`` and
            ``iterations`` (finest level of both registration stages).

        Raises
        ------
        MaskingError
            If the volume cannot be registered, or any guard rail trips (poor
            final metric, implausible affine, face tissue of the template not
            found on head tissue, empty mask, or a mask covering an
            implausible share of the head).
        """
        started = time.perf_counter()
        array = volume.array
        image = checked_image(volume)
        fixed_raw = self._binned(image)
        low, high = _intensity_window(sitk.GetArrayViewFromImage(fixed_raw))
        fixed = _normalised(fixed_raw, low, high)

        registration = self._register(fixed)
        details: dict[str, float | str] = {"metric": round(registration.metric, 4)}
        details["iterations"] = float(registration.iterations)
        details["margin_mm"] = self.margin_mm
        if registration.metric > MAX_METRIC:
            raise MaskingError(
                f"template registration did not align (final Mattes MI {registration.metric:.3f} > "
                f"{MAX_METRIC}): not a head, a skull-stripped brain, or an unusual contrast",
                code="mask.registration",
            )

        scales = np.linalg.svd(_linear_part(registration.transform), compute_uv=False)
        details["scale_min"], details["scale_max"] = (
            round(float(scales.min()), 3),
            round(float(scales.max()), 3),
        )
        if not (SCALE_RANGE[0] <= scales.min() and scales.max() <= SCALE_RANGE[1]) or (
            scales.max() / scales.min() > MAX_ANISOTROPY
        ):
            raise MaskingError(
                f"template registration found an implausible head size or shape (scales "
                f"{', '.join(f'{s:.2f}' for s in scales)}; allowed {SCALE_RANGE}, ratio <= {MAX_ANISOTROPY})",
                code="mask.registration",
            )

        fixed_head = _head_region(fixed)
        face_tissue = self._resample(
            self._moving_face_tissue, fixed, registration.transform, sitk.sitkNearestNeighbor
        )
        tissue_voxels = _count(face_tissue)
        face_tissue_share = (
            _count(sitk.And(face_tissue, fixed_head)) / tissue_voxels if tissue_voxels else 0.0
        )
        details["face_tissue"] = round(face_tissue_share, 3)
        if face_tissue_share < MIN_FACE_TISSUE:
            raise MaskingError(
                f"only {face_tissue_share:.0%} of the template's face lands on head tissue "
                f"(need {MIN_FACE_TISSUE:.0%}): face outside the field of view, already defaced, "
                "skull-stripped, or misregistered",
                code="mask.no_face",
            )

        blank = self._face_on_grid(image, registration.transform)
        masked = int(np.count_nonzero(blank))
        if masked == 0:
            raise MaskingError("the registered face region misses the volume entirely", code="mask.empty")
        # Head voxels at full resolution, with the threshold found on the working copy.
        head_threshold = low + _otsu(fixed) * (high - low)
        head = array > head_threshold
        head_voxels = int(np.count_nonzero(head))
        head_fraction = int(np.count_nonzero(blank & head)) / max(head_voxels, 1)
        details["head_fraction"] = round(head_fraction, 4)
        if not HEAD_FRACTION_RANGE[0] <= head_fraction <= HEAD_FRACTION_RANGE[1]:
            raise MaskingError(
                f"the face mask covers {head_fraction:.1%} of the head, outside the plausible "
                f"{HEAD_FRACTION_RANGE[0]:.0%} to {HEAD_FRACTION_RANGE[1]:.0%}",
                code="mask.implausible",
            )

        labels = blank.astype(np.uint8) * np.uint8(FaceLabel.FACE)
        details["seconds"] = round(time.perf_counter() - started, 2)
        return FaceMask(labels=labels, masker=self.name, details=details)

    # -- steps ----------------------------------------------------------------

    def _threaded(self, image_filter: _Filter) -> _Filter:
        """``image_filter`` set to this masker's thread count (if one was given)."""
        if self.threads is not None:
            image_filter.SetNumberOfThreads(self.threads)
        return image_filter

    def _binned(self, image: sitk.Image) -> sitk.Image:
        # Binning (block averaging) is the cheapest anti-aliased downsampling:
        # a 37 M voxel series shrinks in a fraction of a second.
        factors = [max(1, round(WORKING_SPACING_MM / s)) for s in image.GetSpacing()]
        shrink = self._threaded(sitk.BinShrinkImageFilter())
        shrink.SetShrinkFactors(factors)
        return shrink.Execute(image)

    def _working_image(self, image: sitk.Image) -> sitk.Image:
        binned = self._binned(image)
        low, high = _intensity_window(sitk.GetArrayViewFromImage(binned))
        return _normalised(binned, low, high)

    def _resample(
        self, image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, interpolator: int
    ) -> sitk.Image:
        resampler = self._threaded(sitk.ResampleImageFilter())
        resampler.SetReferenceImage(reference)
        resampler.SetTransform(transform)
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(0)
        return resampler.Execute(image)

    def _register(self, fixed: sitk.Image) -> _Registration:
        """Template-to-volume affine: moments, then similarity, then affine.

        The transform maps volume (fixed) points to template (moving) points,
        which is what resampling the template onto the volume's grid needs.
        """
        try:
            with _one_sitk_thread():
                return self._register_single_threaded(fixed)
        except RuntimeError as error:
            raise MaskingError(f"template registration failed: {error}", code="mask.registration") from error

    def _register_single_threaded(self, fixed: sitk.Image) -> _Registration:
        initial = sitk.CenteredTransformInitializer(
            fixed, self._moving, sitk.Similarity3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        # Similarity first (7 parameters) so that the affine starts from a
        # head of the right size and never has to find it through shear.
        optimised, iterations_1 = self._optimise(fixed, initial, shrink=[4, 2, 1], sigmas_mm=[4, 2, 1])
        similarity = sitk.Similarity3DTransform(optimised)
        early = self._final_metric(fixed, similarity)
        if not early <= MAX_SIMILARITY_METRIC:  # also NaN
            raise MaskingError(
                f"template registration did not align (Mattes MI {early:.3f} after the similarity stage > "
                f"{MAX_SIMILARITY_METRIC}): not a head, a skull-stripped brain, or an unusual contrast",
                code="mask.registration",
            )
        affine = sitk.AffineTransform(3)
        affine.SetCenter(similarity.GetCenter())
        affine.SetMatrix(similarity.GetMatrix())
        affine.SetTranslation(similarity.GetTranslation())
        optimised, iterations_2 = self._optimise(fixed, affine, shrink=[2, 1], sigmas_mm=[2, 1])
        affine = sitk.AffineTransform(optimised)
        metric = self._final_metric(fixed, affine)
        if not math.isfinite(metric):
            raise MaskingError(
                f"template registration gave a non-finite metric {metric}", code="mask.registration"
            )
        return _Registration(transform=affine, metric=metric, iterations=iterations_1 + iterations_2)

    def _optimise(
        self, fixed: sitk.Image, initial: sitk.Transform, *, shrink: list[int], sigmas_mm: list[float]
    ) -> tuple[sitk.Transform, int]:
        """One multi-resolution optimisation; returns the transform and the last level's iterations."""
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.2, self.seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=2.0,
            minStep=1e-3,
            numberOfIterations=200,
            relaxationFactor=0.6,
            gradientMagnitudeTolerance=1e-8,
        )
        # Parameter scales from a 1 mm shift: rotations, scales and
        # translations then move the head comparably per step.
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel(shrink)
        method.SetSmoothingSigmasPerLevel(sigmas_mm)
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(initial, inPlace=False)
        method.SetNumberOfThreads(1)
        result = method.Execute(fixed, self._moving)
        # Not in place, the optimised copy comes back wrapped in a one-element composite.
        if isinstance(result, sitk.CompositeTransform) and result.GetNumberOfTransforms() == 1:
            result = result.GetNthTransform(0)
        return result, int(method.GetOptimizerIteration())

    def _final_metric(self, fixed: sitk.Image, transform: sitk.Transform) -> float:
        """Mattes MI over all voxels at the working resolution: the same ruler for every series."""
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.NONE)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(transform)
        method.SetNumberOfThreads(1)
        return float(method.MetricEvaluate(fixed, self._moving))

    def _face_on_grid(self, image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        """Template face region on the volume's grid (nearest neighbour), dilated by the margin."""
        face = sitk.GetArrayFromImage(self._resample(self._face, image, transform, sitk.sitkNearestNeighbor))
        return dilate_mm(face, image.GetSpacing(), self.margin_mm, self.threads)


_GLOBAL_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_sitk_thread() -> Iterator[None]:
    """Run SimpleITK on one thread inside the block (process-wide; restored after).

    ITK's Mattes metric sums its per-thread histograms in whatever order the
    threads finish, and parts of the registration ignore the method's own
    thread count; on several threads two runs on the same series end a few
    thousand voxels apart. One thread makes the mask a pure function of the
    series (a retried job sends identical pixels) for about 2 s more.
    """
    with _GLOBAL_THREADS_LOCK:
        previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    )


def _extend_face_downwards(face: sitk.Image, extension_mm: float) -> sitk.Image:
    """``face`` padded on its inferior side by repeating its lowest slice ``extension_mm`` far."""
    direction = np.asarray(face.GetDirection()).reshape(3, 3)
    # The voxel axis closest to LPS z (superior), and which end of it is inferior.
    axis = int(np.argmax(np.abs(direction[2])))
    pad = [0, 0, 0]
    pad[axis] = int(math.ceil(extension_mm / face.GetSpacing()[axis]))
    padder = sitk.ZeroFluxNeumannPadImageFilter()
    if direction[2, axis] > 0:
        padder.SetPadLowerBound(pad)
    else:
        padder.SetPadUpperBound(pad)
    return padder.Execute(face)


def _intensity_window(values: np.ndarray) -> tuple[float, float]:
    """Robust (low, high) of an MR volume: the 1st and 99.5th percentiles.

    Raw stored values can be anything (12-bit, 16-bit, floats after a
    resampling); clipping the brightest 0.5 % (fat, vessels, flow artefacts)
    keeps them from squeezing the tissue into a few histogram bins.
    """
    sample = values.ravel()[:: max(1, values.size // 1_000_000)]
    if not np.all(np.isfinite(sample)):
        sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        raise MaskingError("volume has no finite voxel values", code="mask.input")
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    if not high > low:
        raise MaskingError(
            f"volume has no contrast (1st to 99.5th percentile {low} to {high})", code="mask.input"
        )
    return low, high


def _normalised(image: sitk.Image, low: float, high: float) -> sitk.Image:
    scaled = sitk.Cast((image - low) / (high - low), sitk.sitkFloat32)
    return sitk.Clamp(scaled, sitk.sitkFloat32, 0.0, 1.0)


def _otsu(image: sitk.Image) -> float:
    """Otsu's air/tissue threshold of a normalised working image, halved.

    Halved because Otsu's value lies inside the tissue range and would leave
    the darker skin of the lower face out of the head.
    """
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.Execute(image)
    return 0.5 * float(otsu.GetThreshold())


def _head_region(image: sitk.Image) -> sitk.Image:
    """Head voxels (uint8 0/1) of a normalised working image."""
    return sitk.Cast(image > _otsu(image), sitk.sitkUInt8)


def _count(binary: sitk.Image) -> int:
    return int(np.count_nonzero(sitk.GetArrayViewFromImage(binary)))


def _linear_part(transform: sitk.AffineTransform) -> np.ndarray:
    return np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
