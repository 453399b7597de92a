"""The de-identification engine: PS3.15 Basic Application Level Confidentiality Profile.

Design
------
The profile is table-driven: every element whose tag is listed in Table E.1-1 (vendored in
``tables/``, edition 2026d) gets the action its row and the policy's options resolve to (see
:mod:`worker.deid.actions`), at every depth of every sequence. Every private attribute (odd
group) is removed, private creators included, unless Retain Safe Private is selected and the
attribute is listed in Table E.3.10-1 under its private creator.

Attributes the table does not list are kept only when pediface's allow-list names them
(``tables/allow-list.tsv``, see :mod:`worker.deid.allowlist`): pixel encoding, geometry, MR
acquisition parameters, functional groups, SOP class and the like. Everything else is removed,
at every depth: an allow-list, not a block-list, so that an attribute nobody reviewed (a new one
of the standard, a retired one, a vendor's misuse of a public tag) never leaves the site. Inside a
sequence the table replaces with dummy content, allowed attributes get dummy values too.

On top of the table:

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

import contextlib
import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from pediface import __version__
from pediface.errors import DeidentificationError
from worker.deid.actions import (
    STRUCTURAL_VRS,
    TEXT_VRS,
    Action,
    Rule,
    RuleSet,
    base_vr,
    combined_action,
    dummy_value,
    rules_for,
    shift_da,
    shift_dt,
)
from worker.deid.allowlist import allow_list
from worker.deid.clean import CleanContexts, Context, Entry, Treatment, clean_contexts
from worker.deid.iod import NOT_IN_IOD, AttributePath, attribute_types
from worker.deid.lookup import PatientIdLookup
from worker.deid.options import (
    BASIC_PROFILE_CODE,
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE,
    OPTION_CODES,
    DeidOption,
    DeidPolicy,
    MethodCode,
)
from worker.deid.pseudonym import check_key, date_shift_days, lookup_hint, pseudonymise, remap_uid
from worker.deid.table import EDITION, SafePrivateKey, safe_private_table

PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
STUDY_INSTANCE_UID = 0x0020000D
SOP_INSTANCE_UID = 0x00080018
MEDIA_STORAGE_SOP_INSTANCE_UID = 0x00020003
SOP_CLASS_UID = 0x00080016
MEDIA_STORAGE_SOP_CLASS_UID = 0x00020002
BURNED_IN_ANNOTATION = 0x00280301
CONVERSION_TYPE = 0x00080064
IMAGE_TYPE = 0x00080008

#: SOP classes whose pixels are captures of a screen, a film or a document: they may show names,
#: dates and IDs as text, which only pixel cleaning (the Clean Pixel Data option) removes.
SECONDARY_CAPTURE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    "1.2.840.10008.5.1.1.29": "Hardcopy Grayscale Image Storage (retired)",
    "1.2.840.10008.5.1.1.30": "Hardcopy Color Image Storage (retired)",
}

#: File meta elements carried over; the others (source, sending and receiving AE titles and
#: presentation addresses, private information) describe the sender and can identify a site.
FILE_META_KEPT = (
    0x00020001,  # FileMetaInformationVersion
    0x00020002,  # MediaStorageSOPClassUID
    0x00020010,  # TransferSyntaxUID
    0x00020012,  # ImplementationClassUID
    0x00020013,  # ImplementationVersionName
)

_IMMUTABLE_VALUES = (str, bytes, int, float, type(None))


class _ValueFreeError(ValueError):
    """A failure whose message names no value, so it may be shown."""


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
        _refuse_text_in_pixels(ds)
    patient, has_patient_id = _patient_identity(ds)
    patient_ids = _PatientIds(
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
    walker = _Walker(
        rules=rules_for(policy),
        types=_iod_types(ds),
        allowed=allow_list().tags,
        key=bytes(key),
        patient_ids=patient_ids,
        date_shift_days=date_shift_days(patient, key),
        safe_private=safe_private_table(),
        cleaners=cleaners,
        document=cleaners.document if DeidOption.CLEAN_STRUCTURED_CONTENT in policy.options else {},
    )
    out = walker.dataset(ds, blank=False, where="", path=())

    out.PatientID = replacement
    out.PatientName = replacement
    _record_method(out, policy, defaced)

    source_meta = getattr(ds, "file_meta", None)
    if source_meta is not None:
        out.file_meta = _file_meta(source_meta, out, walker)
    if None not in ds.original_encoding:
        # Lets a dataset without file meta be written the way it was read.
        out.set_original_encoding(*ds.original_encoding)
    return out


@dataclass(frozen=True)
class _PatientIds:
    """What replaces a PatientID: the lookup table's research ID, else the keyed pseudonym."""

    key: bytes
    prefix: str
    lookup: PatientIdLookup | None
    require_lookup: bool

    def replace(self, patient_id: str, *, where: str) -> str:
        """The replacement of `patient_id` (non-empty, stripped); `where` prefixes error messages.

        Raises
        ------
        DeidentificationError
            If the lookup table is required and does not list the patient; the message names
            :func:`lookup_hint` of the ID, never the ID.
        """
        if self.lookup is not None:
            research_id = self.lookup.get(patient_id)
            if research_id is not None:
                return research_id
            if self.require_lookup:
                raise DeidentificationError(
                    f"{where}(0010,0020) PatientID is not in the patient ID lookup table "
                    f"(deid.patient_id_lookup), which deid.require_lookup requires; lookup hint "
                    f"{lookup_hint(patient_id, self.key)}: add the patient, restart the workers and retry",
                    code="deid.lookup_missing",
                )
        return pseudonymise(patient_id, self.key, self.prefix)


