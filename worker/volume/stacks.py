"""Grouping frames into geometrically consistent stacks, and checking each stack."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset

from common.errors import InputError
from worker.volume.geometry import FrameGeometry, orientation_label, slice_geometries
from worker.volume.read import classify

#: Two orientations closer than this (per direction cosine) are the same (DS values carry rounding).
_ORIENTATION_TOLERANCE = 1e-3


#: Largest relative deviation of one slice gap from the median gap.
_SPACING_TOLERANCE = 0.01


#: Positions closer than this along the normal (mm) are the same slice position.
_POSITION_TOLERANCE = 1e-2


#: Fewest slices in which a face can be found in 3D (checked by the pipeline, per stack).
MIN_SLICES = 8


@dataclass(frozen=True)
class Filtered:
    """An instance deliberately left out of every stack (and not forwarded)."""

    instance_index: int
    kind: str  # "non-image object", "localizer", "derived reformat"
    detail: str  # e.g. the SOP class name; never a header value that could identify anyone


@dataclass(frozen=True)
class Stack:
    """One geometrically consistent stack: its slices sorted along the slice normal."""

    frames: tuple[FrameGeometry, ...]
    slice_spacing: float
    label: str

    @property
    def shape(self) -> tuple[int, int, int]:
        rows, columns = self.frames[0].size
        return (len(self.frames), rows, columns)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(x, y, z) voxel spacing in mm, as :class:`Volume` has it."""
        rows, columns = self.frames[0].pixel_spacing
        return (columns, rows, self.slice_spacing)

    @property
    def direction(self) -> np.ndarray:
        first = self.frames[0]
        return np.column_stack([first.row_cosine, first.column_cosine, first.normal])

    @property
    def orientation(self) -> str:
        """``"ax"``, ``"cor"`` or ``"sag"`` after the slice normal's main axis, ``"-oblique"`` if tilted."""
        return orientation_label(self.frames[0].normal)

    @property
    def instances(self) -> set[int]:
        return {f.source.instance_index for f in self.frames}


@dataclass(frozen=True)
class SeriesStacks:
    """The result of :func:`split_series`: stacks, and the instances set aside with a reason."""

    stacks: list[Stack]
    filtered: list[Filtered] = field(default_factory=list)

    def filtered_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.filtered))


def _orientation_key(frame: FrameGeometry) -> tuple[float, ...]:
    return tuple(np.round(np.concatenate([frame.row_cosine, frame.column_cosine]) / _ORIENTATION_TOLERANCE))


def _offsets(frames: Sequence[FrameGeometry]) -> np.ndarray:
    normal = frames[0].normal
    return np.array([float(f.position @ normal) for f in frames])


def _split_repeats(frames: list[FrameGeometry]) -> list[list[FrameGeometry]]:
    """Separate frames that repeat slice positions into groups that do not."""
    positions = np.round(_offsets(frames) / _POSITION_TOLERANCE).astype(np.int64)
    counts = Counter(positions.tolist())
    if max(counts.values()) == 1:
        return [frames]
    by_acquisition: dict[str, list[FrameGeometry]] = {}
    for frame in frames:
        by_acquisition.setdefault(frame.acquisition, []).append(frame)
    if len(by_acquisition) > 1:
        groups = [by_acquisition[k] for k in sorted(by_acquisition, key=_natural)]
        if all(
            max(Counter(np.round(_offsets(g) / _POSITION_TOLERANCE).tolist()).values()) == 1 for g in groups
        ):
            return groups
    repeats = set(counts.values())
    if len(repeats) != 1:
        raise InputError(
            f"{len(counts)} slice positions are repeated unevenly ({min(repeats)} to {max(repeats)} times): "
            "some repetitions (time points) are incomplete",
            code="input.duplicate_position",
        )
    n = repeats.pop()
    seen: Counter[int] = Counter()
    groups = [[] for _ in range(n)]
    for position, frame in sorted(zip(positions.tolist(), frames, strict=True), key=lambda pf: pf[1].order):
        groups[seen[position]].append(frame)
        seen[position] += 1
    return groups


