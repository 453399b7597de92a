"""Unit tests of ``worker.deid``: PS3.15 Basic profile de-identification on real pydicom datasets."""

from __future__ import annotations

import datetime
import io
import re
import time
from pathlib import Path

import pydicom
import pydicom.examples
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import SecondaryCaptureImageStorage

from common.errors import DeidentificationError
from evaluation.canary import build_canaries
from worker.deid import DeidOption, DeidPolicy, deidentify, pseudonymise, remap_uid
from worker.deid.actions import (
    Action,
    basic_element_action,
    basic_sequence_action,
    combined_action,
    shift_da,
    shift_dt,
)
from worker.deid.iod import NOT_IN_IOD, attribute_types
from worker.deid.table import profile_table, safe_private_table

KEY = b"pediface-unit-test-key-0123456789"
OTHER_KEY = b"another-unit-test-key-9876543210"
BASIC = DeidPolicy()

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
UIH_SERIES = SHARED / "data" / "dicom" / "dcm_qa_uih" / "uih_t1_gre_fsp_3d_sag"
STANDARD = SHARED / "data" / "standard"
needs_uih = pytest.mark.skipif(
    not UIH_SERIES.is_dir(), reason=f"shared DICOM test data not found at {UIH_SERIES}"
)

UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def to_bytes(ds: Dataset) -> bytes:
    """`ds` written as a DICOM file, as the pipeline would send it."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def mr() -> Dataset:
    """A fresh copy of pydicom's example MR image (each access reads the file again)."""
    return pydicom.examples.mr


def uih(index: int = 1) -> Dataset:
    return pydicom.dcmread(UIH_SERIES / f"{index:08d}.dcm")


