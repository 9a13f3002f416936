"""Pure parts of chaos, load and the report: kill schedules, VM placement, event aggregation, verdicts,
and the report files (orchestration/chaos.py, load.py, loadstats.py, report.py)."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.orchestration.chaos import ChaosError, parse_kills, plan_schedule
from gvtsim.orchestration.load import PACED_HANG_TIMEOUT, auto_think, guest_pacing, place, stacks_to_add
from gvtsim.orchestration.loadstats import LoadStats, attach_recovery, explain, verdict
from gvtsim.services.common.histo import Histogram
from gvtsim.orchestration.report import write_report

T0 = 1000.0


# ------------------------------------------------------------------------------------------------ chaos
def test_parse_kills() -> None:
    assert parse_kills("gvt:2, pgpu:2,guest") == {"gvt": 2, "pgpu": 2, "guest": 1}
    for bad in ("gvt:0", "gvt:x", ":2"):
        with pytest.raises(ChaosError):
            parse_kills(bad)


@given(st.dictionaries(st.sampled_from(["gvt", "pgpu", "guest", "vhm"]), st.integers(1, 3), min_size=1),
       st.floats(0.0, 3.0), st.integers(0, 2**32))
def test_schedule_kills_never_overlap_and_stay_in_the_run(kills: dict[str, int], restart: float, seed: int) -> None:
    duration = 4 + sum(kills.values()) * (restart + 5.0) * 1.5
    plan = plan_schedule(duration, kills, restart, seed)
    assert sorted(k.service for k in plan) == sorted(s for s, n in kills.items() for _ in range(n))
    assert [k.at for k in plan] == sorted(k.at for k in plan)
    for a, b in zip(plan, plan[1:]):
        assert b.at - a.at >= restart + 5.0 - 1e-6  # each recovery has its window
    assert plan[0].at >= 2.0 and plan[-1].at + restart + 5.0 <= duration - 2.0 + 1e-6
    assert plan == plan_schedule(duration, kills, restart, seed)  # seeded: reproducible


def test_schedule_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ChaosError, match="6 kills need"):
        plan_schedule(30, {"gvt": 2, "pgpu": 2, "guest": 2}, 1.0, 0)
    assert len(plan_schedule(60, {"gvt": 2, "pgpu": 2, "guest": 2}, 1.0, 0)) == 6


# ------------------------------------------------------------------------------------------- placement
def test_place_fills_free_slots_in_guest_sized_chunks() -> None:
    plans = place(10, {0: 5, 1: 7}, per_guest=4)
    assert [(p.stack, p.vms) for p in plans] == [(0, 4), (0, 1), (1, 4), (1, 1)]
    assert sum(p.vms for p in plans) == 10
    assert len({p.index for p in plans}) == len(plans)
    with pytest.raises(ValueError, match="need 13 vGPU slots"):
        place(13, {0: 5, 1: 7}, 4)


@given(st.integers(1, 200), st.dictionaries(st.integers(0, 20), st.integers(0, 7), max_size=6),
       st.integers(1, 8))
def test_scale_out_then_place_always_fits(n: int, free: dict[int, int], per_guest: int) -> None:
    add = stacks_to_add(n, free)
    grown = {**free, **{100 + i: 7 for i in range(add)}}
    plans = place(n, grown, per_guest)
    assert sum(p.vms for p in plans) == n
    assert all(1 <= p.vms <= per_guest for p in plans)
    for stack in grown:
        assert sum(p.vms for p in plans if p.stack == stack) <= grown[stack]
    if add:
        assert sum(free.values()) + 7 * (add - 1) < n  # no stack more than needed
    loads = [sum(p.vms for p in plans if p.stack == k) for k in grown]
    # evenly: a stack more than one below the busiest one is full
    assert all(v >= max(loads) - 1 or v == grown[k] for k, v in zip(grown, loads))


# ------------------------------------------------------------------------------------------ aggregation
def feed(s: LoadStats, source: str, *events: dict) -> None:
    for ev in events:
        s.feed(source, ev, ev.get("t", T0))


def test_totals_sum_incarnations_and_never_invent_verified_workloads() -> None:
    s = LoadStats(T0, vms_requested=3)
    feed(s, "s0/g.0", {"event": "ready", "pid": 10, "t": T0},
         {"event": "vm_ready", "vm": 1, "name": "a", "t": T0 + 1},
         {"event": "stats", "submitted": 5, "verified": 4, "failed": 1, "t": T0 + 2},
         # killed here: a restarted incarnation begins with its ready line
         {"event": "ready", "pid": 11, "t": T0 + 3},
         {"event": "vm_ready", "vm": 7, "name": "a", "t": T0 + 4},
         {"event": "vm_done", "vm": 7, "name": "a", "submitted": 3, "verified": 3, "failed": 0, "failures": []},
         {"event": "done", "workloads_submitted": 3, "workloads_verified": 3, "workloads_failed": 0, "t": T0 + 5})
    feed(s, "s1/g.1", {"event": "ready", "pid": 12, "t": T0},
         {"event": "vm_ready", "vm": 1, "name": "b", "t": T0 + 1},
         {"event": "vm_done", "vm": 1, "name": "b", "submitted": 2, "verified": 1, "failed": 1,
          "failures": ["copy: GPU hang (no context_complete in 10.0s)"]})
    s.ended("s1/g.1", "terminated")
    fig = s.figures(T0 + 6)
    assert (fig["workloads_submitted"], fig["workloads_verified"], fig["workloads_failed"]) == (10, 8, 2)
    assert fig["vms_booted"] == 2  # "a" re-booted after its process restart is still one VM
    assert [g["ended"] for g in fig["guest_processes"]] == ["killed", "done", "terminated"]
    assert fig["failures_by_reason"] == {"copy: GPU hang": 1}
    # the killed incarnation reported one failure in stats only: no reason for it
    assert fig["unexplained_by_source"] == {"s0/g.0#10 (killed)": 1}
    assert len(fig["killed_guests"]) == 1
    problems = verdict(fig, chaos=True, kills=[])
    assert any("carry no reason" in p for p in problems)
    assert any("never reported done" in p and "s1/g.1" in p for p in problems)
    assert any("only 2 of 3 VMs" in p for p in problems)


def test_throughput_spreads_each_report_over_its_interval() -> None:
    s = LoadStats(T0, 1)
    feed(s, "g", {"event": "ready", "pid": 1, "t": T0},
         {"event": "stats", "verified": 20, "t": T0 + 2.0},  # 10/s over [0, 2)
         {"event": "stats", "verified": 50, "t": T0 + 2.5})  # 60/s over [2, 2.5)
    series = dict(s.throughput())
    assert series == {0.0: 10.0, 1.0: 10.0, 2.0: 30.0}
    assert sum(series.values()) == 50


def _hist(*values_us: float) -> str:
    h = Histogram()
    for v in values_us:
        h.record_us(v)
    return h.encode()


def test_latency_merges_the_guests_histograms_exactly() -> None:
    # process a: 100 fast MMIO round trips (10 us); process b: 99 at 1 ms and one at 5 ms. A count-weighted mean
    # of the two p99s (the old merge) would say ~500 us; the true p99 of the 200 ioreqs is 1 ms, p50 is 10 us.
    s = LoadStats(T0, 2)
    feed(s, "a", {"event": "ready", "pid": 1}, {"event": "done", "ioreq_hist": {"MMIO": _hist(*[10] * 100)}})
    feed(s, "b", {"event": "ready", "pid": 2}, {"event": "done", "ioreq_hist": {"MMIO": _hist(*[1000] * 99, 5000),
                                                                              "PIO": _hist(20, 30)}})
    lat = s.latency()
    assert lat["MMIO"]["count"] == 200 and lat["PIO"]["count"] == 2
    assert lat["MMIO"]["p50"] == pytest.approx(10, rel=0.01)
    assert lat["MMIO"]["p90"] == pytest.approx(1000, rel=0.01)
    assert lat["MMIO"]["p99"] == pytest.approx(1000, rel=0.01)
    assert lat["MMIO"]["max"] == pytest.approx(5000, rel=0.01)
    cdf = s.latency_cdf()["MMIO"]
    assert cdf[-1][1] == 1.0 and all(x[1] <= y[1] for x, y in zip(cdf, cdf[1:]))
    # a restarted incarnation's histogram adds to the killed one's (each is cumulative for its own process)
    feed(s, "a", {"event": "ready", "pid": 3}, {"event": "stats", "ioreq_hist": {"MMIO": _hist(10)}})
    assert s.latency()["MMIO"]["count"] == 201


def test_verdict_without_chaos_demands_every_workload_verified() -> None:
    s = LoadStats(T0, 1)
    feed(s, "g", {"event": "ready", "pid": 1}, {"event": "vm_ready", "name": "a"},
         {"event": "vm_done", "name": "a", "submitted": 4, "verified": 4, "failed": 0},
         {"event": "done", "workloads_submitted": 4, "workloads_verified": 4, "workloads_failed": 0})
    assert verdict(s.figures(T0 + 1), chaos=False, kills=[]) == []
    # a VM that booted and verified nothing (its workloads all queued behind others') fails the run
    idle = LoadStats(T0, 2)
    feed(idle, "g", {"event": "ready", "pid": 1}, {"event": "vm_ready", "name": "a"},
         {"event": "vm_ready", "name": "b"},
         {"event": "vm_done", "name": "a", "submitted": 3, "verified": 3, "failed": 0},
         {"event": "vm_done", "name": "b", "submitted": 0, "verified": 0, "failed": 0},
         {"event": "done", "workloads_submitted": 3, "workloads_verified": 3, "workloads_failed": 0})
    assert idle.figures(T0 + 1)["vms_verifying"] == 1
    assert verdict(idle.figures(T0 + 1), chaos=False, kills=[]) == ["1 of 2 booted VMs verified no workload"]
    s2 = LoadStats(T0, 1)
    feed(s2, "g", {"event": "ready", "pid": 1}, {"event": "vm_ready", "name": "a"},
         {"event": "vm_done", "name": "a", "failed": 1, "failures": ["store: bad fence"]},
         {"event": "done", "workloads_submitted": 4, "workloads_verified": 3, "workloads_failed": 1})
    assert verdict(s2.figures(T0 + 1), chaos=True, kills=[]) == []  # failure with its reason: fine under chaos
    assert any("1 workloads failed" in p for p in verdict(s2.figures(T0 + 1), chaos=False, kills=[]))
    assert any("not recovered" in p for p in verdict(s.figures(T0 + 1), True,
                                                      [{"service": "gvt", "recovered": False, "error": ""}]))
    words = explain(s2.figures(T0 + 1), True, [], [])
    assert words[0].startswith("PASS") and any("allowed under chaos" in w for w in words)
    slow = [{"service": "gvt", "target": "s0/gvt", "at": 3.0, "recovered": True, "serving_s": 10.43}]
    assert any("served again only 10.43 s" in p for p in verdict(s.figures(T0 + 1), True, slow, bound=10.0))
    assert verdict(s.figures(T0 + 1), True, [{**slow[0], "serving_s": 9.9}], bound=10.0) == []


def test_a_workload_completed_twice_fails_the_run_even_under_chaos() -> None:
    s = LoadStats(T0, 1)
    feed(s, "g", {"event": "ready", "pid": 1}, {"event": "vm_ready", "name": "a"},
         {"event": "vm_done", "name": "a", "submitted": 4, "verified": 4, "failed": 0},
         {"event": "done", "workloads_submitted": 4, "workloads_verified": 4, "workloads_failed": 0,
          "unexpected_completions": 1})
    fig = s.figures(T0 + 1)
    assert fig["unexpected_completions"] == 1
    assert verdict(fig, chaos=True, kills=[]) == ["1 workload completion(s) arrived with no request waiting: "
                                                  "completed twice"]
    # after a declared hang a late completion is expected: the hang is the failure, with its reason
    hung = LoadStats(T0, 1)
    feed(hung, "g", {"event": "ready", "pid": 1}, {"event": "vm_ready", "name": "a"},
         {"event": "vm_done", "name": "a", "submitted": 4, "verified": 3, "failed": 1,
          "failures": ["store on rcs: DriverError: rcs: GPU hang (no context_complete in 3s)"]},
         {"event": "done", "workloads_submitted": 4, "workloads_verified": 3, "workloads_failed": 1,
          "unexpected_completions": 1})
    assert verdict(hung.figures(T0 + 1), chaos=True, kills=[]) == []


def test_a_vm_that_never_comes_back_after_a_kill_fails_the_run() -> None:
    # stack 0's pgpu is killed at 10 s: vm "x" resets and recovers after 1.2 s of its own outage; vm "y"
    # resets and never recovers; vm "z" (no reset at all) stops verifying workloads. Stack 1 is untouched.
    s = LoadStats(T0, 4)
    feed(s, "s0/load-guest.0", {"event": "ready", "pid": 1, "t": T0},
         *({"event": "vm_ready", "name": n, "t": T0 + 1} for n in "xyz"),
         {"event": "stats", "verified_by_vm": {"x": 5, "y": 5, "z": 5}, "t": T0 + 9},
         {"event": "vm_reset", "vm": 1, "name": "x", "reason": "gpu reset", "t": T0 + 10.4},
         {"event": "vm_reset", "vm": 2, "name": "y", "reason": "gpu reset", "t": T0 + 10.5},
         {"event": "vm_reset", "vm": 2, "name": "y", "reason": "gpu reset", "t": T0 + 12.0},  # twice: one VM
         {"event": "vm_recovered", "vm": 4, "name": "x", "recovery_s": 1.2, "t": T0 + 11.6},
         {"event": "stats", "verified_by_vm": {"x": 9, "y": 5, "z": 5}, "t": T0 + 20})
    feed(s, "s1/load-guest.1", {"event": "ready", "pid": 2, "t": T0}, {"event": "vm_ready", "name": "w", "t": T0 + 1},
         {"event": "stats", "verified_by_vm": {"w": 5}, "t": T0 + 9}, {"event": "stats", "verified_by_vm": {"w": 5},
                                                                       "t": T0 + 20})
    kills = [{"service": "pgpu", "target": "s0/pgpu", "at": 10.0, "restart_after": 1.0, "recovered": True,
              "serving_s": 0.8}]
    attach_recovery(kills, s)
    k = kills[0]
    assert k["vm_recovery_s"] == {"x": 1.2} and k["vms_not_back"] == ["y", "z"] and k["vms_reset"] == 3
    problems = verdict(s.figures(T0 + 21), True, kills)
    assert any("2 VM(s) never came back" in p and "y, z" in p for p in problems)
    words = " ".join(explain(s.figures(T0 + 21), True, kills, problems))
    assert words.startswith("FAIL") and "2 never came back" in words


def test_recovery_is_measured_per_vm_from_its_own_outage() -> None:
    s = LoadStats(T0, 3)
    feed(s, "s0/load-guest.0", {"event": "ready", "pid": 1, "t": T0},
         {"event": "vm_reset", "vm": 1, "name": "a", "reason": "gvt lost", "t": T0 + 10.5},
         {"event": "vm_recovered", "vm": 2, "name": "a", "recovery_s": 1.9, "t": T0 + 12.4})
    feed(s, "s1/load-guest.1", {"event": "ready", "pid": 2, "t": T0},
         {"event": "vm_reset", "vm": 1, "name": "b", "reason": "other stack", "t": T0 + 10.6})
    feed(s, "s0/load-guest.2", {"event": "ready", "pid": 3, "t": T0 + 0.5},
         {"event": "vm_ready", "name": "x", "t": T0 + 1.0})
    s.feed("s0/load-guest.2", {"event": "ready", "pid": 4}, T0 + 21.2)
    s.feed("s0/load-guest.2", {"event": "vm_ready", "name": "x", "t": T0 + 22.0}, T0 + 22.0)
    # a later kill of the same guest: its reboot must not count as the first kill's recovery
    s.feed("s0/load-guest.2", {"event": "ready", "pid": 5}, T0 + 40.2)
    s.feed("s0/load-guest.2", {"event": "vm_ready", "name": "x", "t": T0 + 49.0}, T0 + 49.0)
    kills = [{"service": "gvt", "target": "s0/gvt", "at": 10.0, "restart_after": 1.0},
             {"service": "guest", "target": "s0/load-guest.2", "at": 20.0, "restart_after": 1.0},
             {"service": "guest", "target": "s0/load-guest.2", "at": 40.0, "restart_after": 1.0}]
    attach_recovery(kills, s)
    # the gvt kill reset one VM of stack 0 (b is another stack's), which measured its own outage
    assert kills[0]["vms_reset"] == 1 and kills[0]["vm_recovery_s"] == {"a": 1.9} and kills[0]["vms_not_back"] == []
    # each guest kill: VM x is back at the next incarnation's first vm_ready, measured from that kill
    assert kills[1]["vm_recovery_s"] == {"x": 2.0} and kills[1]["vms_recovered_s"] == pytest.approx(2.0)
    assert kills[2]["vm_recovery_s"] == {"x": 9.0}
    assert any("took longer than 5 s" in p and "x, 9.0 s" in p
               for p in verdict(s.figures(T0 + 50), True, [{**k, "recovered": True} for k in kills]))


# ------------------------------------------------------------------------------------------------ report
def test_report_files(tmp_path) -> None:
    s = LoadStats(T0, 1)
    feed(s, "s0/g", {"event": "ready", "pid": 1, "t": T0}, {"event": "vm_ready", "name": "a", "t": T0},
         {"event": "stats", "verified": 5, "failed": 0, "t": T0 + 1, "ioreq_hist": {"MMIO": _hist(5, 7)}},
         {"event": "done", "workloads_submitted": 9, "workloads_verified": 9, "workloads_failed": 0, "t": T0 + 2,
          "ioreq_hist": {"MMIO": _hist(5, 7, 9)}})
    kills = [{"service": "gvt", "target": "s0/gvt", "at": 0.5, "restart_after": 0.2, "ready_s": 0.3,
              "serving_s": 0.4, "vms_reset": 1, "vms_recovered_s": 1.2, "vm_recovery_s": {"a": 1.2},
              "vms_not_back": [], "recovered": True}]
    fig = s.figures(T0 + 2)
    data = {"figures": fig, "kills": kills, "problems": [], "verdict": explain(fig, True, kills, [])}
    files = write_report(str(tmp_path), data)
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["latency.png", "recovery.png", "report.json", "summary.md", "throughput.png", "workloads.png"]
    for f in files:
        if f.endswith(".png"):
            with open(f, "rb") as fh:
                assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.load(open(tmp_path / "report.json"))["figures"]["workloads_verified"] == 9
    summary = open(tmp_path / "summary.md").read()
    assert "PASS: every check held." in summary and "| 0.5 | gvt | s0/gvt | 0.3 | 0.4 | 1 | 1.2 | 0 |" in summary
    assert "approx" not in summary and "| MMIO | 3 |" in summary and "None" not in summary


# ------------------------------------------------------------------------------------ boot, resources
def test_boot_curve_reports_when_each_share_of_the_vms_ran() -> None:
    from gvtsim.orchestration.load import boot_curve
    tl = [{"t": float(t), "vms_running": n} for t, n in enumerate([0, 1, 3, 5, 8, 10, 9])]
    b = boot_curve(tl, 10)
    assert b["seconds_to"] == {"10%": 1.0, "25%": 2.0, "50%": 3.0, "75%": 4.0, "90%": 5.0, "100%": 5.0}
    assert b["peak_running"] == 10
    assert boot_curve(tl[:4], 10)["seconds_to"]["100%"] is None


def test_place_gives_each_plan_its_stack_type() -> None:
    plans = place(600, {0: 512, 1: 512}, 64, {0: "AcrnGT_dense_1_2", 1: "AcrnGT_dense_1_2"})
    assert sum(p.vms for p in plans) == 600 and {p.vgpu_type for p in plans} == {"AcrnGT_dense_1_2"}
    assert [p.vms for p in plans if p.stack == 0] == [64] * 4 + [44]  # spread evenly: 300 on each
    assert sum(p.vms for p in plans if p.stack == 1) == 300


def test_place_spreads_evenly_within_each_stacks_room_and_the_cap() -> None:
    plans = place(10, {0: 2, 1: 20, 2: 20}, per_guest=64)
    assert {p.stack: p.vms for p in plans} == {0: 2, 1: 4, 2: 4}  # the small stack full, the rest level
    capped = place(1024, {k: 512 for k in range(8)}, 64, per_stack=128)
    assert sorted({p.stack: 0 for p in capped}) == list(range(8))
    assert all(sum(p.vms for p in capped if p.stack == k) == 128 for k in range(8))
    with pytest.raises(ValueError, match="at 128 per stack"):
        place(1025, {k: 512 for k in range(8)}, 64, per_stack=128)


def test_scale_out_counts_stacks_at_the_cap() -> None:
    assert stacks_to_add(1024, {0: 512}, per_stack=512) == 1
    assert stacks_to_add(1024, {0: 512}, per_stack=512, cap=128) == 7  # 8 stacks of 128
    assert stacks_to_add(256, {}, per_stack=7, cap=128) == 37  # the real profile: the cap does not bind


def test_auto_think_paces_only_loads_too_big_to_run_back_to_back() -> None:
    assert auto_think(16, 2, cpus=2) == 0.0
    assert auto_think(64, 2, cpus=2) == 0.0  # 128 vCPUs on 2 cores: back to back
    assert auto_think(1024, 2, cpus=2) == 102.4  # 2,048 vCPUs offering 20 workloads/s
    assert auto_think(1024, 2, cpus=4) == 51.2


def test_chaos_and_auto_pacing_give_the_guests_a_long_hangcheck_and_every_load_nices_them() -> None:
    import argparse

    def pacing(**kw: object) -> tuple[float, float, list[str]]:
        base: dict[str, object] = dict(vms=64, vcpus=2, think=None, hang_timeout=0.0, chaos="", guest_nice=10)
        return guest_pacing(argparse.Namespace(**{**base, **kw}), {"--think", "--nice"}, cpus=2)

    assert pacing() == (0.0, 0.0, ["--nice", "10"])  # back to back, the guest's own hangcheck
    assert pacing(chaos="gvt:20") == (0.0, PACED_HANG_TIMEOUT, ["--hang-timeout", "30.0", "--nice", "10"])
    assert pacing(chaos="gvt:20", hang_timeout=4.0)[1:] == (4.0, ["--hang-timeout", "4.0", "--nice", "10"])
    think, hang, args = pacing(vms=1024)
    assert think == 102.4 and hang == PACED_HANG_TIMEOUT and args[:2] == ["--think", "102.4"]
    assert pacing(guest_nice=0)[2] == []
    assert guest_pacing(argparse.Namespace(vms=64, vcpus=2, think=None, hang_timeout=0.0, chaos="", guest_nice=10),
                        set(), cpus=2)[2] == []  # an older guest without --nice is not given it


def test_resource_sampler_measures_this_process(tmp_path) -> None:
    import os
    from gvtsim.orchestration.resources import ResourceSampler, service_of
    assert [service_of(n) for n in ("s3/gvt", "s0/load-guest.12", "s1/guest.2", "s0/vhm")] == \
        ["gvt", "guest", "guest", "vhm"]
    s = ResourceSampler()
    base = s.sample({"s0/vhm": os.getpid()}, 0, now=0.0)
    import mmap
    # 32 MB of fresh pages, touched (an anonymous map: malloc could hand back memory already resident)
    blob = mmap.mmap(-1, 32 << 20)
    for i in range(0, len(blob), 4096):
        blob[i] = 1
    s.samples.clear()
    s.sample({"s0/vhm": os.getpid(), "s0/gone": 2 ** 22 + 7}, 8, now=1.0)  # a vanished pid is skipped
    summary = s.summary(base)
    assert summary["pss_by_service_mb"]["vhm"] >= base["pss_mb"] + 30
    assert summary["pss_per_vm_kb"] >= 30 * 1024 / 8
    blob.close()


def test_lost_sessions_counts_only_unplanned_losses_in_the_window(tmp_path) -> None:
    from gvtsim.orchestration.loadstats import lost_sessions
    log = tmp_path / "s0_vhm.err"
    lines = [
        {"event": "peer_lost", "peer_role": "guest", "peer_id": "g1", "reason": "silent for 9.1s",
         "timestamp": "2026-12-01T18:00:10.000000Z"},
        {"event": "peer_lost", "peer_role": "guest", "peer_id": "g2", "reason": "bye: done",
         "timestamp": "2026-12-01T18:00:11.000000Z"},
        {"event": "peer_lost", "peer_role": "probe", "peer_id": "health", "reason": "disconnected",
         "timestamp": "2026-12-01T18:00:12.000000Z"},
        {"event": "server_lost", "peer": "pgpu", "reason": "server said BYE (shutdown)",
         "timestamp": "2026-12-01T18:00:13.000000Z"},
        {"event": "server_lost", "peer": "pgpu", "reason": "disconnected", "timestamp": "2026-12-01T18:05:00.000000Z"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    from datetime import datetime
    at = datetime.fromisoformat("2026-12-01T18:01:00+00:00").timestamp()
    assert [e["peer_id"] for e in lost_sessions(str(log), None, at)] == ["g1"]  # the shutdown one is after
    assert len(lost_sessions(str(log))) == 2
    fig = {"vms_booted": 1, "vms_requested": 1, "vms_verifying": 1, "workloads_verified": 1, "workloads_failed": 0,
           "unexplained_failures": 0, "guest_processes": [],
           "sessions_lost": [{"service": "s0/vhm", "peer": "g1", "reason": "silent for 9.1s", "at": ""}]}
    assert verdict(fig, chaos=False, kills=[]) == ["1 session(s) declared lost with no fault injected: "
                                                   "s0/vhm lost g1 (silent for 9.1s)"]
    assert verdict(fig, chaos=True, kills=[]) == []


def test_a_vm_whose_run_ended_cleanly_after_a_late_kill_is_not_counted_as_never_back() -> None:
    s = LoadStats(T0, 2)
    for source in ("s0/load-guest.0", "s0/load-guest.1"):
        s.feed(source, {"event": "ready", "pid": 1, "t": T0}, T0)
    for t, n in ((T0 + 1, 1), (T0 + 2, 2)):  # both VMs verify before the kill at 3.0 s, neither after
        s.feed("s0/load-guest.0", {"event": "stats", "verified": n, "verified_by_vm": {"done-vm": n}, "t": t}, t)
        s.feed("s0/load-guest.1", {"event": "stats", "verified": n, "verified_by_vm": {"hung-vm": n}, "t": t}, t)
    # the run ends: one VM reports done with nothing failed, the other ends with a failure (its workload hung)
    s.feed("s0/load-guest.0", {"event": "vm_done", "vm": 1, "name": "done-vm", "state": "done", "verified": 2,
                               "failed": 0, "t": T0 + 4}, T0 + 4)
    s.feed("s0/load-guest.1", {"event": "vm_done", "vm": 1, "name": "hung-vm", "state": "done", "verified": 2,
                               "failed": 1, "t": T0 + 4}, T0 + 4)
    kills = [{"service": "vhm", "target": "s0/vhm", "at": 3.0, "restart_after": 1.0}]
    attach_recovery(kills, s)
    assert kills[0]["vms_not_back"] == ["hung-vm"]
