"""The allow-list file (``worker/deid/tables/allow-list.tsv``) and the rules its loader keeps."""

from __future__ import annotations

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword

from worker.deid.allowlist import FORBIDDEN_VRS, allow_list, parse_allow_list
from worker.deid.table import profile_table

#: What the images need to stay usable (issue 3): pixels, geometry, frames, display, MR physics.
NEEDED = [
    "SOPClassUID", "SpecificCharacterSet", "Modality", "InstanceNumber", "SeriesNumber", "ImageType",
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PhotometricInterpretation", "SamplesPerPixel", "PlanarConfiguration", "PixelData", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "PositionReferenceIndicator", "PatientPosition",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "PlanePositionSequence",
    "PlaneOrientationSequence", "PixelMeasuresSequence", "FrameContentSequence",
    "PixelValueTransformationSequence", "FrameVOILUTSequence", "MREchoSequence", "EffectiveEchoTime",
    "DimensionOrganizationSequence",
    "DimensionIndexSequence", "DimensionIndexValues", "StackID", "InStackPositionNumber",
    "TemporalPositionIndex", "RepetitionTime", "EchoTime", "InversionTime", "FlipAngle",
    "MagneticFieldStrength", "ScanningSequence", "SequenceVariant", "MRAcquisitionType", "EchoNumbers",
    "DiffusionBValue", "Manufacturer", "ManufacturerModelName", "BurnedInAnnotation",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
]  # fmt: skip

GOOD = "[demo] A group\n# Safe: numbers.\n(0028,0010)\tRows\n"


def test_the_vendored_allow_list_loads_and_every_group_says_why() -> None:
    allowed = allow_list()
    assert len(allowed) > 350
    assert all(group.reason.startswith("Safe:") for group in allowed.groups)
    assert sum(len(group.tags) for group in allowed.groups) == len(allowed)


@pytest.mark.parametrize("keyword", NEEDED)
def test_what_the_images_need_is_allowed(keyword: str) -> None:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    assert tag in allow_list(), f"{keyword} would be removed: the image would lose it"


def test_nothing_allowed_is_a_name_a_date_or_a_row_of_the_table() -> None:
    table = profile_table()
    for tag in allow_list().tags:
        assert table.lookup(tag) is None
        assert not {vr.strip() for vr in dictionary_VR(tag).split(" or ")} & FORBIDDEN_VRS
        assert (tag >> 16) % 2 == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("# Safe: numbers.\n", ""), "no '#' comment"),
        (GOOD + "(0010,0010)\tPatientName\n", "row of Table E.1-1"),
        (GOOD + "(0028,0010)\tRows\n", "already"),
        (GOOD + "(0028,0011)\tRows\n", "not the keyword"),
        (GOOD + "(0029,1010)\tRows\n", "private"),
        (GOOD + "(0018,1202)\tDateTimeOfLastCalibration\n", "row of Table E.1-1"),
        (GOOD + "(0014,0104)\tSecondaryReviewerName\n", "never allowed"),  # PN, not in the table
        (GOOD + "(0008,041F)\tStudyUpdateDateTime\n", "never allowed"),  # DT, not in the table
        ("(0028,0010)\tRows\n", "outside a group"),
        (GOOD + "rows\n", "expected"),
        (GOOD + "[demo] again\n# Safe.\n(0028,0011)\tColumns\n", "appears twice"),
        (GOOD + "# a late comment\n", "before a group's first attribute"),
    ],
)
def test_the_loader_refuses_a_file_that_breaks_the_rules(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_allow_list(text, "test.tsv")
