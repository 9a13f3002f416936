"""The ACRN ioreq slot state machine: values, legal path, and every illegal transition refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.protocol import IllegalTransition, IoreqDir, IoreqSlot, IoreqState, IoreqType
from gvtsim.protocol.ioreq import TRANSITIONS


def test_acrn_numeric_values():
    # acrn_common.h since 17771c0ac: PENDING 0, COMPLETE 1, PROCESSING 2, FREE 3; REQ_PORTIO 0 .. REQ_WP 3
    assert (IoreqState.PENDING, IoreqState.COMPLETE, IoreqState.PROCESSING, IoreqState.FREE) == (0, 1, 2, 3)
    assert (IoreqType.PIO, IoreqType.MMIO, IoreqType.PCI, IoreqType.WP) == (0, 1, 2, 3)
    assert (IoreqDir.READ, IoreqDir.WRITE) == (0, 1)


def test_full_cycle_through_a_client():
    slot = IoreqSlot(vcpu=3)
    assert slot.state is IoreqState.FREE and not slot.busy
    slot.insert("req")
    assert slot.state is IoreqState.PENDING and slot.busy
    slot.dispatch(client=7)
    assert slot.state is IoreqState.PROCESSING and slot.client == 7
    slot.complete(0xABCD)
    assert slot.state is IoreqState.COMPLETE and slot.value == 0xABCD
    assert slot.free() == "req"
    assert slot.state is IoreqState.FREE and slot.request is None


def test_fast_path_pending_to_complete():
    slot = IoreqSlot(vcpu=0)
    slot.insert("cf8")
    slot.complete(0xFFFFFFFF)
    slot.free()
    assert slot.state is IoreqState.FREE


def test_busy_slot_refuses_second_request():
    slot = IoreqSlot(vcpu=0)
    slot.insert("first")
    with pytest.raises(IllegalTransition, match="busy"):
        slot.insert("second")
    assert slot.request == "first"


ILLEGAL = [(s, d) for s, d in itertools.product(IoreqState, IoreqState) if d not in TRANSITIONS[s]]


def _drive_to(slot: IoreqSlot, state: IoreqState) -> None:
    path = {IoreqState.FREE: [], IoreqState.PENDING: ["insert"],
            IoreqState.PROCESSING: ["insert", "dispatch"],
            IoreqState.COMPLETE: ["insert", "dispatch", "complete"]}[state]
    for step in path:
        {"insert": lambda: slot.insert("r"), "dispatch": lambda: slot.dispatch(1),
         "complete": lambda: slot.complete(0)}[step]()


def _attempt(slot: IoreqSlot, dst: IoreqState) -> None:
    {IoreqState.PENDING: lambda: slot.insert("x"), IoreqState.PROCESSING: lambda: slot.dispatch(2),
     IoreqState.COMPLETE: lambda: slot.complete(1), IoreqState.FREE: slot.free}[dst]()


@pytest.mark.parametrize("src,dst", ILLEGAL, ids=lambda s: s.name)
def test_every_illegal_transition_raises(src, dst):
    slot = IoreqSlot(vcpu=1)
    _drive_to(slot, src)
    with pytest.raises(IllegalTransition):
        _attempt(slot, dst)
    assert slot.state is src  # a refused transition changes nothing


def test_illegal_table_is_complete():
    # 16 ordered pairs, 5 legal ones: FREE->PENDING, PENDING->PROCESSING, PENDING->COMPLETE,
    # PROCESSING->COMPLETE, COMPLETE->FREE.
    assert len(ILLEGAL) == 11


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(IoreqState)), max_size=30))
def test_random_walks_follow_the_table(steps):
    slot = IoreqSlot(vcpu=0)
    for dst in steps:
        before = slot.state
        try:
            _attempt(slot, dst)
        except IllegalTransition:
            assert dst not in TRANSITIONS[before]
            assert slot.state is before
        else:
            assert dst in TRANSITIONS[before]
            assert slot.state is dst
