"""The pipeline core: a series in, a defaced and de-identified series out. No I/O here.

Steps, each a pure function of its own module::

    build_volume (volume) -> masker.predict (deface) -> blank_instances (writer)
        -> deidentify (deid) -> mark_derived

The order matters: pixels are blanked in the original instances before their
headers are rewritten, and nothing leaves this function half-done: it returns a
complete result or raises a :class:`PedifaceError` subclass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from pediface import __version__
from pediface.errors import DeidentificationError, MaskingError
from worker.deface.base import FaceMasker
from worker.deid import DeidPolicy, deidentify
from worker.types import FaceMask, Volume
from worker.volume import build_volume
from worker.writer import blank_instances


@dataclass(frozen=True)
class DefacedSeries:
    """The result of :func:`deface_series`."""

    datasets: list[Dataset]
    before: Volume
    after: Volume
    mask: FaceMask
    blanked_voxels: int
    background: int


def mark_derived(ds: Dataset, masker: str) -> None:
    """Say in the header that the pixels were changed, and how (PS3.3 C.7.6.1.1.2, C.7.6.1.1.3)."""
    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    image_type[0] = "DERIVED"
    if len(image_type) == 1:
        image_type.append("SECONDARY")
    ds.ImageType = image_type
    ds.DerivationDescription = f"Face and ears removed ({masker}, pediface {__version__})"[:1024]


def deface_series(
    datasets: Sequence[Dataset],
    masker: FaceMasker,
    policy: DeidPolicy,
    key: bytes,
    *,
    remove_ears: bool = True,
) -> DefacedSeries:
    """Deface and de-identify one series held in memory."""
    volume = build_volume(datasets)
    mask = masker.predict(volume)
    if mask.labels.shape != volume.shape:
        raise MaskingError(f"the masker returned a {mask.labels.shape} mask for a {volume.shape} volume")
    blank = mask.blank(include_ears=remove_ears)
    blanked_voxels = int(blank.sum())
    if blanked_voxels == 0:
        raise MaskingError("the face mask is empty: nothing would be removed", code="mask.empty")
    background = int(volume.array.min())
    blanked = blank_instances(datasets, volume, blank, background)
    output = []
    for ds in blanked:
        clean = deidentify(ds, policy, key, defaced=True)
        mark_derived(clean, masker.name)
        output.append(clean)
    uids = {str(ds.SeriesInstanceUID) for ds in output}
    if len(uids) != 1:
        raise DeidentificationError("de-identified instances do not share one Series Instance UID")
    after = Volume(
        array=np.where(blank, np.asarray(background, dtype=volume.array.dtype), volume.array),
        spacing=volume.spacing,
        origin=volume.origin,
        direction=volume.direction,
        sources=volume.sources,
    )
    return DefacedSeries(output, volume, after, mask, blanked_voxels, background)
