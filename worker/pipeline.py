"""The pipeline core: a series in, a defaced and de-identified series out. No I/O here.

Steps, each a pure function of its own module::

    split_series (volume) -> per stack: stack_volume -> masker.predict (deface)
        -> write_back (writer) -> deidentify (deid) -> mark_derived

Every instance of the series ends one of three ways: defaced (it belongs to a
stack that got its own mask), deliberately left out and not forwarded (a
localizer, a derived reformat or a non-image object such as Raw Data or a
presentation state; counted in :attr:`DefacedSeries.filtered`), or the whole
series is refused with a :class:`PedifaceError` (fail closed: a stack too small
to find a face in, a stack the masker cannot vouch for, inconsistent geometry).

The order matters: pixels are blanked in the original instances before their
headers are rewritten, and nothing leaves this function half-done: it returns a
complete result or raises.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from pediface import __version__
from pediface.errors import DeidentificationError, InputError, MaskingError
from pediface.logs import get_logger
from worker.deface.base import FaceMasker
from worker.deid import DeidPolicy, deidentify, remap_uid
from worker.types import FaceMask, Volume
from worker.volume import MIN_SLICES, Filtered, split_series, stack_volume
from worker.writer import StackMask, write_back

log = get_logger("pediface.worker.pipeline")

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


@dataclass(frozen=True)
class StackResult:
    """What happened to one stack (numbers and labels only, no identifiers)."""

    label: str
    shape: tuple[int, int, int]
    blanked_voxels: int
    background: int
    masker: str


@dataclass(frozen=True)
class DefacedSeries:
    """The result of :func:`deface_series`.

    ``before``, ``after`` and ``mask`` are those of the largest stack (for QC pictures);
    ``blanked_voxels`` counts every stack; ``stacks`` says what happened to each;
    ``filtered`` lists the instances deliberately not forwarded, with the reason.
    """

    datasets: list[Dataset]
    before: Volume
    after: Volume
    mask: FaceMask
    blanked_voxels: int
    background: int
    stacks: tuple[StackResult, ...] = ()
    filtered: tuple[Filtered, ...] = field(default=())
    segmentation: Dataset | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def filtered_counts(self) -> dict[str, int]:
        """How many instances were left out, by kind (``{"localizer": 3}``)."""
        return dict(Counter(f.kind for f in self.filtered))


def _code_item(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item


def _source_reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    item.PurposeOfReferenceCodeSequence = DicomSequence(
        [_code_item(codes.DCM.SourceImageForImageProcessingOperation)]
    )
    return item


def mark_derived(ds: Dataset, masker: str, key: bytes | None = None) -> None:
    """Say in the header that the pixels were changed, how, and from what (PS3.3 C.7.6.1.1).

    Called on a de-identified instance. With ``key``, the instance becomes a new object
    derived from its pseudonymised source: new SOP Instance and Series Instance UIDs (the
    keyed :func:`remap_uid` of the pseudonymised ones, so a retry gives the same UIDs) and
    a Source Image Sequence referencing the pseudonymised source instance. Enhanced MR
    objects carry the reference in the shared Derivation Image functional group and
    mark every frame DERIVED.
    """
    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    image_type[0] = "DERIVED"
    if len(image_type) == 1:
        image_type.append("SECONDARY")
    ds.ImageType = image_type
    description = f"Face and ears removed ({masker}, pediface {__version__})"[:1024]
    derivation = DicomSequence([_code_item(codes.DCM.PixelByPixelMask)])
    enhanced = str(ds.SOPClassUID) == ENHANCED_MR and "SharedFunctionalGroupsSequence" in ds
    if not enhanced:
        ds.DerivationDescription = description
    if key is None:
        return
    source_sop = str(ds.SOPInstanceUID)
    new_sop = remap_uid(source_sop, key)
    reference = _source_reference(str(ds.SOPClassUID), source_sop)
    ds.SOPInstanceUID = new_sop
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = new_sop
    ds.SeriesInstanceUID = remap_uid(str(ds.SeriesInstanceUID), key)
    if enhanced:
        shared = ds.SharedFunctionalGroupsSequence[0]
        group = Dataset()
        group.DerivationDescription = description
        group.DerivationCodeSequence = derivation
        group.SourceImageSequence = DicomSequence([reference])
        shared.DerivationImageSequence = DicomSequence([group])
        for groups in [shared, *(ds.get("PerFrameFunctionalGroupsSequence") or [])]:
            for item in groups.get("MRImageFrameTypeSequence") or []:
                if item.get("FrameType"):
                    frame_type = list(item.FrameType)
                    frame_type[0] = "DERIVED"
                    item.FrameType = frame_type
        return
    ds.DerivationCodeSequence = derivation
    ds.SourceImageSequence = DicomSequence([reference])


@dataclass(frozen=True)
class DefacedPixels:
    """A series with its faces blanked in the pixel data and its headers still untouched.

    The expensive, destination-independent half of the pipeline: every destination's
    de-identification (:func:`deidentify_series`) starts from the same blanked pixels.
    """

    written: dict[int, Dataset]
    parts: tuple[StackMask, ...]
    masks: tuple[FaceMask, ...]
    stacks: tuple[StackResult, ...]
    filtered: tuple[Filtered, ...]
    masker: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def blanked_voxels(self) -> int:
        return sum(s.blanked_voxels for s in self.stacks)

    @property
    def filtered_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.filtered))


def deface_pixels(
    datasets: Sequence[Dataset], masker: FaceMasker, *, remove_ears: bool = True
) -> DefacedPixels:
    """Find and blank the face (and ears) of every stack of one series held in memory.

    Headers are not touched; ``timings`` holds the seconds spent building volumes, predicting
    masks and writing the pixels back.
    """
    timings = {"volume": 0.0, "mask": 0.0, "write_back": 0.0}
    split = split_series(datasets)
    if split.filtered:
        log.info("instances_filtered", count=len(split.filtered), **split.filtered_counts())
    if not split.stacks:
        kinds = ", ".join(f"{n} {kind}" for kind, n in split.filtered_counts().items())
        raise InputError(f"the series holds no image stack to deface ({kinds})", code="input.no_stack")
    for stack in split.stacks:
        if len(stack.frames) < MIN_SLICES:
            raise InputError(
                f"stack {stack.label} has {len(stack.frames)} slices; at least {MIN_SLICES} are needed "
                "to find a face in 3D",
                code="input.too_few_slices",
            )
    decoded: dict[int, np.ndarray] = {}
    parts: list[StackMask] = []
    masks: list[FaceMask] = []
    results: list[StackResult] = []
    for stack in split.stacks:
        started = time.perf_counter()
        volume = stack_volume(datasets, stack, decoded)
        timings["volume"] += time.perf_counter() - started
        started = time.perf_counter()
        mask = masker.predict(volume)
        timings["mask"] += time.perf_counter() - started
        if mask.labels.shape != volume.shape:
            raise MaskingError(
                f"the masker returned a {mask.labels.shape} mask for the {volume.shape} stack {stack.label}"
            )
        blank = mask.blank(include_ears=remove_ears)
        blanked = int(blank.sum())
        if blanked == 0:
            raise MaskingError(
                f"the face mask of stack {stack.label} is empty: nothing would be removed", code="mask.empty"
            )
        background = int(volume.array.min())
        parts.append(StackMask(volume, blank, background))
        masks.append(mask)
        results.append(StackResult(stack.label, volume.shape, blanked, background, mask.masker))
    decoded.clear()
    started = time.perf_counter()
    written = write_back(datasets, parts)
    timings["write_back"] = time.perf_counter() - started
    expected = {i for s in split.stacks for i in s.instances}
    if set(written) != expected:
        raise MaskingError("an instance of a stack was not written back", code="mask.incomplete")
    return DefacedPixels(
        written=written,
        parts=tuple(parts),
        masks=tuple(masks),
        stacks=tuple(results),
        filtered=tuple(split.filtered),
        masker=masker.name,
        timings=timings,
    )


def deidentify_series(
    pixels: DefacedPixels, policy: DeidPolicy, key: bytes, *, mask_segmentation: bool = False
) -> DefacedSeries:
    """De-identify a defaced series for one destination's policy; ``pixels`` is not modified.

    With ``mask_segmentation`` the result also holds the largest stack's face mask as
    a DICOM Segmentation referencing the defaced instances.
    """
    started = time.perf_counter()
    output = []
    by_index: dict[int, Dataset] = {}
    for index in sorted(pixels.written):
        clean = deidentify(pixels.written[index], policy, key, defaced=True)
        mark_derived(clean, pixels.masker, key)
        output.append(clean)
        by_index[index] = clean
    uids = {str(ds.SeriesInstanceUID) for ds in output}
    if len(uids) != 1:
        raise DeidentificationError("de-identified instances do not share one Series Instance UID")
    parts = pixels.parts
    largest = max(range(len(parts)), key=lambda i: int(np.prod(parts[i].volume.shape)))
    part = parts[largest]
    volume = part.volume
    after = Volume(
        array=np.where(part.blank, np.asarray(part.background, dtype=volume.array.dtype), volume.array),
        spacing=volume.spacing,
        origin=volume.origin,
        direction=volume.direction,
        sources=volume.sources,
    )
    segmentation = None
    if mask_segmentation:
        from worker.segmentation import face_mask_segmentation

        segmentation = face_mask_segmentation(volume, pixels.masks[largest], by_index, key)
    return DefacedSeries(
        segmentation=segmentation,
        datasets=output,
        before=volume,
        after=after,
        mask=pixels.masks[largest],
        blanked_voxels=pixels.blanked_voxels,
        background=part.background,
        stacks=pixels.stacks,
        filtered=pixels.filtered,
        timings={**pixels.timings, "deid": time.perf_counter() - started},
    )


def deface_series(
    datasets: Sequence[Dataset],
    masker: FaceMasker,
    policy: DeidPolicy,
    key: bytes,
    *,
    remove_ears: bool = True,
    mask_segmentation: bool = False,
) -> DefacedSeries:
    """Deface and de-identify one series held in memory, stack by stack, for one policy.

    :func:`deface_pixels` then :func:`deidentify_series`; a job with several destinations
    calls the two itself, to blank the pixels once.
    """
    pixels = deface_pixels(datasets, masker, remove_ears=remove_ears)
    return deidentify_series(pixels, policy, key, mask_segmentation=mask_segmentation)
