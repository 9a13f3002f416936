"""The schema-driven generators of gvtsim fuzz (orchestration/fuzzgen.py): valid means valid, mutated means refused."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings

from gvtsim.orchestration.fuzzgen import Mutator, minimal, random_instance, strategy
from gvtsim.protocol import DecodeError, decode, encode
from gvtsim.protocol import messages as m


@pytest.mark.parametrize("cls", m.ALL_MESSAGES, ids=lambda c: c.__struct_config__.tag)
def test_minimal_and_random_instances_decode(cls) -> None:
    assert decode(encode(minimal(cls))) == minimal(cls)
    rng = random.Random(cls.__name__)
    for _ in range(20):
        msg = random_instance(cls, rng)
        assert decode(encode(msg)) == msg


@settings(max_examples=60, deadline=None)
@given(strategy(m.ElspSubmit))
def test_hypothesis_strategy_instances_decode(msg) -> None:
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("kind", ["out_of_range", "wrong_tag", "unknown_field", "not_a_map", "deep_nesting",
                                  "huge_map"])
def test_mutations_that_must_be_refused(kind: str) -> None:
    mut = Mutator(random.Random(3))
    for cls in (m.VgpuReset, m.Ioreq, m.GgttRead, m.Hello):
        frame = mut.mutate(minimal(cls), kind)
        with pytest.raises(DecodeError):
            decode(frame)


def test_every_mutation_produces_bytes_and_valid_stays_valid() -> None:
    mut = Mutator(random.Random(5))
    for cls in m.ALL_MESSAGES:
        for kind in Mutator.KINDS:
            assert isinstance(mut.mutate(minimal(cls), kind), bytes)
        assert decode(mut.mutate(minimal(cls), "valid")) == minimal(cls)
