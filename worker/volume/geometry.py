"""Where each frame (or Siemens mosaic tile) lies in patient space, as the headers give it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from common.errors import InputError
from worker.csa import parse_csa, private_value
from worker.types import SliceSource


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


def orientation_label(normal: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(normal)))
    name = ("sag", "cor", "ax")[axis]
    angle = math.degrees(math.acos(min(1.0, abs(float(normal[axis])))))
    return f"{name}-oblique {angle:.0f}deg" if angle >= 0.5 else name


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


def _mosaic_info(ds: Dataset) -> tuple[int, np.ndarray | None] | None:
    """``(NumberOfImagesInMosaic, SliceNormalVector or None)`` for a Siemens mosaic, else None."""
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    if "MOSAIC" not in image_type:
        return None
    csa: dict[str, list[str]] = {}
    raw = private_value(ds, 0x0029, "SIEMENS CSA HEADER", 0x10)
    if isinstance(raw, bytes):
        csa = parse_csa(raw)
    count: object = None
    if csa.get("NumberOfImagesInMosaic"):
        count = csa["NumberOfImagesInMosaic"][0]
    else:
        count = private_value(ds, 0x0019, "SIEMENS MR HEADER", 0x0A)
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