def code_values(ds: Dataset) -> list[str]:
    return [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


# The tables ------------------------------------------------------------------------------------


def test_tables_load_every_row() -> None:
    table = profile_table()
    assert len(table) == 657
    assert {row.pattern.text for row in table.repeating} == {"(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)"}
    assert table.private.basic == "X"
    assert len(safe_private_table()) >= 470


@pytest.mark.skipif(not STANDARD.is_dir(), reason=f"shared standard tables not found at {STANDARD}")
@pytest.mark.parametrize("name", ["ps3.15-annex-e.tsv", "safe-private.tsv"])
def test_vendored_tables_are_unmodified_copies(name: str) -> None:
    vendored = Path(__file__).resolve().parents[2] / "worker" / "deid" / "tables" / name
    assert vendored.read_bytes() == (STANDARD / name).read_bytes()


@pytest.mark.parametrize(
    ("code", "element", "sequence"),
    [
        ("X", Action.REMOVE, Action.REMOVE),
        ("Z", Action.EMPTY, Action.EMPTY),
        ("D", Action.DUMMY, Action.DUMMY),
        ("U", Action.REMAP_UID, Action.KEEP),
        ("X/Z", Action.EMPTY, Action.EMPTY),
        ("X/D", Action.DUMMY, Action.DUMMY),
        ("X/Z/D", Action.DUMMY, Action.EMPTY),
        ("Z/D", Action.DUMMY, Action.EMPTY),
        ("X/Z/U*", Action.REMAP_UID, Action.KEEP),
    ],
)
def test_combined_codes_keep_the_attribute_present_without_an_iod(
    code: str, element: Action, sequence: Action
) -> None:
    assert basic_element_action(code) is element
    assert basic_sequence_action(code) is sequence


# Private attributes and the input ------------------------------------------------------------------


def test_every_private_attribute_is_removed_at_every_depth() -> None:
    canaries = build_canaries(mr())
    out = deidentify(canaries.dataset, BASIC, KEY)

    def private_tags(dataset: Dataset) -> list[int]:
        found: list[int] = []
        dataset.walk(lambda _ds, elem: found.append(elem.tag) if elem.tag.is_private else None)
        return found

    assert private_tags(canaries.dataset)
    assert private_tags(out) == []


def test_input_is_left_untouched() -> None:
    ds = build_canaries(mr(), unlisted=True).dataset
    before_json, before_meta = ds.to_json(), ds.file_meta.to_json()
    deidentify(
        ds, DeidPolicy.from_names(["Retain Longitudinal Temporal Information with Modified Dates"]), KEY
    )
    assert ds.to_json() == before_json
    assert ds.file_meta.to_json() == before_meta


def test_pixel_data_is_shared_not_copied() -> None:
    ds = mr()
    out = deidentify(ds, BASIC, KEY)
    assert out.PixelData is ds.PixelData


def test_output_is_deterministic() -> None:
    assert to_bytes(deidentify(mr(), BASIC, KEY)) == to_bytes(deidentify(mr(), BASIC, KEY))


# UIDs ----------------------------------------------------------------------------------------------


def test_remap_uid_is_a_valid_keyed_uid() -> None:
    uid = "1.3.6.1.4.1.5962.1.1.4.1.1.20040826185059.5457"
    new = remap_uid(uid, KEY)
    assert new.startswith("2.25.")
    assert UID_PATTERN.fullmatch(new) and len(new) <= 64
    assert remap_uid(uid, KEY) == new
    assert remap_uid(uid + " ", KEY) == new  # padding is not part of the UID
    assert remap_uid(uid, OTHER_KEY) != new
    assert remap_uid(uid + "1", KEY) != new


def test_remap_uid_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        remap_uid("1.2.3", b"short")


def test_uids_are_remapped_and_references_follow() -> None:
    first = mr()
    second = mr()
    second.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.2"
    second.ReferencedImageSequence = Sequence([Dataset()])
    second.ReferencedImageSequence[0].ReferencedSOPClassUID = first.SOPClassUID
    second.ReferencedImageSequence[0].ReferencedSOPInstanceUID = first.SOPInstanceUID

    out_first, out_second = deidentify(first, BASIC, KEY), deidentify(second, BASIC, KEY)

    assert out_first.StudyInstanceUID == out_second.StudyInstanceUID == remap_uid(first.StudyInstanceUID, KEY)
    assert out_first.SeriesInstanceUID == out_second.SeriesInstanceUID != first.SeriesInstanceUID
    assert out_first.FrameOfReferenceUID == out_second.FrameOfReferenceUID != first.FrameOfReferenceUID
    assert out_first.SOPInstanceUID != out_second.SOPInstanceUID
    reference = out_second.ReferencedImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == out_first.SOPInstanceUID
    # Well-known UIDs are not instance identifiers and stay as they are.
    assert reference.ReferencedSOPClassUID == out_first.SOPClassUID == first.SOPClassUID
    assert out_first.file_meta.TransferSyntaxUID == first.file_meta.TransferSyntaxUID


@needs_uih
def test_real_series_uids_are_consistent_across_instances() -> None:
    one, two = uih(1), uih(2)
    out_one, out_two = deidentify(one, BASIC, KEY), deidentify(two, BASIC, KEY)
    assert out_one.StudyInstanceUID == out_two.StudyInstanceUID
    assert out_one.SeriesInstanceUID == out_two.SeriesInstanceUID
    assert out_one.PatientID == out_two.PatientID
    references = [item.ReferencedSOPInstanceUID for item in out_one.ReferencedImageSequence]
    originals = [item.ReferencedSOPInstanceUID for item in one.ReferencedImageSequence]
    assert references == [remap_uid(uid, KEY) for uid in originals]
    assert all(item.ReferencedSOPClassUID == one.SOPClassUID for item in out_one.ReferencedImageSequence)


@needs_uih
def test_real_series_private_tags_and_identifiers_are_removed() -> None:
    ds = uih(1)
    assert any(elem.tag.is_private for elem in ds)
    out = deidentify(ds, BASIC, KEY)
    assert not any(elem.tag.is_private for elem in out)
    written = to_bytes(out)
    for value in (ds.DeviceSerialNumber, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.StationName):
        assert str(value).encode() not in written
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == remap_uid(ds.SOPInstanceUID, KEY)


def test_file_meta_follows_the_new_sop_instance_uid_and_drops_the_sender() -> None:
    ds = mr()
    assert "SourceApplicationEntityTitle" in ds.file_meta
    out = deidentify(ds, BASIC, KEY)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != ds.SOPInstanceUID
    assert out.file_meta.MediaStorageSOPClassUID == ds.file_meta.MediaStorageSOPClassUID
    assert out.file_meta.ImplementationClassUID == ds.file_meta.ImplementationClassUID
    assert "SourceApplicationEntityTitle" not in out.file_meta


# Patient pseudonyms ----------------------------------------------------------------------------


def test_patient_name_and_id_become_the_keyed_pseudonym_of_the_patient_id() -> None:
    ds = mr()
    out = deidentify(ds, DeidPolicy(patient_id_prefix="STUDY7"), KEY)
    expected = pseudonymise(ds.PatientID, KEY, "STUDY7")
    assert re.fullmatch(r"STUDY7-[A-Z2-7]{12}", expected)
    assert out.PatientID == expected
    assert str(out.PatientName) == expected
    assert pseudonymise(ds.PatientID, OTHER_KEY, "STUDY7") != expected


def test_pseudonym_falls_back_to_the_study_instance_uid() -> None:
    ds = mr()
    ds.PatientID = ""
    out = deidentify(ds, BASIC, KEY)
    assert out.PatientID == pseudonymise(ds.StudyInstanceUID, KEY, "PF")


def test_no_patient_id_and_no_study_uid_is_an_error() -> None:
    ds = mr()
    del ds.PatientID
    del ds.StudyInstanceUID
    with pytest.raises(DeidentificationError, match="PatientID"):
        deidentify(ds, BASIC, KEY)


def test_invalid_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="patient_id_prefix"):
        DeidPolicy(patient_id_prefix="bad^prefix")


