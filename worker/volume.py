"""From the instances of a series to one geometrically consistent volume.

Each frame (a classic single-frame instance, or one frame of an enhanced
multi-frame instance) is placed by its own Image Position / Orientation
(Patient), so the volume's geometry is DICOM's LPS patient space and every
z-slice remembers which instance and frame it came from (:class:`SliceSource`).

What is not a single regular 3D stack is refused with an :class:`InputError`
that says why; the worker quarantines it. Splitting series into several stacks
(echoes, time points, localizers) is deliberately left to a later step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from pediface.errors import InputError
from worker.types import SliceSource, Volume

#: Two orientations or spacings closer than this are the same (DS values carry rounding).
_ORIENTATION_TOLERANCE = 1e-3
#: Largest relative deviation of one slice gap from the median gap.
_SPACING_TOLERANCE = 0.01
MIN_SLICES = 8


@dataclass(frozen=True)
class FrameGeometry:
    """Where one 2D frame lies in patient space."""

    source: SliceSource
    position: np.ndarray  # ImagePositionPatient: centre of the first pixel, mm
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    stack_key: tuple  # frames with different keys belong to different stacks


def read_instances(paths: Sequence[Path]) -> list[Dataset]:
    """Read every file of a series; an unreadable one is an :class:`InputError` naming the file."""
    datasets = []
    for path in paths:
        try:
            datasets.append(dcmread(path))
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise InputError(
                f"{path.name} is not a readable DICOM file: {exc}", code="input.unreadable"
            ) from exc
    if not datasets:
        raise InputError("the series has no instances", code="input.empty")
    return datasets


def _floats(values: object, count: int, what: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is missing or not numeric", code="input.geometry") from exc
    if array.shape != (count,) or not np.all(np.isfinite(array)):
        raise InputError(f"{what} must have {count} finite values", code="input.geometry")
    return array


def _nested(ds: Dataset, sequence: str, attribute: str) -> object:
    items = ds.get(sequence)
    if items:
        return items[0].get(attribute)
    return None


def frame_geometries(datasets: Sequence[Dataset]) -> list[FrameGeometry]:
    """The geometry of every frame of every instance."""
    frames: list[FrameGeometry] = []
    for index, ds in enumerate(datasets):
        if "PixelData" not in ds:
            raise InputError(f"instance {index + 1} has no Pixel Data", code="input.no_pixels")
        n_frames = int(ds.get("NumberOfFrames") or 1)
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        for frame in range(n_frames):
            if per_frame is not None:
                if len(per_frame) != n_frames:
                    raise InputError(
                        f"instance {index + 1} has {n_frames} frames but {len(per_frame)} per-frame groups",
                        code="input.geometry",
                    )
                groups = per_frame[frame]

                def find(
                    sequence: str, attribute: str, groups: Dataset = groups, shared: Dataset = shared
                ) -> object:
                    value = _nested(groups, sequence, attribute)
                    return value if value is not None else _nested(shared, sequence, attribute)

                position = find("PlanePositionSequence", "ImagePositionPatient")
                orientation = find("PlaneOrientationSequence", "ImageOrientationPatient")
                spacing = find("PixelMeasuresSequence", "PixelSpacing")
                echo = find("MREchoSequence", "EffectiveEchoTime")
                temporal = find("FrameContentSequence", "TemporalPositionIndex")
                stack_key: tuple = (echo, temporal)
            else:
                position = ds.get("ImagePositionPatient")
                orientation = ds.get("ImageOrientationPatient")
                spacing = ds.get("PixelSpacing")
                stack_key = (
                    str(ds.get("EchoNumbers", "")),
                    str(ds.get("TemporalPositionIdentifier", "")),
                    str(ds.get("DiffusionBValue", "")),
                )
            if position is None or orientation is None or spacing is None:
                raise InputError(
                    f"instance {index + 1} frame {frame + 1} lacks Image Position/Orientation (Patient) "
                    "or Pixel Spacing: its place in the head is unknown",
                    code="input.geometry",
                )
            iop = _floats(orientation, 6, "ImageOrientationPatient")
            row, col = iop[:3], iop[3:]
            if (
                abs(np.linalg.norm(row) - 1) > 0.01
                or abs(np.linalg.norm(col) - 1) > 0.01
                or abs(row @ col) > 0.01
            ):
                raise InputError(
                    "ImageOrientationPatient is not two orthonormal vectors", code="input.geometry"
                )
            ps = _floats(spacing, 2, "PixelSpacing")
            if np.any(ps <= 0):
                raise InputError("PixelSpacing must be positive", code="input.geometry")
            frames.append(
                FrameGeometry(
                    source=SliceSource(index, frame),
                    position=_floats(position, 3, "ImagePositionPatient"),
                    row_cosine=row / np.linalg.norm(row),
                    column_cosine=col / np.linalg.norm(col),
                    pixel_spacing=(float(ps[0]), float(ps[1])),
                    stack_key=stack_key,
                )
            )
    return frames


def _orientation_key(frame: FrameGeometry) -> tuple[float, ...]:
    return tuple(np.round(np.concatenate([frame.row_cosine, frame.column_cosine]) / _ORIENTATION_TOLERANCE))


def stack_frames(frames: Sequence[FrameGeometry]) -> tuple[list[FrameGeometry], float]:
    """Frames of one regular stack sorted along the slice normal, and the slice spacing (mm)."""
    stacks: dict[tuple, list[FrameGeometry]] = {}
    for frame in frames:
        stacks.setdefault((_orientation_key(frame), frame.stack_key), []).append(frame)
    if len(stacks) > 1:
        raise InputError(
            f"the series holds {len(stacks)} stacks (different orientations, echoes or time points); "
            "multi-stack series are not processed yet",
            code="input.multi_stack",
        )
    first = frames[0]
    if any(f.pixel_spacing != first.pixel_spacing for f in frames):
        raise InputError("frames of the series have different Pixel Spacing", code="input.geometry")
    normal = np.cross(first.row_cosine, first.column_cosine)
    ordered = sorted(frames, key=lambda f: float(f.position @ normal))
    if len(ordered) < MIN_SLICES:
        raise InputError(
            f"the series has {len(ordered)} slices; at least {MIN_SLICES} are needed to find a face in 3D",
            code="input.too_few_slices",
        )
    offsets = np.array([f.position @ normal for f in ordered])
    gaps = np.diff(offsets)
    if np.any(gaps < 1e-3):
        raise InputError(
            "two or more frames lie at the same position (repeated acquisitions or time points)",
            code="input.duplicate_position",
        )
    spacing = float(np.median(gaps))
    if np.max(np.abs(gaps - spacing)) > _SPACING_TOLERANCE * spacing + 1e-3:
        raise InputError(
            f"slice gaps vary from {gaps.min():.3f} to {gaps.max():.3f} mm (missing slices or non-uniform "
            "spacing)",
            code="input.spacing",
        )
    # Positions must step along the normal; a sideways drift means gantry tilt / shear.
    drift = (offsets[-1] - offsets[0]) * normal - (ordered[-1].position - ordered[0].position)
    if np.linalg.norm(drift) > 0.01 * abs(offsets[-1] - offsets[0]) + 0.1:
        raise InputError(
            "slices are sheared (gantry tilt): positions do not follow the slice normal", code="input.tilt"
        )
    return ordered, spacing


def frame_pixels(ds: Dataset) -> np.ndarray:
    """Stored values of an instance as ``(frames, rows, columns)``, decoded if compressed."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise InputError("colour images cannot be defaced", code="input.colour")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"pixel data cannot be decoded: {exc}", code="input.pixels") from exc
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    return pixels


def build_volume(datasets: Sequence[Dataset]) -> Volume:
    """One 3D volume of stored values in LPS geometry from the instances of a series."""
    frames = frame_geometries(datasets)
    ordered, slice_spacing = stack_frames(frames)
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(shapes) != 1:
        raise InputError("instances of the series have different Rows/Columns", code="input.geometry")
    decoded: dict[int, np.ndarray] = {}
    slices = []
    for frame in ordered:
        index = frame.source.instance_index
        if index not in decoded:
            decoded[index] = frame_pixels(datasets[index])
        slices.append(decoded[index][frame.source.frame_index])
    array = np.stack(slices)
    first = ordered[0]
    normal = np.cross(first.row_cosine, first.column_cosine)
    # Columns of the direction matrix are the x (along a row), y (down a column) and z axes.
    direction = np.column_stack([first.row_cosine, first.column_cosine, normal])
    return Volume(
        array=array,
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], slice_spacing),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),  # type: ignore[arg-type]
        sources=tuple(f.source for f in ordered),
    )
