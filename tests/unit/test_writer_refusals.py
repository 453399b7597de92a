"""The write-back refuses, with its exact reason, whenever an instance would leave with its face.

Built from a real series (the template head, one file per sagittal slice) and a real volume of
it; the situation each test makes is a volume that does not cover every instance it is asked to
deface, or Pixel Data shorter than the image's attributes. Proven: :func:`blank_instances` raises
``ValueError`` naming the instance that would leave undefaced; the pipeline's
:func:`blank_pixels` raises ``MaskingError`` ``mask.incomplete``; :func:`write_back` raises
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
from worker.writer import StackMask, blank_instances, write_back


@pytest.fixture
def datasets(small_series: list[Path]) -> list[pydicom.Dataset]:
    return read_instances(small_series)


def _face(shape: tuple[int, int, int]) -> np.ndarray:
    """A non-empty block of face labels, enough to be written back on every slice."""
    labels = np.zeros(shape, np.uint8)
    labels[:, :8, :8] = FaceLabel.FACE
    return labels


def test_blank_instances_refuses_an_instance_the_volume_does_not_cover(
    datasets: list[pydicom.Dataset],
) -> None:
    """The volume was built without the last slice: that instance would leave undefaced."""
    originals = [ds.PixelData for ds in datasets]
    partial = build_volume(datasets[:-1])
    assert len(partial.sources) == len(datasets) - 1
    with pytest.raises(ValueError) as refused:
        blank_instances(datasets, partial, _face(partial.shape) > 0, background=0)
    assert type(refused.value) is ValueError
    assert (
        str(refused.value) == f"instance {len(datasets)} has no slice in the volume; it would leave undefaced"
    )
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
