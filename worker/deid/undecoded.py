"""Elements kept, emptied or given new UIDs without decoding their values: the walker's fast path.

pydicom holds what it reads as undecoded elements (``RawDataElement``: the tag, the VR and the
value's bytes) until a value is asked for. Most of what the engine keeps (pixel encoding,
geometry, acquisition parameters, pixel data) it keeps as it was, so decoding each value and
copying it only to write the same bytes back was most of the engine's time. An undecoded element
is immutable: the output shares it with the input, and pydicom writes its bytes back unchanged
when the output keeps the input's encoding (and re-encodes it otherwise). UIDs are replaced and
values emptied on the bytes too.

Only elements whose bytes mean the same in any data set are shared: not text whose decoding
depends on the Specific Character Set, not the VRs that depend on Pixel Representation (``US or
SS``), not sequences (their items are walked), and not UN, which pydicom reads again with the
dictionary's VR. Everything else takes the walker's decoding path, as does an element whose
value was not read yet (deferred reading).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

#: Text VRs decoded with the data set's Specific Character Set (the others are ASCII).
CHARACTER_SET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})

_NOT_SHARED = CHARACTER_SET_VRS | {"SQ", "UN"}


@functools.lru_cache(maxsize=4096)
def dictionary_vr(tag: int) -> str | None:
    """The one VR the dictionary gives a public tag; None when unknown or ambiguous."""
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if len(vr) == 2 else None


def undecoded(elem: object, tag: int) -> RawDataElement | None:
    """`elem` as an undecoded element with its VR, when its bytes can be reused; else None.

    `tag` is the element's public tag, as an int. An element read with implicit VR gets the
    dictionary's VR (the bytes of a value do not depend on whether its VR was written).
    """
    if type(elem) is not RawDataElement or elem.value is None:
        return None
    vr = elem.VR
    if vr is None:
        vr = dictionary_vr(tag)
        if vr is None:
            return None
        elem = elem._replace(VR=vr)
    return elem if len(vr) == 2 and vr not in _NOT_SHARED else None


def emptied(elem: RawDataElement) -> RawDataElement:
    """`elem` with a zero-length value (any VR but SQ)."""
    return elem._replace(value=b"", length=0)


def remapped_uids(elem: RawDataElement, remap: Callable[[str], str]) -> RawDataElement:
    """A UI element with each of its UIDs replaced by ``remap(uid)``, encoded as DICOM does.

    Decodes as pydicom does (ISO 8859-1, one trailing NUL of padding dropped, values split on
    backslashes); `remap` strips what else pads a UID and refuses what is not one.
    """
    text = elem.value.decode("latin-1")
    if text.endswith("\x00"):
        text = text[:-1]
    value = "\\".join(remap(uid) for uid in text.split("\\")).encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI values are padded to even length with NUL
    return elem._replace(value=value, length=len(value))
