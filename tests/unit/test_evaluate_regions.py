"""Over-blanking, the temporalis region and the new evaluation columns, on arrays with known answers.

The temporalis region is also checked on mridefacer's template as committed in ``models/`` (small),
and on one real head from ``../shared`` through the teacher's registration (skipped without it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from evaluation.metrics import at_background, fraction_removed, near_head, over_blanked
from evaluation.region_pictures import slice_centre, temporalis_picture
from evaluation.results import Result, markdown
from tests.conftest import need_shared
from training.teacher import (
    MRI_BRAIN,
    MRI_HEAD,
    MRIDEFACER_DIR,
    TEMPORALIS_SKIN_MM,
    TEMPORALIS_Y,
    TEMPORALIS_Z,
    Teacher,
    template_temporalis,
)

PROJECT = Path(__file__).resolve().parents[2]
IXI = PROJECT.parent / "shared" / "data" / "heads" / "IXI012-HH-1211_T1_2mm.nii.gz"


def test_a_voxel_already_at_the_background_counts_as_removed_but_not_as_changed() -> None:
    """Air zeroed before defacing holds nothing to blank: a face label over it is removed where it
    holds the background afterwards, whether the mask covered it or not; a tissue voxel the mask left
    is not."""
    before = np.array([[0, 0, 50, 60, 70, 80]], dtype=np.int16)  # two zeroed air voxels, then tissue
    after = before.copy()
    after[0, 2:4] = 0  # blanked to the minimum, as blank_pixels writes
    face = np.array([[1, 1, 1, 1, 1, 0]], dtype=bool)
    gone = at_background(before, after)
    assert gone.tolist() == [[True, True, True, True, False, False]]
    assert fraction_removed(gone, face) == 0.8  # the tissue voxel at 70 was left
    assert fraction_removed(after != before, face) == 0.4  # counting changes only: the old measure
    raised = np.array([[7, 9, 50, 60, 70, 5]], dtype=np.int16)  # noisy air, above the minimum
    raised_after = raised.copy()
    raised_after[0, 2:4] = raised.min()
    assert fraction_removed(at_background(raised, raised_after), face) == 0.4
    with pytest.raises(ValueError, match="shapes differ"):
        at_background(before, after[:, :3])


def test_over_blanked_counts_near_the_head_outside_the_labels() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 1  # face: 8 voxels
    labels[4, 1:3, 1:3] = 2  # ears: 4 voxels -> 12 in all
    near = np.zeros(labels.shape, dtype=bool)
    near[:, :, :5] = True
    blank = np.zeros(labels.shape, dtype=bool)
    blank[1:3, 1:3, 1:3] = True  # inside the face: not over-blanking
    blank[0, 0, 0:3] = True  # 3 outside the labels, near the head
    blank[0, 0, 5] = True  # outside, but far from the head: not counted
    assert over_blanked(blank, labels, near) == pytest.approx(3 / 12)
    assert over_blanked(np.zeros_like(blank), labels, near) == 0.0
    assert over_blanked(np.ones_like(blank), labels, near) == pytest.approx((6 * 6 * 5 - 12) / 12)
    assert np.isnan(over_blanked(blank, np.zeros_like(labels), near))
    with pytest.raises(ValueError):
        over_blanked(blank[:3], labels, near)


def test_near_head_reaches_the_given_millimetres() -> None:
    array = np.zeros((1, 1, 21), dtype=np.float32)
    array[0, 0, 8:13] = 100.0  # head: x 8-12
    near = near_head(array, (2.0, 2.0, 2.0), mm=4.0)  # 2 voxels of 2 mm either side
    assert np.flatnonzero(near[0, 0]).tolist() == list(range(6, 15))


def _synthetic_template() -> tuple[np.ndarray, np.ndarray]:
    """A box head on the template's 3 mm grid, with a box brain 6-8 voxels inside its sides."""
    head = np.zeros((100, 80, 64), dtype=np.float32)
    head[40:98, 2:73, 1:60] = 1000.0
    brain = np.zeros(head.shape, dtype=bool)
    brain[44:94, 8:67, 7:54] = True  # 18-21 mm of scalp, muscle and bone on the sides
    return head, brain


