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
3. Face = union of both face regions, ears = mridefacer's ears grown 10 mm, cut
   to the skin layer (the air outside the head and the head's outer 4 mm, the
   masker's own outer-layer rule, :func:`worker.deface.outer_layer.outer_shell`),
   minus face; both are kept only within 4 mm of head tissue (the air in front
   of the face is not a label) and never within 6 mm of the registered
   mridefacer brain.
4. A temporalis region (not a teacher label: what a defacer must leave alone),
   drawn on mridefacer's template by :func:`template_temporalis` and carried by
   the same registration; on the head it is kept under the skin and fat layer
   (:data:`TEMPORALIS_SKIN_MM`) and outside the registered brain.

Everything here runs on one SimpleITK thread (training data, not a hot path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from worker.deface.base import verify_model_dir
from worker.deface.nnunet import EAR_SHELL_MM
from worker.deface.outer_layer import head_mask, outer_shell
from worker.deface.template import TemplateMasker, _head_region, _intensity_window, _normalised
from worker.grid import field_of_view
from worker.types import FaceLabel

REPO = Path(__file__).resolve().parents[1]
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
EAR_LAYER_MM = EAR_SHELL_MM
"""How deep under the skin the ear label reaches: the auricle and the skin over and around it, the same
outer layer (air outside the head, head within this depth of it) the masker blanks ears in.

The ear that identifies a person is the auricle, a flap in the air, and the skin at its root. Until
version 3 the label reached 14 mm deep (mridefacer's ear grown 10 mm in the outer 14 mm of the head):
the ear canal, the mastoid and the lower temporalis, which no masker may blank without cutting the
temporalis and, in children, the temporal lobe; a safe masker could score only about half of it."""
HEAD_MARGIN_MM = 4.0
BRAIN_MARGIN_MM = 6.0
N_CLUSTERS = 4
"""Intensity clusters per compartment (outside / inside the brain) in the label map."""


TEMPORALIS_Z = (55, 70)
"""Template slices (z index, 3 mm, superior upwards) of the temporalis region.

mridefacer's template has its external ear canal at z ~46 (the dark hole beside the ear label) and the
top of its auricle at z ~55-62. The temporal fossa's muscle runs from the zygomatic arch (canal level)
up to the superior temporal line, 6-8 cm above the arch in adults; the region starts at the auricle's
root (27 mm above the canal: the lower muscle lies deep to the arch and beside the auricle, where the
ear label sits) and stops 72 mm above the canal, where the skull's lateral wall turns medially.
"""

TEMPORALIS_Y = (24, 54)
"""Template rows (y index, 3 mm, anterior upwards) of the temporalis region: from 18 mm behind the
ear canal (y ~30; the posterior fibres arch over the auricle) to 72 mm in front of it, behind the lateral
orbital rim and the zygoma (mridefacer's face region starts at y 42 at the front of the head, further
forward at this height)."""

TEMPORALIS_LATERAL_MM = 50.0
"""Only voxels at least this far from the template's midline (the head is ~180 mm wide there):
the temporal fossa is on the side of the skull, not over the vertex."""

TEMPORALIS_DEPTH_MM = (0.0, 24.0)
"""Depth under the template's skin of the region: scalp plus muscle, down to the bone."""

TEMPORALIS_BRAIN_MM = 4.0
"""The region keeps this far from the template's brain: CSF, dura and the squamous temporal bone."""

TEMPORALIS_SKIN_MM = 5.0
"""On each head, the region is cut to voxels more than this under its own skin (skin, subcutaneous fat
and the temporoparietal fascia above the temporalis are 4-6 mm in adults; thinner in children, so a
child's outermost muscle millimetre may lie outside the region)."""


def template_temporalis(head_array: np.ndarray, brain: np.ndarray, spacing: float = 3.0) -> np.ndarray:
    """Both temporalis regions on mridefacer's template grid (z, y, x), from the constants above.

    ``head_array`` is the template head (its own intensities), ``brain`` its brain mask.
    """
    positive = head_array[head_array > 0]
    head = ndi.binary_fill_holes(head_array > 0.25 * float(np.median(positive)))
    depth = ndi.distance_transform_edt(head) * spacing
    near_brain = ndi.distance_transform_edt(~brain) * spacing <= TEMPORALIS_BRAIN_MM
    z, y, x = np.indices(head.shape)
    columns = np.nonzero(head.any(axis=(0, 1)))[0]
    midline = (columns.min() + columns.max()) / 2.0
    box = (
        (z >= TEMPORALIS_Z[0])
        & (z <= TEMPORALIS_Z[1])
        & (y >= TEMPORALIS_Y[0])
        & (y <= TEMPORALIS_Y[1])
        & (np.abs(x - midline) * spacing >= TEMPORALIS_LATERAL_MM)
    )
    layer = head & (depth > TEMPORALIS_DEPTH_MM[0]) & (depth <= TEMPORALIS_DEPTH_MM[1]) & ~near_brain
    return box & layer


@dataclass
class Teacher:
    """One head on its 2 mm LPS grid: image, teacher labels, generation label map."""

    image: sitk.Image  # float32, 2 mm, identity direction
    labels: np.ndarray  # uint8 (z, y, x): 0 / 1 face / 2 ears
    tissue: np.ndarray  # uint8 (z, y, x): 0 air, 1..4 outside brain, 5..8 brain (intensity clusters)
    head: np.ndarray  # bool head tissue
    brain: np.ndarray  # bool registered atlas brain
    metrics: dict[str, float]
    temporalis: np.ndarray | None = None  # bool, both sides: must stay untouched


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
        temporalis = template_temporalis(
            sitk.GetArrayFromImage(head), sitk.GetArrayFromImage(self.mri_brain) > 0, head.GetSpacing()[0]
        )
        self.mri_temporalis = sitk.GetImageFromArray(temporalis.astype(np.uint8))
        self.mri_temporalis.CopyInformation(head)
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
        # well than pydeface's): grow them, but only in the skin layer (EAR_LAYER_MM). Beyond the
        # field of view is not air: a head cut there has no skin at the cut.
        layer = outer_shell(head, GRID_MM, EAR_LAYER_MM, fov=field_of_view(image, ref))
        ears = _within(lab_m == FaceLabel.EARS, EAR_GROW_MM) & allowed & layer & ~face
        labels = face.astype(np.uint8) * FaceLabel.FACE + ears.astype(np.uint8) * FaceLabel.EARS
        temporalis = (
            sitk.GetArrayFromImage(resample(self.mri_temporalis, ref, reg_m.transform, nearest=True)) > 0
        )
        under_skin = ndi.distance_transform_edt(head) * GRID_MM > TEMPORALIS_SKIN_MM
        temporalis &= under_skin & ~brain
        metrics = {
            "mi_pydeface": round(reg_p.metric, 3),
            "mi_mridefacer": round(reg_m.metric, 3),
            "face_voxels": int(face.sum()),
            "ear_voxels": int(ears.sum()),
            "head_voxels": int(head.sum()),
            "temporalis_voxels": int(temporalis.sum()),
        }
        tissue = tissue_map(arr, head, brain)
        return Teacher(img2, labels.astype(np.uint8), tissue, head, brain, metrics, temporalis)
