"""The pipeline core: a series in, a defaced and de-identified series out. No I/O here.

Steps, each a pure function of its own module::

    mask_series:   split_series (volume) -> per stack: stack_volume -> masker.predict (deface)
    blank_pixels:  write_back (writer)
    deidentify_series: per instance deidentify (deid) -> mark_derived

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

from common.errors import DeidentificationError, InputError, MaskingError
from common.logs import get_logger
from common.version import __version__
from worker.deface.base import FaceMasker
from worker.deface.evidence import FaceCheck, NoFaceEvidence, face_check_unavailable, no_face_evidence
from worker.deid import DeidPolicy, deidentify, remap_uid
from worker.deid.iod import original_only_attributes
from worker.types import FaceMask, Volume
from worker.volume.pixels import stack_volume
from worker.volume.stacks import MIN_SLICES, Filtered, Stack, split_series
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


def _evidence(study: str, series: str, reference: Dataset) -> DicomSequence:
    """A Hierarchical SOP Instance Reference to one instance (PS3.3 Table C.17-3)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = reference.ReferencedSOPClassUID
    instance.ReferencedSOPInstanceUID = reference.ReferencedSOPInstanceUID
    series_item = Dataset()
    series_item.SeriesInstanceUID = series
    series_item.ReferencedSOPSequence = DicomSequence([instance])
    study_item = Dataset()
    study_item.StudyInstanceUID = study
    study_item.ReferencedSeriesSequence = DicomSequence([series_item])
    return DicomSequence([study_item])


def mark_derived(ds: Dataset, masker: str, key: bytes | None = None) -> None:
    """Say in the header that the pixels were changed, how, and from what (PS3.3 C.7.6.1.1).

    Called on a de-identified instance. Image Type Value 1 becomes DERIVED, and the attributes a
    DERIVED image does not keep go (Enhanced MR: the MR Pulse Sequence and Bulk Motion
    Synchronization modules but for what dcm2niix reads, :func:`~worker.deid.iod.original_only_attributes`).
    With ``key``,
    the instance becomes a new object derived from its pseudonymised source: new SOP Instance
    and Series Instance UIDs (the keyed :func:`remap_uid` of the pseudonymised ones, so a retry
    gives the same UIDs) and a Source Image Sequence referencing the pseudonymised source
    instance. Enhanced MR objects carry the reference in the shared Derivation Image functional
    group and in the Source Image Evidence Sequence, and mark every frame DERIVED.
    """
    image_type = list(ds.get("ImageType") or ["DERIVED", "SECONDARY"])
    image_type[0] = "DERIVED"
    if len(image_type) == 1:
        image_type.append("SECONDARY")
    ds.ImageType = image_type
    description = f"Face and ears removed ({masker}, pediface {__version__})"[:1024]
    derivation = DicomSequence([_code_item(codes.DCM.PixelByPixelMask)])
    enhanced = str(ds.SOPClassUID) == ENHANCED_MR and "SharedFunctionalGroupsSequence" in ds
    for keyword in original_only_attributes(str(ds.SOPClassUID)):
        if keyword in ds:
            delattr(ds, keyword)
    if not enhanced:
        ds.DerivationDescription = description
    if key is None:
        return
    source_sop = str(ds.SOPInstanceUID)
    source_series = str(ds.SeriesInstanceUID)
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
        ds.SourceImageEvidenceSequence = _evidence(str(ds.StudyInstanceUID), source_series, reference)
        for groups in [shared, *(ds.get("PerFrameFunctionalGroupsSequence") or [])]:
            for item in groups.get("MRImageFrameTypeSequence") or []:
                if item.get("FrameType"):
                    frame_type = list(item.FrameType)
                    frame_type[0] = "DERIVED"
                    item.FrameType = frame_type
        return
    ds.DerivationCodeSequence = derivation
    ds.SourceImageSequence = DicomSequence([reference])


