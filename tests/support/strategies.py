"""Hypothesis strategies derived from the message schemas themselves (msgspec.inspect), so every message
type, present and future, is generated from its declared field types and bounds.

The strategies are the package's own (``gvtsim fuzz`` draws from the same ones, orchestration/fuzzgen.py):
one definition, biased to the ends of every range. This module adds what only the tests need: values that
violate a field type."""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi

from gvtsim.orchestration.fuzzgen import for_type
from gvtsim.orchestration.fuzzgen import strategy as for_struct

__all__ = ["for_type", "for_struct", "bad_value_for", "object_not_in"]


def bad_value_for(t: mi.Type) -> list[Any]:
    """Values that violate a field type: wrong types and out-of-range values."""
    out: list[Any] = []
    if isinstance(t, mi.IntType):
        out += ["7", 1.5, [1]]
        if t.ge is not None:
            out.append(t.ge - 1)
        if t.le is not None:
            out.append(t.le + 1)
        if t.lt is not None:
            out.append(t.lt)
    elif isinstance(t, mi.StrType):
        out += [12, b"x"]
        if t.max_length is not None:
            out.append("x" * (t.max_length + 1))
    elif isinstance(t, mi.BytesType):
        out += [12, "text"]
        if t.max_length is not None:
            out.append(b"x" * (t.max_length + 1))
    elif isinstance(t, mi.BoolType):
        out += [2, "true"]
    elif isinstance(t, mi.LiteralType):
        out += [object_not_in(t.values)]
    elif isinstance(t, mi.ListType):
        out += [5, {"a": 1}]
        if t.max_length is not None and t.max_length <= 4096:
            out.append([None] * (t.max_length + 1))
    elif isinstance(t, mi.DictType):
        out += [[1, 2], 3]
    return out


def object_not_in(values: tuple[Any, ...]) -> Any:
    if all(isinstance(v, int) for v in values):
        return max(values) + 1
    return "not-a-valid-choice"
