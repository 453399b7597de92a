"""Fault tests: processes killed, archive and broker down. Nothing acknowledged may be lost or duplicated.

Each test is bounded in time. The series is a small one made from the shipped
template head (it has a face), so these tests need no ../shared and run fast; the
gateway-kill test uses the real UIH series because it needs a long transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.conftest import UIH, Processes, free_port, need_shared, need_tool, wait_for_port, wait_until

pytestmark = pytest.mark.e2e


def config(tmp_path: Path, **sections: dict) -> tuple[dict[str, str], Path, int]:
    data_dir, port = tmp_path / "data", free_port()
    settings: dict = {
        "data_dir": str(data_dir),
        "dicom": {"port": port},
        "series": {"quiet_period_s": 3, "poll_interval_s": 0.5},
        "metrics": {"port": 0},
    }
    for key, value in sections.items():
        settings.setdefault(key, {}).update(value)
    path = tmp_path / "pediface.yaml"
    path.write_text(yaml.safe_dump(settings))
    return {"PEDIFACE_CONFIG": str(path)}, data_dir, port


def jobs(data_dir: Path) -> list[dict]:
    found = []
    for stage in ("jobs", "done", "quarantine"):
        found += [json.loads(p.read_text()) for p in (data_dir / "spool" / stage).glob("*/job.json")]
    return found


def storescu(port: int, *paths: Path) -> subprocess.CompletedProcess:
    argv = [need_tool("storescu"), "-v", "-aet", "PACS", "-aec", "PEDIFACE", "127.0.0.1", str(port)]
    return subprocess.run([*argv, *map(str, paths)], capture_output=True, text=True, timeout=300)


def storescp(processes: Processes, name: str, folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(exist_ok=True)
    proc = processes.start(name, [need_tool("storescp"), "-aet", "ARCHIVE", "-od", str(folder), str(port)])
    wait_for_port(port, proc=proc)
    return proc


def delivered_once(data_dir: Path, archive: Path, expected: int, timeout_s: float = 300) -> dict:
    """Wait for the single job to be sent; assert it was the only one and nothing is duplicated."""

    def done() -> dict | None:
        states = [j["state"] for j in jobs(data_dir)]
        assert "quarantined" not in states, jobs(data_dir)
        return next((j for j in jobs(data_dir) if j["state"] == "sent"), None)

    job = wait_until(done, timeout_s, "the series to be delivered")
    assert len(jobs(data_dir)) == 1, "the series was split or processed twice"
    assert job["n_sent"] == expected
    assert len(list(archive.glob("MR.*"))) == expected  # storescp names files by SOP Instance UID
    return job


@pytest.mark.slow(seconds=58)
def test_gateway_killed_mid_transfer_loses_no_acknowledged_instance(
    tmp_path: Path, processes: Processes
) -> None:
    need_shared(UIH)
    originals = sorted(UIH.glob("*.dcm"))
    archive_port = free_port()
    env, data_dir, port = config(
        tmp_path,
        # Longer than the restart plus the PACS's resend can take on a loaded machine: the test is about
        # acknowledged instances, not about a resend that arrives after the series was sealed.
        series={"quiet_period_s": 20},
        destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port},
    )
    storescp(processes, "archive", tmp_path / "archive", archive_port)
    gateway = processes.pediface("gateway1", "gateway", env=env)
    processes.pediface("worker", "worker", env=env)
    wait_for_port(port, proc=gateway)

    incoming = data_dir / "spool" / "incoming"
    sender = subprocess.Popen(
        [need_tool("storescu"), "-v", "-aet", "PACS", "-aec", "PEDIFACE", "127.0.0.1", str(port)]
        + list(map(str, originals)),
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: sum(1 for _ in incoming.glob("*/*.dcm")) >= 40, 60, "40 instances spooled")
    gateway.send_signal(signal.SIGKILL)
    _, err = sender.communicate(timeout=60)
    acknowledged = err.count("Received Store Response (Success)")
    on_disk = sum(1 for _ in incoming.glob("*/*.dcm"))
    assert 40 <= acknowledged < len(originals), "the kill did not interrupt the transfer"
    assert on_disk >= acknowledged, "an acknowledged instance is not on disk"

    restarted = processes.pediface("gateway2", "gateway", env=env)
    wait_for_port(port, proc=restarted)
    resend = storescu(port, *originals)  # the PACS resends the study; duplicates are stored once
    assert resend.returncode == 0, resend.stderr
    job = delivered_once(data_dir, tmp_path / "archive", len(originals))
    print(
        f"\ngateway kill: {len(originals)} sent, {acknowledged} acknowledged before the kill, "
        f"{on_disk} on disk, {job['n_sent']} delivered, 0 lost"
    )


@pytest.mark.slow(seconds=35)
@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_archive_down_then_back_is_delivered_after_retries(
    tmp_path: Path,
    processes: Processes,
    small_series: list[Path],
    own_redis: tuple[int, list[str]],
    broker: str,
) -> None:
    """Celery's retry with backoff on both brokers: the folder broker of `pediface run`, and Redis with
    a separate gateway and worker (the retry is a new message with an ETA that Redis must keep)."""
    archive_port = free_port()
    sections: dict = {
        "worker": {
            "retry_backoff_s": 1,
            "retry_backoff_max_s": 2,
            "delivery_horizon_s": 300,
            "queue": f"q-{uuid.uuid4().hex[:6]}",
        },
        "destination": {"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port, "timeout_s": 5},
    }
    if broker == "redis":
        redis_port, redis_argv = own_redis
        processes.start("redis", redis_argv)
        wait_for_port(redis_port)
        sections["broker"] = {"url": f"redis://127.0.0.1:{redis_port}/0"}
    env, data_dir, port = config(tmp_path, **sections)
    if broker == "redis":
        gateway = processes.pediface("gateway", "gateway", env=env)
        processes.pediface("worker", "worker", env=env)
    else:
        gateway = processes.pediface("run", "run", env=env)
    wait_for_port(port, proc=gateway)
    assert storescu(port, *small_series).returncode == 0

    def retrying() -> int:
        return sum("will retry" in h["note"] for j in jobs(data_dir) for h in j["history"])

    wait_until(lambda: retrying() >= 2, 180, "two failed delivery attempts (a retry was scheduled and ran)")
    storescp(processes, "archive", tmp_path / "archive", archive_port)
    job = delivered_once(data_dir, tmp_path / "archive", len(small_series), timeout_s=120)
    assert job["attempts"] >= 3, "two failed attempts, then the one that delivered"
    print(f"\narchive down ({broker}): delivered after {job['attempts']} attempts, {job['n_sent']} sent")


@pytest.fixture
def own_redis(tmp_path: Path) -> tuple[int, list[str]]:
    """A Redis of this test's own, so that restarting it disturbs nobody."""
    server = need_tool("redis-server")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "always", "--dir", str(tmp_path)]  # fmt: skip
    return port, argv


