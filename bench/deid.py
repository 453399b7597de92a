"""De-identification benchmark: pediface against dicognito and pydicom's deid, in one run.

`python -m bench.deid` rewrites the ``deid`` section of docs/benchmarks.md.

1. Throughput: every instance of every series in ../shared/data/dicom (vendor private tags
   included) is read from memory with pydicom (not timed) and de-identified by each tool in turn
   (timed: the de-identification call only). Figures are medians of ``--repeat`` passes after
   one warm-up pass, so that tables and recipes are loaded before timing.
2. Leaks: the canary file of the unit tests (a unique value in every attribute of PS3.15 Table
   E.1-1 that pydicom can write, at the top level and nested, plus private blocks, private and
   nested sequences and the file meta information; see :mod:`evaluation.canary`) is written,
   read back and given to each tool. A leak is a canary still in the output that the Basic
   profile says must go. Attributes the table does not list are counted apart: the Basic profile
   keeps them; pediface removes those its allow-list does not name.

The peers run as they ship: dicognito's ``Anonymizer()`` and deid's default recipe
(``deid.dicom``) with ``remove_private=True``. They are benchmark-only packages, not dependencies
of pediface.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pydicom
import pydicom.examples
from pydicom.dataset import Dataset

from bench.profile import add_options as add_profile_options
from bench.profile import record, summary
from bench.report import stamp, write_section
from evaluation.canary import Canary, CanaryFile, build_canaries
from evaluation.canary_check import expected_survivors, surviving
from worker.deid import DeidPolicy, deidentify
from worker.deid.table import profile_table

REPO = Path(__file__).resolve().parents[1]
DICOM = REPO.parent / "shared" / "data" / "dicom"
KEY = b"benchmark-key-benchmark-key-0123"

Deidentifier = Callable[[Dataset], Dataset]


@dataclass
class Tool:
    name: str
    version: str
    how: str
    run: Deidentifier


def tools() -> list[Tool]:
    """pediface and the peers that are installed, each as a function from dataset to dataset."""
    policy = DeidPolicy()
    found = [
        Tool(
            "pediface",
            metadata.version("pediface"),
            "Basic profile (Table E.1-1, 2026d) + allow-list, keyed UIDs",
            lambda ds: deidentify(ds, policy, KEY),
        )
    ]
    try:
        from dicognito.anonymizer import Anonymizer
    except ImportError:
        print("dicognito is not installed: pip install dicognito", file=sys.stderr)
    else:
        anonymizer = Anonymizer()

        def dicognito_run(ds: Dataset) -> Dataset:
            anonymizer.anonymize(ds)  # in place
            return ds

        found.append(Tool("dicognito", metadata.version("dicognito"), "Anonymizer() defaults", dicognito_run))
    try:
        from deid.config import DeidRecipe
        from deid.dicom import replace_identifiers
        from deid.logger import bot
    except ImportError:
        print("deid is not installed: pip install deid", file=sys.stderr)
    else:
        bot.level = 0  # deid prints a warning per attribute it cannot fill; keep the output readable
        recipe = DeidRecipe()  # the default recipe, parsed once

        def deid_run(ds: Dataset) -> Dataset:
            return replace_identifiers([ds], deid=recipe, save=False, remove_private=True)[0]

        found.append(
            Tool("deid", metadata.version("deid"), "default recipe (deid.dicom), remove_private", deid_run)
        )
    return found


def shared_series() -> list[list[bytes]]:
    """The bytes of every DICOM instance of the shared series, one list per series folder."""
    files = sorted(
        path
        for path in DICOM.rglob("*")
        if path.is_file() and path.name not in ("LICENSE", "MANIFEST.tsv") and path.suffix != ".txt"
    )
    series: dict[Path, list[bytes]] = {}
    for path in files:
        series.setdefault(path.parent, []).append(path.read_bytes())
    return list(series.values())


def shared_instances() -> list[bytes]:
    """The bytes of every DICOM instance of the shared series."""
    return [raw for series in shared_series() for raw in series]


def one_pass(tool: Tool, instances: list[bytes]) -> tuple[float, float, int]:
    """Wall and CPU seconds `tool` spends de-identifying `instances`, and how many it failed on."""
    wall = cpu = 0.0
    failures = 0
    for raw in instances:
        ds = pydicom.dcmread(io.BytesIO(raw))
        started, started_cpu = time.perf_counter(), time.process_time()
        try:
            tool.run(ds)
        except Exception:  # noqa: BLE001 - a peer failing on a vendor file is a finding, not a crash
            failures += 1
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
    return wall, cpu, failures


@dataclass
class Rate:
    wall: float  # instances per second, median of the passes
    cpu: float  # instances per CPU second, median of the passes
    failures: int


def throughput(found: list[Tool], series: list[list[bytes]], repeat: int) -> dict[str, Rate]:
    """Median instances per second (wall clock and CPU time) of each tool, and its failed instances.

    The tools take turns series by series within each pass (the one to start rotating), so that
    a change of load on the shared machine hits them all alike; the first pass warms up.
    """
    count = sum(len(instances) for instances in series)
    walls: dict[str, list[float]] = {tool.name: [] for tool in found}
    cpus: dict[str, list[float]] = {tool.name: [] for tool in found}
    failures: dict[str, int] = {}
    for attempt in range(repeat + 1):
        wall = dict.fromkeys(walls, 0.0)
        cpu = dict.fromkeys(walls, 0.0)
        failed = dict.fromkeys(walls, 0)
        for index, instances in enumerate(series):
            turn = (attempt + index) % len(found)
            for tool in found[turn:] + found[:turn]:
                seconds, cpu_seconds, failed_here = one_pass(tool, instances)
                wall[tool.name] += seconds
                cpu[tool.name] += cpu_seconds
                failed[tool.name] += failed_here
        failures = failed
        if attempt:
            for name in walls:
                walls[name].append(wall[name])
                cpus[name].append(cpu[name])
    return {
        name: Rate(
            count / statistics.median(walls[name]), count / statistics.median(cpus[name]), failures[name]
        )
        for name in walls
    }


@dataclass
class Leaks:
    canaries: int  # canaries the Basic profile removes or replaces, left in the output
    checked: int
    rows: int  # rows of Table E.1-1 (the private row included) with a canary left
    unlisted_kept: int  # attributes the table does not list, that kept their canary
    unlisted: int
    error: str = ""


def _write(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - peers may remove what the file meta needs; write it as it is
        buffer = io.BytesIO()
        ds.save_as(buffer)
    return buffer.getvalue()


def _survivors(
    tool: Tool, canary_file: CanaryFile, kinds: tuple[str, ...]
) -> tuple[list[Canary], list[Canary]]:
    """The canaries of `kinds` that `tool` was given, and those left in its output."""
    written_input = _write(canary_file.dataset)
    # The file meta copy of the SOP Instance UID is rewritten by pydicom when the input is written.
    checked = [c for c in canary_file.canaries if c.kind in kinds and c.tag != 0x00020003]
    output = _write(tool.run(pydicom.dcmread(io.BytesIO(written_input))))
    survived = surviving(checked, output, pydicom.dcmread(io.BytesIO(output), force=True))
    return checked, [canary for canary in checked if canary in survived]


def leaks(tool: Tool) -> Leaks:
    """Canaries that `tool` leaves where the Basic profile says they must go, and unlisted ones kept."""
    try:
        checked, left = _survivors(
            tool, build_canaries(pydicom.examples.mr), ("table", "private", "safe-private", "file-meta")
        )
        unlisted, unlisted_left = _survivors(
            tool, build_canaries(pydicom.examples.mr, unlisted=True), ("unlisted",)
        )
    except Exception as exc:  # noqa: BLE001 - report it: a tool that cannot process the file
        return Leaks(0, 0, 0, 0, 0, type(exc).__name__)
    basic = expected_survivors(checked, ())  # the Basic profile keeps no canary: an empty set
    leaked = [canary for canary in left if canary not in basic]
    private_row = profile_table().private.pattern.text
    rows = {canary.row.pattern.text if canary.row is not None else private_row for canary in leaked}
    return Leaks(len(leaked), len(checked), len(rows), len(unlisted_left), len(unlisted))


HEADER = (
    "| tool | how it was run | instances/s | pediface/tool speed | instances per CPU s | pediface/tool, CPU "
    "| failed instances | leaks | unlisted kept |\n|---|---|---|---|---|---|---|---|---|"
)


def _profile(repeat: int, label: str, section: str, raw: Path | None, write: bool) -> int:
    """pediface's passes of this benchmark under py-spy (or the collapsed stacks of an earlier
    run), summarised into ``section``."""
    if raw is None:
        raw = Path(tempfile.gettempdir()) / "pediface-profile-deid.txt"
        record(raw, ["bench.deid", "--only", "pediface", "--repeat", str(repeat), "--no-write"])
    samples, tables = summary(raw.read_text(), ("deidentify",))
    text = f"""## Profile of de-identification on the shared series ({label or "py-spy"})

