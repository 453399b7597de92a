"""Logging set-up: structlog on top of the standard library's logging.

Every process calls :func:`configure` once. Events are written as key=value
pairs for people or as one JSON object per line (``log_format: json``) for log
shippers. Events name series by job id and pseudonymous keys only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog


def configure(level: str = "INFO", fmt: str = "console", file: Path | None = None) -> None:
    """Send every log event (pediface's and the libraries') to stderr, or only to ``file``.

    With ``file`` (the quiet commands: ``pediface deface``, ``pediface demo``) nothing reaches the
    terminal: events, library banners and Python warnings are appended to the file at ``level``,
    and the terminal keeps the progress bar and the lines meant for a person.
    """
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=file is None and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler: logging.Handler
    if file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file, encoding="utf-8")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # warnings.warn (kombu, Celery's SecurityWarning, pydicom) become log records, in the file if any.
    logging.captureWarnings(file is not None)
    # pynetdicom logs every PDU at INFO; its warnings and errors are what an operator needs.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
