"""Patient IDs from a site-supplied lookup table, and the policy built from the settings."""

from __future__ import annotations

from pathlib import Path

import pydicom.examples
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from common.errors import DeidentificationError
from config.sections import DeidSettings
from config.settings import Settings
from worker.deid import DeidOption, DeidPolicy, deidentify, pseudonymise
from worker.deid.lookup import PatientIdLookup
from worker.deid.pseudonym import LOOKUP_HINT_CHARS, lookup_hint

KEY = b"pediface-unit-test-key-0123456789"
PATIENT = "MRN-0047110815"  # the original ID: must never appear in a message


def mr(patient_id: str = PATIENT) -> Dataset:
    ds = pydicom.examples.mr
    ds.PatientID = patient_id
    return ds


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def lookup(tmp_path: Path) -> PatientIdLookup:
    csv_path = write_csv(
        tmp_path / "ids.csv",
        "\ufefforiginal_patient_id,research_id,note\n"  # a BOM and an extra column, as spreadsheets write
        f" {PATIENT} ,STUDY7-0001,first\n"
        "\n"
        "4711,STUDY7-0002,\n",
    )
    return PatientIdLookup.from_csv(csv_path)


def test_the_csv_is_read(lookup: PatientIdLookup) -> None:
    assert len(lookup) == 2
    assert lookup[PATIENT] == "STUDY7-0001"
    assert lookup[" 4711 "] == "STUDY7-0002"
    assert "0815" not in lookup
    assert PATIENT not in repr(lookup) and "STUDY7" not in repr(lookup)
    assert lookup == PatientIdLookup([(PATIENT, "STUDY7-0001"), ("4711", "STUDY7-0002")])
    assert hash(lookup) == hash(PatientIdLookup([("4711", "STUDY7-0002"), (PATIENT, "STUDY7-0001")]))


def test_a_listed_patient_gets_the_research_id(lookup: PatientIdLookup) -> None:
    ds = mr()
    other = Dataset()
    other.PatientID = PATIENT
    ds.ReferencedPatientAliasSequence = Sequence([other])  # in the table (X): removed anyway
    ds.ReferencedSeriesSequence = Sequence([Dataset()])
    ds.ReferencedSeriesSequence[0].PatientID = PATIENT  # allowed sequence: its PatientID is replaced
    out = deidentify(ds, DeidPolicy(patient_id_lookup=lookup), KEY)
    assert out.PatientID == "STUDY7-0001"
    assert str(out.PatientName) == "STUDY7-0001"
    assert out.ReferencedSeriesSequence[0].PatientID == "STUDY7-0001"


def test_an_unlisted_patient_gets_the_pseudonym_unless_required(lookup: PatientIdLookup) -> None:
    ds = mr("0815")
    assert deidentify(ds, DeidPolicy(patient_id_lookup=lookup), KEY).PatientID == pseudonymise("0815", KEY)
    with pytest.raises(DeidentificationError) as caught:
        deidentify(ds, DeidPolicy(patient_id_lookup=lookup, require_lookup=True), KEY)
    message = str(caught.value)
    assert caught.value.code == "deid.lookup_missing"
    assert "0815" not in message
    assert lookup_hint("0815", KEY) in message  # so that the honest broker can find the patient


def test_the_missing_patient_is_never_named(lookup: PatientIdLookup) -> None:
    ds = mr("CNRY-ORIGINAL-ID")
    with pytest.raises(DeidentificationError) as caught:
        deidentify(ds, DeidPolicy(patient_id_lookup=lookup, require_lookup=True), KEY)
    assert "CNRY" not in str(caught.value)
    assert caught.value.__cause__ is None


def test_a_required_lookup_needs_a_patient_id(lookup: PatientIdLookup) -> None:
    ds = mr("")
    with pytest.raises(DeidentificationError, match="PatientID is empty or missing"):
        deidentify(ds, DeidPolicy(patient_id_lookup=lookup, require_lookup=True), KEY)
    assert deidentify(ds, DeidPolicy(patient_id_lookup=lookup), KEY).PatientID == pseudonymise(
        ds.StudyInstanceUID, KEY
    )


def test_the_hint_is_short_keyed_and_not_the_pseudonym() -> None:
    hint = lookup_hint(PATIENT, KEY)
    assert len(hint) == 2 + LOOKUP_HINT_CHARS
    assert hint == lookup_hint(f" {PATIENT} ", KEY)
    assert hint != lookup_hint(PATIENT, b"another-unit-test-key-9876543210")
    assert hint[2:] not in pseudonymise(PATIENT, KEY)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("patient,research\n1,A\n", "must have a header line"),
        ("original_patient_id,research_id\n,A\n", "line 2: original_patient_id is empty"),
        ("original_patient_id,research_id\n1,\n", "line 2: research_id is empty"),
        ("original_patient_id,research_id\n1,A\n1,B\n", "line 3: .* appeared before"),
        ("original_patient_id,research_id\n1,A\n2,A\n", "line 3: .* already given to another patient"),
        ("original_patient_id,research_id\n1,A^B\n", "line 2: research_id must be"),
        ("original_patient_id,research_id\n1," + "A" * 65 + "\n", "line 2: research_id must be"),
        ("original_patient_id,research_id\n1\n", "line 2: the row has fewer columns"),
    ],
)
def test_bad_tables_are_refused_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        PatientIdLookup.from_csv(write_csv(tmp_path / "ids.csv", text))
    assert "A^B" not in str(caught.value)


def test_a_missing_table_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the patient ID lookup table"):
        PatientIdLookup.from_csv(tmp_path / "absent.csv")


def test_a_duplicate_row_with_the_same_research_id_is_accepted() -> None:
    assert len(PatientIdLookup([("1", "A"), ("1", "A")])) == 1


def test_require_lookup_without_a_table_is_refused() -> None:
    with pytest.raises(ValueError, match="require_lookup needs a patient_id_lookup"):
        DeidPolicy(require_lookup=True)
    with pytest.raises(ValidationError, match="require_lookup needs deid.patient_id_lookup"):
        DeidSettings(require_lookup=True)


def test_the_policy_is_built_from_the_settings(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "ids.csv", f"original_patient_id,research_id\n{PATIENT},STUDY7-0001\n")
    settings = Settings(
        data_dir=tmp_path,
        deid=DeidSettings(
            options=["Retain Device Identity"],
            patient_id_prefix="STUDY7",
            patient_id_lookup=csv_path,
            require_lookup=True,
        ),
    )
    policy = DeidPolicy.from_settings(settings.deid)
    assert policy.options == {DeidOption.RETAIN_DEVICE_IDENTITY}
    assert policy.patient_id_prefix == "STUDY7"
    assert policy.require_lookup and policy.patient_id_lookup is not None
    assert policy.patient_id_lookup[PATIENT] == "STUDY7-0001"
    assert PATIENT not in repr(policy)
    assert DeidPolicy.from_settings(DeidSettings()) == DeidPolicy()


def test_the_settings_default_to_keyed_pseudonyms_only() -> None:
    deid = DeidSettings()
    assert deid.patient_id_lookup is None and deid.require_lookup is False
    for name in ("patient_id_lookup", "require_lookup"):
        assert DeidSettings.model_fields[name].description
