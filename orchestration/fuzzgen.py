"""Messages generated from the catalogue's own schemas (protocol/messages.py, read through msgspec.inspect).

* :func:`minimal` - the smallest valid instance of a message type (every bound at its low end);
* :func:`strategy` - a hypothesis strategy of valid instances, biased to the boundaries of every range;
* :class:`Mutator` - turns valid frames into hostile ones: boundary and out-of-range values, wrong types,
  missing and unknown fields, truncation, byte flips, garbage, wrong top-level shapes.

Every message type, present and future, is covered without a hand-written generator: a new Struct in the
catalogue is fuzzed the day it is added.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import msgpack
import msgspec
import msgspec.inspect as mi

from ..protocol import messages as m

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)


def _bounds(t: mi.IntType) -> tuple[int, int]:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else I64_MIN)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else U64_MAX)
    if lo == 0 and t.le is None and t.lt is None:
        hi = U64_MAX  # u64 fields: msgspec bounds stop at int64, the wire carries MessagePack uint64
    return lo, hi


def minimal_value(t: mi.Type) -> Any:
    """The smallest valid value of a msgspec type description."""
    if isinstance(t, mi.IntType):
        return _bounds(t)[0]
    if isinstance(t, mi.BoolType):
        return False
    if isinstance(t, mi.StrType):
        return "x" * max(1, t.min_length or 0) if (t.min_length or 0) > 0 else "x"
    if isinstance(t, mi.BytesType):
        return b"\0" * (t.min_length or 0)
    if isinstance(t, mi.LiteralType):
        return t.values[0]
    if isinstance(t, mi.EnumType):
        return next(iter(t.cls))
    if isinstance(t, mi.ListType):
        return [minimal_value(t.item_type) for _ in range(t.min_length or 0)]
    if isinstance(t, mi.TupleType):
        return tuple(minimal_value(x) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return {}
    if isinstance(t, mi.UnionType):
        return minimal_value(next(x for x in t.types if not isinstance(x, mi.NoneType)))
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.AnyType):
        return 0
    if isinstance(t, mi.StructType):
        return minimal(t.cls)
    raise NotImplementedError(f"no minimal value for {t!r}")


def minimal(cls: type[msgspec.Struct], **overrides: Any) -> Any:
    """The smallest valid instance of ``cls`` (required fields only), with ``overrides`` applied."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    kw = {f.name: minimal_value(f.type) for f in info.fields if f.required}
    kw.update(overrides)
    return cls(**kw)


# ------------------------------------------------------------------------------------------- hypothesis
def for_type(t: mi.Type) -> Any:
    """A hypothesis strategy of valid values of a msgspec type, biased to the ends of every range."""
    from hypothesis import strategies as st

    if isinstance(t, mi.IntType):
        lo, hi = _bounds(t)
        edges = sorted({lo, min(lo + 1, hi), hi, max(hi - 1, lo)})
        return st.one_of(st.sampled_from(edges), st.integers(lo, min(hi, lo + 4096)), st.integers(lo, hi))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.StrType):
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 16, 16))
    if isinstance(t, mi.BytesType):
        return st.binary(min_size=t.min_length or 0, max_size=min(t.max_length or 64, 64))
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.ListType):
        lo = t.min_length or 0
        hi = max(lo, 3) if t.max_length is None else min(max(lo, 3), t.max_length)
        return st.lists(for_type(t.item_type), min_size=lo, max_size=hi)
    if isinstance(t, mi.TupleType):
        return st.tuples(*(for_type(x) for x in t.item_types))
    if isinstance(t, mi.DictType):
        return st.dictionaries(for_type(t.key_type), for_type(t.value_type), max_size=2)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(for_type(x) for x in t.types))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.AnyType):
        return st.one_of(st.integers(0, 1000), st.text(max_size=8), st.booleans())
    if isinstance(t, mi.StructType):
        return strategy(t.cls)
    raise NotImplementedError(f"no strategy for {t!r}")


def strategy(cls: type[msgspec.Struct]) -> Any:
    """A hypothesis strategy of valid instances of ``cls`` (optional fields sometimes omitted)."""
    from hypothesis import strategies as st

    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    fields = {}
    for f in info.fields:
        s = for_type(f.type)
        fields[f.name] = s if f.required else st.one_of(st.just(msgspec.UNSET), s)
    return st.fixed_dictionaries(fields).map(
        lambda kw: cls(**{k: v for k, v in kw.items() if v is not msgspec.UNSET}))


# -------------------------------------------------------------------------------------------- mutations
WRONG_TYPES: tuple[Any, ...] = (None, True, -1, 2**64 - 1, 1.5, "", "x" * 70, b"\xff", [], {}, [1, 2], {"a": 1})


