"""Does an output pass the validator users run next? dciodvfy (Debian's dicom3tools) on input and output.

:func:`dciodvfy_errors` gives a file's errors with values and item numbers left out, so that the
errors of an input and of its output compare as sets; :func:`new_errors` is what the output has
that the input had not, less :func:`permitted`: the messages where dciodvfy is stricter than the
standard (the three MR Pulse Sequence attributes a derived Enhanced MR image keeps for dcm2niix,
which PS3.3 C.8.13.4 allows: :data:`worker.deid.iod.KEPT_WHEN_DERIVED`). Used by the tests and by
``python -m bench.parity`` (the error counts of docs/research-profile.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable

import numpy as np

from worker.deid.iod import KEPT_WHEN_DERIVED
from worker.types import FaceMask, Volume

_PRESENT_WHEN_DERIVED = re.compile(
    r"Error - </(\w+)\(0018,[0-9A-F]{4}\)> - Attribute present when condition unsatisfied "
    r".*Module=<MRPulseSequence>"
)


def dciodvfy_errors(data: bytes) -> set[str] | None:
    """dciodvfy's errors for a file's bytes, values and item numbers left out; None without dciodvfy."""
    program = shutil.which("dciodvfy")
    if program is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".dcm") as handle:
        handle.write(data)
        handle.flush()
        result = subprocess.run([program, "-new", handle.name], capture_output=True, text=True, timeout=120)
    errors = set()
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("Error"):
            line = re.sub(r"= <[^>]*>", "= <>", line)
            errors.add(re.sub(r"\[\d+\]", "[]", line))
    return errors


def permitted(error: str) -> bool:
    """Whether `error` reports an MR Pulse Sequence attribute that PS3.3 allows in a derived image."""
    match = _PRESENT_WHEN_DERIVED.match(error)
    return match is not None and match[1] in KEPT_WHEN_DERIVED


def new_errors(before: Iterable[str], after: Iterable[str]) -> tuple[set[str], set[str]]:
    """The errors of `after` that `before` lacks: ``(new, permitted ones among them)``."""
    added = set(after) - set(before)
    allowed = {error for error in added if permitted(error)}
    return added - allowed, allowed


class CornerBox:
    """A masker that blanks a corner box of every stack: where the face is does not matter to the
    headers, and the real masker cannot run on every series (it refuses those without a face)."""

    name = "corner-box"

    def predict(self, volume: Volume) -> FaceMask:
        labels = np.zeros(volume.shape, np.uint8)
        labels[:, :8, :8] = 1
        return FaceMask(labels, self.name)
