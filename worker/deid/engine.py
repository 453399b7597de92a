"""The de-identification engine: PS3.15 Basic Application Level Confidentiality Profile.

Design
------
The profile is table-driven: every element whose tag is listed in Table E.1-1 (vendored in
``tables/``, edition 2026d) gets the action its row and the policy's options resolve to (see
:mod:`worker.deid.actions`), at every depth of every sequence. Every private attribute (odd
group) is removed, private creators included, unless Retain Safe Private is selected and the
attribute is listed in Table E.3.10-1 under its private creator, or the research profile is
selected and its own allow-list keeps it, value checked or its block filtered
(:mod:`worker.deid.private`: the vendors' acquisition physics, beyond the standard's table).

Attributes the table does not list are kept only when pediface's allow-list names them
(``tables/allow-list.tsv``, see :mod:`worker.deid.allowlist`): pixel encoding, geometry, MR
acquisition parameters, functional groups, SOP class and the like. Everything else is removed,
at every depth: an allow-list, not a block-list, so that an attribute nobody reviewed (a new one
of the standard, a retired one, a vendor's misuse of a public tag) never leaves the site. Inside a
sequence the table replaces with dummy content, allowed attributes get dummy values too.

On top of the table:

* the Clean Descriptors option cleans the descriptors that name an acquisition (series,
  protocol and study descriptions: ``tables/descriptors.tsv``) word by word, removing the
  instance's own names, IDs and dates and whatever looks like a date, a phone number or a
  person's name (:mod:`worker.deid.descriptors`); other text it marks C becomes a dummy;
* the Clean Structured Content and Clean Graphics options keep the sequences their column marks C
  (SR content, acquisition context, specimen preparation, waveform and graphic annotations) and
  clean their items against allow-lists of item content (:mod:`worker.deid.clean`): codes,
  numbers, coordinates and structure stay, free text becomes a dummy, rows of the table inside
  (names, dates, UIDs) get their own action, and everything else is removed, at every depth.
  Overlay planes and curves, which only pixel-level work could clean, are removed under Clean
  Graphics as under the Basic profile;
* images that may show identifying text in their pixels are refused: BurnedInAnnotation YES, and
  secondary capture or screen-save objects, since the engine does not clean pixel data (the
  Clean Pixel Data option is not supported);
* PatientID and PatientName both become the research ID of the site's lookup table
  (:class:`~worker.deid.lookup.PatientIdLookup`) when the patient is in it, and otherwise
  :func:`pseudonymise` of the original PatientID (of the StudyInstanceUID when there is none): a
  non-identifying dummy, which Z/D allows, that still lets researchers link the series of one
  patient. With ``require_lookup`` a patient missing from the table is refused, and the message
  names :func:`lookup_hint` of the PatientID, never the ID;
* UIDs are replaced with :func:`remap_uid`, a keyed hash, so that every worker maps a UID the
  same way and references between instances stay consistent without shared state;
* the result records what was done: PatientIdentityRemoved, DeidentificationMethod,
  DeidentificationMethodCodeSequence (CID 7050) and LongitudinalTemporalInformationModified;
* the file meta information keeps only the transfer syntax, SOP class, implementation and
  version elements, and its MediaStorageSOPInstanceUID follows the new SOPInstanceUID; the
  preamble is not carried over (it may hold a TIFF header, with identifiers).

Failing closed: anything the engine cannot handle raises :class:`DeidentificationError` naming
the element by tag, keyword and position, never by value, since values are PHI. The original
exception is not chained for the same reason.

Cost: the tables are parsed once per process and resolved once per set of options, and each
dataset is walked once. Kept values are shared, not copied, when they are immutable, which
covers pixel data.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from common.errors import DeidentificationError
from worker.deid.actions import rules_for
from worker.deid.allowlist import allow_list
from worker.deid.clean import clean_contexts
from worker.deid.descriptors import Identifiers, cleaned_descriptors
from worker.deid.elements import joined_text
from worker.deid.iod import AttributePath, attribute_types
from worker.deid.options import DeidOption, DeidPolicy
from worker.deid.private import research_private
from worker.deid.pseudonym import check_key, date_shift_days, pseudonymise
from worker.deid.record import file_meta, record_method, refuse_text_in_pixels, top_text
from worker.deid.table import safe_private_table
from worker.deid.tags import (
    MEDIA_STORAGE_SOP_CLASS_UID,
    PATIENT_ID,
    SOP_CLASS_UID,
    SPECIFIC_CHARACTER_SET,
    STUDY_INSTANCE_UID,
)
from worker.deid.walker import PatientIds, Walker


def deidentify(ds: Dataset, policy: DeidPolicy, key: bytes, *, defaced: bool = False) -> Dataset:
    """Return a new, de-identified copy of `ds` under the Basic profile and `policy`'s options.

    Parameters
    ----------
    ds : Dataset
        The instance to de-identify, with or without ``file_meta``; it is not modified.
    policy : DeidPolicy
        The options to apply on top of the Basic profile, and the pseudonym prefix.
    key : bytes
        The site's secret key for UIDs, pseudonyms and date offsets (at least 16 bytes); the
        same key gives the same output, on every worker and every retry.
    defaced : bool
        Whether the pixel data had recognizable facial features removed; recorded as the Clean
        Recognizable Visual Features Option (113102).

    Returns
    -------
    Dataset
        The de-identified dataset, with de-identified ``file_meta`` when `ds` has one.

    Raises
    ------
    DeidentificationError
        If an element cannot be de-identified safely (the message names the element, never its
        value); if no pseudonym can be derived (no PatientID and no StudyInstanceUID); if the
        pixels may show identifying text (BurnedInAnnotation YES, a secondary capture or screen
        save) and the policy does not clean pixel data; or if the policy requires the lookup
        table and the patient is not in it (the message names :func:`lookup_hint` of the ID).
    TypeError, ValueError
        If `policy` is not a :class:`DeidPolicy` or `key` is not a usable key.
    """
    if not isinstance(policy, DeidPolicy):
        raise TypeError(f"policy must be a DeidPolicy, got {type(policy).__name__}")
    check_key(key)
    if DeidOption.CLEAN_PIXEL_DATA not in policy.options:
        refuse_text_in_pixels(ds)
    patient, has_patient_id = _patient_identity(ds)
    patient_ids = PatientIds(
        key=bytes(key),
        prefix=policy.patient_id_prefix,
        lookup=policy.patient_id_lookup,
        require_lookup=policy.require_lookup,
    )
    if has_patient_id:
        replacement = patient_ids.replace(patient, where="")
    elif policy.require_lookup:
        raise DeidentificationError(
            "(0010,0020) PatientID is empty or missing, and deid.require_lookup needs it to find the "
            "research ID in the patient ID lookup table",
            code="deid.lookup_missing",
        )
    else:
        replacement = pseudonymise(patient, key, policy.patient_id_prefix)
    cleaners = clean_contexts()
    walker = Walker(
        rules=rules_for(policy),
        types=_iod_types(ds),
        allowed=allow_list().tags,
        key=bytes(key),
        patient_ids=patient_ids,
        date_shift_days=date_shift_days(patient, key),
        safe_private=safe_private_table(),
        cleaners=cleaners,
        document=cleaners.document if DeidOption.CLEAN_STRUCTURED_CONTENT in policy.options else {},
        research=research_private() if policy.research else None,
        descriptors=cleaned_descriptors(),
        identifiers=Identifiers.of(ds) if DeidOption.CLEAN_DESCRIPTORS in policy.options else NO_IDENTIFIERS,
    )
    out = walker.dataset(ds, blank=False, where="", path=())

    out.PatientID = replacement
    out.PatientName = replacement
    record_method(out, policy, defaced)

    source_meta = getattr(ds, "file_meta", None)
    if source_meta is not None:
        out.file_meta = file_meta(source_meta, out, walker)
    if None not in ds.original_encoding:
        # Lets a dataset without file meta be written the way it was read, and, when the output
        # keeps the input's character set, lets pydicom write the elements shared undecoded
        # (worker.deid.undecoded) as their bytes instead of decoding every one to encode it again.
        same_characters = _text_of(out, SPECIFIC_CHARACTER_SET) == _text_of(ds, SPECIFIC_CHARACTER_SET)
        character_set = ds.original_character_set if same_characters else None
        out.set_original_encoding(*ds.original_encoding, character_set)
    return out


def _text_of(ds: Dataset, number: int) -> object:
    elem = ds.get(BaseTag(number))
    return None if elem is None else elem.value


NO_IDENTIFIERS = Identifiers(frozenset(), ())


def _patient_identity(ds: Dataset) -> tuple[str, bool]:
    """What the pseudonym and the date offset derive from: PatientID, else StudyInstanceUID.

    The flag says whether it is the PatientID.
    """
    for number, keyword in ((PATIENT_ID, "PatientID"), (STUDY_INSTANCE_UID, "StudyInstanceUID")):
        try:
            elem = ds.get(BaseTag(number))
            text = joined_text(elem.value).strip(" \x00") if elem is not None else ""
        except Exception:  # noqa: BLE001 - fail closed, and the message may quote the value
            raise DeidentificationError(
                f"cannot read ({number >> 16:04X},{number & 0xFFFF:04X}) {keyword}", code="deid.element"
            ) from None
        if text:
            return text, number == PATIENT_ID
    raise DeidentificationError(
        "neither (0010,0020) PatientID nor (0020,000D) StudyInstanceUID has a value: "
        "no patient pseudonym can be derived",
        code="deid.no_patient",
    )


def _iod_types(ds: Dataset) -> Mapping[AttributePath, str] | None:
    """The Types of the combined-code attributes in the IOD of `ds`'s SOP class, if known."""
    sop_class = top_text(ds, SOP_CLASS_UID)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None:
        sop_class = top_text(meta, MEDIA_STORAGE_SOP_CLASS_UID)
    return attribute_types(sop_class) if sop_class else None
