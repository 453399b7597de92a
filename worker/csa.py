"""Siemens CSA headers: read them, write them back, and reduce them to an allow-list.

Siemens keeps much of an MR acquisition's physics in two private binary blocks, the CSA Image
Header Info (0029,xx10) and the CSA Series Header Info (0029,xx20) of private creator
"SIEMENS CSA HEADER": the slice count and slice normal of a mosaic, slice timing, phase-encoding
polarity, bandwidth, b-values, and the whole protocol as text (``MrPhoenixProtocol``). Three views:

* :func:`read_csa` (and :func:`parse_csa`, the strings only): the values, read by nibabel's
  ``nibabel.nicom.csareader``, typed by VR. What the rest of pediface uses to look at a header.
* :func:`parse` / :func:`write`: a lossless model. nibabel drops what a writer needs to give the
  same bytes back (the words before each item, the bytes after each tag name, padding, trailer),
  so the writer works on this model: ``write(parse(raw)) == raw`` for every header of the shared
  Siemens series (302 headers, mosaics in 9 transfer syntaxes among them). ``canonical=True``
  derives every redundant word from the values instead and zeroes everything else.
* :func:`filter_csa`: keep only allow-listed tags (values checked) and, inside
  ``MrPhoenixProtocol``, only allow-listed ASCCONV lines (:func:`filter_ascconv`); also reduces the
  XA protocol text of (0021,xx19) "SIEMENS MR SDS 01". The allow-lists are data
  (:mod:`worker.deid.private`), not code.

Layout of a CSA2 header, all little endian whatever the transfer syntax (checked byte for byte)::

    b"SV10" b"\\x04\\x03\\x02\\x01" uint32 n_tags, uint32 77
    n_tags x: char[64] name   NUL-terminated; the bytes after the NUL are uninitialised memory
              int32 vm, char[4] vr, int32 syngodt, int32 n_items, int32 xx (77, or 205 if no items)
              n_items x: int32 w0, w1, w2, w3   w0 = w1 = w3 = length, w2 = 77 (205 if empty)
                         byte[length] value     NUL-terminated text, padded with zeros to 4 bytes
    4 zero bytes

CSA1 (no signature) has the same records, but an item's length is stored as ``w0 - n_items`` of
the first tag (SPM's reading). No shared file is CSA1: that branch is tested on synthetic headers.

Why canonical output matters: in every real header the bytes after the NUL of a tag name are heap
memory, and in some they hold fragments of protocol text. A header rebuilt from its values carries
none of them.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from pydicom import Dataset

SV10 = b"SV10"
_PREFIX = SV10 + b"\x04\x03\x02\x01"
CHECK = 77
EMPTY = 205
_TAG = struct.Struct("<64si4s3i")
_ITEM = struct.Struct("<4i")

MAX_TAGS = 1000
"""More tags than this is not a CSA header (nibabel's limit)."""

MAX_TAGS_DCM2NIIX = 128
"""dcm2niix ignores a CSA header with more tags; a filtered header never has more than its input."""


class CsaError(ValueError):
    """The bytes are not a CSA header this module can read or write."""


# -- values (nibabel) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CsaValue:
    """One tag as nibabel reads it: numbers for numeric VRs, text otherwise."""

    vr: str
    vm: int
    syngodt: int
    items: tuple[object, ...]


def _text(value: str | bytes) -> str:
    # nibabel returns bytes where a field has no NUL (a VR of four characters).
    return value.decode("latin-1") if isinstance(value, bytes) else value


def read_csa(raw: bytes) -> dict[str, CsaValue]:
    """The tags of a CSA header, by name, as ``nibabel.nicom.csareader.read`` reads them.

    Raises
    ------
    CsaError
        If nibabel cannot read the header (nibabel 5.4 also fails on CSA1 headers whose first tag
        has items; :func:`parse_csa` falls back to :func:`parse` for those).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the DICOM readers are highly experimental"
        from nibabel.nicom import csareader

        try:
            header = csareader.read(bytes(raw))
        except (csareader.CSAError, AssertionError, struct.error, ValueError, NameError) as exc:
            raise CsaError(f"not a readable CSA header ({type(exc).__name__})") from None
    return {
        _text(name): CsaValue(
            _text(tag["vr"]),
            int(tag["vm"]),
            int(tag["syngodt"]),
            tuple(_text(item) if isinstance(item, str | bytes) else item for item in tag["items"]),
        )
        for name, tag in header["tags"].items()
    }


def parse_csa(raw: bytes) -> dict[str, list[str]]:
    """The tags of a CSA header (SV10 or CSA1): name -> its non-empty items as text.

    An unreadable header gives ``{}``: callers treat a missing value as absent.
    """
    try:
        return {name: [str(item) for item in value.items] for name, value in read_csa(raw).items()}
    except CsaError:
        pass
    try:
        return {tag.name: tag.values for tag in parse(raw).tags}
    except CsaError:
        return {}


def private_value(ds: Dataset, group: int, creator: str, element: int) -> object:
    """The value of a private attribute by its creator and element byte, or None."""
    try:
        return ds.private_block(group, creator)[element].value
    except KeyError:
        return None


# -- the lossless model ----------------------------------------------------------------------------


@dataclass
class CsaItem:
    """One item: its stored bytes (NUL included), and as stored the words before it and the padding."""

    value: bytes
    words: tuple[int, ...] = ()
    pad: bytes = b""

    @property
    def text(self) -> str:
        return self.value.split(b"\0", 1)[0].decode("latin-1")


@dataclass
class CsaTag:
    """One tag; ``name_field``, ``vr_field`` and ``xx`` are the stored bytes, for an exact rewrite."""

    name: str
    vm: int
    vr: str
    syngodt: int
    items: list[CsaItem]
    xx: int = CHECK
    name_field: bytes = b""
    vr_field: bytes = b""

    @property
    def values(self) -> list[str]:
        """The non-empty item texts, as a reader sees them."""
        return [item.text for item in self.items if item.text]


@dataclass
class CsaHeader:
    """A whole header: ``kind`` is ``"CSA2"`` or ``"CSA1"``; the other fields are the stored bytes."""

    kind: str
    tags: list[CsaTag]
    prefix: bytes = _PREFIX
    check: int = CHECK
    trailer: bytes = b"\0\0\0\0"

    def tag(self, name: str) -> CsaTag | None:
        return next((tag for tag in self.tags if tag.name == name), None)


def make_item(text: str | bytes | None) -> CsaItem:
    """A canonical item holding `text` (NUL-terminated), or an empty item for None or ``""``."""
    if not text:
        return CsaItem(b"")
    data = text.encode("latin-1") if isinstance(text, str) else bytes(text)
    return CsaItem(data if data.endswith(b"\0") else data + b"\0")


def parse(raw: bytes) -> CsaHeader:
    """Parse a CSA2 or CSA1 header losslessly: ``write(parse(raw)) == raw``.

    Raises
    ------
    CsaError
        If the bytes are truncated or hold implausible counts.
    """
    raw = bytes(raw)
    kind = "CSA2" if raw[:4] == SV10 else "CSA1"
    pos = 8 if kind == "CSA2" else 0
    try:
        n_tags, check = struct.unpack_from("<2I", raw, pos)
        pos += 8
        if not 0 < n_tags <= MAX_TAGS:
            raise CsaError(f"implausible tag count {n_tags}")
        tags: list[CsaTag] = []
        first_items: int | None = None
        for _ in range(n_tags):
            name_field, vm, vr_field, syngodt, n_items, xx = _TAG.unpack_from(raw, pos)
            pos += _TAG.size
            if not 0 <= n_items <= MAX_TAGS:
                raise CsaError(f"implausible item count {n_items}")
            first_items = n_items if first_items is None else first_items
            items = []
            for _ in range(n_items):
                words = _ITEM.unpack_from(raw, pos)
                pos += _ITEM.size
                length = words[1] if kind == "CSA2" else words[0] - first_items
                if length < 0 or pos + length > len(raw):
                    raise CsaError("an item runs past the end of the header")
                pad = (-length) % 4
                items.append(CsaItem(raw[pos : pos + length], words, raw[pos + length : pos + length + pad]))
                pos += length + pad
            tags.append(
                CsaTag(
                    name=name_field.split(b"\0", 1)[0].decode("latin-1"),
                    vm=vm,
                    vr=vr_field.split(b"\0", 1)[0].decode("latin-1"),
                    syngodt=syngodt,
                    items=items,
                    xx=xx,
                    name_field=name_field,
                    vr_field=vr_field,
                )
            )
    except struct.error:
        raise CsaError("truncated CSA header") from None
    if pos > len(raw):
        raise CsaError("header shorter than its records")
    return CsaHeader(kind, tags, raw[:8] if kind == "CSA2" else b"", check, raw[pos:])


def write(header: CsaHeader, canonical: bool = False) -> bytes:
    """Serialise a header.

    ``canonical=False`` writes every stored word, name field, padding and trailer as parsed (an
    exact round trip). ``canonical=True`` derives everything from names, VR, VM, SyngoDT and item
    values: names and padding zero-filled, the 77/205 words and item lengths recomputed, the
    standard prefix and a zero trailer. Anything that was modified must be written canonically.

    Raises
    ------
    CsaError
        If a name is 64 bytes or longer or a VR longer than 4 bytes.
    """
    out = bytearray()
    if header.kind == "CSA2":
        out += header.prefix if header.prefix and not canonical else _PREFIX
    out += struct.pack("<2I", len(header.tags), CHECK if canonical else header.check)
    first_items = len(header.tags[0].items) if header.tags else 0
    for tag in header.tags:
        name, vr = tag.name.encode("latin-1"), tag.vr.encode("latin-1")
        if len(name) >= 64 or len(vr) > 4:
            raise CsaError(f"tag name or VR too long: {tag.name!r} {tag.vr!r}")
        name_field = tag.name_field if tag.name_field and not canonical else name.ljust(64, b"\0")
        vr_field = tag.vr_field if tag.vr_field and not canonical else vr.ljust(4, b"\0")
        xx = tag.xx if not canonical else (CHECK if tag.items else EMPTY)
        out += _TAG.pack(name_field, tag.vm, vr_field, tag.syngodt, len(tag.items), xx)
        for item in tag.items:
            length = len(item.value)
            if item.words and not canonical:
                words, pad = item.words, item.pad
            else:
                flag = CHECK if length else EMPTY
                first = length + first_items if header.kind == "CSA1" else length
                words, pad = (first, length, flag, length), b"\0" * ((-length) % 4)
            out += _ITEM.pack(*words) + item.value + pad
    out += header.trailer if not canonical else b"\0\0\0\0"
    return bytes(out)


def csa_kind(raw: bytes) -> str:
    """``"CSA2"``, ``"XPROTOCOL"`` (XA's (0021,xx19) text), ``"ASCCONV"`` or ``"CSA1"``."""
    if raw[:4] == SV10:
        return "CSA2"
    head = bytes(raw[:64]).lstrip()
    if head.startswith(b"<XProtocol>"):
        return "XPROTOCOL"
    if head.startswith(_BEGIN):
        return "ASCCONV"
    return "CSA1"


# -- filtering -------------------------------------------------------------------------------------

_BEGIN = b"### ASCCONV BEGIN"
_END = b"### ASCCONV END"
_NUMBER = re.compile(rb"-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)")
_SAFE_STRING = re.compile(rb"[A-Za-z0-9_%\\/.:;,+\-*]{0,64}")
"""What a kept quoted ASCCONV value may hold at most: no spaces, so no "First Last"."""
_LINE = re.compile(rb"\s*([A-Za-z_][A-Za-z0-9_.\[\]]*)\s*=\s*(.*?)\s*")
_NUMERIC_VRS = frozenset({"IS", "DS", "FD", "FL", "SL", "SS", "UL", "US"})
_NUMERIC_TEXT = re.compile(r"\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*")


@dataclass(frozen=True)
class AscconvRule:
    """Keep ASCCONV lines whose full key matches `pattern` and whose value is a bare number, or,
    when `strings` is a regex, a quoted string matching it (and :data:`_SAFE_STRING`)."""

    pattern: str
    strings: str | None = None
    why: str = ""


@dataclass(frozen=True)
class TagRule:
    """Keep the CSA tag `name`; `text` is the regex its items must match (None: numbers only)."""

    name: str
    text: str | None = None
    why: str = ""


@dataclass
class FilterReport:
    """What a filter kept, dropped, or kept empty because a value failed its check (names only)."""

    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    emptied: list[str] = field(default_factory=list)


class AscconvPolicy:
    """A set of :class:`AscconvRule`, compiled once."""

    def __init__(self, rules: tuple[AscconvRule, ...]) -> None:
        self.rules = rules
        patterns = "|".join(f"(?:{rule.pattern})" for rule in rules) or "(?!)"
        self._numeric = re.compile(patterns)
        self._strings = [
            (re.compile(rule.pattern), re.compile(rule.strings.encode())) for rule in rules if rule.strings
        ]

    def keeps(self, key: str, value: bytes) -> bool:
        """Whether the line ``key = value`` is kept."""
        value = value.strip()
        if _NUMBER.fullmatch(value):
            return self._numeric.fullmatch(key) is not None
        if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
            inner = value.strip(b'"')
            for key_pattern, value_pattern in self._strings:
                if key_pattern.fullmatch(key):
                    return bool(_SAFE_STRING.fullmatch(inner) and value_pattern.fullmatch(inner))
        return False  # lists, braces, bare words, strings no rule allows


def filter_ascconv(text: bytes, policy: AscconvPolicy, report: FilterReport | None = None) -> bytes:
    """Only the ``### ASCCONV BEGIN ... END ###`` block(s) of `text`, each with the lines `policy` keeps.

    Everything outside the blocks (the XProtocol wrapper: protocol name, descriptions, worklist
    codes) is dropped. Kept lines are copied verbatim and in order, so a reader that takes the
    first occurrence of a key (dcm2niix) finds the line it found in the original.
    """
    report = report if report is not None else FilterReport()
    out: list[bytes] = []
    pos = 0
    while (begin := text.find(_BEGIN, pos)) >= 0:
        eol = text.find(b"\n", begin)
        end = text.find(_END, eol) if eol >= 0 else -1
        if end < 0:
            break
        close = text.find(b"###", end + len(_END))
        end_line = text[end : close + 3] if close >= 0 else _END + b" ###"
        out.append(text[begin:eol].rstrip(b"\r"))
        for line in text[eol + 1 : end].split(b"\n"):
            line = line.rstrip(b"\r")
            match = _LINE.fullmatch(line)
            if match is None:
                if line.strip():
                    report.dropped.append("<not a key = value line>")
                continue
            key = match[1].decode("ascii")
            if policy.keeps(key, match[2]):
                out.append(line)
                report.kept.append(key)
            else:
                report.dropped.append(key)
        out.append(end_line)
        pos = end + len(end_line)
    return b"\n".join(out) + b"\n" if out else b""


def _item_ok(tag: CsaTag, rule: TagRule, text: str) -> bool:
    if rule.text is not None:
        return re.fullmatch(rule.text, text) is not None
    return tag.vr in _NUMERIC_VRS and _NUMERIC_TEXT.fullmatch(text) is not None


def filter_csa(
    raw: bytes,
    tags: Mapping[str, TagRule],
    ascconv: AscconvPolicy | None,
    report: FilterReport | None = None,
) -> bytes:
    """A CSA header (or XA protocol text) holding only what the allow-lists keep; ``b""`` if nothing.

    * A CSA2/CSA1 header keeps only the tags in `tags`, in their order. A kept tag whose item
      fails its check (a number for a numeric VR without a pattern, the rule's regex otherwise) is
      kept with no items: present, empty. The result is written canonically.
    * ``MrPhoenixProtocol`` is kept only if listed and `ascconv` is given, reduced with
      :func:`filter_ascconv`; it is never passed through whole.
    * XA's protocol text (``<XProtocol>`` or bare ASCCONV) becomes the filtered ASCCONV text,
      starting with a newline (dcm2niix skips the first byte of a non-SV10 header before it looks
      for ``### ASCCONV BEGIN``), NUL-terminated, padded to an even length.

    Raises
    ------
    CsaError
        If a header cannot be parsed, or would have more tags than dcm2niix reads.
    """
    report = report if report is not None else FilterReport()
    kind = csa_kind(raw)
    if kind in ("XPROTOCOL", "ASCCONV"):
        if ascconv is None:
            return b""
        body = filter_ascconv(bytes(raw).split(b"\0", 1)[0], ascconv, report)
        if not body:
            return b""
        body = b"\n" + body + b"\0"
        return body + b"\0" * (len(body) % 2)
    header = parse(raw)
    kept: list[CsaTag] = []
    for tag in header.tags:
        rule = tags.get(tag.name)
        if rule is None or (tag.name == "MrPhoenixProtocol" and ascconv is None):
            report.dropped.append(tag.name)
            continue
        plain = replace(tag, name_field=b"", vr_field=b"")
        if tag.name == "MrPhoenixProtocol" and ascconv is not None:
            plain.items = [
                make_item(filter_ascconv(item.value.split(b"\0", 1)[0], ascconv, report))
                if item.text
                else make_item(None)
                for item in tag.items
            ]
            report.kept.append(tag.name)
        elif all(_item_ok(tag, rule, item.text) for item in tag.items if item.text):
            plain.items = [make_item(item.value if item.text else None) for item in tag.items]
            report.kept.append(tag.name)
        else:
            plain.items = []
            report.emptied.append(tag.name)
        kept.append(plain)
    if not kept:
        return b""
    if len(kept) > MAX_TAGS_DCM2NIIX:
        raise CsaError(f"{len(kept)} tags kept: dcm2niix reads at most {MAX_TAGS_DCM2NIIX}")
    return write(CsaHeader(header.kind, kept), canonical=True)
