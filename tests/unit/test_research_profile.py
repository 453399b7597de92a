"""The research profile: the science stays, the person goes.

For every shared series, dcm2niix (as a researcher runs it) on the input and on the output give the
same image grid and affine, the same bval/bvec, and the same sidecar except the documented
identifying fields (evaluation.bids.MAY_DIFFER) and descriptors that held an identifier; the
fields distortion and slice-time correction need are identical wherever the input has them. The
Basic profile, for contrast, loses them. Headers are made as the pipeline makes them
(worker.pipeline.derived_copy); the pixels do not enter the sidecar, and the whole pipeline is run
through the CLI and the gateway in tests/e2e/test_session.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from config.sections import DeidSettings
from evaluation.bids import PHYSICS, Output, compare, convert, descriptors_with_phi, write_outputs
from tests.conftest import DICOM, need_shared
from worker.deid import DeidOption, DeidPolicy
from worker.deid.options import RESEARCH_OPTIONS, DeidProfile
from worker.deid.record import RESEARCH_PRIVATE_DESCRIPTION
from worker.deid.table import safe_private_table
from worker.pipeline import derived_copy

KEY = b"pediface-unit-test-key-0123456789"
RESEARCH = DeidPolicy(profile="research")
SERIES = sorted(folder for folder in DICOM.glob("*/*") if folder.is_dir()) if DICOM.is_dir() else []


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt" and p.name != "LICENSE")


# -- the policy ---------------------------------------------------------------------------------------


def test_the_research_profile_selects_its_options_and_says_it_goes_beyond_safe_private() -> None:
    assert RESEARCH.options == frozenset(RESEARCH_OPTIONS) and RESEARCH.research
    assert set(RESEARCH_OPTIONS) == {
        DeidOption.RETAIN_SAFE_PRIVATE,
        DeidOption.CLEAN_DESCRIPTORS,
        DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        DeidOption.RETAIN_PATIENT_CHARACTERISTICS,
    }
    assert DeidPolicy().profile is DeidProfile.BASIC and not DeidPolicy().options
    more = DeidPolicy(options=frozenset({"Retain Device Identity"}), profile="research")
    assert DeidOption.RETAIN_DEVICE_IDENTITY in more.options and RESEARCH.options < more.options
    with pytest.raises(ValueError, match="exclude each other"):
        DeidPolicy(
            options=frozenset({"Retain Longitudinal Temporal Information with Full Dates"}),
            profile="research",
        )
    with pytest.raises(ValueError, match="unknown de-identification profile"):
        DeidPolicy(profile="lenient")
    settings = DeidSettings(profile="research")
    assert DeidPolicy.from_settings(settings).research
    assert not DeidPolicy.from_settings(settings, profile="basic").research
    assert DeidPolicy.from_settings(DeidSettings(), profile="research").research

    ds = pydicom.examples.mr
    out = derived_copy(ds, RESEARCH, KEY, "test")
    assert RESEARCH_PRIVATE_DESCRIPTION in out.DeidentificationMethod
    assert len(RESEARCH_PRIVATE_DESCRIPTION) <= 64  # an LO value
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


# -- what the research profile keeps of the vendors' private data -------------------------------------


def _private_keys(ds: pydicom.Dataset) -> set[tuple[int, str, int]]:
    found = set()

    def visit(dataset: pydicom.Dataset) -> None:
        creators = {
            (e.tag.group, e.tag.element): str(e.value).strip()
            for e in dataset
            if e.tag.is_private and 0x10 <= e.tag.element <= 0xFF
        }
        for elem in dataset:
            if elem.tag.is_private and elem.tag.element >= 0x1000:
                found.add(
                    (
                        elem.tag.group,
                        creators.get((elem.tag.group, elem.tag.element >> 8), ""),
                        elem.tag.element & 0xFF,
                    )
                )
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)

    visit(ds)
    return found


def _identifying_values(ds: pydicom.Dataset) -> set[bytes]:
    """The input's public identifying values, long enough to search for in private data."""
    keywords = (
        "PatientName", "PatientID", "InstitutionName", "StationName", "DeviceSerialNumber",
        "ProtocolName", "SeriesDescription", "StudyDescription", "StudyInstanceUID",
        "SeriesInstanceUID", "SOPInstanceUID", "StudyID", "OperatorsName", "StudyDate",
    )  # fmt: skip
    values = set()
    for keyword in keywords:
        text = str(ds.get(keyword, "") or "").strip()
        if len(text) >= 5 and text != "***":
            values.add(text.encode())
    return values