def derived_copy(
    ds: Dataset, policy: DeidPolicy, key: bytes, masker: str, *, defaced: bool = True
) -> Dataset:
    """The de-identified copy of one instance, marked as derived from its source when it was defaced.

    What every output instance gets, for one destination's policy: :func:`deidentify` (recording
    the defacing) then :func:`mark_derived`. An instance whose field of view holds no face
    (``defaced=False``) keeps its pixels and its Image Type, and gets the same Series Instance UID
    as the defaced instances of its series would. `ds` is not modified.
    """
    clean = deidentify(ds, policy, key, defaced=defaced)
    if defaced:
        mark_derived(clean, masker, key)
    else:
        clean.SeriesInstanceUID = remap_uid(str(clean.SeriesInstanceUID), key)
    return clean


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
    #: The geometries sent without defacing, with their evidence (see :class:`MaskedSeries`).
    no_face: tuple[NoFaceEvidence, ...] = ()
    #: Instance indices of those geometries: their pixels are as received, their headers not DERIVED.
    untouched: frozenset[int] = frozenset()

    @property
    def blanked_voxels(self) -> int:
        return sum(s.blanked_voxels for s in self.stacks)

    @property
    def filtered_counts(self) -> dict[str, int]:
        return dict(Counter(f.kind for f in self.filtered))


@dataclass(frozen=True)
class MaskedSeries:
    """A series split into stacks, each with its volume and its face mask; nothing blanked yet."""

    stacks: tuple[Stack, ...]
    volumes: tuple[Volume, ...]
    masks: tuple[FaceMask, ...]
    filtered: tuple[Filtered, ...]
    masker: str
    timings: dict[str, float] = field(default_factory=dict)
    #: The geometries sent without defacing, with the evidence that they hold no face.
    no_face: tuple[NoFaceEvidence, ...] = ()
    #: Indices (into ``stacks``) of the stacks those geometries hold: their masks are empty.
    unmasked: frozenset[int] = frozenset()


def _geometry_key(volume: Volume) -> tuple:
    """Stacks with equal keys lie on one grid: the volumes of an fMRI or diffusion series."""
    return (
        volume.shape,
        tuple(round(float(v), 3) for v in volume.spacing),
        tuple(round(float(v), 2) for v in volume.origin),
        tuple(round(float(v), 4) for v in volume.direction),
    )


def _no_face(
    volume: Volume, error: MaskingError, stacks: str, no_face_in_fov: str, face_check: FaceCheck
) -> NoFaceEvidence:
    """The evidence that a geometry the masker found no face in holds none; else the error, explained."""
    if error.code != "mask.no_face":
        raise error
    evidence, why_not = no_face_evidence(volume, error, stacks, face_check)
    if evidence is None:
        raise MaskingError(f"{error} ({why_not})", code=error.code, details=error.details)
    if no_face_in_fov != "deidentify":
        raise MaskingError(
            f"{evidence.summary()}; deface.no_face_in_fov: deidentify would send such series de-identified",
            code=error.code,
            details=error.details,
        )
    return evidence


def mask_series(
    datasets: Sequence[Dataset],
    masker: FaceMasker,
    *,
    no_face_in_fov: str = "quarantine",
    face_check: FaceCheck = face_check_unavailable,
) -> MaskedSeries:
    """Split one series held in memory into stacks and predict the face (and ears) of each geometry.

    Stacks on one grid (the volumes of an fMRI or diffusion series) share one mask, predicted on
    the brightest of them (a b=0 volume, where there is one) and applied to every volume. A
    geometry the masker finds no face in is quarantined, or with ``no_face_in_fov="deidentify"``
    and the evidence of :func:`~worker.deface.evidence.no_face_evidence` left as it is (an empty
    mask, the evidence in :attr:`MaskedSeries.no_face`).

    Raises :class:`InputError` when there is no stack to deface or a stack is too thin to find a
    face in, and :class:`MaskingError` when a mask does not fit its stack or a geometry shows no
    face without that evidence.
    """
    timings = {"volume": 0.0, "mask": 0.0}
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
    volumes: list[Volume] = []
    for stack in split.stacks:
        started = time.perf_counter()
        volumes.append(stack_volume(datasets, stack, decoded))
        timings["volume"] += time.perf_counter() - started
    groups: dict[tuple, list[int]] = {}
    for index, volume in enumerate(volumes):
        groups.setdefault(_geometry_key(volume), []).append(index)
    masks: dict[int, FaceMask] = {}
    no_face: list[NoFaceEvidence] = []
    unmasked: set[int] = set()
    for members in groups.values():
        volume = volumes[max(members, key=lambda i: float(volumes[i].array.mean()))]
        label = split.stacks[members[0]].label + (
            f" and {len(members) - 1} more on its grid" if len(members) > 1 else ""
        )
        started = time.perf_counter()
        try:
            mask = masker.predict(volume)
        except MaskingError as error:
            no_face.append(_no_face(volume, error, label, no_face_in_fov, face_check))
            mask = FaceMask(np.zeros(volume.shape, np.uint8), masker.name)
            unmasked.update(members)
        timings["mask"] += time.perf_counter() - started
        if mask.labels.shape != volume.shape:
            raise MaskingError(
                f"the masker returned a {mask.labels.shape} mask for the {volume.shape} stack {label}"
            )
        masks.update(dict.fromkeys(members, mask))
    return MaskedSeries(
        stacks=tuple(split.stacks),
        volumes=tuple(volumes),
        masks=tuple(masks[i] for i in range(len(volumes))),
        filtered=tuple(split.filtered),
        masker=masker.name,
        timings=timings,
        no_face=tuple(no_face),
        unmasked=frozenset(unmasked),
    )


