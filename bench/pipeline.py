"""Pipeline benchmark: `python -m bench.pipeline` rewrites the `pipeline` section of docs/benchmarks.md.

The UIH series (160 x 512 x 460) through a worker's job steps exactly as :class:`worker.jobs.JobRunner`
runs them (:data:`worker.jobs.STEPS`: mask, write, deidentify, each followed by saving ``job.json``), on a
real spool in a temporary folder, with the configured (default) masker built once beforehand. Each stage's
seconds come from the job's own timings (``job.json`` ``timings``): reading the instances, building the
volume, the face mask, the write-back into the pixel data, the de-identification, the QC picture and
writing the output files. The compute total leaves out reading and de-identification (reported apart).

``--profile`` instead runs the same steps under py-spy (the ``bench`` extra) and writes the
``profile`` section: the functions holding the most samples, by own time and with their callees.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.profile import add_options as add_profile_options
from bench.profile import record, summary
from bench.report import stamp, write_section

REPO = Path(__file__).resolve().parents[1]
UIH = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"

STAGES = {
    "read": "read the instances (pydicom)",
    "volume": "build the volume",
    "mask": "face mask (masker.predict)",
    "write_back": "write-back into the pixel data",
    "deid": "de-identification (worker/deid, reported apart)",
    "qc": "QC picture (drawn while the files are written)",
    "write": "write the output files",
    "qc_and_write": "QC picture and output files, overlapped: elapsed",
}
"""The stages a job times (job.json ``timings`` keys), in the order it runs them."""

COMPUTE = ("volume", "mask", "write_back", "qc_and_write")
"""The stages of the compute total: all but reading the files and de-identifying the headers."""

GOAL_S = 3.0
"""Issue 15: mask + write-back + QC + writing, per UIH series, at most this many seconds of compute."""


def spool_job(data_dir: Path, files: list[Path]) -> str:
    """Store ``files`` in a spool as the gateway does and seal them into a job; returns its id."""
    import pydicom

    from spool.manifest import series_key, study_key
    from spool.store import Spool

    spool = Spool(data_dir)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    key = series_key("BENCH", str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    for path in files:
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.store_instance(
            key, "BENCH", sop, path.read_bytes(), study_key("BENCH", str(first.StudyInstanceUID))
        )
    manifest = spool.seal(key, quiet_period_s=0)
    if manifest is None:
        raise RuntimeError("the series could not be sealed")
    return manifest.job_id


def run_steps(runner: object, job_id: str) -> dict[str, float]:
    """The job's steps as :meth:`JobRunner._attempt` runs them (no delivery); its stage timings."""
    from worker import steps
    from worker.jobs import STEPS

    spool = runner.spool  # type: ignore[attr-defined]
    manifest = spool.load(job_id)
    job = steps.Job(manifest, steps.destinations_of(runner.settings, manifest))  # type: ignore[attr-defined]
    started = time.process_time()
    for state, step in STEPS:
        step(runner.context, job)  # type: ignore[attr-defined]
        spool.save(manifest.to(state))
    return {**job.timings, "cpu": time.process_time() - started}


def series_runs(
    files: list[Path], repeat: int, **settings_overrides: object
) -> tuple[list[dict], float, str]:
    """``repeat`` jobs of ``files`` through one runner: the timings of each, the masker's load seconds
    and its name."""
    from config.settings import load_settings
    from worker.deface import build_masker
    from worker.jobs import JobRunner

    work = Path(tempfile.mkdtemp(prefix="pediface-bench-"))
    try:
        settings = load_settings(
            data_dir=work / "data",
            metrics={"port": 0},
            deid={"secret": "benchmark key, long enough to be accepted"},
            **settings_overrides,
        )
        started = time.perf_counter()
        masker = build_masker(settings)
        load_s = time.perf_counter() - started
        runner = JobRunner(settings, lambda: masker)
        runs = []
        for _ in range(repeat):
            job_id = spool_job(settings.data_dir, files)
            runs.append(run_steps(runner, job_id))
            shutil.rmtree(runner.spool.jobs / job_id, ignore_errors=True)
        return runs, load_s, masker.name
    finally:
        shutil.rmtree(work, ignore_errors=True)


def qc_alone(files: list[Path], repeat: int) -> tuple[float, float]:
    """Median wall and CPU seconds of the QC picture alone (the last job draws it while writing)."""
    from config.settings import Settings
    from worker.deface import build_masker
    from worker.pipeline import blank_pixels, mask_series
    from worker.qc import render_before_after
    from worker.types import Volume
    from worker.volume.read import read_instances

    datasets = read_instances(files)
    masked = mask_series(datasets, build_masker(Settings()))
    pixels = blank_pixels(datasets, masked)
    part = pixels.parts[0]
    volume = part.volume
    after = Volume(
        np.where(part.blank, np.asarray(part.background, dtype=volume.array.dtype), volume.array),
        volume.spacing,
        volume.origin,
        volume.direction,
    )
    walls, cpus = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            render_before_after(volume, after, masked.masks[0], Path(tmp) / "qc.png")
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return statistics.median(walls[1:]), statistics.median(cpus[1:])


