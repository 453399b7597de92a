"""``pediface deface INPUT OUTPUT``: every item of a folder, in parallel, resumable, with a report.

The flow of one run:

1. :func:`batch.discover.discover` lists the items; skipped files and series get one line each;
2. items the report already lists as finished (defaced with their output still there, or quarantined)
   are not run again: re-running the same command after a crash or Ctrl-C resumes;
3. the rest run in ``jobs`` processes (``spawn``ed, each building the masker once), or in this process
   when ``jobs`` is 1; a live bar names the item being defaced;
4. each finished item's staged files are renamed into place, then its row is appended to
   ``OUTPUT/pediface-report.csv``; a refused item leaves only ``OUTPUT/quarantine/<item>.json`` (the
   reason, never pixels);
5. the report is rewritten with one row per input, and :class:`Summary` says what happened.

Library output (warnings, banners) and pediface's own log go to ``<data_dir>/logs/``, so the terminal
shows only the bar and the lines meant for a person.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from batch.discover import Discovery, Item, discover
from batch.outputs import (
    DEFACED,
    QUARANTINED,
    SKIPPED,
    Report,
    Row,
    fresh_staging,
    locked,
    place,
    quarantine_note,
    write_derivative_files,
    write_quarantine_note,
)
from batch.process import Defacer, Outcome
from common.files import utcnow
from common.logs import configure as configure_logging
from common.logs import get_logger
from common.progress import make_progress
from config.settings import Settings

log = get_logger("pediface.batch")


@dataclass
class Summary:
    """Counts of one run; ``earlier`` items were finished by a previous run of the same command."""

    images: int = 0
    defaced: int = 0
    quarantined: int = 0
    skipped: int = 0
    earlier: int = 0
    ran: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    report: Path | None = None
    log_file: Path | None = None
    qc_dir: Path | None = None
    key_file: Path | None = None

    @property
    def ok(self) -> bool:
        """Every image item is defaced (skipped non-image files and series do not count)."""
        return self.images > 0 and self.defaced == self.images and not self.interrupted

    def line(self) -> str:
        rate = f", {self.ran / (self.seconds / 60):.1f} items/min" if self.ran and self.seconds > 0 else ""
        earlier = f" ({self.earlier} in an earlier run)" if self.earlier else ""
        stopped = "interrupted: " if self.interrupted else ""
        return (
            f"pediface: {stopped}{self.defaced} of {self.images} images defaced{earlier}, "
            f"{self.quarantined} quarantined, {self.skipped} skipped, in {self.seconds:.0f} s{rate}; "
            f"report {self.report}"
        )


def run_batch(
    input_path: Path,
    output: Path,
    settings: Settings,
    *,
    jobs: int = 1,
    qc: bool = True,
    retry_quarantined: bool = False,
    progress: bool | None = None,
) -> Summary:
    """Deface everything under ``input_path`` into ``output``; see the module docstring.

    Raises
    ------
    FileNotFoundError, ValueError
        If the input does not exist, is not something pediface reads, or ``output`` lies inside it.
    RuntimeError
        If another run is writing into ``output``.
    """
    input_path, output = Path(input_path).resolve(), Path(output).resolve()
    if input_path.is_dir() and (output == input_path or output.is_relative_to(input_path)):
        raise ValueError(f"OUTPUT {output} lies inside INPUT {input_path}: choose a folder outside it")
    if input_path.is_relative_to(output):
        raise ValueError(f"INPUT {input_path} lies inside OUTPUT {output}: choose another OUTPUT")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    started = time.perf_counter()
    log_file = settings.data_dir / "logs" / f"deface-{utcnow():%Y%m%d-%H%M%S}.log"
    configure_logging(settings.log_level, settings.log_format, file=log_file)
    tag = hashlib.sha256(str(output).encode()).hexdigest()[:8]
    summary = Summary(report=output / "pediface-report.csv", log_file=log_file)
    summary.qc_dir = settings.data_dir / "qc" / f"{output.name}-{tag}" if qc else None

    with make_progress(progress) as bar:
        console = bar.console
        task = bar.add_task("reading headers", total=None)
        found = discover(
            input_path, on_file=lambda n: bar.update(task, description=f"reading headers: {n} files")
        )
        bar.remove_task(task)
        with locked(output):
            _run(found, output, settings, summary, jobs, retry_quarantined, bar, console)
    summary.seconds = time.perf_counter() - started
    log.info("batch_finished", **{k: v for k, v in summary.__dict__.items() if isinstance(v, int | float)})
    return summary


def _say(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _run(
    found: Discovery,
    output: Path,
    settings: Settings,
    summary: Summary,
    jobs: int,
    retry_quarantined: bool,
    bar,
    console: Console,
) -> None:  # noqa: ANN001 - rich Progress
    report = Report(output)
    staging = fresh_staging(output)
    for skipped in found.skipped:
        _say(console, f"pediface: skipped {skipped.label}: {skipped.reason}")
        report.rows[skipped.label] = Row(skipped.label, "", skipped.kind, SKIPPED, skipped.reason, 0.0)
    summary.skipped = len(found.skipped)
    summary.images = len(found.items)
    if found.layout == "bids":
        write_derivative_files(output, found.bids_description, found.carried)
    todo: list[tuple[int, Item]] = []
    for index, item in enumerate(found.items):
        earlier = report.done(item.label, output, retry_quarantined=retry_quarantined)
        if earlier is None:
            todo.append((index, item))
            continue
        summary.earlier += 1
        summary.defaced += earlier.verdict == DEFACED
        summary.quarantined += earlier.verdict == QUARANTINED
    if any(item.kind == "dicom" for item in found.items):
        summary.key_file = (
            None
            if settings.deid.secret
            else settings.deid.secret_file or (settings.data_dir / "secrets" / "deid.key")
        )
        settings.deid_key()  # create the key once, here, not in several processes at once
    task = bar.add_task("defacing", total=len(todo))

    def finished(outcome: Outcome, item: Item) -> None:
        _record(outcome, item, output, report)
        summary.ran += 1
        summary.defaced += outcome.verdict == DEFACED
        summary.quarantined += outcome.verdict == QUARANTINED
        if outcome.verdict != DEFACED:
            _say(console, f"pediface: quarantined {item.label}: {outcome.reason}")
        bar.advance(task)

    try:
        if jobs == 1 or len(todo) <= 1:
            defacer = Defacer(settings, staging, summary.qc_dir)
            for index, item in todo:
                bar.update(task, description=f"defacing {item.label}")
                finished(defacer.run(index, item), item)
        else:
            _in_pool(
                todo,
                settings,
                staging,
                summary,
                jobs,
                finished,
                lambda text: bar.update(task, description=text),
            )
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        report.finish([*(item.label for item in found.items), *(s.label for s in found.skipped)])
        shutil.rmtree(staging, ignore_errors=True)
    bar.update(task, description="done")


def _record(outcome: Outcome, item: Item, output: Path, report: Report) -> None:
    """Put a finished item's files in place, then say so in the report (in that order)."""
    if outcome.verdict == DEFACED:
        place(output, outcome.moves)
        report.add(Row(item.label, outcome.output, item.kind, DEFACED, "", outcome.seconds))
        return
    note = quarantine_note(item)
    write_quarantine_note(
        output,
        note,
        {
            "input": item.label,
            "kind": item.kind,
            "code": outcome.code,
            "reason": outcome.reason,
            "at": utcnow().isoformat(),
            "note": "not defaced: nothing of this input was written to OUTPUT",
        },
    )
    report.add(Row(item.label, str(note), item.kind, QUARANTINED, outcome.reason, outcome.seconds))


