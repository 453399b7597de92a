"""The research profile's vendor private attributes: the acquisition physics, and nothing else.

Under the Basic profile every private attribute goes; Retain Safe Private keeps the attributes of
PS3.15 Table E.3.10-1. That table lists, for Siemens, only four diffusion attributes: slice
timing, phase-encoding polarity, echo spacing, the slice count of a mosaic (without which a
mosaic cannot be unpacked) and the whole Siemens protocol are not in it, nor XA's, and GE's and
Philips' only in part. The research profile (``deid.profile: research``) keeps more, from three
hand-reviewed tables in ``tables/`` (see their README and docs/research-profile.md):

* ``research-private.tsv``: attributes added to Table E.3.10-1, by (group, private creator,
  element byte), each with a value check: ``number`` (every value a number), a regex every
  value must match, ``items`` (a sequence whose items are de-identified like any other), or
  ``filter:<name>`` (a binary block rewritten to its allow-listed content: :data:`FILTERS`).
* ``siemens-csa.tsv``: the tags kept in the CSA image and series headers, each with its check.
* ``siemens-ascconv.tsv``: the protocol (ASCCONV) lines kept, by key, with their value check.

Everything else is dropped: a value that fails its check drops the attribute (a CSA tag is kept
empty), a block that cannot be parsed is dropped, and a string check that would let free text
through (``Jane Doe``, a name with a caret, a date) is refused when the tables are loaded.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources

from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue

from worker.csa import AscconvPolicy, AscconvRule, CsaError, TagRule, filter_csa
from worker.deid import gehc
from worker.deid.table import SafePrivateKey, safe_private_table

RESEARCH_PRIVATE_FILE = "research-private.tsv"
SIEMENS_CSA_FILE = "siemens-csa.tsv"
SIEMENS_ASCCONV_FILE = "siemens-ascconv.tsv"

NUMBER = "number"
ITEMS = "items"
FILTER = "filter:"

FREE_TEXT_PROBES = ("Jane Doe", "Doe^Jane", "Jane_Doe 01.02.1970", "1970-01-02", "+1 555 0100")
"""Values no string check may accept: a check that does is refused when the tables load."""

#: Fixed-width binary VRs: numbers whatever their bytes (read as numbers when they arrive as UN).
_BINARY = {"FD": "d", "FL": "f", "SS": "h", "US": "H", "SL": "l", "UL": "L", "SV": "q", "UV": "Q"}
_TEXT_VRS = frozenset({"AE", "CS", "DS", "IS", "LO", "LT", "SH", "ST", "UC", "UT"})
_NUMBER_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_SAFE_TAG = re.compile(r"\(([0-9A-F]{4}),xx([0-9A-F]{2})\)")


@dataclass(frozen=True)
class PrivateRule:
    """One row of ``research-private.tsv``."""

    key: SafePrivateKey
    vr: str
    name: str
    check: str
    use: str


@dataclass(frozen=True)
class ResearchPrivate:
    """The research profile's private allow-lists, loaded and checked (:func:`research_private`)."""

    rules: Mapping[SafePrivateKey, PrivateRule]
    csa_image: Mapping[str, TagRule]
    csa_series: Mapping[str, TagRule]
    ascconv: AscconvPolicy

    def filters(self) -> dict[str, Callable[[bytes], bytes]]:
        """The block rewriters by name; each returns ``b""`` when nothing is left to keep."""
        return {
            "csa-image": lambda raw: filter_csa(raw, self.csa_image, None),
            "csa-series": lambda raw: filter_csa(raw, self.csa_series, self.ascconv),
            "xa-protocol": lambda raw: filter_csa(raw, {}, self.ascconv),
            "ge-protocol-block": gehc.filter_protocol_block,
            "ge-user-data": gehc.mask_user_data,
        }

    def element(self, elem: DataElement, key: SafePrivateKey) -> DataElement | None:
        """The kept form of private attribute `elem` (its rule found by `key`), or None to drop it.

        Sequences are returned as they are: the walker de-identifies their items.
        """
        rule = self.rules.get(key)
        if rule is None:
            return None
        if rule.check == ITEMS:
            return elem if elem.VR == "SQ" else None
        if elem.VR == "SQ":
            return None
        if elem.is_empty:
            return DataElement(elem.tag, elem.VR, elem.value)
        if rule.check.startswith(FILTER):
            return self._filtered(elem, rule)
        if elem.VR in _BINARY or (elem.VR == "UN" and rule.vr in _BINARY):
            return _binary(elem, rule)
        if elem.VR not in _TEXT_VRS and elem.VR != "UN":
            return None
        texts = _texts(elem.value)
        if texts is None or not all(_value_ok(text, rule.check) for text in texts):
            return None
        vr = rule.vr if elem.VR == "UN" else elem.VR
        return DataElement(elem.tag, vr, texts if len(texts) > 1 else texts[0])

    def _filtered(self, elem: DataElement, rule: PrivateRule) -> DataElement | None:
        if not isinstance(elem.value, bytes):
            return None
        try:
            value = self.filters()[rule.check.removeprefix(FILTER)](elem.value)
        except (CsaError, ValueError, struct.error):
            return None  # a block that does not parse is not passed through
        return DataElement(elem.tag, "OB", value) if value else None


def _texts(value: object) -> list[str] | None:
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, bytes):
            try:
                item = item.decode("ascii")
            except UnicodeDecodeError:
                return None
            out += [part.strip(" \x00") for part in item.split("\\")]
        else:
            out.append(str(item).strip(" \x00"))
    return out


