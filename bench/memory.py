"""Memory of a large series through the worker: `python -m bench.memory` rewrites the "memory" section of
docs/benchmarks.md.

A synthetic 512 x 512 x 400 series with real headers: the UIH series' volume resampled (linear) to 400
sagittal slices of 512 x 512 pixels over the same field of view, each slice written with the header of
the UIH instance nearest to it (new geometry, UIDs derived from the originals). A fresh process then runs
the job's steps on it as the job runner does (bench/pipeline.py), with the default masker; its peak
resident memory (VmHWM) is the figure, with the highest resident size seen during each stage
(sampled every 10 ms).
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

from bench.pipeline import UIH
from bench.report import stamp, write_section

SHAPE = (400, 512, 512)
"""(slices, rows, columns) of the synthetic series."""

GOAL_MB = 4096
"""Issue 15: at most 4 GB peak resident memory for the 512 x 512 x 400 series."""


def build_series(out: Path) -> list[Path]:
    """Write the synthetic series into ``out`` (one file per slice); returns the files."""
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid
    from scipy import ndimage as ndi

    from worker.volume.pixels import build_volume
    from worker.volume.read import read_instances

    originals = sorted(UIH.glob("*.dcm"))
    datasets = read_instances(originals)
    volume = build_volume(datasets)  # (slices, rows, columns), spacing (x, y, z)
    slices, rows, columns = SHAPE
    zoom = [n / m for n, m in zip(SHAPE, volume.shape, strict=True)]
    array = ndi.zoom(volume.array, zoom, order=1).astype(volume.array.dtype)
    spacing = [old * m / n for old, m, n in zip(volume.spacing, volume.shape[::-1], SHAPE[::-1], strict=True)]
    direction = np.asarray(volume.direction).reshape(3, 3)
    origin = np.asarray(volume.origin)
    series_uid = generate_uid(
        entropy_srcs=["pediface bench.memory series", str(datasets[0].SeriesInstanceUID)]
    )
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(slices):
        source = volume.sources[min(len(volume.sources) - 1, int(round(k * volume.shape[0] / slices)))]
        ds = pydicom.dcmread(originals[source.instance_index])  # a fresh copy of a real header
        ds.Rows, ds.Columns = rows, columns
        ds.PixelSpacing = [f"{spacing[1]:.6g}", f"{spacing[0]:.6g}"]
        ds.SliceThickness = f"{spacing[2]:.6g}"
        if "SpacingBetweenSlices" in ds:
            ds.SpacingBetweenSlices = f"{spacing[2]:.6g}"
        position = origin + direction[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.InstanceNumber = k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = np.ascontiguousarray(array[k]).astype(array.dtype.newbyteorder("<")).tobytes()
        path = out / f"{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM): unlike ``ru_maxrss``, not inherited across exec from
    the parent that started it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_job(folder: Path) -> dict[str, object]:
    """The job's steps on the series in ``folder``, in this process: timings and memory."""
    from bench.pipeline import series_runs

    peaks: dict[str, float] = {}
    stage = ["start"]
    stop = threading.Event()

    def sample() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not stop.is_set():
            with open("/proc/self/statm") as handle:
                rss_mb = int(handle.read().split()[1]) * page / 2**20
            peaks[stage[0]] = max(peaks.get(stage[0], 0.0), rss_mb)
            time.sleep(0.01)

    import worker.steps as steps

    for name in ("mask", "write", "deidentify"):
        original = getattr(steps, name)

        def staged(ctx: object, job: object, _original: object = original, _name: str = name) -> None:
            stage[0] = _name
            try:
                _original(ctx, job)  # type: ignore[operator]
            finally:
                stage[0] = "between"

        setattr(steps, name, staged)
    # worker.jobs (imported below, by series_runs) builds its STEPS from these.
    if "worker.jobs" in sys.modules:
        raise RuntimeError("worker.jobs was imported before its steps were wrapped")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    runs, load_s, masker = series_runs(sorted(folder.glob("*.dcm")), 1)
    stop.set()
    sampler.join()
    return {
        "timings": runs[0],
        "peak_mb": peak_rss_mb(),
        "stage_peaks_mb": peaks,
        "masker": masker,
        "load_s": load_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    parser.add_argument("--run-job", type=Path, help=argparse.SUPPRESS)  # the measured child process
    args = parser.parse_args(argv)
    if args.run_job:
        print(json.dumps(run_job(args.run_job)))
        return 0
    if not UIH.is_dir():
        print("bench.memory needs ../shared/data", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="pediface-memory-"))
    try:
        files = build_series(work / "series")
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory", "--run-job", str(work / "series")],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-5000:], file=sys.stderr)
        return 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    timings, peaks = result["timings"], result["stage_peaks_mb"]
    peak = result["peak_mb"]
    verdict = "met" if peak <= GOAL_MB else "not met"
    stages = ", ".join(
        f"{name} {peaks[name]:.0f} MB" for name in ("mask", "write", "deidentify") if name in peaks
    )
    seconds = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items() if k != "cpu")
    text = f"""## Memory: a 512 x 512 x 400 series through the worker (`python -m bench.memory`)

The UIH series resampled to {SHAPE[0]} slices of {SHAPE[1]} x {SHAPE[2]} ({len(files)} files,
{size_mb:.0f} MB, {SHAPE[0] * SHAPE[1] * SHAPE[2] / 1e6:.0f} million voxels) with the real headers of its
nearest slices, spooled
and run through the job's steps (mask, write, deidentify) in a fresh process with the {result["masker"]}
masker, as the job runner runs them.

Peak resident memory: **{peak:.0f} MB** (goal <= {GOAL_MB} MB: {verdict}). Highest resident size seen
in each step: {stages}. Seconds: {seconds}.

{stamp()}
"""
    if not args.no_write:
        write_section("memory", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
