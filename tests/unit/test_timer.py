"""DeadlineTimer: one loop timer at a core's next deadline, moved only when the deadline moves (a fake loop
records what is armed; no real time passes)."""

from __future__ import annotations

from typing import Any

from gvtsim.services.common.timer import DeadlineTimer


class FakeHandle:
    def __init__(self, delay: float, cb: Any) -> None:
        self.delay, self.cb, self.cancelled = delay, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.handles: list[FakeHandle] = []

    def call_later(self, delay: float, cb: Any) -> FakeHandle:
        h = FakeHandle(delay, cb)
        self.handles.append(h)
        return h

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]


def test_an_unchanged_deadline_keeps_its_timer_and_a_moved_one_replaces_it() -> None:
    loop = FakeLoop()
    fired: list[int] = []
    t = DeadlineTimer(lambda: fired.append(1), loop)  # type: ignore[arg-type]
    t.arm(1e12)
    t.arm(1e12)
    assert len(loop.handles) == 1 and t.armed and t.at == 1e12
    t.arm(2e12)
    assert len(loop.handles) == 2 and loop.live() == [loop.handles[1]]
    t.arm(None)
    assert loop.live() == [] and not t.armed and t.at is None
    t.arm(None)
    assert len(loop.handles) == 2  # nothing armed for "never"


def test_firing_calls_back_once_and_disarms_so_the_same_deadline_can_be_armed_again() -> None:
    loop = FakeLoop()
    fired: list[int] = []
    t = DeadlineTimer(lambda: fired.append(1), loop)  # type: ignore[arg-type]
    t.arm(0.0)  # already past: due at once
    (h,) = loop.handles
    assert h.delay == 0.0
    h.cb()
    assert fired == [1] and not t.armed
    t.arm(0.0)
    assert len(loop.handles) == 2 and t.armed  # a fresh timer for the same instant
