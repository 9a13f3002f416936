"""The weighted time-slice policy (sched_policy.py, gvt/sched_policy.c) as a pure object, and its fairness in
simulated time (bench_sched.py: simulated time is deterministic, so the 10% bound is not a timed assertion)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.services.gvt import bench_sched
from gvtsim.services.gvt.sched_policy import TimeSlicePolicy

MS = 1e-3


def policy(weights: dict[int, int]) -> TimeSlicePolicy:
    """A run queue in steady state: the newcomers' 2 s start-up priority (pri_sched) already lapsed."""
    p = TimeSlicePolicy()
    p.sync(weights, -10.0)
    return p


def run_pass(p: TimeSlicePolicy, now: float, work: set[int], idle: bool = True, timer: bool = True) -> None:
    p.schedule(now, timer=timer, has_work=lambda v: v in work, engines_idle=idle)


def test_stage_0_allocates_by_weight_later_stages_carry_debt_and_credit() -> None:
    p = policy({1: 2, 2: 4, 3: 8, 4: 16})
    run_pass(p, 0.0, set())
    assert {v: d.allocated_ts / MS for v, d in p.data.items()} == pytest.approx({1: 100 / 15, 2: 200 / 15,
                                                                                 3: 400 / 15, 4: 800 / 15})
    assert all(d.left_ts == d.allocated_ts for d in p.data.values())
    p.data[1].left_ts = -5 * MS  # debt
    for stage in range(1, 10):
        run_pass(p, 0.1 * stage, set())  # one balance per 100 ms of timer passes
        run_pass(p, 0.1 * stage + 0.05, set())  # not yet expired: no balance
    assert p.balances == 10
    assert p.data[1].left_ts == pytest.approx(-5 * MS + 9 * p.data[1].allocated_ts)
    assert p.data[4].left_ts == pytest.approx(10 * p.data[4].allocated_ts)
    run_pass(p, 1.0, set())  # stage 0 again: allocation afresh, debt and credit forgiven
    assert all(d.left_ts == pytest.approx(d.allocated_ts) for d in p.data.values())


def test_pick_is_the_first_in_lru_order_with_work_and_slice_left_then_it_goes_to_the_tail() -> None:
    p = policy({1: 1, 2: 1, 3: 1})
    lru = list(p.lru)
    run_pass(p, 0.0, {lru[1], lru[2]})
    assert p.current == lru[1] and p.lru == [lru[0], lru[2], lru[1]]
    p.data[lru[2]].left_ts = 0.0  # used up its slice: skipped even with work
    run_pass(p, 0.0, {lru[1], lru[2]})
    assert p.current == lru[1] and p.switches == 1  # picked itself again: no switch
    run_pass(p, 0.0, {lru[2]})  # only a vGPU without slice has work: the idle vGPU
    assert p.current is None and p.dispatchable() is None


def test_a_switch_waits_until_no_engine_runs_a_workload_and_charges_the_old_vgpu() -> None:
    p = policy({1: 1, 2: 1})
    a, b = p.lru
    run_pass(p, 0.0, {a})
    assert p.current == a and p.dispatchable() == a
    run_pass(p, 3 * MS, {a, b}, idle=False, timer=False)  # b queued work while a's workload runs
    assert p.need_reschedule and p.current == a and p.dispatchable() is None  # a's dispatch stops
    left = p.data[a].left_ts
    run_pass(p, 5 * MS, {a, b}, idle=True, timer=False)  # a's last workload completed
    assert p.current == b and p.dispatchable() == b and not p.need_reschedule
    assert p.data[a].sched_time == pytest.approx(5 * MS) and p.data[a].left_ts == pytest.approx(left - 2 * MS)
    run_pass(p, 9 * MS, {b})
    assert p.data[b].sched_time == pytest.approx(4 * MS)


def test_run_queue_changes() -> None:
    p = policy({1: 2})
    run_pass(p, 0.0, {1})
    assert p.current == 1 and p.data[1].allocated_ts == pytest.approx(100 * MS)
    p.sync({1: 2, 2: 2}, 1 * MS)  # a newcomer: no slice until the next stage 0, but 2 s of priority
    run_pass(p, 1 * MS, {1, 2}, timer=False)
    assert p.data[2].allocated_ts == 0 and p.data[2].pri_sched and p.current == 2
    assert p.stage_check == 1  # the balance cycle of the others was not restarted
    p.sync({1: 2}, 2 * MS)  # the current vGPU left (destroyed, failsafe, execlists off)
    assert p.current is None and p.need_reschedule and p.dispatchable() is None
    run_pass(p, 2 * MS, {1}, timer=False)
    assert p.current == 1 and not p.need_reschedule and p.dispatchable() == 1
    assert set(p.info()["vgpus"]) == {"1"}


def test_types_fairness_in_simulated_time() -> None:
    """Acceptance: weights 2, 4, 8, 16 (GVTg_V5_8/4/2/1), always busy on two engines: every 1 s window's
    GPU time within 10% of 2:4:8:16, owned time and engine time alike."""
    out = bench_sched.run(seconds=3.0)
    assert len(out["windows"]) == 3 and all(w["gpu_busy_pct"] > 50 for w in out["windows"])
    for w in out["windows"]:
        assert all(abs(d) < 10 for d in w["owned_deviation_pct"].values()), w
        assert all(abs(d) < 10 for d in w["deviation_pct"].values()), w
    shares = out["windows"][-1]["shares_pct"]
    assert shares["1"] < shares["2"] < shares["3"] < shares["4"]


def test_one_engine_engine_time_is_as_fair_as_owned_time() -> None:
    out = bench_sched.run(seconds=2.0, engines=("rcs",), seed=7)
    assert out["max_abs_deviation_pct"] < 5 and out["max_abs_owned_deviation_pct"] < 5


@settings(max_examples=25, deadline=None)
@given(weights=st.lists(st.integers(1, 16), min_size=2, max_size=6), seed=st.integers(0, 1000))
def test_owned_time_follows_any_weights(weights: list[int], seed: int) -> None:
    out = bench_sched.run(seconds=2.0, weights=weights, seed=seed)
    assert out["max_abs_owned_deviation_pct"] < 10, out["windows"]


def test_bench_prints_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_sched.main(["--seconds", "1"]) == 0
    text = capsys.readouterr().out
    assert "owned GPU time" in text and "engine busy time" in text and "max |deviation|" in text
