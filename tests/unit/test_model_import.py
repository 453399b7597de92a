"""`pediface model import`: nnU-Net v1 and v2 models become pediface maskers, exactly.

The v1 model and its reference outputs in tests/fixtures/nnunet_v1/ were made by nnU-Net 1.7.1 itself
(``make_fixture.py`` there; tests/e2e/test_model_import_v1.py regenerates them from scratch): the
imported network must give v1's logits on the same input. The v2 imports use the shipped model and
must give the shipped masker's masks on a real head.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from common.errors import MaskingError
from pediface.cli import app
from tests.conftest import HEADS, need_shared
from training.model_import import detect_layout, import_model
from training.safe_load import ModelImportError, RestrictedUnpickler, load_pickle
from worker.deface import MODELS_ROOT, load_masker
from worker.grid import Geometry
from worker.types import FaceLabel, Volume

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "nnunet_v1"
V1_MODEL = FIXTURE / "3d_fullres" / "Task991_PedifaceAniso" / "nnUNetTrainerV2__nnUNetPlansv2.1"
SHIPPED = MODELS_ROOT / "nnunet-face"


def run_import(data_dir: Path, *args: str) -> object:
    env = {"PEDIFACE_DATA_DIR": str(data_dir)}
    return CliRunner().invoke(app, ["model", "import", *args], env=env, catch_exceptions=False)


def network_of(folder: Path, **options: object) -> torch.nn.Module:
    """The network pediface's masker runs for a model folder (checksums, labels and grid checked on load)."""
    return load_masker("nnunet", folder, threads=1, device="cpu", **options)._predictor.network.eval()


# Same weights, same operations: what remains is float32 rounding, which moves with the CPU's kernels
# (oneDNN picks AVX2 or AVX-512 code; the reference was saved on another CPU). Measured up to 2.3e-5
# on logits of magnitude ~2; a wrongly mapped layer or channel gives differences of order 1.
SAME = 1e-4


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def v1_imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    result = run_import(data, str(FIXTURE), "--face-label", "1", "--ear-label", "2")
    assert result.exit_code == 0, result.output
    folder = data / "models" / "dataset991_pedifaceaniso"
    assert f"use it: deface.masker: nnunet and deface.model_dir: {folder}" in result.output
    return folder


def test_the_imported_v1_network_gives_nnunet_v1s_own_output(v1_imported: Path) -> None:
    reference = np.load(FIXTURE / "reference.npz")
    network = network_of(v1_imported)
    with torch.no_grad():
        logits = network(torch.from_numpy(reference["x"])).numpy()
    difference = max_abs(logits, reference["logits"])
    print(
        f"\nv1 logits vs imported v2 network: max abs difference {difference:.3g} "
        f"(largest |logit| {np.abs(reference['logits']).max():.3g}, {logits[0, 0].size} voxels)"
    )
    assert difference <= SAME
    assert np.array_equal(logits.argmax(1), reference["logits"].argmax(1)), "segmentation differs"
    # the lower decoder stages too: every seg output layer of v1's landed where v2 reads it
    network.decoder.deep_supervision = True
    with torch.no_grad():
        heads = [h.numpy() for h in network(torch.from_numpy(reference["x"]))]
    network.decoder.deep_supervision = False
    lower = sorted(k for k in reference.files if k.startswith("ds_"))
    assert len(lower) == len(heads) - 1 >= 2
    assert max(max_abs(heads[int(k[3:])], reference[k]) for k in lower) <= SAME


def test_the_import_records_where_the_model_came_from(v1_imported: Path) -> None:
    record = json.loads((v1_imported / "IMPORT.json").read_text())
    assert record["source_kind"] == "v1" and record["v1_trainer"] == "nnUNetTrainerV2"
    assert set(record["source_files"]) == {
        "plans.pkl",
        "fold_0/model_final_checkpoint.model",
        "fold_0/model_final_checkpoint.model.pkl",
    }
    assert json.loads((v1_imported / "dataset.json").read_text())["labels"] == {
        "background": 0,
        "face": 1,
        "ears": 2,
    }
    plans = json.loads((v1_imported / "plans.json").read_text())
    assert plans["transpose_forward"] == [2, 0, 1]
    checkpoint = torch.load(v1_imported / "fold_0" / "checkpoint_final.pth", weights_only=True)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"  # plain data: loads without running any code
    listed = CliRunner().invoke(
        app, ["model", "list"], env={"PEDIFACE_DATA_DIR": str(v1_imported.parents[1])}
    )
    assert listed.exit_code == 0, listed.output
    assert "* nnunet-face " in listed.output  # the shipped model is the one in use
    assert (
        f"  dataset991_pedifaceaniso     nnunet  folds 0  LPS  labels face, ears  {v1_imported}"
        in listed.output
    )


