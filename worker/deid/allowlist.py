"""The allow-list: public attributes not in Table E.1-1 that de-identification keeps.

Everything else that the table does not list is removed, at every depth (see
``tables/allow-list.tsv`` for the groups and why each is safe). The file is pediface's own policy,
edited by hand; :func:`allow_list` refuses a file that breaks its rules, so that a careless edit
cannot let names, dates or a row of the table through.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag

from worker.deid.table import profile_table

ALLOW_LIST_FILE = "allow-list.tsv"

#: Value representations never allowed: person names, dates and times identify or date a patient.
FORBIDDEN_VRS = frozenset({"PN", "DA", "DT", "TM"})

_GROUP_LINE = re.compile(r"\[([a-z0-9-]+)\] (\S.*)")
_ROW_LINE = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)\t([A-Za-z0-9]+)")


@dataclass(frozen=True)
class AllowGroup:
    """One group of the allow-list: a name, a title, why it is safe, and its attributes."""

    name: str
    title: str
    reason: str
    tags: tuple[int, ...]


@dataclass(frozen=True)
class AllowList:
    """The allow-list, indexed by tag."""

    groups: tuple[AllowGroup, ...]
    tags: frozenset[int]

    def __contains__(self, tag: object) -> bool:
        return tag in self.tags

    def __len__(self) -> int:
        return len(self.tags)

    def group_of(self, tag: int) -> AllowGroup | None:
        """The group that allows `tag`, or None."""
        for group in self.groups:
            if tag in group.tags:
                return group
        return None


def parse_allow_list(text: str, source: str = ALLOW_LIST_FILE) -> AllowList:
    """Parse and check the allow-list file's `text`.

    Parameters
    ----------
    text : str
        The file's content.
    source : str
        Name used in error messages.

    Returns
    -------
    AllowList
        The parsed allow-list.

    Raises
    ------
    ValueError
        Naming the line of the first malformed row, of a row outside a group, of a group without
        a reason, a duplicate, a private/command/file meta tag, an attribute of Table E.1-1, a
        keyword that does not match its tag, or an attribute whose VR is PN, DA, TM or DT.
    """
    table = profile_table()
    groups: list[AllowGroup] = []
    seen: dict[int, int] = {}
    current: tuple[str, str, list[str], list[int], int] | None = None
    in_preamble = True

    def close() -> None:
        if current is None:
            return
        name, title, reason, tags, line = current
        if not reason:
            raise ValueError(f"{source} line {line}: group {name!r} has no '#' comment saying why it is safe")
        if not tags:
            raise ValueError(f"{source} line {line}: group {name!r} lists no attribute")
        groups.append(AllowGroup(name, title, " ".join(reason), tuple(tags)))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        where = f"{source} line {number}"
        if not line:
            continue
        if line.startswith("#"):
            if current is not None and not current[3]:
                current[2].append(line.lstrip("#").strip())
            elif current is not None or not in_preamble:
                raise ValueError(f"{where}: comments belong before a group's first attribute")
            continue
        group = _GROUP_LINE.fullmatch(line)
        if group is not None:
            close()
            if any(existing.name == group[1] for existing in groups):
                raise ValueError(f"{where}: group {group[1]!r} appears twice")
            current = (group[1], group[2], [], [], number)
            in_preamble = False
            continue
        row = _ROW_LINE.fullmatch(line)
        if row is None:
            raise ValueError(f"{where}: expected '(gggg,eeee)<TAB>Keyword', '[group] title' or a '#' comment")
        if current is None:
            raise ValueError(f"{where}: attribute outside a group")
        tag = int(row[1] + row[2], 16)
        _check_row(tag, row[3], table.lookup(tag) is not None, where)
        if tag in seen:
            raise ValueError(f"{where}: {row[3]} is already listed on line {seen[tag]}")
        seen[tag] = number
        current[3].append(tag)
    close()
    return AllowList(groups=tuple(groups), tags=frozenset(seen))


def _check_row(tag: int, keyword: str, in_table: bool, where: str) -> None:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2 == 1 or group in (0x0000, 0x0002) or element == 0x0000:
        raise ValueError(
            f"{where}: private, command, file meta and group length attributes cannot be allowed"
        )
    if in_table:
        raise ValueError(f"{where}: {keyword} is a row of Table E.1-1, which decides what happens to it")
    if not dictionary_has_tag(tag) or keyword_for_tag(tag) != keyword:
        raise ValueError(f"{where}: {keyword} is not the keyword of ({group:04X},{element:04X})")
    vrs = {vr.strip() for vr in dictionary_VR(tag).split(" or ")}
    if vrs & FORBIDDEN_VRS:
        raise ValueError(
            f"{where}: {keyword} has VR {dictionary_VR(tag)}; names, dates and times are never allowed"
        )


@functools.cache
def allow_list() -> AllowList:
    """The vendored allow-list (``tables/allow-list.tsv``), loaded and checked once per process.

    Returns
    -------
    AllowList
        The attributes kept besides those Table E.1-1 decides.

    Raises
    ------
    ValueError
        If the file breaks a rule of :func:`parse_allow_list` (a packaging or editing defect).
    """
    text = resources.files("worker.deid").joinpath("tables", ALLOW_LIST_FILE).read_text(encoding="utf-8")
    return parse_allow_list(text)
