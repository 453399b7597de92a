"""The broker down at sealing time: the job waits, sealed, and is dispatched once the broker is back.

A real gateway (this process, loopback) points ``broker.url`` at a Redis port where nothing
listens yet; dcmtk's storescu sends part of a series. The test proves that the sealed job is
neither lost nor marked dispatched while the broker is down (``Sealer._dispatch``), that every
failed attempt is counted in ``pediface_dispatches_total{result="failed"}`` and logged as
``dispatch_failed``, and that once a real redis-server listens on that port a later sealer pass
dispatches it exactly once: state ``dispatched``, one task message in the Redis list named
``worker.queue`` carrying the job id and nothing else.
"""

from __future__ import annotations

import re
import subprocess
import urllib.request
import uuid
from pathlib import Path

import redis

from config.settings import load_settings
from gateway.server import Gateway
from spool.manifest import JobState
from tests.conftest import Processes, free_port, need_tool, wait_for_port, wait_until
from tests.logevents import captured_events
from tests.taskmessages import task_of


def _metric(base: str, name: str, labels: str = "") -> float:
    """One sample of the gateway's real /metrics (0 when the labelled series does not exist yet)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    pattern = "^" + re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_job_sealed_while_the_broker_is_down_stays_sealed_and_is_dispatched_when_it_is_back(
    tmp_path: Path, processes: Processes, small_series: list[Path]
) -> None:
    redis_server = need_tool("redis-server")
    redis_port, queue = free_port(), f"q-{uuid.uuid4().hex[:8]}"
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={"port": free_port()},
        series={"quiet_period_s": 0.5, "poll_interval_s": 0.2},
        metrics={"port": free_port()},
        broker={"url": f"redis://127.0.0.1:{redis_port}/0"},
        worker={"queue": queue},
    )
    base = f"http://127.0.0.1:{settings.metrics.port}"
    failed_metric = ("pediface_dispatches_total", 'result="failed"')
    ok_metric = ("pediface_dispatches_total", 'result="ok"')
    with captured_events() as events:
        gw = Gateway(settings)
        gw.start()
        try:
            failed_before, ok_before = _metric(base, *failed_metric), _metric(base, *ok_metric)
            files = small_series[:5]
            argv = [need_tool("storescu"), "-aet", "TESTPACS", "-aec", "PEDIFACE", "127.0.0.1"]
            sent = subprocess.run(
                [*argv, str(settings.dicom.port), *map(str, files)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert sent.returncode == 0, sent.stderr

            # Broker down: sealed, tried on pass after pass, never marked dispatched.
            wait_until(lambda: len(events.named("dispatch_failed")) >= 2, 30, "two failed dispatch attempts")
            (job,) = list(gw.spool.manifests(gw.spool.jobs))
            assert job.state == JobState.sealed and [h.state for h in job.history] == [JobState.sealed]
            assert job.n_instances == len(files) and len(gw.spool.instance_files(job.job_id)) == len(files)
            failures = events.named("dispatch_failed")
            assert {e["job"] for e in failures} == {job.job_id}
            assert all(f"connecting to 127.0.0.1:{redis_port}" in e["error"] for e in failures), failures[0]
            assert _metric(base, *failed_metric) - failed_before >= 2
            assert _metric(base, "pediface_jobs", 'state="sealed"') == 1.0
            assert _metric(base, "pediface_jobs", 'state="dispatched"') == 0.0
            assert events.named("job_dispatched") == []

            # The broker comes up on that port: a later pass dispatches the job, once.
            processes.start(
                "redis",
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            )  # fmt: skip
            wait_for_port(redis_port)
            wait_until(
                lambda: gw.spool.load(job.job_id).state == JobState.dispatched, 30, "the job to be dispatched"
            )
            after = gw.spool.load(job.job_id)
            assert [h.state for h in after.history] == [JobState.sealed, JobState.dispatched]
            client = redis.Redis(port=redis_port, socket_timeout=5)
            messages = client.lrange(queue, 0, -1)
            assert [task_of(m) for m in messages] == [("pediface.process_series", [job.job_id])]
            # Every failed attempt was counted and logged; exactly one succeeded.
            assert _metric(base, *failed_metric) - failed_before == len(events.named("dispatch_failed"))
            assert _metric(base, *ok_metric) - ok_before == 1.0
            assert [e["job"] for e in events.named("job_dispatched")] == [job.job_id]
            assert _metric(base, "pediface_jobs", 'state="dispatched"') == 1.0
            assert _metric(base, "pediface_queue_depth") == 1.0
        finally:
            gw.stop()