# What the output records --------------------------------------------------------------------------


def test_basic_profile_is_recorded() -> None:
    out = deidentify(mr(), BASIC, KEY)
    assert out.PatientIdentityRemoved == "YES"
    assert code_values(out) == ["113100"]
    assert all(item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence)
    assert any("Basic Application Confidentiality Profile" in value for value in out.DeidentificationMethod)
    assert any(value.startswith("pediface ") for value in out.DeidentificationMethod)
    assert all(len(value) <= 64 for value in out.DeidentificationMethod)
    assert out.LongitudinalTemporalInformationModified == "REMOVED"


def test_clean_recognizable_visual_features_only_when_defaced() -> None:
    assert "113102" not in code_values(deidentify(mr(), BASIC, KEY))
    assert "113102" in code_values(deidentify(mr(), BASIC, KEY, defaced=True))


def test_each_option_is_recorded_with_its_code() -> None:
    policy = DeidPolicy.from_names(["Retain UIDs", "Retain Device Identity", "Retain Safe Private"])
    assert code_values(deidentify(mr(), policy, KEY)) == ["113100", "113111", "113110", "113109"]


# Repeating groups, sequences ---------------------------------------------------------------------


def test_overlays_and_curves_are_removed_in_every_group() -> None:
    ds = mr()
    for group in (0x6000, 0x6002, 0x601E):
        ds.add_new((group << 16) | 0x0010, "US", 64)  # OverlayRows: not in the table, not allowed
        ds.add_new((group << 16) | 0x3000, "OW", b"\x01\x02" * 8)
        ds.add_new((group << 16) | 0x4000, "LT", "overlay comment")
    ds.add_new(0x50020005, "US", 1)
    out = deidentify(ds, BASIC, KEY)
    # Overlay Data is X, and an overlay without its data is invalid: the whole overlay goes.
    assert not [tag for tag in out.keys() if tag.group & 0xFF00 in (0x5000, 0x6000)]


def _unknown_iod(ds: Dataset) -> Dataset:
    """`ds` under a SOP class that no IOD table knows, where combined codes keep attributes present."""
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def test_dummy_sequence_replaces_allowed_values_and_empty_sequence_has_no_items() -> None:
    ds = _unknown_iod(mr())
    person = Dataset()
    person.CodeValue = "MRN-4711"
    person.CodingSchemeDesignator = "HOSPITAL"
    person.CodeMeaning = "Jane Operator"
    person.PatientSpeciesDescription = "not allowed"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = Sequence([person])
    ds.OperatorIdentificationSequence = Sequence([operator])  # X/D: kept with dummy content
    institution = Dataset()
    institution.CodeValue = "HOSP1"
    ds.InstitutionCodeSequence = Sequence([institution])  # X/Z/D: a sequence with no items

    out = deidentify(ds, BASIC, KEY)
    code = out.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert (code.CodeValue, code.CodeMeaning) == ("ANONYMOUS", "ANONYMOUS")
    assert code.CodingSchemeDesignator == "ANONYMOUS"
    assert "PatientSpeciesDescription" not in code  # neither in the table nor allowed
    assert len(out.InstitutionCodeSequence) == 0


