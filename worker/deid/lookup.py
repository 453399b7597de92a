"""A site-supplied patient ID lookup table: the research ID that replaces each PatientID.

The table is a CSV file with a header naming the columns ``original_patient_id`` and
``research_id`` (other columns are ignored), for example::

    original_patient_id,research_id
    12345678,STUDY7-0001
    87654321,STUDY7-0002

It holds PHI (the original IDs), so nothing here ever shows a value: errors name the line and
the column, and :class:`PatientIdLookup`'s ``repr`` shows only the number of entries and a digest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

ORIGINAL_COLUMN = "original_patient_id"
RESEARCH_COLUMN = "research_id"

#: A research ID is written into PatientID (LO) and PatientName (PN): printable ASCII without
#: the backslash (value separator), caret and equals sign (name component and group separators).
_RESEARCH_ID = re.compile(r"[\x20-\x7e]{1,64}")
_RESEARCH_ID_FORBIDDEN = frozenset("\\^=")


class PatientIdLookup(Mapping[str, str]):
    """An immutable mapping from original PatientID to research ID.

    Parameters
    ----------
    entries : Iterable[tuple[str, str]]
        ``(original_patient_id, research_id)`` pairs; surrounding spaces are ignored.

    Raises
    ------
    ValueError
        If an ID is empty, a research ID is not a valid PatientID/PatientName value, an original
        ID is mapped to two research IDs, or two patients share a research ID. The message gives
        the entry's position, never a value.
    """

    __slots__ = ("_digest", "_entries")

    def __init__(self, entries: Iterable[tuple[str, str]]) -> None:
        self._entries: dict[str, str] = {}
        owners: dict[str, str] = {}
        for index, (original, research) in enumerate(entries, start=1):
            _add(self._entries, owners, original, research, f"entry {index}")
        self._digest = _digest(self._entries)

    @classmethod
    def from_csv(cls, path: Path) -> PatientIdLookup:
        """Read the lookup table from the CSV file at `path` (UTF-8, with or without a BOM).

        Raises
        ------
        ValueError
            If the file cannot be read, lacks one of the two columns, or has a bad row (the
            message names the file and line, never a value).
        """
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"cannot read the patient ID lookup table {path}: {type(exc).__name__}"
            ) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = [name.strip() for name in reader.fieldnames or ()]
        if ORIGINAL_COLUMN not in columns or RESEARCH_COLUMN not in columns:
            raise ValueError(
                f"the patient ID lookup table {path} must have a header line naming the columns "
                f"{ORIGINAL_COLUMN} and {RESEARCH_COLUMN}"
            )
        reader.fieldnames = columns
        lookup = cls.__new__(cls)
        lookup._entries = {}
        owners: dict[str, str] = {}
        for row in reader:
            where = f"{path} line {reader.line_num}"
            original, research = row.get(ORIGINAL_COLUMN), row.get(RESEARCH_COLUMN)
            if original is None or research is None:
                raise ValueError(f"{where}: the row has fewer columns than the header")
            if not original.strip() and not research.strip():
                continue  # a blank line of separators
            _add(lookup._entries, owners, original, research, where)
        lookup._digest = _digest(lookup._entries)
        return lookup

    def __getitem__(self, original: str) -> str:
        return self._entries[original.strip()]

    def __contains__(self, original: object) -> bool:
        return isinstance(original, str) and original.strip() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PatientIdLookup):
            return NotImplemented
        return self._digest == other._digest and self._entries == other._entries

    def __hash__(self) -> int:
        return hash(self._digest)

    def __repr__(self) -> str:
        # Never the entries: they are PHI.
        return f"PatientIdLookup({len(self._entries)} entries, sha256 {self._digest[:12]})"


def _add(entries: dict[str, str], owners: dict[str, str], original: str, research: str, where: str) -> None:
    original, research = original.strip(), research.strip()
    if not original:
        raise ValueError(f"{where}: {ORIGINAL_COLUMN} is empty")
    if not research:
        raise ValueError(f"{where}: {RESEARCH_COLUMN} is empty")
    if not _RESEARCH_ID.fullmatch(research) or _RESEARCH_ID_FORBIDDEN & set(research):
        raise ValueError(
            f"{where}: {RESEARCH_COLUMN} must be 1 to 64 printable ASCII characters without \\, ^ or ="
        )
    previous = entries.get(original)
    if previous is not None and previous != research:
        raise ValueError(f"{where}: this {ORIGINAL_COLUMN} appeared before with another {RESEARCH_COLUMN}")
    if owners.setdefault(research, original) != original:
        raise ValueError(f"{where}: this {RESEARCH_COLUMN} is already given to another patient")
    entries[original] = research


def _digest(entries: Mapping[str, str]) -> str:
    hasher = hashlib.sha256()
    for original in sorted(entries):
        hasher.update(original.encode("utf-8") + b"\x00" + entries[original].encode("utf-8") + b"\x00")
    return hasher.hexdigest()
