"""Clean Structured Content and Clean Graphics on real structures.

A Comprehensive SR with content nested three levels deep, a presentation state with graphic
annotations, an MR image with overlay planes and curves, and every real vendor series under
../shared/data/dicom with SR content, annotations and overlays written into it: what the options
keep (structure, codes, numbers, coordinates) is kept, what identifies (text, names, dates, UIDs)
is cleaned, and nothing else is left.
"""

from __future__ import annotations

import copy
import datetime
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pydicom.examples
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from evaluation.canary import TEXT_PREFIX, UID_ROOT, build_cleaned_items
from tests.unit.test_deid_canary import dciodvfy_errors
from tests.unit.test_deid_real import DICOM, SERIES, _private_tags, leaked_values
from worker.deid import DeidOption, DeidPolicy, deidentify, remap_uid
from worker.deid.actions import Action, option_action
from worker.deid.clean import Treatment, build_contexts, clean_contexts
from worker.deid.options import (
    BASIC_PROFILE_CODE,
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE,
    OPTION_CODES,
    UNSUPPORTED_OPTIONS,
)
from worker.deid.table import profile_table

KEY = b"pediface-unit-test-key-0123456789"
BASIC = DeidPolicy()
STRUCTURED = DeidPolicy.from_names(["Clean Structured Content"])
GRAPHICS = DeidPolicy.from_names(["Clean Graphics"])
BOTH = DeidPolicy.from_names(["Clean Structured Content", "Clean Graphics"])
FULL_DATES = DeidOption.RETAIN_LONGITUDINAL_FULL_DATES.value
MODIFIED_DATES = DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES.value

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.10.9999."
#: The identifying values the SR below holds; none may be left in a cleaned output.
SR_PHI = ("Smith", "Jane", "MRN4711", "Who^Doctor", "Dr Who", "20240229", "20240301101500", "PACS1", ROOT)


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def content(relationship: str, value_type: str, name: Dataset, **values: object) -> Dataset:
    item = Dataset()
    item.RelationshipType, item.ValueType = relationship, value_type
    item.ConceptNameCodeSequence = Sequence([name])
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def comprehensive_sr() -> Dataset:
    """A small Comprehensive SR (TID 2000-like): observer, findings with text, a measurement, an image.

    The measurement has its own Content Sequence, three levels below the root: a coded finding
    site, a date and a UID reference.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.ComprehensiveSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ROOT + "3"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.ComprehensiveSRStorage, ROOT + "3"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ROOT + "1", ROOT + "2"
    ds.PatientName, ds.PatientID = "Smith^Jane", "MRN4711"
    ds.PatientBirthDate, ds.PatientSex = "20150407", "F"
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20240301", "101500", "20240301", "103000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "Who^Doctor", "S1", "ACC1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = "SR", 1, 1, "ACME"
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = Sequence([code("36554-4", "LN", "MR Head")])
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "2000"
    ds.ContentTemplateSequence = Sequence([template])

    site = content(
        "HAS PROPERTIES",
        "CODE",
        code("363698007", "SCT", "Finding Site"),
        ConceptCodeSequence=Sequence([code("12738006", "SCT", "Brain")]),
    )
    date = content("HAS PROPERTIES", "DATE", code("111060", "DCM", "Study Date"), Date="20240229")
    uid = content("HAS PROPERTIES", "UIDREF", code("112002", "DCM", "Series Instance UID"), UID=ROOT + "20")
    measured = Dataset()
    measured.NumericValue = "12.5"
    measured.MeasurementUnitsCodeSequence = Sequence([code("mm", "UCUM", "millimeter")])
    number = content(
        "CONTAINS",
        "NUM",
        code("81827009", "SCT", "Diameter"),
        MeasuredValueSequence=Sequence([measured]),
        ContentSequence=Sequence([site, date, uid]),
    )
    text = content(
        "CONTAINS", "TEXT", code("121071", "DCM", "Finding"), TextValue="Jane Smith (MRN4711) seen by Dr Who"
    )
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = MR_IMAGE, ROOT + "30"
    image = content(
        "CONTAINS",
        "IMAGE",
        code("121200", "DCM", "Illustration of ROI"),
        ReferencedSOPSequence=Sequence([reference]),
    )
    findings = content(
        "CONTAINS",
        "CONTAINER",
        code("121070", "DCM", "Findings"),
        ContinuityOfContent="SEPARATE",
        ContentSequence=Sequence([text, number, image]),
    )
    observer = content(
        "HAS OBS CONTEXT", "PNAME", code("121008", "DCM", "Person Observer Name"), PersonName="Who^Doctor"
    )
    started = content(
        "HAS OBS CONTEXT", "DATETIME", code("111526", "DCM", "DateTime Started"), DateTime="20240301101500"
    )
    ds.ContentSequence = Sequence([observer, started, findings])

    # The evidence the image reference points to (Hierarchical SOP Instance Reference Macro).
    series = Dataset()
    series.SeriesInstanceUID, series.RetrieveAETitle = ROOT + "31", "PACS1"
    series.ReferencedSOPSequence = Sequence([copy.deepcopy(reference)])
    study = Dataset()
    study.StudyInstanceUID, study.ReferencedSeriesSequence = ROOT + "32", Sequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([study])
    return ds


def nodes(ds: Dataset, path: str = "") -> Iterator[tuple[str, Dataset]]:
    """Every content item of an SR tree, root first, with its position."""
    yield path or "root", ds
    for index, item in enumerate(ds.get("ContentSequence", [])):
        yield from nodes(item, f"{path}/{index}")


def codes_of(item: Dataset, keyword: str) -> list[tuple[str, str, str]]:
    return [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in item.get(keyword, [])]


# The options, their codes and their actions ----------------------------------------------------------


def test_both_options_are_accepted_and_recorded_with_their_cid_7050_codes() -> None:
    assert set(UNSUPPORTED_OPTIONS) == {DeidOption.CLEAN_PIXEL_DATA}
    out = deidentify(pydicom.examples.mr, BOTH, KEY, defaced=True)
    recorded = [
        (item.CodingSchemeDesignator, item.CodeValue) for item in out.DeidentificationMethodCodeSequence
    ]
    assert recorded == [("DCM", "113100"), ("DCM", "113104"), ("DCM", "113103"), ("DCM", "113102")]
    assert "Clean Structured Content" in out.DeidentificationMethod
    assert "Clean Graphics" in out.DeidentificationMethod


def test_every_method_code_agrees_with_pydicoms_cid_7050() -> None:
    cid7050 = {}
    for name in codes.cid7050.dir():
        entry = getattr(codes.cid7050, name)
        cid7050[entry.value] = (entry.scheme_designator, entry.meaning)
    ours = [BASIC_PROFILE_CODE, CLEAN_RECOGNIZABLE_VISUAL_FEATURES_CODE, *OPTION_CODES.values()]
    assert OPTION_CODES[DeidOption.CLEAN_STRUCTURED_CONTENT].value == "113104"
    assert OPTION_CODES[DeidOption.CLEAN_GRAPHICS].value == "113103"
    for method in ours:
        assert cid7050[method.value] == ("DCM", method.meaning)
    assert len(cid7050) == len(ours)  # every code of CID 7050 is one the engine can record


def test_c_resolves_to_each_columns_own_action() -> None:
    assert option_action(DeidOption.CLEAN_STRUCTURED_CONTENT, "C") is Action.CLEAN_STRUCTURED
    assert option_action(DeidOption.CLEAN_GRAPHICS, "C") is Action.CLEAN_GRAPHICS
    assert option_action(DeidOption.CLEAN_DESCRIPTORS, "C") is Action.CLEAN


# The allow-lists ---------------------------------------------------------------------------------------


def test_the_allow_lists_load_and_never_bypass_the_table() -> None:
    table = profile_table()
    contexts = clean_contexts()
    for context in contexts.contexts.values():
        for tag, entry in context.items():
            assert (table.lookup(tag) is not None) == (entry.treatment is Treatment.TABLE), entry.keyword
    # Every sequence these columns mark C has the allow-list of its items.
    for option, entries in (
        (DeidOption.CLEAN_STRUCTURED_CONTENT, contexts.structured),
        (DeidOption.CLEAN_GRAPHICS, contexts.graphics),
    ):
        marked = {tag for tag, row in table.exact.items() if row.option_codes.get(option) == "C"}
        assert marked == set(entries), option
    # The other rows they mark C are the overlay and curve groups, which are removed.
    repeating = {
        row.pattern.text for row in table.repeating if row.option_codes.get(DeidOption.CLEAN_GRAPHICS) == "C"
    }
    assert repeating == {"(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (("TextValue", Treatment.KEEP, None), "can hold text"),
        (("PersonName", Treatment.TEXT, None), "rows of Table E.1-1, and only they"),
        (("TextValue", Treatment.TABLE, None), "rows of Table E.1-1, and only they"),
        (("ValueType", Treatment.TERM, frozenset()), "TERM needs"),
        (("ConceptNameCodeSequence", Treatment.ITEMS, None), "a sequence needs the context"),
        (("NoSuchKeyword", Treatment.KEEP, None), "not a keyword"),
        (("GraphicData", Treatment.CODE, None), "not a part of a coded entry"),
    ],
)
def test_an_allow_list_that_would_let_text_through_is_refused(spec: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_contexts({"content": (spec,)})


def test_the_top_level_list_adds_only_what_the_table_and_allow_list_do_not_decide() -> None:
    with pytest.raises(ValueError, match="already decides"):
        build_contexts({"document": (("ValueType", Treatment.TERM, frozenset({"CONTAINER"})),)})


# Clean Structured Content on a Comprehensive SR ---------------------------------------------------------


def test_the_sr_keeps_its_tree_and_codes_and_loses_its_text_and_names() -> None:
    ds = comprehensive_sr()
    out = deidentify(ds, STRUCTURED, KEY)

    before, after = dict(nodes(ds)), dict(nodes(out))
    assert list(after) == list(before) and len(after) == 10  # every item, three levels deep
    for where, original in before.items():
        cleaned = after[where]
        for keyword in ("ValueType", "RelationshipType", "ContinuityOfContent"):
            assert cleaned.get(keyword) == original.get(keyword), (where, keyword)
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            assert codes_of(cleaned, keyword) == codes_of(original, keyword), (where, keyword)

    assert out.CompletionFlag == "COMPLETE" and out.VerificationFlag == "UNVERIFIED"
    assert out.ContentTemplateSequence[0].TemplateIdentifier == "2000"
    assert codes_of(out, "PerformedProcedureCodeSequence") == [("36554-4", "LN", "MR Head")]
    observer, started, findings = after["/0"], after["/1"], after["/2"]
    text, number, image = after["/2/0"], after["/2/1"], after["/2/2"]
    assert observer.PersonName == "ANONYMOUS"
    assert text.TextValue == "ANONYMOUS"
    assert started.DateTime == "19000101000000"  # no date option: the table's D, a dummy
    assert after["/2/1/1"].Date == "19000101"
    measured = number.MeasuredValueSequence[0]
    assert measured.NumericValue == 12.5
    assert codes_of(measured, "MeasurementUnitsCodeSequence") == [("mm", "UCUM", "millimeter")]
    # UIDs: the keyed remap, the same that the referenced objects get, so references resolve.
    assert after["/2/1/2"].UID == remap_uid(ROOT + "20", KEY)
    referenced = image.ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPClassUID == MR_IMAGE
    assert referenced.ReferencedSOPInstanceUID == remap_uid(ROOT + "30", KEY)
    evidence = out.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == remap_uid(ROOT + "32", KEY)
    series = evidence.ReferencedSeriesSequence[0]
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == referenced.ReferencedSOPInstanceUID
    assert "RetrieveAETitle" not in series
    assert findings.ContinuityOfContent == "SEPARATE"

    written = to_bytes(out)
    assert not [value for value in SR_PHI if value.encode() in written]


@pytest.mark.parametrize("dates", [None, FULL_DATES, MODIFIED_DATES])
def test_dates_in_content_follow_the_date_options(dates: str | None) -> None:
    ds = comprehensive_sr()
    policy = DeidPolicy.from_names(["Clean Structured Content", *([dates] if dates else [])])
    out = deidentify(ds, policy, KEY)
    date_item = dict(nodes(out))["/2/1/1"]
    started = dict(nodes(out))["/1"]
    if dates is None:
        assert (date_item.Date, started.DateTime) == ("19000101", "19000101000000")
    elif dates == FULL_DATES:
        assert (date_item.Date, started.DateTime) == ("20240229", "20240301101500")
    else:
        # One offset per patient: the content moves with the study date.
        shift = _day(out.StudyDate) - _day(ds.StudyDate)
        assert shift != datetime.timedelta(0)
        assert _day(date_item.Date) - _day("20240229") == shift
        assert _day(started.DateTime[:8]) - _day("20240301") == shift
        assert started.DateTime[8:] == "101500"


def _day(text: str) -> datetime.date:
    return datetime.datetime.strptime(str(text), "%Y%m%d").date()


def test_what_no_allow_list_names_is_removed_from_content_items() -> None:
    ds = comprehensive_sr()
    item = dict(nodes(ds))["/2/1/1"]  # three levels deep
    item.OperatorsName = "Smith^Jane"  # a row of the table, but not of a content item
    item.PatientSpeciesDescription = "Jane Smith"  # neither in the table nor allowed
    item.add_new(0x00290010, "LO", "ACME 1.0")
    item.add_new(0x00291001, "LO", "MRN4711 private")
    item.ConceptNameCodeSequence[0].TextValue = "Jane Smith in a code"  # not a part of a code
    item.ContinuityOfContent = "JANE SMITH"  # not one of the standard's terms
    item.add(DataElement(0x0040A160, "UN", b"Jane Smith as UN "))  # pydicom gives it its VR (UT) back
    item.add(DataElement(0x0040A30A, "LO", "MRN4711"))  # a Numeric Value with another VR
    out = deidentify(ds, STRUCTURED, KEY)

    cleaned = dict(nodes(out))["/2/1/1"]
    kept = {"ConceptNameCodeSequence", "ContinuityOfContent", "Date", "RelationshipType", "TextValue"}
    assert set(cleaned.dir()) == {*kept, "ValueType"}
    assert cleaned.ContinuityOfContent == cleaned.TextValue == "ANONYMOUS"
    assert set(cleaned.ConceptNameCodeSequence[0].dir()) == {
        "CodeMeaning",
        "CodeValue",
        "CodingSchemeDesignator",
    }
    written = to_bytes(out)
    assert not [value for value in SR_PHI if value.encode() in written]
    assert b"ACME 1.0" not in written


def test_without_the_option_sr_content_is_dummy_content_as_before() -> None:
    out = deidentify(comprehensive_sr(), BASIC, KEY)
    assert len(out.ContentSequence) == 3  # Content Sequence is D: kept, with dummy content
    text = out.ContentSequence[2].ContentSequence[0]
    assert codes_of(text, "ConceptNameCodeSequence") == [("ANONYMOUS", "ANONYMOUS", "ANONYMOUS")]
    assert "TextValue" not in text  # not on the allow-list
    for keyword in ("ContinuityOfContent", "CompletionFlag", "CurrentRequestedProcedureEvidenceSequence"):
        assert keyword not in out
    assert not [value for value in SR_PHI if value.encode() in to_bytes(out)]


def test_the_cleaned_sr_gives_dciodvfy_no_new_error() -> None:
    ds = comprehensive_sr()
    before = dciodvfy_errors(to_bytes(ds))
    if before is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): the SR was not validated")
    after = dciodvfy_errors(to_bytes(deidentify(ds, STRUCTURED, KEY)))
    assert after is not None and not sorted(after - before)


# Clean Graphics on a presentation state -----------------------------------------------------------------


def presentation_state() -> Dataset:
    """A grayscale softcopy presentation state's graphic annotations on an MR image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ROOT + "40"
    ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.GrayscaleSoftcopyPresentationStateStorage, ROOT + "40"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ROOT + "1", ROOT + "41"
    ds.PatientName, ds.PatientID, ds.Modality = "Smith^Jane", "MRN4711", "PR"
    ds.ContentLabel, ds.ContentDescription = "ANNOTATIONS", "Jane Smith follow-up"
    image = Dataset()
    image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID = MR_IMAGE, ROOT + "30"

    text = Dataset()
    text.BoundingBoxAnnotationUnits = "PIXEL"
    text.UnformattedTextValue = "Jane Smith MRN4711 20240229"
    text.BoundingBoxTopLeftHandCorner, text.BoundingBoxBottomRightHandCorner = [2.0, 2.0], [80.0, 12.0]
    text.BoundingBoxTextHorizontalJustification = "LEFT"
    style = Dataset()
    style.FontName = "Jane Smith Sans"
    text.TextStyleSequence = Sequence([style])  # cosmetic, with free text: not kept
    anchored = Dataset()
    anchored.AnchorPointAnnotationUnits = "PIXEL"
    anchored.UnformattedTextValue = "Dr Who was here"
    anchored.AnchorPoint, anchored.AnchorPointVisibility = [30.0, 40.0], "Y"
    anchored.BoundingBoxTextHorizontalJustification = "JANE"  # not a term: replaced

    line = Dataset()
    line.GraphicAnnotationUnits, line.GraphicDimensions, line.NumberOfGraphicPoints = "PIXEL", 2, 3
    line.GraphicData, line.GraphicType, line.GraphicFilled = (
        [10.0, 10.0, 50.0, 50.0, 90.0, 10.0],
        "POLYLINE",
        "N",
    )
    line.add_new(0x00290010, "LO", "ACME 1.0")
    line.add_new(0x00291001, "LO", "MRN4711 private")
    tick = Dataset()
    tick.TickPosition, tick.TickLabel = 0.5, "Jane"
    ruler = Dataset()
    ruler.CompoundGraphicInstanceID, ruler.CompoundGraphicType = 1, "RULER"
    ruler.GraphicAnnotationUnits, ruler.GraphicDimensions, ruler.NumberOfGraphicPoints = "PIXEL", 2, 2
    ruler.GraphicData, ruler.MajorTicksSequence = [10.0, 60.0, 50.0, 60.0], Sequence([tick])

    annotation = Dataset()
    annotation.ReferencedImageSequence = Sequence([image])
    annotation.GraphicLayer = "SMITH"
    annotation.TextObjectSequence = Sequence([text, anchored])
    annotation.GraphicObjectSequence = Sequence([line])
    annotation.CompoundGraphicSequence = Sequence([ruler])
    ds.GraphicAnnotationSequence = Sequence([annotation])
    layer = Dataset()
    layer.GraphicLayer, layer.GraphicLayerOrder, layer.GraphicLayerDescription = "SMITH", 1, "Jane's layer"
    ds.GraphicLayerSequence = Sequence([layer])
    return ds


