"""Properties of the keyed UID mapping: deterministic, collision-free, always a valid UID."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.deid import remap_uid

KEY = b"pediface-unit-test-key-0123456789"
OTHER_KEY = b"another-unit-test-key-9876543210"

#: PS3.5 9.1: digits and dots, no empty component, no leading zero in a component of several digits.
UID_SYNTAX = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")

components = st.one_of(st.just("0"), st.integers(min_value=1, max_value=10**39).map(str))
uids = st.lists(components, min_size=2, max_size=20).map(".".join).filter(lambda uid: len(uid) <= 64)
#: What arrives in practice is not always valid: padding, leading zeros, letters from broken devices.
anything = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=80)


def _valid(uid: str) -> bool:
    return len(uid) <= 64 and UID_SYNTAX.fullmatch(uid) is not None


@settings(max_examples=500, deadline=None)
@given(uid=uids)
def test_a_valid_uid_maps_to_a_valid_uid_deterministically(uid: str) -> None:
    new = remap_uid(uid, KEY)
    assert _valid(new) and new.startswith("2.25.")
    assert remap_uid(uid, KEY) == new
    assert remap_uid(uid + "\x00", KEY) == new == remap_uid(uid + " ", KEY)  # padding is not the UID
    assert remap_uid(uid, OTHER_KEY) != new


@settings(max_examples=500, deadline=None)
@given(value=anything)
def test_any_ascii_input_maps_to_a_valid_uid(value: str) -> None:
    assert _valid(remap_uid(value, KEY))


@settings(max_examples=200, deadline=None)
@given(first=uids, second=uids)
def test_distinct_uids_map_to_distinct_uids(first: str, second: str) -> None:
    if first != second:
        assert remap_uid(first, KEY) != remap_uid(second, KEY)


def test_no_collision_on_a_million_distinct_uids() -> None:
    # A real-looking root with a counter: the inputs differ only in their last digits.
    outputs = {remap_uid(f"1.2.826.0.1.3680043.9.7.{n}", KEY) for n in range(1_000_000)}
    assert len(outputs) == 1_000_000


@pytest.mark.parametrize("bad", ["", "   ", "\x00\x00", "1.2.3\u00e9"])
def test_empty_or_non_ascii_uids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        remap_uid(bad, KEY)
