"""`pediface deface` on a DICOMDIR (a CD or PACS export) and on a BIDS dataset, through the real command.

The BIDS derivative it writes is checked with the BIDS validator (npm ``bids-validator``, installed by
``make bids-validator``, which ``make test`` runs); without it the test skips, saying so (a failure under
PEDIFACE_STRICT=1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from tests.conftest import HEADS, REPO, need_shared
from tests.e2e.checks import assert_defaced_deidentified
from tests.e2e.test_batch import HFS, report_rows, run_deface, two_mm_head
from tests.unit.test_batch_discover import report_instance

pytestmark = pytest.mark.e2e

BIDS_VALIDATOR_VERSION = "1.15.0"
"""The BIDS validator the tests run (npm; ``make bids-validator`` installs it into .tools/)."""


def bids_validator() -> str:
    for candidate in (
        REPO / ".tools" / "node_modules" / ".bin" / "bids-validator",
        shutil.which("bids-validator"),
    ):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip(
        f"bids-validator not installed (make bids-validator: npm install bids-validator@"
        f"{BIDS_VALIDATOR_VERSION} into .tools/; needs apt-get install nodejs npm): the BIDS output was NOT "
        "validated"
    )


def test_a_dicomdir_with_a_report_beside_the_images(tmp_path: Path) -> None:
    need_shared(HFS)
    fileset = FileSet()
    originals = sorted(HFS.iterdir())
    for path in originals:
        fileset.add(pydicom.dcmread(path))
    first = pydicom.dcmread(originals[0], stop_before_pixels=True)
    fileset.add(report_instance(str(first.StudyInstanceUID), generate_uid()))
    cd = tmp_path / "cd"
    fileset.write(cd)
    output = tmp_path / "out"

    result = run_deface(cd / "DICOMDIR", output, tmp_path / "data")

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stderr.splitlines() == [
        "pediface: skipped DICOMDIR: DICOMDIR index: the files it lists are read",
        "pediface: skipped PT000000/ST000000/SE000001: structured report, not an image",
    ]
    rows = {row["input"]: row for row in report_rows(output)}
    assert {k: (r["kind"], r["verdict"], r["reason"]) for k, r in rows.items()} == {
        "PT000000/ST000000/SE000000": ("dicom", "defaced", ""),
        "DICOMDIR": ("file", "skipped", "DICOMDIR index: the files it lists are read"),
        "PT000000/ST000000/SE000001": ("dicom", "skipped", "structured report, not an image"),
    }
    written = sorted((output / rows["PT000000/ST000000/SE000000"]["output"]).glob("*.dcm"))
    assert_defaced_deidentified(originals, written)
    # what a user runs next: dcm2niix turns the defaced series into one volume of the original's size
    converted = tmp_path / "nifti"
    converted.mkdir()
    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    done = subprocess.run(
        [dcm2niix, "-z", "y", "-f", "vol", "-o", str(converted), str(written[0].parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [volume] = converted.glob("*.nii.gz")
    assert sorted(nib.load(volume).shape[:3]) == [35, 256, 256]


def test_a_bids_dataset_becomes_a_valid_bids_derivative(tmp_path: Path) -> None:
    validator = bids_validator()
    need_shared(HEADS)
    source = tmp_path / "ds"
    for folder in ("sub-01/anat", "sub-02/anat", "sub-02/func"):
        (source / folder).mkdir(parents=True)
    (source / "dataset_description.json").write_text(
        json.dumps(
            {
                "Name": "pediface test heads",
                "BIDSVersion": "1.9.0",
                "License": "CC-BY-SA-3.0",
                "Authors": ["IXI", "Seg3D"],
            }
        )
    )
    (source / "README").write_text("Two heads from ../shared/data for pediface's tests, resampled to 2 mm.\n")
    (source / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    shutil.copy(HEADS / "IXI012-HH-1211_T1_2mm.nii.gz", source / "sub-01/anat/sub-01_T1w.nii.gz")
    sidecar = {"MagneticFieldStrength": 3, "EchoTime": 0.0046, "RepetitionTime": 0.0098}
    (source / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps(sidecar))
    two_mm_head("vrd_seg3D_MR_T1_electrodes.nii.gz", source / "sub-02/anat/sub-02_T1w.nii.gz")
    bold = nib.load(source / "sub-02/anat/sub-02_T1w.nii.gz")
    header = bold.header.copy()
    header.set_data_shape((*bold.shape, 3))
    header.set_zooms((2.0, 2.0, 2.0, 2.0))
    header.set_xyzt_units("mm", "sec")
    series = np.repeat(np.asarray(bold.dataobj)[..., None], 3, axis=-1)
    nib.save(
        nib.Nifti1Image(series, bold.affine, header), source / "sub-02/func/sub-02_task-rest_bold.nii.gz"
    )
    (source / "sub-02/func/sub-02_task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"})
    )
    assert _validate(validator, source)["errors"] == [], "the source dataset itself must be valid"
    output = tmp_path / "derivative"

    result = run_deface(source, output, tmp_path / "data")

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stderr.splitlines() == [
        "pediface: skipped sub-02/func/sub-02_task-rest_bold.nii.gz: "
        "func/ image: only anat/ images are defaced"
    ]
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()) == [
        ".bidsignore",
        "README",
        "dataset_description.json",
        "pediface-report.csv",
        "sub-01/anat/sub-01_T1w.json",
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
    ]
    description = json.loads((output / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "pediface"
    assert json.loads((output / "sub-01/anat/sub-01_T1w.json").read_text()) == sidecar
    for name in ("sub-01/anat/sub-01_T1w.nii.gz", "sub-02/anat/sub-02_T1w.nii.gz"):
        before, after = nib.load(source / name), nib.load(output / name)
        assert np.allclose(before.affine, after.affine) and before.shape == after.shape
        changed = np.asarray(before.dataobj) != np.asarray(after.dataobj)
        assert 0.005 < changed.mean() < 0.2, f"{name}: {changed.mean():.3f} of the voxels changed"
    report = _validate(validator, output)
    assert report["errors"] == [], report["errors"]
    assert report["summary"]["subjects"] == ["01", "02"] and report["summary"]["totalFiles"] >= 5


def _validate(validator: str, dataset: Path) -> dict:
    """The validator's JSON report: errors as (code, files) pairs, and its summary."""
    done = subprocess.run([validator, str(dataset), "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    errors = [
        (issue["key"], [f["file"]["relativePath"] for f in issue.get("files", []) if f.get("file")])
        for issue in report["issues"]["errors"]
    ]
    return {"errors": errors, "summary": report["summary"], "returncode": done.returncode}
