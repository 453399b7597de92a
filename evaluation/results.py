"""The rows of an evaluation and how they are reported (Markdown tables for docs/defacing.md, JSON)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evaluation.metrics import SKIN_DEPTH_MM
from worker.render import VIEWS


@dataclass
class ViewResult:
    before: bool
    after: bool | None  # None: the masker refused, nothing was sent
    before_scores: dict[str, int] = field(default_factory=dict)
    after_scores: dict[str, int] = field(default_factory=dict)


@dataclass
class Result:
    """One head (or synthetic head) defaced by one masker."""

    head: str
    kind: str  # nifti, dicom, negative, synthetic
    masker: str
    held_out: bool
    outcome: str  # "ok" or "refused (<code>)"
    seconds: float | None = None
    views: dict[str, ViewResult] = field(default_factory=dict)
    # Shares of the teacher's (synthetic: known) ear and face labels removed: at the background after
    # defacing (evaluation.metrics.at_background; synthetic heads: under the mask).
    ear_fraction: float | None = None
    face_fraction: float | None = None
    over_blanked: float | None = None  # blanked near the head outside face+ears, share of face+ears
    temporalis_changed: int | None = None  # voxels changed inside the carried temporalis region
    brain_changed: int | None = None
    brain_changed_ml: float | None = None
    brain_changed_deep: int | None = None  # of those, more than SKIN_DEPTH_MM under the skin
    nonzero_lost: float | None = None
    blanked_ml: float | None = None
    contrast: str = ""
    age_band: str = ""  # synthetic heads of an age band (evaluation.heads.AGE_BANDS)
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in list(data.items()):
            if isinstance(value, float) and math.isnan(value):
                data[key] = None
        return data


def _pct(value: float | None, digits: int = 1) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.{digits}f} %"
    )


def _face_cell(view: ViewResult | None) -> str:
    if view is None:
        return "n/a"
    if not view.before:
        return "n.d."
    if view.after is None:
        return "yes → refused"
    return "yes → **yes**" if view.after else "yes → no"


def markdown(results: Sequence[Result]) -> str:
    """The results as Markdown tables: real heads, negative controls, synthetic heads by contrast."""
    lines = []
    real = [r for r in results if r.kind in ("nifti", "dicom")]
    if real:
        lines += [
            "| head | held out | masker | outcome | s | face front | face left 45 | face right 45 "
            "| teacher face removed | teacher ears removed | over-blanking | temporalis voxels changed "
            f"| brain voxels changed | of which > {SKIN_DEPTH_MM:.0f} mm under the skin |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in real:
            lines.append(
                f"| {r.head}{' (DICOM)' if r.kind == 'dicom' else ''} "
                f"| {'yes' if r.held_out else 'no (trained on)'} "
                f"| {r.masker} | {r.outcome} | {_num(r.seconds, 1)} | "
                + " | ".join(_face_cell(r.views.get(v)) for v in VIEWS)
                + f" | {_pct(r.face_fraction)} | {_pct(r.ear_fraction)} | {_pct(r.over_blanked)}"
                + f" | {_num(r.temporalis_changed, 0)} | {_num(r.brain_changed, 0)}"
                + f" | {_num(r.brain_changed_deep, 0)} |"
            )
    negatives = [r for r in results if r.kind == "negative"]
    if negatives:
        lines += [
            "",
            "| negative control | masker | outcome | s | non-zero voxels lost "
            "| faces detected before (front) |",
            "|---|---|---|---|---|---|",
        ]
        for r in negatives:
            front = r.views.get("front")
            lines.append(
                f"| {r.head} | {r.masker} | {r.outcome} | {_num(r.seconds, 1)} | {_pct(r.nonzero_lost, 3)} "
                f"| {'yes' if front and front.before else 'no'} |"
            )
    synthetic = [r for r in results if r.kind == "synthetic" and not r.age_band]
    if synthetic:
        lines += [
            "",
            "| synthetic contrast | masker | heads | refused | face label removed (mean) "
            "| ears removed (mean) | ears removed (lowest) | over-blanking (highest) "
            "| face detectable before (front) | face detected after (front) | s (median) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple[str, str], list[Result]] = {}
        for r in synthetic:
            groups.setdefault((r.contrast, r.masker), []).append(r)
        for (contrast, masker), rows in groups.items():
            ok, detectable, after = _outcomes(rows)
            lines.append(
                f"| {contrast} | {masker} | {len(rows)} | {len(rows) - len(ok)} "
                f"| {_pct(_mean(r.face_fraction for r in ok))} | {_pct(_mean(r.ear_fraction for r in ok))} "
                f"| {_pct(_extreme(min, (r.ear_fraction for r in ok)))} "
                f"| {_pct(_extreme(max, (r.over_blanked for r in ok)))} "
                f"| {len(detectable)} of {len(rows)} | {len(after)} of {len(detectable)} "
                f"| {_num(_median(r.seconds for r in rows), 1)} |"
            )
    banded = [r for r in results if r.kind == "synthetic" and r.age_band]
    if banded:
        lines += ["", *_band_table(banded)]
    return "\n".join(lines) + "\n"


def _band_table(results: Sequence[Result]) -> list[str]:
    """Synthetic heads by age band and contrast, then all contrasts of the band together."""
    lines = [
        "| age band | head scale | contrast | masker | heads | refused | face label removed (mean) "
        "| ears removed (mean) | over-blanking (highest) "
        f"| brain voxels changed (> {SKIN_DEPTH_MM:.0f} mm under the skin) "
        "| face detectable before (front) | face detected after (front) | s (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bands: dict[str, dict[str, list[Result]]] = {}
    for r in results:
        bands.setdefault(r.age_band, {}).setdefault(r.masker, []).append(r)
    for band, maskers in bands.items():
        for masker, rows in maskers.items():
            by_contrast: dict[str, list[Result]] = {}
            for r in rows:
                by_contrast.setdefault(r.contrast, []).append(r)
            groups = list(by_contrast.items())
            if len(groups) > 1:
                groups.append(("all", rows))
            for contrast, group in groups:
                lines.append(f"| {band} | {_scales(group)} | {contrast} | {masker} | " + _band_cells(group))
    return lines


def _outcomes(rows: Sequence[Result]) -> tuple[list[Result], list[Result], list[Result]]:
    """The heads of ``rows`` defaced, those with a face detectable from the front before, and of those
    the ones with a face still detected after."""
    ok = [r for r in rows if r.outcome == "ok"]
    detectable = [r for r in rows if r.views.get("front") and r.views["front"].before]
    return ok, detectable, [r for r in detectable if r.views["front"].after]


def _band_cells(rows: Sequence[Result]) -> str:
    ok, detectable, after = _outcomes(rows)
    brain = [r.brain_changed for r in rows if r.brain_changed is not None]
    deep = [r.brain_changed_deep for r in rows if r.brain_changed_deep is not None]
    brain_cell = f"{sum(brain)} ({sum(deep)})" if brain else "n/a"
    return (
        f"{len(rows)} | {len(rows) - len(ok)} | {_pct(_mean(r.face_fraction for r in ok))} "
        f"| {_pct(_mean(r.ear_fraction for r in ok))} | {_pct(_extreme(max, (r.over_blanked for r in ok)))} "
        f"| {brain_cell} | {len(detectable)} of {len(rows)} | {len(after)} of {len(detectable)} "
        f"| {_num(_median(r.seconds for r in rows), 1)} |"
    )


def _scales(rows: Sequence[Result]) -> str:
    """The drawn head scales of ``rows`` (1 = the adult source head): one value, or lowest-highest."""
    drawn = sorted(float(r.params["scale"]) for r in rows if "scale" in r.params)
    if not drawn:
        return "n/a"
    low, high = f"{drawn[0]:.2f}", f"{drawn[-1]:.2f}"
    return low if low == high else f"{low}-{high}"


def _num(value: float | int | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(kept) if kept else None


def _extreme(pick: Any, values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return pick(kept) if kept else None


def _median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def to_json(results: Sequence[Result], meta: dict[str, Any]) -> str:
    """Results and run context (date, machine, parameters) as JSON."""
    return json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=1)