@dataclass(frozen=True)
class _Walker:
    """The per-call constants of one de-identification, and the recursive walk over a dataset."""

    rules: RuleSet
    types: Mapping[AttributePath, str] | None
    allowed: frozenset[int]
    key: bytes
    patient_ids: _PatientIds
    date_shift_days: int
    safe_private: frozenset[SafePrivateKey]
    #: The allow-lists of the Clean Structured Content and Clean Graphics cleaners.
    cleaners: CleanContexts
    #: What the top level keeps besides the table and the allow-list: an SR document's root
    #: content item under Clean Structured Content, nothing otherwise.
    document: Context

    def dataset(self, src: Dataset, *, blank: bool, where: str, path: AttributePath) -> Dataset:
        """De-identify one dataset or sequence item.

        `blank` is True inside a sequence being replaced with dummy content, where unlisted
        attributes are replaced too (see :class:`Action`); `path` holds the keywords of the
        enclosing sequences, to find an attribute's Type in the IOD.
        """
        out = Dataset()
        kept_private = self._safe_private_tags(src, where)
        for tag in list(src.keys()):
            number = int(tag)
            group, element = number >> 16, number & 0xFFFF
            if element == 0x0000 or group in (0x0000, 0x0002):
                # Group lengths go stale once elements are removed (they are retired anyway), and
                # command and file meta elements do not belong in a data set body: writers refuse
                # them, and dropping them is at least as protective as the table's X or U.
                continue
            root: Entry | None = None
            if group % 2 == 1:
                if number not in kept_private:
                    continue
                rule = None
            else:
                rule = self.rules.lookup(number)
                if rule is None and number not in self.allowed:
                    root = self.document.get(number) if not path and not blank else None
                    if root is None:
                        continue  # neither in Table E.1-1 nor allowed: removed, whatever its value
            label = where + _label(number, rule)
            with _failing_closed(label):
                elem = src[tag]
                if group % 2 == 1:
                    new = self._private(elem, blank, label, path)
                elif root is not None:
                    new = self._clean(elem, root, label, path)
                else:
                    new = self._public(elem, rule, blank, label, path)
            if new is not None:
                out.add(new)
        return out

    def _safe_private_tags(self, src: Dataset, where: str) -> frozenset[int]:
        """Tags of the private attributes of `src` to keep, with their private creators."""
        if self.rules.private.option is not Action.SAFE_PRIVATE:
            return frozenset()
        tags = list(src.keys())  # iterating a Dataset yields its elements, converting each
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            if tag.group % 2 == 1 and 0x0010 <= tag.element <= 0x00FF:
                try:
                    value = src[tag].value
                except Exception:  # noqa: BLE001 - fail closed, and the message may quote the value
                    raise DeidentificationError(
                        f"cannot read private creator {where}{_label(int(tag), None)}", code="deid.element"
                    ) from None
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                if isinstance(value, str):
                    creators[(tag.group, tag.element)] = value.strip(" \x00")
        kept: set[int] = set()
        for tag in tags:
            if tag.group % 2 == 1 and tag.element >= 0x1000:
                block = (tag.group, tag.element >> 8)
                creator = creators.get(block)
                if creator is not None and (tag.group, creator, tag.element & 0xFF) in self.safe_private:
                    kept.add(int(tag))
                    kept.add((block[0] << 16) | block[1])
        return frozenset(kept)

    def _private(self, elem: DataElement, blank: bool, label: str, path: AttributePath) -> DataElement:
        """A private attribute listed as safe, or its private creator: kept."""
        if elem.VR == "SQ":
            return self._items(elem, blank, label, (*path, ""))
        return _copy_element(elem)

    def _public(
        self, elem: DataElement, rule: Rule | None, blank: bool, label: str, path: AttributePath
    ) -> DataElement | None:
        number = int(elem.tag)
        if number == PATIENT_ID:
            # Set again at the top level; in nested items the same replacement keeps references linkable.
            return self._nested_patient_id(elem, label)
        if elem.VR == "SQ":
            return self._sequence(elem, rule, blank, label, path)
        return self.element(elem, rule, blank, path)

    def _basic(self, rule: Rule, path: AttributePath, *, sequence: bool) -> Action:
        """The Basic profile's action on `rule`'s attribute at `path`, by its Type in the IOD."""
        if not rule.combined:
            return rule.sequence if sequence else rule.element
        if self.types is None:
            attribute_type = None
        else:
            attribute_type = self.types.get((*path, rule.row.keyword), NOT_IN_IOD)
        return combined_action(rule.row.basic, attribute_type, sequence=sequence)

    def _nested_patient_id(self, elem: DataElement, label: str) -> DataElement:
        text = _joined_text(elem.value).strip(" \x00")
        if not text:
            return DataElement(elem.tag, elem.VR, empty_value_for_VR(elem.VR))
        where = label.removesuffix(_label(PATIENT_ID, None))
        return DataElement(elem.tag, elem.VR, self.patient_ids.replace(text, where=where))

    def _sequence(
        self,
        elem: DataElement,
        rule: Rule | None,
        blank: bool,
        label: str,
        path: AttributePath,
        items_context: str | None = None,
    ) -> DataElement | None:
        """De-identify a sequence; `items_context` names the cleaner context of its kept items.

        `items_context` is set for a row of the table met inside cleaned content (a nested
        Content Sequence, a Referenced Image Sequence): its items stay under that allow-list.
        """
        inner = (*path, keyword_for_tag(elem.tag) or "")
        if rule is None:
            action = Action.KEEP
        elif rule.option in (Action.SHIFT_DATES, Action.SAFE_PRIVATE, None):
            action = self._basic(rule, path, sequence=True)  # no option, or one not for sequences
        elif rule.option in (Action.CLEAN_STRUCTURED, Action.CLEAN_GRAPHICS):
            entries = (
                self.cleaners.structured if rule.option is Action.CLEAN_STRUCTURED else self.cleaners.graphics
            )
            context = entries.get(int(elem.tag))
            if context is not None and not blank:
                return self._clean_items(elem, context, label, inner)
            # Inside dummy content the enclosing sequence's D wins; and a sequence whose items no
            # allow-list describes (a row a later edition adds) is not kept on trust.
            action = self._basic(rule, path, sequence=True)
        else:
            action = rule.option
        if action is Action.REMOVE:
            return None
        if action is Action.EMPTY:
            return DataElement(elem.tag, "SQ", Sequence())
        if items_context is not None and action in (Action.KEEP, Action.REMAP_UID) and not blank:
            return self._clean_items(elem, items_context, label, inner)
        return self._items(elem, blank or action in (Action.DUMMY, Action.CLEAN), label, inner)

    def _clean_items(self, elem: DataElement, context: str, label: str, path: AttributePath) -> DataElement:
        """Keep a sequence whose items are cleaned against the allow-list `context`."""
        allowed = self.cleaners.contexts[context]
        items = [
            self._clean_dataset(item, allowed, where=f"{label}[{index}] > ", path=path)
            for index, item in enumerate(elem.value)
        ]
        return DataElement(elem.tag, "SQ", Sequence(items), is_undefined_length=elem.is_undefined_length)

    def _clean_dataset(self, src: Dataset, allowed: Context, *, where: str, path: AttributePath) -> Dataset:
        """One item of cleaned content: what `allowed` lists, treated as it says; nothing else.

        Private attributes go too, Retain Safe Private or not: the safe private table describes
        attributes of images, not of content items.
        """
        out = Dataset()
        for tag in list(src.keys()):
            entry = allowed.get(int(tag))
            if entry is None:
                continue  # not on this kind of item's allow-list: removed, whatever its value
            label = where + _label(int(tag), None)
            with _failing_closed(label):
                new = self._clean(src[tag], entry, label, path)
            if new is not None:
                out.add(new)
        return out

    def _clean(self, elem: DataElement, entry: Entry, label: str, path: AttributePath) -> DataElement | None:
        """One allowed attribute of cleaned content, treated as its `entry` says."""
        vr = base_vr(elem.VR)
        if vr != entry.vr:
            # Read as UN, or written with another VR than the standard's: its value is not what
            # the allow-list vouches for, so it is not examined.
            return None
        if entry.treatment is Treatment.TABLE:
            rule = self.rules.lookup(int(elem.tag))
            if rule is None:  # clean_contexts() refuses a TABLE entry that is not a row
                return None
            if vr == "SQ":
                return self._sequence(elem, rule, False, label, path, items_context=entry.items)
            return self.element(elem, rule, False, path)
        if vr == "SQ":
            if entry.items is None:  # clean_contexts() gives every sequence its items' context
                return None
            return self._clean_items(elem, entry.items, label, (*path, entry.keyword))
        if entry.treatment in (Treatment.KEEP, Treatment.CODE) or elem.is_empty:
            return _copy_element(elem)
        if entry.treatment is Treatment.TERM:
            values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            if all(_text(value).strip(" \x00") in entry.terms for value in values):
                return _copy_element(elem)
        return self._apply(elem, vr, Action.DUMMY)  # TEXT, and a TERM outside the standard's terms

    def _items(self, elem: DataElement, blank: bool, label: str, path: AttributePath) -> DataElement:
        items = [
            self.dataset(item, blank=blank, where=f"{label}[{index}] > ", path=path)
            for index, item in enumerate(elem.value)
        ]
        return DataElement(elem.tag, "SQ", Sequence(items), is_undefined_length=elem.is_undefined_length)

    def element(
        self, elem: DataElement, rule: Rule | None, blank: bool, path: AttributePath = ()
    ) -> DataElement | None:
        """De-identify one element that is not a sequence; None when it is removed."""
        vr = base_vr(elem.VR)
        if rule is None:
            if blank and vr not in STRUCTURAL_VRS and not elem.is_empty:
                return self._apply(elem, vr, Action.DUMMY)
            return _copy_element(elem)
        if rule.option is Action.SHIFT_DATES and vr in ("DA", "DT", "TM"):
            return self._shift_dates(elem, vr)
        if rule.option in (Action.CLEAN_STRUCTURED, Action.CLEAN_GRAPHICS):
            # The cleaners clean items of sequences. What else these columns mark C (overlay
            # bitmaps and their comments, curves; a sequence read as UN) cannot be cleaned
            # without reading pixels, so it is removed: see worker.deid.clean for why.
            return None
        if rule.option is Action.CLEAN and vr in TEXT_VRS:
            return self._apply(elem, vr, Action.CLEAN)
        if rule.option in (Action.KEEP, Action.REMAP_UID, Action.DUMMY, Action.EMPTY, Action.REMOVE):
            return self._apply(elem, vr, rule.option)
        return self._apply(elem, vr, self._basic(rule, path, sequence=False))

    def _apply(self, elem: DataElement, vr: str, action: Action) -> DataElement | None:
        if action is Action.KEEP:
            return _copy_element(elem)
        if action is Action.REMOVE:
            return None
        if action is Action.CLEAN:
            # Until descriptors are cleaned word by word: any non-empty text becomes a dummy.
            return _copy_element(elem) if elem.is_empty else self._apply(elem, vr, Action.DUMMY)
        if vr == "UI" and action in (Action.DUMMY, Action.REMAP_UID):
            # A dummy UID must stay unique where the original was: the keyed remap is one.
            return DataElement(elem.tag, elem.VR, _map_values(elem.value, self._remap))
        if action is Action.DUMMY:
            return DataElement(elem.tag, elem.VR, dummy_value(vr))
        # EMPTY, and REMAP_UID on a value that is not a UI (no UID to remap): nothing is kept.
        return DataElement(elem.tag, elem.VR, empty_value_for_VR(elem.VR))

    def _remap(self, uid: str) -> str:
        return remap_uid(uid, self.key) if uid.strip(" \x00") else ""

    def _shift_dates(self, elem: DataElement, vr: str) -> DataElement:
        if vr == "TM":
            return _copy_element(elem)  # a shift by whole days leaves the time of day as it was
        shift = shift_da if vr == "DA" else shift_dt
        try:
            value = _map_values(elem.value, lambda text: shift(text, self.date_shift_days))
        except ValueError as exc:  # shift_da and shift_dt never quote the value
            raise _ValueFreeError(
                f"its {vr} value cannot be shifted by the Modified Dates option ({exc})"
            ) from None
        return DataElement(elem.tag, elem.VR, value)


