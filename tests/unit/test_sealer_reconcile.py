"""The reconciler's re-dispatch never rewrites a job a worker has moved on, nor sends one a worker holds.

A real spool and a real :class:`gateway.server.Sealer`; the broker is the ``known_jobs`` answer (what Redis
holds) and the ``send`` of a task. The worker side is a real :class:`Spool` in the same roles a worker plays:
it claims the job's lock and finishes it. Redis emptied: the broker knows no job.
"""

from __future__ import annotations

from pathlib import Path

from gateway.server import Sealer
from spool.manifest import JobState
from spool.store import Spool


def _in_flight_job(spool: Spool) -> str:
    key = "ab" * 12
    spool.store_instance(key, "PACS", "1.2.3.4", b"DICM" + bytes(32))
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    spool.save(manifest.to(JobState.dispatched))
    return manifest.job_id


def test_a_forgotten_job_is_written_dispatched_under_its_lock_before_the_task_is_sent(tmp_path: Path) -> None:
    """The task goes out after the job says ``dispatched`` and with its lock released: a worker that takes
    it at once finds the job free, finishes it, and the gateway writes nothing over the finished job."""
    spool = Spool(tmp_path)
    job_id = _in_flight_job(spool)
    worker = Spool(tmp_path)
    sent: list[str] = []

    def send(job: str) -> None:
        sent.append(job)
        assert worker.load(job).state == JobState.dispatched
        with worker.claim(job) as mine:  # the worker takes the task the moment it is queued
            assert mine, "the gateway still holds the job's lock while the task is on its way"
            manifest = worker.load(job)
            worker.finish(manifest.to(JobState.processing, "attempt 1"), 1)

    sealer = Sealer(spool, 0, send, known_jobs=set, reconcile_interval_s=0.01)
    sealer.run_once()  # first miss: perhaps caught between the broker and a worker
    assert sent == []
    sealer._next_reconcile = 0.0
    assert sealer.run_once() == [job_id]
    assert sent == [job_id]
    done = spool.load(job_id)
    assert (spool.done / job_id).is_dir() and done.state == JobState.sent, "the finished job was rewritten"
    states = [change.state for change in done.history]
    assert states.count(JobState.dispatched) == 2 and states[-1] == JobState.sent


def test_a_forgotten_job_a_worker_holds_is_not_sent_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    job_id = _in_flight_job(spool)
    worker = Spool(tmp_path)
    sent: list[str] = []
    sealer = Sealer(spool, 0, sent.append, known_jobs=set, reconcile_interval_s=0.01)
    sealer.run_once()
    sealer._next_reconcile = 0.0
    with worker.claim(job_id) as mine:
        assert mine
        assert sealer.run_once() == []
    assert sent == [] and spool.load(job_id).state == JobState.dispatched
