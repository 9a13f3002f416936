"""``--think``: a vCPU pauses between its workloads (services/guest/workloads.py ``vcpu_loop``), on the runtime's
fake clock; the load's end (SIGUSR1 moving the deadline, ``Budget.ended``) wakes a pausing vCPU at once."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gvtsim.services.guest.runtime import Done, Gen, Runtime
from gvtsim.services.guest.workloads import Budget, Tally, vcpu_loop


class FakeRunner:
    """A runner whose workloads take no time: it records when each started."""

    def __init__(self, rt: Runtime, vm_id: int) -> None:
        self.drv = SimpleNamespace(machine=SimpleNamespace(rt=rt, vm_id=vm_id))
        self.starts: list[float] = []
        self.rt = rt

    def run(self, kind: str, engine: str, **kw: Any) -> Gen[None]:
        self.starts.append(self.rt.now)
        return
        yield  # a generator


def _run(budget: Budget, until: float, step: float = 0.25) -> tuple[FakeRunner, Any, Tally]:
    rt = Runtime(ioreq_timeout=10.0)
    runner = FakeRunner(rt, vm_id=3)
    tally = Tally()
    th = rt.spawn(vcpu_loop(runner, tally, 0, "rcs", ["store"], budget), 0.0, "vcpu0", 3)  # type: ignore[arg-type]
    t = 0.0
    while t < until and th.outcome is None:
        t += step
        rt.advance(t)
    return runner, th, tally


def test_back_to_back_without_think() -> None:
    runner, th, tally = _run(Budget(workloads=5, vcpus=1), until=1.0)
    assert runner.starts == [0.0] * 5 and isinstance(th.outcome, Done) and tally.verified == 5


def test_a_vcpu_pauses_about_think_seconds_between_workloads() -> None:
    runner, th, tally = _run(Budget(workloads=6, vcpus=1, think=10.0), until=200.0)
    assert isinstance(th.outcome, Done) and tally.verified == 6
    assert 0.0 <= runner.starts[0] < 10.0 + 0.25  # the first one anywhere in the first think
    gaps = [b - a for a, b in zip(runner.starts, runner.starts[1:])]
    assert all(5.0 <= g <= 15.0 + 0.25 for g in gaps), gaps  # half to one and a half think
    assert len(set(round(g, 2) for g in gaps)) > 1  # jittered, not in step


def test_the_same_vm_pauses_the_same_way_in_every_run() -> None:
    a, _, _ = _run(Budget(workloads=4, vcpus=1, think=3.0), until=60.0)
    b, _, _ = _run(Budget(workloads=4, vcpus=1, think=3.0), until=60.0)
    assert a.starts == b.starts


def test_the_end_of_the_run_wakes_a_pausing_vcpu_at_once() -> None:
    budget = Budget(workloads=0, vcpus=1, deadline=10_000.0, think=600.0)
    rt = Runtime(ioreq_timeout=10.0)
    runner = FakeRunner(rt, vm_id=3)
    th = rt.spawn(vcpu_loop(runner, Tally(), 0, "rcs", ["store"], budget), 0.0, "vcpu0", 3)  # type: ignore[arg-type]
    t = 0.0
    while not runner.starts:  # the first workload, then a long pause
        t += 1.0
        rt.advance(t)
    rt.advance(t + 5.0)
    assert th.outcome is None and len(runner.starts) == 1  # pausing
    budget.deadline = t + 5.0  # SIGUSR1: the run ends now
    budget.ended.fire()
    rt.advance(t + 5.0)  # no time passes
    assert isinstance(th.outcome, Done) and len(runner.starts) == 1
