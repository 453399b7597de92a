"""Ingest benchmark: `python -m bench.ingest` rewrites the `ingest` section of docs/benchmarks.md.

dcmtk's ``storescu`` sends the UIH series (160 instances, 78 MB) over loopback
with 1 and with 4 parallel associations (the files split in four) to three
receivers in the same run: ``pediface gateway`` (fsync of every instance before
Success), dcmtk's ``storescp`` writing files (no fsync, as it ships) and Orthanc
from Debian's package (its own storage and SQLite index). Figures are medians of
``--repeat`` runs; the ratios are the figures to watch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.report import stamp, write_section

REPO = Path(__file__).resolve().parents[1]
UIH = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"


#: dcmtk (storescp, and Orthanc's DICOM layer) leaves Nagle's algorithm on unless TCP_NODELAY is set in the
#: environment; with it off, every C-STORE response waits ~50 ms for a delayed ACK on loopback. Both peers are
#: measured with it set, so that the comparison is of receivers, not of a socket option.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def receiver(argv: list[str], port: int, env: dict[str, str] | None = None) -> Iterator[None]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def send(port: int, called: str, files: list[Path], parallel: int) -> float:
    chunks = [files[i::parallel] for i in range(parallel)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "-aec", called, "127.0.0.1", str(port), *map(str, chunk)])
        for chunk in chunks
    ]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - started
    if any(codes):
        raise RuntimeError(f"storescu failed: {codes}")
    return elapsed


def run_pediface(tmp: Path, files: list[Path], parallel: int) -> float:
    port = free_port()
    env = {
        **os.environ,
        "PEDIFACE_DATA_DIR": str(tmp / "pediface"),
        "PEDIFACE_DICOM__PORT": str(port),
        "PEDIFACE_DICOM__MAX_ASSOCIATIONS": "32",
        "PEDIFACE_SERIES__QUIET_PERIOD_S": "3600",
        "PEDIFACE_METRICS__PORT": "0",
        "PEDIFACE_LOG_LEVEL": "WARNING",
    }
    env.pop("PEDIFACE_CONFIG", None)
    with receiver([sys.executable, "-m", "pediface", "gateway"], port, env):
        return send(port, "PEDIFACE", files, parallel)


def run_storescp(tmp: Path, files: list[Path], parallel: int) -> float:
    port = free_port()
    out = tmp / "storescp"
    out.mkdir()
    # -dhl: no reverse DNS lookup of the peer, which stalls on a closed network and would time that.
    with receiver(["storescp", "-dhl", "-aet", "STORESCP", "-od", str(out), str(port)], port, DCMTK_ENV):
        return send(port, "STORESCP", files, parallel)


def run_orthanc(tmp: Path, files: list[Path], parallel: int) -> float:
    port, http = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(tmp / "orthanc-storage"),
        "IndexDirectory": str(tmp / "orthanc-index"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": http,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomCheckCalledAet": False,
    }
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config))
    with receiver(["Orthanc", str(path)], port, DCMTK_ENV):
        return send(port, "ORTHANC", files, parallel)


RECEIVERS: dict[str, Callable[[Path, list[Path], int], float]] = {
    "pediface": run_pediface,
    "storescp": run_storescp,
    "orthanc": run_orthanc,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 4, 16], help="associations at once")
    parser.add_argument("--receivers", nargs="+", default=list(RECEIVERS), choices=list(RECEIVERS))
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not UIH.is_dir() or shutil.which("storescu") is None:
        print("bench.ingest needs ../shared/data and dcmtk (make system-deps)", file=sys.stderr)
        return 2
    receivers = {
        name: RECEIVERS[name] for name in args.receivers if name != "orthanc" or shutil.which("Orthanc")
    }
    files = sorted(UIH.glob("*.dcm"))
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    seconds: dict[tuple[str, int], float] = {}
    spread: dict[tuple[str, int], tuple[float, float]] = {}
    for parallel in args.parallel:
        runs: dict[str, list[float]] = {name: [] for name in receivers}
        for _ in range(args.repeat):
            for name, run in receivers.items():  # take turns, so load drifts hit all alike
                with tempfile.TemporaryDirectory() as tmp:
                    runs[name].append(run(Path(tmp), files, parallel))
        for name, values in runs.items():
            seconds[(name, parallel)] = statistics.median(values)
            spread[(name, parallel)] = (min(values), max(values))
            print(name, parallel, [round(v, 2) for v in values], flush=True)
    header = " | ".join(f"{p} association{'s' if p > 1 else ''}" for p in args.parallel)
    rows = []
    for name in receivers:
        cells = []
        for parallel in args.parallel:
            s, (low, high) = seconds[(name, parallel)], spread[(name, parallel)]
            cells.append(f"{len(files) / s:.0f} inst/s ({s:.2f} s; {low:.2f}-{high:.2f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = []
    for peer in (n for n in receivers if n != "pediface"):
        cells = [f"{seconds[(peer, p)] / seconds[('pediface', p)]:.2f}" for p in args.parallel]
        ratios.append(f"| pediface / {peer} | " + " | ".join(cells) + " |")
    load = os.getloadavg()[0]
    text = f"""## Ingest: C-STORE of the UIH series ({len(files)} instances, {size_mb:.1f} MB) over loopback

dcmtk's storescu sends the series over 1 to 16 associations at once (the files dealt out among
them); medians of {args.repeat} runs, the receivers taking turns within each run (fastest and
slowest run in brackets). Ratios are instances per second, pediface's over its peer's (goal: at
least 1.0 against storescp at every level).

| receiver | {header} |
|---|{"---|" * len(args.parallel)}
{chr(10).join(rows)}

| instances/s ratio | {header} |
|---|{"---|" * len(args.parallel)}
{chr(10).join(ratios)}

pediface has every instance on disk (file and directory entry fsynced) before it answers Success;
concurrent associations share their fsyncs (group commit: one flush of the file system journal
covers every instance written before it). storescp (run with -dhl) does not fsync; Orthanc keeps
its own storage area and SQLite index. Both dcmtk-based peers run with TCP_NODELAY=1 (without it
each C-STORE response waits on a delayed ACK). `python -m bench.ingest --repeat {args.repeat}`.
1-minute load average at the end {load:.1f} (the machine is shared). {stamp()}
"""
    if not args.no_write:
        write_section("ingest", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
