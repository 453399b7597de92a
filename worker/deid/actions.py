"""From Table E.1-1 codes to what the engine does to one element, and the replacement values.

Resolving a row's action for a policy
-------------------------------------
* **Options override the Basic profile.** When a selected option has a code in its column for a
  row, that code replaces the Basic profile's. When several selected options have a code for the
  same row, the most protective wins (a Clean beats a Keep): e.g. with Retain Device Identity
  (K) and Modified Dates (C), a calibration date is shifted, not kept.
* **Combined Basic codes** (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) let the choice depend on the
  attribute's Type in the IOD (:func:`combined_action`, Types from :mod:`worker.deid.iod`):
  D for Type 1 and 1C (a value is required), Z for Type 2 and 2C (present, may be empty), X for
  Type 3 and for an attribute the IOD does not have at that place, each falling back to the next
  code the row allows. Where the IOD is unknown, the engine keeps the attribute present with a
  non-identifying value, so the result stays valid whatever the Type: for elements D before Z
  before X (a dummy is valid even for Type 1, an empty value only for Type 2); for sequences Z
  before D (a sequence with no items is present and carries nothing). U* keeps the sequence and
  lets its items be de-identified, which replaces the UIDs inside through their own rows.
* **C depends on the column.** In the Modified Dates column it shifts dates; in the Safe Private
  column it keeps private attributes listed as safe; in the Clean Structured Content and Clean
  Graphics columns it keeps a sequence and cleans its items against that option's allow-list of
  item content (:mod:`worker.deid.clean`), and removes a non-sequence element (an overlay bitmap,
  a curve), which no allow-list can vouch for; in the other columns it cleans: free text that is
  not empty is replaced with a dummy, and a sequence is kept with dummy content (see
  :class:`Action`). Where a C cannot apply to an element's VR (a binary timestamp, say), the
  Basic profile's action applies instead: an option never makes the engine keep what it cannot
  clean.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from worker.deid.options import DeidOption, DeidPolicy
from worker.deid.table import ProfileRow, ProfileTable, profile_table


class Action(Enum):
    """What the engine does to one element.

    For a sequence: REMOVE drops it, EMPTY leaves it with no items, KEEP and REMAP_UID keep it
    and de-identify each item, DUMMY and CLEAN keep its items but with dummy content: rows of the
    table still apply inside, while attributes the table does not list, which it keeps
    elsewhere, are replaced with dummies too, because a code sequence such as Person
    Identification Code Sequence carries the identifier in its unlisted CodeValue. Only CS, UI
    and AT values (coded terms, class UIDs, tags) are kept there, so that items keep their
    structure. CLEAN_STRUCTURED and CLEAN_GRAPHICS keep a sequence and clean its items against an
    allow-list of item content instead (:mod:`worker.deid.clean`).

    The order of the members is their protection, lowest first: when two selected options act on
    one row, the later member wins.
    """

    KEEP = "keep"
    REMAP_UID = "remap_uid"
    SAFE_PRIVATE = "safe_private"
    SHIFT_DATES = "shift_dates"
    #: Clean Structured Content's C: the sequence stays, its items are cleaned against the
    #: content-item allow-list (codes, numbers and structure kept, text and names replaced).
    CLEAN_STRUCTURED = "clean_structured"
    #: Clean Graphics' C: the sequence stays, its items are cleaned against the graphic
    #: annotation allow-list (coordinates kept, text replaced); other elements are removed.
    CLEAN_GRAPHICS = "clean_graphics"
    CLEAN = "clean"
    DUMMY = "dummy"
    EMPTY = "empty"
    REMOVE = "remove"


#: Higher is more protective; used to settle two selected options that both act on a row.
_PROTECTION = {action: rank for rank, action in enumerate(Action)}

_CODE_ACTIONS = {
    "K": Action.KEEP,
    "U": Action.REMAP_UID,
    "C": Action.CLEAN,
    "D": Action.DUMMY,
    "Z": Action.EMPTY,
    "X": Action.REMOVE,
}


def _codes(text: str) -> frozenset[str]:
    return frozenset(code.rstrip("*") for code in text.split("/"))


def basic_element_action(code: str) -> Action:
    """The action on a non-sequence element for a Basic profile code such as ``"X/Z/D"``."""
    codes = _codes(code)
    for preferred in ("U", "D", "Z", "X", "K", "C"):
        if preferred in codes:
            return _CODE_ACTIONS[preferred]
    raise ValueError(f"no action code in {code!r}")


def basic_sequence_action(code: str) -> Action:
    """The action on a sequence for a Basic profile code such as ``"X/Z/D"``."""
    codes = _codes(code)
    if "U" in codes:
        return Action.KEEP  # U*: keep the items; their UIDs are replaced through their own rows
    for preferred in ("Z", "D", "X", "K", "C"):
        if preferred in codes:
            return _CODE_ACTIONS[preferred]
    raise ValueError(f"no action code in {code!r}")


#: Preferred codes by the attribute's Type in the IOD ("-": not in the IOD at that place).
_TYPE_PREFERENCES = {
    "1": ("D", "Z", "X"),
    "1C": ("D", "Z", "X"),
    "2": ("Z", "D", "X"),
    "2C": ("Z", "D", "X"),
    "3": ("X", "Z", "D"),
    "-": ("X", "Z", "D"),
}


def combined_action(code: str, attribute_type: str | None, *, sequence: bool) -> Action:
    """The action for a Basic profile `code`, given the attribute's Type in the IOD.

    Parameters
    ----------
    code : str
        The Basic profile's code, e.g. ``"X/Z/D"``.
    attribute_type : str | None
        ``"1"``, ``"1C"``, ``"2"``, ``"2C"``, ``"3"``, ``"-"`` (not in the IOD at that place), or
        None when the IOD is unknown.
    sequence : bool
        Whether the attribute is a sequence.

    Returns
    -------
    Action
        The action; U (and U*) always wins, since it removes nothing that the IOD needs.
    """
    codes = _codes(code)
    if attribute_type is None or "U" in codes or len(codes) == 1:
        return basic_sequence_action(code) if sequence else basic_element_action(code)
    for preferred in _TYPE_PREFERENCES[attribute_type]:
        if preferred in codes:
            return _CODE_ACTIONS[preferred]
    return basic_sequence_action(code) if sequence else basic_element_action(code)


def option_action(option: DeidOption, code: str) -> Action:
    """The action an option's column code asks for."""
    if code == "C" and option is DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES:
        return Action.SHIFT_DATES
    if code == "C" and option is DeidOption.RETAIN_SAFE_PRIVATE:
        return Action.SAFE_PRIVATE
    if code == "C" and option is DeidOption.CLEAN_STRUCTURED_CONTENT:
        return Action.CLEAN_STRUCTURED
    if code == "C" and option is DeidOption.CLEAN_GRAPHICS:
        return Action.CLEAN_GRAPHICS
    return _CODE_ACTIONS[code]


