"""Face and ear masking with an nnU-Net v2 model: pediface's own (``models/nnunet-face``) or an imported one.

The volume is binned and resampled onto a grid at the model's spacing (4 mm isotropic for pediface's
model; any spacing, in nnU-Net's transposed axis order, for an imported one) whose voxel axes run the way
the model's training images ran (``orientation`` in ``pediface-model.json``, LPS by default), segmented
by one :class:`nnunetv2.inference.predict_from_raw_data.nnUNetPredictor` (built once; test-time mirroring
only left-right, and only if the model allows it), and the face and ear labels (found by name in
``dataset.json``; any other label is ignored) are carried back onto the volume's grid with nearest
neighbour and dilated by a safety margin in millimetres. nnU-Net itself never resamples: the grid is
already at its spacing. Guard rails, measured in millimetres of patient space, turn a result the model
cannot vouch for into :class:`~common.errors.MaskingError`.

The network runs behind a small seam, :class:`~worker.deface.nnunet_backend.NnUNetBackend`
(``predict(array, spacing) -> labels``), chosen when the masker is built
(:func:`~worker.deface.nnunet_backend.load_backend`): nnU-Net's own predictor on torch, or the model's
ONNX export on CPU. This module imports neither torch nor nnunetv2.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from common.errors import MaskingError
from common.logs import get_logger
from worker.deface.base import checked_volume, dilate_mm
from worker.deface.model_meta import ModelMeta, orientation_direction
from worker.deface.nnunet_backend import TorchBackend, load_backend, verify_nnunet_dir
from worker.deface.outer_layer import SHELL_GRID_MM, head_mask, outer_shell, whole_voxels_inside
from worker.deface.template import _intensity_window, _normalised, _otsu
from worker.grid import (
    Geometry,
    binned,
    carry_labels,
    field_of_view,
    grid_reference,
    reach_box,
)
from worker.types import FaceLabel, FaceMask, Volume

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

MIN_COMPONENT_ML = 1.0
"""Predicted specks smaller than this (not the largest piece of their label) are dropped.

