"""From the instances of a series to geometrically consistent stacks and volumes.

A series as a scanner sends it is not always one 3D stack. :func:`split_series`
first sets aside, deliberately and with a reason, the objects that are not part
of any volume (non-image objects such as Raw Data or presentation states,
localizers / scouts, derived reformats), then groups every remaining frame into
stacks:

* by orientation, frame size and pixel spacing;
* by echo, temporal position, b-value (and Enhanced MR stack ID);
* a Siemens mosaic instance is a stack of its own: each tile is a slice placed
  with the geometry documented for mosaics (tile grid ``ceil(sqrt(N))``,
  Image Position of the whole mosaic moved by half the size difference between
  mosaic and tile, slices stepping along the CSA ``SliceNormalVector`` by the
  slice spacing);
* positions repeated within a group are separated by Acquisition Number when
  that resolves them, otherwise by order of acquisition (GE writes the time
  points of an fMRI run as repeated positions in one series).

Each stack is then checked: slices in a line along the slice normal (gantry
tilt is refused), regular spacing (missing slices are named with their count,
non-uniform spacing is refused). Anything inconsistent raises an
:class:`InputError` that says why, without header values that could identify
anyone; the worker quarantines the series.

A volume (:func:`stack_volume`) holds the stored values of one stack in LPS
geometry, and every z-slice remembers the instance, frame and (for mosaics)
tile it came from, so that a mask maps back to the original pixels.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pediface.errors import InputError
from worker.types import SliceSource, Volume

#: Two orientations closer than this (per direction cosine) are the same (DS values carry rounding).
_ORIENTATION_TOLERANCE = 1e-3
#: Largest relative deviation of one slice gap from the median gap.
_SPACING_TOLERANCE = 0.01
#: Positions closer than this along the normal (mm) are the same slice position.
_POSITION_TOLERANCE = 1e-2
#: Fewest slices in which a face can be found in 3D (checked by the pipeline, per stack).
MIN_SLICES = 8

#: ImageType values (any position) that mark a localizer / scout.
_LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "LOCALISER"}
#: ImageType values that mark a derived reformat or projection rather than acquired slices.
_REFORMAT_TYPES = {"MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "MINIP", "CPR", "CURVED", "VOLUME RENDER"}


@dataclass(frozen=True)
class MosaicSource(SliceSource):
    """A slice stored as one tile of a Siemens mosaic frame.

    The tile's top-left pixel is at ``(row, column)`` = ``(tile // tiles_per_row * tile_rows,
    tile % tiles_per_row * tile_columns)`` of the frame.
    """

    tile: int = 0
    tiles_per_row: int = 1
    tile_rows: int = 0
    tile_columns: int = 0

    @property
    def window(self) -> tuple[slice, slice]:
        """The tile's rows and columns within its mosaic frame."""
        r0 = (self.tile // self.tiles_per_row) * self.tile_rows
        c0 = (self.tile % self.tiles_per_row) * self.tile_columns
        return slice(r0, r0 + self.tile_rows), slice(c0, c0 + self.tile_columns)


@dataclass(frozen=True)
class FrameGeometry:
    """Where one 2D slice (a frame, or a mosaic tile) lies in patient space."""

    source: SliceSource
    position: np.ndarray  # ImagePositionPatient: centre of the first pixel, mm
    row_cosine: np.ndarray  # direction of increasing column index
    column_cosine: np.ndarray  # direction of increasing row index
    pixel_spacing: tuple[float, float]  # (between rows, between columns), mm
    stack_key: tuple  # frames with different keys belong to different stacks
    size: tuple[int, int] = (0, 0)  # (rows, columns) of the slice
    order: tuple = ()  # acquisition order (instance number, instance, frame)
    acquisition: str = ""  # Acquisition Number, to separate repeated positions
    slice_spacing: float | None = None  # known slice spacing (mosaics), mm

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)


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


def orientation_label(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    name = ("sag", "cor", "ax")[axis]
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[axis])))))
    return f"{name}-oblique {angle:.0f}deg" if angle >= 0.5 else name


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


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value)


