"""Chaos over many host stacks (orchestration/chaos.py, loadstats.py, report.py): the per-stack kill plan,
kills of different stacks carried out side by side, and each kill's latency blip computed from the guests'
per-interval histograms. Pure: no processes."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.orchestration.chaos import RECOVERY_BUDGET, ChaosError, KillRecord, PlannedKill, main, parse_kills, \
    plan_schedule, run_schedule
from gvtsim.orchestration.load import VMS_PER_STACK_CAP, place, stacks_to_add, stacks_used
from gvtsim.orchestration.loadstats import LoadStats, attach_blips, attach_recovery, explain, recovery_window
from gvtsim.orchestration.report import summary_md, write_report
from gvtsim.services.common.histo import Histogram

T0 = 1000.0
MARGIN = 2.0


def check_per_stack(plan: list[PlannedKill], kills: dict[str, int], stacks: list[int], restart: float,
                    duration: float) -> None:
    """Every property a per-stack plan must have."""
    slot = restart + RECOVERY_BUDGET
    assert sorted(k.service for k in plan) == sorted(s for s, n in kills.items() for _ in range(n))
    assert [k.at for k in plan] == sorted(k.at for k in plan)
    assert {k.stack for k in plan} <= set(stacks)
    per = Counter(k.stack for k in plan)
    counts = [per.get(s, 0) for s in stacks]
    assert max(counts) - min(counts) <= 1  # evenly over the stacks
    for service in kills:  # and each service too
        c = [sum(k.stack == s and k.service == service for k in plan) for s in stacks]
        assert max(c) - min(c) <= 1, (service, c)
    for s in stacks:  # within one stack, each recovery has its own window
        times = [k.at for k in plan if k.stack == s]
        assert all(b - a >= slot - 1e-6 for a, b in zip(times, times[1:])), (s, times)
        if times:
            assert times[0] >= MARGIN and times[-1] + slot <= duration - MARGIN + 1e-6


@given(st.dictionaries(st.sampled_from(["gvt", "pgpu", "guest", "vhm"]), st.integers(1, 25), min_size=1),
       st.integers(1, 12), st.floats(0.0, 3.0), st.integers(0, 2**32))
def test_per_stack_plan_spreads_evenly_and_never_overlaps_within_a_stack(kills: dict[str, int], n_stacks: int,
                                                                         restart: float, seed: int) -> None:
    stacks = [3 * i + 1 for i in range(n_stacks)]  # any stack numbers, not only 0..n-1
    most = -(-sum(kills.values()) // n_stacks)
    duration = 2 * MARGIN + most * (restart + RECOVERY_BUDGET) * 1.2
    plan = plan_schedule(duration, kills, restart, seed, stacks=stacks)
    check_per_stack(plan, kills, stacks, restart, duration)
    assert plan == plan_schedule(duration, kills, restart, seed, stacks=list(reversed(stacks)))  # reproducible


def test_the_acceptance_run_fits_per_stack_and_kills_overlap_across_stacks() -> None:
    # gvtsim load --vms 64 --duration 180 --chaos gvt:20,pgpu:20,vhm:10: 64 VMs of the real profile (7 vGPUs a
    # stack) on `gvtsim up`'s stack 0 and the stacks the load adds, placed as gvtsim load places them
    free = {0: 7}
    added = stacks_to_add(64, free, 7, VMS_PER_STACK_CAP)
    plans = place(64, {**free, **{k: 7 for k in range(1, added + 1)}}, per_guest=8, per_stack=VMS_PER_STACK_CAP)
    stacks = sorted({p.stack for p in plans})
    assert stacks == list(range(10))
    kills = parse_kills("gvt:20,pgpu:20,vhm:10")
    with pytest.raises(ChaosError, match="50 kills need 304s"):  # one window per kill over the run: no
        plan_schedule(180, kills, 1.0, 1)
    plan = plan_schedule(180, kills, 1.0, 1, stacks=stacks)
    check_per_stack(plan, kills, stacks, 1.0, 180)
    for s in stacks:  # 2 gvt, 2 pgpu, 1 vhm kill on every stack
        assert Counter(k.service for k in plan if k.stack == s) == {"gvt": 2, "pgpu": 2, "vhm": 1}
    slot = 1.0 + RECOVERY_BUDGET
    assert any(b.at - a.at < slot and a.stack != b.stack for a, b in zip(plan, plan[1:]))  # side by side
    assert plan == plan_schedule(180, kills, 1.0, 1, stacks=stacks)
    assert plan != plan_schedule(180, kills, 1.0, 2, stacks=stacks)  # the seed chooses


@given(st.integers(1, 200), st.dictionaries(st.integers(0, 20), st.integers(0, 7), max_size=6),
       st.integers(1, 8), st.sampled_from([None, 2, 4, 128]))
def test_the_load_plans_its_kills_over_the_stacks_it_will_use(n: int, free: dict[int, int], per_guest: int,
                                                                cap: int | None) -> None:
    # what gvtsim load checks before it starts anything is the number of stacks place() then uses
    add = stacks_to_add(n, free, 7, cap)
    plans = place(n, {**free, **{100 + i: 7 for i in range(add)}}, per_guest, per_stack=cap)
    assert stacks_used(n, free, 7, cap) == len({p.stack for p in plans})


def test_a_per_stack_plan_that_cannot_fit_is_refused_saying_what_fits() -> None:
    with pytest.raises(ChaosError) as err:
        plan_schedule(20, parse_kills("gvt:20,pgpu:20,vhm:10"), 1.0, 0, stacks=range(10))
    text = str(err.value)
    assert "\n" not in text
    assert "put 5 on one stack" in text and "the run lasts 20s" in text
    assert "at most 20 kills fit (2 per stack)" in text and "--duration of at least 34s" in text
    # exactly what it says fits does fit, and one more kill does not
    assert len(plan_schedule(20, {"gvt": 20}, 1.0, 0, stacks=range(10))) == 20
    with pytest.raises(ChaosError):
        plan_schedule(20, {"gvt": 21}, 1.0, 0, stacks=range(10))
    assert len(plan_schedule(34, parse_kills("gvt:20,pgpu:20,vhm:10"), 1.0, 0, stacks=range(10))) == 50
    # one stack: the same windows as a plan without stacks
    with pytest.raises(ChaosError, match="at most 2 kills fit"):
        plan_schedule(20, {"gvt": 3}, 1.0, 0)
    with pytest.raises(ChaosError, match=r"the run lasts 5s: no kill fits \(one needs 10s\)"):
        plan_schedule(5, {"gvt": 9}, 1.0, 0, stacks=range(5))


def test_chaos_schedule_plan_prints_the_per_stack_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "1", "schedule", "--duration", "180", "--kill", "gvt:20,pgpu:20,vhm:10",
                 "--stacks", "10", "--plan"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 51 and out[-1].startswith("50 kills over 180 s on 10 host stack(s): at most 5 per stack")
    assert all(" of stack " in line for line in out[:-1])
    assert main(["--seed", "1", "schedule", "--duration", "20", "--kill", "gvt:20", "--stacks", "3", "--plan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gvtsim chaos: 20 kills over 3 host stack(s)") and "\n" not in err


class FakeBackend:
    """Kills that take as long as the test lets them: stack 0's first kill waits until stack 1's has begun."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.stack1_began = asyncio.Event()

    async def kill(self, service: str, restart_after: float | None, stack: int | None = None,
                   t0: float | None = None) -> KillRecord:
        self.log.append(f"begin {service}@{stack}")
        if stack == 1:
            self.stack1_began.set()
        if (service, stack) == ("gvt", 0):
            await asyncio.wait_for(self.stack1_began.wait(), 5.0)  # a serial schedule would never get there
        self.log.append(f"end {service}@{stack}")
        return KillRecord(service=service, stack=stack, recovered=True)


