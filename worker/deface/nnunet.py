"""Face and ear masking with a small nnU-Net v2 model (the project's own, in ``models/nnunet-face``).

The volume is binned and resampled onto an LPS-aligned grid at the model's
spacing (4 mm), segmented by one :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor`
(built once; mirroring only left-right, the last array axis of an LPS grid),
and the labels are carried back onto the volume's grid with nearest neighbour
and dilated by a safety margin in millimetres. Guard rails turn a result the
model cannot vouch for into :class:`~pediface.errors.MaskingError`.

This is the only module that imports torch or nnunetv2, and it does so when a
masker is built, never at import time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pediface.errors import MaskingError
from worker.deface.base import checked_image, dilate_mm, verify_model_dir
from worker.deface.template import _intensity_window, _normalised, _otsu
from worker.qc import head_threshold, lps_reference
from worker.types import FaceLabel, FaceMask, Volume

MIRROR_AXES = (2,)
"""Test-time mirroring: left-right only (x is the last axis of an LPS (z, y, x) grid)."""

REQUIRED = ("dataset.json", "plans.json")

MIN_FACE_ML = 50.0
"""Smallest plausible face label (4 mm grid, before dilation), in millilitres; less is "no face".

Calibration (shipped model, margin 0): real heads 205 ml (Seg3D, field of view cut at the
nose) to 570 ml; eight synthetic newborn-to-toddler heads (scale 0.59-0.74 of the held-out
IXI head) 54 to 192 ml; the skull-stripped children (negative controls) 14 and 45 ml.
The gap between 45 and 54 is too narrow to trust: a real newborn may be quarantined (fail
closed), and a retrained model must be recalibrated (and should see skull-stripped brains
as negatives in training).
"""

HEAD_FRACTION_RANGE = (0.01, 0.35)
"""Plausible share of the head's voxels (4 mm grid) covered by face and ears before dilation.

Teacher labels cover 5 % (Seg3D) to 17 % of the head (within 4 mm of head tissue).
"""

MIN_CENTRE_RATIO = 0.4
"""Least distance from the head's centre of mass to any face voxel, in head radii.

The head radius is that of a sphere of the head's volume. On adult heads the
face (and the template masker's dilated mask) stays 0.65-0.75 radii away; a
mask reaching closer is reaching into the brain.
"""

MAX_POSTERIOR_MM = 10.0
"""How far behind the head's centre of mass (along the posterior axis) a face voxel may lie.

The face is in front of the ears, and the ears are near the head's centre plane: a face label
behind it is a second "face" on the back of the head (seen with the first model on the MNI305
average head, cutting 41 ml of brain) or a wrong orientation.
"""

EAR_SHELL_MM = 4.0
"""Ears are blanked only in the air around the head and the head's outer layer (on the model's
grid, voxels at most this far from the air outside the head).

The auricle is a flap sticking out into the air; the temporal lobe lies a centimetre or less
under the scalp beside it (less in infants). Without this limit the dilated ear label of a
4 mm model reached the registered atlas brain on three of three heads (240 to 27,624 voxels).
"""

SHELL_GRID_MM = 2.0
"""Spacing of the grid on which the dilated ears are finally cut to :data:`EAR_SHELL_MM`."""

MIN_COMPONENT_ML = 1.0
"""Predicted specks smaller than this (not the largest piece of their label) are dropped.

