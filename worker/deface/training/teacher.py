"""Teacher labels: face (1) and ears (2) on each real head, from two registered atlases.

For one head volume:

1. Register pydeface's adult template to it with :class:`TemplateMasker`'s own
   affine registration, and mridefacer's 3 mm template with the same code.
2. Carry pydeface's face region (extended below the chin, as the masker does)
   and mridefacer's face-teeth-ear region onto a 2 mm LPS-aligned grid of the
   head. mridefacer's mask is one binary region (0 = remove); it is split into
   ears (the two lateral blobs, template rows y 17-41) and face (y >= 42).
   Its header does not match its head template (flipped axes, same origin); the
   arrays are on the same voxel grid, so the template head's geometry is used.
3. Face = union of both face regions, ears = mridefacer's ears minus face; both
   are kept only within 4 mm of head tissue (the air in front of the face is
   not a label) and never within 6 mm of the registered mridefacer brain.

Everything here runs on one SimpleITK thread (training data, not a hot path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from worker.deface.base import verify_model_dir
from worker.deface.template import TemplateMasker, _head_region, _intensity_window, _normalised
from worker.types import FaceLabel

REPO = Path(__file__).resolve().parents[3]
PYDEFACE_DIR = REPO / "models" / "template-pydeface"
MRIDEFACER_DIR = REPO / "models" / "template-mridefacer"
MRI_HEAD = "mridefacer_head_tmpl.nii.gz"
MRI_BRAIN = "mridefacer_head_tmpl_brain.nii.gz"
MRI_MASK = "mridefacer_face_teeth_ear_mask.nii.gz"

GRID_MM = 2.0
"""Spacing of the LPS-aligned grid the teacher labels and label maps live on."""

EAR_ROWS = (17, 41)
"""Rows (y index, template array) of mridefacer's removal region that are the ears."""

EAR_GROW_MM = 10.0
EAR_SHELL_MM = 14.0
HEAD_MARGIN_MM = 4.0
BRAIN_MARGIN_MM = 6.0
N_CLUSTERS = 4
"""Intensity clusters per compartment (outside / inside the brain) in the label map."""


@dataclass
class Teacher:
    """One head on its 2 mm LPS grid: image, teacher labels, generation label map."""

    image: sitk.Image  # float32, 2 mm, identity direction
    labels: np.ndarray  # uint8 (z, y, x): 0 / 1 face / 2 ears
    tissue: np.ndarray  # uint8 (z, y, x): 0 air, 1..4 outside brain, 5..8 brain (intensity clusters)
    head: np.ndarray  # bool head tissue
    brain: np.ndarray  # bool registered atlas brain
    metrics: dict[str, float]


def read_head(path: Path) -> sitk.Image:
    """A NIfTI file or a DICOM series folder as a float32 3D image."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        reader.SetFileNames(files)
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(path))
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    return sitk.Cast(image, sitk.sitkFloat32)


def lps_grid(image: sitk.Image, spacing: float = GRID_MM) -> sitk.Image:
    """An empty identity-direction grid covering ``image``'s physical extent."""
    size = np.asarray(image.GetSize())
    corners = []
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                corners.append(
                    image.TransformContinuousIndexToPhysicalPoint(
                        [float(i * (size[0] - 1)), float(j * (size[1] - 1)), float(k * (size[2] - 1))]
                    )
                )
    corners = np.asarray(corners)
    low, high = corners.min(axis=0), corners.max(axis=0)
    n = np.ceil((high - low) / spacing).astype(int) + 1
    ref = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    ref.SetSpacing([spacing] * 3)
    ref.SetOrigin([float(v) for v in low])
    return ref


def resample(
    image: sitk.Image, ref: sitk.Image, transform: sitk.Transform | None = None, nearest: bool = False
) -> sitk.Image:
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(ref)
    f.SetTransform(transform or sitk.Transform())
    f.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    f.SetDefaultPixelValue(0)
    f.SetOutputPixelType(image.GetPixelID())
    return f.Execute(image)


