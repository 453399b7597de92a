"""docs/benchmarks.md is shared by several benchmarks: each one owns a marked section of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from common.machine import describe

REPORT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_HEADER = (
    "# Benchmarks\n\nEach section below is rewritten by the benchmark that names it; "
    "run them with `make bench`.\n"
)


machine = describe
"""CPU model, cores, Python and kernel (:func:`common.machine.describe`)."""


def stamp() -> str:
    return f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}."


def write_section(name: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = report.read_text() if report.exists() else _HEADER
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