def _natural(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _describe(key: tuple, frames: Sequence[FrameGeometry], repeat: int | None) -> str:
    parts = [orientation_label(frames[0].normal)]
    kind = key[1][0] if isinstance(key[1], tuple) and key[1] else ""
    if kind == "mosaic":
        parts.append(f"mosaic of instance {key[1][1] + 1}")
    elif kind in ("classic", "enhanced"):
        names = (
            ("echo", "temporal position", "b-value")
            if kind == "classic"
            else ("echo time", "temporal position", "stack", "b-value")
        )
        parts += [f"{n} {v}" for n, v in zip(names, key[1][1:], strict=False) if v]
    if repeat is not None:
        parts.append(f"repetition {repeat + 1}")
    return ", ".join(parts)


def check_stack(frames: Sequence[FrameGeometry], label: str) -> tuple[list[FrameGeometry], float]:
    """Sort a stack's frames along the slice normal and check that they form a regular grid.

    Returns the sorted frames and the slice spacing (mm).
    """
    first = frames[0]
    normal = first.normal
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    if len(ordered) == 1:
        return ordered, float(first.slice_spacing or 1.0)
    offsets = np.array([float(f.position @ normal) for f in ordered])
    gaps = np.diff(offsets)
    if np.any(gaps < 1e-3):
        raise InputError(
            f"stack {label}: two frames lie at the same position", code="input.duplicate_position"
        )
    spacing = float(np.median(gaps)) if first.slice_spacing is None else float(first.slice_spacing)
    if np.max(np.abs(gaps - spacing)) > _SPACING_TOLERANCE * spacing + 1e-3:
        steps = gaps / spacing
        if np.all(np.abs(steps - np.round(steps)) <= _SPACING_TOLERANCE * np.round(steps) + 1e-3 / spacing):
            missing = int(np.sum(np.round(steps) - 1))
            raise InputError(
                f"stack {label}: {missing} slice(s) missing ({len(ordered)} present, "
                f"{len(ordered) + missing} expected at {spacing:.2f} mm spacing)",
                code="input.missing_slices",
            )
        raise InputError(
            f"stack {label}: slice gaps vary from {gaps.min():.3f} to {gaps.max():.3f} mm "
            "(non-uniform spacing)",
            code="input.spacing",
        )
    # Positions must step along the normal; a sideways drift means gantry tilt / shear.
    drift = (offsets[-1] - offsets[0]) * normal - (ordered[-1].position - ordered[0].position)
    if np.linalg.norm(drift) > 0.01 * abs(offsets[-1] - offsets[0]) + 0.1:
        raise InputError(
            f"stack {label}: slices are sheared (gantry tilt): positions do not follow the slice normal",
            code="input.tilt",
        )
    return ordered, spacing


def split_series(datasets: Sequence[Dataset]) -> SeriesStacks:
    """Stacks of a series, and the instances deliberately set aside (with their reason)."""
    filtered: list[Filtered] = []
    images: list[int] = []
    for index, ds in enumerate(datasets):
        why = classify(ds)
        if why is None:
            images.append(index)
        else:
            filtered.append(Filtered(index, *why))
    frames = slice_geometries(datasets, images)
    groups: dict[tuple, list[FrameGeometry]] = {}
    for frame in frames:
        groups.setdefault((_orientation_key(frame), frame.stack_key), []).append(frame)
    stacks: list[Stack] = []
    for key, members in groups.items():
        parts = _split_repeats(members)
        for repeat, part in enumerate(parts):
            label = _describe(key, part, repeat if len(parts) > 1 else None)
            ordered, spacing = check_stack(part, label)
            stacks.append(Stack(tuple(ordered), spacing, label))
    stacks.sort(key=lambda s: min(f.order for f in s.frames))
    return SeriesStacks(stacks, filtered)


def split_stacks(datasets: Sequence[Dataset]) -> list[Stack]:
    """The geometrically consistent stacks of a series (see :func:`split_series`)."""
    return split_series(datasets).stacks
