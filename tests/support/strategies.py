"""Hypothesis strategies derived from the message schemas themselves (msgspec.inspect), so every message
type, present and future, is generated from its declared field types and bounds."""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)


def for_type(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy producing valid values of a msgspec type description."""
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else I64_MIN)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else U64_MAX)
        return st.integers(lo, hi)
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.StrType):
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 20, 20))
    if isinstance(t, mi.BytesType):
        return st.binary(min_size=t.min_length or 0, max_size=min(t.max_length or 64, 64))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.ListType):
        lo = t.min_length or 0
        hi = max(lo, 4) if t.max_length is None else min(max(lo, 4), t.max_length)
        return st.lists(for_type(t.item_type), min_size=lo, max_size=hi)
    if isinstance(t, mi.TupleType):
        return st.tuples(*(for_type(x) for x in t.item_types))
    if isinstance(t, mi.DictType):
        return st.dictionaries(for_type(t.key_type), for_type(t.value_type), max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(for_type(x) for x in t.types))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.AnyType):
        return st.one_of(st.integers(0, 1000), st.text(max_size=8), st.booleans())
    if isinstance(t, mi.StructType):
        return for_struct(t.cls)
    raise NotImplementedError(f"no strategy for {t!r}")


def for_struct(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """A strategy producing valid instances of a message/struct class."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {}
    for f in info.fields:
        s = for_type(f.type)
        fields[f.name] = s if f.required else st.one_of(st.just(msgspec.UNSET), s)
    return st.fixed_dictionaries(fields).map(
        lambda kw: cls(**{k: v for k, v in kw.items() if v is not msgspec.UNSET}))


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
