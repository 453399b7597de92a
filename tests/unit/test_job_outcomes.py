"""How a job ends when something goes wrong: ``worker.jobs.JobRunner`` on real spooled jobs.

Proven here: an unexpected exception inside a step quarantines the job as ``internal`` with the
exception named; a fault inside delivery that is not a :class:`RetryableError` quarantines it as
``internal`` too (after a real retryable failure has left it waiting); and the three ways a run
is skipped without touching the job (an unknown id, a finished job, a job whose lock another real
process holds) each return their exact detail and leave ``job.json`` byte for byte as it was.

Which delivery faults are which (worker/delivery.py, worker/steps.py ``send``): every fault
``deliver()`` raises on purpose is a :class:`DeliveryError` (retryable: unreachable or refusing
archive, a C-STORE answered with a failure status or not at all, an archive folder that cannot be
written, an output file with an invalid UID, no acceptable transfer syntax). Any other exception
becomes ``internal error delivering to <name> (...)``, which the second test drives; ``send`` has
no other branch.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from common.errors import DeliveryError
from config.settings import load_settings
from gateway.server import Sealer
from spool.manifest import JobState
from tests.conftest import REPO, free_port, spool_series
from worker.jobs import JobRunner
from worker.steps import COMPLETE
from worker.types import FaceMask, Volume


def _settings(tmp_path: Path, **overrides: object):  # noqa: ANN202 - config.settings.Settings
    return load_settings(
        data_dir=tmp_path / "data",
        metrics={"port": 0},
        deid={"secret": "a test key that is long enough"},
        **overrides,
    )


class _CrashingMasker:
    """A masker with a bug: its predict raises what no step expects."""

    name = "crashing"

    def predict(self, volume: Volume) -> FaceMask:
        raise RuntimeError("index 3 is out of bounds for axis 0 with size 3")


#: A sealed job run straight from the spool: the worker records the dispatch, then its attempt.
TAKEN_AND_QUARANTINED = [JobState.sealed, JobState.dispatched, JobState.processing, JobState.quarantined]


def _job_json(runner: JobRunner, job_id: str) -> bytes:
    return (runner.spool.job_dir(job_id) / "job.json").read_bytes()


def _audit(runner: JobRunner) -> list[dict]:
    return [json.loads(line) for line in runner.settings.audit_file.read_text().splitlines()]


def test_an_unexpected_exception_in_a_step_quarantines_the_job_as_internal(
    tmp_path: Path, small_series: list[Path]
) -> None:
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    job_id = spool_series(runner.settings.data_dir, small_series)
    outcome = runner.run(job_id)
    reason = (
        "internal error (RuntimeError: index 3 is out of bounds for axis 0 with size 3); see the worker log"
    )
    assert (outcome.job_id, outcome.state, outcome.detail) == (job_id, "quarantined", reason)
    assert runner.spool.job_dir(job_id).parent == runner.spool.quarantine_dir
    manifest = runner.spool.load(job_id)
    assert (manifest.state, manifest.reason, manifest.reason_code) == (
        JobState.quarantined,
        reason,
        "internal",
    )
    assert [h.state for h in manifest.history] == TAKEN_AND_QUARANTINED
    assert manifest.attempts == 1 and manifest.deliveries == {}
    (line,) = [a for a in _audit(runner) if a["event"] == "series_quarantined"]
    assert (line["job"], line["code"], line["reason"]) == (job_id, "internal", reason)
    archive = runner.settings.archive_folder
    assert not archive.exists() or not any(archive.rglob("*.dcm")), "nothing is delivered"


def test_a_non_retryable_fault_inside_delivery_quarantines_the_job_as_internal(
    tmp_path: Path,
    shipped_masker,  # noqa: ANN001 - worker.deface.FaceMasker (imports torch)
    small_series: list[Path],
) -> None:
    """First attempt: the archive is unreachable (retryable), the complete output is kept. Then one
    output file is found empty (the disk lost it): the reused output cannot even be read, and the
    job is quarantined as ``internal error delivering to archive (InvalidDicomError: ...)``."""
    closed = free_port()
    settings = _settings(
        tmp_path, destination={"kind": "dicom", "ae_title": "ARCHIVE", "port": closed, "timeout_s": 2}
    )
    runner = JobRunner(settings, lambda: shipped_masker)
    job_id = spool_series(settings.data_dir, small_series)
    unreachable = f"archive: no association with ARCHIVE@127.0.0.1:{closed} (refused, aborted or unreachable)"
    with pytest.raises(DeliveryError) as retry:
        runner.run(job_id)
    assert str(retry.value) == unreachable
    waiting = runner.spool.load(job_id)
    assert waiting.state == JobState.dispatched and waiting.history[-1].note == f"will retry: {unreachable}"
    assert waiting.deliveries["archive"].state == "failed" and waiting.deliveries["archive"].failures == 1
    out = runner.spool.output_dir(job_id)
    assert (out / COMPLETE).read_text() == f"{len(small_series)}\n"

    damaged = sorted((out / "archive").glob("*.dcm"))[0]
    damaged.write_bytes(b"")
    outcome = runner.run(job_id)
    reason = (
        "internal error delivering to archive (InvalidDicomError: File is missing DICOM File Meta "
        "Information header or the 'DICM' prefix is missing from the header. Use force=True to force "
        "reading.); see the worker log"
    )
    assert (outcome.state, outcome.detail) == ("quarantined", reason)
    manifest = runner.spool.load(job_id)
    assert (manifest.state, manifest.reason, manifest.reason_code) == (
        JobState.quarantined,
        reason,
        "internal",
    )
    assert manifest.attempts == 2
    assert [h.state for h in manifest.history][-3:] == [
        JobState.processing,
        JobState.deidentified,  # the first attempt's output was reused, not made again
        JobState.quarantined,
    ]
    assert runner.spool.sent_ledger(job_id, "archive") == set(), "nothing was acknowledged"


@pytest.mark.parametrize("job_id", ["20990101T000000Z-000000000000-000000", "../../etc"])
def test_an_unknown_job_is_skipped(tmp_path: Path, job_id: str) -> None:
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    outcome = runner.run(job_id)
    assert (outcome.job_id, outcome.state, outcome.detail) == (job_id, "skipped", "unknown job")
    spool = runner.spool
    assert not any(any(stage.iterdir()) for stage in (spool.jobs, spool.done, spool.quarantine_dir))


@pytest.mark.parametrize("ending", ["sent", "quarantined", "dropped"])
def test_a_finished_job_is_skipped_and_left_as_it_is(
    tmp_path: Path, small_series: list[Path], ending: str
) -> None:
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    spool = runner.spool
    job_id = spool_series(runner.settings.data_dir, small_series[:3])
    manifest = spool.load(job_id)
    if ending == "sent":
        spool.finish(manifest, 3)
    elif ending == "quarantined":
        spool.quarantine(manifest, "the series holds 2 stacks", "input.multi_stack")
    else:
        spool.drop(manifest, "dropped by routing rule 'localizers'")
    before = _job_json(runner, job_id)
    outcome = runner.run(job_id)
    assert (outcome.job_id, outcome.state, outcome.detail) == (job_id, "skipped", f"already {ending}")
    assert _job_json(runner, job_id) == before
    assert not (spool.jobs / job_id).exists()


_HOLDER = """
import sys
from pathlib import Path
from spool.store import Spool