def _qc_only(files: list[Path], repeat: int, write: bool) -> int:
    """Time the QC picture alone, in rounds (the machine's load drifts), and write the ``qc`` section."""
    rounds = [qc_alone(files, repeat) for _ in range(3)]
    wall = statistics.median(r[0] for r in rounds)
    cpu = statistics.median(r[1] for r in rounds)
    load = os.getloadavg()[0]
    text = f"""## QC picture of the UIH series alone (`python -m bench.pipeline --qc-only --repeat {repeat}`)

The before/after picture of the UIH series (160 x 512 x 460, masked by the default masker once),
drawn {repeat} times after a warm-up, in 3 rounds; the median of the rounds' medians. The job draws it
while the output files are written (section pipeline); here it runs alone. CPU seconds count every
thread of the process and leave out the time spent waiting for a core.

| | seconds |
|---|---|
| wall clock | {wall:.2f} |
| CPU | {cpu:.2f} |
| rounds (wall / CPU) | {"; ".join(f"{w:.2f} / {c:.2f}" for w, c in rounds)} |

Goal (issue 15): at most 0.3 s per series. 1-minute load average at the end {load:.1f} (the machine is
shared). {stamp()}
"""
    if write:
        write_section("qc", text)
    print(text)
    return 0


def _profile(repeat: int, label: str, section: str, raw: Path | None, write: bool) -> int:
    """Run this benchmark under py-spy (or read the collapsed stacks of an earlier run) and write
    ``section``."""
    if raw is None:
        raw = Path(tempfile.gettempdir()) / "pediface-profile-pipeline.txt"
        record(raw, ["bench.pipeline", "--repeat", str(repeat), "--no-write"])
    text = profile_section(raw.read_text(), repeat, label)
    if write:
        write_section(section, text)
    print(text)
    return 0


def profile_section(collapsed: str, repeat: int, label: str = "", top: int = 20) -> str:
    """Top frames of py-spy's collapsed stacks, as shares of all samples of the job steps."""
    # The steps, and the QC picture drawn in its own thread while the files are written.
    samples, tables = summary(collapsed, ("run_steps", "_write_qc"), top)
    if not samples:
        return "no samples of the job steps were recorded"
    return f"""## Profile of a worker's job steps on the UIH series ({label or "py-spy"})

`python -m bench.pipeline --profile --repeat {repeat}`: py-spy samples (100 per second, native frames
included, idle threads left out) of {repeat} job(s) of the UIH series through mask, write and deidentify
as the job runner runs them (the masker already loaded; the first job is a warm-up and is sampled too);
{samples} samples. Shares of all samples inside the steps.

{tables}
{stamp()}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="jobs to time (medians are reported)")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    parser.add_argument("--qc-only", action="store_true", help="time the QC picture alone (section qc)")
    add_profile_options(parser, section="profile")
    args = parser.parse_args(argv)
    if not UIH.is_dir():
        print("bench.pipeline needs ../shared/data", file=sys.stderr)
        return 2
    if args.profile:
        return _profile(args.repeat, args.label, args.section, args.from_stacks, not args.no_write)
    files = sorted(UIH.glob("*.dcm"))
    if args.qc_only:
        return _qc_only(files, args.repeat, not args.no_write)
    # A warm-up job: first-call costs (imports, caches) are not per-series costs.
    runs, load_s, masker_name = series_runs(files, args.repeat + 1)
    runs = runs[1:]
    qc_wall, qc_cpu = qc_alone(files, args.repeat)
    med = {stage: statistics.median(r.get(stage, 0.0) for r in runs) for stage in (*STAGES, "cpu")}
    compute = sum(med[s] for s in COMPUTE)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = "\n".join(f"| {label} | {med[stage]:.2f} |" for stage, label in STAGES.items())
    load = os.getloadavg()[0]
    verdict = f"goal <= {GOAL_S:.0f} s: {'met' if compute <= GOAL_S else 'not met'}"
    text = f"""## Worker job steps on the UIH series (160 x 512 x 460, {masker_name} masker, one process)

`python -m bench.pipeline --repeat {args.repeat}`: the job's steps (mask, write, deidentify) as the job
runner runs them on a real spool, {args.repeat} jobs after a warm-up, medians of each stage's seconds
(job.json `timings`).

| stage | seconds |
|---|---|
{rows}
| **compute: volume + mask + write-back + QC and files** | **{compute:.2f}** ({verdict}) |
| QC picture alone, not overlapped: wall / CPU seconds (goal <= 0.3 s) | {qc_wall:.2f} / {qc_cpu:.2f} |
| CPU seconds of the whole job, all threads (de-identification and reading included) | {med["cpu"]:.2f} |
| masker load (once per worker process) | {load_s:.2f} |

Peak RSS {rss_mb:.0f} MB. 1-minute load average at the end {load:.1f}: the machine is shared with other
work, so a stage's wall seconds include waiting for a core; the CPU seconds do not.
{stamp()}
"""
    if not args.no_write:
        write_section("pipeline", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
