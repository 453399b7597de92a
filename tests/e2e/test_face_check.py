"""The face check end to end: a broken masker's series is quarantined, not sent; fixed and retried, it is.

Through the real gateway and worker (``pediface run``) to a real archive (dcmtk's storescp), with a
deliberately broken masker: a template masker folder whose face region is cut to its upper half, so
that the nose tip, mouth and chin stay. The face check finds that face; after the configuration is
changed to the shipped nnU-Net masker, ``pediface quarantine retry`` delivers the series.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import Processes, free_port, wait_for_port, wait_until
from tests.e2e.test_faults import jobs, storescp, storescu

pytestmark = pytest.mark.e2e


def _write_config(path: Path, data_dir: Path, port: int, archive_port: int, deface: dict) -> None:
    settings = {
        "data_dir": str(data_dir),
        "dicom": {"port": port},
        "series": {"quiet_period_s": 2, "poll_interval_s": 0.5},
        "metrics": {"port": 0},
        "deface": {"masker": "template", **deface},
        "destination": {"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port},
    }
    path.write_text(yaml.safe_dump(settings))


@pytest.mark.slow(seconds=95)
def test_a_face_left_by_a_broken_masker_is_quarantined_then_delivered_after_a_retry(
    tmp_path: Path, processes: Processes, small_series: list[Path], upper_face_masker: Path
) -> None:
    data_dir, port, archive_port = tmp_path / "data", free_port(), free_port()
    config = tmp_path / "pediface.yaml"
    _write_config(config, data_dir, port, archive_port, {"model_dir": str(upper_face_masker)})
    env = {"PEDIFACE_CONFIG": str(config)}
    archive = tmp_path / "archive"
    storescp(processes, "archive", archive, archive_port)
    run = processes.pediface("run1", "run", env=env)
    wait_for_port(port, proc=run)
    assert storescu(port, *small_series).returncode == 0

    def quarantined() -> dict | None:
        return next((j for j in jobs(data_dir) if j["state"] == "quarantined"), None)

    job = wait_until(quarantined, 300, "the series to be quarantined by the face check")
    assert job["reason_code"] == "mask.face_detected", job["reason"]
    assert job["reason"].startswith("face still detectable after defacing: view "), job["reason"]
    assert " score " in job["reason"]
    assert "checked" not in [h["state"] for h in job["history"]]
    folder = data_dir / "spool" / "quarantine" / job["job_id"]
    assert (folder / "qc.png").is_file() and (folder / "facecheck.png").is_file()
    assert not any(archive.iterdir()), "nothing reached the archive"

    # The fix: the shipped nnU-Net masker, picked up by a restarted worker; then the retry.
    run.terminate()
    run.wait(timeout=60)
    _write_config(config, data_dir, port, archive_port, {"masker": "nnunet", "threads": 2})
    run = processes.pediface("run2", "run", env=env)
    wait_for_port(port, proc=run)
    retried = subprocess.run(
        [sys.executable, "-m", "pediface", "quarantine", "retry", job["job_id"]],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert retried.returncode == 0, retried.stderr

    def sent() -> dict | None:
        return next((j for j in jobs(data_dir) if j["state"] == "sent"), None)

    done = wait_until(sent, 300, "the retried series to be delivered")
    assert done["job_id"] == job["job_id"] and len(jobs(data_dir)) == 1
    assert done["face_check"] and done["face_check"][0]["face_found"] is False
    assert "checked" in [h["state"] for h in done["history"]]
    done_folder = data_dir / "spool" / "done" / job["job_id"]
    assert not (done_folder / "facecheck.png").exists(), "the refusal's renders went with the refusal"
    assert len(list(archive.glob("MR.*"))) == len(small_series) == done["n_sent"]
    print(f"\nface check e2e: quarantined ({job['reason']}); after the retry {done['n_sent']} sent")
    print(json.dumps(done["face_check"]))
