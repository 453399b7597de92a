"""Summaries of py-spy's collapsed stacks, shared by the benchmarks that profile (``--profile``)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_options(parser: argparse.ArgumentParser, section: str) -> None:
    """The options every profiling benchmark takes: profile instead of timing, and where it goes."""
    parser.add_argument("--profile", action="store_true", help="profile with py-spy instead")
    parser.add_argument("--label", default="", help="what the profile shows, for its heading")
    parser.add_argument("--section", default=section, help="docs/benchmarks.md section of the profile")
    parser.add_argument(
        "--from-stacks", type=Path, help="summarise py-spy's collapsed stacks of an earlier run"
    )


def record(raw: Path, arguments: list[str]) -> None:
    """Run ``python -m`` `arguments` under py-spy (the ``bench`` extra), its collapsed stacks to `raw`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [
        py_spy, "record", "--rate", "100", "--format", "raw", "--native", "-o", str(raw),
        "--", sys.executable, "-m", *arguments,
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    print(f"py-spy's collapsed stacks: {raw} (flamegraph.pl or speedscope draw them)")


def _frame_name(frame: str) -> tuple[str, str]:
    """``function (path:line)`` -> (``function``, short path): lines and folders vary between versions."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    for marker in ("site-packages/", str(REPO) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return name, path


def _owner(name: str, path: str) -> str:
    """Who spends the time of a frame at the top of the stack: a library, or the interpreter's GC."""
    if name.startswith("gc_collect") or "gc_collect" in name:
        return "Python garbage collector"
    if path.startswith(("worker/", "common/", "spool/")):
        return f"pediface {path}"
    top = path.split("/", 1)[0]
    for library, label in (
        ("libgomp", "torch (OpenMP)"), ("libtorch", "torch"), ("torch", "torch"), ("numpy", "numpy"),
        ("SimpleITK", "SimpleITK"), ("scipy", "scipy"), ("pydicom", "pydicom"), ("PIL", "Pillow"),
        ("libc.so", "libc (memcpy, memset, malloc)"), ("libpython", "Python interpreter"),
        ("nnunetv2", "nnunetv2"), ("copy.py", "copy.deepcopy"),
    ):  # fmt: skip
        if path.startswith(library) or top.startswith(library):
            return label
    return path or name


def summary(collapsed: str, roots: Iterable[str], top: int = 20) -> tuple[int, str]:
    """The samples under the frames named `roots`, and three Markdown tables of their top frames.

    The tables give shares of those samples: pediface's functions with their callees, the
    innermost Python function, and who spends the time at the top of each stack.
    """
    roots = frozenset(roots)
    owner: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        frames = [_frame_name(f) for f in stack.split(";")]
        starts = [i for i, (name, _) in enumerate(frames) if name in roots]
        if not starts:
            continue  # the harness: imports, reading the inputs, loading models
        frames = frames[starts[0] + 1 :]
        python = [(name, path) for name, path in frames if path.endswith(".py")]
        if not python:
            continue
        count = int(count_text)
        samples += count
        native = frames[-1]
        known = "/" in native[1] or native[1].endswith((".so", ".py")) or native[0].startswith("gc_collect")
        owner[_owner(*(native if known else python[-1]))] += count
        innermost[f"{python[-1][0]} ({python[-1][1]})"] += count
        for name, path in set(python):
            if path.startswith(("worker/", "bench/", "common/", "spool/")):
                total[f"{name} ({path})"] += count
    if not samples:
        return 0, "no samples were recorded"

    def rows(counter: Counter[str]) -> str:
        return "\n".join(f"| {100 * n / samples:.1f} % | `{key}` |" for key, n in counter.most_common(top))

    return (
        samples,
        f"""pediface's functions with their callees (inclusive):

| share | function (file) |
|---|---|
{rows(total)}

Innermost Python function (its own time and that of the native code it called):

| share | function (file) |
|---|---|
{rows(innermost)}

Own time by who spends it (the native frame at the top of each stack):

| share | library |
|---|---|
{rows(owner)}
""",
    )