class Mutator:
    """Hostile variants of a valid message, each named by the mutation that made it (the fuzzer counts them)."""

    KINDS = ("valid", "boundary", "out_of_range", "wrong_type", "missing_field", "unknown_field", "wrong_tag",
             "truncate", "byte_flip", "garbage", "not_a_map", "deep_nesting", "huge_map")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.infos: dict[type[m.Message], mi.StructType] = {}
        for cls in m.ALL_MESSAGES:
            info = mi.type_info(cls)
            assert isinstance(info, mi.StructType)
            self.infos[cls] = info

    def mutate(self, msg: m.Message, kind: str) -> bytes:
        """The frame for ``msg`` mutated by ``kind`` (one of KINDS)."""
        rng = self.rng
        raw: dict[str, Any] = msgpack.unpackb(msgspec.msgpack.encode(msg))
        info = self.infos[type(msg)]
        fields = [f for f in info.fields]
        if kind == "valid":
            return msgpack.packb(raw)
        if kind in ("boundary", "out_of_range") and fields:
            ints = [(f, f.type) for f in fields if isinstance(f.type, mi.IntType)]
            if ints:
                f, int_type = rng.choice(ints)
                lo, hi = _bounds(int_type)
                if kind == "boundary":
                    raw[f.encode_name] = rng.choice((lo, hi))
                else:
                    raw[f.encode_name] = rng.choice([v for v in (lo - 1, hi + 1) if -(2**63) <= v <= U64_MAX] or [-1])
            return msgpack.packb(raw)
        if kind == "wrong_type" and fields:
            raw[rng.choice(fields).encode_name] = rng.choice(WRONG_TYPES)
            return msgpack.packb(raw)
        if kind == "missing_field":
            keys = [k for k in raw if k != "type"]
            if keys:
                del raw[rng.choice(keys)]
            else:
                del raw["type"]
            return msgpack.packb(raw)
        if kind == "unknown_field":
            raw["bogus_" + str(rng.randrange(100))] = 1
            return msgpack.packb(raw)
        if kind == "wrong_tag":
            raw["type"] = rng.choice(("", "NOPE", "hello", "IOREQ ", 7, None))
            return msgpack.packb(raw)
        frame = msgpack.packb(raw)
        if kind == "truncate":
            return frame[: rng.randrange(0, max(1, len(frame)))]
        if kind == "byte_flip":
            b = bytearray(frame)
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            return bytes(b)
        if kind == "garbage":
            return rng.randbytes(rng.randrange(0, 64))
        if kind == "not_a_map":
            return msgpack.packb(rng.choice(([raw.get("type"), 1], 5, "HELLO", None, b"\x00")))
        if kind == "deep_nesting":
            return b"\x91" * 2000 + b"\x00"
        if kind == "huge_map":
            return b"\xdf\xff\xff\xff\xff"  # a map header claiming 4 G entries, then nothing
        return frame


# ------------------------------------------------------------------------------- fast random instances
def random_value(t: mi.Type, rng: random.Random) -> Any:
    """A random valid value of a msgspec type (the same schema walk as the hypothesis strategies, ~100x
    cheaper per value: the fuzzer's bulk generator), biased to the ends of every range."""
    if isinstance(t, mi.IntType):
        lo, hi = _bounds(t)
        r = rng.random()
        if r < 0.3:
            return rng.choice((lo, hi, min(lo + 1, hi), max(hi - 1, lo)))
        if r < 0.7:
            return rng.randint(lo, min(hi, lo + 4096))
        return rng.randint(lo, hi)
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.StrType):
        n = rng.randint(t.min_length or 0, min(t.max_length or 16, 16))
        return "".join(rng.choice("abcxyz019_-,GVTg_V5é") for _ in range(n))
    if isinstance(t, mi.BytesType):
        return rng.randbytes(rng.randint(t.min_length or 0, min(t.max_length or 64, 64)))
    if isinstance(t, mi.LiteralType):
        return rng.choice(t.values)
    if isinstance(t, mi.EnumType):
        return rng.choice(list(t.cls))
    if isinstance(t, mi.ListType):
        lo = t.min_length or 0
        hi = max(lo, 3) if t.max_length is None else min(max(lo, 3), t.max_length)
        return [random_value(t.item_type, rng) for _ in range(rng.randint(lo, hi))]
    if isinstance(t, mi.TupleType):
        return tuple(random_value(x, rng) for x in t.item_types)
    if isinstance(t, mi.DictType):
        return {random_value(t.key_type, rng): random_value(t.value_type, rng) for _ in range(rng.randint(0, 2))}
    if isinstance(t, mi.UnionType):
        return random_value(rng.choice(t.types), rng)
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.AnyType):
        return rng.choice((0, 7, "x", True))
    if isinstance(t, mi.StructType):
        return random_instance(t.cls, rng)
    raise NotImplementedError(f"no random value for {t!r}")


@functools.lru_cache(maxsize=None)
def _info(cls: type[msgspec.Struct]) -> mi.StructType:
    return mi.type_info(cls)  # type: ignore[return-value]


def random_instance(cls: type[msgspec.Struct], rng: random.Random) -> Any:
    """A random valid instance of ``cls`` (optional fields sometimes omitted)."""
    info = _info(cls)
    assert isinstance(info, mi.StructType)
    kw = {f.name: random_value(f.type, rng) for f in info.fields if f.required or rng.random() < 0.5}
    return cls(**kw)
