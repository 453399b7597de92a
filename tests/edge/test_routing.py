"""Routing rules decide at sealing time: dropped series are recorded and never dispatched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.sections import RoutingSettings
from config.settings import load_settings
from gateway.routing import decide
from gateway.server import Gateway
from spool.manifest import JobState
from tests.conftest import UIH, free_port, need_shared, need_tool, wait_until
from tests.taskmessages import folder_messages

HEADER = {
    "Modality": "MR",
    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4",
    "BodyPartExamined": "HEAD",
    "SeriesDescription": "t1_gre_fsp_3d_sag",
    "ProtocolName": "t1_gre_fsp_3d_sag",
}


def test_first_matching_rule_decides_then_the_default() -> None:
    routing = RoutingSettings(
        rules=[
            {"name": "scouts", "action": "drop", "series_description": "(?i)scout|localizer"},
            {"name": "mr-head", "action": "process", "modality": ["MR"], "body_part": "(?i)head|brain"},
        ],
        default_action="drop",
    )
    assert decide(routing, HEADER).rule == "mr-head"
    assert decide(routing, {**HEADER, "SeriesDescription": "3-plane LOCALIZER"}).action == "drop"
    assert decide(routing, {**HEADER, "Modality": "CT"}) == decide(
        routing, {**HEADER, "BodyPartExamined": "KNEE"}
    )
    assert decide(routing, {**HEADER, "Modality": "CT"}).rule == "default"


def test_invalid_regex_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        RoutingSettings(rules=[{"name": "bad", "action": "drop", "series_description": "(unclosed"}])


def test_dropped_series_is_recorded_and_never_dispatched(tmp_path: Path) -> None:
    need_shared(UIH)
    settings = load_settings(
        None,
        data_dir=tmp_path / "data",
        dicom={"port": free_port()},
        series={"quiet_period_s": 1.0, "poll_interval_s": 0.2},
        metrics={"port": 0},
        routing={"rules": [{"name": "no-t1", "action": "drop", "series_description": "^t1_gre"}]},
    )
    gw = Gateway(settings)
    gw.start()
    try:
        argv = [need_tool("storescu"), "-aec", "PEDIFACE", "127.0.0.1", str(settings.dicom.port)]
        files = sorted(UIH.glob("*.dcm"))[:4]
        assert subprocess.run([*argv, *map(str, files)], timeout=120).returncode == 0
        done = wait_until(lambda: list(gw.spool.manifests(gw.spool.done)), 30, "the series to be dropped")
    finally:
        gw.stop()
    (manifest,) = done
    assert manifest.state == JobState.dropped and "no-t1" in (manifest.reason or "")
    assert manifest.n_instances == 4 and folder_messages(settings) == [], "nothing reached the broker"
