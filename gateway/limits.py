"""Bounds on what one received instance may cost the gateway and the workers, checked before it is spooled.

Hostile or broken senders are expected: a Deflated data set of a few megabytes can inflate to gigabytes, a
header can declare 65535 x 65535 pixels that a worker would allocate when it decodes the frames, and an
encapsulated Pixel Data element can carry a fragment table that points anywhere. Each is refused here with
a reason (and kept in quarantine by the SCP), so that the processes behind the gateway only ever see
instances of a size they can hold. A peer that stalls in the middle of a PDU is dropped after
``dicom.network_timeout_s``: pynetdicom's own idle timer only runs between PDUs, and the sockets it
accepts block without a timeout, so :func:`bound_socket` gives each connection one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event

_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
_INFLATE_CHUNK = 16 << 20


@dataclass(frozen=True)
class Limits:
    max_inflated_bytes: int = 512 << 20
    max_image_pixels: int = 1 << 29
    network_timeout_s: float = 60.0


class LimitExceeded(Exception):
    """An instance past one of the limits (or with a broken structure), with a code and a reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def bound_socket(event: Event, timeout_s: float) -> None:
    """EVT_CONN_OPEN: a read that waits longer than ``timeout_s``, inside a PDU too, closes the connection."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.settimeout(timeout_s)


def inflate(data: bytes, max_bytes: int) -> bytes:
    """The inflated bytes of a Deflated Explicit VR Little Endian data set, never more than ``max_bytes``.

    Inflated chunk by chunk: a bomb is refused after ``max_bytes`` of output, not after allocating all of
    it. A stream that is not deflate data raises :class:`zlib.error`.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts, total, pending = [], 0, data
    while True:
        chunk = inflater.decompress(pending, _INFLATE_CHUNK)
        total += len(chunk)
        if total > max_bytes:
            raise LimitExceeded(
                "input.inflate_limit",
                f"the Deflated data set inflates to more than {max_bytes} bytes (dicom.max_inflated_bytes)",
            )
        parts.append(chunk)
        pending = inflater.unconsumed_tail
        if not pending and (inflater.eof or not chunk):
            break
    return b"".join(parts)


def check_image_size(ds: Dataset, max_pixels: int) -> None:
    """Rows x Columns x Samples x Frames must stay within ``max_pixels`` (what a decoder would allocate)."""
    try:
        pixels = (
            int(ds.Rows)
            * int(ds.Columns)
            * int(ds.get("SamplesPerPixel") or 1)
            * int(ds.get("NumberOfFrames") or 1)
        )
    except (AttributeError, TypeError, ValueError):
        return  # the SCP's own checks name a missing or invalid Rows/Columns
    if pixels > max_pixels:
        raise LimitExceeded(
            "input.image_too_large",
            f"the image declares {pixels} pixel values ({ds.Rows} x {ds.Columns}, "
            f"{ds.get('NumberOfFrames') or 1} frames), more than {max_pixels} (dicom.max_image_pixels)",
        )


def check_encapsulation(ds: Dataset, transfer_syntax: UID) -> None:
    """Encapsulated Pixel Data (PS3.5 A.4): items only, a Basic Offset Table that points at fragments,
    and at least one fragment per frame. Native Pixel Data is checked by the SCP's length check."""
    if not transfer_syntax.is_encapsulated or "PixelData" not in ds:
        return
    value = ds["PixelData"].value
    if not isinstance(value, bytes | bytearray):
        raise LimitExceeded("input.encapsulation", "encapsulated Pixel Data is not a byte string")
    items = _items(bytes(value))
    if not items:
        raise LimitExceeded("input.encapsulation", "encapsulated Pixel Data has no Basic Offset Table item")
    table, fragments = items[0], items[1:]
    frames = int(ds.get("NumberOfFrames") or 1)
    if len(fragments) < frames:
        raise LimitExceeded(
            "input.encapsulation",
            f"encapsulated Pixel Data has {len(fragments)} fragments for {frames} frames",
        )
    offset_bytes = value[table[0] : table[0] + table[1]]
    if table[1] % 4:
        raise LimitExceeded("input.encapsulation", "the Basic Offset Table's length is not a multiple of 4")
    offsets = struct.unpack(f"<{table[1] // 4}I", offset_bytes)
    if offsets:
        # Offsets count from the first byte of the first fragment's item tag.
        base = fragments[0][0] - 8
        starts = {start - 8 - base for start, _ in fragments}
        if len(offsets) != frames or offsets[0] != 0 or any(o not in starts for o in offsets):
            raise LimitExceeded(
                "input.encapsulation",
                "the Basic Offset Table does not point at the frames' fragments",
            )


def _items(value: bytes) -> list[tuple[int, int]]:
    """``(start, length)`` of every item's value; :class:`LimitExceeded` for anything that is not an item."""
    items, position = [], 0
    while position < len(value):
        if position + 8 > len(value):
            raise LimitExceeded("input.encapsulation", "encapsulated Pixel Data ends inside an item header")
        group, element, length = struct.unpack_from("<HHI", value, position)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise LimitExceeded(
                "input.encapsulation",
                f"encapsulated Pixel Data holds ({group:04X},{element:04X}) where an item was expected",
            )
        if length == 0xFFFFFFFF or position + 8 + length > len(value):
            raise LimitExceeded("input.encapsulation", "an encapsulated Pixel Data item runs past its end")
        items.append((position + 8, length))
        position += 8 + length
    return items