@contextlib.contextmanager
def _failing_closed(label: str) -> Iterator[None]:
    """Turn any failure on the element `label` into a :class:`DeidentificationError` without its value."""
    try:
        yield
    except DeidentificationError:
        raise
    except _ValueFreeError as exc:
        raise DeidentificationError(f"cannot de-identify {label}: {exc}", code="deid.element") from None
    except Exception as exc:  # noqa: BLE001 - fail closed: any failure stops this instance
        # `from None`: the original message may quote the value, which is PHI.
        raise DeidentificationError(
            f"cannot de-identify {label}: {type(exc).__name__}", code="deid.element"
        ) from None


def _copy_element(elem: DataElement) -> DataElement:
    """A copy of `elem` that shares immutable values (pixel data included) instead of copying."""
    value = elem.value
    if not isinstance(value, _IMMUTABLE_VALUES):
        value = copy.deepcopy(value)
    new = DataElement(
        elem.tag, elem.VR, value, is_undefined_length=elem.is_undefined_length, already_converted=True
    )
    new.private_creator = elem.private_creator
    return new


def _map_values(value: Any, function: Any) -> Any:
    """Apply `function` to the text of each value of a (possibly multi-valued) string element."""
    if isinstance(value, MultiValue | list | tuple):
        return [function(_text(item)) for item in value]
    return function(_text(value)) if value is not None else value


