"""The write-back refuses, with its exact reason, whenever an instance would leave with its face.

Built from a real series (the template head, one file per sagittal slice) and a real volume of
it; the situation each test makes is a volume that does not cover every instance it is asked to
deface, or Pixel Data shorter than the image's attributes. Proven: :func:`write_back` returns no
copy of an instance its volumes do not cover, and the pipeline's :func:`blank_pixels` then refuses
the stack with ``MaskingError`` ``mask.incomplete`` (an invariant of the pipeline's own volumes, so
driven here on the step itself: no input reaches it from outside); :func:`write_back` raises
``InputError`` ``input.pixels``; and no original instance is modified by a refused write.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from common.errors import InputError, MaskingError
from worker.pipeline import MaskedSeries, blank_pixels
from worker.types import FaceLabel, FaceMask
from worker.volume.pixels import build_volume
from worker.volume.read import read_instances
from worker.volume.stacks import split_series
from worker.writer import StackMask, write_back


@pytest.fixture
def datasets(small_series: list[Path]) -> list[pydicom.Dataset]:
    return read_instances(small_series)


def _face(shape: tuple[int, int, int]) -> np.ndarray:
    """A non-empty block of face labels, enough to be written back on every slice."""
    labels = np.zeros(shape, np.uint8)
    labels[:, :8, :8] = FaceLabel.FACE
    return labels


def test_write_back_returns_no_copy_of_an_instance_the_volume_does_not_cover(
    datasets: list[pydicom.Dataset],
) -> None:
    """The volume was built without the last slice: ``write_back`` returns copies of the instances it
    covers only (the caller, :func:`blank_pixels` below, refuses the stack) and touches no original."""
    originals = [ds.PixelData for ds in datasets]
    partial = build_volume(datasets[:-1])
    assert len(partial.sources) == len(datasets) - 1
    written = write_back(datasets, [StackMask(partial, _face(partial.shape) > 0, 0)])
    assert sorted(written) == list(range(len(datasets) - 1))
    assert [ds.PixelData for ds in datasets] == originals, "the originals are not touched"


def test_blank_pixels_refuses_a_stack_whose_volume_misses_an_instance(
    datasets: list[pydicom.Dataset],
) -> None:
    """The pipeline's guard: a stack of N instances masked on a volume of N-1 -> ``mask.incomplete``."""
    (stack,) = split_series(datasets).stacks
    assert len(stack.instances) == len(datasets)
    partial = build_volume(datasets[:-1])
    masked = MaskedSeries(
        stacks=(stack,),
        volumes=(partial,),
        masks=(FaceMask(labels=_face(partial.shape), masker="block"),),
        filtered=(),
        masker="block",
    )
    originals = [ds.PixelData for ds in datasets]
    with pytest.raises(MaskingError) as refused:
        blank_pixels(datasets, masked)
    assert str(refused.value) == "an instance of a stack was not written back"
    assert refused.value.code == "mask.incomplete"
    assert [ds.PixelData for ds in datasets] == originals


def test_write_back_refuses_pixel_data_shorter_than_the_image(datasets: list[pydicom.Dataset]) -> None:
    """An instance whose Pixel Data lost its second half after the volume was built: ``input.pixels``."""
    volume = build_volume(datasets)
    blank = _face(volume.shape) > 0
    index = volume.sources[0].instance_index
    ds = datasets[index]
    rows, columns = int(ds.Rows), int(ds.Columns)
    expected = rows * columns * 2
    assert len(ds.PixelData) == expected
    ds.PixelData = ds.PixelData[: expected // 2]
    with pytest.raises(InputError) as refused:
        write_back(datasets, [StackMask(volume, blank, 0)])
    assert str(refused.value) == (
        f"Pixel Data holds {expected // 2} bytes, {expected} expected for 1x{rows}x{columns}"
    )
    assert refused.value.code == "input.pixels"