GSPS_PHI = ("Smith", "SMITH", "Jane", "JANE", "MRN4711", "20240229", "Dr Who", ROOT)


def test_graphic_annotations_keep_their_geometry_and_lose_their_text() -> None:
    ds = presentation_state()
    out = deidentify(ds, GRAPHICS, KEY)
    annotation, original = out.GraphicAnnotationSequence[0], ds.GraphicAnnotationSequence[0]

    boxed, anchored = annotation.TextObjectSequence
    assert boxed.UnformattedTextValue == anchored.UnformattedTextValue == "ANONYMOUS"
    assert boxed.BoundingBoxTopLeftHandCorner == [2.0, 2.0]
    assert boxed.BoundingBoxBottomRightHandCorner == [80.0, 12.0]
    assert boxed.BoundingBoxTextHorizontalJustification == "LEFT"
    assert "TextStyleSequence" not in boxed
    assert anchored.AnchorPoint == [30.0, 40.0] and anchored.AnchorPointVisibility == "Y"
    assert anchored.BoundingBoxTextHorizontalJustification == "ANONYMOUS"

    line = annotation.GraphicObjectSequence[0]
    assert line.GraphicData == original.GraphicObjectSequence[0].GraphicData
    assert (line.GraphicType, line.NumberOfGraphicPoints, line.GraphicFilled) == ("POLYLINE", 3, "N")
    assert not [elem for elem in line if elem.tag.is_private]
    ruler = annotation.CompoundGraphicSequence[0]
    assert ruler.CompoundGraphicType == "RULER" and ruler.GraphicData == [10.0, 60.0, 50.0, 60.0]
    assert ruler.MajorTicksSequence[0].TickPosition == 0.5
    assert ruler.MajorTicksSequence[0].TickLabel == "ANONYMOUS"

    assert annotation.GraphicLayer == "ANONYMOUS"  # a user-defined name
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == remap_uid(ROOT + "30", KEY)
    assert "GraphicLayerSequence" not in out  # not a row of the table, not on the allow-list
    written = to_bytes(out)
    assert not [value for value in GSPS_PHI if value.encode() in written]