`python -m bench.deid --profile --repeat {repeat}`: py-spy samples (100 per second, native frames
included) of pediface alone through this benchmark's passes (every instance of the shared series
read from memory, then de-identified; {repeat} passes and the warm-up, which is sampled too: the one-time
loading of the IOD tables under `_iod_types` is part of it); {samples} samples inside
`worker.deid.deidentify`, the shares below are of those.

{tables}
{stamp()}
"""
    if write:
        write_section(section, text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", nargs="+", help="run only these tools (pediface, dicognito, deid)")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/benchmarks.md")
    add_profile_options(parser, section="profile-deid")
    args = parser.parse_args(argv)
    if args.profile or args.from_stacks:
        return _profile(args.repeat, args.label, args.section, args.from_stacks, not args.no_write)
    if not DICOM.is_dir():
        print(f"bench.deid needs the shared DICOM series at {DICOM}", file=sys.stderr)
        return 2
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # the peers warn about every attribute they look up and lack
    series = shared_series()
    count = sum(len(instances) for instances in series)
    found = [tool for tool in tools() if not args.only or tool.name in args.only]
    rates = throughput(found, series, args.repeat)
    if args.no_write:
        for tool in found:
            rate = rates[tool.name]
            print(
                f"{tool.name}: {rate.wall:.0f} instances/s, {rate.cpu:.0f} per CPU second, "
                f"{rate.failures} failures"
            )
        return 0
    mine = rates["pediface"]
    rows = []
    for tool in found:
        rate, leak = rates[tool.name], leaks(tool)
        if tool.name == "pediface":
            ratio = ratio_cpu = "1"
        else:
            ratio, ratio_cpu = f"**{mine.wall / rate.wall:.2f}**", f"{mine.cpu / rate.cpu:.2f}"
        if leak.error:
            leaked, unlisted = f"could not process the canary file ({leak.error})", "-"
        else:
            leaked = f"{leak.canaries} of {leak.checked} ({leak.rows} of 657 rows)"
            unlisted = f"{leak.unlisted_kept} of {leak.unlisted}"
        rows.append(
            f"| {tool.name} {tool.version} | {tool.how} | {rate.wall:.0f} | {ratio} | {rate.cpu:.0f} "
            f"| {ratio_cpu} | {rate.failures} | {leaked} | {unlisted} |"
        )
    load = os.getloadavg()[0]
    text = f"""## De-identification: pediface, dicognito and deid on the same instances

Throughput on the {count} instances of the shared series ({len(series)} vendor series, private tags
included), de-identification call only (reading is not timed), median of {args.repeat} passes
after a warm-up; within each pass the tools take turns series by series (the one to start
rotating), so that a change of load on the shared machine hits them alike. Instances per CPU
second leave out the time spent waiting for a core. A failed instance is one the tool raised on
(its time still counts). Leaks: canaries of the PS3.15 Table
E.1-1 canary file (every row pydicom can write, at the top level and nested, private blocks and
sequences, file meta) left where the Basic profile removes or replaces them; pediface must have 0.
Unlisted kept: attributes neither in the table nor in pediface's allow-list that kept their value
(the Basic profile keeps them; pediface removes them). Goal (issue 15): pediface/dicognito >= 3.

{HEADER}
{chr(10).join(rows)}

`python -m bench.deid --repeat {args.repeat}`. 1-minute load average at the end {load:.1f} (the machine is
shared). {stamp()}
"""
    write_section("deid", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
