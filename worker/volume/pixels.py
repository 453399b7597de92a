"""The pixels of a stack as a :class:`~worker.types.Volume`, each z-slice remembering its frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom import Dataset

from common.errors import InputError
from worker.types import SliceSource, Volume
from worker.volume.geometry import MosaicSource
from worker.volume.stacks import Stack, split_series


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