def test_without_the_option_graphic_annotations_are_dummy_content_as_before() -> None:
    out = deidentify(presentation_state(), BASIC, KEY)
    annotation = out.GraphicAnnotationSequence[0]  # D: kept, with dummy content
    assert "TextObjectSequence" not in annotation and "GraphicObjectSequence" not in annotation
    assert not [value for value in GSPS_PHI if value.encode() in to_bytes(out)]


# Clean Graphics on overlays and curves ------------------------------------------------------------------


def mr_with_overlays() -> Dataset:
    """pydicom's example MR with two graphics overlay planes (one spelling a name) and a curve."""
    ds = pydicom.examples.mr
    for group, label in ((0x6000, "JANE SMITH"), (0x6002, "ROI")):
        ds.add_new((group << 16) | 0x0010, "US", ds.Rows)  # OverlayRows
        ds.add_new((group << 16) | 0x0011, "US", ds.Columns)  # OverlayColumns
        ds.add_new((group << 16) | 0x0040, "CS", "G")  # OverlayType
        ds.add_new((group << 16) | 0x0050, "SS", [1, 1])  # OverlayOrigin
        ds.add_new((group << 16) | 0x0100, "US", 1)  # OverlayBitsAllocated
        ds.add_new((group << 16) | 0x0102, "US", 0)  # OverlayBitPosition
        ds.add_new((group << 16) | 0x0022, "LO", f"{label} overlay")  # OverlayDescription
        ds.add_new((group << 16) | 0x1500, "LO", label)  # OverlayLabel
        ds.add_new((group << 16) | 0x4000, "LT", f"drawn by {label}")  # OverlayComments
        ds.add_new((group << 16) | 0x3000, "OW", b"\x0f\xf0" * (ds.Rows * ds.Columns // 16))  # OverlayData
    ds.add_new(0x50000005, "US", 1)  # CurveDimensions
    ds.add_new(0x50002500, "LO", "JANE SMITH curve")  # CurveLabel
    ds.add_new(0x50003000, "OB", b"JANE SMITH curve")  # CurveData
    return ds


@pytest.mark.parametrize("policy", [BASIC, GRAPHICS, BOTH], ids=["basic", "graphics", "both"])
def test_overlays_and_curves_are_removed_whole(policy: DeidPolicy) -> None:
    ds = mr_with_overlays()
    out = deidentify(ds, policy, KEY)
    assert not [tag for tag in out.keys() if tag.group & 0xFF00 in (0x5000, 0x6000)]
    assert out.PixelData is ds.PixelData  # the image itself is the masker's, untouched here
    assert b"JANE" not in to_bytes(out) and b"ROI" not in to_bytes(out)


def test_the_mr_cleaned_with_both_options_gives_dciodvfy_no_new_error() -> None:
    ds = mr_with_overlays()
    before = dciodvfy_errors(to_bytes(ds))
    if before is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): the MR was not validated")
    after = dciodvfy_errors(to_bytes(deidentify(ds, BOTH, KEY)))
    assert after is not None and not sorted(after - before)


# The real series, with SR content, annotations and overlays written into them -----------------------------


@dataclass
class Run:
    folder: Path
    inputs: list[Dataset]
    outputs: list[Dataset]
    written: list[bytes]


def with_cleaned_content(ds: Dataset) -> Dataset:
    """A copy of `ds` with canary items in every sequence the two options keep, and an overlay."""
    ds = copy.deepcopy(ds)
    items, _ = build_cleaned_items()
    for tag, item in items.items():
        ds.add(DataElement(tag, "SQ", Sequence([item])))
    ds.add_new(0x60000022, "LO", "CNRY90001")  # OverlayDescription
    ds.add_new(0x60001500, "LO", "CNRY90002")  # OverlayLabel
    ds.add_new(0x60004000, "LT", "CNRY90003")  # OverlayComments
    return ds


def test_the_shared_series_are_there_for_the_clean_options() -> None:
    if not SERIES:
        pytest.skip(f"shared DICOM data missing at {DICOM}: the options were NOT run on real series")
    assert len(SERIES) >= 10


@pytest.fixture(scope="module", params=SERIES, ids=lambda folder: folder.name)
def run(request: pytest.FixtureRequest) -> Run:
    folder: Path = request.param
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix != ".txt")
    inputs = [pydicom.dcmread(path) for path in files]
    inputs[:2] = [with_cleaned_content(ds) for ds in inputs[:2]]
    outputs = [deidentify(ds, BOTH, KEY) for ds in inputs]
    return Run(folder, inputs, outputs, [to_bytes(out) for out in outputs])