# -- several processes ------------------------------------------------------------------------------

_defacer: Defacer | None = None


def _start_process(settings: Settings, staging: Path, qc_dir: Path | None, log_file: Path | None) -> None:
    """Pool process start: Ctrl-C is the parent's to handle; log to the run's file; load the masker now."""
    global _defacer
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, settings.log_format, file=log_file)
    _defacer = Defacer(settings, staging, qc_dir)
    try:
        _defacer.masker  # noqa: B018 - once per process, before the first item
    except Exception:  # noqa: BLE001 - each item will then say why it was not defaced
        log.exception("masker_build_failed")


def _run_in_process(index: int, item: Item) -> Outcome:
    assert _defacer is not None, "pool process not started with _start_process"
    return _defacer.run(index, item)


def _in_pool(
    todo: list[tuple[int, Item]],
    settings: Settings,
    staging: Path,
    summary: Summary,
    jobs: int,
    finished: Callable[[Outcome, Item], None],
    describe: Callable[[str], None],
) -> None:
    """Run ``todo`` in ``jobs`` spawned processes; the CPU threads are shared out between them."""
    threads = settings.deface.threads or max(1, (os.cpu_count() or 1) // jobs)
    per_process = settings.model_copy(
        update={"deface": settings.deface.model_copy(update={"threads": threads})}
    )
    # spawn, not fork: torch's thread pool does not survive a fork (see worker.deface.check_masker).
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_process,
        initargs=(per_process, staging, summary.qc_dir, summary.log_file),
    )
    pending: dict[Future, Item] = {pool.submit(_run_in_process, index, item): item for index, item in todo}
    try:
        while pending:
            running = list(pending.values())[:jobs]
            more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
            describe(f"defacing {running[0].label}{more}")
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - a process that died (out of memory, a crash)
                    log.error("pool_process_died", item=item.label, error=repr(exc))
                    outcome = Outcome(
                        -1, QUARANTINED, f"the process defacing it died ({type(exc).__name__})", "internal"
                    )
                finished(outcome, item)
    except KeyboardInterrupt:
        # Stop now: the items in flight are thrown away with the staging folder and run again next time.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