# --- filtering -------------------------------------------------------------------------------


def classify(ds: Dataset) -> tuple[str, str] | None:
    """Why an instance is not part of any stack (``(kind, detail)``), or None if it is an image to deface."""
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        name = sop_class.name if sop_class else "unknown SOP class"
        return "non-image object", name
    image_type = {str(v).upper().strip() for v in (ds.get("ImageType") or [])}
    if image_type & _LOCALIZER_TYPES:
        return "localizer", "ImageType " + "/".join(sorted(image_type & _LOCALIZER_TYPES))
    if image_type & _REFORMAT_TYPES and "DERIVED" in image_type:
        return "derived reformat", "ImageType " + "/".join(sorted(image_type & _REFORMAT_TYPES))
    return None


# --- Siemens mosaic --------------------------------------------------------------------------


def parse_csa(raw: bytes) -> dict[str, list[str]]:
    """Tags of a Siemens CSA header (SV10 or the older layout): name -> non-empty item strings.

    The layout is little endian whatever the file's transfer syntax: an 8-byte ``SV10\\4\\3\\2\\1``
    signature (SV10 only), the tag count and an unused word, then per tag a 64-byte name, VM,
    4-byte VR, SyngoDT, item count and a check word, and per item four words (the second is the
    length) followed by the value padded to 4 bytes.
    """
    tags: dict[str, list[str]] = {}
    offset = 8 if raw[:4] == b"SV10" else 0
    try:
        n_tags = struct.unpack_from("<I", raw, offset)[0]
        offset += 8
        if not 0 < n_tags <= 1000:
            return tags
        for _ in range(n_tags):
            name = raw[offset : offset + 64].split(b"\0", 1)[0].decode("ascii", "replace")
            n_items = struct.unpack_from("<i", raw, offset + 76)[0]
            offset += 84
            items = []
            for _ in range(n_items):
                length = struct.unpack_from("<4i", raw, offset)[1]
                offset += 16
                value = raw[offset : offset + length].split(b"\0", 1)[0].decode("ascii", "replace").strip()
                offset += (length + 3) // 4 * 4
                if value:
                    items.append(value)
            tags[name] = items
    except (struct.error, UnicodeDecodeError):
        return tags
    return tags


def _private_value(ds: Dataset, group: int, creator: str, element: int) -> object:
    try:
        block = ds.private_block(group, creator)
        return block[element].value
    except KeyError:
        return None


def _mosaic_info(ds: Dataset) -> tuple[int, np.ndarray | None] | None:
    """``(NumberOfImagesInMosaic, SliceNormalVector or None)`` for a Siemens mosaic, else None."""
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    if "MOSAIC" not in image_type:
        return None
    csa: dict[str, list[str]] = {}
    raw = _private_value(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)
    if isinstance(raw, bytes):
        csa = parse_csa(raw)
    count: object = None
    if csa.get("NumberOfImagesInMosaic"):
        count = csa["NumberOfImagesInMosaic"][0]
    else:
        count = _private_value(ds, 0x0019, "SIEMENS MR HEADER", 0x0A)
        if isinstance(count, bytes) and len(count) >= 2:
            order = "little" if ds.original_encoding[1] in (None, True) else "big"
            count = int.from_bytes(count[:2], order)
    try:
        n = int(float(count))  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InputError(
            "a Siemens mosaic lacks NumberOfImagesInMosaic: its slices cannot be separated",
            code="input.mosaic",
        ) from exc
    normal = None
    values = csa.get("SliceNormalVector")
    if values and len(values) == 3:
        normal = np.array([float(v) for v in values])
        normal /= np.linalg.norm(normal)
    return n, normal


# --- frames ----------------------------------------------------------------------------------