def test_real_series_leave_no_canary_and_no_identifying_value(run: Run) -> None:
    for original, out, data in zip(run.inputs, run.outputs, run.written, strict=True):
        reread = pydicom.dcmread(io.BytesIO(data))
        reread.walk(lambda _ds, elem: elem.value)
        methods = [code.CodeValue for code in reread.DeidentificationMethodCodeSequence]
        assert methods == ["113100", "113104", "113103"]
        assert TEXT_PREFIX not in data and UID_ROOT.encode() not in data
        assert not _private_tags(reread)
        leaked = leaked_values(original, out)
        assert not leaked, f"{run.folder.name}: {len(leaked)} identifying values survived"
    cleaned = run.outputs[0]
    assert cleaned.ContentSequence[0].TextValue == "ANONYMOUS"
    assert cleaned.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "ANONYMOUS"
    assert not [tag for tag in cleaned.keys() if tag.group == 0x6000]


def test_real_series_cleaned_give_dciodvfy_no_new_error(run: Run) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools): outputs were not validated")
    for original, data in list(zip(run.inputs, run.written, strict=True))[:2]:  # with the content
        before, after = dciodvfy_errors(to_bytes(original)), dciodvfy_errors(data)
        assert before is not None and after is not None
        assert not sorted(after - before), run.folder.name
