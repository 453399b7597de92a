"""PEDIFACE_STRICT=1 (set by .ci/run): a skip for a missing tool, service or data is a failure.

Run on a probe file by a real pytest in a subprocess with this suite's conftest as a plugin: once
strict, once not. Only the skips named in ``ALLOWED_IN_STRICT`` (no CUDA device) stay skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PROBE = """
import pytest
from tests.conftest import need_tool

def test_a_missing_tool():
    need_tool("pediface-no-such-tool")

def test_no_gpu():
    pytest.skip("no CUDA device")
"""

MODULE_PROBE = """
import pytest
pytest.skip("shared data missing: /nowhere", allow_module_level=True)

def test_never_collected():
    pass
"""


def run_probe(tmp_path: Path, source: str, strict: bool) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PEDIFACE_STRICT": "1" if strict else "0"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-rA", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_skip_for_a_missing_tool_fails_only_when_strict(tmp_path: Path) -> None:
    relaxed = run_probe(tmp_path, PROBE, strict=False)
    assert relaxed.returncode == 0 and "2 skipped" in relaxed.stdout, relaxed.stdout
    strict = run_probe(tmp_path, PROBE, strict=True)
    assert strict.returncode == 1 and "1 failed, 1 skipped" in strict.stdout, strict.stdout
    failure = "PEDIFACE_STRICT=1: a skip is a failure in CI (Skipped: pediface-no-such-tool not installed"
    assert failure in strict.stdout
    skipped = [line for line in strict.stdout.splitlines() if line.startswith("SKIPPED [1] test_probe.py:")]
    assert len(skipped) == 1 and skipped[0].endswith(": no CUDA device"), skipped


def test_a_module_skipped_at_collection_fails_when_strict(tmp_path: Path) -> None:
    relaxed = run_probe(tmp_path, MODULE_PROBE, strict=False)
    assert relaxed.returncode == 5 and "1 skipped" in relaxed.stdout, relaxed.stdout  # 5: no test ran
    strict = run_probe(tmp_path, MODULE_PROBE, strict=True)
    assert strict.returncode == 2, strict.stdout  # 2: interrupted by a collection error
    assert "a skipped module is a failure in CI (Skipped: shared data missing: /nowhere)" in strict.stdout, (
        strict.stdout
    )


def test_ci_runs_strict() -> None:
    assert "export PEDIFACE_STRICT=1" in (REPO / ".ci" / "run").read_text()
