"""Gateway and pipeline benchmarks: `python -m bench.run` rewrites its sections of docs/benchmarks.md.

1. Ingest: dcmtk's ``storescu`` sends the UIH series (160 instances, 78 MB) to
   ``pediface gateway`` and, in the same run, to dcmtk's own ``storescp``; the
   ratio of the two is the figure to watch. pediface fsyncs every instance before
   answering, storescp does not (it is run as it ships), so the ratio is a price
   we pay on purpose.
2. Pipeline: each step of :func:`worker.pipeline.deface_series` on the UIH series
   in one process (volume, mask, write-back + de-identification), plus peak RSS.

Needs ../shared and dcmtk. Figures are medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import stamp, write_section

REPO = Path(__file__).resolve().parents[1]
UIH = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def send(port: int, called: str) -> float:
    started = time.perf_counter()
    subprocess.run(["storescu", "-aec", called, "127.0.0.1", str(port), "+sd", str(UIH)], check=True)
    return time.perf_counter() - started


def bench_ingest(repeat: int) -> dict[str, float]:
    size_mb = sum(p.stat().st_size for p in UIH.glob("*.dcm")) / 1e6
    results: dict[str, list[float]] = {"pediface": [], "storescp": []}
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            env = {
                **os.environ,
                "PEDIFACE_DATA_DIR": f"{tmp}/data",
                "PEDIFACE_DICOM__PORT": str(port),
                "PEDIFACE_SERIES__QUIET_PERIOD_S": "3600",
                "PEDIFACE_LOG_LEVEL": "WARNING",
            }
            env.pop("PEDIFACE_CONFIG", None)
            proc = subprocess.Popen([sys.executable, "-m", "pediface", "gateway"], env=env)
            try:
                wait_port(port)
                results["pediface"].append(send(port, "PEDIFACE"))
            finally:
                proc.terminate()
                proc.wait(30)
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", tmp, str(port)])
            try:
                wait_port(port)
                results["storescp"].append(send(port, "STORESCP"))
            finally:
                proc.terminate()
                proc.wait(30)
    med = {name: statistics.median(values) for name, values in results.items()}
    return {
        "size_mb": size_mb,
        "pediface_s": med["pediface"],
        "storescp_s": med["storescp"],
        "pediface_mb_s": size_mb / med["pediface"],
        "storescp_mb_s": size_mb / med["storescp"],
        "ratio": med["pediface"] / med["storescp"],
    }


def bench_pipeline(repeat: int) -> dict[str, float]:
    from pediface.settings import Settings
    from worker.app import build_masker
    from worker.deid import DeidPolicy, deidentify
    from worker.volume import build_volume, read_instances
    from worker.writer import blank_instances

    settings = Settings(data_dir=Path(tempfile.mkdtemp()))
    timings: dict[str, list[float]] = {k: [] for k in ("read", "volume", "mask", "write_back", "deid")}
    t = time.perf_counter()
    masker = build_masker(settings)
    load_s = time.perf_counter() - t
    key = b"benchmark-key-benchmark-key"
    for _ in range(repeat):
        t = time.perf_counter()
        datasets = read_instances(sorted(UIH.glob("*.dcm")))
        timings["read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        volume = build_volume(datasets)
        timings["volume"].append(time.perf_counter() - t)
        t = time.perf_counter()
        mask = masker.predict(volume)
        timings["mask"].append(time.perf_counter() - t)
        t = time.perf_counter()
        blanked = blank_instances(datasets, volume, mask.blank(), int(volume.array.min()))
        timings["write_back"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for ds in blanked:
            deidentify(ds, DeidPolicy(), key, defaced=True)
        timings["deid"].append(time.perf_counter() - t)
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    result = {name: statistics.median(values) for name, values in timings.items()}
    result["masker_load"] = load_s
    result["total"] = sum(result[k] for k in ("read", "volume", "mask", "write_back", "deid"))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not UIH.is_dir() or shutil.which("storescu") is None:
        print("bench needs ../shared/data and dcmtk (make system-deps)", file=sys.stderr)
        return 2
    ingest = bench_ingest(args.repeat)
    pipeline = bench_pipeline(args.repeat)
    ingest_text = f"""## Ingest: C-STORE of the UIH series (160 instances, {ingest["size_mb"]:.1f} MB) from dcmtk storescu

| receiver | seconds | MB/s |
|---|---|---|
| pediface gateway (fsync per instance, then Success) | {ingest["pediface_s"]:.2f} | {ingest["pediface_mb_s"]:.1f} |
| dcmtk storescp (as shipped, no fsync) | {ingest["storescp_s"]:.2f} | {ingest["storescp_mb_s"]:.1f} |

pediface / storescp time ratio: **{ingest["ratio"]:.2f}**. `python -m bench.run --repeat {args.repeat}`, medians.
{stamp()}
"""
    pipeline_text = f"""## Pipeline on the UIH series (512 x 460 x 160, one process, template masker)

| step | seconds |
|---|---|
| read 160 files (pydicom) | {pipeline["read"]:.2f} |
| build the volume | {pipeline["volume"]:.2f} |
| face mask (registration + resampling) | {pipeline["mask"]:.2f} |
| write-back into the original pixel data | {pipeline["write_back"]:.2f} |
| de-identification (160 instances) | {pipeline["deid"]:.2f} |
| **total per series** | **{pipeline["total"]:.2f}** |
| masker load (once per worker process) | {pipeline["masker_load"]:.2f} |

Peak RSS of the benchmark process: {pipeline["peak_rss_mb"]:.0f} MB. `python -m bench.run --repeat {args.repeat}`,
medians. {stamp()}
"""
    write_section("ingest", ingest_text)
    write_section("pipeline", pipeline_text)
    print(ingest_text + "\n" + pipeline_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
