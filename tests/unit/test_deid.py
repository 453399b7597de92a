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
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from pediface.errors import DeidentificationError
from worker.deid import DeidOption, DeidPolicy, deidentify, pseudonymise, remap_uid
from worker.deid.actions import Action, basic_element_action, basic_sequence_action, shift_da, shift_dt
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
def test_combined_codes_keep_the_attribute_present(code: str, element: Action, sequence: Action) -> None:
    assert basic_element_action(code) is element
    assert basic_sequence_action(code) is sequence


# The canary test: nothing the table lists survives the Basic profile ------------------------------


def _canary_value(vr: str, n: int) -> tuple[object, bytes | None]:
    """A value for `vr` that is unique to `n`, and the bytes that show it in a written file.

    None for the bytes means the value cannot be searched for reliably (binary numbers); those
    are checked on the re-read dataset instead.
    """
    text = f"CNRY{n:04d}"
    if vr in {"LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE"}:
        return text, text.encode()
    if vr == "PN":
        return f"{text}^Canary", text.encode()
    if vr == "UR":
        return f"http://{text}.example", text.encode()
    if vr == "UI":
        uid = f"1.999.9.{10000 + n}"
        return uid, uid.encode()
    if vr == "DA":
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=n)
        return day.strftime("%Y%m%d"), day.strftime("%Y%m%d").encode()
    if vr == "DT":
        day = datetime.date(1950, 1, 1) + datetime.timedelta(days=n)
        value = day.strftime("%Y%m%d") + "121314"
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
        value = f"{n % 1000:03d}Y"
        return value, value.encode()
    if vr in {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}:
        return text.encode(), text.encode()
    if vr in {"US", "SS", "UL", "SL", "SV", "UV"}:
        return 1000 + n % 30000, None
    if vr in {"FL", "FD"}:
        return 1000.5 + n, None
    raise LookupError(vr)


def _encodable(elem: DataElement) -> bool:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_data_element(buffer, elem)
    except Exception:  # noqa: BLE001 - whatever pydicom refuses to encode is left out of the test
        return False
    return True


def _canary_item(n: int) -> Dataset:
    """A sequence item with canaries in listed attributes, a private block and a deeper item."""
    item = Dataset()
    item.InstitutionName = f"CNRY{n:04d}"
    item.ReferencedSOPInstanceUID = f"1.999.8.{10000 + n}"
    item.add_new(0x00290010, "LO", f"CNRYCREATOR{n:04d}")
    item.add_new(0x00291001, "LO", f"CNRYPRIV{n:04d}")
    inner = Dataset()
    inner.PatientBirthDate = "19470203"
    inner.add_new(0x00330010, "LO", "CNRYINNERCREATOR")
    item.DerivationCodeSequence = Sequence([inner])  # unlisted: its items are walked anyway
    return item


def _canary_dataset() -> tuple[Dataset, dict[int, bytes], dict[int, object]]:
    """pydicom's example MR with a canary in every table attribute pydicom can encode."""
    ds = mr()
    searchable: dict[int, bytes] = {}
    numeric: dict[int, object] = {}
    for n, tag in enumerate(sorted(profile_table().exact)):
        if tag >> 16 in (0x0000, 0x0002) or not dictionary_has_tag(tag):
            continue  # command or file meta elements (dcmwrite refuses them), or too new for pydicom
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            elem = DataElement(tag, vr, Sequence([_canary_item(n)]))
            searchable[tag] = f"CNRY{n:04d}".encode()
        else:
            try:
                value, shown = _canary_value(vr, n)
            except LookupError:
                continue
            elem = DataElement(tag, vr, value)
            if shown is None:
                numeric[tag] = value
            else:
                searchable[tag] = shown
        if _encodable(elem):
            ds.add(elem)
        else:
            searchable.pop(tag, None)
            numeric.pop(tag, None)
    # Repeating groups: overlays and curves, in two groups of their range.
    ds.add_new(0x60003000, "OW", b"CNRYOVL0")
    ds.add_new(0x60024000, "LT", "CNRYOVLCOMMENT")
    ds.add_new(0x50003000, "OB", b"CNRYCRV0")
    searchable.update({0x60003000: b"CNRYOVL0", 0x60024000: b"CNRYOVLCOMMENT", 0x50003000: b"CNRYCRV0"})
    # Private attributes at the top level, and a private sequence.
    ds.add_new(0x00090010, "LO", "CNRYTOPCREATOR")
    ds.add_new(0x00091001, "LO", "CNRYTOPPRIVATE")
    ds.add_new(0x00091002, "SQ", Sequence([_canary_item(99_001)]))
    searchable.update({0x00090010: b"CNRYTOPCREATOR", 0x00091001: b"CNRYTOPPRIVATE"})
    # An unlisted sequence two levels deep whose items carry canaries.
    outer = Dataset()
    outer.ReferencedSeriesSequence = Sequence([_canary_item(99_002)])
    ds.ProcedureCodeSequence = Sequence([outer])
    return ds, searchable, numeric


def test_canary_basic_profile_leaves_no_listed_value() -> None:
    ds, searchable, numeric = _canary_dataset()
    original = to_bytes(ds)
    assert len(searchable) > 450, "too few canaries were encodable: the test would prove little"
    missing = [f"{tag:08X}" for tag, shown in searchable.items() if shown not in original]
    assert not missing, f"canaries not written to the input, the test is broken for {missing}"
    nested = [b"CNRYCREATOR", b"CNRYPRIV", b"CNRYINNERCREATOR", b"1.999.8.", b"19470203"]
    assert all(marker in original for marker in nested)

    out = deidentify(ds, BASIC, KEY)
    written = to_bytes(out)

    leaked = [f"{tag:08X}" for tag, shown in searchable.items() if shown in written]
    assert not leaked, f"canaries of these tags survived the Basic profile: {leaked}"
    assert not [marker for marker in [*nested, b"CNRY"] if marker in written]
    assert b"CompressedSamples" not in written  # the example's own patient name
    reread = pydicom.dcmread(io.BytesIO(written))
    for tag, value in numeric.items():
        assert tag not in reread or reread[tag].value != value, f"{tag:08X} kept its value"