def test_an_anisotropic_imported_model_runs_through_the_masker(v1_imported: Path) -> None:
    """The masker feeds the model arrays at its spacing in its axis order: nnU-Net never resamples, mirrors
    left-right on the axis that is left-right after the transpose, and the guard rails decide."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    masker = load_masker("nnunet", v1_imported, threads=1, device="cpu")
    assert masker.spacing_zyx == (1.0, 1.0, 3.5)  # x (left-right) coarse, as the training images were
    assert masker._predictor.allowed_mirroring_axes == (0,)  # x is the network's first axis (transposed)
    head = sitk.ReadImage(str(need_shared(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz")))
    # A piece of the head only: the path is what is tested here; a whole head at 1 x 1 x 3.5 mm is
    # hundreds of tiles of this model's small patch.
    size = head.GetSize()
    volume = Volume.from_sitk(
        sitk.RegionOfInterest(head, [40, 40, 30], [size[0] // 2 - 20, 0, size[2] // 2 - 15])
    )
    grid = masker._to_model_grid(volume.array, Geometry.of(volume))
    assert grid.GetSpacing() == (3.5, 1.0, 1.0)
    array = sitk.GetArrayFromImage(grid)[None]
    predictor = masker._predictor
    preprocessed, _, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        array.copy(),
        None,
        {"spacing": list(masker.spacing_zyx)},
        predictor.plans_manager,
        predictor.configuration_manager,
        predictor.dataset_json,
    )
    assert preprocessed.shape[1:] == tuple(array.shape[1:][i] for i in (2, 0, 1)), "nnU-Net resampled"
    try:  # a network of random weights: the guard rails may well refuse its mask, but nothing else may fail
        mask = masker.predict(volume)
        assert mask.labels.shape == volume.shape
    except MaskingError as refused:
        assert refused.code.startswith("mask.")


def test_labels_can_come_in_any_order_and_from_their_names(tmp_path: Path) -> None:
    reference = np.load(FIXTURE / "reference.npz")
    swapped = run_import(tmp_path, str(FIXTURE), "--name", "swapped", "--face-label", "2", "--ear-label", "1")
    assert swapped.exit_code == 0, swapped.output
    with torch.no_grad():
        logits = network_of(tmp_path / "models" / "swapped")(torch.from_numpy(reference["x"])).numpy()
    assert max_abs(logits[:, [0, 2, 1]], reference["logits"]) <= SAME  # channels permuted exactly

    named = tmp_path / "named" / "Task991_PedifaceAniso"
    shutil.copytree(V1_MODEL, named / V1_MODEL.name)
    (named / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "ears", "2": "face"}}))
    by_name = run_import(tmp_path, str(tmp_path / "named"), "--name", "named")
    assert by_name.exit_code == 0, by_name.output
    assert "labels face 1, ears 2" in by_name.output
    with torch.no_grad():
        logits = network_of(tmp_path / "models" / "named")(torch.from_numpy(reference["x"])).numpy()
    assert max_abs(logits[:, [0, 2, 1]], reference["logits"]) <= SAME

    unnamed = run_import(tmp_path, str(FIXTURE), "--name", "unnamed")
    assert unnamed.exit_code == 2
    assert "which label is the face? the model has labels [1, 2] (no names shipped): pass --face-label" in (
        unnamed.output.replace("\n", " ")
    )
    assert not (tmp_path / "models" / "unnamed").exists()


def test_what_cannot_be_imported_is_refused_with_the_reason(tmp_path: Path) -> None:
    info = load_pickle(V1_MODEL / "fold_0" / "model_final_checkpoint.model.pkl")
    batchnorm = tmp_path / "bn" / "Task991_X" / "nnUNetTrainerV2_BN__nnUNetPlansv2.1"
    shutil.copytree(V1_MODEL, batchnorm)
    (batchnorm / "fold_0" / "model_final_checkpoint.model.pkl").write_bytes(
        pickle.dumps({**info, "name": "nnUNetTrainerV2_BN"})
    )
    with pytest.raises(ModelImportError, match="BatchNorm network: it does not convert to a PlainConvUNet"):
        import_model(tmp_path / "bn", tmp_path / "models", face_label=1)

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo owned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle posix.system"):
        RestrictedUnpickler(__import__("io").BytesIO(pickle.dumps(Payload()))).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelImportError, match="no nnU-Net model found"):
        detect_layout(tmp_path / "empty")
    assert not (tmp_path / "models").exists()


def test_a_model_saved_under_numpy_1_imports_the_same(tmp_path: Path, v1_imported: Path) -> None:
    """Every v1 model of 2023 was pickled by numpy 1, whose module names (numpy.core) numpy 2 renamed."""
    old = tmp_path / "old" / "Task991_PedifaceAniso" / V1_MODEL.name
    (old / "fold_0").mkdir(parents=True)
    renamed = 0
    for name in ("plans.pkl", "fold_0/model_final_checkpoint.model.pkl"):
        raw = pickle.dumps(load_pickle(V1_MODEL / name), protocol=0)  # protocol 0 names modules as text
        renamed += raw.count(b"numpy._core")
        (old / name).write_bytes(raw.replace(b"numpy._core", b"numpy.core"))
    with (
        zipfile.ZipFile(V1_MODEL / "fold_0" / "model_final_checkpoint.model") as source,
        zipfile.ZipFile(old / "fold_0" / "model_final_checkpoint.model", "w") as target,
    ):
        for member in source.infolist():
            data = source.read(member.filename)
            if member.filename.endswith("data.pkl"):
                renamed += data.count(b"numpy._core")
                data = data.replace(b"numpy._core", b"numpy.core")
            target.writestr(member, data)
    assert renamed >= 3
    record = import_model(tmp_path / "old", tmp_path / "models", face_label=1, ear_label=2, check=False)
    mine = torch.load(Path(record["installed"]) / "fold_0/checkpoint_final.pth", weights_only=True)
    theirs = torch.load(v1_imported / "fold_0/checkpoint_final.pth", weights_only=True)
    assert all(torch.equal(mine["network_weights"][k], v) for k, v in theirs["network_weights"].items())


@pytest.fixture(scope="module")
def ixi() -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(need_shared(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz"))))


@pytest.fixture(scope="module")
def shipped_mask(ixi: Volume) -> np.ndarray:
    # On nnU-Net's own predictor, as the imported copies (no ONNX export) run: the same arithmetic.
    return load_masker("nnunet", SHIPPED, threads=1, device="cpu", backend="torch").predict(ixi).labels


def test_a_v2_folder_with_other_label_numbers_masks_as_the_shipped_model(
    tmp_path: Path, ixi: Volume, shipped_mask: np.ndarray
) -> None:
    source = tmp_path / "Dataset501_Face" / "nnUNetTrainer__nnUNetPlans__3d_small"
    shutil.copytree(SHIPPED, source)
    result = run_import(
        tmp_path,
        str(tmp_path / "Dataset501_Face"),
        "--name",
        "relabelled",
        "--face-label",
        "2",
        "--ear-label",
        "1",
    )  # deliberately wrong: ears become the face
    assert result.exit_code == 0, result.output
    swapped = load_masker("nnunet", tmp_path / "models" / "relabelled", threads=1, device="cpu")
    with pytest.raises(MaskingError):  # the ears as a "face" cannot pass the guard rails
        swapped.predict(ixi)

    right = run_import(tmp_path, str(tmp_path / "Dataset501_Face"), "--name", "same")
    assert right.exit_code == 0, right.output
    mask = load_masker("nnunet", tmp_path / "models" / "same", threads=1, device="cpu").predict(ixi)
    assert mask.masker == "same"
    assert np.array_equal(mask.labels, shipped_mask)


def test_a_face_only_model_masks_the_face_with_the_ears_off(
    tmp_path: Path, ixi: Volume, shipped_mask: np.ndarray
) -> None:
    """The paper's mask is one label: the shipped model imported with its face only gives the same face."""
    export = tmp_path / "results" / "Dataset501_Face" / "nnUNetTrainer__nnUNetPlans__3d_small"
    (export / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "fold_0/checkpoint_final.pth"):
        shutil.copy(SHIPPED / name, export / name)
    (export / "dataset_fingerprint.json").write_text("{}")
    (export / "fold_0" / "progress.png").write_bytes(b"")  # what training leaves, and the exporter packs
    (export / "fold_0" / "validation").mkdir()
    (export / "fold_0" / "validation" / "summary.json").write_text("{}")
    archive = tmp_path / "exported.zip"
    code = (
        "import sys; from nnunetv2.model_sharing.model_export import export_pretrained_model as e; "
        "e('Dataset501_Face', sys.argv[1], configurations=('3d_small',), folds=(0,))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(archive)],
        capture_output=True,
        text=True,
        env={**os.environ, "nnUNet_results": str(tmp_path / "results")},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert detect_layout(archive) == "v2-zip"
    result = run_import(tmp_path, str(archive), "--name", "face-only", "--face-label", "1")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "models" / "face-only"
    assert json.loads((folder / "dataset.json").read_text())["labels"] == {
        "background": 0,
        "face": 1,
        "other_ears": 2,
    }
    mask = load_masker("nnunet", folder, threads=1, device="cpu").predict(ixi)
    assert not (mask.labels == FaceLabel.EARS).any()
    assert np.array_equal(mask.labels == FaceLabel.FACE, shipped_mask == FaceLabel.FACE)
