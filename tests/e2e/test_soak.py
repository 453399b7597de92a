"""The soak of bench/soak.py in short, and two gateways behind one address, with real processes only.

The short soak runs the same parts and the same four faults as ``make soak`` (a worker killed with
SIGKILL while it holds a series, the gateway killed mid-association, Redis killed and restarted empty,
the archive stopped), compressed into a minute of sending, with the hostile sender; the archive is then
listed: nothing acknowledged is lost or duplicated. The two-gateway test sends one series half to each
of two gateways on the same data_dir at once; it is sealed, processed and delivered once.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import DICOM, need_shared, need_tool, wait_until

pytestmark = pytest.mark.e2e


@pytest.mark.slow(seconds=70)
def test_short_soak_with_all_four_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    need_shared(DICOM)
    for tool in ("storescu", "storescp", "redis-server"):
        need_tool(tool)
    from bench.soak import run_soak

    body, ok, soak = run_soak(
        tmp_path,
        minutes=1.0,
        workers=2,
        senders=4,
        quiet_period_s=3,
        archive_down_s=10,
        max_backlog=4,
        hostile_interval_s=4,
        drain_s=90,
        kinds=["2d", "compressed", "jpeg-ls"],
        command="tests/e2e/test_soak.py",
    )
    print("\n" + body)
    injected = {f.name: f.detail for f in soak.faults}
    assert len(injected) == 4 and not any("not injected" in d for d in injected.values()), injected
    assert ok, body
    assert "| **lost** | **0** |" in body and "| **duplicated** | **0** |" in body
    hostile = soak.hostile.sends if soak.hostile else []
    # Refused with 0xA900, unless the send met the gateway's kill (then aborted, or no gateway to call).
    during_kill = ("aborted", "association refused or gateway down")
    bounded = ("deflate-bomb", "huge-frame", "broken-fragments")
    refused = [(h.case, h.outcome) for h in hostile if h.case in bounded]
    assert all(outcome in ("0xA900", *during_kill) for _, outcome in refused), refused
    assert sum(outcome == "0xA900" for _, outcome in refused) >= 2, refused
    stalls = [h for h in hostile if h.case == "stall"]
    assert all(h.outcome.startswith("aborted by the gateway") for h in stalls), stalls
    assert soak.stack.usage["gateway"].peak_rss_mib < 1024, "the gateway's memory stayed bounded"


@pytest.mark.slow(seconds=15)
def test_two_gateways_on_one_data_dir_seal_and_deliver_a_series_once(
    tmp_path: Path, small_series: list[Path]
) -> None:
    """Two `pediface gateway` processes share data_dir (as behind a load balancer); the PACS's
    associations land on both, each with part of one series. One job, one delivery, no duplicate."""
    for tool in ("storescu", "storescp", "redis-server"):
        need_tool(tool)
    from bench.soak_stack import Stack

    stack = Stack(
        tmp_path, workers=1, quiet_period_s=3, gateways=2, extra={"series": {"poll_interval_s": 0.1}}
    )
    try:
        stack.start_all()
        halves = [small_series[0::2], small_series[1::2]]
        codes: list[int] = []

        def send(port: int, files: list[Path]) -> None:
            argv = ["storescu", "-aet", "PACS", "-aec", "PEDIFACE", "127.0.0.1", str(port), *map(str, files)]
            codes.append(subprocess.run(argv, capture_output=True, timeout=120).returncode)

        threads = [
            threading.Thread(target=send, args=(port, half))
            for port, half in zip(stack.gateway_ports, halves, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert codes == [0, 0]
        spool = stack.data_dir / "spool"

        def finished() -> list[dict]:
            found = [json.loads(p.read_text()) for p in spool.glob("*/*/job.json")]
            return found if found and all(j["state"] in ("sent", "quarantined") for j in found) else []

        jobs = wait_until(finished, 240, "the series to be delivered")
        assert len(jobs) == 1, f"{len(jobs)} jobs for one series"
        (job,) = jobs
        assert job["state"] == "sent" and job["n_sent"] == len(small_series) == job["n_instances"]
        assert [h["state"] for h in job["history"]].count("dispatched") == 1, "dispatched by both gateways"
        logs = [(stack.logs / f"{name}.log").read_text() for name in ("gateway", "gateway2")]
        assert sum(log.count("job_dispatched") for log in logs) == 1, "one task sent for the series"
        archived = [p for p in stack.archive_dir.rglob("*") if p.is_file()]
        assert len(archived) == len(small_series), "the archive got the series once"
        for name in ("gateway", "gateway2"):
            assert stack.alive(name)
    finally:
        stack.stop_all()