def test_template_temporalis_lies_in_its_box_between_skin_and_brain() -> None:
    head, brain = _synthetic_template()
    region = template_temporalis(head, brain)
    z, y, x = np.nonzero(region)
    assert z.min() == TEMPORALIS_Z[0] and z.max() == TEMPORALIS_Z[1]
    assert y.min() == TEMPORALIS_Y[0] and y.max() == TEMPORALIS_Y[1]
    # Midline x = 30; at least 50 mm from it: x <= 13 or x >= 47. At most 24 mm (8 voxels) deep: x 1-8
    # and 52-59. Not within 4 mm of the brain (x 7-53): x 6 and 54 (3 mm away) go too.
    assert sorted(set(x.tolist())) == [1, 2, 3, 4, 5, 55, 56, 57, 58, 59]
    assert not (region & brain).any()
    # Exactly the box times the lateral slabs: 16 slices x 31 rows x 10 columns.
    assert int(region.sum()) == 16 * 31 * 10


def test_template_temporalis_on_mridefacer_template_is_lateral_and_outside_the_brain() -> None:
    head = sitk.GetArrayFromImage(sitk.ReadImage(str(MRIDEFACER_DIR / MRI_HEAD)))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(MRIDEFACER_DIR / MRI_BRAIN))) > 0
    region = template_temporalis(head, brain)
    ml = region.sum() * 27 / 1000
    assert 100 < ml < 200  # both sides, scalp to bone (an adult temporalis is ~30-60 ml a side)
    left, right = region[:, :, 32:].sum(), region[:, :, :32].sum()
    assert 0.8 < left / right < 1.25  # the template is symmetric
    assert not (region & brain).any()


def test_slice_centre_prefers_the_left_side() -> None:
    region = np.zeros((10, 10, 10), dtype=bool)
    region[2:4, 4, 1] = True  # right (small x in LPS)
    region[6, 6, 8] = True  # left
    assert slice_centre(region) == (6, 6, 8)
    assert slice_centre(np.zeros((4, 6, 8), dtype=bool)) == (2, 3, 4)


def test_markdown_has_the_new_columns() -> None:
    real = Result("head-a", "nifti", "nnunet", True, "ok", seconds=1.0)
    real.face_fraction, real.ear_fraction, real.over_blanked = 0.99, 0.5, 0.25
    real.temporalis_changed, real.brain_changed, real.brain_changed_deep = 3, 0, 0
    synth = Result("synth-00", "synthetic", "nnunet", True, "ok", seconds=1.0, contrast="t1")
    synth.face_fraction, synth.ear_fraction, synth.over_blanked = 1.0, 0.75, 0.125
    table = markdown([real, synth])
    assert (
        "| teacher face removed | teacher ears removed | over-blanking | temporalis voxels changed |" in table
    )
    assert "| 99.0 % | 50.0 % | 25.0 % | 3 | 0 | 0 |" in table
    assert "| 100.0 % | 75.0 % | 75.0 % | 12.5 % |" in table


@pytest.fixture(scope="module")
def ixi_teacher() -> Teacher:
    """The teacher's labels of the IXI head, registered once for the tests that read them."""
    if not IXI.is_file():
        need_shared(IXI)
    from training.teacher import TeacherLabeller, read_head

    return TeacherLabeller().label(read_head(IXI))


def test_temporalis_on_a_real_head_is_under_the_skin_beside_the_ears(ixi_teacher: Teacher) -> None:
    from scipy import ndimage as ndi

    from training.teacher import GRID_MM
    from worker.types import FaceLabel

    teacher = ixi_teacher
    region = teacher.temporalis
    ml = region.sum() * GRID_MM**3 / 1000
    assert 20 < ml < 120
    depth = ndi.distance_transform_edt(teacher.head) * GRID_MM
    assert depth[region].min() > TEMPORALIS_SKIN_MM
    assert not (region & teacher.brain).any()
    assert not (region & (teacher.labels == FaceLabel.FACE)).any()
    # Both sides of the head, above the ears' lowest point.
    x = np.nonzero(region)[2]
    middle = region.shape[2] / 2
    assert (x < middle).any() and (x > middle).any()
    ears_z = np.nonzero(teacher.labels == FaceLabel.EARS)[0]
    assert np.nonzero(region)[0].min() > ears_z.min()
    picture = temporalis_picture(teacher)
    assert picture.ndim == 3 and picture.shape[2] == 3
    green = (picture[..., 1].astype(int) - picture[..., 0] > 60) & (picture[..., 1] > 120)
    assert green.any()


def test_a_wider_ear_margin_only_adds_ear_voxels_and_keeps_the_face() -> None:
    if not IXI.is_file():
        need_shared(IXI)
    from evaluation.heads import SHIPPED_MODELS
    from worker.deface.nnunet import NnUNetMasker
    from worker.types import FaceLabel, Volume

    volume = Volume.from_sitk(sitk.ReadImage(str(IXI)))
    shipped = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1).predict(volume).labels
    wide = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1, ear_margin_mm=10.0).predict(volume)
    shallow = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1, ear_shell_mm=2.0).predict(volume).labels
    assert wide.details["ear_margin_mm"] == 10.0
    assert np.array_equal(wide.labels == FaceLabel.FACE, shipped == FaceLabel.FACE)
    ears, wide_ears = shipped == FaceLabel.EARS, wide.labels == FaceLabel.EARS
    assert wide_ears.sum() > ears.sum() and not (ears & ~wide_ears).any()
    shallow_ears = shallow == FaceLabel.EARS
    assert shallow_ears.sum() < ears.sum() and not (shallow_ears & ~ears).any()