def blank_pixels(
    datasets: Sequence[Dataset], masked: MaskedSeries, *, remove_ears: bool = True
) -> DefacedPixels:
    """Blank each stack's mask in the original instances' pixel data; headers are not touched.

    Raises :class:`MaskingError` when a mask is empty (nothing would be removed) or an instance
    of a stack was not written back.
    """
    parts: list[StackMask] = []
    results: list[StackResult] = []
    for index, (stack, volume, mask) in enumerate(
        zip(masked.stacks, masked.volumes, masked.masks, strict=True)
    ):
        blank = mask.blank(include_ears=remove_ears)
        blanked = int(blank.sum())
        if blanked == 0 and index not in masked.unmasked:
            raise MaskingError(
                f"the face mask of stack {stack.label} is empty: nothing would be removed", code="mask.empty"
            )
        background = int(volume.array.min())
        parts.append(StackMask(volume, blank, background))
        results.append(StackResult(stack.label, volume.shape, blanked, background, mask.masker))
    started = time.perf_counter()
    written = write_back(datasets, parts)
    timings = {**masked.timings, "write_back": time.perf_counter() - started}
    expected = {i for s in masked.stacks for i in s.instances}
    if set(written) != expected:
        raise MaskingError("an instance of a stack was not written back", code="mask.incomplete")
    return DefacedPixels(
        written=written,
        parts=tuple(parts),
        masks=masked.masks,
        stacks=tuple(results),
        filtered=masked.filtered,
        masker=masked.masker,
        timings=timings,
        no_face=masked.no_face,
        untouched=frozenset(i for s in masked.unmasked for i in masked.stacks[s].instances),
    )


def deface_pixels(
    datasets: Sequence[Dataset],
    masker: FaceMasker,
    *,
    remove_ears: bool = True,
    no_face_in_fov: str = "quarantine",
) -> DefacedPixels:
    """Find and blank the face (and ears) of every stack of one series held in memory.

    :func:`mask_series` then :func:`blank_pixels`. Headers are not touched; ``timings`` holds
    the seconds spent building volumes, predicting masks and writing the pixels back.
    """
    masked = mask_series(datasets, masker, no_face_in_fov=no_face_in_fov)
    return blank_pixels(datasets, masked, remove_ears=remove_ears)


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
        clean = derived_copy(
            pixels.written[index], policy, key, pixels.masker, defaced=index not in pixels.untouched
        )
        output.append(clean)
        by_index[index] = clean
    uids = {str(ds.SeriesInstanceUID) for ds in output}
    if len(uids) != 1:
        raise DeidentificationError("de-identified instances do not share one Series Instance UID")
    parts = pixels.parts
    # The QC picture and the SEG show the largest defaced stack (any stack if none was defaced).
    defaced = [i for i, p in enumerate(parts) if p.blank.any()] or list(range(len(parts)))
    largest = max(defaced, key=lambda i: int(np.prod(parts[i].volume.shape)))
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
    if mask_segmentation and parts[largest].blank.any():  # nothing defaced: no face mask to show
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
    no_face_in_fov: str = "quarantine",
) -> DefacedSeries:
    """Deface and de-identify one series held in memory, stack by stack, for one policy.

    :func:`deface_pixels` then :func:`deidentify_series`; a job with several destinations
    calls the two itself, to blank the pixels once.
    """
    pixels = deface_pixels(datasets, masker, remove_ears=remove_ears, no_face_in_fov=no_face_in_fov)
    return deidentify_series(pixels, policy, key, mask_segmentation=mask_segmentation)