def _private_bytes(ds: pydicom.Dataset) -> bytes:
    parts = []
    for elem in ds.iterall():
        if elem.tag.is_private and isinstance(elem.value, bytes | str):
            parts.append(
                elem.value if isinstance(elem.value, bytes) else elem.value.encode("latin-1", "replace")
            )
    return b"\n".join(parts)


VENDORS = (
    "siemens_epi_mosaic_cor_oblique",
    "ge_epi_fmri_ax_mr0004",
    "siemens_xa30_t1w_tfl3d_sag_enhanced",
    "philips_t1w_tse_ax_enhanced_PHANTOM",
)


@pytest.mark.parametrize("name", VENDORS)
def test_private_data_keeps_the_physics_and_none_of_the_identifying_values(name: str) -> None:
    need_shared(DICOM)
    folder = next(folder for folder in SERIES if folder.name == name)
    ds = pydicom.dcmread(_files(folder)[0])
    out = derived_copy(ds, RESEARCH, KEY, "test")
    before = _private_bytes(ds)
    found_before = [value for value in _identifying_values(ds) if value in before]
    assert found_before or name.startswith("philips"), "the input hides identifiers in its private data"
    after = _private_bytes(out)
    assert not [value for value in _identifying_values(ds) if value in after]
    kept = _private_keys(out)
    from worker.deid.private import research_private

    allowed = safe_private_table() | set(research_private().rules)
    assert kept <= allowed, kept - allowed
    assert len(kept) >= 5
    assert not _private_keys(derived_copy(ds, DeidPolicy(), KEY, "test"))


# -- what dcm2niix makes of it --------------------------------------------------------------------------


@dataclass
class Converted:
    name: str
    first: pydicom.Dataset
    before: list[dict[str, Output]]
    after: dict[str, list[dict[str, Output]]]


def _units(folder: Path) -> list[list[Path]]:
    """The conversion units: the sets of one image in several transfer syntaxes convert file by file."""
    files = _files(folder)
    return [[path] for path in files] if folder.name.endswith("transfer_syntaxes") else [files]


@pytest.fixture(scope="module", params=[folder.name for folder in SERIES] or ["missing"])
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    need_shared(DICOM)
    folder = next(folder for folder in SERIES if folder.name == request.param)
    work = tmp_path_factory.mktemp(folder.name)
    units = _units(folder)[:3]
    before, after = [], {"research": [], "basic": []}
    for index, files in enumerate(units):
        write_outputs(files, work / f"in{index}", None, KEY)
        before.append(convert(work / f"in{index}", work / f"nii-in{index}"))
        for profile, outputs in after.items():
            write_outputs(files, work / f"{profile}{index}", DeidPolicy(profile=profile), KEY)
            outputs.append(convert(work / f"{profile}{index}", work / f"nii-{profile}{index}"))
    return Converted(folder.name, pydicom.dcmread(units[0][0], stop_before_pixels=True), before, after)


def test_dcm2niix_gives_the_same_grid_and_sidecar_but_for_the_documented_fields(converted: Converted) -> None:
    for before, after in zip(converted.before, converted.after["research"], strict=True):
        assert before, f"dcm2niix made nothing of {converted.name}"
        parity = compare(converted.name, before, after)
        problems = parity.unexpected(descriptors_with_phi(before, converted.first))
        assert not problems, f"{converted.name}: {problems}"
        assert parity.kept, converted.name
        for output in before.values():
            physics = [key for key in PHYSICS if key in output.sidecar]
            assert not set(physics) & (parity.dropped | set(parity.changed)), physics


def test_the_basic_profile_loses_what_the_research_profile_keeps(converted: Converted) -> None:
    """The contrast that motivates the research profile: phase-encoding polarity and slice timing."""
    lost: set[str] = set()
    for before, after in zip(converted.before, converted.after["basic"], strict=True):
        lost |= compare(converted.name, before, after).dropped
    physics = {key for output in converted.before[0].values() for key in PHYSICS if key in output.sidecar}
    if converted.name.startswith(("siemens", "ge_")):
        assert physics & lost, f"{converted.name}: the Basic profile kept {physics}"
