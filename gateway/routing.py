"""Routing: decide, when a series is complete, whether it is processed or dropped.

Rules are tried in order and the first whose criteria all match decides, both
whether the series is processed and which destinations receive it; a series no
rule matches gets ``routing.default_action`` and ``routing.default_destinations``. The decision reads the
header of one instance (no pixel data) and is recorded in the job's manifest, so
"why was this series not delivered?" always has an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread

from config.sections import RoutingRule, RoutingSettings


@dataclass(frozen=True)
class Decision:
    action: str  # "process" or "drop"
    rule: str  # the rule's name, or "default"
    destinations: tuple[str, ...] = ()  # names; empty: the routing's default destinations


def _matches(rule: RoutingRule, header: dict[str, str]) -> bool:
    if rule.modality and header["Modality"] not in rule.modality:
        return False
    if rule.sop_class and header["SOPClassUID"] not in rule.sop_class:
        return False
    for pattern, keyword in (
        (rule.body_part, "BodyPartExamined"),
        (rule.series_description, "SeriesDescription"),
        (rule.protocol_name, "ProtocolName"),
    ):
        if pattern is not None and not re.search(pattern, header[keyword]):
            return False
    return True


KEYWORDS = ("Modality", "SOPClassUID", "BodyPartExamined", "SeriesDescription", "ProtocolName")


def read_header(path: Path) -> dict[str, str]:
    ds = dcmread(path, stop_before_pixels=True, specific_tags=list(KEYWORDS))
    return {keyword: str(ds.get(keyword, "") or "") for keyword in KEYWORDS}


def decide(routing: RoutingSettings, header: dict[str, str]) -> Decision:
    for rule in routing.rules:
        if _matches(rule, header):
            return Decision(rule.action, rule.name, tuple(rule.destinations or routing.default_destinations))
    return Decision(routing.default_action, "default", tuple(routing.default_destinations))
