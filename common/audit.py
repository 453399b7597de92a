"""The audit trail: one JSON line per received instance, per processed series and per delivery.

Lines carry pseudonymous identifiers only (series keys, keyed hashes of
instance UIDs, job ids, output UIDs). The optional honest-broker file is the one
place that links original identifiers to their pseudonyms; it is created with
mode 0600 and kept apart so that access to it can be restricted.

Lines are appended with O_APPEND in a single write, so several processes can
share one file without interleaving.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from common.files import utcnow


def keyed_hash(value: str, key: bytes, length: int = 16) -> str:
    """A short keyed digest: stable for one key, useless without it."""
    return hmac.new(key, b"pediface-audit\0" + value.encode(), hashlib.sha256).hexdigest()[:length]


class JsonLines:
    """Append-only JSON-lines file."""

    def __init__(self, path: Path, mode: int = 0o640) -> None:
        self.path = path
        self.mode = mode
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        record = {"at": utcnow().isoformat(), "event": event, **fields}
        line = (json.dumps(record, default=str, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
