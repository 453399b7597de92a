"""Siemens CSA headers: read with nibabel, written back byte for byte, filtered to the research allow-list.

The round trip runs over every CSA header of the shared Siemens series (classic, dual echo and two
mosaics, one of them in 9 transfer syntaxes); the filter is checked with identifiers injected where
real scanners put them, and by what still reads the filtered header (nibabel, pediface's mosaic
geometry).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pydicom
import pytest

from tests.conftest import DICOM, need_shared
from worker import csa
from worker.deid import gehc
from worker.deid.private import check_string_pattern, research_private

SIEMENS = ("dcm_qa_decubitus", "dcm_qa_pdt2", "dcm_qa_ts", "dcm_qa")
MOSAIC = DICOM / "dcm_qa_ts" / "siemens_epi_mosaic_9_transfer_syntaxes"
TSE = DICOM / "dcm_qa_pdt2" / "siemens_pd_t2_tse_sag_PHANTOM"
XA = DICOM / "dcm_qa_xa30" / "siemens_xa30_t1w_tfl3d_sag_enhanced"
GE = DICOM / "dcm_qa_nih" / "ge_epi_fmri_ax_mr0004"
NAME = b"Jane"


def _files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix not in (".txt",) and p.name != "LICENSE"
    )


def _headers() -> list[tuple[str, bytes]]:
    need_shared(DICOM)
    found = []
    for study in SIEMENS:
        for path in sorted((DICOM / study).rglob("*")):
            if not path.is_file() or path.name == "LICENSE":
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            block = ds.private_block(0x0029, "SIEMENS CSA HEADER")
            for element in (0x10, 0x20):
                found.append((f"{path.parent.name}/{path.name}/{element:02X}", bytes(block[element].value)))
    return found


def _csa(path: Path, element: int) -> bytes:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return bytes(ds.private_block(0x0029, "SIEMENS CSA HEADER")[element].value)


# -- reading and writing -----------------------------------------------------------------------------


def test_every_shared_header_round_trips_byte_for_byte_and_reads_as_nibabel_reads_it() -> None:
    headers = _headers()
    assert len(headers) == 302  # 151 instances, image and series header each
    for where, raw in headers:
        header = csa.parse(raw)
        assert csa.write(header) == raw, where
        canonical = csa.write(header, canonical=True)
        assert len(canonical) == len(raw), where
        assert csa.read_csa(canonical) == csa.read_csa(raw), where
        # the values this model sees are nibabel's, tag for tag, in order, item for item
        read = csa.read_csa(raw)
        assert [tag.name for tag in header.tags] == list(read) == list(csa.parse_csa(raw)), where
        for tag in header.tags:
            items = [item for item in read[tag.name].items if item != ""]  # nibabel keeps empty ones of VM 0
            assert len(tag.values) == len(items), (where, tag.name)
            for text, value in zip(tag.values, items, strict=True):
                assert float(text) == value if isinstance(value, int | float) else text == value


def test_canonical_output_zeroes_what_scanners_leave_after_tag_names() -> None:
    raw = _csa(_files(TSE)[0], 0x20)
    junk = [tag.name for tag in csa.parse(raw).tags if tag.name_field[len(tag.name) :].strip(b"\0")]
    assert junk, "the shared headers carry heap bytes after the tag names"
    for tag in csa.parse(csa.write(csa.parse(raw), canonical=True)).tags:
        assert tag.name_field[len(tag.name) :].strip(b"\0") == b""


def test_a_written_header_has_the_words_every_real_header_has() -> None:
    header = csa.CsaHeader(
        "CSA2",
        [
            csa.CsaTag("B_value", 1, "IS", 6, [csa.make_item("1000"), *[csa.make_item(None)] * 5]),
            csa.CsaTag("Empty", 1, "DS", 3, []),
            csa.CsaTag("SliceNormalVector", 3, "FD", 4, [csa.make_item(x) for x in ("0", "0.1", "0.99")]),
        ],
    )
    raw = csa.write(header, canonical=True)
    assert raw[:8] == b"SV10\x04\x03\x02\x01" and raw[-4:] == b"\0\0\0\0"
    parsed = csa.parse(raw)
    assert parsed.tags[0].items[0].words == (5, 5, 77, 5) and parsed.tags[0].items[1].words == (0, 0, 205, 0)
    assert (parsed.tags[0].xx, parsed.tags[1].xx) == (77, 205)
    assert csa.read_csa(raw)["B_value"].items == (1000,)
    assert csa.read_csa(raw)["SliceNormalVector"].items == (0.0, 0.1, 0.99)


def test_csa1_headers_round_trip_and_parse_csa_falls_back_where_nibabel_fails() -> None:
    tags = [csa.CsaTag(f"T{i}", 1, "IS", 6, [csa.make_item(str(i)), csa.make_item(None)]) for i in range(3)]
    raw = csa.write(csa.CsaHeader("CSA1", tags, prefix=b""), canonical=True)
    assert csa.csa_kind(raw) == "CSA1"
    assert csa.write(csa.parse(raw)) == raw
    with pytest.raises(csa.CsaError):
        csa.read_csa(raw)  # nibabel 5.4's CSA1 branch reads the second tag's item count
    assert csa.parse_csa(raw) == {"T0": ["0"], "T1": ["1"], "T2": ["2"]}


@pytest.mark.parametrize(
    "raw",
    [
        b"SV10\x04\x03\x02\x01" + struct.pack("<2I", 5000, 77),
        b"SV10\x04\x03\x02\x01" + struct.pack("<2I", 1, 77) + b"\0" * 20,
        b"",
    ],
    ids=["too many tags", "truncated", "empty"],
)
def test_garbage_is_refused_and_reads_as_no_tags(raw: bytes) -> None:
    with pytest.raises(csa.CsaError):
        csa.parse(raw)
    assert csa.parse_csa(raw) == {}


# -- filtering ---------------------------------------------------------------------------------------


def _with_protocol(raw: bytes, text: bytes) -> bytes:
    header = csa.parse(raw)
    header.tag("MrPhoenixProtocol").items[0] = csa.make_item(text)
    return csa.write(header, canonical=True)


def test_the_series_header_filter_keeps_the_physics_and_no_injected_identifier() -> None:
    need_shared(TSE)
    raw = _csa(_files(TSE)[0], 0x20)
    text = csa.parse(raw).tag("MrPhoenixProtocol").items[0].value.split(b"\0")[0]
    # where a name can hide: the XProtocol wrapper, free-text keys, a number key holding a string,
    # an unknown key, a kept string key with a space, a coil string, the bytes after a tag name
    text = text.replace(b"<XProtocol>", b"<XProtocol> Jane Doe ", 1)
    begin = text.index(b"\n", text.index(b"### ASCCONV BEGIN")) + 1
    injected = (
        b'tProtocolName\t = \t""Jane^Doe""\n'
        b'sWipMemBlock.tFree\t = \t""Jane Doe 1970-01-01""\n'
        b'sKSpace.lBaseResolution\t = \t""Jane""\n'
        b'sPatient.tName\t = \t""Jane""\n'
        b'tSequenceFileName\t = \t""%CustomerSeq%\\Jane Doe""\n'
        b'sCoilSelectMeas.sCoilStringForConversion\t = \t""Jane""\n'
    )
    dirty = _with_protocol(raw, text[:begin] + injected + text[begin:])
    header = csa.parse(dirty)
    header.tags[0].name_field = header.tags[0].name.encode().ljust(40, b"\0") + b"Jane Doe".ljust(24, b"\0")
    dirty = csa.write(header)
    assert dirty.count(NAME) >= 7

    rules = research_private()
    report = csa.FilterReport()
    clean = csa.filter_csa(dirty, rules.csa_series, rules.ascconv, report)
    assert NAME not in clean
    assert {"tProtocolName", "sWipMemBlock.tFree", "sPatient.tName"} <= set(report.dropped)
    protocol = csa.parse(clean).tag("MrPhoenixProtocol").items[0].value
    assert b"<XProtocol>" not in protocol
    for key in (b"sPat.lAccelFactPE", b"tSequenceFileName", b"sKSpace.lBaseResolution", b"alTR[0]"):
        assert key in protocol, key
    assert len(clean) < len(raw) / 2


def test_a_kept_tag_whose_value_fails_its_check_is_kept_empty() -> None:
    need_shared(MOSAIC)
    header = csa.parse(_csa(_files(MOSAIC)[0], 0x10))
    header.tag("B_value").items = [csa.make_item("Jane")]  # a number expected
    header.tag("ICE_Dims").items = [csa.make_item("Jane Doe")]  # fails its pattern
    report = csa.FilterReport()
    out = csa.filter_csa(csa.write(header, canonical=True), research_private().csa_image, None, report)
    assert NAME not in out
    assert {"B_value", "ICE_Dims"} <= set(report.emptied)
    assert csa.read_csa(out)["B_value"].items == ()
    assert "PixelFile" not in csa.read_csa(out) and "MrPhoenixProtocol" not in csa.read_csa(out)


def test_a_filtered_mosaic_still_unpacks_to_the_same_volume() -> None:
    """nibabel and pediface's own mosaic geometry read the filtered header as they read the original."""
    need_shared(MOSAIC)
    from worker.volume.pixels import stack_volume
    from worker.volume.stacks import split_series

    original = pydicom.dcmread(_files(MOSAIC)[0])
    raw = bytes(original.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value)
    filtered = csa.filter_csa(raw, research_private().csa_image, None)
    before, after = csa.read_csa(raw), csa.read_csa(filtered)
    for name in ("NumberOfImagesInMosaic", "SliceNormalVector", "MosaicRefAcqTimes", "AcquisitionMatrixText"):
        assert after[name].items == before[name].items, name
    copy = pydicom.dcmread(_files(MOSAIC)[0])
    copy.private_block(0x0029, "SIEMENS CSA HEADER")[0x10].value = filtered
    volumes = []
    for ds in (original, copy):
        stack = split_series([ds]).stacks[0]
        volumes.append(stack_volume([ds], stack, {}))
    assert volumes[0].shape == volumes[1].shape == (35, 64, 64)
    assert volumes[0].direction == volumes[1].direction and volumes[0].origin == volumes[1].origin