Early and weak models scatter a few voxels over the brainstem or the orbits; a speck
this small cannot carry a face, and left in place it would trip the centre check
(quarantine) or blank brain.
"""

log = get_logger("pediface.worker.nnunet")


class NnUNetMasker:
    """Face and ears from an nnU-Net v2 model folder, as :class:`FaceLabel` values on the volume's grid.

    Parameters
    ----------
    model_dir : Path
        dataset.json (with a ``face`` label, ``ears`` optional), plans.json, ``fold_<fold>/<checkpoint>``,
        SHA256SUMS and, for an imported model, pediface-model.json (:mod:`worker.deface.model_meta`).
    margin_mm : float
        Safety margin added around each predicted region, in millimetres.
    ear_margin_mm : float, optional
        Margin of the ear label instead of ``margin_mm`` (None: the same). A wider one grows the
        predicted auricle along the side of the head; it is still cut to ``ear_shell_mm``.
    ear_shell_mm : float
        How deep under the skin ear voxels may be blanked (:data:`EAR_SHELL_MM`).
    threads : int, optional
        torch and SimpleITK threads (process-wide for torch); default: leave as they are.
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.
    backend : str
        ``"auto"`` (:func:`load_backend`: torch on CUDA, else the folder's ONNX export, else torch on
        CPU), ``"onnx"`` or ``"torch"``.
    precision : str
        The ONNX backend's arithmetic: ``"auto"`` (bfloat16 where the CPU has it natively, else
        float32), ``"float32"`` or ``"bfloat16"``. The torch backend ignores it (CUDA runs nnU-Net's
        own mixed precision).
    runtime : str
        The ONNX backend's runtime: ``"auto"`` (OpenVINO if installed, else ONNX Runtime),
        ``"openvino"`` or ``"onnxruntime"``.
    fold, checkpoint
        Which trained network(s) in the folder to load; ``fold`` None: those the model description names.

    Raises
    ------
    ValueError
        If the folder fails its checksum check, has no face label, or an argument is invalid.
    """

    def __init__(
        self,
        model_dir: Path,
        *,
        margin_mm: float = 4.0,
        ear_margin_mm: float | None = None,
        ear_shell_mm: float = EAR_SHELL_MM,
        face_depth_mm: float = 0.0,
        threads: int | None = None,
        device: str = "auto",
        fold: int | str | None = None,
        checkpoint: str = "checkpoint_final.pth",
        backend: str = "auto",
        precision: str = "auto",
        runtime: str = "auto",
    ) -> None:
        if margin_mm < 0:
            raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        self.model_dir = Path(model_dir)
        self.margin_mm = float(margin_mm)
        self.ear_margin_mm = self.margin_mm if ear_margin_mm is None else float(ear_margin_mm)
        self.ear_shell_mm = float(ear_shell_mm)
        self.face_depth_mm = float(face_depth_mm)
        if self.face_depth_mm < 0:
            raise ValueError(f"face_depth_mm must be >= 0, got {face_depth_mm}")
        if self.ear_margin_mm < 0 or self.ear_shell_mm < 0:
            raise ValueError(
                f"ear_margin_mm and ear_shell_mm must be >= 0, got {ear_margin_mm}, {ear_shell_mm}"
            )
        self.threads = threads
        self.meta = ModelMeta.read(self.model_dir)
        folds = self.meta.folds if fold is None else (str(fold),)
        self.checksums = verify_nnunet_dir(self.model_dir, folds, checkpoint)
        self.name = self.meta.name
        self.labels = json.loads((self.model_dir / "dataset.json").read_text())["labels"]
        self._face, self._ears = _face_and_ears(self.labels)

        self._backend = load_backend(
            self.model_dir,
            self.checksums,
            folds=folds,
            checkpoint=checkpoint,
            device=device,
            threads=threads,
            backend=backend,
            precision=precision,
            runtime=runtime,
        )
        self.device = self._backend.device
        self.backend = self._backend.describe()
        self._set_grid()
        plans = json.loads((self.model_dir / "plans.json").read_text())
        self.plans_name = str(plans.get("plans_name", ""))

    def _set_grid(self) -> None:
        """The model's grid: spacing per array axis, voxel axes, and left-right test-time mirroring.

        nnU-Net transposes an input by ``transpose_forward`` and then expects the configuration's spacing;
        giving it arrays whose axis ``j`` has spacing ``spacing[transpose_backward[j]]`` means it never
        resamples (and the network sees the axes it was trained on).
        """
        forward = list(self._backend.transpose_forward)
        backward = list(self._backend.transpose_backward)
        spacing = list(self._backend.spacing)
        self.spacing_zyx = tuple(spacing[backward[j]] for j in range(3))
        self.spacing_xyz = self.spacing_zyx[::-1]
        self.direction = orientation_direction(self.meta.orientation)
        # left-right: the index axis (i, j, k) whose letter is L or R, as an array axis (k, j, i), then as
        # an axis of nnU-Net's transposed input
        index_axis = next(i for i, c in enumerate(self.meta.orientation.upper()) if c in "LR")
        network_axis = forward.index(2 - index_axis)
        allowed = self._backend.allowed_mirroring_axes
        # Mirrored only if the model was trained mirrored on that axis: else it is not averaged over.
        self._backend.mirror((network_axis,) if allowed is not None and network_axis in allowed else None)

    @property
    def _predictor(self) -> Any:
        """nnU-Net's ``nnUNetPredictor`` when the torch backend runs the model (CUDA, imported models);
        an :class:`AttributeError` when the ONNX backend does."""
        if not isinstance(self._backend, TorchBackend):
            raise AttributeError(f"the {self.backend} backend has no nnUNetPredictor")
        return self._backend._predictor  # noqa: SLF001 - the network the masker runs

    @property
    def spacing_mm(self) -> float:
        """The model grid's finest spacing (its only one for pediface's isotropic model)."""
        return min(self.spacing_zyx)

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
        checked_volume(volume)
        image = Geometry.of(volume)  # the volume's grid, without a float copy of its voxels
        small = self._to_model_grid(array, image)
        small_array = sitk.GetArrayFromImage(small)
        low, high = _intensity_window(small_array)
        try:
            predicted = self._backend.predict(small_array.astype(np.float32), self.spacing_zyx)
        except RuntimeError as error:  # torch or runtime failures: out of memory, bad shapes
            raise MaskingError(f"nnU-Net prediction failed: {error}", code="mask.model") from error
        labels_small = np.zeros(
            predicted.shape, dtype=np.uint8
        )  # labels other than face and ears: background
        labels_small[predicted == self._face] = FaceLabel.FACE
        if self._ears is not None:
            labels_small[predicted == self._ears] = FaceLabel.EARS
        details: dict[str, float | str] = {
            "device": self.device,
            "backend": self.backend,
            "margin_mm": self.margin_mm,
        }
        if (self.ear_margin_mm, self.ear_shell_mm) != (self.margin_mm, EAR_SHELL_MM):
            details["ear_margin_mm"] = self.ear_margin_mm
            details["ear_shell_mm"] = self.ear_shell_mm
        labels_small, dropped = self._without_specks(labels_small)
        details["dropped_ml"] = round(dropped, 2)
        normalised = _normalised(small, low, high)
        head = sitk.GetArrayFromImage(normalised) > _otsu(normalised)
        self._check(labels_small, head, small, details)
        shell = outer_shell(head, self.spacing_zyx, self.ear_shell_mm, fov=field_of_view(image, small))
        labels_small[(labels_small == FaceLabel.EARS) & ~shell] = FaceLabel.BACKGROUND
        if self.face_depth_mm > 0:
            details["face_depth_mm"] = self.face_depth_mm
            labels_small = self._deepened(labels_small)

        # Only the box of the volume's grid the labels and their margin can reach is worked on: a
        # 0.5 mm series has tens of millions of voxels, its face and ears a fraction of them.
        reach = max(self.margin_mm, self.ear_margin_mm)
        box = reach_box(image, small, labels_small != FaceLabel.BACKGROUND, reach)
        on_grid = carry_labels(labels_small, small, image, box)
        face = self._dilated(on_grid == FaceLabel.FACE, image.GetSpacing())
        ears = on_grid == FaceLabel.EARS
        ears = dilate_mm(ears, image.GetSpacing(), self.ear_margin_mm, self.threads)
        ears &= ~face
        if ears.any():
            # The model grid's shell (one 4 mm voxel deep) only drops predicted ear voxels deep in the
            # head; the dilated ears are cut to the layer on a finer grid, carried back to the volume's
            # grid. (Cut by both, the layer was thinner than its depth where the coarse voxels fell.)
            # The head as the teacher labels see it (training.teacher, the same 2 mm grid spacing):
            # holes filled slice by slice, so the ear canal, the mastoid's dark bone and, at a flat
            # cut of the image, the dark gap under the scalp are not outside air, and the layer
            # here is the layer the teacher's ear label and temporalis region are measured from.
            fine = self._to_model_grid(array, image, (SHELL_GRID_MM,) * 3, np.eye(3))
            fine_head = head_mask(sitk.GetArrayFromImage(fine))
            fine_shell = outer_shell(
                fine_head, SHELL_GRID_MM, self.ear_shell_mm, fov=field_of_view(image, fine)
            )
            ears &= carry_labels(whole_voxels_inside(fine_shell, image), fine, image, box) > 0
        if not face.any():
            raise MaskingError("the predicted face does not overlap the volume's grid", code="mask.empty")
        out = np.zeros(volume.shape, dtype=np.uint8)
        out[box] = face.astype(np.uint8) * np.uint8(FaceLabel.FACE) + ears.astype(np.uint8) * np.uint8(
            FaceLabel.EARS
        )
        details["seconds"] = round(time.perf_counter() - started, 2)
        return FaceMask(labels=out, masker=self.name, details=details)

    # -- steps ------------------------------------------------------------------

    def _filter(self, image_filter: Any) -> Any:
        if self.threads is not None:
            image_filter.SetNumberOfThreads(self.threads)
        return image_filter

    def _to_model_grid(
        self,
        array: np.ndarray,
        image: Geometry,
        spacing_xyz: tuple[float, ...] | None = None,
        direction: np.ndarray | None = None,
    ) -> sitk.Image:
        """Bin (block average: anti-aliased and fast) towards the model's finest spacing, then resample onto
        the model's grid (or one of ``spacing_xyz`` and ``direction``) covering the volume."""
        spacing_xyz = spacing_xyz or self.spacing_xyz
        direction = self.direction if direction is None else direction
        small = binned(array, image, [max(1, int(min(spacing_xyz) / s)) for s in image.GetSpacing()])
        reference = grid_reference(image, tuple(spacing_xyz), direction)  # type: ignore[arg-type]
        # Outside the volume is "no data": fill it with the volume's background level.
        background = float(np.percentile(sitk.GetArrayViewFromImage(small), 1.0))
        resampler = self._filter(sitk.ResampleImageFilter())
        resampler.SetReferenceImage(reference)
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetDefaultPixelValue(background)
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        return resampler.Execute(small)

    def _voxel_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0

    def _without_specks(self, labels: np.ndarray) -> tuple[np.ndarray, float]:
        """``labels`` without components under :data:`MIN_COMPONENT_ML` (each label keeps its largest)."""
        voxel_ml = self._voxel_ml()
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

    def _check(
        self, labels: np.ndarray, head: np.ndarray, grid: sitk.Image, details: dict[str, float | str]
    ) -> None:
        """The guard rails, in millimetres of LPS patient space (the grid may be anisotropic or turned)."""
        voxel_ml = self._voxel_ml()
        face = labels == FaceLabel.FACE
        face_ml = float(np.count_nonzero(face)) * voxel_ml
        details["face_ml"] = round(face_ml, 1)
        details["ears_ml"] = round(float(np.count_nonzero(labels == FaceLabel.EARS)) * voxel_ml, 1)
        min_face_ml, (low, high) = self.meta.min_face_ml, self.meta.head_fraction
        if face_ml < min_face_ml:
            raise MaskingError(
                f"no face found ({face_ml:.1f} ml predicted, need {min_face_ml:.0f} ml): face outside the "
                "field of view, already defaced, skull-stripped, or not a head",
                code="mask.no_face",
                details={**details, "min_face_ml": min_face_ml},
            )
        head_voxels = int(np.count_nonzero(head))
        if head_voxels == 0:
            raise MaskingError("no head tissue found in the volume", code="mask.input")
        fraction = int(np.count_nonzero((labels != FaceLabel.BACKGROUND) & head)) / head_voxels
        details["head_fraction"] = round(fraction, 4)
        if not low <= fraction <= high:
            raise MaskingError(
                f"the predicted face and ears cover {fraction:.1%} of the head, outside the plausible "
                f"{low:.0%} to {high:.0%}",
                code="mask.implausible",
            )
        centre = _physical(grid, np.argwhere(head)).mean(axis=0)
        radius_mm = (3.0 * head_voxels * voxel_ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        points = _physical(grid, np.argwhere(face))
        ratio = float(np.linalg.norm(points - centre, axis=1).min()) / radius_mm
        details["centre_ratio"] = round(ratio, 3)
        if ratio < MIN_CENTRE_RATIO:
            raise MaskingError(
                f"the predicted face reaches {ratio:.2f} head radii from the head's centre "
                f"(at least {MIN_CENTRE_RATIO} expected): it would cut into the brain",
                code="mask.implausible",
            )
        # LPS: y grows towards the back of the head.
        anterior_mm = float(centre[1] - points[:, 1].mean())
        details["face_anterior_mm"] = round(anterior_mm, 1)
        posterior_mm = float(points[:, 1].max() - centre[1])
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

    def _deepened(self, labels: np.ndarray) -> np.ndarray:
        """``labels`` with the face carried :attr:`face_depth_mm` further back (posterior), into background
        only: the face's deep boundary without growing it up, down or sideways."""
        column = int(np.argmax(np.abs(self.direction[1])))  # the grid's index axis along LPS y (posterior)
        axis, sign = 2 - column, int(np.sign(self.direction[1, column]))
        steps = int(round(self.face_depth_mm / self.spacing_zyx[axis]))
        face = labels == FaceLabel.FACE
        grown = face.copy()
        for step in range(1, steps + 1):
            shifted = np.roll(face, sign * step, axis=axis)
            edge = [slice(None)] * 3
            edge[axis] = slice(0, step) if sign > 0 else slice(-step, None)
            shifted[tuple(edge)] = False
            grown |= shifted
        out = labels.copy()
        out[grown & (labels == FaceLabel.BACKGROUND)] = FaceLabel.FACE
        return out

    def _dilated(self, region: np.ndarray, spacing_xyz: tuple[float, ...]) -> np.ndarray:
        """``region`` grown by :attr:`margin_mm`."""
        return dilate_mm(region, spacing_xyz, self.margin_mm, self.threads)


def _face_and_ears(labels: dict) -> tuple[int, int | None]:
    """The face's and the ears' values in a model's ``dataset.json`` labels (found by name)."""
    if any(isinstance(v, list | tuple) for v in labels.values()):
        raise ValueError("region-based model (overlapping labels): not a face and ear label map")
    by_name = {str(k).lower(): int(v) for k, v in labels.items()}
    if "face" not in by_name:
        raise ValueError(f"the model has no label named 'face' (labels: {sorted(labels)})")
    ears = by_name.get("ears", by_name.get("ear"))
    return by_name["face"], ears


def _physical(grid: sitk.Image, indices_zyx: np.ndarray) -> np.ndarray:
    """LPS millimetres of voxel indices (``[z, y, x]`` rows) of ``grid``."""
    direction = np.asarray(grid.GetDirection()).reshape(3, 3)
    scaled = indices_zyx[:, ::-1].astype(np.float64) * np.asarray(grid.GetSpacing())
    return np.asarray(grid.GetOrigin()) + scaled @ direction.T
