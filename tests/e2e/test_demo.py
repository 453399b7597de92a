"""`pediface demo`: the README's first command, on the sample made from the shipped template head."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pediface import demo

pytestmark = pytest.mark.e2e


def test_without_shared_data_the_demo_uses_the_bundled_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "SHARED_UIH", tmp_path / "absent")
    what, files = demo.demo_input(tmp_path)
    assert "template head" in what and len(files) > 40
    assert all(f.read_bytes()[128:132] == b"DICM" for f in files[:3])


@pytest.mark.slow(seconds=20)
def test_demo_runs_end_to_end_and_says_only_where_the_results_are(tmp_path: Path) -> None:
    """The first ten minutes: the demo prints the lines below and nothing else; Celery's banner, the logs
    and library warnings are in the log file, at debug level."""
    from worker.sample import write_sample_series

    sample = tmp_path / "sample"
    write_sample_series(demo.TEMPLATE_HEAD, sample, spacing_mm=3.0)
    env = {**os.environ, "PEDIFACE_DATA_DIR": str(tmp_path / "data"), "PEDIFACE_METRICS__PORT": "0"}
    env.pop("PEDIFACE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "pediface", "demo", "--input", str(sample), "--timeout-s", "300"],
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 5, lines
    assert re.fullmatch(
        rf"pediface demo: sending 65 instances \(series in {re.escape(str(sample))}\) "
        r"to PEDIFACE@127\.0\.0\.1:\d+",
        lines[0],
    ), lines[0]
    assert re.fullmatch(r"pediface demo: done in [\d.]+ s \(C-STORE [\d.]+ s\)", lines[1]), lines[1]
    found = dict(line.strip().split(": ", 1) for line in lines[2:])
    assert list(found) == ["defaced, de-identified series (65 instances)", "before/after picture", "log"]
    series = Path(found["defaced, de-identified series (65 instances)"])
    assert len(list(series.glob("*.dcm"))) == 65
    with Image.open(found["before/after picture"]) as picture:
        assert picture.format == "PNG" and picture.size[0] >= 640
    log = Path(found["log"]).read_text()
    assert Path(found["log"]).parent == tmp_path / "data" / "logs"
    assert "[config]" in log and "[queues]" in log, "Celery's banner belongs in the log"
    assert "[debug" in log, "the log is kept at debug level"