def test_xa_protocol_text_is_reduced_to_its_ascconv_lines() -> None:
    need_shared(XA)
    ds = pydicom.dcmread(_files(XA)[0], stop_before_pixels=True)
    raw = bytes(ds.SharedFunctionalGroupsSequence[0][0x0021, 0x10FE][0][0x0021, 0x1019].value)
    assert csa.csa_kind(raw) == "XPROTOCOL" and b"tProtocolName" in raw
    out = csa.filter_csa(raw, {}, research_private().ascconv)
    assert out.startswith(b"\n### ASCCONV BEGIN")  # dcm2niix skips the first byte of a non-SV10 header
    assert b"tProtocolName" not in out and b"<XProtocol>" not in out and len(out) % 2 == 0
    assert b"sPat.lAccelFactPE" in out and len(out) < len(raw) / 5


def test_no_value_check_of_the_tables_accepts_free_text() -> None:
    research_private()  # loads and checks every pattern of the three tables
    with pytest.raises(ValueError, match="free text"):
        check_string_pattern(r"[A-Za-z ]{1,16}", "test")
    with pytest.raises(ValueError, match="free text"):
        check_string_pattern(r"[0-9.\-]{1,16}", "test")  # a date


# -- GE ------------------------------------------------------------------------------------------------


def test_the_ge_protocol_block_keeps_slice_timing_keys_and_no_series_description_or_exam_number() -> None:
    need_shared(GE)
    ds = pydicom.dcmread(_files(GE)[0], stop_before_pixels=True)
    raw = bytes(ds[0x0025, 0x101B].value)
    assert b"SEDESC" in gehc.protocol_text(raw) and b"Ex27018" in raw  # the exam number, in gzip's FNAME
    out = gehc.filter_protocol_block(raw)
    text = gehc.protocol_text(out)
    assert b"SEDESC" not in text and b"\nSLICEORDER" in text and b"Ex27018" not in out
    length = struct.unpack_from("<I", out)[0]
    assert length + 4 <= len(out) <= length + 5 and len(out) % 2 == 0
    assert gzip.decompress(out[4 : 4 + length]) == text
    with pytest.raises(ValueError):
        gehc.protocol_text(b"\0\0\0\0not gzip")


def test_the_ge_user_data_keeps_only_the_fields_of_the_phase_encoding_polarity() -> None:
    need_shared(GE)
    raw = bytes(pydicom.dcmread(_files(GE)[0], stop_before_pixels=True)[0x0043, 0x102A].value)
    out = gehc.mask_user_data(raw)
    fields = gehc.user_data_fields(raw)
    assert len(out) == len(raw) and len(fields) == 5
    inside = {i for offset, length in fields for i in range(offset, offset + length)}
    assert all(out[i] == raw[i] for i in inside)
    assert not any(byte for i, byte in enumerate(out) if i not in inside)
    assert gehc.user_data_fields(b"\0" * 10) == []