# Combined codes by the Type in the IOD -----------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "attribute_type", "sequence", "action"),
    [
        ("X/Z/D", "1", False, Action.DUMMY),
        ("X/Z/D", "1C", True, Action.DUMMY),
        ("X/Z/D", "2", False, Action.EMPTY),
        ("X/Z/D", "3", True, Action.REMOVE),
        ("X/Z/D", NOT_IN_IOD, False, Action.REMOVE),
        ("X/Z", "1", False, Action.EMPTY),
        ("X/D", "2", False, Action.DUMMY),
        ("Z/D", "3", False, Action.EMPTY),
        ("X/Z/U*", "3", True, Action.KEEP),
        ("X/Z/U*", "3", False, Action.REMAP_UID),
        ("X/Z/D", None, False, Action.DUMMY),  # IOD unknown: kept present
        ("X/Z/D", None, True, Action.EMPTY),
        ("X", "1", False, Action.REMOVE),  # not a combined code: the Type does not matter
    ],
)
def test_combined_codes_follow_the_type_in_the_iod(
    code: str, attribute_type: str | None, sequence: bool, action: Action
) -> None:
    assert combined_action(code, attribute_type, sequence=sequence) is action


def test_iod_types_come_from_the_standard() -> None:
    mr_types = attribute_types(pydicom.uid.MRImageStorage)
    enhanced = attribute_types(pydicom.uid.EnhancedMRImageStorage)
    assert mr_types is not None and enhanced is not None, "highdicom's PS3.3 module tables were not found"
    assert mr_types[("ReferencedStudySequence",)] == "3"  # General Study
    assert enhanced[("ReferencedPerformedProcedureStepSequence",)] == "1C"  # MR Series wins over 3
    assert attribute_types("1.2.826.0.1.3680043.10.1234.1") is None


def test_combined_codes_resolved_by_the_iod_keep_mr_images_valid() -> None:
    ds = mr()
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = "1.2.3.4.5"
    ds.ReferencedStudySequence = Sequence([study])  # X/Z, Type 3 in General Study: removed
    ds.ContentDate = "20240301"  # Z/D, Type 2C in General Image: emptied
    out = deidentify(ds, BASIC, KEY)
    assert "ReferencedStudySequence" not in out
    assert out.ContentDate == ""

    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    assert deidentify(ds, BASIC, KEY).ContentDate == "19000101"  # Type 1 in Enhanced MR: a dummy

    unknown = deidentify(_unknown_iod(ds), BASIC, KEY)  # no IOD known: kept present, non-identifying
    assert len(unknown.ReferencedStudySequence) == 0
    assert unknown.ContentDate == "19000101"


# Options -------------------------------------------------------------------------------------------


def test_unknown_option_name_is_refused() -> None:
    with pytest.raises(ValueError, match="Retain Everything"):
        DeidPolicy.from_names(["Retain Everything"])


def test_clean_pixel_data_is_refused_not_ignored() -> None:
    with pytest.raises(ValueError, match=r"'Clean Pixel Data' is not supported yet \(removing identifying"):
        DeidPolicy.from_names(["Clean Pixel Data"])
    with pytest.raises(ValueError, match="Clean Pixel Data"):
        DeidPolicy.from_names(["Clean Structured Content", "Clean Graphics", "Clean Pixel Data"])


def test_the_two_longitudinal_options_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude"):
        DeidPolicy.from_names(
            [
                DeidOption.RETAIN_LONGITUDINAL_FULL_DATES.value,
                DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES.value,
            ]
        )


def test_option_names_are_read_tolerantly() -> None:
    policy = DeidPolicy.from_names(["retain uids option", "RETAIN_DEVICE_IDENTITY"])
    assert policy.options == {DeidOption.RETAIN_UIDS, DeidOption.RETAIN_DEVICE_IDENTITY}


def test_retain_device_identity_keeps_the_device() -> None:
    ds = mr()
    out = deidentify(ds, DeidPolicy.from_names(["Retain Device Identity"]), KEY)
    assert out.DeviceSerialNumber == ds.DeviceSerialNumber
    assert out.StationName == ds.StationName
    assert "InstitutionName" not in out  # not the device's identity; X/Z/D and Type 3 here: removed
    assert "DeviceSerialNumber" not in deidentify(ds, BASIC, KEY)  # X/Z/D, Type 3 in General Equipment


def test_retain_institution_identity_keeps_the_institution() -> None:
    ds = mr()
    out = deidentify(ds, DeidPolicy.from_names(["Retain Institution Identity"]), KEY)
    assert out.InstitutionName == ds.InstitutionName


