"""Volume build and write-back per shared series, against SimpleITK and dcm2niix in the same run.

``python -m bench.volume [--repeat N]`` times, for every series in ``../shared/data/dicom``:

* pediface: read the files, split into stacks, build every stack's volume (decoding included),
  then write back an empty-but-one-voxel mask per stack (so every instance is re-encoded in its
  transfer syntax or rewritten) and serialise the output in memory; peak Python heap (tracemalloc)
  of the build + write-back;
* SimpleITK's ImageSeriesReader on the first stack's files (classic multi-file series only);
* dcm2niix (PyPI) converting the same files to an uncompressed NIfTI, as a subprocess.

Best of ``--repeat`` runs (default 3). Writes the ``volume`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from pydicom.filebase import DicomBytesIO

from bench.report import stamp, write_section

DICOM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name != "LICENSE" and not p.name.endswith(".txt")
    )


def _pediface(files: list[Path]) -> tuple[float, float, int, str]:
    """(build s, write-back s, stacks, transfer syntaxes written) for one series."""
    from worker.volume.pixels import stack_volume
    from worker.volume.read import read_instances
    from worker.volume.stacks import split_series
    from worker.writer import StackMask, write_back

    started = time.perf_counter()
    datasets = read_instances(files)
    split = split_series(datasets)
    cache: dict[int, np.ndarray] = {}
    volumes = [stack_volume(datasets, stack, cache) for stack in split.stacks]
    built = time.perf_counter()
    masks = []
    for volume in volumes:
        blank = np.zeros(volume.shape, bool)
        blank[0, 0, 0] = True  # one voxel per stack: every instance of the first slices is rewritten
        blank[:, 0, 0] = True  # and one per slice, so that every instance is
        masks.append(StackMask(volume, blank, int(volume.array.min())))
    written = write_back(datasets, masks)
    for ds in written.values():
        ds.save_as(DicomBytesIO(), enforce_file_format=True)
    done = time.perf_counter()
    syntaxes = sorted({ds.file_meta.TransferSyntaxUID.name for ds in written.values()})
    return built - started, done - built, len(split.stacks), "; ".join(syntaxes)


def _peak_mb(files: list[Path]) -> float:
    tracemalloc.start()
    _pediface(files)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def _sitk(files: list[Path]) -> float | None:
    import SimpleITK as sitk

    from worker.volume.read import read_instances
    from worker.volume.stacks import split_series

    split = split_series(read_instances(files))
    first = [str(files[f.source.instance_index]) for f in split.stacks[0].frames]
    if len(first) < 2 or len(set(first)) != len(first):
        return None  # one file (enhanced or mosaic): not what ImageSeriesReader is for
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(first)
    started = time.perf_counter()
    reader.Execute()
    return time.perf_counter() - started


def _dcm2niix(files: list[Path]) -> float | None:
    tool = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(tool).exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "in"), Path(tmp, "out")
        source.mkdir()
        target.mkdir()
        for k, path in enumerate(files):
            (source / f"{k:05d}.dcm").symlink_to(path)
        started = time.perf_counter()
        subprocess.run(
            [tool, "-z", "n", "-b", "n", "-f", "v", "-o", str(target), str(source)],
            capture_output=True,
            check=True,
            timeout=300,
        )
        return time.perf_counter() - started


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.volume", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if not DICOM.is_dir():
        print(f"shared data missing at {DICOM}: nothing benchmarked", file=sys.stderr)
        return 1
    rows = [
        "| series | stacks | pediface build s | write-back s | peak MB | SimpleITK s | dcm2niix s "
        "| build / dcm2niix | written as |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for folder in sorted(p for p in DICOM.glob("*/*") if p.is_dir()):
        files = _files(folder)
        name = f"{folder.parent.name}/{folder.name}"
        try:
            runs = [_pediface(files) for _ in range(args.repeat)]
        except Exception as exc:  # noqa: BLE001 - a refused series is a result too
            rows.append(f"| {name} | refused: {getattr(exc, 'code', type(exc).__name__)} | | | | | | | |")
            continue
        build, write = min(r[0] for r in runs), min(r[1] for r in runs)
        n_stacks, syntaxes = runs[0][2], runs[0][3]
        sitk_s = min((_sitk(files) or float("inf")) for _ in range(args.repeat))
        niix = [_dcm2niix(files) for _ in range(args.repeat)]
        niix_s = None if None in niix else min(niix)  # type: ignore[type-var]
        ratio = "n/a" if not niix_s else f"{build / niix_s:.2f}"
        rows.append(
            f"| {name} | {n_stacks} | {build:.3f} | {write:.3f} | {_peak_mb(files):.0f} "
            f"| {_fmt(None if sitk_s == float('inf') else sitk_s)} | {_fmt(niix_s)} | {ratio} | {syntaxes} |"
        )
        print(rows[-1], flush=True)
    body = "\n".join(
        [
            "## Volume build and write-back (`python -m bench.volume`)",
            "",
            stamp(),
            "",
            "pediface build = read + split into stacks + decode every stack's volume; write-back = a",
            "one-voxel-per-slice mask written into every instance (re-encoded in its lossless transfer",
            "syntax where possible) and serialised in memory. SimpleITK = ImageSeriesReader on the first",
            "stack's files (classic series only); dcm2niix = PyPI dcm2niix to uncompressed NIfTI, as a",
            f"subprocess. Best of {args.repeat}; peak MB = Python heap (tracemalloc) of build + write-back.",
            "",
            *rows,
        ]
    )
    write_section("volume", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
