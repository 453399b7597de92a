"""Loading the vendored PS3.15 tables (``worker/deid/tables/``) into lookups by tag.

The tables are read once per process (:func:`profile_table`, :func:`safe_private_table` are
cached) from the installed package with :mod:`importlib.resources`. Rows are matched by tag
only: some keywords of the 2026d edition are unknown to pydicom.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources

from worker.deid.options import DeidOption

EDITION = "2026d"
PROFILE_TABLE_FILE = "ps3.15-annex-e.tsv"
SAFE_PRIVATE_TABLE_FILE = "safe-private.tsv"

#: Column of Table E.1-1 holding each option's action codes.
OPTION_COLUMNS: dict[DeidOption, str] = {
    DeidOption.RETAIN_SAFE_PRIVATE: "rtn_safe_priv",
    DeidOption.RETAIN_UIDS: "rtn_uids",
    DeidOption.RETAIN_DEVICE_IDENTITY: "rtn_dev_id",
    DeidOption.RETAIN_INSTITUTION_IDENTITY: "rtn_inst_id",
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: "rtn_pat_chars",
    DeidOption.RETAIN_LONGITUDINAL_FULL_DATES: "rtn_long_full_dates",
    DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES: "rtn_long_modif_dates",
    DeidOption.CLEAN_DESCRIPTORS: "clean_desc",
    DeidOption.CLEAN_STRUCTURED_CONTENT: "clean_struct_cont",
    DeidOption.CLEAN_GRAPHICS: "clean_graph",
}
_PROFILE_COLUMNS = ("tag", "keyword", "name", "retired", "basic", *OPTION_COLUMNS.values())
_SAFE_PRIVATE_COLUMNS = ("tag", "private_creator", "vr", "vm", "meaning")

#: Action codes of PS3.15 E.1.1; "U*" (in X/Z/U*) marks a sequence whose UIDs are replaced.
ACTION_CODES = frozenset({"X", "Z", "D", "K", "C", "U"})
_BASIC_PATTERN = re.compile(r"[XZDKCU]\*?(/[XZDKCU]\*?)*")
_TAG_PATTERN = re.compile(r"\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)")
_SAFE_TAG_PATTERN = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")
_PRIVATE_ROW_TAG = "(gggg,eeee) where gggg is odd"


@dataclass(frozen=True)
class TagPattern:
    """A tag, or a repeating group of tags where ``x`` stands for any hex digit."""

    text: str
    value: int
    mask: int

    @classmethod
    def parse(cls, text: str) -> TagPattern:
        """The pattern written `text`, e.g. ``"(0010,0010)"`` or ``"(60xx,3000)"``."""
        match = _TAG_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a tag or repeating-group pattern: {text!r}")
        digits = match[1] + match[2]
        value = int(digits.replace("x", "0"), 16)
        mask = int("".join("0" if digit == "x" else "F" for digit in digits), 16)
        return cls(text=text, value=value, mask=mask)

    @property
    def is_exact(self) -> bool:
        return self.mask == 0xFFFFFFFF

    def matches(self, tag: int) -> bool:
        return tag & self.mask == self.value


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1.

    ``basic`` is the Basic profile's code as written (``"X/Z/D"``); ``option_codes`` holds the
    non-empty option columns only.
    """

    pattern: TagPattern
    keyword: str
    name: str
    retired: bool
    basic: str
    option_codes: Mapping[DeidOption, str]


@dataclass(frozen=True)
class ProfileTable:
    """Table E.1-1 indexed for lookups by tag."""

    exact: Mapping[int, ProfileRow]
    repeating: tuple[ProfileRow, ...]
    private: ProfileRow

    def lookup(self, tag: int) -> ProfileRow | None:
        """The row of a public (even-group) attribute, or None when the table does not list it."""
        row = self.exact.get(tag)
        if row is not None:
            return row
        for candidate in self.repeating:
            if candidate.pattern.matches(tag):
                return candidate
        return None

    def __len__(self) -> int:
        return len(self.exact) + len(self.repeating) + 1


