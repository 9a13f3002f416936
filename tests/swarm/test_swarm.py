"""Host stacks on a real swarm: one stack per node, status over all of them, a load across all of them
(every workload verified on every stack, a row per node), a killed gvt container recovered by the engine
(and the stack serving a fresh load again), everything removed.

One deployment for the module; the tests run in file order. Needs the swarm of ``.ci/swarm-tier``
(DOCKER_HOST: its manager; the nodes labelled gvtsim.node=n1.. and gvtsim.engine=their socket).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODES = int(os.environ.get("GVTSIM_SWARM_NODES", "2"))
VMS = int(os.environ.get("GVTSIM_SWARM_VMS", "14"))  # the acceptance figure; fewer only to try on a busy machine
GVTSIM = [sys.executable, "-m", "gvtsim.orchestration"]
PREFIX = "gvtsim-ci"


def gvtsim(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*GVTSIM, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    sys.stderr.write(r.stderr[-4000:])
    return r


def status() -> dict[str, Any]:
    r = gvtsim("status", "--swarm", "--json", timeout=120)
    assert r.stdout.strip(), r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def stacks() -> Iterator[list[str]]:
    # the stacks' own guest replicas off: the load's VMs take every vGPU slot (7 per stack)
    r = gvtsim("swarm", "deploy", "--stacks", str(NODES), "--prefix", PREFIX, "--guest-replicas", "0",
               "--wait", "240")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        yield [f"{PREFIX}{k}" for k in range(NODES)]
    finally:
        print(subprocess.run(["docker", "service", "ls"], capture_output=True, text=True).stdout)
        rm = gvtsim("swarm", "rm", "--prefix", PREFIX, timeout=180)
        left = subprocess.run(["docker", "service", "ls", "-q"], capture_output=True, text=True).stdout.split()
        assert rm.returncode == 0 and not left, (rm.stdout, rm.stderr, left)


def test_one_stack_per_node(stacks: list[str]) -> None:
    st = status()
    assert st["healthy"], st
    assert sorted(st["stacks"]) == stacks
    nodes = [st["stacks"][k]["node"] for k in stacks]
    assert len(set(nodes)) == NODES, nodes  # every stack on its own node
    for s in st["services"]:  # a stack's services all on its node (its machine memory is node-local)
        if s["replicas"] != "0/0":
            assert s["node"] == st["stacks"][s["stack"]]["node"], s
    for k in stacks:  # probed on its node: vhm and gvt answer, all 7 vGPU slots free
        assert st["stacks"][k]["vgpu_slots_free"] == 7, st["stacks"][k]


def test_load_across_nodes(stacks: list[str], tmp_path: Any) -> None:
    r = gvtsim("load", "--swarm", "--vms", str(VMS), "--duration", "30", "--report", str(tmp_path), "--json",
               timeout=400)
    assert r.stdout.strip(), r.stderr[-3000:]
    data = json.loads(r.stdout)
    fig = data["figures"]
    print({k: fig[k] for k in ("vms_booted", "workloads_submitted", "workloads_verified", "workloads_failed",
                               "workloads_per_s", "ramp_s")})
    for n in data["nodes"]:
        print(n)
    for source, lines in data.get("guest_logs", {}).items():  # only when something went wrong
        print(f"--- {source}", *lines[-8:], sep="\n")
    assert r.returncode == 0 and not data["problems"], data["problems"]
    assert fig["vms_booted"] == VMS
    assert fig["workloads_submitted"] == fig["workloads_verified"] > 0 and fig["workloads_failed"] == 0
    assert len(data["nodes"]) == NODES  # a row per node
    for row in [*data["nodes"], *data["stacks"]]:
        assert row["vms_booted"] == row["vms_requested"] > 0, row
        assert row["workloads_submitted"] == row["workloads_verified"] > 0 and row["workloads_failed"] == 0, row
    assert sum(n["workloads_verified"] for n in data["nodes"]) == fig["workloads_verified"]
    assert sorted(s["stack"] for s in data["stacks"]) == stacks  # guests ran against every stack
    summary = (tmp_path / "summary.md").read_text()
    for n in data["nodes"]:
        assert f"| {n['node']} |" in summary


def healthy_status(timeout: float = 180.0) -> dict[str, Any]:
    """The status once every stack is healthy again (a load leaves its stacks busy for a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        st = status()
        if st["healthy"] or time.monotonic() > deadline:
            return st
        time.sleep(2)


def test_killed_gvt_recovered_by_engine(stacks: list[str]) -> None:
    victim = stacks[-1]
    st = healthy_status()
    assert st["healthy"], st
    before = {s["service"]: s for s in st["services"] if s["stack"] == victim}
    r = gvtsim("chaos", "--swarm", "--json", "kill", "gvt", "--stack", victim, timeout=180)
    rec = json.loads(r.stdout)
    print(f"kill gvt of {victim}: {rec}")
    assert r.returncode == 0 and rec["recovered"], rec
    assert rec["new_pid"] and rec["new_pid"] != rec["old_pid"]  # a new container, started by the engine
    after = status()
    assert after["healthy"], after
    gvt = next(s for s in after["services"] if s["stack"] == victim and s["service"] == "gvt")
    assert gvt["node"] == before["gvt"]["node"] and gvt["restarts"] >= 1, gvt  # same node, one restart more
    # serving again: a fresh load verifies on every stack, the restarted one included
    load = gvtsim("load", "--swarm", "--vms", str(NODES), "--vms-per-guest", "1", "--duration", "5", "--json",
                  timeout=300)
    data = json.loads(load.stdout)
    assert load.returncode == 0 and not data["problems"], data["problems"]
    assert {s["stack"] for s in data["stacks"]} == set(stacks)
