"""Reading canaries back: which survived de-identification (:func:`surviving`), and which may
(:func:`expected_survivors`: only those a selected option keeps, derived from the table's codes).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

from evaluation.canary import MEDIA_SOP_INSTANCE_UID, PATIENT_ID, PATIENT_NAME, TOKENS, Canary
from worker.deid.options import DeidOption
from worker.deid.table import ProfileRow, profile_table


def _kept_by(row: ProfileRow, vr: str, options: frozenset[DeidOption]) -> bool:
    """Whether the selected options keep the value of an attribute of `row` (read off the table).

    The Basic profile keeps no value of the table. A selected option keeps it when its code is
    K; the Modified Dates option's C keeps a TM value (dates move by whole days, the time of day
    stays); any other code of another selected option is more protective and wins.
    """
    codes = [(option, code) for option, code in row.option_codes.items() if option in options]
    if not codes:
        return False
    for option, code in codes:
        if code == "K":
            continue
        if code == "C" and option is DeidOption.RETAIN_LONGITUDINAL_MODIFIED_DATES and vr == "TM":
            continue
        return False
    return True


#: The options whose C keeps a sequence and cleans its items (the other columns' C on a sequence
#: replaces its content with dummies).
_ITEM_CLEANING_OPTIONS = frozenset({DeidOption.CLEAN_STRUCTURED_CONTENT, DeidOption.CLEAN_GRAPHICS})


def _items_kept(path: tuple[int, ...], options: frozenset[DeidOption]) -> bool:
    """Whether the enclosing sequences of `path` keep their items (read off the table's codes).

    A sequence the table does not list is kept when allowed (the canaries nest only in such) and
    walked. A row is kept when every selected option with a code for it keeps it (K, or the C of
    Clean Structured Content and Clean Graphics) and, without such an option, when the Basic
    code is D (dummy content, inside which rows still apply) or U* (items kept). A Basic code
    with X or Z among its choices lets the Type in the IOD decide; the canary file is an MR
    image, whose IOD has none of the sequences that hold canaries, so the sequence goes.
    """
    table = profile_table()
    for tag in path:
        row = table.lookup(tag)
        if row is None:
            continue
        codes = [(option, code) for option, code in row.option_codes.items() if option in options]
        if codes:
            if all(
                code == "K" or (code == "C" and option in _ITEM_CLEANING_OPTIONS) for option, code in codes
            ):
                continue
            return False
        basic = {code.rstrip("*") for code in row.basic.split("/")}
        if "U" in basic or basic == {"D"}:
            continue
        return False
    return True


def expected_survivors(canaries: Iterable[Canary], options: Iterable[DeidOption]) -> set[Canary]:
    """The canaries that may survive de-identification with `options`, from the table's codes."""
    selected = frozenset(options)
    expected: set[Canary] = set()
    for canary in canaries:
        if canary.kind == "safe-private":
            if DeidOption.RETAIN_SAFE_PRIVATE in selected:
                expected.add(canary)
            continue
        if canary.kind != "table" or canary.row is None or canary.vr == "SQ":
            continue
        if canary.tag in (PATIENT_NAME, PATIENT_ID, MEDIA_SOP_INSTANCE_UID):
            continue  # always replaced: the pseudonym, and the file meta copy of the SOP Instance UID
        if _kept_by(canary.row, canary.vr, selected) and _items_kept(canary.path, selected):
            expected.add(canary)
    return expected


def _value_at(ds: Dataset, canary: Canary) -> object | None:
    current = ds
    for tag in canary.path:
        if tag not in current or current[tag].VR != "SQ" or not current[tag].value:
            return None
        current = current[tag].value[0]
    if canary.tag >> 16 == 0x0002:
        current = getattr(ds, "file_meta", Dataset())
    if canary.tag not in current:
        return None
    return current[canary.tag].value


def surviving(canaries: Iterable[Canary], written: bytes, reread: Dataset) -> set[Canary]:
    """The canaries still present in a de-identified file.

    Parameters
    ----------
    canaries : Iterable[Canary]
        The canaries of the input.
    written : bytes
        The de-identified file as written.
    reread : Dataset
        The same file read back with pydicom.

    Returns
    -------
    set[Canary]
        Canaries whose marker is in `written`, or, for those without a marker, whose value is
        at their place in `reread`.
    """
    found: set[Canary] = set()
    tokens = set(TOKENS.findall(written))
    for canary in canaries:
        if canary.marker is not None:
            shaped = TOKENS.fullmatch(canary.marker) is not None
            if canary.marker in tokens if shaped else canary.marker in written:
                found.add(canary)
            continue
        value = _value_at(reread, canary)
        if value is not None and _same(value, canary.value):
            found.add(canary)
    return found


def _same(value: object, canary: object) -> bool:
    if isinstance(canary, float):
        try:
            return abs(float(value) - canary) < 1e-6  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    if isinstance(canary, int):
        return value == canary
    return str(value).strip() == str(canary)
