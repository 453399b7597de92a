"""DICOM in, defaced and de-identified DICOM out, with real processes and real peers.

dcmtk's ``storescu`` plays the PACS, ``pediface gateway`` and ``pediface worker``
run as separate processes (on the real Redis at 127.0.0.1:6379, or on the
embedded folder broker through ``pediface run``), and dcmtk's ``storescp`` or a
folder plays the research archive.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.conftest import UIH, Processes, free_port, need_shared, need_tool, wait_for_port, wait_until
from tests.e2e.checks import assert_defaced_deidentified

pytestmark = pytest.mark.e2e

REDIS = ("127.0.0.1", 6379)
#: Registration on 2 cores plus 78 MB of C-STORE each way; generous, the loop ends as soon as it is done.
PIPELINE_TIMEOUT_S = 600


def redis_available() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(REDIS) == 0


def write_config(path: Path, data_dir: Path, port: int, **sections: dict) -> Path:
    config = {
        "data_dir": str(data_dir),
        "dicom": {"port": port},
        "series": {"quiet_period_s": 3, "poll_interval_s": 0.5},
        "metrics": {"port": free_port()},
    }
    config.update(sections)
    path.write_text(yaml.safe_dump(config))
    return path


def storescu(port: int, *paths: Path, called: str = "PEDIFACE") -> subprocess.CompletedProcess:
    argv = [need_tool("storescu"), "-aet", "TESTPACS", "-aec", called, "127.0.0.1", str(port)]
    for path in paths:
        argv += ["+sd", str(path)] if path.is_dir() else [str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def finished_jobs(data_dir: Path) -> list[dict]:
    jobs = []
    for stage in ("done", "quarantine"):
        for manifest in (data_dir / "spool" / stage).glob("*/job.json"):
            jobs.append(json.loads(manifest.read_text()))
    return jobs


@pytest.mark.slow(seconds=57)
def test_redis_gateway_worker_storescp(tmp_path: Path, processes: Processes) -> None:
    need_shared(UIH)
    need_tool("storescp")
    if not redis_available():
        pytest.fail("Redis is not running at 127.0.0.1:6379 (start it: see README, 'Tests')")
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    archive_port, gateway_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    config = write_config(
        tmp_path / "pediface.yaml",
        data_dir,
        gateway_port,
        broker={"url": "redis://127.0.0.1:6379/0"},
        # A queue of its own: nothing else on this Redis can take or leave tasks in it.
        worker={"queue": f"pediface-test-{uuid.uuid4().hex[:8]}"},
        destination={"kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": archive_port},
        deface={"send_mask_seg": True},
    )
    env = {"PEDIFACE_CONFIG": str(config)}
    archive = processes.start(
        "storescp", [need_tool("storescp"), "-aet", "ARCHIVE", "-od", str(archive_dir), str(archive_port)]
    )
    wait_for_port(archive_port, proc=archive)
    gateway = processes.pediface("gateway", "gateway", env=env)
    worker = processes.pediface("worker", "worker", env=env)
    wait_for_port(gateway_port, proc=gateway)

    started = time.monotonic()
    sent = storescu(gateway_port, UIH)
    assert sent.returncode == 0, sent.stderr
    originals = sorted(UIH.glob("*.dcm"))

    def delivered() -> list[Path]:
        assert worker.poll() is None, f"the worker exited: {processes.log('worker')[-3000:]}"
        assert gateway.poll() is None, f"the gateway exited: {processes.log('gateway')[-3000:]}"
        jobs = finished_jobs(data_dir)
        assert not any(job["state"] == "quarantined" for job in jobs), jobs
        files = sorted(archive_dir.glob("MR.*"))
        done = any(job["state"] == "sent" for job in jobs)
        return files if done and len(files) >= len(originals) else []

    output = wait_until(delivered, PIPELINE_TIMEOUT_S, "the defaced series at storescp")
    elapsed = time.monotonic() - started
    figures = assert_defaced_deidentified(originals, output)
    # The face mask as a DICOM Segmentation, for QC at the archive (dcmtk names such files SG.*).
    (seg,) = archive_dir.glob("SG.*")
    seg_ds = pydicom.dcmread(seg)
    assert (
        seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == pydicom.dcmread(output[0]).SeriesInstanceUID
    )
    print(f"\nredis end-to-end: {elapsed:.1f} s from first C-STORE to delivery; {figures}")
    # The gateway process never loaded torch or SimpleITK (their shared libraries would be mapped).
    maps = Path(f"/proc/{gateway.pid}/maps").read_text()
    assert "libtorch" not in maps and "SimpleITK" not in maps


@pytest.mark.slow(seconds=47)
def test_embedded_default_needs_no_redis(tmp_path: Path, processes: Processes) -> None:
    """`pediface run` with no broker configured: folder broker, worker child process, folder archive."""
    need_shared(UIH)
    port = free_port()
    data_dir = tmp_path / "data"
    broker_file = tmp_path / "honest-broker.jsonl"
    config = write_config(
        tmp_path / "pediface.yaml", data_dir, port, audit={"honest_broker_file": str(broker_file)}
    )
    run = processes.pediface("run", "run", env={"PEDIFACE_CONFIG": str(config)})
    wait_for_port(port, proc=run)

    started = time.monotonic()
    sent = storescu(port, UIH)
    assert sent.returncode == 0, sent.stderr
    originals = sorted(UIH.glob("*.dcm"))

    def delivered() -> list[Path]:
        assert run.poll() is None, f"pediface run exited: {processes.log('run')[-3000:]}"
        jobs = finished_jobs(data_dir)
        assert not any(job["state"] == "quarantined" for job in jobs), jobs
        if not any(job["state"] == "sent" for job in jobs):
            return []
        return sorted((data_dir / "archive").glob("*/*/*.dcm"))

    output = wait_until(delivered, PIPELINE_TIMEOUT_S, "the defaced series in the archive folder")
    elapsed = time.monotonic() - started
    figures = assert_defaced_deidentified(originals, output)
    print(f"\nembedded end-to-end: {elapsed:.1f} s from first C-STORE to delivery; {figures}")
    assert (data_dir / "broker" / "queue").is_dir(), "the embedded folder broker was not used"
    qc = next((data_dir / "spool" / "done").glob("*/qc.png"))
    assert qc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_audit_trail(data_dir / "audit.jsonl", broker_file, originals)


def assert_audit_trail(audit_file: Path, broker_file: Path, originals: list[Path]) -> None:
    """One line per instance and per series step, with no original identifier; the mapping kept apart."""
    import pydicom

    text = audit_file.read_text()
    events = [json.loads(line) for line in text.splitlines()]
    received = [e for e in events if e["event"] == "instance_received" and e["outcome"] == "stored"]
    assert len(received) == len(originals)
    assert len({e["instance"] for e in received}) == len(originals)
    assert [e["event"] for e in events if e["event"] != "instance_received"] == [
        "series_processed",
        "series_sent",
    ]
    first = pydicom.dcmread(originals[0], stop_before_pixels=True)
    for original in (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID):
        assert str(original) not in text, "an original UID is in the audit log"
    mapping = [json.loads(line) for line in broker_file.read_text().splitlines()]
    assert len(mapping) == 1 and mapping[0]["study_uid"] == first.StudyInstanceUID
    assert mapping[0]["output_series_uid"] == events[-1]["output_series"]
    assert broker_file.stat().st_mode & 0o777 == 0o600
