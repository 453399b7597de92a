"""GE's two private blocks that carry slice timing and phase-encoding polarity, reduced to just that.

* (0025,xx1B) GEMS_SERS_01 "Protocol Data Block": a little-endian uint32 length, then gzip of
  ``KEY "value"`` lines. Some keys hold console free text (SEDESC, the series description, among
  them), and the gzip header's file name is ``Ex<exam number>Ser<series>Rx``: the exam number is
  the StudyID. :func:`filter_protocol_block` rebuilds the block with only the keys that give the
  slice order and multiband timing (:data:`PROTOCOL_KEYS`, the ones dcm2niix reads), values
  checked, gzipped with no file name and no time stamp.
* (0043,xx2A) GEMS_PARM_01 "User defined data": a binary excerpt of the raw-data header.
  :func:`mask_user_data` keeps the five fields that locate and give the phase-encoding polarity
  (header offset, version, EPI flag, polarity, ky direction) and zeroes every other byte, so the
  length and offsets stay as dcm2niix expects them.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib

PROTOCOL_KEYS = frozenset(
    {"SLICEORDER", "VIEWORDER", "MBACCEL", "NOSLC", "DELACQ", "DELACQNOAV", "PSEQ", "IOPT", "PHASEDELAYS1"}
)
"""The protocol block keys kept: slice order, view order, multiband factor, slice count, delays."""

_LINE = re.compile(rb'([A-Z0-9_]+) "([^"\n]*)"')
_VALUE = re.compile(rb"[A-Za-z0-9 ,.;:_+\-/]{0,200}")
"""A kept value: numbers and option codes, no quotes or free punctuation."""

_USER_DATA_MIN = 916
"""Shortest user data block dcm2niix reads fields from."""


def protocol_text(raw: bytes) -> bytes:
    """The decompressed text of a protocol data block.

    Raises
    ------
    ValueError
        If the block is not a length-prefixed gzip stream.
    """
    try:
        return gzip.decompress(bytes(raw[4:]))
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"not a GE protocol data block ({type(exc).__name__})") from None


def filter_protocol_block(raw: bytes) -> bytes:
    """A protocol data block holding only :data:`PROTOCOL_KEYS` lines with plain values.

    The text starts with a newline (dcm2niix looks for ``"\\nSLICEORDER"``); the result is
    padded to an even length.
    """
    kept = [b""]
    for line in protocol_text(raw).split(b"\n"):
        match = _LINE.fullmatch(line.rstrip(b"\r"))
        if match and match[1].decode() in PROTOCOL_KEYS and _VALUE.fullmatch(match[2]):
            kept.append(match[0])
    body = gzip.compress(b"\n".join(kept) + b"\n", mtime=0)  # no FNAME field, no time stamp
    out = struct.pack("<I", len(body)) + body
    return out + b"\0" * (len(out) % 2)


def user_data_fields(raw: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of the fields of a user data block that dcm2niix reads; [] if none."""
    if len(raw) < _USER_DATA_MIN:
        return []
    header = struct.unpack_from("<H", raw, 24)[0]
    if len(raw) < header + _USER_DATA_MIN:
        return []
    version = struct.unpack_from("<f", raw, header)[0]
    fields = [(24, 2), (header, 4)]
    if not 5.0 <= version <= 40.0:
        return fields
    ky_direction = 0x0394
    if version >= 25.002:
        header += 0x004C
        ky_direction -= 0x008C
    return [*fields, (header + 0x003A, 2), (header + 0x0030, 2), (header + ky_direction, 2)]


def mask_user_data(raw: bytes) -> bytes:
    """The user data block with every byte but those of :func:`user_data_fields` zeroed."""
    raw = bytes(raw)
    out = bytearray(len(raw))
    for offset, length in user_data_fields(raw):
        out[offset : offset + length] = raw[offset : offset + length]
    return bytes(out)
