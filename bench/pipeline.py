"""Pipeline benchmark: `python -m bench.pipeline` rewrites the `pipeline` section of docs/benchmarks.md.

One process, the UIH series (512 x 460 x 160) and the default (template) masker:
reading the files, the whole of :func:`worker.pipeline.deface_series` (volume,
mask, write-back, de-identification), the face mask alone, the QC picture, and
writing the output files; plus the masker's load time and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.report import stamp, write_section

REPO = Path(__file__).resolve().parents[1]
UIH = REPO.parent / "shared" / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not UIH.is_dir():
        print("bench.pipeline needs ../shared/data", file=sys.stderr)
        return 2
    from pediface.settings import Settings
    from worker.app import build_masker
    from worker.deid import DeidPolicy
    from worker.pipeline import deface_series
    from worker.qc import render_before_after
    from worker.volume import build_volume, read_instances

    work = Path(tempfile.mkdtemp())
    settings = Settings(data_dir=work)
    started = time.perf_counter()
    masker = build_masker(settings)
    load_s = time.perf_counter() - started
    key = settings.deid_key()
    steps: dict[str, list[float]] = {k: [] for k in ("read", "deface_series", "mask_only", "qc", "write")}
    for _ in range(args.repeat):
        t = time.perf_counter()
        datasets = read_instances(sorted(UIH.glob("*.dcm")))
        steps["read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        result = deface_series(datasets, masker, DeidPolicy.from_settings(settings.deid), key)
        steps["deface_series"].append(time.perf_counter() - t)
        volume = build_volume(datasets)
        t = time.perf_counter()
        masker.predict(volume)
        steps["mask_only"].append(time.perf_counter() - t)
        t = time.perf_counter()
        render_before_after(result.before, result.after, result.mask, work / "qc.png")
        steps["qc"].append(time.perf_counter() - t)
        out = work / "out"
        out.mkdir(exist_ok=True)
        t = time.perf_counter()
        for ds in result.datasets:
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        steps["write"].append(time.perf_counter() - t)
    shutil.rmtree(work, ignore_errors=True)
    med = {name: statistics.median(values) for name, values in steps.items()}
    total = med["read"] + med["deface_series"] + med["qc"] + med["write"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"""## Pipeline on the UIH series (160 x 512 x 460, {masker.name} masker (the default), one process)

| step | seconds |
|---|---|
| read 160 files (pydicom) | {med['read']:.2f} |
| deface_series: volume, mask, write-back, de-identification | {med['deface_series']:.2f} |
| of which the face mask (masker.predict) | {med['mask_only']:.2f} |
| QC picture | {med['qc']:.2f} |
| write 160 output files | {med['write']:.2f} |
| **total per series** | **{total:.2f}** |
| masker load (once per worker process) | {load_s:.2f} |

Peak RSS {rss_mb:.0f} MB. At this rate one worker process handles about {3600 / total:.0f} such series an hour
(compute only; add transfer time). `python -m bench.pipeline --repeat {args.repeat}`, medians. {stamp()}
"""
    write_section("pipeline", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