def _frame_geometry(
    ds: Dataset, index: int, frame: int, position: object, orientation: object, spacing: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
    if position is None or orientation is None or spacing is None:
        raise InputError(
            f"instance {index + 1} frame {frame + 1} lacks Image Position/Orientation (Patient) "
            "or Pixel Spacing: its place in the head is unknown",
            code="input.geometry",
        )
    iop = _floats(orientation, 6, "ImageOrientationPatient")
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise InputError("ImageOrientationPatient is not two orthonormal vectors", code="input.geometry")
    ps = _floats(spacing, 2, "PixelSpacing")
    if np.any(ps <= 0):
        raise InputError("PixelSpacing must be positive", code="input.geometry")
    return (
        _floats(position, 3, "ImagePositionPatient"),
        row / np.linalg.norm(row),
        col / np.linalg.norm(col),
        (float(ps[0]), float(ps[1])),
    )


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0.0


def frame_geometries(
    datasets: Sequence[Dataset], indices: Sequence[int] | None = None
) -> list[FrameGeometry]:
    """The geometry of every frame of the given instances (default: all), as the headers give it.

    A Siemens mosaic is one frame here; :func:`slice_geometries` cuts it into its slices.
    """
    frames: list[FrameGeometry] = []
    for index in range(len(datasets)) if indices is None else indices:
        ds = datasets[index]
        if "PixelData" not in ds:
            raise InputError(f"instance {index + 1} has no Pixel Data", code="input.no_pixels")
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        number = _instance_number(ds)
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
                stack_key: tuple = (
                    "enhanced",
                    _text(find("MREchoSequence", "EffectiveEchoTime")),
                    _text(find("FrameContentSequence", "TemporalPositionIndex")),
                    _text(find("FrameContentSequence", "StackID")),
                    _text(find("MRDiffusionSequence", "DiffusionBValue")),
                )
                acquisition = _text(find("FrameContentSequence", "FrameAcquisitionNumber"))
            else:
                position = ds.get("ImagePositionPatient")
                orientation = ds.get("ImageOrientationPatient")
                spacing = ds.get("PixelSpacing")
                stack_key = (
                    "classic",
                    _text(ds.get("EchoNumbers")),
                    _text(ds.get("TemporalPositionIdentifier")),
                    _text(ds.get("DiffusionBValue")),
                )
                acquisition = _text(ds.get("AcquisitionNumber"))
            pos, row, col, ps = _frame_geometry(ds, index, frame, position, orientation, spacing)
            frames.append(
                FrameGeometry(
                    source=SliceSource(index, frame),
                    position=pos,
                    row_cosine=row,
                    column_cosine=col,
                    pixel_spacing=ps,
                    stack_key=(*stack_key, (rows, columns), ps),
                    size=(rows, columns),
                    order=(number, index, frame),
                    acquisition=acquisition,
                )
            )
    return frames


def slice_geometries(
    datasets: Sequence[Dataset], indices: Sequence[int] | None = None
) -> list[FrameGeometry]:
    """The geometry of every 2D slice: each frame, with Siemens mosaics cut into their tiles."""
    slices: list[FrameGeometry] = []
    mosaics: dict[int, tuple[int, np.ndarray | None] | None] = {}
    for frame in frame_geometries(datasets, indices):
        index = frame.source.instance_index
        if index not in mosaics:
            ds = datasets[index]
            mosaics[index] = None if "PerFrameFunctionalGroupsSequence" in ds else _mosaic_info(ds)
        mosaic = mosaics[index]
        if mosaic is None:
            slices.append(frame)
        else:
            slices.extend(_mosaic_tiles(datasets[index], frame, mosaic))
    return slices


def _mosaic_tiles(
    ds: Dataset, frame: FrameGeometry, mosaic: tuple[int, np.ndarray | None]
) -> list[FrameGeometry]:
    index, number = frame.source.instance_index, frame.order[0]
    position, row, col, ps = frame.position, frame.row_cosine, frame.column_cosine, frame.pixel_spacing
    n_tiles, slice_normal = mosaic
    rows, columns = int(ds.Rows), int(ds.Columns)
    per_row = math.ceil(math.sqrt(n_tiles))
    if n_tiles < 1 or rows % per_row or columns % per_row:
        raise InputError(
            f"instance {index + 1} is a mosaic of {n_tiles} images that does not tile its "
            f"{rows}x{columns} frame",
            code="input.mosaic",
        )
    tile_rows, tile_columns = rows // per_row, columns // per_row
    normal = np.cross(row, col)
    if slice_normal is None:
        slice_normal = normal
    elif abs(abs(float(slice_normal @ normal)) - 1) > 0.01:
        raise InputError(
            f"instance {index + 1}: the mosaic's slice normal is not perpendicular to its rows and columns",
            code="input.mosaic",
        )
    try:
        step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness"))
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"instance {index + 1} is a mosaic without Spacing Between Slices or Slice Thickness",
            code="input.mosaic",
        ) from exc
    # The mosaic's Image Position is that of a frame as large as the mosaic, centred on each tile.
    first = position + row * ps[1] * (columns - tile_columns) / 2 + col * ps[0] * (rows - tile_rows) / 2
    tiles = []
    for tile in range(n_tiles):
        tiles.append(
            FrameGeometry(
                source=MosaicSource(index, frame.source.frame_index, tile, per_row, tile_rows, tile_columns),
                position=first + tile * step * slice_normal,
                row_cosine=row,
                column_cosine=col,
                pixel_spacing=ps,
                stack_key=("mosaic", index, frame.source.frame_index),
                size=(tile_rows, tile_columns),
                order=(number, index, frame.source.frame_index, tile),
                slice_spacing=step,
            )
        )
    return tiles


