"""Reading the task messages Celery left on a real broker: the folder broker's files or a Redis list."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from config.settings import Settings


def task_of(message: bytes | str) -> tuple[str, list]:
    """``(task name, positional args)`` of one kombu message as stored by the broker (JSON envelope)."""
    envelope = json.loads(message)
    body = envelope["body"]
    if envelope["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    args, _kwargs, _embed = json.loads(body)
    return envelope["headers"]["task"], args


def folder_messages(settings: Settings) -> list[tuple[str, list]]:
    """The tasks waiting in the embedded folder broker's queue (kombu names them ``*.<queue>.msg``)."""
    folder = settings.data_dir / "broker" / "queue"
    if not folder.is_dir():
        return []  # nothing was ever sent
    files = sorted(p for p in folder.iterdir() if p.name.endswith(f".{settings.worker.queue}.msg"))
    return [task_of(Path(p).read_bytes()) for p in files]