def _within(mask: np.ndarray, mm: float, spacing: float = GRID_MM) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (Euclidean, isotropic grid)."""
    if not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask) * spacing <= mm


def head_mask(array: np.ndarray) -> np.ndarray:
    """Head tissue of a 2 mm grid: halved Otsu threshold, largest component, holes filled per slice."""
    low, high = _intensity_window(array)
    img = sitk.GetImageFromArray(array)
    fg = sitk.GetArrayFromImage(_head_region(_normalised(img, low, high))).astype(bool)
    fg = ndi.binary_opening(fg, iterations=1)
    lab, n = ndi.label(fg)
    if n > 1:
        sizes = ndi.sum(fg, lab, range(1, n + 1))
        fg = lab == (1 + int(np.argmax(sizes)))
    fg = ndi.binary_closing(fg, iterations=2)
    for axis in range(3):
        fg = np.stack([ndi.binary_fill_holes(s) for s in np.moveaxis(fg, axis, 0)], axis=axis)
    return fg


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 30) -> np.ndarray:
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        for c in range(k):
            if np.any(assign == c):
                centres[c] = values[assign == c].mean()
    return np.sort(centres)


def tissue_map(array: np.ndarray, head: np.ndarray, brain: np.ndarray, k: int = N_CLUSTERS) -> np.ndarray:
    """Generation label map: intensity clusters (sorted dark to bright), split by the atlas brain."""
    low, high = _intensity_window(array)
    norm = np.clip((array - low) / (high - low), 0, 1)
    centres = _kmeans_1d(norm[head][:: max(1, int(head.sum()) // 200_000)], k)
    cls = np.argmin(np.abs(norm[..., None] - centres), axis=-1).astype(np.uint8) + 1
    out = np.where(head, cls, 0).astype(np.uint8)
    out[head & brain] += k
    return out


class TeacherLabeller:
    """Registers both atlases to heads and builds their teacher labels (build once)."""

    def __init__(self) -> None:
        verify_model_dir(MRIDEFACER_DIR, (MRI_HEAD, MRI_BRAIN, MRI_MASK))
        self.pyd = TemplateMasker(PYDEFACE_DIR, margin_mm=0.0, threads=1)
        self.mri = TemplateMasker(PYDEFACE_DIR, margin_mm=0.0, threads=1)
        head = sitk.ReadImage(str(MRIDEFACER_DIR / MRI_HEAD), sitk.sitkFloat32)
        self.mri._moving = self.mri._working_image(head)
        self.mri._moving_head = _head_region(self.mri._moving)
        brain = sitk.ReadImage(str(MRIDEFACER_DIR / MRI_BRAIN), sitk.sitkFloat32)
        self.mri_brain = sitk.Cast(brain > 0, sitk.sitkUInt8)
        keep = sitk.GetArrayFromImage(sitk.ReadImage(str(MRIDEFACER_DIR / MRI_MASK)))
        remove = keep == 0
        rows = np.arange(remove.shape[1])[None, :, None]
        ears = remove & (rows >= EAR_ROWS[0]) & (rows <= EAR_ROWS[1])
        face = remove & (rows > EAR_ROWS[1])
        split = face.astype(np.uint8) * FaceLabel.FACE + ears.astype(np.uint8) * FaceLabel.EARS
        self.mri_labels = sitk.GetImageFromArray(split.astype(np.uint8))
        self.mri_labels.CopyInformation(head)  # the mask's own header is wrong (see module doc)

    def _fixed(self, image: sitk.Image) -> sitk.Image:
        binned = self.pyd._binned(image)
        low, high = _intensity_window(sitk.GetArrayViewFromImage(binned))
        return _normalised(binned, low, high)

    def label(self, image: sitk.Image) -> Teacher:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        fixed = self._fixed(image)
        reg_p = self.pyd._register(fixed)
        reg_m = self.mri._register(fixed)
        ref = lps_grid(image)
        img2 = resample(image, ref)
        arr = sitk.GetArrayFromImage(img2)
        head = head_mask(arr)
        face_p = sitk.GetArrayFromImage(resample(self.pyd._face, ref, reg_p.transform, nearest=True)) > 0
        lab_m = sitk.GetArrayFromImage(resample(self.mri_labels, ref, reg_m.transform, nearest=True))
        brain = sitk.GetArrayFromImage(resample(self.mri_brain, ref, reg_m.transform, nearest=True)) > 0
        near_head = _within(head, HEAD_MARGIN_MM)
        allowed = near_head & ~_within(brain, BRAIN_MARGIN_MM)
        face = (face_p | (lab_m == FaceLabel.FACE)) & allowed
        # mridefacer's ears land a few mm off on real heads (its template registers less
        # well than pydeface's): grow them, but only in the outer shell of the head.
        shell = ndi.distance_transform_edt(head) * GRID_MM <= EAR_SHELL_MM
        ears = _within(lab_m == FaceLabel.EARS, EAR_GROW_MM) & allowed & shell & ~face
        labels = face.astype(np.uint8) * FaceLabel.FACE + ears.astype(np.uint8) * FaceLabel.EARS
        metrics = {
            "mi_pydeface": round(reg_p.metric, 3),
            "mi_mridefacer": round(reg_m.metric, 3),
            "face_voxels": int(face.sum()),
            "ear_voxels": int(ears.sum()),
            "head_voxels": int(head.sum()),
        }
        return Teacher(img2, labels.astype(np.uint8), tissue_map(arr, head, brain), head, brain, metrics)