@pytest.mark.parametrize(
    "option",
    [
        DeidOption.RETAIN_UIDS,
        DeidOption.RETAIN_DEVICE_IDENTITY,
        DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
        DeidOption.RETAIN_LONGITUDINAL_FULL_DATES,
        DeidOption.RETAIN_SAFE_PRIVATE,
        DeidOption.CLEAN_DESCRIPTORS,
    ],
)
def test_canary_an_option_keeps_exactly_the_rows_its_column_keeps(option: DeidOption) -> None:
    ds, searchable, _ = _canary_dataset()
    written = to_bytes(deidentify(ds, DeidPolicy(options=frozenset({option})), KEY))
    leaked = {tag for tag, shown in searchable.items() if shown in written}
    table = profile_table().exact
    # A kept sequence still has its items de-identified, so only non-sequence rows show.
    expected = {
        tag
        for tag in searchable
        if tag in table and table[tag].option_codes.get(option) == "K" and dictionary_VR(tag) != "SQ"
    }
    assert leaked == expected


def test_canary_every_private_attribute_is_removed_at_every_depth() -> None:
    ds, _, _ = _canary_dataset()
    out = deidentify(ds, BASIC, KEY)

    def private_tags(dataset: Dataset) -> list[int]:
        found: list[int] = []
        dataset.walk(lambda _ds, elem: found.append(elem.tag) if elem.tag.is_private else None)
        return found

    assert private_tags(ds)
    assert private_tags(out) == []


def test_input_is_left_untouched() -> None:
    ds, _, _ = _canary_dataset()
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


def test_overlay_data_and_curves_are_removed_in_every_group() -> None:
    ds = mr()
    for group in (0x6000, 0x6002, 0x601E):
        ds.add_new((group << 16) | 0x0010, "US", 64)  # OverlayRows: not in the table
        ds.add_new((group << 16) | 0x3000, "OW", b"\x01\x02" * 8)
        ds.add_new((group << 16) | 0x4000, "LT", "overlay comment")
    ds.add_new(0x50020005, "US", 1)
    out = deidentify(ds, BASIC, KEY)
    for group in (0x6000, 0x6002, 0x601E):
        assert (group << 16) | 0x3000 not in out
        assert (group << 16) | 0x4000 not in out
        assert (group << 16) | 0x0010 in out
    assert 0x50020005 not in out


def test_dummy_sequence_replaces_unlisted_values_and_empty_sequence_has_no_items() -> None:
    ds = mr()
    person = Dataset()
    person.CodeValue = "MRN-4711"
    person.CodingSchemeDesignator = "HOSPITAL"
    person.CodeMeaning = "Jane Operator"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = Sequence([person])
    ds.OperatorIdentificationSequence = Sequence([operator])  # X/D: kept with dummy content
    institution = Dataset()
    institution.CodeValue = "HOSP1"
    ds.InstitutionCodeSequence = Sequence([institution])  # X/Z/D: a sequence with no items

    out = deidentify(ds, BASIC, KEY)
    code = out.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == ("ANONYMOUS",) * 3
    assert len(out.InstitutionCodeSequence) == 0


# Options -------------------------------------------------------------------------------------------


def test_unknown_option_name_is_refused() -> None:
    with pytest.raises(ValueError, match="Retain Everything"):
        DeidPolicy.from_names(["Retain Everything"])


@pytest.mark.parametrize("name", ["Clean Structured Content", "Clean Graphics"])
def test_options_not_implemented_are_refused_not_ignored(name: str) -> None:
    with pytest.raises(ValueError, match="not supported yet"):
        DeidPolicy.from_names([name])


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
    assert out.InstitutionName == "ANONYMOUS"  # not the device's identity
    assert deidentify(ds, BASIC, KEY).DeviceSerialNumber != ds.DeviceSerialNumber


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
def test_modified_dates_refuse_a_date_they_cannot_parse_without_quoting_it() -> None:
    ds = uih(1)  # its dates are the placeholder '***'
    policy = DeidPolicy.from_names(["Retain Longitudinal Temporal Information with Modified Dates"])
    with pytest.raises(DeidentificationError) as caught:
        deidentify(ds, policy, KEY)
    assert "(0008,0020) StudyDate" in str(caught.value)
    assert "***" not in str(caught.value)


def test_shift_keeps_the_precision_of_partial_datetimes() -> None:
    assert shift_dt("2024", -1) == "2023"
    assert shift_dt("202403", -1) == "202402"
    assert shift_dt("20240301", -1) == "20240229"
    assert shift_da("20240301", -1) == "20240229"
    assert shift_da("", -5) == ""
    with pytest.raises(ValueError):
        shift_da("20240230", -1)


def test_clean_descriptors_replaces_text_and_keeps_empty_values() -> None:
    ds = mr()
    ds.SeriesDescription = "Head of Jane Doe"
    ds.ImageComments = ""
    out = deidentify(ds, DeidPolicy.from_names(["Clean Descriptors"]), KEY)
    assert out.SeriesDescription == "ANONYMOUS"
    assert out.ImageComments == ""
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
