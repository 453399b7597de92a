"""The v1 conversion proven from scratch: nnU-Net 1.7.1 (from PyPI, into a throw-away folder) builds and
saves a model in v1's layout and computes its own forward pass; ``pediface model import`` converts it; the
converted network must give the same logits.

The default suite does the same on the committed fixture (tests/unit/test_model_import.py); this test
regenerates that fixture with tests/fixtures/nnunet_v1/make_fixture.py (about 2 minutes, PyPI needed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.unit.test_model_import import network_of

pytestmark = pytest.mark.e2e

MAKE_FIXTURE = REPO / "tests" / "fixtures" / "nnunet_v1" / "make_fixture.py"


@pytest.mark.slow(seconds=30)
def test_a_model_made_by_nnunet_171_imports_to_the_same_network(tmp_path: Path) -> None:
    fixture = tmp_path / "fixture"
    made = subprocess.run(
        [sys.executable, str(MAKE_FIXTURE), str(fixture)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "transpose_forward [" in made.stdout
    imported = subprocess.run(
        [
            sys.executable,
            "-m",
            "pediface",
            "model",
            "import",
            str(fixture),
            "--face-label",
            "1",
            "--ear-label",
            "2",
            "--name",
            "from-v1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PEDIFACE_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO)},
    )
    assert imported.returncode == 0, imported.stdout + imported.stderr[-3000:]
    assert imported.stdout.startswith("installed from-v1 (v1, 3d_fullres, folds 0; labels face 1, ears 2)")
    reference = np.load(fixture / "reference.npz")
    with torch.no_grad():
        logits = network_of(tmp_path / "data" / "models" / "from-v1")(
            torch.from_numpy(reference["x"])
        ).numpy()
    difference = float(np.abs(logits - reference["logits"]).max())
    print(f"\nnnU-Net 1.7.1 logits vs the imported network: max abs difference {difference:.3g}")
    assert difference <= 1e-5
    assert np.array_equal(logits.argmax(1), reference["logits"].argmax(1))