def _text(value: Any) -> str:
    # pydicom's DA/DT/TM objects (config.datetime_conversion) remember the string they came from.
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def _joined_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(item) for item in value)
    return _text(value)


def _label(number: int, rule: Rule | None) -> str:
    """How an element is named in messages: tag and keyword, never its value."""
    tag = f"({number >> 16:04X},{number & 0xFFFF:04X})"
    if (number >> 16) % 2 == 1:
        return f"{tag} private"
    keyword = (rule.row.keyword if rule is not None else "") or keyword_for_tag(BaseTag(number))
    return f"{tag} {keyword}" if keyword else tag


def _patient_identity(ds: Dataset) -> tuple[str, bool]:
    """What the pseudonym and the date offset derive from: PatientID, else StudyInstanceUID.

    The flag says whether it is the PatientID.
    """
    for number, keyword in ((PATIENT_ID, "PatientID"), (STUDY_INSTANCE_UID, "StudyInstanceUID")):
        try:
            elem = ds.get(BaseTag(number))
            text = _joined_text(elem.value).strip(" \x00") if elem is not None else ""
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
    sop_class = _top_text(ds, SOP_CLASS_UID)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None:
        sop_class = _top_text(meta, MEDIA_STORAGE_SOP_CLASS_UID)
    return attribute_types(sop_class) if sop_class else None


