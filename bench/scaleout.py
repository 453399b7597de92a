"""Scale-out: `python -m bench.scaleout` measures series per hour with 1, 2 and 3 workers on one Redis broker.

For each worker count a fresh stack (Redis, one gateway, N ``pediface worker`` processes with one masker
thread each, a storescp archive; bench/soak_stack.py) receives the same batch of fresh copies of the shared
series at once, and the clock runs from the first C-STORE to the last series stored at the archive. The
ratios to one worker are the figures to watch; ``--write-docs`` puts them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.soak_senders import mint, prepare_templates
from bench.soak_stack import DCMTK_ENV, Stack

MIX = ("3d", "2d", "enhanced", "2d")


def run_once(root: Path, workers: int, batches: list[list[Path]], senders: int, timeout_s: float) -> dict:
    stack = Stack(root, workers=workers, quiet_period_s=3, worker_threads=1)
    try:
        stack.start_all()
        time.sleep(5)  # the workers load the masker before the clock starts
        load = os.getloadavg()[0]
        spool = stack.data_dir / "spool"
        started = time.monotonic()

        def send(files: list[list[Path]]) -> None:
            for series in files:
                argv = ["storescu", "-aet", "PACS", "-aec", "PEDIFACE", "127.0.0.1", str(stack.port)]
                subprocess.run([*argv, *map(str, series)], env=DCMTK_ENV, capture_output=True, check=True)

        threads = [threading.Thread(target=send, args=(batches[i::senders],)) for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            finished = [json.loads(p.read_text())["state"] for p in spool.glob("*/*/job.json")]
            if len(finished) >= len(batches) and all(s in ("sent", "quarantined") for s in finished):
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        states = [json.loads(p.read_text())["state"] for p in spool.glob("*/*/job.json")]
        return {
            "workers": workers,
            "series": len(batches),
            "sent": states.count("sent"),
            "quarantined": states.count("quarantined"),
            "seconds": elapsed,
            "series_per_hour": states.count("sent") / elapsed * 3600,
            "load_before": load,
        }
    finally:
        stack.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--series", type=int, default=8, help="series per run (the mix: 3D, 2D, enhanced, 2D)"
    )
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pediface-scaleout-"))
    templates = prepare_templates(root, sorted(set(MIX)))
    batches = [
        mint(templates[MIX[i % len(MIX)]], root / "series" / f"{i:03d}")[2] for i in range(args.series)
    ]
    results = []
    for workers in args.workers:
        # The same UIDs each run: every run is a fresh stack, so nothing is a duplicate of an earlier run.
        result = run_once(root / f"workers-{workers}", workers, batches, args.senders, args.timeout)
        results.append(result)
        print(json.dumps(result), flush=True)
    shutil.rmtree(root, ignore_errors=True)
    base = results[0]["series_per_hour"] or 1.0
    kinds = ", ".join(f"{MIX.count(k) * args.series // len(MIX)} {k}" for k in sorted(set(MIX)))
    command = " ".join(["python -m bench.scaleout", *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"Command: `{command}`. Each run: a fresh Redis, one gateway, N workers (`deface.threads: 1` each), "
        f"a storescp archive; {args.series} series ({kinds}) sent at once by {args.senders} storescu "
        "senders; the clock runs from the first C-STORE to the last series stored (quiet period 3 s "
        "included).",
        "",
        "| workers | series delivered | seconds | series/hour | ratio to 1 worker | load average before |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['workers']} | {r['sent']}/{r['series']} | {r['seconds']:.0f} | "
            f"{r['series_per_hour']:.0f} | {r['series_per_hour'] / base:.2f}x | {r['load_before']:.1f} |"
            for r in results
        ],
    ]
    body = "\n".join(lines)
    print(body)
    if args.write_docs:
        from bench.report import stamp, write_section

        note = (
            "The machine has 2 cores and is shared with other work: beyond 2 workers there is no core left "
            "to scale onto, and the load from other processes lowers every figure."
        )
        write_section(
            "scaleout", f"## Scale-out: series per hour with 1, 2 and 3 workers\n\n{stamp()} {note}\n\n{body}"
        )
    return 0 if all(r["sent"] == r["series"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
