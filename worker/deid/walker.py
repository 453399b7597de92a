"""Walking a dataset element by element, at every depth: the table's action, the allow-list, safe
private attributes, cleaned sequences. Fails closed with messages that name elements, never values.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from common.errors import DeidentificationError
from worker.deid.actions import (
    STRUCTURAL_VRS,
    TEXT_VRS,
    Action,
    Rule,
    RuleSet,
    base_vr,
    combined_action,
    dummy_value,
    shift_da,
    shift_dt,
)
from worker.deid.clean import CleanContexts, Context, Entry, Treatment
from worker.deid.descriptors import DESCRIPTOR_VRS, Identifiers, clean_descriptor
from worker.deid.elements import copy_element, element_label, joined_text, map_values, text_of
from worker.deid.iod import NOT_IN_IOD, AttributePath
from worker.deid.lookup import PatientIdLookup
from worker.deid.private import ResearchPrivate
from worker.deid.pseudonym import lookup_hint, pseudonymise, remap_uid
from worker.deid.table import SafePrivateKey
from worker.deid.tags import PATIENT_ID
from worker.deid.undecoded import dictionary_vr, emptied, remapped_uids, undecoded

#: What :meth:`Walker._undecoded` returns for an element that must be decoded first.
_DECODE = object()


@dataclass(frozen=True)
class PatientIds:
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
class Walker:
    """The per-call constants of one de-identification, and the recursive walk over a dataset."""

    rules: RuleSet
    types: Mapping[AttributePath, str] | None
    allowed: frozenset[int]
    key: bytes
    patient_ids: PatientIds
    date_shift_days: int
    safe_private: frozenset[SafePrivateKey]
    #: The allow-lists of the Clean Structured Content and Clean Graphics cleaners.
    cleaners: CleanContexts
    #: What the top level keeps besides the table and the allow-list: an SR document's root
    #: content item under Clean Structured Content, nothing otherwise.
    document: Context
    #: The research profile's private allow-lists (kept beyond Table E.3.10-1), or None.
    research: ResearchPrivate | None = None
    #: Descriptors that Clean Descriptors cleans word by word rather than replaces with a dummy.
    descriptors: frozenset[int] = frozenset()
    #: The instance's own identifiers, which those descriptors lose.
    identifiers: Identifiers = Identifiers(frozenset(), ())

    def dataset(self, src: Dataset, *, blank: bool, where: str, path: AttributePath) -> Dataset:
        """De-identify one dataset or sequence item.

        `blank` is True inside a sequence being replaced with dummy content, where unlisted
        attributes are replaced too (see :class:`Action`); `path` holds the keywords of the
        enclosing sequences, to find an attribute's Type in the IOD.
        """
        elements: dict[BaseTag, DataElement | RawDataElement] = {}
        private: list[DataElement] = []
        kept_private = self._kept_private(src, where)
        lookup = self.rules.lookup
        document = self.document if not path and not blank else {}
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
                rule = lookup(number)
                if rule is None and number not in self.allowed:
                    root = document.get(number)
                    if root is None:
                        continue  # neither in Table E.1-1 nor allowed: removed, whatever its value
            try:
                if group % 2 == 0 and root is None:
                    fast = self._undecoded(src.get_item(tag), number, rule, blank, path)
                    if fast is not _DECODE:
                        if fast is not None:
                            elements[tag] = fast
                        continue
                elem = src[tag]
                if group % 2 == 0 and root is None and elem.VR != "SQ" and number != PATIENT_ID:
                    new = self.element(elem, rule, blank, path)  # the common case: no label needed
                else:
                    label = where + element_label(number, rule)
                    if group % 2 == 1:
                        new = self._private(elem, kept_private[number], blank, label, path)
                    elif root is not None:
                        new = self._clean(elem, root, label, path)
                    else:
                        new = self._public(elem, rule, blank, label, path)
            except DeidentificationError:
                raise
            except Exception as exc:  # noqa: BLE001 - fail closed: any failure stops this instance
                # `from None`: the original message may quote the value, which is PHI.
                raise DeidentificationError(
                    f"cannot de-identify {where + element_label(number, rule)}: {type(exc).__name__}",
                    code="deid.element",
                ) from None
            if new is not None:
                elements[new.tag] = new
                if group % 2 == 1:
                    private.append(new)
        out = Dataset(elements)
        for new in private:
            # What adding them one by one would have done: name their block's creator.
            creator = elements.get(BaseTag((new.tag.group << 16) | (new.tag.element >> 8)))
            if creator is not None and creator is not new:
                new.private_creator = out[creator.tag].value
        return out

    def _undecoded(
        self,
        elem: DataElement | RawDataElement,
        number: int,
        rule: Rule | None,
        blank: bool,
        path: AttributePath,
    ) -> RawDataElement | None | object:
        """The fast path (:mod:`worker.deid.undecoded`): `elem` kept, emptied or with new UIDs, or
        None when removed, all without decoding its value; :data:`_DECODE` when it needs decoding.
        """
        if type(elem) is not RawDataElement or elem.value is None or number == PATIENT_ID:
            return _DECODE
        vr = elem.VR or dictionary_vr(number)
        if vr is None or len(vr) != 2 or vr in ("SQ", "UN"):
            return _DECODE
        if rule is None:
            action = _DECODE if blank else Action.KEEP
        else:
            action = self._element_action(rule, vr, path)
        if action is Action.REMOVE:
            return None
        if action is Action.KEEP:
            return undecoded(elem, number) or _DECODE
        if action is Action.EMPTY or (action is Action.REMAP_UID and vr != "UI"):
            return emptied(elem._replace(VR=vr))
        if vr == "UI" and action in (Action.DUMMY, Action.REMAP_UID):
            return remapped_uids(elem._replace(VR=vr), self._remap)
        return _DECODE

    def _element_action(self, rule: Rule, vr: str, path: AttributePath) -> Action | object:
        """What :meth:`element` does to a non-sequence element of `rule` with `vr`, where the
        value does not matter; :data:`_DECODE` where it does (dates shifted, text cleaned)."""
        option = rule.option
        if option is Action.SHIFT_DATES and vr in ("DA", "DT", "TM"):
            return _DECODE
        if option in (Action.CLEAN_STRUCTURED, Action.CLEAN_GRAPHICS):
            return Action.REMOVE
        if option is Action.CLEAN and vr in TEXT_VRS:
            return _DECODE
        if option in (Action.KEEP, Action.REMAP_UID, Action.DUMMY, Action.EMPTY, Action.REMOVE):
            return option
        return self._basic(rule, path, sequence=False)

    def _kept_private(self, src: Dataset, where: str) -> dict[int, SafePrivateKey | None]:
        """The private attributes of `src` to keep, by tag: each with its key (None for a creator).

        Those of Table E.3.10-1 under Retain Safe Private, and under the research profile those of
        its own allow-list too (:mod:`worker.deid.private`).
        """
        if self.rules.private.option is not Action.SAFE_PRIVATE:
            return {}
        tags = list(src.keys())  # iterating a Dataset yields its elements, converting each
        creators: dict[tuple[int, int], str] = {}
        for tag in tags:
            if tag.group % 2 == 1 and 0x0010 <= tag.element <= 0x00FF:
                try:
                    value = src[tag].value
                except Exception:  # noqa: BLE001 - fail closed, and the message may quote the value
                    raise DeidentificationError(
                        f"cannot read private creator {where}{element_label(int(tag), None)}",
                        code="deid.element",
                    ) from None
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                if isinstance(value, str):
                    creators[(tag.group, tag.element)] = value.strip(" \x00")
        extra = self.research.rules if self.research is not None else {}
        kept: dict[int, SafePrivateKey | None] = {}
        for tag in tags:
            if tag.group % 2 == 1 and tag.element >= 0x1000:
                block = (tag.group, tag.element >> 8)
                creator = creators.get(block)
                key = (tag.group, creator or "", tag.element & 0xFF)
                if creator is not None and (key in self.safe_private or key in extra):
                    kept[int(tag)] = key
                    kept[(block[0] << 16) | block[1]] = None
        return kept

    def _private(
        self, elem: DataElement, key: SafePrivateKey | None, blank: bool, label: str, path: AttributePath
    ) -> DataElement | None:
        """A kept private attribute or its private creator.

        A Safe Private Attribute of Table E.3.10-1 is kept as it is; one the research profile adds
        is kept in the form its allow-list gives (checked, or its block filtered), or dropped.
        """
        if key is not None and key not in self.safe_private and self.research is not None:
            kept = self.research.element(elem, key)
            if kept is None:
                return None
            if kept.VR != "SQ":
                return kept
        if elem.VR == "SQ":
            return self._items(elem, blank, label, (*path, ""))
        return copy_element(elem)

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
        text = joined_text(elem.value).strip(" \x00")
        if not text:
            return DataElement(elem.tag, elem.VR, empty_value_for_VR(elem.VR))
        where = label.removesuffix(element_label(PATIENT_ID, None))
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
            label = where + element_label(int(tag), None)
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
            return copy_element(elem)
        if entry.treatment is Treatment.TERM:
            values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
            if all(text_of(value).strip(" \x00") in entry.terms for value in values):
                return copy_element(elem)
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
            return copy_element(elem)
        if rule.option is Action.SHIFT_DATES and vr in ("DA", "DT", "TM"):
            shifted = self._shift_dates(elem, vr)
            if shifted is not None:
                return shifted
            # Not a date (a scanner's '***'): it cannot be shifted, so the Basic profile's action applies.
            return self._apply(elem, vr, self._basic(rule, path, sequence=False))
        if rule.option in (Action.CLEAN_STRUCTURED, Action.CLEAN_GRAPHICS):
            # The cleaners clean items of sequences. What else these columns mark C (overlay
            # bitmaps and their comments, curves; a sequence read as UN) cannot be cleaned
            # without reading pixels, so it is removed: see worker.deid.clean for why.
            return None
        if rule.option is Action.CLEAN and vr in TEXT_VRS:
            if int(elem.tag) in self.descriptors and vr in DESCRIPTOR_VRS:
                cleaned = map_values(elem.value, lambda text: clean_descriptor(text, self.identifiers))
                return DataElement(elem.tag, elem.VR, cleaned)
            return self._apply(elem, vr, Action.CLEAN)
        if rule.option in (Action.KEEP, Action.REMAP_UID, Action.DUMMY, Action.EMPTY, Action.REMOVE):
            return self._apply(elem, vr, rule.option)
        return self._apply(elem, vr, self._basic(rule, path, sequence=False))

    def _apply(self, elem: DataElement, vr: str, action: Action) -> DataElement | None:
        if action is Action.KEEP:
            return copy_element(elem)
        if action is Action.REMOVE:
            return None
        if action is Action.CLEAN:
            # Text no cleaner can vouch for (comments, histories): any non-empty value becomes a dummy.
            return copy_element(elem) if elem.is_empty else self._apply(elem, vr, Action.DUMMY)
        if vr == "UI" and action in (Action.DUMMY, Action.REMAP_UID):
            # A dummy UID must stay unique where the original was: the keyed remap is one.
            return DataElement(elem.tag, elem.VR, map_values(elem.value, self._remap))
        if action is Action.DUMMY:
            return DataElement(elem.tag, elem.VR, dummy_value(vr))
        # EMPTY, and REMAP_UID on a value that is not a UI (no UID to remap): nothing is kept.
        return DataElement(elem.tag, elem.VR, empty_value_for_VR(elem.VR))

    def _remap(self, uid: str) -> str:
        return _remapped(uid, self.key) if uid.strip(" \x00") else ""

    def _shift_dates(self, elem: DataElement, vr: str) -> DataElement | None:
        """The element with its dates shifted; None when a value is not a valid date or date-time."""
        if vr == "TM":
            return copy_element(elem)  # a shift by whole days leaves the time of day as it was
        shift = shift_da if vr == "DA" else shift_dt
        try:
            value = map_values(elem.value, lambda text: shift(text, self.date_shift_days))
        except ValueError:
            return None
        return DataElement(elem.tag, elem.VR, value)


@contextlib.contextmanager
def _failing_closed(label: str) -> Iterator[None]:
    """Turn any failure on the element `label` into a :class:`DeidentificationError` without its value."""
    try:
        yield
    except DeidentificationError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed: any failure stops this instance
        # `from None`: the original message may quote the value, which is PHI.
        raise DeidentificationError(
            f"cannot de-identify {label}: {type(exc).__name__}", code="deid.element"
        ) from None


@functools.lru_cache(maxsize=16384)
def _remapped(uid: str, key: bytes) -> str:
    # The UIDs of a study (its own, its series', frames of reference, referenced instances)
    # recur in every instance: each is hashed once per worker, not once per element.
    return remap_uid(uid, key)
