"""Canary datasets: the proof that de-identification leaves nothing it must not.

A canary is a unique value (a string, UID, date or number no real header holds) written into one
attribute. :func:`build_canaries` writes one into every attribute of Table E.1-1 that can be
encoded (at the top level and again inside a sequence item), into repeating groups (overlay data,
comments, descriptions and labels, curves), private blocks, nested and private sequences and the
file meta information, into the identifying values of the items the Clean Structured Content and
Clean Graphics options keep (SR text, names, dates and UIDs three Content Sequences deep,
acquisition context, specimen preparation, waveform and graphic annotation text), and optionally
into every public attribute of pydicom's dictionary that the table does not list and the
allow-list does not name. After de-identification, :func:`surviving` finds which canaries are still there, and
:func:`expected_survivors` says which may be: only those that a selected option keeps (K).

The expectations are derived from the table's codes, not from the engine's resolved rules, so the
proof does not check the engine against itself. Used by the unit tests and ``bench/deid.py``
(where the same files measure other de-identifiers); nothing in the pipeline imports it.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field

from pydicom.datadict import DicomDictionary, dictionary_has_tag, dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from worker.deid.allowlist import allow_list
from worker.deid.table import ProfileRow, profile_table

#: Every text canary starts with this; none may be left in an output except the expected ones.
TEXT_PREFIX = b"CNRY"


#: Every canary UID starts with this root.
UID_ROOT = "1.999."


#: The shapes of the canary markers, found in one pass over a file (dates are searched one by one).
TOKENS = re.compile(rb"CNRY\d{5}|cnry\d{5}|1\.999\.\d{6}|7\.\d{6}E7|\+7\d{6}|121314\.\d{6}")


#: A safe private attribute (Table E.3.10-1): GEMS_ACQU_01 (0019,xx23) Table Speed, DS.
SAFE_PRIVATE_CREATOR = "GEMS_ACQU_01"


SAFE_PRIVATE_GROUP, SAFE_PRIVATE_ELEMENT = 0x0019, 0x23


PATIENT_NAME, PATIENT_ID, MEDIA_SOP_INSTANCE_UID = 0x00100010, 0x00100020, 0x00020003

_CONTENT_SEQUENCE = 0x0040A730


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
    ``"private"``, ``"safe-private"``, ``"command"``, ``"file-meta"`` or ``"content"`` (free text
    of a content item or graphic annotation that the table does not list, such as Text Value,
    which no option keeps).
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


class CanaryValues:
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
        self.values = CanaryValues()
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

    def add(self, item: Dataset, keyword: str, path: tuple[int, ...]) -> None:
        """Write a canary into `item`'s attribute `keyword`: its table row's, or content free text."""
        tag = int(tag_for_keyword(keyword) or 0)
        row = profile_table().lookup(tag)
        elem = self.element(tag, _vr_of(tag), path, row, "table" if row is not None else "content")
        assert elem is not None
        item.add(elem)

    def content_item(self, path: tuple[int, ...], depth: int) -> Dataset:
        """An SR content item with canaries in every value a content item can identify by, nested.

        `path` holds the tags of the sequences down to this item; below it, Content Sequences
        nest down to `depth` 3. Codes, numbers and structure carry no canary: the Clean Structured
        Content option keeps them.
        """
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
        item.ConceptNameCodeSequence.append(self.never_item((*path, 0x0040A043)))
        for keyword in ("TextValue", "PersonName", "Date", "Time", "DateTime", "UID"):
            self.add(item, keyword, path)
        for keyword in ("ObservationDateTime", "ObservationUID"):
            self.add(item, keyword, path)
        measured = Dataset()
        measured.NumericValue = "42"
        measured.MeasurementUnitsCodeSequence = Sequence([_code("mm", "UCUM", "millimeter")])
        item.MeasuredValueSequence = Sequence([measured])
        reference = Dataset()
        reference.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        self.add(reference, "ReferencedSOPInstanceUID", (*path, 0x00081199))
        item.ReferencedSOPSequence = Sequence([reference])
        if depth < 3:
            nested = (*path, _CONTENT_SEQUENCE)
            item.ContentSequence = Sequence([self.content_item(nested, depth + 1), self.never_item(nested)])
        return item

    def cleaned_items(self) -> dict[int, Dataset]:
        """The first item of each sequence that Clean Structured Content or Clean Graphics keeps."""
        content = self.content_item((_CONTENT_SEQUENCE,), 1)
        context = self.content_item((0x00400555,), 3)  # AcquisitionContextSequence
        specimen = Dataset()
        steps = (0x00400610, 0x00400612)  # SpecimenPreparation(StepContentItem)Sequence
        specimen.SpecimenPreparationStepContentItemSequence = Sequence([self.content_item(steps, 3)])
        waveform = Dataset()
        waveform.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Comment")])
        waveform.ReferencedWaveformChannels = [1, 1]
        waveform.AnnotationGroupNumber = 1
        for keyword in ("UnformattedTextValue", "ReferencedDateTime"):
            self.add(waveform, keyword, (0x0040B020,))
        return {
            _CONTENT_SEQUENCE: content,
            0x00400555: context,
            0x00400610: specimen,
            0x0040B020: waveform,
            0x00700001: self.graphic_annotation(),
        }

    def graphic_annotation(self) -> Dataset:
        """A graphic annotation item: a text object, a polyline and a ruler, with canaries in the text."""
        path = (0x00700001,)  # GraphicAnnotationSequence
        item = Dataset()
        self.add(item, "GraphicLayer", path)
        image = Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        self.add(image, "ReferencedSOPInstanceUID", (*path, 0x00081140))
        item.ReferencedImageSequence = Sequence([image])
        text = Dataset()
        text.BoundingBoxAnnotationUnits = "PIXEL"
        self.add(text, "UnformattedTextValue", (*path, 0x00700008))
        text.BoundingBoxTopLeftHandCorner = [1.0, 1.0]
        text.BoundingBoxBottomRightHandCorner = [40.0, 10.0]
        text.BoundingBoxTextHorizontalJustification = "LEFT"
        item.TextObjectSequence = Sequence([text, self.never_item((*path, 0x00700008))])
        graphic = Dataset()
        graphic.GraphicAnnotationUnits = "PIXEL"
        graphic.GraphicDimensions = 2
        graphic.NumberOfGraphicPoints = 2
        graphic.GraphicData = [10.0, 10.0, 50.0, 50.0]
        graphic.GraphicType = "POLYLINE"
        item.GraphicObjectSequence = Sequence([graphic, self.never_item((*path, 0x00700009))])
        tick = Dataset()
        tick.TickPosition = 0.5
        self.add(tick, "TickLabel", (*path, 0x00700209, 0x00700287))
        ruler = Dataset()
        ruler.CompoundGraphicInstanceID = 1
        ruler.GraphicAnnotationUnits = "PIXEL"
        ruler.GraphicDimensions = 2
        ruler.NumberOfGraphicPoints = 2
        ruler.GraphicData = [10.0, 60.0, 50.0, 60.0]
        ruler.CompoundGraphicType = "RULER"
        ruler.MajorTicksSequence = Sequence([tick])
        item.CompoundGraphicSequence = Sequence([ruler])
        return item


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


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

    # The sequences Clean Structured Content and Clean Graphics keep: real items first (their
    # canaries' paths go through first items), the table loop's private and unlisted item after.
    for tag, item in builder.cleaned_items().items():
        ds[tag].value.insert(0, item)

    # Repeating groups: overlays in two groups of their range, and curves.
    for tag, vr in ((0x60003000, "OW"), (0x60024000, "LT"), (0x50003000, "OB")):
        elem = builder.element(tag, vr, (), table.lookup(tag), "table")
        assert elem is not None
        ds.add(elem)
    # Overlay Description and Overlay Label: free text of the overlay, not rows of the table.
    for tag in (0x60000022, 0x60001500, 0x60020022):
        elem = builder.element(tag, "LO", (), None, "unlisted")
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


def build_cleaned_items() -> tuple[dict[int, Dataset], list[Canary]]:
    """Items for the sequences that Clean Structured Content and Clean Graphics keep, with canaries.

    For putting into another dataset (a real image): by tag of the sequence (Content Sequence,
    Acquisition Context, Specimen Preparation, Waveform and Graphic Annotation Sequences), its
    first item, and the canaries written into them. None of them survives without Retain options.
    """
    builder = _Builder()
    items = builder.cleaned_items()
    return items, builder.canaries
