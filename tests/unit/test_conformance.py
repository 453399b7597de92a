"""Output a validator accepts: every output of every shared series, and its face-mask SEG, through dciodvfy.

Each series goes through the pipeline (split, mask, write back into the original pixel data, which
keeps its transfer syntax where a lossless encoder exists, de-identify, mark derived) with the mask
SEG, under the research and the Basic profile. What blanks the pixels does not matter to the
headers, so a fixed corner box stands in for the face (the real masker runs in the e2e tests).
Every output instance and the SEG must give dciodvfy no error the input did not have, but for the
three MR Pulse Sequence attributes a derived Enhanced MR image keeps for dcm2niix, which PS3.3
C.8.13.4 allows (evaluation.conformance.permitted); and carry the derivation: Image Type DERIVED,
what was done and from which pseudonymised instance.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from evaluation.conformance import CornerBox, dciodvfy_errors, new_errors
from tests.conftest import DICOM, need_shared, need_tool
from worker.deid import DeidPolicy
from worker.deid.iod import original_only_attributes
from worker.pipeline import ENHANCED_MR, DefacedSeries, deface_series, derived_copy
from worker.volume.read import read_instances

KEY = b"pediface-unit-test-key-0123456789"
SERIES = sorted(folder for folder in DICOM.glob("*/*") if folder.is_dir()) if DICOM.is_dir() else []
CHECKED_PER_SERIES = 4
"""Instances of a large series given to dciodvfy (first, last and two between): their headers differ
only in position and number, and dciodvfy takes a second or so for each."""


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".txt" and p.name != "LICENSE")


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _sample(items: list) -> list:
    if len(items) <= CHECKED_PER_SERIES:
        return items
    picks = np.linspace(0, len(items) - 1, CHECKED_PER_SERIES).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


@dataclass
class Output:
    name: str
    inputs: list[bytes]
    result: DefacedSeries | None
    headers_only: list[pydicom.Dataset]


BASIC_TOO = (
    "siemens_xa30_t1w_tfl3d_sag_enhanced",
    "philips_t1w_tse_ax_enhanced_PHANTOM",
    "siemens_epi_mosaic_cor_oblique",
)
"""Series also run under the Basic profile: its headers differ from the research profile's in the
private blocks and descriptors, which these (enhanced, multi-frame, mosaic) exercise."""
RUNS = [(f.name, "research") for f in SERIES] + [(f.name, "basic") for f in SERIES if f.name in BASIC_TOO]


@pytest.fixture(scope="module", params=RUNS or [("-", "-")], ids=lambda run: "/".join(run))
def output(request: pytest.FixtureRequest) -> Output:
    need_shared(DICOM)
    name, profile = request.param
    folder = next(f for f in SERIES if f.name == name)
    files = _files(folder)
    policy = DeidPolicy(profile=profile)
    try:
        result = deface_series(read_instances(files), CornerBox(), policy, KEY, mask_segmentation=True)
        headers_only = []
    except Exception:  # noqa: BLE001 - a series the pipeline refuses is checked header by header
        result = None
        headers_only = [derived_copy(pydicom.dcmread(path), policy, KEY, "test") for path in files]
    return Output(f"{name}/{profile}", [path.read_bytes() for path in files], result, headers_only)


def test_every_output_and_the_mask_seg_give_dciodvfy_no_new_error(output: Output) -> None:
    need_tool("dciodvfy")
    before: set[str] = set()
    for data in output.inputs:
        before |= dciodvfy_errors(data) or set()
    outputs = output.result.datasets if output.result is not None else output.headers_only
    checked = [*_sample(outputs), *([output.result.segmentation] if output.result is not None else [])]
    assert checked and (output.result is None or output.result.segmentation is not None)
    for ds in checked:
        new, _permitted = new_errors(before, dciodvfy_errors(_bytes(ds)) or set())
        assert not new, (
            f"{output.name} {ds.SOPClassUID.name}: dciodvfy errors the input did not have: {sorted(new)}"
        )


def test_every_output_says_it_was_derived_and_from_what(output: Output) -> None:
    outputs = output.result.datasets if output.result is not None else output.headers_only
    originals = {
        str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        for data in output.inputs
    }
    for ds in outputs:
        assert ds.ImageType[0] == "DERIVED"
        assert not set(original_only_attributes(str(ds.SOPClassUID))) & set(ds.dir())
        if str(ds.SOPClassUID) == ENHANCED_MR and "SharedFunctionalGroupsSequence" in ds:
            group = ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence[0]
            reference = group.SourceImageSequence[0]
            evidence = ds.SourceImageEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
            assert evidence.ReferencedSOPInstanceUID == reference.ReferencedSOPInstanceUID
            assert group.DerivationCodeSequence[0].CodeValue == "113047" and group.DerivationDescription
            frame_types = [
                f.MRImageFrameTypeSequence[0].FrameType[0] for f in ds.PerFrameFunctionalGroupsSequence
            ]
            assert set(frame_types) == {"DERIVED"}
        else:
            reference = ds.SourceImageSequence[0]
            assert ds.DerivationCodeSequence[0].CodeValue == "113047" and ds.DerivationDescription
        # the source is the pseudonymised instance: neither the original nor the output itself
        assert reference.ReferencedSOPInstanceUID not in originals
        assert reference.ReferencedSOPInstanceUID != ds.SOPInstanceUID
