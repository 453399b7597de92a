"""Element helpers of the de-identification walk: copies that share immutable values, the text of
a value as it was written, and how an element is named in messages (never by its value)."""

from __future__ import annotations

import copy
from typing import Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from worker.deid.actions import Rule

_IMMUTABLE_VALUES = (str, bytes, int, float, type(None))


def copy_element(elem: DataElement) -> DataElement:
    """A copy of `elem` that shares immutable values (pixel data included) instead of copying."""
    value = elem.value
    if not isinstance(value, _IMMUTABLE_VALUES):
        value = copy.deepcopy(value)
    new = DataElement(
        elem.tag, elem.VR, value, is_undefined_length=elem.is_undefined_length, already_converted=True
    )
    new.private_creator = elem.private_creator
    return new


def map_values(value: Any, function: Any) -> Any:
    """Apply `function` to the text of each value of a (possibly multi-valued) string element."""
    if isinstance(value, MultiValue | list | tuple):
        return [function(text_of(item)) for item in value]
    return function(text_of(value)) if value is not None else value


def text_of(value: Any) -> str:
    # pydicom's DA/DT/TM objects (config.datetime_conversion) remember the string they came from.
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        return original
    if isinstance(value, bytes):
        return value.decode("ascii")
    return str(value)


def joined_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(text_of(item) for item in value)
    return text_of(value)


def element_label(number: int, rule: Rule | None) -> str:
    """How an element is named in messages: tag and keyword, never its value."""
    tag = f"({number >> 16:04X},{number & 0xFFFF:04X})"
    if (number >> 16) % 2 == 1:
        return f"{tag} private"
    keyword = (rule.row.keyword if rule is not None else "") or keyword_for_tag(BaseTag(number))
    return f"{tag} {keyword}" if keyword else tag
