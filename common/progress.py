"""Progress bars for long command-line work (``pediface deface`` over a folder, ``pediface evaluate``).

A thin wrapper over :mod:`rich.progress` (rich ships with typer, so nothing new
to install). Bars go to standard error, so standard output stays a clean list of
written files for scripts; with standard error not a terminal (CI, pipes, logs)
nothing is drawn at all.

Usage::

    from common.progress import steps, track

    for path in track(inputs, "defacing"):      # one tick per item, total from len()
        deface_path(path, ...)

    with steps(3, "series 1") as bar:           # named steps of one long job
        bar.step("mask");   ...
        bar.step("write");  ...
        bar.step("qc");     ...
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


def _enabled(enabled: bool | None) -> bool:
    return sys.stderr.isatty() if enabled is None else enabled


def make_progress(enabled: bool | None = None) -> Progress:
    """A :class:`rich.progress.Progress` on stderr with pediface's columns; disabled off a terminal."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
        disable=not _enabled(enabled),
    )


def track(
    items: Iterable[T], description: str, total: int | None = None, enabled: bool | None = None
) -> Iterator[T]:
    """Yield ``items`` while showing one bar; ``total`` defaults to ``len(items)`` when it has one."""
    if total is None and isinstance(items, Sized):
        total = len(items)
    with make_progress(enabled) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


class Steps:
    """Named steps of one job on one bar: ``step("mask")`` finishes the previous step and names the next."""

    def __init__(self, progress: Progress, task: TaskID, description: str) -> None:
        self._progress = progress
        self._task = task
        self._description = description
        self._started = False
        self.done = 0

    def step(self, name: str) -> None:
        if self._started:
            self._progress.advance(self._task)
            self.done += 1
        self._started = True
        self._progress.update(self._task, description=f"{self._description}: {name}")

    def finish(self) -> None:
        total = next((t.total for t in self._progress.tasks if t.id == self._task), None)
        self._progress.update(self._task, completed=total if total is not None else self.done + 1)


@contextmanager
def steps(total: int, description: str, enabled: bool | None = None) -> Iterator[Steps]:
    """A bar of ``total`` named steps; completed when the block ends without an error."""
    with make_progress(enabled) as progress:
        task = progress.add_task(description, total=total)
        bar = Steps(progress, task, description)
        yield bar
        bar.finish()
