"""The de-identification walk keeps, empties and remaps elements without decoding them: the output
must read and write as if every value had been decoded, whatever the input's encoding."""

from __future__ import annotations

import io

import pydicom
import pydicom.examples
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tests.conftest import SHARED, need_shared
from worker.deid import DeidPolicy, deidentify, remap_uid

KEY = b"pediface-unit-test-key-0123456789"

#: Attributes the allow-list keeps as they are, of several VRs (US, DS, CS, IS, OW and a multi-valued DS).
KEPT = ("Rows", "Columns", "BitsAllocated", "PixelSpacing", "ImageType", "EchoNumbers", "PixelData")
#: UIDs the Basic profile replaces with the keyed remap (U).
REMAPPED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")


def encoded(transfer_syntax: str) -> bytes:
    """pydicom's example MR written in `transfer_syntax`."""
    ds = pydicom.examples.mr
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    return buffer.getvalue()


def written(ds: Dataset) -> Dataset:
    """`ds` written as a DICOM file, as the worker writes it, and read back."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_kept_and_remapped_values_survive_writing(transfer_syntax: str) -> None:
    source = pydicom.dcmread(io.BytesIO(encoded(transfer_syntax)))
    reference = pydicom.dcmread(io.BytesIO(encoded(transfer_syntax)))
    out = deidentify(source, DeidPolicy(), KEY)
    # The fast path was taken: kept elements are the input's undecoded ones, and were not decoded.
    assert isinstance(out.get_item("PixelSpacing"), RawDataElement)
    assert isinstance(source.get_item("PixelSpacing"), RawDataElement)
    back = written(out)
    for keyword in KEPT:
        assert back[keyword].value == reference[keyword].value, keyword
        assert back[keyword].VR == reference[keyword].VR, keyword
    for keyword in REMAPPED:
        assert back[keyword].value == remap_uid(reference[keyword].value, KEY), keyword
    assert back.file_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == transfer_syntax


def test_an_emptied_value_is_empty_and_keeps_its_vr() -> None:
    source = pydicom.dcmread(io.BytesIO(encoded(ImplicitVRLittleEndian)))
    source.StudyDate = "20200101"  # Z under the Basic profile (Type 2 in the MR IOD)
    buffer = io.BytesIO()
    source.save_as(buffer, implicit_vr=True, little_endian=True)
    back = written(deidentify(pydicom.dcmread(io.BytesIO(buffer.getvalue())), DeidPolicy(), KEY))
    assert back["StudyDate"].VR == "DA" and back.StudyDate == ""


def test_text_of_another_character_set_is_decoded_not_shared() -> None:
    # A kept LO (Manufacturer) in ISO_IR 192: its bytes depend on the character set, so the walk
    # decodes it; the output reads back the same text.
    source = pydicom.examples.mr
    source.SpecificCharacterSet = "ISO_IR 192"
    source.Manufacturer = "Société Générale d'Imagerie"
    buffer = io.BytesIO()
    source.save_as(buffer, enforce_file_format=True)
    back = written(deidentify(pydicom.dcmread(io.BytesIO(buffer.getvalue())), DeidPolicy(), KEY))
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert back.Manufacturer == "Société Générale d'Imagerie"


def _decoded_then_written(ds: Dataset) -> bytes:
    for elem in ds.iterall():  # decodes every element, at every depth, as the walk used to
        _ = elem.value
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _written(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "series",
    [
        "dcm_qa_uih/uih_t1_gre_fsp_3d_sag",  # classic MR, explicit VR
        "dcm_qa_nih/ge_epi_fmri_ax_mr0004",  # GE, private blocks
        "dcm_qa_xa30/siemens_xa30_t1w_tfl3d_sag_enhanced",  # enhanced MR: nested functional groups
        "dcm_qa_ts/siemens_epi_mosaic_9_transfer_syntaxes",  # implicit VR and compressed syntaxes
    ],
)
def test_real_instances_write_the_bytes_of_their_decoded_output(series: str) -> None:
    """Writing the output with its shared, undecoded elements gives the bytes of writing it with
    every value decoded first: nothing is lost or re-encoded differently on the fast path."""
    folder = need_shared(SHARED / "data" / "dicom" / series)
    paths = sorted(folder.glob("*.dcm"))[:9]
    assert paths, f"no instances in {folder}"
    for path in paths:
        raw = path.read_bytes()
        fast = _written(deidentify(pydicom.dcmread(io.BytesIO(raw)), DeidPolicy(), KEY))
        slow = _decoded_then_written(deidentify(pydicom.dcmread(io.BytesIO(raw)), DeidPolicy(), KEY))
        assert fast == slow, path.name
