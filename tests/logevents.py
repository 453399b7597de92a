"""The events pediface logs, captured as the JSON objects its real log set-up renders.

:func:`captured_events` runs :func:`common.logs.configure` (what every pediface process does at
start) with ``log_format: json``, adds one handler to the root logger that keeps each rendered
line, and restores the previous logging and structlog configuration afterwards. Nothing of the
code under test is replaced: the events are the ones the process would write to its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator

import structlog

from common.logs import configure


class Events(logging.Handler):
    """Every log line rendered while capturing, parsed back into a dict (threads included)."""

    def __init__(self) -> None:
        super().__init__()
        self._lines: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._guard:
            self._lines.append(line)

    def all(self) -> list[dict]:
        with self._guard:
            lines = list(self._lines)
        return [json.loads(line) for line in lines]

    def named(self, event: str, **fields: object) -> list[dict]:
        """The events called ``event`` whose fields include ``fields`` (equal values)."""
        return [
            e for e in self.all() if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
        ]


@contextlib.contextmanager
def captured_events(level: str = "INFO") -> Iterator[Events]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    pynetdicom_level = logging.getLogger("pynetdicom").level
    saved_structlog = structlog.get_config()
    configure(level, "json")
    events = Events()
    events.setFormatter(root.handlers[0].formatter)  # the JSON renderer configure() installed
    root.addHandler(events)
    try:
        yield events
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
        structlog.configure(**saved_structlog)