#: A safe private attribute: (group, private creator, element within the private block).
SafePrivateKey = tuple[int, str, int]


def _read_tsv(name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    text = resources.files("worker.deid").joinpath("tables", name).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"{name}: expected columns {columns}, got {tuple(reader.fieldnames or ())}")
    return list(reader)


def _parse_profile_row(row: Mapping[str, str], line: int) -> ProfileRow:
    where = f"{PROFILE_TABLE_FILE} line {line}"
    basic = row["basic"].strip()
    if not _BASIC_PATTERN.fullmatch(basic):
        raise ValueError(f"{where}: unknown basic profile action {basic!r}")
    option_codes: dict[DeidOption, str] = {}
    for option, column in OPTION_COLUMNS.items():
        code = row[column].strip()
        if not code:
            continue
        if code not in ACTION_CODES:
            raise ValueError(f"{where}: unknown action {code!r} in column {column}")
        option_codes[option] = code
    tag_text = row["tag"].strip()
    pattern = (
        TagPattern(text=tag_text, value=0, mask=0)  # the private row is matched by group parity
        if tag_text == _PRIVATE_ROW_TAG
        else TagPattern.parse(tag_text)
    )
    return ProfileRow(
        pattern=pattern,
        keyword=row["keyword"].strip(),
        name=row["name"].strip(),
        retired=row["retired"].strip() == "Y",
        basic=basic,
        option_codes=option_codes,
    )


@functools.cache
def profile_table() -> ProfileTable:
    """Table E.1-1 of PS3.15 2026d, loaded once per process.

    Returns
    -------
    ProfileTable
        The table indexed by tag.

    Raises
    ------
    ValueError
        If the vendored file is malformed (a packaging defect).
    """
    exact: dict[int, ProfileRow] = {}
    repeating: list[ProfileRow] = []
    private: ProfileRow | None = None
    for line, raw in enumerate(_read_tsv(PROFILE_TABLE_FILE, _PROFILE_COLUMNS), start=2):
        row = _parse_profile_row(raw, line)
        if row.pattern.text == _PRIVATE_ROW_TAG:
            private = row
        elif row.pattern.is_exact:
            if row.pattern.value in exact:
                raise ValueError(f"{PROFILE_TABLE_FILE} line {line}: duplicate tag {row.pattern.text}")
            exact[row.pattern.value] = row
        else:
            repeating.append(row)
    if private is None:
        raise ValueError(f"{PROFILE_TABLE_FILE}: the private attributes row is missing")
    # The most specific pattern (fewest wildcards) wins when several repeating groups match.
    repeating.sort(key=lambda row: -row.pattern.mask.bit_count())
    return ProfileTable(exact=exact, repeating=tuple(repeating), private=private)


@functools.cache
def safe_private_table() -> frozenset[SafePrivateKey]:
    """Table E.3.10-1 of PS3.15 2026d (Safe Private Attributes), loaded once per process.

    Returns
    -------
    frozenset[SafePrivateKey]
        ``(group, private creator, element byte)`` of every safe private attribute; the private
        creator is compared after stripping surrounding spaces, as DICOM pads it.

    Raises
    ------
    ValueError
        If the vendored file is malformed (a packaging defect).
    """
    keys: set[SafePrivateKey] = set()
    for line, raw in enumerate(_read_tsv(SAFE_PRIVATE_TABLE_FILE, _SAFE_PRIVATE_COLUMNS), start=2):
        match = _SAFE_TAG_PATTERN.fullmatch(raw["tag"].strip())
        creator = raw["private_creator"].strip()
        if match is None or not creator:
            raise ValueError(f"{SAFE_PRIVATE_TABLE_FILE} line {line}: malformed tag or private creator")
        group = int(match[1], 16)
        if group % 2 == 0:
            raise ValueError(f"{SAFE_PRIVATE_TABLE_FILE} line {line}: group {match[1]} is not private")
        keys.add((group, creator, int(match[2], 16)))
    return frozenset(keys)