def _top_text(ds: Dataset, number: int) -> str:
    """The text of a top-level element of `ds` (empty when absent); a value it cannot read is refused."""
    try:
        elem = ds.get(BaseTag(number))
        return _joined_text(elem.value).strip(" \x00") if elem is not None else ""
    except Exception:  # noqa: BLE001 - fail closed, and the message may quote the value
        raise DeidentificationError(f"cannot read {_label(number, None)}", code="deid.element") from None


def _refuse_text_in_pixels(ds: Dataset) -> None:
    """Refuse an image whose pixels may show identifying text (PS3.15 E.3.1, Clean Pixel Data).

    Raises
    ------
    DeidentificationError
        If BurnedInAnnotation is YES, or the object is a secondary capture or screen save.
    """
    if _top_text(ds, BURNED_IN_ANNOTATION).upper() == "YES":
        raise DeidentificationError(
            "(0028,0301) BurnedInAnnotation is YES: the pixels may show identifying text, and pediface "
            "does not clean pixel data (Clean Pixel Data option), so the series is not forwarded",
            code="deid.burned_in_annotation",
        )
    sop_class = _top_text(ds, SOP_CLASS_UID)
    meta = getattr(ds, "file_meta", None)
    if not sop_class and meta is not None:
        sop_class = _top_text(meta, MEDIA_STORAGE_SOP_CLASS_UID)
    conversion = _top_text(ds, CONVERSION_TYPE).upper()
    image_type = {value.strip().upper() for value in _top_text(ds, IMAGE_TYPE).split("\\")}
    if sop_class in SECONDARY_CAPTURE_SOP_CLASSES:
        name: str | None = f"a {SECONDARY_CAPTURE_SOP_CLASSES[sop_class]} object"
    elif conversion == "WSD":
        name = "a workstation screen save ((0008,0064) ConversionType WSD)"
    elif "SCREEN SAVE" in image_type:
        name = "a screen save ((0008,0008) ImageType SCREEN SAVE)"
    elif conversion:
        name = "a secondary capture ((0008,0064) ConversionType is present)"
    else:
        name = None
    if name is not None:
        raise DeidentificationError(
            f"the instance is {name}: captured screens and documents may show identifying text in "
            "their pixels, and pediface does not clean pixel data (Clean Pixel Data option), so the "
            "series is not forwarded",
            code="deid.secondary_capture",
        )