async def test_run_schedule_runs_stacks_side_by_side_and_each_stacks_kills_in_turn() -> None:
    plan = [PlannedKill(0.0, "gvt", 1.0, 0), PlannedKill(0.0, "vhm", 1.0, 0), PlannedKill(0.0, "pgpu", 1.0, 1)]
    backend = FakeBackend()
    seen: list[str] = []
    records = await run_schedule(backend, plan, asyncio.get_running_loop().time() - 1.0,  # type: ignore[arg-type]
                                 lambda r: seen.append(r.service))
    assert [(r.service, r.stack) for r in records] == [("gvt", 0), ("vhm", 0), ("pgpu", 1)]  # the plan's order
    log = backend.log
    assert log.index("begin pgpu@1") < log.index("end gvt@0")  # overlap across stacks
    assert log.index("end gvt@0") < log.index("begin vhm@0")  # never within one
    assert seen[0] == "pgpu"  # each record as its kill ends


# ------------------------------------------------------------------------------------------------ blips
def _hist_ms(*values_ms: float) -> str:
    h = Histogram()
    for v in values_ms:
        h.record_us(v * 1000)
    return h.encode()


def _stats(s: LoadStats, source: str, t: float, *lat_ms: float) -> None:
    s.feed(source, {"event": "stats", "verified": int(10 * t), "t": T0 + t, "workload_hist": _hist_ms(*lat_ms)}, T0 + t)