def test_retain_patient_characteristics_keeps_sex_age_and_size() -> None:
    ds = mr()
    ds.PatientSex, ds.PatientAge, ds.PatientWeight = "F", "012Y", "41.5"
    out = deidentify(ds, DeidPolicy.from_names(["Retain Patient Characteristics"]), KEY)
    assert (out.PatientSex, out.PatientAge, out.PatientWeight) == ("F", "012Y", 41.5)
    basic = deidentify(ds, BASIC, KEY)
    assert basic.PatientSex == "" and "PatientAge" not in basic and "PatientWeight" not in basic


def test_retain_uids_keeps_uids() -> None:
    ds = mr()
    out = deidentify(ds, DeidPolicy.from_names(["Retain UIDs"]), KEY)
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    assert out.StudyInstanceUID == ds.StudyInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_retain_full_dates_keeps_dates() -> None:
    ds = mr()
    out = deidentify(
        ds, DeidPolicy.from_names(["Retain Longitudinal Temporal Information with Full Dates"]), KEY
    )
    assert (out.StudyDate, out.StudyTime) == (ds.StudyDate, ds.StudyTime)
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert "113106" in code_values(out)


def test_modified_dates_shift_one_patient_by_one_offset() -> None:
    policy = DeidPolicy.from_names(["Retain Longitudinal Temporal Information with Modified Dates"])
    first, second = mr(), mr()
    first.StudyDate, second.StudyDate = "20240229", "20240315"
    first.AcquisitionDateTime = "20240229101112.5+0100"
    out_first, out_second = deidentify(first, policy, KEY), deidentify(second, policy, KEY)

    def day(text: str) -> datetime.date:
        return datetime.datetime.strptime(text, "%Y%m%d").date()

    offset = (day(out_first.StudyDate) - day("20240229")).days
    assert -365 <= offset <= -1
    assert (day(out_second.StudyDate) - day("20240315")).days == offset
    assert (
        out_first.AcquisitionDateTime
        == (day("20240229") + datetime.timedelta(days=offset)).strftime("%Y%m%d") + "101112.5+0100"
    )
    assert out_first.StudyTime == first.StudyTime  # whole days: the time of day is kept
    assert out_first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in code_values(out_first)


@needs_uih
def test_modified_dates_give_a_date_they_cannot_parse_the_basic_profiles_action() -> None:
    ds = uih(1)  # its dates are the placeholder '***': nothing to shift, so the Basic profile decides
    policy = DeidPolicy.from_names(["Retain Longitudinal Temporal Information with Modified Dates"])
    out = deidentify(ds, policy, KEY)
    basic = deidentify(ds, BASIC, KEY)
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "AcquisitionDateTime"):
        assert out.get(keyword) == basic.get(keyword), keyword
        assert "***" not in str(out.get(keyword, ""))
    assert out.StudyDate == ""  # Z: present and empty, as the Basic profile leaves it
    assert out.InstanceCreationDate != ds.InstanceCreationDate  # a real date is still shifted


def test_shift_keeps_the_precision_of_partial_datetimes() -> None:
    assert shift_dt("2024", -1) == "2023"
    assert shift_dt("202403", -1) == "202402"
    assert shift_dt("20240301", -1) == "20240229"
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("", -5) == ""
    with pytest.raises(ValueError):
        shift_da("20240230", -1)


def test_clean_descriptors_cleans_descriptors_replaces_prose_and_keeps_empty_values() -> None:
    ds = mr()
    ds.SeriesDescription = "t1_mprage Jane Doe"
    ds.ImageComments = "Head of Jane Doe"
    ds.PatientComments = ""
    out = deidentify(ds, DeidPolicy.from_names(["Clean Descriptors"]), KEY)
    assert out.SeriesDescription == "t1_mprage"  # a descriptor: cleaned word by word
    assert out.ImageComments == "ANONYMOUS"  # prose: no cleaner vouches for it
    assert out.PatientComments == ""
    assert "SeriesDescription" not in deidentify(ds, BASIC, KEY)


def test_retain_safe_private_keeps_only_listed_private_attributes() -> None:
    ds = mr()
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191023, "DS", "1.375")  # Table Speed: safe
    ds.add_new(0x00191099, "LO", "not listed")
    ds.add_new(0x00430010, "LO", "SOME OTHER CREATOR")
    ds.add_new(0x00431027, "SH", "1.5:1")  # listed, but under another creator
    out = deidentify(ds, DeidPolicy.from_names(["Retain Safe Private"]), KEY)
    assert out[0x00190010].value == "GEMS_ACQU_01"
    assert out[0x00191023].value == 1.375
    assert 0x00191099 not in out
    assert 0x00430010 not in out and 0x00431027 not in out
    assert not any(elem.tag.is_private for elem in deidentify(ds, BASIC, KEY))