@dataclass(frozen=True)
class Rule:
    """The resolved actions of one table row under one policy.

    ``option`` is None when no selected option has a code for the row; otherwise it is tried
    first, and ``element``/``sequence`` (the Basic profile's) apply where it cannot.
    """

    row: ProfileRow
    element: Action
    sequence: Action
    option: Action | None

    @property
    def combined(self) -> bool:
        """Whether the Basic profile's code leaves a choice that depends on the Type in the IOD."""
        return "/" in self.row.basic


def resolve_rule(row: ProfileRow, options: frozenset[DeidOption]) -> Rule:
    """Resolve `row` for the selected `options` (see the module docstring)."""
    candidates = [
        option_action(option, code) for option, code in row.option_codes.items() if option in options
    ]
    chosen = max(candidates, key=_PROTECTION.__getitem__) if candidates else None
    return Rule(
        row=row,
        element=basic_element_action(row.basic),
        sequence=basic_sequence_action(row.basic),
        option=chosen,
    )


@dataclass(frozen=True)
class RuleSet:
    """Table E.1-1 resolved for one policy, indexed by tag."""

    exact: Mapping[int, Rule]
    repeating: tuple[Rule, ...]
    private: Rule
    #: Every tag looked up so far, with its rule or None: the repeating groups are searched once
    #: per tag and process, not once per element.
    _found: dict[int, Rule | None] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def lookup(self, tag: int) -> Rule | None:
        """The rule of a public attribute, or None when the table does not list it."""
        try:
            return self._found[tag]
        except KeyError:
            pass
        rule = self.exact.get(tag)
        if rule is None:
            index = _repeating_row(int(tag))
            rule = None if index is None else self.repeating[index]
        if len(self._found) < _MAX_FOUND:  # bounded: a hostile file may carry any number of tags
            self._found[int(tag)] = rule
        return rule


_MAX_FOUND = 65536


@functools.lru_cache(maxsize=_MAX_FOUND)
def _repeating_row(tag: int) -> int | None:
    """The index of the repeating-group row of Table E.1-1 that `tag` falls in: the same for every
    policy (a rule set's ``repeating`` follows the table's order), so found once per tag and process."""
    return next(
        (index for index, row in enumerate(profile_table().repeating) if row.pattern.matches(tag)), None
    )


