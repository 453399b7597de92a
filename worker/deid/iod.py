"""The Type (1, 1C, 2, 2C, 3) of an attribute in an instance's IOD, for the table's combined codes.

Table E.1-1 gives some attributes a choice (X/Z, X/D, X/Z/D, Z/D) that depends on the attribute's
Type in the IOD: D where a value is required (Type 1), Z where the attribute must be present but
may be empty (Type 2), X where it is optional (Type 3). The Types come from PS3.3's module tables
as shipped with highdicom (``highdicom/_standard``, MIT licence, generated from the standard by
highdicom's ``bin/create_iods_modules.py``); only the attributes with a combined code are kept.

Where the SOP class is unknown to those tables, or they cannot be read, :func:`attribute_types`
returns None and the engine keeps the attribute present with a non-identifying value (see
:mod:`worker.deid.actions`): conformance may suffer there, privacy never does.

Cost: the first call reads highdicom's module tables (about 0.7 s and 150 MB, freed at once);
each SOP class's Types are then built once per process.
"""

from __future__ import annotations

import functools
import json
import pkgutil
from collections.abc import Mapping

from worker.deid.table import profile_table

#: An attribute's place: the keywords of the sequences that hold it, then its own keyword.
AttributePath = tuple[str, ...]

#: From most to least demanding; where an attribute appears in several modules, the most
#: demanding Type wins, so that the output satisfies all of them.
_TYPE_ORDER = ("1", "1C", "2", "2C", "3")

#: Type of an attribute that the IOD does not include at that place.
NOT_IN_IOD = "-"


@functools.cache
def _combined_keywords() -> frozenset[str]:
    return frozenset(row.keyword for row in profile_table().exact.values() if "/" in row.basic)


_Standard = tuple[Mapping[str, str], Mapping[str, tuple[str, ...]], Mapping[str, Mapping[AttributePath, str]]]


@functools.cache
def _standard() -> _Standard:
    """SOP class -> IOD, IOD -> modules, and module -> {path: Type} for combined-code attributes."""
    sop_classes = json.loads(_data("sop_class_iod_map.json"))
    iods = {
        iod: tuple(module["key"] for module in modules)
        for iod, modules in json.loads(_data("iod_module_map.json")).items()
    }
    wanted = _combined_keywords()
    modules: dict[str, dict[AttributePath, str]] = {}
    for name, attributes in json.loads(_data("module_attribute_map.json")).items():
        types: dict[AttributePath, str] = {}
        for attribute in attributes:
            if attribute["keyword"] in wanted and attribute["type"] in _TYPE_ORDER:
                path = (*attribute["path"], attribute["keyword"])
                types[path] = _stricter(types.get(path), attribute["type"])
        if types:
            modules[name] = types
    return sop_classes, iods, modules


def _data(name: str) -> bytes:
    data = pkgutil.get_data("highdicom", f"_standard/{name}")
    if data is None:
        raise FileNotFoundError(name)
    return data


def _stricter(current: str | None, new: str) -> str:
    if current is None:
        return new
    return min(current, new, key=_TYPE_ORDER.index)


@functools.lru_cache(maxsize=64)
def attribute_types(sop_class_uid: str) -> Mapping[AttributePath, str] | None:
    """The Types of the combined-code attributes in the IOD of `sop_class_uid`.

    Parameters
    ----------
    sop_class_uid : str
        The instance's SOP Class UID.

    Returns
    -------
    Mapping[AttributePath, str] | None
        ``{(sequence keywords..., keyword): Type}``; an attribute of the table with a combined
        code that is missing from it is not part of the IOD at that place (:data:`NOT_IN_IOD`).
        None when the SOP class or the module tables are unknown.
    """
    try:
        sop_classes, iods, modules = _standard()
    except (OSError, ValueError, KeyError, TypeError):
        return None  # highdicom's tables missing or changed: fall back to type-agnostic choices
    iod = sop_classes.get(sop_class_uid.strip(" \x00"))
    if iod is None or iod not in iods:
        return None
    types: dict[AttributePath, str] = {}
    for module in iods[iod]:
        for path, kind in modules.get(module, {}).items():
            types[path] = _stricter(types.get(path), kind)
    return types


ORIGINAL_ONLY_MODULES = ("mr-pulse-sequence", "bulk-motion-synchronization")
"""Modules the Enhanced MR Image IOD requires while Image Type Value 1 is ORIGINAL or MIXED (PS3.3
A.36-2); dciodvfy refuses their attributes in a DERIVED image, so a derived image drops them, but
for :data:`KEPT_WHEN_DERIVED`."""

KEPT_WHEN_DERIVED = frozenset({"MRAcquisitionType", "PulseSequenceName", "NumberOfKSpaceTrajectories"})
"""MR Pulse Sequence attributes a derived image keeps: dcm2niix lays out a 3D acquisition's NIfTI grid
by MR Acquisition Type and writes all three into the BIDS sidecar (MRAcquisitionType, SequenceName,
NumberOfKSpaceTrajectories). PS3.3 C.8.13.4 (Table C.8-87, 2024e) allows them in a DERIVED image
("Required if Image Type Value 1 is ORIGINAL or MIXED. May be present otherwise."); dciodvfy's
template lacks that clause and reports them, which docs/research-profile.md lists."""


@functools.lru_cache(maxsize=64)
def original_only_attributes(sop_class_uid: str) -> frozenset[str]:
    """Keywords of the top-level attributes of :data:`ORIGINAL_ONLY_MODULES` in `sop_class_uid`'s IOD,
    less :data:`KEPT_WHEN_DERIVED`: what a DERIVED image drops.

    Empty when the IOD has none of these modules, or highdicom's tables cannot be read.
    """
    try:
        sop_classes = json.loads(_data("sop_class_iod_map.json"))
        iods = json.loads(_data("iod_module_map.json"))
        modules = json.loads(_data("module_attribute_map.json"))
    except (OSError, ValueError):
        return frozenset()
    iod = sop_classes.get(sop_class_uid.strip(" \x00"))
    keys = {module["key"] for module in iods.get(iod, [])} & set(ORIGINAL_ONLY_MODULES)
    keywords = {
        attribute["keyword"] for key in keys for attribute in modules.get(key, []) if not attribute["path"]
    }
    return frozenset(keywords - KEPT_WHEN_DERIVED)