def on_redis(
    tmp_path: Path, processes: Processes, redis_argv: list[str], redis_port: int, **broker: object
) -> tuple[dict[str, str], Path, int, subprocess.Popen]:
    """Redis of the test's own, a storescp archive and a gateway on them: ``(env, data_dir, port, redis)``."""
    redis = processes.start("redis1", redis_argv)
    wait_for_port(redis_port)
    archive_port = free_port()
    env, data_dir, port = config(
        tmp_path,
        broker={"url": f"redis://127.0.0.1:{redis_port}/0", **broker},
        worker={"queue": f"q-{uuid.uuid4().hex[:6]}"},
        destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": archive_port},
    )
    storescp(processes, "archive", tmp_path / "archive", archive_port)
    gateway = processes.pediface("gateway", "gateway", env=env)
    wait_for_port(port, proc=gateway)
    return env, data_dir, port, redis


@pytest.mark.slow(seconds=90)
def test_worker_killed_mid_series_is_delivered_once(
    tmp_path: Path, processes: Processes, small_series: list[Path], own_redis: tuple[int, list[str]]
) -> None:
    redis_port, redis_argv = own_redis
    # The shortest timeout allowed: the series is handed out again 60-70 s after the kill.
    env, data_dir, port, _ = on_redis(tmp_path, processes, redis_argv, redis_port, visibility_timeout_s=60)
    # start_new_session: the worker and its pool children form one group to kill at once.
    first = processes.start("worker1", [*_pediface(), "worker"], env=env, new_session=True)
    assert storescu(port, *small_series).returncode == 0

    mid_series = {"processing", "masked", "written", "checked", "deidentified"}
    wait_until(lambda: any(j["state"] in mid_series for j in jobs(data_dir)), 120, "the worker to start")
    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    processes.pediface("worker2", "worker", env=env)
    job = delivered_once(data_dir, tmp_path / "archive", len(small_series), timeout_s=240)
    assert job["attempts"] == 2, "the series should have been taken up again exactly once"
    print(f"\nworker kill: delivered once, {time.monotonic() - killed_at:.0f} s after the kill")


