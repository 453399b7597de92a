"""The contrasts of the synthetic training cases: version 2's draw by default, enhanced T1 on request.

``build_dataset`` runs on a toy teacher label map written where the training writes real ones, so the
cases are real nnU-Net raw files and the case log is the one training writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from tests.conftest import REPO
from training.train import DATASET_NAME, build_dataset


def teacher_dir(work_dir: Path, toy_head: tuple[np.ndarray, np.ndarray]) -> None:
    (work_dir / "teacher").mkdir(parents=True)
    tissue, labels = toy_head
    np.savez_compressed(work_dir / "teacher" / "sub-01.npz", tissue=tissue, labels=labels)


def cases(work_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (work_dir / "synth_cases.jsonl").read_text().splitlines()]


def test_cases_are_drawn_from_the_contrasts_asked_for(
    tmp_path: Path, toy_head: tuple[np.ndarray, np.ndarray]
) -> None:
    default, enhanced = tmp_path / "default", tmp_path / "enhanced"
    for work_dir in (default, enhanced):
        teacher_dir(work_dir, toy_head)
    build_dataset(default, 6)
    raw = build_dataset(enhanced, 6, contrasts=("t1", "t1ce"))
    assert raw == enhanced / "nnUNet_raw" / DATASET_NAME
    drawn = [case["contrast"] for case in cases(default)]
    assert len(drawn) == 6 and "t1ce" not in drawn and set(drawn) <= {"t1", "t2", "pd", "flair", "random"}
    asked = [case["contrast"] for case in cases(enhanced)]
    assert set(asked) == {"t1", "t1ce"}, asked  # seeds [0, 0..5] draw both
    # Every case is written, image and label on the same grid.
    for number in range(6):
        image = sitk.ReadImage(str(raw / "imagesTr" / f"case_{number:04d}_0000.nii.gz"))
        label = sitk.ReadImage(str(raw / "labelsTr" / f"case_{number:04d}.nii.gz"))
        assert image.GetSize() == label.GetSize() and image.GetSpacing() == (4.0, 4.0, 4.0)


def test_the_training_command_refuses_an_unknown_contrast(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", str(tmp_path / "model"), "--contrasts", "t1", "t1c"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "unknown contrast(s) t1c: choose from t1 t2 pd flair random t1ce" in result.stderr
    assert not (tmp_path / "model").exists()
