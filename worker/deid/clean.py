"""What the Clean Structured Content and Clean Graphics options keep: allow-lists of item content.

Why allow-lists
---------------
Under these options (PS3.15 E.3.3 Clean Graphics, E.3.4 Clean Structured Content) Table E.1-1
gives C to a handful of sequences (Content Sequence, Acquisition Context Sequence, Specimen
Preparation Sequence, Waveform Annotation Sequence, Graphic Annotation Sequence): keep them, but
clean what identifies. The table lists only some of what their items hold (Person Name, Date,
UID are rows; Text Value is not), so keeping the items and applying the table would let free text
through. Cleaning here is the other way round: for each kind of item (a *context*), a list of
what may stay and how, and everything else, private attributes included, is removed. A new
attribute of the standard, a vendor's extension, a misplaced element: none of it leaves the site
until someone adds it here.

How each allowed attribute is treated (:class:`Treatment`):

* ``KEEP``: numbers, coordinates, tags and class UIDs, whose VRs cannot spell a name;
* ``TERM``: an enumerated code string (Value Type, Graphic Type, ...), kept only when every
  value is one of the standard's terms, since a CS can hold 16 characters of anything;
* ``CODE``: the parts of a coded entry (Code Sequence Macro). Concept names, coded answers and
  units come from coding schemes, not from a keyboard, and without them a report cannot be
  read: the option exists to keep non-identifying content, and the codes are its skeleton;
* ``TEXT``: free text and user-defined labels (Text Value, a graphic layer's name, a tick label):
  replaced with a dummy of the VR. Text is not cleaned word by word, since no list of names is
  complete, so a report's prose does not survive, only its coded skeleton;
* ``TABLE``: a row of Table E.1-1 (Person Name, Date, Date Time, Time, UID, Referenced SOP
  Instance UID, Unformatted Text Value): the row's action for the selected options applies,
  exactly as elsewhere, so names are replaced, dates follow the date options (removed or
  replaced, shifted with Modified Dates, kept with Full Dates) and UIDs are remapped with the
  engine's keyed UID remapping, which keeps references between instances consistent;
* ``ITEMS``: a sequence whose items are cleaned in another context (a code sequence, a measured
  value, nested content items to any depth).

Items are kept even when nothing in them survives: SR by-reference relationships name items by
their position, so dropping one would repoint the references after it.

Under Clean Structured Content the top level of the dataset gets one more context, because an
SR document's root content item is the dataset itself: its continuity, template, completion and
verification flags, performed procedure codes and evidence lists (the UIDs the content
references) stay with the Content Sequence, or the cleaned tree would have no root.

:func:`clean_contexts` checks the lists once per process and refuses a list that breaks these
rules (a row of the table treated otherwise than ``TABLE``, text VRs marked ``KEEP``), so that an
edit cannot quietly let text through.

What is not kept, and why
-------------------------
* Overlay planes (60xx) and curves (50xx) under Clean Graphics: an overlay is a bitmap, and
  scanners and workstations draw names, dates and IDs into overlay planes as pixels; a bitmap
  that outlines the head would also show the profile of the face the masker removed from the
  pixel data. Telling drawn text from a region of interest needs the OCR that Clean Pixel Data
  would need, and curves (retired since 2004) carry free-text labels and data whose meaning
  depends on retired attributes. The engine removes both, with their descriptions, labels and
  comments: removal is the one cleaning that cannot miss. Vector graphics in a Graphic
  Annotation Sequence are kept: they are coordinates of points, lines and shapes, and their text
  objects are cleaned.
* Text and line styles (font names are free text), graphic layer definitions, and the other
  modules of a presentation state or SR document that neither the table nor the allow-list
  names: they are not content items, so these options do not reach them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from pydicom.datadict import dictionary_VR, tag_for_keyword

from worker.deid.allowlist import allow_list
from worker.deid.table import profile_table


class Treatment(Enum):
    """How the cleaners treat one allowed attribute (see the module docstring)."""

    KEEP = "keep"
    TERM = "term"
    CODE = "code"
    TEXT = "text"
    TABLE = "table"
    ITEMS = "items"


@dataclass(frozen=True)
class Entry:
    """One allowed attribute of a context: its treatment, and for a sequence its items' context.

    ``terms`` are the values a ``TERM`` keeps; ``vr`` is the dictionary's VR, which the value
    must have to be examined at all (a value read as UN is removed).
    """

    keyword: str
    treatment: Treatment
    vr: str
    items: str | None = None
    terms: frozenset[str] = frozenset()


#: A context: the allowed attributes of one kind of item, by tag.
Context = Mapping[int, Entry]


def _terms(text: str) -> frozenset[str]:
    """The values of a ``|``-separated list (terms hold spaces)."""
    return frozenset(text.split("|"))


#: VRs whose values cannot spell text: numbers, coordinates, tags, UIDs (digits and dots).
KEEPABLE_VRS = _terms("AT|UI|DS|IS|FL|FD|US|SS|UL|SL|SV|UV|OF|OD|OL")
#: VRs of the Code Sequence Macro's parts.
CODE_VRS = _terms("SH|LO|UC|UR|CS|UI")
#: VRs replaced by a dummy when ``TEXT``.
FREE_TEXT_VRS = _terms("CS|SH|LO|ST|LT|UT|UC|PN")

# The contexts, as (keyword, treatment, items context or terms). Terms are PS3.3's enumerated
# values (2026d); a value outside them is replaced, as text would be.
_Spec = tuple[str, Treatment, str | frozenset[str] | None]

_YES_NO = _terms("Y|N")
_UNITS = _terms("PIXEL|DISPLAY|MATRIX")
_RELATIONSHIP_TYPES = _terms(
    "CONTAINS|HAS PROPERTIES|HAS OBS CONTEXT|HAS ACQ CONTEXT|INFERRED FROM|SELECTED FROM|HAS CONCEPT MOD"
)
_VALUE_TYPES = _terms(
    "TEXT|NUM|CODE|DATETIME|DATE|TIME|UIDREF|PNAME|COMPOSITE|IMAGE|WAVEFORM|SCOORD|SCOORD3D|TCOORD|"
    "CONTAINER|TABLE"
)
_TEMPORAL_RANGE_TYPES = _terms("POINT|MULTIPOINT|SEGMENT|MULTISEGMENT|BEGIN|END")
_COMPOUND_GRAPHIC_TYPES = _terms(
    "MULTILINE|INFINITELINE|CUTLINE|RANGELINE|RULER|AXIS|CROSSHAIR|ARROW|RECTANGLE|ELLIPSE"
)

_CODE: tuple[_Spec, ...] = (
    # Code Sequence Macro (PS3.3 Table 8.8-1); versions (DT) are left out, as in the allow-list.
    ("CodeValue", Treatment.CODE, None),
    ("CodingSchemeDesignator", Treatment.CODE, None),
    ("CodingSchemeVersion", Treatment.CODE, None),
    ("CodeMeaning", Treatment.CODE, None),
    ("LongCodeValue", Treatment.CODE, None),
    ("URNCodeValue", Treatment.CODE, None),
    ("MappingResource", Treatment.CODE, None),
    ("MappingResourceName", Treatment.CODE, None),
    ("MappingResourceUID", Treatment.CODE, None),
    ("ContextIdentifier", Treatment.CODE, None),
    ("ContextUID", Treatment.CODE, None),
    ("ContextGroupExtensionFlag", Treatment.TERM, _YES_NO),
    ("ContextGroupExtensionCreatorUID", Treatment.CODE, None),
    ("EquivalentCodeSequence", Treatment.ITEMS, "code"),
)

_CONTENT: tuple[_Spec, ...] = (
    # Content Item Macro and Document Content/Relationship Macros (PS3.3 Tables 10-2, C.17-5, C.17-6).
    ("RelationshipType", Treatment.TERM, _RELATIONSHIP_TYPES),
    ("ValueType", Treatment.TERM, _VALUE_TYPES),
    ("ConceptNameCodeSequence", Treatment.ITEMS, "code"),
    ("ConceptCodeSequence", Treatment.ITEMS, "code"),
    ("ModifierCodeSequence", Treatment.ITEMS, "code"),
    ("NumericValueQualifierCodeSequence", Treatment.ITEMS, "code"),
    ("MeasuredValueSequence", Treatment.ITEMS, "measured-value"),
    ("NumericValue", Treatment.KEEP, None),
    ("FloatingPointValue", Treatment.KEEP, None),
    ("RationalNumeratorValue", Treatment.KEEP, None),
    ("RationalDenominatorValue", Treatment.KEEP, None),
    ("MeasurementUnitsCodeSequence", Treatment.ITEMS, "code"),
    ("TextValue", Treatment.TEXT, None),
    ("PersonName", Treatment.TABLE, None),
    ("DateTime", Treatment.TABLE, None),
    ("Date", Treatment.TABLE, None),
    ("Time", Treatment.TABLE, None),
    ("UID", Treatment.TABLE, None),
    ("ObservationDateTime", Treatment.TABLE, None),
    ("ObservationUID", Treatment.TABLE, None),
    ("ContentSequence", Treatment.TABLE, "content"),
    ("ContentItemModifierSequence", Treatment.ITEMS, "content"),
    ("ContinuityOfContent", Treatment.TERM, _terms("SEPARATE|CONTINUOUS")),
    ("ContentTemplateSequence", Treatment.ITEMS, "template"),
    ("ReferencedContentItemIdentifier", Treatment.KEEP, None),
    ("ReferencedSOPSequence", Treatment.ITEMS, "reference"),
    ("GraphicData", Treatment.KEEP, None),
    ("GraphicType", Treatment.TERM, _terms("POINT|MULTIPOINT|POLYLINE|CIRCLE|ELLIPSE|ELLIPSOID|POLYGON")),
    ("PixelOriginInterpretation", Treatment.TERM, _terms("FRAME|VOLUME")),
    ("FiducialUID", Treatment.TABLE, None),
    ("ReferencedFrameOfReferenceUID", Treatment.TABLE, None),
    ("TemporalRangeType", Treatment.TERM, _TEMPORAL_RANGE_TYPES),
    ("ReferencedSamplePositions", Treatment.KEEP, None),
    ("ReferencedTimeOffsets", Treatment.KEEP, None),
    ("ReferencedDateTime", Treatment.TABLE, None),
)

_MEASURED_VALUE: tuple[_Spec, ...] = (
    ("NumericValue", Treatment.KEEP, None),
    ("FloatingPointValue", Treatment.KEEP, None),
    ("RationalNumeratorValue", Treatment.KEEP, None),
    ("RationalDenominatorValue", Treatment.KEEP, None),
    ("MeasurementUnitsCodeSequence", Treatment.ITEMS, "code"),
)

_TEMPLATE: tuple[_Spec, ...] = (
    ("MappingResource", Treatment.CODE, None),
    ("MappingResourceUID", Treatment.CODE, None),
    ("TemplateIdentifier", Treatment.CODE, None),
    ("TemplateVersion", Treatment.TABLE, None),
    ("TemplateLocalVersion", Treatment.TABLE, None),
)

_REFERENCE: tuple[_Spec, ...] = (
    # SOP Instance Reference and Image/Waveform SOP Instance Reference Macros (PS3.3 10-11, C.17-7).
    ("ReferencedSOPClassUID", Treatment.KEEP, None),
    ("ReferencedSOPInstanceUID", Treatment.TABLE, None),
    ("ReferencedFrameNumber", Treatment.KEEP, None),
    ("ReferencedSegmentNumber", Treatment.KEEP, None),
    ("ReferencedWaveformChannels", Treatment.KEEP, None),
    ("ReferencedSOPSequence", Treatment.ITEMS, "reference"),
    ("PurposeOfReferenceCodeSequence", Treatment.ITEMS, "code"),
)

_SPECIMEN_PREPARATION: tuple[_Spec, ...] = (
    # Specimen Preparation Sequence items (PS3.3 Table C.7.6.22-1): content items only.
    ("SpecimenPreparationStepContentItemSequence", Treatment.ITEMS, "content"),
)

_WAVEFORM_ANNOTATION: tuple[_Spec, ...] = (
    # Waveform Annotation module (PS3.3 C.10.10).
    ("UnformattedTextValue", Treatment.TABLE, None),
    ("ConceptNameCodeSequence", Treatment.ITEMS, "code"),
    ("ConceptCodeSequence", Treatment.ITEMS, "code"),
    ("ModifierCodeSequence", Treatment.ITEMS, "code"),
    ("MeasurementUnitsCodeSequence", Treatment.ITEMS, "code"),
    ("NumericValue", Treatment.KEEP, None),
    ("ReferencedWaveformChannels", Treatment.KEEP, None),
    ("AnnotationGroupNumber", Treatment.KEEP, None),
    ("TemporalRangeType", Treatment.TERM, _TEMPORAL_RANGE_TYPES),
    ("ReferencedSamplePositions", Treatment.KEEP, None),
    ("ReferencedTimeOffsets", Treatment.KEEP, None),
    ("ReferencedDateTime", Treatment.TABLE, None),
)

_GRAPHIC_ANNOTATION: tuple[_Spec, ...] = (
    # Graphic Annotation module (PS3.3 C.10.5). The layer name is user-defined: it is text.
    ("GraphicLayer", Treatment.TEXT, None),
    ("ReferencedImageSequence", Treatment.TABLE, "image-reference"),
    ("TextObjectSequence", Treatment.ITEMS, "text-object"),
    ("GraphicObjectSequence", Treatment.ITEMS, "graphic-object"),
    ("CompoundGraphicSequence", Treatment.ITEMS, "compound-graphic"),
)

_IMAGE_REFERENCE: tuple[_Spec, ...] = (
    ("ReferencedSOPClassUID", Treatment.KEEP, None),
    ("ReferencedSOPInstanceUID", Treatment.TABLE, None),
    ("ReferencedFrameNumber", Treatment.KEEP, None),
    ("ReferencedSegmentNumber", Treatment.KEEP, None),
)

_TEXT_OBJECT: tuple[_Spec, ...] = (
    ("BoundingBoxAnnotationUnits", Treatment.TERM, _UNITS),
    ("AnchorPointAnnotationUnits", Treatment.TERM, _UNITS),
    ("UnformattedTextValue", Treatment.TABLE, None),
    ("BoundingBoxTopLeftHandCorner", Treatment.KEEP, None),
    ("BoundingBoxBottomRightHandCorner", Treatment.KEEP, None),
    ("BoundingBoxTextHorizontalJustification", Treatment.TERM, _terms("LEFT|RIGHT|CENTER")),
    ("AnchorPoint", Treatment.KEEP, None),
    ("AnchorPointVisibility", Treatment.TERM, _YES_NO),
    ("GraphicGroupID", Treatment.KEEP, None),
    ("CompoundGraphicInstanceID", Treatment.KEEP, None),
)

_GRAPHIC_OBJECT: tuple[_Spec, ...] = (
    ("GraphicAnnotationUnits", Treatment.TERM, _UNITS),
    ("GraphicDimensions", Treatment.KEEP, None),
    ("NumberOfGraphicPoints", Treatment.KEEP, None),
    ("GraphicData", Treatment.KEEP, None),
    ("GraphicType", Treatment.TERM, _terms("POINT|POLYLINE|INTERPOLATED|CIRCLE|ELLIPSE")),
    ("GraphicFilled", Treatment.TERM, _YES_NO),
    ("GraphicGroupID", Treatment.KEEP, None),
    ("CompoundGraphicInstanceID", Treatment.KEEP, None),
)

_COMPOUND_GRAPHIC: tuple[_Spec, ...] = (
    ("CompoundGraphicInstanceID", Treatment.KEEP, None),
    ("GraphicAnnotationUnits", Treatment.TERM, _UNITS),
    ("GraphicDimensions", Treatment.KEEP, None),
    ("NumberOfGraphicPoints", Treatment.KEEP, None),
    ("GraphicData", Treatment.KEEP, None),
    ("CompoundGraphicType", Treatment.TERM, _COMPOUND_GRAPHIC_TYPES),
    ("GraphicFilled", Treatment.TERM, _YES_NO),
    ("RotationAngle", Treatment.KEEP, None),
    ("RotationPoint", Treatment.KEEP, None),
    ("GapLength", Treatment.KEEP, None),
    ("DiameterOfVisibility", Treatment.KEEP, None),
    ("TickAlignment", Treatment.TERM, _terms("BOTTOM|CENTER|TOP")),
    ("ShowTickLabel", Treatment.TERM, _YES_NO),
    ("TickLabelAlignment", Treatment.TERM, _terms("BOTTOM|TOP")),
    ("MajorTicksSequence", Treatment.ITEMS, "ticks"),
    ("GraphicGroupID", Treatment.KEEP, None),
)

_TICKS: tuple[_Spec, ...] = (
    ("TickPosition", Treatment.KEEP, None),
    ("TickLabel", Treatment.TEXT, None),
)

_DOCUMENT: tuple[_Spec, ...] = (
    # The root content item of an SR document is the dataset itself (PS3.3 C.17.3): its
    # continuity and template are kept at the top level with the Content Sequence, or the cleaned
    # tree would have no root (its Value Type and title, the Concept Name Code Sequence, are on
    # the allow-list already). The flags are the SR Document General module's (C.17.2).
    ("ContinuityOfContent", Treatment.TERM, _terms("SEPARATE|CONTINUOUS")),
    ("ContentTemplateSequence", Treatment.ITEMS, "template"),
    ("CompletionFlag", Treatment.TERM, _terms("PARTIAL|COMPLETE")),
    ("VerificationFlag", Treatment.TERM, _terms("UNVERIFIED|VERIFIED")),
    ("PreliminaryFlag", Treatment.TERM, _terms("PRELIMINARY|FINAL")),
    ("PerformedProcedureCodeSequence", Treatment.ITEMS, "code"),
    # The evidence lists name the instances the content references: UIDs only (remapped by their
    # rows, as the references in the content are), so that a cleaned report still resolves.
    ("CurrentRequestedProcedureEvidenceSequence", Treatment.ITEMS, "evidence"),
    ("PertinentOtherEvidenceSequence", Treatment.ITEMS, "evidence"),
)

_EVIDENCE: tuple[_Spec, ...] = (
    # Hierarchical SOP Instance Reference Macro (PS3.3 Table C.17-3); retrieve locations (AE titles,
    # URLs, file-set IDs) name the site and are left out.
    ("StudyInstanceUID", Treatment.TABLE, None),
    ("ReferencedSeriesSequence", Treatment.ITEMS, "evidence-series"),
)

_EVIDENCE_SERIES: tuple[_Spec, ...] = (
    ("SeriesInstanceUID", Treatment.TABLE, None),
    ("ReferencedSOPSequence", Treatment.ITEMS, "reference"),
)

_SPECS: dict[str, tuple[_Spec, ...]] = {
    "code": _CODE,
    "content": _CONTENT,
    "measured-value": _MEASURED_VALUE,
    "template": _TEMPLATE,
    "reference": _REFERENCE,
    "specimen-preparation": _SPECIMEN_PREPARATION,
    "waveform-annotation": _WAVEFORM_ANNOTATION,
    "graphic-annotation": _GRAPHIC_ANNOTATION,
    "image-reference": _IMAGE_REFERENCE,
    "text-object": _TEXT_OBJECT,
    "graphic-object": _GRAPHIC_OBJECT,
    "compound-graphic": _COMPOUND_GRAPHIC,
    "ticks": _TICKS,
    "document": _DOCUMENT,
    "evidence": _EVIDENCE,
    "evidence-series": _EVIDENCE_SERIES,
}

#: The context of the items of each sequence that Clean Structured Content's C keeps.
STRUCTURED_CONTENT_ENTRIES: dict[str, str] = {
    "ContentSequence": "content",
    "AcquisitionContextSequence": "content",
    "SpecimenPreparationSequence": "specimen-preparation",
    "WaveformAnnotationSequence": "waveform-annotation",
}
#: The context of the items of each sequence that Clean Graphics' C keeps.
GRAPHICS_ENTRIES: dict[str, str] = {
    "GraphicAnnotationSequence": "graphic-annotation",
}
#: The context of the top level of a dataset under Clean Structured Content (an SR's root item).
DOCUMENT_CONTEXT = "document"


@dataclass(frozen=True)
class CleanContexts:
    """The checked contexts, by name, and the entry context of each cleaned sequence, by tag."""

    contexts: Mapping[str, Context]
    structured: Mapping[int, str]
    graphics: Mapping[int, str]

    @property
    def document(self) -> Context:
        """What Clean Structured Content keeps at the top level besides the table and allow-list."""
        return self.contexts[DOCUMENT_CONTEXT]


def _tag(keyword: str, where: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{where}: {keyword} is not a keyword of pydicom's dictionary")
    return int(tag)


def _entry(spec: _Spec, where: str) -> tuple[int, Entry]:
    keyword, treatment, extra = spec
    tag = _tag(keyword, where)
    vr = dictionary_VR(tag).split(" or ")[0].strip()
    items = extra if isinstance(extra, str) else None
    terms = extra if isinstance(extra, frozenset) else frozenset()
    return tag, Entry(keyword=keyword, treatment=treatment, vr=vr, items=items, terms=terms)


def build_contexts(specs: Mapping[str, tuple[_Spec, ...]] = _SPECS) -> CleanContexts:
    """Build and check the contexts from `specs` (see :func:`clean_contexts`)."""
    table = profile_table()
    allowed = allow_list()
    contexts: dict[str, dict[int, Entry]] = {}
    for name, context_specs in specs.items():
        context: dict[int, Entry] = {}
        for spec in context_specs:
            where = f"clean context {name!r}, {spec[0]}"
            tag, entry = _entry(spec, where)
            if tag in context:
                raise ValueError(f"{where}: listed twice")
            _check_entry(entry, table.lookup(tag) is not None, where)
            if name == DOCUMENT_CONTEXT and (table.lookup(tag) is not None or tag in allowed):
                raise ValueError(f"{where}: the table or the allow-list already decides it at the top level")
            context[tag] = entry
        contexts[name] = context
    for name, context in contexts.items():
        for entry in context.values():
            if entry.items is not None and entry.items not in contexts:
                raise ValueError(
                    f"clean context {name!r}, {entry.keyword}: unknown items context {entry.items!r}"
                )
    structured = {
        _tag(keyword, "structured content entries"): name
        for keyword, name in STRUCTURED_CONTENT_ENTRIES.items()
    }
    graphics = {_tag(keyword, "graphics entries"): name for keyword, name in GRAPHICS_ENTRIES.items()}
    for tag, name in (*structured.items(), *graphics.items()):
        if name not in contexts or table.lookup(tag) is None:
            raise ValueError(
                f"entry ({tag >> 16:04X},{tag & 0xFFFF:04X}): not a row of the table or no context {name!r}"
            )
    return CleanContexts(contexts=contexts, structured=structured, graphics=graphics)


def _check_entry(entry: Entry, in_table: bool, where: str) -> None:
    """Refuse an entry that would bypass the table or keep text (the rules of the module docstring)."""
    if in_table != (entry.treatment is Treatment.TABLE):
        raise ValueError(
            f"{where}: rows of Table E.1-1, and only they, are treated TABLE (the row's action applies)"
        )
    sequence = entry.vr == "SQ"
    if sequence != (entry.items is not None):
        raise ValueError(f"{where}: a sequence needs the context of its items, and only a sequence has one")
    if entry.treatment is Treatment.ITEMS and not sequence:
        raise ValueError(f"{where}: ITEMS is for sequences")
    if entry.treatment is Treatment.KEEP and entry.vr not in KEEPABLE_VRS:
        raise ValueError(f"{where}: VR {entry.vr} can hold text and cannot be kept as is")
    if entry.treatment is Treatment.TERM and (entry.vr != "CS" or not entry.terms):
        raise ValueError(f"{where}: TERM needs a CS attribute and its enumerated values")
    if entry.treatment is Treatment.CODE and entry.vr not in CODE_VRS:
        raise ValueError(f"{where}: VR {entry.vr} is not a part of a coded entry")
    if entry.treatment is Treatment.TEXT and entry.vr not in FREE_TEXT_VRS:
        raise ValueError(f"{where}: TEXT is for text VRs, not {entry.vr}")


@functools.cache
def clean_contexts() -> CleanContexts:
    """The contexts of the two cleaners, built and checked once per process.

    Returns
    -------
    CleanContexts
        The allowed content of each kind of item, and where each cleaned sequence starts.

    Raises
    ------
    ValueError
        If a context breaks a rule of the module docstring (a defect of this file): an unknown
        keyword, a row of Table E.1-1 not treated ``TABLE`` (or an unlisted attribute treated
        so), a text VR kept as is, a term without its values, a sequence without its items'
        context, or a top-level entry that the table or the allow-list already decides.
    """
    return build_contexts()
