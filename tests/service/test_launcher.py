"""The native launcher for real: `gvtsim up` from docker-compose.yml, `status --json`, `chaos kill` with a
restart, `down` leaving no process behind (every recorded process group checked in /proc)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gvtsim.orchestration.launcher import RunState, group_members

pytestmark = pytest.mark.service

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")


def gvtsim(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gvtsim.orchestration", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def run_dir(tmp_path) -> Iterator[str]:
    path = str(tmp_path / "run")
    yield path
    state = RunState.load(path)
    gvtsim("down", "--run-dir", path)
    if state is not None:  # teardown never leaves processes, even when a test failed half-way
        assert not [p.name for p in state.procs.values() if p.pid and group_members(p.pid)]


def status(run_dir: str) -> dict[str, Any]:
    r = gvtsim("status", "--run-dir", run_dir, "--json")
    return json.loads(r.stdout)


def test_up_status_chaos_down(run_dir: str) -> None:
    r = gvtsim("up", "-f", COMPOSE, "--run-dir", run_dir, "--stacks", "2", "--json",
               env={"GVTSIM_GUEST_WORKLOADS": "2", "GVTSIM_GUEST_REPLICAS": "1"})
    assert r.returncode == 0, r.stderr
    up = json.loads(r.stdout)
    assert sorted(up["procs"]) == ["s0/guest", "s0/gvt", "s0/pgpu", "s0/vhm", "s1/guest", "s1/gvt", "s1/pgpu",
                                   "s1/vhm"]
    assert up["procs"]["s0/vhm"]["endpoint"] != up["procs"]["s1/vhm"]["endpoint"]
    assert gvtsim("up", "-f", COMPOSE, "--run-dir", run_dir).returncode == 1  # already up

    st = status(run_dir)
    assert st["healthy"] and {s["health"] for s in st["services"]} == {"healthy", "running"}
    gvt_before = next(s for s in st["services"] if s["name"] == "s1/gvt")

    r = gvtsim("chaos", "--run-dir", run_dir, "--json", "kill", "gvt", "--stack", "1", "--restart-after", "0.3")
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and rec["recovered"], rec
    assert rec["target"] == "s1/gvt" and rec["old_pid"] == gvt_before["pid"] != rec["new_pid"]
    assert rec["serving_s"] is not None  # the time is a figure (chaos reports it), not a timed assertion
    st = status(run_dir)
    gvt_after = next(s for s in st["services"] if s["name"] == "s1/gvt")
    assert gvt_after["restarts"] == 1 and gvt_after["epoch"] != gvt_before["epoch"]
    assert not group_members(gvt_before["pid"])  # the old incarnation is gone
    # the restarted gvt (the same id, s1-gvt) carried stack 1's idle VM's vGPU on from its saved state
    # (docs/STATE.md): the VM never lost it, status is healthy (a VM left without one is stack_summary's
    # problem "runs without a vGPU": tests/unit/test_orch_status.py)
    for _ in range(100):
        st = status(run_dir)
        if st["healthy"]:
            break
    assert st["healthy"], st["problems"]
    assert st["stacks"]["1"]["vgpus"] == st["stacks"]["1"]["vms"] >= 1
    text = gvtsim("status", "--run-dir", run_dir)
    assert text.returncode == 0 and "None" not in text.stdout
    # restarting the guest gives its VMs vGPUs again
    r = gvtsim("restart", "s1/guest", "--run-dir", run_dir, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr
    for _ in range(100):  # the new guest boots its VM after its ready line: poll status (an event would be in
        st = status(run_dir)  # the guest's stdout, which status does not read)
        if st["healthy"]:
            break
    assert st["healthy"], st["problems"]
    assert st["stacks"]["1"]["vgpus"] == st["stacks"]["1"]["vms"] >= 1

    state = RunState.load(run_dir)
    assert state is not None
    # every health check (up, chaos, status) named the service's own CURVE key: none cost a failed handshake
    for p in state.procs.values():
        with open(p.err) as f:
            assert "curve_handshake_failed" not in f.read(), p.name
    pgids = [p.pid for p in state.procs.values()]
    r = gvtsim("down", "--run-dir", run_dir, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["left"] == []
    assert not [g for g in pgids if group_members(g)]
    assert RunState.load(run_dir) is None
    assert gvtsim("status", "--run-dir", run_dir).returncode == 3  # nothing is up


def test_up_reports_a_service_that_cannot_start(run_dir: str, tmp_path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  broken:\n"
                   "    command: [gvtsim, vhm, --bind, 'tcp://0.0.0.0:5555', --ram-max-run, '0']\n"
                   "    healthcheck: {test: [CMD, gvtsim, health, 'tcp://127.0.0.1:5555'], interval: 1s}\n")
    r = gvtsim("up", "-f", str(bad), "--run-dir", run_dir, "--timeout", "10")
    assert r.returncode == 1 and "s0/broken exited during start-up" in r.stderr
    assert RunState.load(run_dir) is None  # what started was torn down


def test_up_with_a_taken_port_says_so_in_one_line(run_dir: str, tmp_path) -> None:
    with socket.socket() as held:  # something else holds the port vhm is told to bind
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        compose = tmp_path / "compose.yml"
        endpoint = f"tcp://127.0.0.1:{port}"
        compose.write_text("services:\n  vhm:\n"
                           f"    command: [gvtsim, vhm, --bind, '{endpoint}']\n"
                           f"    healthcheck: {{test: [CMD, gvtsim, health, '{endpoint}'], interval: 1s}}\n")
        r = gvtsim("up", "-f", str(compose), "--run-dir", run_dir, "--port-offset", "0", "--timeout", "20")
    # vhm exits with its error at once (it once hung in zmq_ctx_term on the unbound socket, and `up` could only
    # say "not ready within 20 s"), and up says what to do, in one line without a traceback
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "s0/vhm exited during start-up" in r.stderr and "its port is taken" in r.stderr, r.stderr
    assert "--port-offset auto" in r.stderr and "Traceback" not in r.stderr and "\\n" not in r.stderr
    assert RunState.load(run_dir) is None
