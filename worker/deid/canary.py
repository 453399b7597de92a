"""Canary datasets: the proof that de-identification leaves nothing it must not.

A canary is a unique value (a string, UID, date or number no real header holds) written into one
attribute. :func:`build_canaries` writes one into every attribute of Table E.1-1 that can be
encoded (at the top level and again inside a sequence item), into repeating groups, private
blocks, nested and private sequences and the file meta information, and optionally into every
public attribute of pydicom's dictionary that the table does not list and the allow-list does
not name. After de-identification, :func:`surviving` finds which canaries are still there, and
:func:`expected_survivors` says which may be: only those that a selected option keeps (K).

The expectations are derived from the table's codes, not from the engine's resolved rules, so the
proof does not check the engine against itself. Used by the unit tests and ``bench/deid.py``
(where the same files measure other de-identifiers); nothing in the pipeline imports it.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import DicomDictionary, dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from worker.deid.allowlist import allow_list
from worker.deid.options import DeidOption
from worker.deid.table import ProfileRow, profile_table

#: Every text canary starts with this; none may be left in an output except the expected ones.
TEXT_PREFIX = b"CNRY"
#: Every canary UID starts with this root.
UID_ROOT = "1.999."
#: The shapes of the canary markers, found in one pass over a file (dates are searched one by one).
_TOKENS = re.compile(rb"CNRY\d{5}|cnry\d{5}|1\.999\.\d{6}|7\.\d{6}E7|\+7\d{6}|121314\.\d{6}")

#: A safe private attribute (Table E.3.10-1): GEMS_ACQU_01 (0019,xx23) Table Speed, DS.
SAFE_PRIVATE_CREATOR = "GEMS_ACQU_01"
SAFE_PRIVATE_GROUP, SAFE_PRIVATE_ELEMENT = 0x0019, 0x23

_PATIENT_NAME, _PATIENT_ID, _MEDIA_SOP_INSTANCE_UID = 0x00100010, 0x00100020, 0x00020003
#: The sequence the nested copies of the table's attributes are written into: allowed and not in
#: the table, so the engine always keeps it and walks its items, whatever the options.
_NESTING_SEQUENCE = 0x00081115  # ReferencedSeriesSequence
#: An attribute neither in the table nor allowed, to show that unlisted attributes go at any depth.
_UNLISTED_TEXT = 0x00102201  # PatientSpeciesDescription, LO
#: Unlisted attributes left without a canary: any ConversionType marks a secondary capture, which
#: the engine refuses as a whole (tested on its own).
_NO_CANARY = frozenset({0x00080064})


@dataclass(frozen=True, eq=False)
class Canary:
    """One canary value and where it was written.

    ``path`` holds the tags of the enclosing sequences (always their first item); ``marker`` is
    what shows the value in a written file, or None where it is checked on the dataset instead
    (binary numbers and short values). ``row`` is the Table E.1-1 row, None for attributes the
    table does not list and for private attributes; ``kind`` is ``"table"``, ``"unlisted"``,
    ``"private"``, ``"safe-private"``, ``"command"`` or ``"file-meta"``.
    """

    tag: int
    path: tuple[int, ...]
    vr: str
    value: object
    marker: bytes | None
    row: ProfileRow | None
    kind: str

    @property
    def where(self) -> str:
        return " > ".join(f"({tag >> 16:04X},{tag & 0xFFFF:04X})" for tag in (*self.path, self.tag))


@dataclass
class CanaryFile:
    """A dataset full of canaries, the canaries, and the command elements kept apart.

    Command elements (group 0000) cannot be written to a file: add them with
    :meth:`with_commands` to the dataset given to the engine, after writing the input.
    """

    dataset: Dataset
    canaries: list[Canary]
    commands: list[DataElement] = field(default_factory=list)
    rows: set[str] = field(default_factory=set)

    def with_commands(self) -> Dataset:
        """The dataset with the command elements added (the same object, changed in place)."""
        for elem in self.commands:
            self.dataset.add(elem)
        return self.dataset

    def rows_exercised(self) -> int:
        """How many rows of Table E.1-1 have an attribute with canaries (the private row included)."""
        return len(self.rows)


class _Values:
    """Unique canary values, one counter for all of them so that no two are equal."""

    def __init__(self) -> None:
        self.count = 0
        self.dates = 0

    def text(self) -> str:
        self.count += 1
        return f"{TEXT_PREFIX.decode()}{self.count:05d}"

    def make(self, vr: str) -> tuple[object, bytes | None]:
        """A value for `vr` and its marker; raises LookupError for a VR without canaries."""
        if vr in {"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"}:
            text = self.text()
            return text, text.encode()
        if vr == "PN":
            text = self.text()
            return f"{text}^Canary", text.encode()
        if vr == "UR":
            text = self.text()
            return f"http://{text.lower()}.example", text.lower().encode()
        if vr in {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}:
            text = self.text()
            return text.encode() + b"\x00" * 7, text.encode()  # 16 bytes: a multiple of every width
        self.count += 1
        n = self.count
        if vr == "UI":
            uid = f"{UID_ROOT}{100000 + n}"
            return uid, uid.encode()
        if vr in {"DA", "DT"}:
            # 1000 days apart: a shift by up to a year never turns one canary date into another.
            self.dates += 1
            day = datetime.date(1000, 1, 1) + datetime.timedelta(days=1000 * self.dates)
            value = f"{day:%Y%m%d}" + ("121314" if vr == "DT" else "")
            return value, value.encode()
        if vr == "TM":
            value = f"121314.{n:06d}"
            return value, value.encode()
        if vr == "DS":
            value = f"7.{n:06d}E7"
            return value, value.encode()
        if vr == "IS":
            value = f"+{7_000_000 + n}"
            return value, value.encode()
        if vr == "AS":
            return f"{n % 1000:03d}{'DWMY'[n // 1000 % 4]}", None
        if vr in {"US", "SS", "UL", "SL", "SV", "UV"}:
            return 1000 + n % 30000, None
        if vr in {"FL", "FD"}:
            return 1000.5 + n, None
        if vr == "AT":
            return 0x7FFF0000 + n % 0x10000, None
        raise LookupError(vr)


def _encodable(elem: DataElement) -> bool:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_data_element(buffer, elem)
    except Exception:  # noqa: BLE001 - whatever pydicom refuses to encode has no canary
        return False
    return True


def _vr_of(tag: int) -> str:
    """The attribute's VR (the first of an ambiguous one), or UN for a tag newer than pydicom."""
    return dictionary_VR(tag).split(" or ")[0].strip() if dictionary_has_tag(tag) else "UN"