Early and weak models scatter a few voxels over the brainstem or the orbits; a speck
this small cannot carry a face, and left in place it would trip the centre check
(quarantine) or blank brain.
"""

def verify_nnunet_dir(model_dir: Path, fold: int | str, checkpoint: str) -> dict[str, str]:
    """Check the folder's ``SHA256SUMS``; the plans, dataset and the fold's checkpoint must be listed."""
    return verify_model_dir(model_dir, (*REQUIRED, f"fold_{fold}/{checkpoint}"))


class NnUNetMasker:
    """Face (label 1) and ears (label 2) from an nnU-Net v2 model folder.

    Parameters
    ----------
    model_dir : Path
        dataset.json, plans.json, ``fold_<fold>/<checkpoint>`` and SHA256SUMS.
    margin_mm : float
        Safety margin added around each predicted region, in millimetres.
    threads : int, optional
        torch and SimpleITK threads (process-wide for torch); default: leave as they are.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    fold, checkpoint
        Which trained network in the folder to load.

    Raises
    ------
    ValueError
        If the folder fails its checksum check or an argument is invalid.
    """

    name = "nnunet-face"

    def __init__(
        self,
        model_dir: Path,
        *,
        margin_mm: float = 4.0,
        threads: int | None = None,
        device: str = "auto",
        fold: int = 0,
        checkpoint: str = "checkpoint_final.pth",
    ) -> None:
        if margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.model_dir = Path(model_dir)
        self.margin_mm = float(margin_mm)
        self.threads = threads
        self.checksums = verify_nnunet_dir(self.model_dir, fold, checkpoint)

        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        if threads is not None:
            torch.set_num_threads(threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device")
        self.device = device
        self._predictor = nnUNetPredictor(
            tile_step_size=0.5,
            use_gaussian=True,
            use_mirroring=True,
            perform_everything_on_device=device == "cuda",
            device=torch.device(device),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        self._predictor.initialize_from_trained_model_folder(
            str(self.model_dir), use_folds=(fold,), checkpoint_name=checkpoint
        )
        self._predictor.allowed_mirroring_axes = MIRROR_AXES
        spacing = self._predictor.configuration_manager.spacing
        if len(set(float(s) for s in spacing)) != 1:
            raise ValueError(
                f"model spacing {spacing} is not isotropic; this masker needs an isotropic model"
            )
        self.spacing_mm = float(spacing[0])
        plans = json.loads((self.model_dir / "plans.json").read_text())
        self.labels = json.loads((self.model_dir / "dataset.json").read_text())["labels"]
        self.plans_name = str(plans.get("plans_name", ""))

    # -- public -----------------------------------------------------------------

    def predict(self, volume: Volume) -> FaceMask:
        """Face and ear labels on ``volume``'s grid, each dilated by :attr:`margin_mm`.

        Raises
        ------
        MaskingError
            If the input is not a usable 3D image, or the prediction is empty,
            too small, covers an implausible share of the head, reaches
            towards the head's centre, or lies behind it.
        """
        started = time.perf_counter()
        array = volume.array
        image = checked_image(volume)
        small = self._to_model_grid(image)
        small_array = sitk.GetArrayFromImage(small)
        low, high = _intensity_window(small_array)
        try:
            labels_small = self._predictor.predict_single_npy_array(
                small_array[None].astype(np.float32), {"spacing": [self.spacing_mm] * 3}, None, None, False
            )
        except RuntimeError as error:  # torch failures: out of memory, bad shapes
            raise MaskingError(f"nnU-Net prediction failed: {error}", code="mask.model") from error
        labels_small = np.asarray(labels_small, dtype=np.uint8)
        details: dict[str, float | str] = {"device": self.device, "margin_mm": self.margin_mm}
        labels_small, dropped = self._without_specks(labels_small)
        details["dropped_ml"] = round(dropped, 2)
        normalised = _normalised(small, low, high)
        head = sitk.GetArrayFromImage(normalised) > _otsu(normalised)
        self._check(labels_small, head, details)
        shell = outer_shell(head, self.spacing_mm, fov=self._field_of_view(image, small))
        labels_small[(labels_small == FaceLabel.EARS) & ~shell] = FaceLabel.BACKGROUND

        on_grid = self._on_volume_grid(labels_small, small, image)
        face = self._dilated(on_grid == FaceLabel.FACE, image.GetSpacing())
        shell_on_grid = self._on_volume_grid(shell.astype(np.uint8), small, image) > 0
        ears = self._dilated(on_grid == FaceLabel.EARS, image.GetSpacing()) & shell_on_grid & ~face
        if ears.any():
            # The 4 mm shell is too coarse to stop the dilated ears short of the brain: cut them to
            # the same depth on a finer grid, carried back to the volume's grid.
            # The skin threshold of the QC renders (below Otsu's): dim skin far from the coil is
            # head, so depths count from the real surface.
            fine = self._to_model_grid(image, SHELL_GRID_MM)
            fine_head = sitk.GetArrayFromImage(fine) > head_threshold(array)
            fine_shell = outer_shell(fine_head, SHELL_GRID_MM, fov=self._field_of_view(image, fine))
            ears &= self._on_volume_grid(fine_shell.astype(np.uint8), fine, image) > 0
        if not face.any():
            raise MaskingError("the predicted face does not overlap the volume's grid", code="mask.empty")
        out = face.astype(np.uint8) * np.uint8(FaceLabel.FACE) + ears.astype(np.uint8) * np.uint8(
            FaceLabel.EARS
        )
        details["seconds"] = round(time.perf_counter() - started, 2)
        return FaceMask(labels=out, masker=self.name, details=details)

    # -- steps ------------------------------------------------------------------

    def _on_volume_grid(self, array: np.ndarray, small: sitk.Image, image: sitk.Image) -> np.ndarray:
        """A label array of the model grid carried onto the volume's grid (nearest neighbour)."""
        label_image = sitk.GetImageFromArray(array)
        label_image.CopyInformation(small)
        return sitk.GetArrayFromImage(self._resample(label_image, image, sitk.sitkNearestNeighbor))

    def _field_of_view(self, image: sitk.Image, grid: sitk.Image) -> np.ndarray:
        """Which voxels of ``grid`` lie inside the imaged volume."""
        ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
        ones.CopyInformation(image)
        return sitk.GetArrayFromImage(self._resample(ones, grid, sitk.sitkNearestNeighbor)) > 0

    def _filter(self, image_filter: Any) -> Any:
        if self.threads is not None:
            image_filter.SetNumberOfThreads(self.threads)
        return image_filter

    def _resample(self, image: sitk.Image, reference: sitk.Image, interpolator: int) -> sitk.Image:
        resampler = self._filter(sitk.ResampleImageFilter())
        resampler.SetReferenceImage(reference)
        resampler.SetTransform(sitk.Transform())
        resampler.SetInterpolator(interpolator)
        resampler.SetDefaultPixelValue(0)
        resampler.SetOutputPixelType(image.GetPixelID())
        return resampler.Execute(image)

    def _to_model_grid(self, image: sitk.Image, spacing_mm: float | None = None) -> sitk.Image:
        """Bin (block average: anti-aliased and fast) towards the model spacing (or ``spacing_mm``), then
        resample onto an identity-direction (LPS) grid at that spacing covering the volume."""
        spacing_mm = spacing_mm or self.spacing_mm
        factors = [max(1, int(spacing_mm / s)) for s in image.GetSpacing()]
        shrink = self._filter(sitk.BinShrinkImageFilter())
        shrink.SetShrinkFactors(factors)
        binned = shrink.Execute(image)
        reference = lps_reference(image, spacing_mm)
        # Outside the volume is "no data": fill it with the volume's background level.
        background = float(np.percentile(sitk.GetArrayViewFromImage(binned), 1.0))
        resampler = self._filter(sitk.ResampleImageFilter())
        resampler.SetReferenceImage(reference)
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(background)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        return resampler.Execute(binned)

    def _without_specks(self, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """``labels`` without components under :data:`MIN_COMPONENT_ML` (each label keeps its largest)."""
        voxel_ml = self.spacing_mm**3 / 1000.0
        out = labels.copy()
        dropped = 0
        for value in (FaceLabel.FACE, FaceLabel.EARS):
            region = sitk.GetImageFromArray((labels == value).astype(np.uint8))
            components = sitk.GetArrayFromImage(
                sitk.RelabelComponent(sitk.ConnectedComponent(region, True), sortByObjectSize=True)
            )
            sizes = np.bincount(components.ravel())
            for index in range(2, len(sizes)):
                if sizes[index] * voxel_ml < MIN_COMPONENT_ML:
                    out[components == index] = FaceLabel.BACKGROUND
                    dropped += int(sizes[index])
        return out, dropped * voxel_ml

    def _check(self, labels: np.ndarray, head: np.ndarray, details: dict[str, float | str]) -> None:
        voxel_ml = self.spacing_mm**3 / 1000.0
        face = labels == FaceLabel.FACE
        face_ml = float(np.count_nonzero(face)) * voxel_ml
        details["face_ml"] = round(face_ml, 1)
        details["ears_ml"] = round(float(np.count_nonzero(labels == FaceLabel.EARS)) * voxel_ml, 1)
        if face_ml < MIN_FACE_ML:
            raise MaskingError(
                f"no face found ({face_ml:.1f} ml predicted, need {MIN_FACE_ML:.0f} ml): face outside the "
                "field of view, already defaced, skull-stripped, or not a head",
                code="mask.no_face",
            )
        head_voxels = int(np.count_nonzero(head))
        if head_voxels == 0:
            raise MaskingError("no head tissue found in the volume", code="mask.input")
        fraction = int(np.count_nonzero((labels != FaceLabel.BACKGROUND) & head)) / head_voxels
        details["head_fraction"] = round(fraction, 4)
        if not HEAD_FRACTION_RANGE[0] <= fraction <= HEAD_FRACTION_RANGE[1]:
            raise MaskingError(
                f"the predicted face and ears cover {fraction:.1%} of the head, outside the plausible "
                f"{HEAD_FRACTION_RANGE[0]:.0%} to {HEAD_FRACTION_RANGE[1]:.0%}",
                code="mask.implausible",
            )
        centre = np.array([c.mean() for c in np.nonzero(head)])
        radius = (3.0 * head_voxels / (4.0 * np.pi)) ** (1.0 / 3.0)
        points = np.argwhere(face)
        distances = np.linalg.norm(points - centre, axis=1)
        ratio = float(distances.min()) / radius
        details["centre_ratio"] = round(ratio, 3)
        if ratio < MIN_CENTRE_RATIO:
            raise MaskingError(
                f"the predicted face reaches {ratio:.2f} head radii from the head's centre "
                f"(at least {MIN_CENTRE_RATIO} expected): it would cut into the brain",
                code="mask.implausible",
            )
        # LPS grid: array axis 1 is y, which grows towards the back of the head.
        anterior_mm = float(centre[1] - points[:, 1].mean()) * self.spacing_mm
        details["face_anterior_mm"] = round(anterior_mm, 1)
        posterior_mm = float(points[:, 1].max() - centre[1]) * self.spacing_mm
        details["face_posterior_mm"] = round(posterior_mm, 1)
        if posterior_mm > MAX_POSTERIOR_MM:
            raise MaskingError(
                f"part of the predicted face lies {posterior_mm:.0f} mm behind the head's centre (at most "
                f"{MAX_POSTERIOR_MM:.0f} mm expected): it would cut into the back of the head",
                code="mask.implausible",
            )
        if anterior_mm <= 0:
            raise MaskingError(
                "the predicted face lies behind the head's centre: wrong orientation in the header "
                "or not a face",
                code="mask.implausible",
            )

    def _dilated(self, region: np.ndarray, spacing_xyz: tuple[float, ...]) -> np.ndarray:
        """``region`` grown by :attr:`margin_mm`."""
        return dilate_mm(region, spacing_xyz, self.margin_mm, self.threads)


def outer_shell(
    head: np.ndarray, spacing_mm: float, shell_mm: float = EAR_SHELL_MM, fov: np.ndarray | None = None
) -> np.ndarray:
    """The air outside the head, and the head voxels within ``shell_mm`` of it.

    Air is below-threshold space connected to the edge of what was imaged (the grid's border, or
    ``fov``'s edge when the grid reaches beyond the volume). Dark tissue inside the head (bone,
    CSF) is not air, so the brain under a dark skull stays deep; and beyond the field of view is
    not air either, so a head cut by the field of view (ears outside it) is not skin at the cut.
    """
    from scipy import ndimage as ndi

    known = np.ones_like(head, dtype=bool) if fov is None else fov.astype(bool)
    components, _ = ndi.label(~head & known)
    edge = np.zeros_like(head, dtype=bool)
    for axis in range(head.ndim):
        for index in (0, -1):
            edge[(slice(None),) * axis + (index,)] = True
    edge |= ndi.binary_dilation(~known)
    outside_labels = np.unique(components[edge & (components > 0)])
    outside = np.isin(components, outside_labels)
    depth = ndi.distance_transform_edt(~outside) * spacing_mm
    return (outside | (depth <= shell_mm)) & known