def synthetic_run() -> LoadStats:
    """Two stacks, a guest process each, a stats event a second from t=1 to t=30. Stack 0's guests see 400 ms
    workloads in (11, 14] (its gvt was killed at 11.2), stack 1's 300 ms ones in (20, 22] (killed at 20.5);
    every other interval holds 10 workloads of 10 ms, except the ramp-up's 2000 ms ones in (0, 3]."""
    s = LoadStats(T0, 4)
    for source in ("s0/load-guest.0", "s1/load-guest.1"):
        s.feed(source, {"event": "ready", "pid": 1, "t": T0}, T0)
    for t in range(1, 31):
        for source, slow in (("s0/load-guest.0", range(12, 15)), ("s1/load-guest.1", range(21, 23))):
            lat = 2000.0 if t <= 3 else 400.0 if t in slow and source[1] == "0" else \
                300.0 if t in slow else 10.0
            _stats(s, source, t, *[lat] * 10)
    return s


def test_blip_is_the_p99_of_the_killed_stacks_intervals_in_its_window() -> None:
    s = synthetic_run()
    kills = [{"service": "gvt", "target": "s0/gvt", "stack": 0, "at": 11.2, "restart_after": 1.0,
              "serving_s": 1.1, "serving_at": 12.5, "recovered": True},
             {"service": "pgpu", "target": "s1/pgpu", "at": 20.5, "restart_after": 1.0, "recovered": False}]
    base = attach_blips(kills, s, restart_after=1.0, since=3.0)
    b0, b1 = kills[0]["blip"], kills[1]["blip"]
    # kill 0: window [11.2, 12.5 + 1 s tail], widened to the intervals (11, 12], (12, 13], (13, 14] of stack 0
    assert b0["window_s"] == [11.2, 13.5] and (b0["from_s"], b0["to_s"], b0["intervals"]) == (11.0, 14.0, 3)
    assert b0["workloads"] == 30 and b0["stack"] == 0
    # all three held 400 ms workloads (those the outage held up); stack 1's intervals are not in it
    assert b0["p99_ms"] == pytest.approx(400, rel=0.01) and b0["p50_ms"] == pytest.approx(400, rel=0.01)
    # kill 1 (never served again): kill + restart delay + 5 s budget + tail = [20.5, 27.5], stack 1 only
    assert recovery_window(kills[1], 1.0) == (20.5, 27.5)
    assert (b1["from_s"], b1["to_s"], b1["intervals"], b1["stack"]) == (20.0, 28.0, 8, 1)
    assert b1["p99_ms"] == pytest.approx(300, rel=0.01) and b1["p50_ms"] == pytest.approx(10, rel=0.01)
    # the baseline: every interval after the ramp-up outside its own stack's windows, all 10 ms (stack 1's
    # intervals during stack 0's window count: another stack's kill is not theirs)
    assert base["n"] == 10 * ((30 - 3) * 2 - 3 - 8)
    assert b0["baseline_p99_ms"] == pytest.approx(10, rel=0.01) == b1["baseline_p99_ms"]
    assert b0["p99_ratio"] == pytest.approx(40, rel=0.02)
    words = explain(s.figures(T0 + 30), True, kills, [])
    assert any("latency blip: p99 " in w and "of stack 0 in 11.0-14.0 s" in w and "outside recovery windows" in w
               for w in words), words


def test_blip_of_a_window_where_nothing_completed_says_so() -> None:
    s = LoadStats(T0, 1)
    s.feed("s2/load-guest.0", {"event": "ready", "pid": 1, "t": T0}, T0)
    _stats(s, "s2/load-guest.0", 1.0, 10.0)
    # its VMs reset: 3 workloads failed and none verified until t=9
    s.feed("s2/load-guest.0", {"event": "stats", "verified": 1, "failed": 3, "t": T0 + 9.0,
                               "workload_hist": Histogram().encode()}, T0 + 9.0)
    kills = [{"service": "vhm", "target": "s2/vhm", "at": 2.0, "restart_after": 1.0, "serving_at": 4.0}]
    attach_blips(kills, s, 1.0)
    b = kills[0]["blip"]
    assert b["p99_ms"] is None and b["workloads"] == 0 and b["intervals"] == 1
    assert b["failed"] == 3 and b["stall_s"] == 3.0  # the whole window [2, 4 + 1 s tail]
    line = explain(s.figures(T0 + 9), True, kills, [])[-1]
    assert "no workload of stack 2 completed in 1.0-9.0 s; 3 failed; none verified for 3.0 s of it" in line