class _Builder:
    def __init__(self) -> None:
        self.values = _Values()
        self.canaries: list[Canary] = []
        self.rows: set[str] = set()

    def element(
        self, tag: int, vr: str, path: tuple[int, ...], row: ProfileRow | None, kind: str
    ) -> DataElement | None:
        """A canary element for `tag`, recorded; None when pydicom cannot encode one."""
        if vr == "SQ":
            if row is not None:
                self.rows.add(row.pattern.text)
            return DataElement(tag, "SQ", Sequence([self.never_item((*path, tag))]))
        try:
            value, marker = self.values.make(vr)
        except LookupError:
            return None
        elem = DataElement(tag, vr, value)
        if not _encodable(elem):
            return None
        self.canaries.append(Canary(tag, path, vr, value, marker, row, kind))
        if row is not None:
            self.rows.add(row.pattern.text)
        elif kind == "private":
            self.rows.add(profile_table().private.pattern.text)
        return elem

    def never_item(self, path: tuple[int, ...]) -> Dataset:
        """A sequence item whose canaries no option keeps: private and unlisted attributes only."""
        item = Dataset()
        creator = self.values.text()
        item.add_new(0x00290010, "LO", creator)
        self.canaries.append(Canary(0x00290010, path, "LO", creator, creator.encode(), None, "private"))
        private = self.element(0x00291001, "LO", path, None, "private")
        assert private is not None
        item.add(private)
        unlisted = self.element(_UNLISTED_TEXT, "LO", path, None, "unlisted")
        assert unlisted is not None
        item.add(unlisted)
        return item


