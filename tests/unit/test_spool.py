"""The spool: durable, duplicate-free receiving; quiet-period sealing; job moves."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from spool.manifest import JobState, series_key
from spool.store import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path)


def _age(spool: Spool, key: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(spool.incoming / key, (then, then))


def test_store_once_per_sop_instance(spool: Spool) -> None:
    key = series_key("PACS", "1.2.3", "1.2.3.4")
    assert spool.store_instance(key, "PACS", "1.2.3.4.1", b"first") is True
    assert spool.store_instance(key, "PACS", "1.2.3.4.1", b"second") is False
    assert (spool.incoming / key / "1.2.3.4.1.dcm").read_bytes() == b"first"
    assert not list(spool.tmp.iterdir())


def test_uid_that_would_escape_the_folder_is_refused(spool: Spool) -> None:
    with pytest.raises(ValueError, match="not a valid UID"):
        spool.store_instance("k" * 24, "PACS", "../../etc/passwd", b"x")


def test_series_key_is_path_safe_and_distinguishes_peers() -> None:
    a, b = series_key("A", "1.2", "1.2.3"), series_key("B", "1.2", "1.2.3")
    assert a != b and a.isalnum() and len(a) == 24


def test_seal_waits_for_the_quiet_period(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    for n in range(3):
        spool.store_instance(key, "PACS", f"1.2.3.{n}", b"x")
    assert spool.seal(key, quiet_period_s=30) is None
    _age(spool, key, 31)
    manifest = spool.seal(key, quiet_period_s=30)
    assert manifest is not None and manifest.n_instances == 3 and manifest.state == JobState.sealed
    assert len(spool.instance_files(manifest.job_id)) == 3
    assert not (spool.incoming / key).exists()
    # A late instance opens a new series folder instead of being lost.
    spool.store_instance(key, "PACS", "1.2.3.9", b"late")
    assert (spool.incoming / key / "1.2.3.9.dcm").exists()


def test_concurrent_stores_and_seal_lose_nothing(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    stop = threading.Event()
    sealed: list[int] = []

    def sealer() -> None:
        while not stop.is_set():
            manifest = spool.seal(key, quiet_period_s=0)
            if manifest:
                sealed.append(manifest.n_instances)

    thread = threading.Thread(target=sealer)
    thread.start()
    for n in range(300):
        spool.store_instance(key, "PACS", f"1.2.3.{n}", b"x")
    stop.set()
    thread.join()
    final = spool.seal(key, quiet_period_s=0)
    total = sum(sealed) + (final.n_instances if final else 0)
    assert total == 300


def test_quarantine_retry_and_finish(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    spool.store_instance(key, "PACS", "1.2.3.1", b"x")
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    spool.quarantine(manifest, "the series holds 2 stacks", "input.multi_stack")
    assert spool.job_dir(manifest.job_id).parent == spool.quarantine_dir
    assert spool.load(manifest.job_id).reason == "the series holds 2 stacks"
    retried = spool.retry(manifest.job_id)
    assert retried.state == JobState.sealed and spool.job_dir(manifest.job_id).parent == spool.jobs
    spool.finish(retried, 1)
    done = spool.load(manifest.job_id)
    assert done.state == JobState.sent and done.n_sent == 1 and done.reason is None
    assert [h.state for h in done.history] == [
        JobState.sealed,
        JobState.quarantined,
        JobState.sealed,
        JobState.sent,
    ]


def test_claim_is_exclusive(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    spool.store_instance(key, "PACS", "1.2.3.1", b"x")
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    with spool.claim(manifest.job_id) as first:
        # flock is per open file description: a second open in this process competes like another process.
        with spool.claim(manifest.job_id) as second:
            assert first is True and second is False
    with spool.claim(manifest.job_id) as again:
        assert again is True


def test_job_ids_are_validated(spool: Spool) -> None:
    with pytest.raises(ValueError):
        spool.job_dir("../../etc")


def test_sealer_redispatches_a_job_the_broker_lost_but_not_one_a_worker_holds(spool: Spool) -> None:
    from datetime import timedelta

    from gateway.server import Sealer

    key = series_key("PACS", "1.2", "1.2.3")
    spool.store_instance(key, "PACS", "1.2.3.1", b"x")
    sent: list[str] = []
    sealer = Sealer(spool, quiet_period_s=0, send=sent.append, stale_after_s=600)
    (job_id,) = sealer.run_once()
    assert sealer.run_once() == []  # dispatched a moment ago: not stale
    manifest = spool.load(job_id)
    manifest.history[-1].at -= timedelta(seconds=601)
    spool.save(manifest)
    with spool.claim(job_id):
        assert sealer.run_once() == []  # a worker holds it
    assert sealer.run_once() == [job_id] and sent == [job_id, job_id]


def test_late_instance_after_delivery_makes_a_complete_follow_up_job(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    for n in range(3):
        spool.store_instance(key, "PACS", f"1.2.3.{n}", f"instance {n}".encode())
    first = spool.seal(key, quiet_period_s=0)
    assert first is not None
    spool.finish(first, 3)
    spool.store_instance(key, "PACS", "1.2.3.9", b"late")
    spool.store_instance(key, "PACS", "1.2.3.1", b"resent")  # already delivered: the first copy stays
    follow_up = spool.seal(key, quiet_period_s=0)
    assert follow_up is not None and follow_up.follows == first.job_id
    names = sorted(p.name for p in spool.instance_files(follow_up.job_id))
    assert names == ["1.2.3.0.dcm", "1.2.3.1.dcm", "1.2.3.2.dcm", "1.2.3.9.dcm"]
    assert follow_up.n_instances == 4
    assert (spool.job_dir(follow_up.job_id) / "instances" / "1.2.3.1.dcm").read_bytes() == b"resent"
    # Another peer's series with the same UIDs is a different series.
    other = series_key("OTHER", "1.2", "1.2.3")
    spool.store_instance(other, "OTHER", "1.2.3.5", b"x")
    assert spool.seal(other, quiet_period_s=0).follows is None


def test_delivered_files_expire_but_the_record_stays(spool: Spool) -> None:
    key = series_key("PACS", "1.2", "1.2.3")
    spool.store_instance(key, "PACS", "1.2.3.1", b"x")
    manifest = spool.seal(key, quiet_period_s=0)
    assert manifest is not None
    (spool.jobs / manifest.job_id / "qc.png").write_bytes(b"png")
    spool.finish(manifest, 1)
    assert spool.expire_delivered(older_than_s=3600) == []  # too recent
    assert spool.expire_delivered(older_than_s=0) == [manifest.job_id]
    job_dir = spool.done / manifest.job_id
    assert sorted(p.name for p in job_dir.iterdir() if not p.name.startswith(".")) == ["job.json"]
    assert spool.load(manifest.job_id).state == JobState.sent
    # A late instance now makes a job of its own (nothing left to merge with).
    spool.store_instance(key, "PACS", "1.2.3.2", b"late")
    assert spool.seal(key, quiet_period_s=0).follows is None
