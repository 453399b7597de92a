"""C-ECHO latency while the workers are saturated: `python -m bench.echo` rewrites the "echo" section
of docs/benchmarks.md.

``pediface run`` (the gateway, and a worker with two pool processes on the embedded broker) on a
temporary data folder. The UIH series is sent ``--series`` times under as many calling AE titles
(one job each), so both worker processes have a backlog of masking, QC and writing to get through.
While they work, this process opens an association, sends C-ECHO and releases it, every
``--interval`` seconds (pynetdicom, as a PACS checking the node would); the latency is that whole
round trip. Only echoes sent while both workers were busy (at least two jobs not yet finished)
count; an idle baseline is taken before the first series is sent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest import UIH, free_port, receiver
from bench.report import stamp, write_section

GOAL_MS = 100.0
"""Issue 15: the gateway answers C-ECHO within 100 ms while the workers are saturated."""


def echo_ms(port: int) -> float:
    """Milliseconds from opening an association to its release, with one C-ECHO in between."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="ECHOBENCH")
    ae.add_requested_context(Verification)
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title="PEDIFACE")
    if not assoc.is_established:
        raise RuntimeError("association refused")
    status = assoc.send_c_echo()
    assoc.release()
    elapsed = (time.perf_counter() - started) * 1000
    if status is None or status.Status != 0:
        raise RuntimeError(f"C-ECHO failed: {status}")
    return elapsed


def _count(folder: Path) -> int:
    return sum(1 for entry in folder.iterdir() if entry.is_dir()) if folder.is_dir() else 0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _row(values: list[float]) -> str:
    return " | ".join(f"{_percentile(values, q):.1f}" for q in (50, 95, 99, 100))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=8, help="copies of the UIH series to process")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between echoes")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not UIH.is_dir():
        print("bench.echo needs ../shared/data and dcmtk (make system-deps)", file=sys.stderr)
        return 2
    files = [str(p) for p in sorted(UIH.glob("*.dcm"))]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pediface"
        env = {
            **os.environ,
            "PEDIFACE_DATA_DIR": str(data),
            "PEDIFACE_DICOM__PORT": str(port),
            "PEDIFACE_DICOM__MAX_ASSOCIATIONS": "32",
            "PEDIFACE_SERIES__QUIET_PERIOD_S": "1",
            "PEDIFACE_WORKER__CONCURRENCY": "2",
            "PEDIFACE_METRICS__PORT": "0",
            "PEDIFACE_LOG_LEVEL": "WARNING",
            "PEDIFACE_DEID__SECRET": "benchmark key, long enough to be accepted",
        }
        env.pop("PEDIFACE_CONFIG", None)
        with receiver([sys.executable, "-m", "pediface", "run"], port, env):
            idle = [echo_ms(port) for _ in range(20)]
            senders = [
                subprocess.Popen(
                    ["storescu", "-aet", f"SENDER{n}", "-aec", "PEDIFACE", "127.0.0.1", str(port), *files],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for n in range(args.series)
            ]
            busy: list[float] = []
            loads: list[float] = []
            started = time.monotonic()
            deadline = started + 60 + 30 * args.series
            while time.monotonic() < deadline:
                pending = _count(data / "spool" / "jobs")  # sealed, not finished
                waiting = _count(data / "spool" / "incoming")  # received, not yet sealed
                sending = any(s.poll() is None for s in senders)
                if not sending and pending == waiting == 0:
                    break
                latency = echo_ms(port)
                if pending >= 2:
                    busy.append(latency)
                    loads.append(os.getloadavg()[0])
                time.sleep(args.interval)
            for sender in senders:
                sender.wait(60)
            processed = (
                len(list((data / "spool" / "done").iterdir())) if (data / "spool" / "done").is_dir() else 0
            )
    if not busy:
        print("no echo was sent while two jobs were pending", file=sys.stderr)
        return 1
    p50, p95, p99, worst = (_percentile(busy, q) for q in (50, 95, 99, 100))
    verdict = "met" if p99 <= GOAL_MS else "not met"
    text = f"""## C-ECHO while the workers are saturated (`python -m bench.echo --series {args.series}`)

`pediface run` with two worker processes; the UIH series sent {args.series} times under distinct calling
AE titles ({processed} jobs processed). Each echo is a whole round trip from this process (associate,
C-ECHO, release), every {args.interval} s; {len(busy)} echoes were sent while at least two jobs were
waiting or in work (the two worker processes busy), at a median 1-minute load average of
{statistics.median(loads):.1f} on 2 cores.

| echo round trip, ms | median | 95th percentile | 99th percentile | slowest |
|---|---|---|---|---|
| idle gateway (20 echoes) | {_row(idle)} |
| workers saturated ({len(busy)} echoes) | {_row(busy)} |

Goal: within {GOAL_MS:.0f} ms while the workers are saturated, 99th percentile: **{verdict}**. {stamp()}
"""
    if not args.no_write:
        write_section("echo", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