# Failing closed ------------------------------------------------------------------------------------


def test_a_value_that_cannot_be_handled_names_the_tag_not_the_value() -> None:
    ds = mr()
    with pydicom.config.disable_value_validation():
        ds.add(DataElement(0x00081155, "UI", "1.2.3.CNRY\u00e9"))  # ReferencedSOPInstanceUID, not ASCII
    with pytest.raises(DeidentificationError) as caught:
        deidentify(ds, BASIC, KEY)
    message = str(caught.value)
    assert "(0008,1155) ReferencedSOPInstanceUID" in message
    assert "CNRY" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        deidentify(mr(), BASIC, b"0123")


def test_a_series_of_160_instances_is_cheap() -> None:
    ds = mr()
    deidentify(ds, BASIC, KEY)  # tables loaded once per process
    start = time.perf_counter()
    for _ in range(160):
        deidentify(ds, BASIC, KEY)
    assert time.perf_counter() - start < 5.0


# Pixels that may show text ------------------------------------------------------------------------


def test_burned_in_annotation_yes_is_refused() -> None:
    ds = mr()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation is YES") as caught:
        deidentify(ds, BASIC, KEY)
    assert caught.value.code == "deid.burned_in_annotation"
    ds.BurnedInAnnotation = "NO"
    assert deidentify(ds, BASIC, KEY).BurnedInAnnotation == "NO"  # allowed, and kept


@pytest.mark.parametrize(
    ("sop_class", "conversion_type"),
    [
        (SecondaryCaptureImageStorage, None),
        ("1.2.840.10008.5.1.4.1.1.7.4", None),  # Multi-frame True Color Secondary Capture
        (pydicom.uid.MRImageStorage, "WSD"),  # a workstation screen save, whatever its class
        (pydicom.uid.MRImageStorage, "SCREEN SAVE"),  # a vendor's screen save, said in ImageType
    ],
)
def test_secondary_capture_and_screen_saves_are_refused(sop_class: str, conversion_type: str | None) -> None:
    ds = mr()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    if conversion_type == "SCREEN SAVE":
        ds.ImageType = ["DERIVED", "SECONDARY", "SCREEN SAVE"]
    elif conversion_type:
        ds.ConversionType = conversion_type
    with pytest.raises(DeidentificationError, match="does not clean pixel data") as caught:
        deidentify(ds, BASIC, KEY)
    assert caught.value.code == "deid.secondary_capture"


# The allow-list -------------------------------------------------------------------------------------


def test_attributes_neither_in_the_table_nor_allowed_are_removed_at_every_depth() -> None:
    ds = mr()
    ds.PatientSpeciesDescription = "Homo sapiens, Jane's"  # LO, not in the table, not allowed
    ds.add_new(0x00189999, "LO", "an attribute newer than this code")  # unknown public tag
    item = Dataset()
    item.PatientSpeciesDescription = "nested"
    item.CodeValue = "T-A0100"
    item.CodingSchemeDesignator = "SRT"
    item.CodeMeaning = "Brain"
    ds.AnatomicRegionSequence = Sequence([item])  # allowed, walked
    ds.PerformedProtocolCodeSequence = Sequence([Dataset()])  # not allowed: gone with its items
    out = deidentify(ds, BASIC, KEY)
    assert "PatientSpeciesDescription" not in out
    assert 0x00189999 not in out
    assert "PerformedProtocolCodeSequence" not in out
    region = out.AnatomicRegionSequence[0]
    assert "PatientSpeciesDescription" not in region
    assert (region.CodeValue, region.CodeMeaning) == ("T-A0100", "Brain")


def test_the_image_keeps_what_it_needs() -> None:
    ds = mr()
    out = deidentify(ds, BASIC, KEY)
    for keyword in (
        "SOPClassUID", "Modality", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
        "PixelRepresentation", "PhotometricInterpretation", "SamplesPerPixel", "PixelSpacing",
        "SliceThickness", "ImagePositionPatient", "ImageOrientationPatient", "WindowCenter",
        "WindowWidth", "RepetitionTime", "EchoTime", "MagneticFieldStrength", "Manufacturer",
    ):  # fmt: skip
        if keyword in ds:
            assert out[keyword].value == ds[keyword].value, keyword
    assert out.PixelData is ds.PixelData
