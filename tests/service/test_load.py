"""`gvtsim load` against a native run: placement with scale-out, verified workloads, the report files; and a
short chaos run (a load guest killed and restarted) whose report gives the kill's recovery."""

from __future__ import annotations

import json
import os

import pytest

from gvtsim.orchestration.launcher import RunState, group_members

from test_launcher import COMPOSE, gvtsim, run_dir  # noqa: F401  (fixture)

pytestmark = pytest.mark.service


def test_load_scales_out_verifies_and_reports(run_dir: str, tmp_path) -> None:  # noqa: F811
    assert gvtsim("up", "-f", COMPOSE, "--run-dir", run_dir, "--no-guests").returncode == 0
    report = tmp_path / "report"
    r = gvtsim("load", "--run-dir", run_dir, "--vms", "9", "--vms-per-guest", "5", "--duration", "3",
               "--report", str(report), "--json", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(r.stdout)
    fig = data["figures"]
    assert data["stacks_added"] == 1  # 9 VMs > 7 vGPUs of one stack
    assert fig["vms_booted"] == 9
    assert fig["workloads_verified"] == fig["workloads_submitted"] > 0 and fig["workloads_failed"] == 0
    assert fig["latency_us"]["MMIO"]["count"] > 0
    # all 9 VMs ran together for the whole measured window (the 3 s after the ramp-up; the timeline is sampled
    # every 0.2 s), not only part of it (a 15 s run once had all its VMs up together for about 7 s)
    assert fig["all_vms_up_s"] >= 3 - 0.5, (fig["all_vms_up_s"], fig["ramp_s"])
    assert "load:" in r.stderr  # progress while it runs
    assert sorted(os.listdir(report)) == ["latency.png", "report.json", "summary.md", "throughput.png",
                                          "workloads.png"]
    state = RunState.load(run_dir)
    assert state is not None and state.stacks == [0, 1]
    assert not [p for p in state.procs.values() if p.owner == "load"]  # the load's guests are gone
    st = json.loads(gvtsim("status", "--run-dir", run_dir, "--json").stdout)
    assert st["totals"]["vgpus"] == 0  # and their VMs with them


def test_load_with_a_guest_kill_reports_recovery(run_dir: str, tmp_path) -> None:  # noqa: F811
    assert gvtsim("up", "-f", COMPOSE, "--run-dir", run_dir, "--no-guests").returncode == 0
    r = gvtsim("load", "--run-dir", run_dir, "--vms", "4", "--vms-per-guest", "2", "--duration", "10",
               "--chaos", "guest:1", "--restart-after", "0.5", "--seed", "7", "--report", str(tmp_path / "rep"),
               # how fast VMs come back is a figure (below), not a timed assertion: a generous bound
               "--recovery-bound", "60", "--json", timeout=120)
    data = json.loads(r.stdout)
    assert r.returncode == 0, (data["problems"], r.stderr[-3000:])
    [kill] = data["kills"]
    assert kill["service"] == "guest" and kill["recovered"] and kill["target"].startswith("s0/load-guest.")
    assert kill["vms_recovered_s"] is not None and kill["vms_not_back"] == []
    assert set(kill["vm_recovery_s"]) and all(v > 0 for v in kill["vm_recovery_s"].values())  # per VM, own outage
    procs = data["figures"]["guest_processes"]
    assert [p["ended"] for p in procs].count("killed") == 1 and len(procs) == 3
    killed = next(p for p in procs if p["ended"] == "killed")
    assert not group_members(killed["pid"])
    other = [p for p in procs if p["source"] != kill["target"]]
    assert other[0]["workloads_failed"] == 0  # a guest process restart disturbs no other VM
    assert os.path.exists(tmp_path / "rep" / "recovery.png")
