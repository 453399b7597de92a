"""Several gateways on one spool (behind one address, docs/operations.md) never seal a series twice.

Real processes, started together at a barrier, each try to seal every quiet series of a shared spool
at once, as the sealers of several gateways do. Each series must become exactly one job with all its
instances, and no process may fail on a series another one took.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from spool.store import Spool

SERIES, INSTANCES, PROCESSES = 60, 3, 3


def _seal_all(data_dir: Path, keys: list[str], barrier, results) -> None:  # noqa: ANN001 - mp proxies
    spool = Spool(data_dir)
    barrier.wait()
    sealed, errors = 0, []
    for key in keys:
        try:
            sealed += spool.seal(key, quiet_period_s=1) is not None
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")
    results.put((os.getpid(), sealed, errors))


def test_gateways_sharing_a_spool_seal_each_series_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    keys = [f"{index:024x}" for index in range(SERIES)]
    for index, key in enumerate(keys):
        for instance in range(INSTANCES):
            spool.store_instance(key, "PACS", f"1.2.3.{index}.{instance}", b"DICM" + bytes(64))
        past = time.time() - 60  # quiet for a minute
        os.utime(spool.incoming / key, (past, past))

    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    # Each process walks the series in another order, so that they meet on every one of them.
    orders = [keys, keys[::-1], keys[SERIES // 2 :] + keys[: SERIES // 2]]
    procs = [context.Process(target=_seal_all, args=(tmp_path, order, barrier, results)) for order in orders]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)

    errors = [e for _, _, errs in outcomes for e in errs]
    assert not errors, errors[:5]
    assert sum(sealed for _, sealed, _ in outcomes) == SERIES, outcomes
    jobs = list(spool.manifests(spool.jobs))
    assert sorted(m.series_key for m in jobs) == keys, "a series sealed twice, or not at all"
    for manifest in jobs:
        assert len(spool.instance_files(manifest.job_id)) == INSTANCES == manifest.n_instances
    assert not list(spool.incoming.iterdir())
    leftovers = [p for p in spool.jobs.iterdir() if not (p / "instances").is_dir()]
    assert not leftovers, "a job folder without its instances"