with Spool(Path(sys.argv[1])).claim(sys.argv[2]) as mine:
    print("held" if mine else "not held", flush=True)
    sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def _hold_lock(runner: JobRunner, job_id: str) -> subprocess.Popen:
    """Another real process holding the job's lock; it lets go when its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(runner.settings.data_dir), job_id],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([holder.stdout], [], [], 60)
    assert ready, "the holder process did not report within 60 s"
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_job_another_process_holds_is_skipped_and_untouched(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """Another real process holds the job's flock: skipped, job.json unchanged; once it lets go,
    the same runner takes the job (this time the crashing masker quarantines it, attempt 1)."""
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    job_id = spool_series(runner.settings.data_dir, small_series)
    holder = _hold_lock(runner, job_id)
    try:
        before = _job_json(runner, job_id)
        outcome = runner.run(job_id)
        assert (outcome.job_id, outcome.state, outcome.detail) == (
            job_id,
            "skipped",
            "being processed by another worker",
        )
        assert _job_json(runner, job_id) == before
    finally:
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
    outcome = runner.run(job_id)
    assert outcome.state == "quarantined"
    manifest = runner.spool.load(job_id)
    assert manifest.attempts == 1, "the skipped run counted no attempt"
    assert [h.state for h in manifest.history] == TAKEN_AND_QUARANTINED


def test_a_worker_that_takes_the_task_before_the_gateway_records_it_keeps_its_states(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """The broker may hand the task to a worker before the gateway's ``send`` returns. The worker then
    records the dispatch itself, and the gateway, recording it after the send, writes nothing over the
    job the worker has moved on (two gateways on one spool once lost the worker's states that way)."""
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    spool = runner.spool
    key = "ef" * 12
    for index, path in enumerate(small_series):
        spool.store_instance(key, "PACS", f"1.2.3.{index}", path.read_bytes())
    sealer = Sealer(spool, 0, lambda job: runner.run(job))  # the worker runs the job inside the send
    (job_id,) = sealer.run_once()
    assert spool.job_dir(job_id).parent == spool.quarantine_dir
    manifest = spool.load(job_id)
    assert manifest.state == JobState.quarantined and not (spool.jobs / job_id).exists()
    assert [h.state for h in manifest.history] == [
        JobState.sealed,
        JobState.dispatched,
        JobState.processing,
        JobState.quarantined,
    ]
    assert manifest.history[1].note == "recorded by the worker that took the task"


def test_a_job_whose_lock_a_gateway_holds_for_a_moment_is_taken_not_skipped(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """A gateway holds a job's lock for a moment (recording the dispatch right after the send, or
    checking in reconciliation that no worker holds it): a worker that gets the task just then waits
    for the lock instead of dropping the task as held elsewhere (the task would be acknowledged and
    the job left without one until a reconciliation found it)."""
    runner = JobRunner(_settings(tmp_path), _CrashingMasker)
    job_id = spool_series(runner.settings.data_dir, small_series)
    holder = _hold_lock(runner, job_id)
    release = threading.Timer(1.0, holder.stdin.close)  # the gateway lets go after a second
    release.start()
    try:
        outcome = runner.run(job_id)
    finally:
        release.join()
        assert holder.wait(timeout=30) == 0
    assert outcome.state == "quarantined", outcome
    assert runner.spool.load(job_id).attempts == 1