def _build_rules(table: ProfileTable, options: frozenset[DeidOption]) -> RuleSet:
    return RuleSet(
        exact={tag: resolve_rule(row, options) for tag, row in table.exact.items()},
        repeating=tuple(resolve_rule(row, options) for row in table.repeating),
        private=resolve_rule(table.private, options),
    )


def rules_for(policy: DeidPolicy) -> RuleSet:
    """The rules of `policy`, built once per set of options and process."""
    return _rules_for_options(policy.options)


@functools.lru_cache(maxsize=512)
def _rules_for_options(options: frozenset[DeidOption]) -> RuleSet:
    return _build_rules(profile_table(), options)


# Replacement values ---------------------------------------------------------------------------

DUMMY_TEXT = "ANONYMOUS"

_DUMMY_VALUES: dict[str, Any] = {
    "AE": DUMMY_TEXT,
    "AS": "000D",
    "CS": DUMMY_TEXT,
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": DUMMY_TEXT,
    "LT": DUMMY_TEXT,
    "PN": DUMMY_TEXT,
    "SH": DUMMY_TEXT,
    "ST": DUMMY_TEXT,
    "TM": "000000",
    "UC": DUMMY_TEXT,
    "UR": "http://anonymous.invalid",  # .invalid is reserved (RFC 2606): it never resolves
    "UT": DUMMY_TEXT,
    "AT": 0,
    "FD": 0.0,
    "FL": 0.0,
    "SL": 0,
    "SS": 0,
    "SV": 0,
    "UL": 0,
    "US": 0,
    "UV": 0,
    # Binary: zeros, one value of the VR's width, even length as DICOM requires.
    "OB": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "OW": b"\x00\x00",
    "UN": b"\x00\x00",
}

#: VRs whose values are free text, names or dates: what Clean replaces.
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
)

#: VRs kept inside a dummy sequence: coded terms, class UIDs and tags give items their structure.
STRUCTURAL_VRS = frozenset({"CS", "UI", "AT"})


def base_vr(vr: str) -> str:
    """The first VR of an ambiguous one (``"US or SS"`` -> ``"US"``)."""
    return vr.split(" or ")[0].strip()


def dummy_value(vr: str) -> Any:
    """A non-identifying, non-empty value valid for `vr` (not for UI or SQ, handled by the engine).

    Raises
    ------
    ValueError
        If `vr` has no dummy value here.
    """
    try:
        return _DUMMY_VALUES[base_vr(vr)]
    except KeyError:
        raise ValueError(f"no dummy value for VR {vr!r}") from None


# Date shifting ---------------------------------------------------------------------------------

_DA_PATTERN = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DT_PATTERN = re.compile(r"(\d{4})(\d{2})?(\d{2})?(.*)")
_DT_TIME_REST = re.compile(r"(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?([+-]\d{4})?")
_DT_ZONE_REST = re.compile(r"([+-]\d{4})?")


def shift_da(value: str, days: int) -> str:
    """Shift a DA value (``YYYYMMDD``) by `days`; an empty value stays empty.

    Raises
    ------
    ValueError
        If `value` is not a valid date (the message never repeats the value).
    """
    text = value.strip()
    if not text:
        return ""
    match = _DA_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError("not a DA value of the form YYYYMMDD")
    day = _shift(_date(int(match[1]), int(match[2]), int(match[3])), days)
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def shift_dt(value: str, days: int) -> str:
    """Shift the date part of a DT value by `days`, keeping its precision, time and UTC offset.

    A DT with only a year or a year and month is shifted from the first day of that period and
    written back with the same precision. An empty value stays empty.

    Raises
    ------
    ValueError
        If `value` is not a valid DT (the message never repeats the value).
    """
    text = value.strip()
    if not text:
        return ""
    match = _DT_PATTERN.fullmatch(text)
    if match is None:
        raise ValueError("not a DT value")
    year, month, day, rest = match[1], match[2], match[3], match[4]
    if day is not None:
        valid_rest = _DT_TIME_REST.fullmatch(rest)
    else:
        valid_rest = _DT_ZONE_REST.fullmatch(rest)
    if valid_rest is None:
        raise ValueError("not a DT value")
    shifted = _shift(_date(int(year), int(month or 1), int(day or 1)), days)
    head = f"{shifted.year:04d}"
    if month is not None:
        head += f"{shifted.month:02d}"
    if day is not None:
        head += f"{shifted.day:02d}"
    return head + rest


def _shift(day: datetime.date, days: int) -> datetime.date:
    try:
        return day + datetime.timedelta(days=days)
    except OverflowError:
        raise ValueError("date out of range once shifted") from None


def _date(year: int, month: int, day: int) -> datetime.date:
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise ValueError("not a valid calendar date") from None