def _record_method(out: Dataset, policy: DeidPolicy, defaced: bool) -> None:
    """Add the attributes that record the de-identification (PS3.15 E.1.1, PS3.3 C.7.1.1)."""
    options = policy.ordered_options()
    codes = [BASIC_PROFILE_CODE, *(OPTION_CODES[option] for option in options)]
    descriptions = [
        f"DICOM PS3.15 {EDITION} Basic Application Confidentiality Profile",
        *(option.value for option in options),
    ]
    if defaced:
        codes.append(CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE)
        descriptions.append("Clean Recognizable Visual Features (defaced)")
    descriptions.append(f"pediface {__version__}")

    out.PatientIdentityRemoved = "YES"
    # Earlier de-identifications, recorded in the input, stay on record before this one.
    previous = out.get("DeidentificationMethod")
    earlier = [value for value in _as_list(previous) if value] if previous else []
    out.DeidentificationMethod = [*earlier, *descriptions]
    items = list(out.get("DeidentificationMethodCodeSequence", []))
    present = {(item.get("CodingSchemeDesignator"), item.get("CodeValue")) for item in items}
    items.extend(_code_item(code) for code in codes if ("DCM", code.value) not in present)
    out.DeidentificationMethodCodeSequence = Sequence(items)

    if DeidOption.RETAIN_LONGITUDINAL_FULL_DATES in policy.options:
        out.LongitudinalTemporalInformationModified = "UNMODIFIED"
    elif DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES in policy.options:
        out.LongitudinalTemporalInformationModified = "MODIFIED"
    else:
        out.LongitudinalTemporalInformationModified = "REMOVED"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue | list | tuple) else [value]


def _code_item(code: MethodCode) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = code.meaning
    return item


def _file_meta(source: Dataset, out: Dataset, walker: _Walker) -> FileMetaDataset:
    """File meta information for `out`: an allow-list of `source`'s, with the new instance UID."""
    meta = FileMetaDataset()
    for number in FILE_META_KEPT:
        elem = source.get(BaseTag(number))
        if elem is not None:
            meta.add(_copy_element(elem))
    sop_instance_uid = out.get("SOPInstanceUID")
    if sop_instance_uid:
        meta.MediaStorageSOPInstanceUID = sop_instance_uid
    else:
        media = source.get(BaseTag(MEDIA_STORAGE_SOP_INSTANCE_UID))
        if media is not None:
            new = walker.element(media, walker.rules.lookup(MEDIA_STORAGE_SOP_INSTANCE_UID), blank=False)
            if new is not None:
                meta.add(new)
    return meta