def build_canaries(base: Dataset, *, unlisted: bool = False) -> CanaryFile:
    """Write canaries into `base` (changed in place; give it a fresh dataset with file meta).

    Parameters
    ----------
    base : Dataset
        An image to fill, e.g. ``pydicom.examples.mr``; its values of the attributes that get a
        canary are overwritten.
    unlisted : bool
        Also write a canary into every public attribute of pydicom's dictionary that Table
        E.1-1 does not list and the allow-list does not name (about 4,000 more attributes).

    Returns
    -------
    CanaryFile
        The dataset, its canaries and the command elements kept apart.
    """
    builder = _Builder()
    table = profile_table()
    ds = base
    commands: list[DataElement] = []
    nested = Dataset()
    for tag, row in sorted(table.exact.items()):
        group = tag >> 16
        vr = _vr_of(tag)
        if group == 0x0002:
            elem = builder.element(tag, vr, (), row, "table")
            if elem is not None:
                ds.file_meta.add(elem)
            continue
        elem = builder.element(tag, vr, (), row, "command" if group == 0x0000 else "table")
        if elem is None:
            continue
        if group == 0x0000:
            commands.append(elem)
            continue
        ds.add(elem)
        if vr != "SQ":
            copy = builder.element(tag, vr, (_NESTING_SEQUENCE,), row, "table")
            if copy is not None:
                nested.add(copy)
    ds.add(DataElement(_NESTING_SEQUENCE, "SQ", Sequence([nested])))

    # Repeating groups: overlays in two groups of their range, and curves.
    for tag, vr in ((0x60003000, "OW"), (0x60024000, "LT"), (0x50003000, "OB")):
        elem = builder.element(tag, vr, (), table.lookup(tag), "table")
        assert elem is not None
        ds.add(elem)

    # Private attributes at the top level, a private sequence, and a safe private attribute.
    creator = builder.values.text()
    ds.add_new(0x00090010, "LO", creator)
    builder.canaries.append(Canary(0x00090010, (), "LO", creator, creator.encode(), None, "private"))
    for tag, vr in ((0x00091001, "LO"), (0x00091002, "SQ")):
        elem = builder.element(tag, vr, (), None, "private")
        assert elem is not None
        ds.add(elem)
    ds.add_new((SAFE_PRIVATE_GROUP << 16) | 0x0010, "LO", SAFE_PRIVATE_CREATOR)
    safe = builder.element(
        (SAFE_PRIVATE_GROUP << 16) | 0x1000 | SAFE_PRIVATE_ELEMENT, "DS", (), None, "safe-private"
    )
    assert safe is not None
    ds.add(safe)

    # An unlisted sequence that is not allowed, and an allowed one two levels deep.
    never = builder.element(0x00400260, "SQ", (), None, "unlisted")  # PerformedProtocolCodeSequence
    assert never is not None
    ds.add(never)
    outer = Dataset()
    outer.add(DataElement(0x00081199, "SQ", Sequence([builder.never_item((0x00089215, 0x00081199))])))
    ds.add(DataElement(0x00089215, "SQ", Sequence([outer])))  # DerivationCodeSequence > ReferencedSOPSequence

    # File meta information the engine drops: the sender's AE title.
    meta = builder.element(0x00020016, "AE", (), None, "file-meta")
    assert meta is not None
    ds.file_meta.add(meta)

    if unlisted:
        allowed = allow_list()
        for tag in sorted(DicomDictionary):
            group, element = tag >> 16, tag & 0xFFFF
            if group in (0x0000, 0x0002, 0xFFFE) or element == 0 or group % 2 == 1:
                continue
            if table.lookup(tag) is not None or tag in allowed or tag in ds or tag in _NO_CANARY:
                continue
            elem = builder.element(tag, _vr_of(tag), (), None, "unlisted")
            if elem is not None:
                ds.add(elem)
    return CanaryFile(dataset=ds, canaries=builder.canaries, commands=commands, rows=builder.rows)


def _kept_by(row: ProfileRow, vr: str, options: frozenset[DeidOption]) -> bool:
    """Whether the selected options keep the value of an attribute of `row` (read off the table).

    The Basic profile keeps no value of the table. A selected option keeps it when its code is
    K; the Modified Dates option's C keeps a TM value (dates move by whole days, the time of day
    stays); any other code of another selected option is more protective and wins.
    """
    codes = [(option, code) for option, code in row.option_codes.items() if option in options]
    if not codes:
        return False
    for option, code in codes:
        if code == "K":
            continue
        if code == "C" and option is DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES and vr == "TM":
            continue
        return False
    return True


def expected_survivors(canaries: Iterable[Canary], options: Iterable[DeidOption]) -> set[Canary]:
    """The canaries that may survive de-identification with `options`, from the table's codes."""
    selected = frozenset(options)
    expected: set[Canary] = set()
    for canary in canaries:
        if canary.kind == "safe-private":
            if DeidOption.RETAIN_SAFE_PRIVATE in selected:
                expected.add(canary)
            continue
        if canary.kind != "table" or canary.row is None or canary.vr == "SQ":
            continue
        if canary.tag in (_PATIENT_NAME, _PATIENT_ID, _MEDIA_SOP_INSTANCE_UID):
            continue  # always replaced: the pseudonym, and the file meta copy of the SOP Instance UID
        if _kept_by(canary.row, canary.vr, selected):
            expected.add(canary)
    return expected


def _value_at(ds: Dataset, canary: Canary) -> object | None:
    current = ds
    for tag in canary.path:
        if tag not in current or current[tag].VR != "SQ" or not current[tag].value:
            return None
        current = current[tag].value[0]
    if canary.tag >> 16 == 0x0002:
        current = getattr(ds, "file_meta", Dataset())
    if canary.tag not in current:
        return None
    return current[canary.tag].value


def surviving(canaries: Iterable[Canary], written: bytes, reread: Dataset) -> set[Canary]:
    """The canaries still present in a de-identified file.

    Parameters
    ----------
    canaries : Iterable[Canary]
        The canaries of the input.
    written : bytes
        The de-identified file as written.
    reread : Dataset
        The same file read back with pydicom.

    Returns
    -------
    set[Canary]
        Canaries whose marker is in `written`, or, for those without a marker, whose value is
        at their place in `reread`.
    """
    found: set[Canary] = set()
    tokens = set(_TOKENS.findall(written))
    for canary in canaries:
        if canary.marker is not None:
            shaped = _TOKENS.fullmatch(canary.marker) is not None
            if canary.marker in tokens if shaped else canary.marker in written:
                found.add(canary)
            continue
        value = _value_at(reread, canary)
        if value is not None and _same(value, canary.value):
            found.add(canary)
    return found


def _same(value: object, canary: object) -> bool:
    if isinstance(canary, float):
        try:
            return abs(float(value) - canary) < 1e-6  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    if isinstance(canary, int):
        return value == canary
    return str(value).strip() == str(canary)
