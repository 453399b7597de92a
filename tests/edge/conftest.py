"""Fixtures of the gateway's edge tests: a gateway in this process, and the log events it writes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import load_settings
from gateway.server import Gateway
from tests.conftest import free_port
from tests.logevents import Events, captured_events


@pytest.fixture
def events() -> Iterator[Events]:
    with captured_events() as captured:
        yield captured


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Start a gateway (embedded folder broker, no HTTP side) with some settings overridden.

    ``dicom`` and ``series`` are merged into the defaults here (a free port; a 1 s quiet period polled
    every 0.2 s); any other section replaces the default.
    """
    started: list[Gateway] = []

    def start(*, dicom: dict | None = None, series: dict | None = None, **overrides: object) -> Gateway:
        settings = load_settings(
            None,
            data_dir=tmp_path / "data",
            dicom={"port": free_port(), **(dicom or {})},
            series={"quiet_period_s": 1.0, "poll_interval_s": 0.2, **(series or {})},
            metrics={"port": 0},
            **overrides,
        )
        assert settings.embedded_broker, "these tests use the real folder broker"
        gw = Gateway(settings)
        gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()