def _orientation_key(frame: FrameGeometry) -> tuple[float, ...]:
    return tuple(np.round(np.concatenate([frame.row_cosine, frame.column_cosine]) / _ORIENTATION_TOLERANCE))


# --- stacks ----------------------------------------------------------------------------------


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


# --- pixels and volumes ----------------------------------------------------------------------


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


def slice_of(frames: np.ndarray, source: SliceSource) -> np.ndarray:
    """The 2D slice ``source`` names within an instance's ``(frames, rows, columns)`` array."""
    plane = frames[source.frame_index]
    if isinstance(source, MosaicSource):
        rows, columns = source.window
        return plane[rows, columns]
    return plane


def stack_volume(
    datasets: Sequence[Dataset], stack: Stack, decoded: dict[int, np.ndarray] | None = None
) -> Volume:
    """The volume of stored values of one stack; ``decoded`` caches instances' pixels across stacks."""
    cache = {} if decoded is None else decoded
    slices = []
    for frame in stack.frames:
        index = frame.source.instance_index
        if index not in cache:
            cache[index] = frame_pixels(datasets[index])
        pixels = cache[index]
        if pixels.shape[0] <= frame.source.frame_index:
            raise InputError(f"instance {index + 1} has fewer frames than declared", code="input.pixels")
        piece = slice_of(pixels, frame.source)
        if piece.shape != frame.size:
            raise InputError(
                f"instance {index + 1}: pixel data is {piece.shape[0]}x{piece.shape[1]}, "
                f"Rows/Columns say {frame.size[0]}x{frame.size[1]}",
                code="input.pixels",
            )
        slices.append(piece)
    first = stack.frames[0]
    return Volume(
        array=np.stack(slices),
        spacing=stack.spacing,
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in stack.direction.ravel()),  # type: ignore[arg-type]
        sources=tuple(f.source for f in stack.frames),
    )


def build_volume(datasets: Sequence[Dataset]) -> Volume:
    """The volume of a series that holds exactly one stack (besides filtered objects)."""
    split = split_series(datasets)
    if not split.stacks:
        raise InputError(
            f"the series holds no image stack ({len(split.filtered)} objects set aside)",
            code="input.no_stack",
        )
    if len(split.stacks) > 1:
        raise InputError(
            f"the series holds {len(split.stacks)} stacks (different orientations, echoes or time points); "
            "use split_series and one volume per stack",
            code="input.multi_stack",
        )
    return stack_volume(datasets, split.stacks[0])