def test_stall_is_the_longest_part_of_the_window_no_interval_verified_in() -> None:
    s = LoadStats(T0, 2)
    for source in ("s0/load-guest.0", "s0/load-guest.1"):
        s.feed(source, {"event": "ready", "pid": 1, "t": T0}, T0)
    for t, a, b in ((1, 5, 5), (2, 5, 0), (3, 0, 0), (4, 0, 0), (5, 0, 5), (6, 5, 5)):
        _stats(s, "s0/load-guest.0", t, *[10.0] * a)
        _stats(s, "s0/load-guest.1", t, *[10.0] * b)
    kills = [{"service": "gvt", "target": "s0/gvt", "at": 1.5, "restart_after": 1.0, "serving_at": 4.5}]
    attach_blips(kills, s, 1.0)
    # guest 0 verified in (1, 2], guest 1 in (4, 5]: nothing in (2, 4]
    assert kills[0]["blip"]["stall_s"] == 2.0 and kills[0]["blip"]["workloads"] == 20


def test_an_overlapping_kill_of_another_stack_does_not_cut_a_kills_outage_short() -> None:
    s = LoadStats(T0, 2)
    feed = [("s0/load-guest.0", {"event": "vm_reset", "vm": 1, "name": "a", "reason": "gvt lost", "t": T0 + 11.5}),
            ("s0/load-guest.0", {"event": "vm_recovered", "vm": 2, "name": "a", "recovery_s": 1.5, "t": T0 + 13.0}),
            ("s1/load-guest.1", {"event": "vm_reset", "vm": 1, "name": "b", "reason": "pgpu lost", "t": T0 + 11.2}),
            ("s1/load-guest.1", {"event": "vm_recovered", "vm": 2, "name": "b", "recovery_s": 2.0, "t": T0 + 13.2})]
    for source in ("s0/load-guest.0", "s1/load-guest.1"):
        s.feed(source, {"event": "ready", "pid": 1, "t": T0}, T0)
    for source, ev in feed:
        s.feed(source, ev, ev["t"])
    kills = [{"service": "gvt", "target": "s0/gvt", "stack": 0, "at": 10.0},
             {"service": "pgpu", "target": "s1/pgpu", "stack": 1, "at": 11.0}]  # while stack 0 recovers
    attach_recovery(kills, s)
    assert kills[0]["vm_recovery_s"] == {"a": 1.5} and kills[1]["vm_recovery_s"] == {"b": 2.0}


def test_the_report_shows_each_kills_blip(tmp_path) -> None:
    s = synthetic_run()
    kills = [{"service": "gvt", "target": "s0/gvt", "stack": 0, "at": 11.2, "restart_after": 1.0, "ready_s": 0.4,
              "serving_s": 1.1, "serving_at": 12.5, "recovered": True, "vms_reset": 0, "vm_recovery_s": {},
              "vms_not_back": []},
             {"service": "pgpu", "target": "s1/pgpu", "stack": 1, "at": 20.5, "restart_after": 1.0, "ready_s": 0.4,
              "serving_s": 1.0, "serving_at": 21.9, "recovered": True, "vms_reset": 0, "vm_recovery_s": {},
              "vms_not_back": []}]
    attach_blips(kills, s, 1.0, since=3.0)
    b = kills[0]["blip"]
    assert b["p99_ratio"] == pytest.approx(40, rel=0.02)
    fig = s.figures(T0 + 30)
    data = {"figures": fig, "kills": kills, "problems": [], "verdict": explain(fig, True, kills, [])}
    md = summary_md(data)
    assert "| blip p50 (ms) | blip p99 (ms) |" in md
    assert f"| 11.2 | gvt | s0/gvt | 0.4 | 1.1 | 0 | - | 0 | {b['p50_ms']} | {b['p99_ms']} | {b['p99_ratio']} | 30 |" \
        in md
    assert "once per stats interval (1 s)" in md and f"p99 {b['baseline_p99_ms']} ms." in md
    names = sorted(os.path.basename(f) for f in write_report(str(tmp_path), data))
    assert "blip.png" in names and "None" not in open(tmp_path / "summary.md").read()