@pytest.mark.slow(seconds=13)
def test_redis_killed_and_restarted_loses_nothing(
    tmp_path: Path, processes: Processes, small_series: list[Path], own_redis: tuple[int, list[str]]
) -> None:
    redis_port, redis_argv = own_redis
    redis = processes.start("redis1", redis_argv)
    wait_for_port(redis_port)
    env, data_dir, port = config(
        tmp_path, broker={"url": f"redis://127.0.0.1:{redis_port}/0"}, worker={"queue": "q-restart"}
    )
    gateway = processes.pediface("gateway", "gateway", env=env)
    wait_for_port(port, proc=gateway)
    # No worker yet: the task waits in Redis; then Redis is killed (kill -9, no chance to save) and
    # restarts from its append-only file, fsynced on every write.
    assert storescu(port, *small_series).returncode == 0
    wait_until(
        lambda: any(j["state"] == "dispatched" for j in jobs(data_dir)), 60, "the job to be dispatched"
    )
    redis.kill()
    redis.wait(timeout=30)
    processes.start("redis2", redis_argv)
    wait_for_port(redis_port)
    processes.pediface("worker", "worker", env=env)
    archive = data_dir / "archive"

    def sent() -> bool:
        return any(j["state"] == "sent" for j in jobs(data_dir))

    wait_until(sent, 240, "the series to be delivered after the Redis restart")
    assert len(jobs(data_dir)) == 1
    assert len(list(archive.glob("*/*/*.dcm"))) == len(small_series)


