"""What the pipeline is doing now, read from the spool: for ``pediface status`` and the web console.

:func:`snapshot` lists every series the spool knows (still receiving, queued,
processing, sent, quarantined) with counts and timings; :func:`status_table`
prints it as text. Only pseudonymous identifiers are collected (job ids, series
keys, output series UIDs) plus the calling AE title, which callers show only
with the honest-broker permission. No DICOM header is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from config.settings import Settings
from spool.manifest import Delivery, JobManifest, JobState, StateChange
from spool.store import Spool

_UID_LIKE = re.compile(r"\b[0-9]+(?:\.[0-9]+){4,}\b")


def redact_uids(text: str) -> str:
    """Replace anything that looks like a DICOM UID (the original ones are PHI-adjacent) with ``[UID]``."""
    return _UID_LIKE.sub("[UID]", text)


class Phase(StrEnum):
    """Where a series is, as a person sees it."""

    receiving = "receiving"  # spool/incoming/: instances still arriving
    queued = "queued"  # spool/jobs/, sealed or dispatched: waiting for a worker
    processing = "processing"
    sent = "sent"
    quarantined = "quarantined"
    dropped = "dropped"  # deliberately not processed (a routing rule)


_PHASE_OF_STATE = {  # by value, so that a state added to JobState later shows as itself if it is a Phase
    "sealed": Phase.queued,
    "dispatched": Phase.queued,
    "masked": Phase.processing,
    "written": Phase.processing,
    "checked": Phase.processing,
    "deidentified": Phase.processing,
}


def phase_of(state: JobState | str) -> Phase | None:
    value = state.value if isinstance(state, JobState) else str(state)
    if value in _PHASE_OF_STATE:
        return _PHASE_OF_STATE[value]
    return Phase(value) if value in Phase.__members__ else None


FINAL = (Phase.sent, Phase.quarantined, Phase.dropped)


@dataclass
class SeriesRow:
    """One line of the series list. ``job_id`` is ``None`` while the series is still receiving."""

    phase: Phase
    series_key: str
    job_id: str | None
    calling_ae: str
    n_instances: int
    started_at: datetime | None  # first arrival (receiving) or sealing (jobs)
    changed_at: datetime | None  # last arrival or last state change
    n_sent: int = 0
    attempts: int = 0
    reason: str | None = None
    reason_code: str | None = None
    output_series_uid: str | None = None
    history: list[StateChange] = field(default_factory=list)
    has_qc: bool = False
    deliveries: dict[str, str] = field(default_factory=dict)  # destination -> "sent 176", "failed 3x", ...
    timings: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage

    @property
    def duration_s(self) -> float | None:
        """Seconds from sealing to the final state (finished jobs) or to now (open ones)."""
        if self.started_at is None:
            return None
        if self.phase in FINAL and self.changed_at is not None:
            end = self.changed_at
        else:
            end = datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def idle_s(self) -> float | None:
        """Seconds since the last arrival or state change."""
        if self.changed_at is None:
            return None
        return max(0.0, (datetime.now(UTC) - self.changed_at).total_seconds())


def _receiving(spool: Spool) -> Iterator[SeriesRow]:
    for entry in _scandir(spool.incoming):
        if not entry.is_dir():
            continue
        folder = Path(entry.path)
        try:
            n = sum(1 for f in os.scandir(folder) if f.name.endswith(".dcm"))
            last = datetime.fromtimestamp(folder.stat().st_mtime, UTC)
        except FileNotFoundError:  # sealed while we looked
            continue
        source: dict = {}
        with contextlib.suppress(OSError, ValueError):
            source = json.loads((folder / "source.json").read_text(encoding="utf-8"))
        first = None
        with contextlib.suppress(TypeError, ValueError):
            first = datetime.fromisoformat(source["first_arrival"])
        yield SeriesRow(
            phase=Phase.receiving,
            series_key=entry.name,
            job_id=None,
            calling_ae=str(source.get("calling_ae", "")),
            n_instances=n,
            started_at=first,
            changed_at=last,
        )


def _scandir(folder: Path) -> list[os.DirEntry]:
    try:
        return sorted(os.scandir(folder), key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _manifests(folder: Path) -> Iterator[tuple[JobManifest, Path]]:
    """Manifests of one stage; a job that moves while we look is skipped (the next look sees it)."""
    for entry in _scandir(folder):
        path = Path(entry.path) / "job.json"
        try:
            yield JobManifest.model_validate_json(path.read_bytes()), Path(entry.path)
        except (FileNotFoundError, NotADirectoryError, ValidationError):
            continue


def row_of(manifest: JobManifest, job_dir: Path | None = None) -> SeriesRow:
    last = manifest.history[-1].at if manifest.history else manifest.created_at
    return SeriesRow(
        phase=phase_of(manifest.state) or Phase.queued,
        series_key=manifest.series_key,
        job_id=manifest.job_id,
        calling_ae=manifest.calling_ae,
        n_instances=manifest.n_instances,
        started_at=manifest.created_at,
        changed_at=last,
        n_sent=manifest.n_sent,
        attempts=manifest.attempts,
        reason=redact_uids(manifest.reason) if manifest.reason else None,
        reason_code=manifest.reason_code,
        output_series_uid=manifest.output_series_uid,
        history=[
            StateChange(state=change.state, at=change.at, note=redact_uids(change.note))
            for change in manifest.history
        ],
        has_qc=job_dir is not None and (job_dir / "qc.png").is_file(),
        deliveries={name: _delivery_text(d) for name, d in manifest.deliveries.items()},
        timings=dict(manifest.timings),
    )


def _delivery_text(delivery: Delivery) -> str:
    if delivery.state == "sent":
        return f"sent {delivery.n_sent}"
    if delivery.state == "failed":
        return f"failed {delivery.failures}x, retrying"
    return "pending"


def snapshot(spool: Spool) -> list[SeriesRow]:
    """Every series the spool knows, newest change first."""
    rows = list(_receiving(spool))
    for stage in (spool.jobs, spool.done, spool.quarantine_dir):
        rows.extend(row_of(manifest, job_dir) for manifest, job_dir in _manifests(stage))
    epoch = datetime.min.replace(tzinfo=UTC)
    rows.sort(key=lambda r: r.changed_at or epoch, reverse=True)
    return rows


def count_by_phase(rows: Iterable[SeriesRow]) -> dict[Phase, int]:
    counts = {phase: 0 for phase in Phase}
    for row in rows:
        counts[row.phase] += 1
    return counts


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600:02d} h"


def format_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned text table (no box drawing, so it survives any terminal and log)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return "\n".join(out)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_table(settings: Settings, failures: int = 10) -> str:
    """``pediface status``: queue depth, open series, jobs by state and the last failures, as text."""
    from spool.broker import queue_depth  # celery: only when asked

    spool = Spool(settings.data_dir)
    rows = snapshot(spool)
    depth = queue_depth(settings)
    counts = count_by_phase(rows)
    out = [
        f"spool        {spool.root}",
        f"broker       {'embedded (folder)' if settings.embedded_broker else 'external'}",
        f"queue depth  {depth if depth is not None else 'unknown (broker not reachable)'}",
        "",
        "Series by state",
        text_table(["state", "series"], [[phase.value, str(counts[phase])] for phase in Phase]),
        "",
    ]
    receiving = [r for r in rows if r.phase == Phase.receiving]
    out.append(f"Open series ({len(receiving)})")
    if receiving:
        out.append(
            text_table(
                ["series key", "instances", "first arrival (UTC)", "quiet for"],
                [
                    [r.series_key, str(r.n_instances), format_time(r.started_at), format_duration(r.idle_s)]
                    for r in receiving
                ],
            )
        )
    else:
        out.append("none")
    out.append("")
    active = [r for r in rows if r.phase in (Phase.queued, Phase.processing)]
    out.append(f"Queued and processing ({len(active)})")
    if active:
        out.append(
            text_table(
                ["job", "state", "instances", "since"],
                [
                    [r.job_id or "", r.phase.value, str(r.n_instances), format_duration(r.duration_s)]
                    for r in active
                ],
            )
        )
    else:
        out.append("none")
    out.append("")
    failed = [r for r in rows if r.phase == Phase.quarantined][:failures]
    out.append(f"Last {failures} failures (quarantined)")
    if failed:
        out.append(
            text_table(
                ["job", "when (UTC)", "code", "instances", "reason"],
                [
                    [
                        r.job_id or "",
                        format_time(r.changed_at),
                        r.reason_code or "-",
                        str(r.n_instances),
                        _shorten(r.reason or "", 80),
                    ]
                    for r in failed
                ],
            )
        )
    else:
        out.append("none")
    return "\n".join(out) + "\n"