def _value_ok(text: str, check: str) -> bool:
    if not text:
        return True
    if check == NUMBER:
        return _NUMBER_TEXT.fullmatch(text) is not None
    return re.fullmatch(check, text) is not None


def _binary(elem: DataElement, rule: PrivateRule) -> DataElement | None:
    """A binary number attribute; arriving as UN, its bytes are read as the rule's VR (little endian)."""
    if rule.check != NUMBER:
        return None
    if elem.VR != "UN":
        return DataElement(elem.tag, elem.VR, elem.value)
    code = _BINARY[rule.vr]
    raw = bytes(elem.value)
    width = struct.calcsize(code)
    if len(raw) % width:
        return None
    numbers = list(struct.unpack(f"<{len(raw) // width}{code}", raw))
    if not all(math.isfinite(number) for number in numbers):
        return None
    return DataElement(elem.tag, rule.vr, numbers if len(numbers) > 1 else numbers[0])


# -- loading the tables ----------------------------------------------------------------------------


def _rows(name: str, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    text = resources.files("worker.deid").joinpath("tables", name).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    if tuple(reader.fieldnames or ()) != columns:
        raise ValueError(f"{name}: expected columns {columns}, got {tuple(reader.fieldnames or ())}")
    rows = enumerate(reader, start=2)
    return [(line, {key: (value or "").strip() for key, value in row.items()}) for line, row in rows]


def check_string_pattern(pattern: str, where: str) -> str:
    """Refuse a value regex that does not compile or that accepts free text (:data:`FREE_TEXT_PROBES`)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{where}: the value check {pattern!r} is not a regex ({exc})") from None
    for probe in FREE_TEXT_PROBES:
        if compiled.fullmatch(probe):
            raise ValueError(f"{where}: the value check {pattern!r} accepts free text such as {probe!r}")
    return pattern


def _private_rules() -> dict[SafePrivateKey, PrivateRule]:
    safe = safe_private_table()
    rules: dict[SafePrivateKey, PrivateRule] = {}
    filters = {"csa-image", "csa-series", "xa-protocol", "ge-protocol-block", "ge-user-data"}
    for line, row in _rows(RESEARCH_PRIVATE_FILE, ("tag", "private_creator", "vr", "name", "value", "use")):
        where = f"{RESEARCH_PRIVATE_FILE} line {line}"
        match = _SAFE_TAG.fullmatch(row["tag"])
        if match is None or int(match[1], 16) % 2 == 0 or not row["private_creator"] or not row["use"]:
            raise ValueError(f"{where}: needs a private (gggg,xxee) tag, its private creator and its use")
        key = (int(match[1], 16), row["private_creator"], int(match[2], 16))
        if key in safe:
            raise ValueError(f"{where}: already a Safe Private Attribute of Table E.3.10-1")
        if key in rules:
            raise ValueError(f"{where}: listed twice")
        check, vr = row["value"], row["vr"]
        if (check == ITEMS) != (vr == "SQ"):
            raise ValueError(f"{where}: 'items' is for sequences, and a sequence needs 'items'")
        if check.startswith(FILTER) and check.removeprefix(FILTER) not in filters:
            raise ValueError(f"{where}: unknown filter {check!r}")
        if check not in (NUMBER, ITEMS) and not check.startswith(FILTER):
            check_string_pattern(check, where)
        rules[key] = PrivateRule(key, vr, row["name"], check, row["use"])
    return rules


def _csa_rules() -> tuple[dict[str, TagRule], dict[str, TagRule]]:
    headers: dict[str, dict[str, TagRule]] = {"image": {}, "series": {}}
    for line, row in _rows(SIEMENS_CSA_FILE, ("header", "name", "value", "use")):
        where = f"{SIEMENS_CSA_FILE} line {line}"
        tags = headers.get(row["header"])
        if tags is None or not row["name"] or row["name"] in tags or not row["use"]:
            raise ValueError(f"{where}: header 'image' or 'series', a new tag name and its use")
        check = row["value"]
        if check == "ascconv" and (row["header"], row["name"]) != ("series", "MrPhoenixProtocol"):
            raise ValueError(f"{where}: 'ascconv' is for the series header's MrPhoenixProtocol only")
        if check not in (NUMBER, "ascconv"):
            check_string_pattern(check, where)
        tags[row["name"]] = TagRule(row["name"], None if check in (NUMBER, "ascconv") else check, row["use"])
    return headers["image"], headers["series"]


def _ascconv_rules() -> tuple[AscconvRule, ...]:
    rules = []
    for line, row in _rows(SIEMENS_ASCCONV_FILE, ("key", "value", "dcm2niix", "use")):
        where = f"{SIEMENS_ASCCONV_FILE} line {line}"
        if row["dcm2niix"] not in ("yes", "no") or not row["use"]:
            raise ValueError(f"{where}: dcm2niix must be 'yes' or 'no', and the use given")
        try:
            re.compile(row["key"])
        except re.error as exc:
            raise ValueError(f"{where}: the key {row['key']!r} is not a regex ({exc})") from None
        strings = None if row["value"] == NUMBER else check_string_pattern(row["value"], where)
        rules.append(AscconvRule(row["key"], strings, row["use"]))
    return tuple(rules)


@functools.cache
def research_private() -> ResearchPrivate:
    """The research profile's private allow-lists, loaded and checked once per process.

    Raises
    ------
    ValueError
        If a table breaks a rule of the module docstring (a packaging or editing defect).
    """
    image, series = _csa_rules()
    return ResearchPrivate(
        rules=_private_rules(), csa_image=image, csa_series=series, ascconv=AscconvPolicy(_ascconv_rules())
    )