def test_a_deeper_face_grows_only_backwards_and_keeps_the_rest() -> None:
    """``face_depth_mm`` carries the predicted face further back (LPS y grows posterior): every voxel of
    the plain mask stays, the new face voxels lie behind the plain face's front in their own column, and
    the face grows no higher and no lower (rows in z) than the plain face plus its margin."""
    if not IXI.is_file():
        need_shared(IXI)
    from evaluation.heads import SHIPPED_MODELS
    from worker.deface.nnunet import NnUNetMasker
    from worker.types import FaceLabel, Volume

    # Reoriented to LPS: array axes (z, y, x) run superior, posterior and left as indices grow.
    volume = Volume.from_sitk(sitk.DICOMOrient(sitk.ReadImage(str(IXI)), "LPS"))
    assert np.allclose(volume.direction, np.eye(3).ravel())
    plain = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1).predict(volume)
    deeper = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1, face_depth_mm=8.0).predict(volume)
    assert deeper.details["face_depth_mm"] == 8.0 and "face_depth_mm" not in plain.details
    face, deep_face = plain.labels == FaceLabel.FACE, deeper.labels == FaceLabel.FACE
    assert not (face & ~deep_face).any(), "a voxel of the plain face was lost"
    added = deep_face & ~face
    # 8 mm more depth over a face about 12 by 10 cm: several millilitres.
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert added.sum() * voxel_ml > 5.0, added.sum()
    z, y, x = np.nonzero(added)
    front = np.argmax(face, axis=1)  # per (z, x) column, the face's most anterior voxel
    assert face[z, :, x].any(axis=1).all(), "a new face voxel where the column had no face"
    assert (y > front[z, x]).all(), "a new face voxel lies in front of the face"
    rows = np.flatnonzero(face.any(axis=(1, 2)))
    assert rows[0] <= z.min() and z.max() <= rows[-1]


def test_the_teacher_ear_label_is_the_skin_layer_not_the_temporalis(ixi_teacher: Teacher) -> None:
    from scipy import ndimage as ndi

    from training.teacher import EAR_LAYER_MM, GRID_MM
    from worker.types import FaceLabel

    teacher = ixi_teacher
    ears = teacher.labels == FaceLabel.EARS
    assert 30 < ears.sum() * GRID_MM**3 / 1000 < 150, "both auricles and the skin around them"
    depth = ndi.distance_transform_edt(teacher.head) * GRID_MM
    assert depth[ears].max() <= EAR_LAYER_MM, "no ear voxel deeper than the outer layer"
    assert (ears & ~teacher.head).any(), "the auricle's surroundings in the air are part of it"
    assert not (ears & teacher.temporalis).any()


VRD = PROJECT.parent / "shared" / "data" / "heads" / "vrd_seg3D_MR_T1_electrodes.nii.gz"


def test_ears_blanked_where_the_field_of_view_cuts_the_head_spare_the_temporalis_and_brain() -> None:
    """vrd-seg3d's field of view cuts the side of the head. When the dark tissue on the cut counted as
    outside air (seeded from the cut, and the head not filled slice by slice), the masker's ear layer was
    measured from the cut and blanked 947 temporalis and 1,107 atlas-brain voxels there."""
    if not VRD.is_file():
        need_shared(VRD)
    from evaluation.heads import SHIPPED_MODELS
    from evaluation.metrics import on_grid
    from training.teacher import TeacherLabeller, read_head
    from worker.deface.nnunet import NnUNetMasker
    from worker.types import FaceLabel, Volume

    image = read_head(VRD)
    teacher = TeacherLabeller().label(image)
    mask = NnUNetMasker(SHIPPED_MODELS["nnunet"], threads=1).predict(Volume.from_sitk(image))
    ears = mask.labels == FaceLabel.EARS
    assert ears.sum() > 1000, "the ears are still blanked"
    grid = sitk.Image(teacher.image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(teacher.image)
    temporalis = on_grid(teacher.temporalis.astype(np.uint8), grid, image) > 0
    brain = on_grid(teacher.brain.astype(np.uint8), grid, image) > 0
    assert not (ears & temporalis).any()
    assert not (ears & brain).any()
