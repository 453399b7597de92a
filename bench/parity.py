"""What a researcher's dcm2niix gets from pediface's output, per shared series, Basic vs research profile.

`python -m bench.parity` rewrites the ``parity`` section of docs/research-profile.md: for every
series of ../shared/data/dicom, dcm2niix (its defaults, BIDS sidecar) on the input and on the
output of each profile; the sidecar fields kept, dropped, added and changed, whether the image grid
and affine and bval/bvec are the same, and which of the fields analysis needs (evaluation.bids.PHYSICS)
each profile loses. The headers are made as the pipeline makes them (worker.pipeline.derived_copy);
the test that holds the research profile to it is tests/unit/test_research_profile.py.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pydicom

from bench.report import stamp, write_section
from evaluation.bids import PHYSICS, compare, convert, descriptors_with_phi, write_outputs
from worker.deid import DeidPolicy

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "research-profile.md"
DICOM = REPO.parent / "shared" / "data" / "dicom"
KEY = b"pediface-bench-key-0123456789abcdef"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt" and p.name != "LICENSE")


def _names(fields: set[str] | dict) -> str:
    return ", ".join(sorted(fields)) or "–"


def series_rows(folder: Path, work: Path) -> list[str]:
    """Markdown rows of one series: one per profile."""
    files = _files(folder)
    if folder.name.endswith("transfer_syntaxes"):
        files = files[:1]  # one image in several transfer syntaxes: the first stands for all
    before = convert(write_outputs(files, work / "in", None, KEY), work / "nii-in")
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    physics = {key for output in before.values() for key in PHYSICS if key in output.sidecar}
    rows = []
    for profile in ("basic", "research"):
        after = convert(
            write_outputs(files, work / profile, DeidPolicy(profile=profile), KEY), work / f"nii-{profile}"
        )
        parity = compare(folder.name, before, after)
        lost = physics & (parity.dropped | set(parity.changed))
        unexpected = parity.unexpected(descriptors_with_phi(before, first))
        grid = "same" if parity.grid_same else "DIFFERENT"
        diffusion = "same" if parity.diffusion_same else "DIFFERENT"
        rows.append(
            f"| {folder.name} | {profile} | {len(parity.kept)} | {_names(parity.dropped)} "
            f"| {_names(parity.added)} | {_names(parity.changed)} | {grid} | {diffusion} "
            f"| {_names(lost)} | {len(unexpected)} |"
        )
    return rows


def dciodvfy_row(folder: Path) -> str:
    """A markdown row: dciodvfy's errors on the input and on the research profile's output (SEG included)."""
    import io

    from evaluation.conformance import CornerBox, dciodvfy_errors, new_errors
    from worker.pipeline import deface_series, derived_copy
    from worker.volume.read import read_instances

    files = _files(folder)
    policy = DeidPolicy(profile="research")
    try:
        result = deface_series(read_instances(files), CornerBox(), policy, KEY, mask_segmentation=True)
        outputs = [*result.datasets, result.segmentation]
        how = "pipeline + SEG"
    except Exception as exc:  # noqa: BLE001 - a refused series is counted header by header
        outputs = [derived_copy(pydicom.dcmread(path), policy, KEY, "bench") for path in files]
        how = f"headers ({type(exc).__name__}: refused by the pipeline)"
    before_total, before = 0, set()
    for path in files:
        errors = dciodvfy_errors(path.read_bytes()) or set()
        before_total += len(errors)
        before |= errors
    after_total, new, allowed = 0, set(), set()
    for ds in outputs:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        errors = dciodvfy_errors(buffer.getvalue()) or set()
        after_total += len(errors)
        added, permitted = new_errors(before, errors)
        new |= added
        allowed |= permitted
    return (
        f"| {folder.name} | {len(files)} | {before_total} | {len(outputs)} ({how}) | {after_total} "
        f"| {len(new)} | {len(allowed)} |"
    )


def allow_list_tables() -> str:
    """The research profile's private allow-lists as markdown, from the vendored tables."""
    import csv
    import io
    from importlib import resources

    from worker.deid.private import RESEARCH_PRIVATE_FILE, SIEMENS_ASCCONV_FILE, SIEMENS_CSA_FILE

    def table(name: str, title: str) -> str:
        text = resources.files("worker.deid").joinpath("tables", name).read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
        cells = [[cell.replace("|", "\\|") for cell in row] for row in rows]
        lines = [f"### {title} (`worker/deid/tables/{name}`)", "", "| " + " | ".join(cells[0]) + " |"]
        lines.append("|" + "---|" * len(cells[0]))
        code = {i for i, heading in enumerate(rows[0]) if heading in ("key", "value")}
        lines += [
            "| " + " | ".join(f"`{c}`" if i in code else c for i, c in enumerate(row)) + " |"
            for row in cells[1:]
        ]
        return "\n".join(lines)

    return "\n\n".join(
        [
            table(RESEARCH_PRIVATE_FILE, "Vendor private attributes added to Table E.3.10-1"),
            table(SIEMENS_CSA_FILE, "Siemens CSA image and series header tags kept"),
            table(SIEMENS_ASCCONV_FILE, "Siemens protocol (ASCCONV) lines kept"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__)
    parser.add_argument("--data", type=Path, default=DICOM, help="Folder of series (two levels deep).")
    args = parser.parse_args(argv)
    header = (
        "| series | profile | fields kept | dropped | added | changed | grid and affine | bval/bvec "
        "| analysis fields lost | unexpected |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, folder in enumerate(sorted(p for p in args.data.glob("*/*") if p.is_dir())):
            rows += series_rows(folder, Path(tmp) / str(index))
    body = (
        f"{stamp()} `python -m bench.parity`; dcm2niix {_dcm2niix_version()}.\n\n"
        f"Analysis fields checked: {', '.join(PHYSICS)}. *Unexpected* counts differences outside the "
        "documented list below (0 is the goal the test suite holds the research profile to).\n\n"
        + header
        + "\n"
        + "\n".join(rows)
    )
    write_section("parity", body, report=DOC)
    folders = sorted(p for p in args.data.glob("*/*") if p.is_dir())
    table = (
        "| series | input files | dciodvfy errors (input) | output files | dciodvfy errors (output) "
        "| new kinds of error | new, allowed by PS3.3 |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(dciodvfy_row(folder) for folder in folders)
    )
    write_section("dciodvfy", f"{stamp()} `python -m bench.parity`, research profile.\n\n{table}", report=DOC)
    print(table)
    write_section("allow-lists", allow_list_tables(), report=DOC)
    print(body)
    return 0


def _dcm2niix_version() -> str:
    import subprocess

    from evaluation.bids import dcm2niix

    output = subprocess.run([dcm2niix(), "--version"], capture_output=True, text=True, check=False)
    text = (output.stdout + output.stderr).strip().splitlines()
    return next((line.split()[-1] for line in text if "v1." in line), "unknown")


if __name__ == "__main__":
    raise SystemExit(main())