@pytest.mark.slow(seconds=22)
def test_redis_killed_and_restarted_empty_loses_nothing(
    tmp_path: Path, processes: Processes, small_series: list[Path]
) -> None:
    """The spool is the source of truth: a Redis that comes back without its data (the queue is
    gone) does not lose the job. The gateway finds the job the broker forgot and dispatches it
    again; it is delivered exactly once."""
    server, redis_port = need_tool("redis-server"), free_port()
    redis_argv = [
        server,
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    env, data_dir, port, redis = on_redis(tmp_path, processes, redis_argv, redis_port, reconcile_interval_s=1)
    assert storescu(port, *small_series).returncode == 0
    wait_until(
        lambda: any(j["state"] == "dispatched" for j in jobs(data_dir)), 60, "the job to be dispatched"
    )
    redis.kill()
    redis.wait(timeout=30)
    processes.start("redis2", redis_argv)  # empty: the queued task is gone
    wait_for_port(redis_port)
    wait_until(
        lambda: "unknown to the broker" in processes.log("gateway"), 60, "the gateway to find the lost job"
    )
    processes.pediface("worker", "worker", env=env)
    job = delivered_once(data_dir, tmp_path / "archive", len(small_series), timeout_s=240)
    assert job["attempts"] == 1, "processed once: the lost task was replaced, not doubled"
    states = [h["state"] for h in job["history"]]
    assert states.count("dispatched") == 2, states


def _pediface() -> list[str]:
    import sys

    return [sys.executable, "-m", "pediface"]


def test_quarantine_list_retry_purge_from_the_command_line(tmp_path: Path, small_series: list[Path]) -> None:
    """A series that fails is quarantined with a reason, retried after the cause is fixed, then purged."""
    from config.settings import load_settings
    from spool.manifest import series_key
    from spool.store import Spool

    env, data_dir, _ = config(tmp_path)
    spool = Spool(data_dir)
    key = series_key("PACS", "1.2.3", "1.2.3.4")
    for path in small_series[:3]:  # three slices: too few to find a face -> quarantined
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.store_instance(key, "PACS", sop_uid, path.read_bytes())
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None

    from worker.deface import build_masker
    from worker.jobs import JobRunner

    settings = load_settings(Path(env["PEDIFACE_CONFIG"]))
    outcome = JobRunner(settings, lambda: build_masker(settings)).run(manifest.job_id)
    assert outcome.state == "quarantined" and "slices" in outcome.detail

    cli = [*_pediface(), "quarantine"]
    full_env = {**os.environ, **env}
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, env=full_env, check=True)
    assert manifest.job_id in listed.stdout and "input.too_few_slices" in listed.stdout
    shown = subprocess.run([*cli, "show", manifest.job_id], capture_output=True, text=True, env=full_env)
    assert json.loads(shown.stdout)["reason_code"] == "input.too_few_slices"
    retried = subprocess.run([*cli, "retry", manifest.job_id], capture_output=True, text=True, env=full_env)
    assert retried.returncode == 0 and spool.load(manifest.job_id).state.value == "dispatched"
    # Processing it again gives the same answer: it goes back to quarantine, and can be purged.
    JobRunner(settings, lambda: build_masker(settings)).run(manifest.job_id)
    refused = subprocess.run([*cli, "purge", manifest.job_id], capture_output=True, text=True, env=full_env)
    assert refused.returncode == 2 and (spool.quarantine_dir / manifest.job_id).exists()
    purged = subprocess.run(
        [*cli, "purge", "--yes", manifest.job_id], capture_output=True, text=True, env=full_env
    )
    assert purged.returncode == 0 and not (spool.quarantine_dir / manifest.job_id).exists()
    shutil.rmtree(data_dir)


def test_undeliverable_series_becomes_a_dead_letter_after_the_horizon(
    tmp_path: Path, small_series: list[Path]
) -> None:
    from common.errors import DeliveryError
    from config.settings import load_settings
    from spool.manifest import series_key
    from spool.store import Spool
    from worker.deface import build_masker
    from worker.jobs import JobRunner

    env, data_dir, _ = config(
        tmp_path,
        worker={"delivery_horizon_s": 0.5},
        destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": free_port(), "timeout_s": 2},
    )
    spool = Spool(data_dir)
    key = series_key("PACS", "1.2.3", "1.2.3.4")
    for path in small_series:
        sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.store_instance(key, "PACS", sop_uid, path.read_bytes())
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    settings = load_settings(Path(env["PEDIFACE_CONFIG"]))
    runner = JobRunner(settings, lambda: build_masker(settings))
    with pytest.raises(DeliveryError):
        runner.run(manifest.job_id)  # first failure: retry later
    assert spool.load(manifest.job_id).state.value == "dispatched"
    time.sleep(0.6)
    outcome = runner.run(manifest.job_id)  # past the horizon: dead letter, files kept for a retry
    assert outcome.state == "quarantined"
    final = spool.load(manifest.job_id)
    assert final.reason_code == "delivery.dead_letter" and "not delivered within" in (final.reason or "")
    assert final.attempts == 2 and len(spool.instance_files(manifest.job_id)) == len(small_series)
