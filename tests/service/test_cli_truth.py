"""What the CLI prints is true: ctl refuses what it cannot do (and says why in one line), finds gvt from the
run directory, status/health/chaos/restart/up name what is wrong and what to do."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from gvtsim.orchestration import cli
from gvtsim.orchestration.launcher import RunState
from test_launcher import COMPOSE, gvtsim

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[str]:
    """One stack with one guest process (one VM), shared by the tests of this module."""
    path = str(tmp_path_factory.mktemp("cli") / "run")
    r = gvtsim("up", "-f", COMPOSE, "--run-dir", path, "--port-offset", "auto",
               env={"GVTSIM_GUEST_WORKLOADS": "1", "GVTSIM_GUEST_REPLICAS": "1"})
    assert r.returncode == 0, r.stderr
    yield path
    gvtsim("down", "--run-dir", path)


def ctl(run: str, *args: str) -> tuple[int, Any, str]:
    r = gvtsim("ctl", *args, "--run-dir", run, "--json")
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else None, r.stderr.strip()


def avail(run: str, vtype: str = "GVTg_V5_8") -> int:
    code, out, err = ctl(run, "types")
    assert code == 0, err
    return next(t["avail"] for t in out["types"] if t["name"] == vtype)


def one_vm(run: str) -> int:
    for _ in range(200):  # the guest boots its VM after `up` returns: wait until vhm lists it
        st = json.loads(gvtsim("status", "--run-dir", run, "--json").stdout)
        if st["stacks"]["0"]["vgpus"] >= 1:
            return int(st["stacks"]["0"]["vgpu_list"][0]["vm"])
    raise AssertionError("the guest's VM never got its vGPU")


def test_ctl_finds_gvt_in_the_run_dir_and_takes_flags_after_the_subcommand(run: str) -> None:
    r = gvtsim("ctl", "types", "--json", "--run-dir", run, "--stack", "0")  # as README writes it
    assert r.returncode == 0, r.stderr
    assert {t["name"] for t in json.loads(r.stdout)["types"]} >= {"GVTg_V5_8", "GVTg_V5_4"}
    r = gvtsim("ctl", "list", "--run-dir", run, "--stack", "7")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no host stack 7" in r.stderr


def test_ctl_create_for_a_vm_that_does_not_exist_is_refused_and_uses_no_slot(run: str) -> None:
    before = avail(run)
    code, out, err = ctl(run, "create", "GVTg_V5_8", "--vm", "222")
    assert code == 1 and out["error"] == "no_such_vm" and "vm 222 does not exist" in err
    # without the run's vhm to ask, gvt itself rolls the vGPU back when vhm refuses to attach it
    gvt = RunState.load(run).endpoint(0, "gvt")
    r = gvtsim("ctl", "create", "GVTg_V5_8", "--vm", "222", "--endpoint", gvt)
    assert r.returncode == 1 and "vhm refused to attach" in r.stderr and "vgpu 222" not in r.stdout.lower()
    assert avail(run) == before
    code, out, _ = ctl(run, "list")
    assert 222 not in [v["vm"] for v in out["vgpus"]]


def test_ctl_repeated_create_and_destroy_of_a_running_guest_say_so(run: str) -> None:
    vm = one_vm(run)
    code, out, err = ctl(run, "create", "GVTg_V5_8", "--vm", str(vm))
    assert code == 1 and out["error"] == "exists" and f"vm {vm} already has vGPU" in err
    code, out, err = ctl(run, "destroy", str(vm))
    assert code == 1 and out["error"] == "in_use" and "--force" in err
    code, out, _ = ctl(run, "list")
    assert vm in [v["vm"] for v in out["vgpus"]]  # still there


def test_ctl_unreachable_and_bad_endpoints_are_one_clear_line(tmp_path) -> None:
    r = gvtsim("ctl", "list", "--run-dir", str(tmp_path / "none"))
    assert r.returncode == 3 and "nothing is up" in r.stderr and "gvtsim up" in r.stderr
    r = gvtsim("ctl", "list", "--endpoint", "foo")
    assert r.returncode == 3 and "not a valid endpoint" in r.stderr and "ZMQError" not in r.stderr
    r = gvtsim("ctl", "list", "--endpoint", "tcp://127.0.0.1:1", "--timeout", "0.3")
    assert r.returncode == 3 and "no answer" in r.stderr and "TimeoutError" not in r.stderr
    for r in (gvtsim("health", "tcp://127.0.0.1:1", "--timeout", "0.3"), gvtsim("health", "foo")):
        assert r.returncode == 1 and r.stderr.count("\n") == 1
        assert "TimeoutError" not in r.stderr and "ZMQError" not in r.stderr


def test_chaos_names_the_valid_services_and_restart_and_up_say_what_to_do(run: str) -> None:
    r = gvtsim("chaos", "--run-dir", run, "kill", "foo")
    assert r.returncode == 2 and "no service 'foo'" in r.stderr and "gvt" in r.stderr and "vhm" in r.stderr
    r = gvtsim("restart", "foo", "--run-dir", run)
    assert r.returncode == 2 and "services: guest, gvt, pgpu, vhm" in r.stderr
    r = gvtsim("chaos", "--run-dir", run, "--json", "kill", "pgpu")  # no restart: stack 0's pgpu stays down
    assert r.returncode == 0 and json.loads(r.stdout)["recovered"]
    r = gvtsim("up", "-f", COMPOSE, "--run-dir", run)
    assert r.returncode == 1 and "s0/pgpu not running" in r.stderr and "gvtsim restart" in r.stderr
    r = gvtsim("restart", "pgpu", "--run-dir", run, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stderr
    assert json.loads(gvtsim("health", RunState.load(run).endpoint(0, "pgpu"), "--json").stdout)["ready"]


def test_demo_headline_counts_the_vms_that_failed_to_boot() -> None:
    # a GVTg_V5_1 takes half the graphics memory: the third VM's vGPU does not fit, so that VM never boots and
    # the headline must not say "all verified"
    r = gvtsim("demo", "--vms", "3", "--workloads", "1", "--types", "GVTg_V5_8,GVTg_V5_1", timeout=120)
    assert r.returncode == 1
    head = r.stdout.splitlines()[0]
    import re
    mt = re.match(r"gvtsim demo: FAIL: (\d) of 3 VMs ran to the end, (\d) of 3 workloads verified", head)
    assert mt and int(mt[1]) <= 2 and int(mt[2]) == int(mt[1]), head  # (a loaded machine may lose more of them)
    assert "did not finish" in r.stdout and "None" not in r.stdout
    r = gvtsim("demo", "--vms", "2", "--workloads", "2", "--json", timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["problems"] == [] and out["workloads_verified"] == 4
    assert out["rtt_us_by_type"]["MMIO"]["n"] == out["ioreqs_by_type"]["MMIO"]  # from the histogram itself


COMMANDS = sorted(cli.COMMANDS)  # every subcommand, present and future


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_written_for_users(command: str) -> None:
    r = gvtsim(command, "--help")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    for internal in ("DES" "IGN", "gvt-" "facts", "bri" "ef", ":class:", ":mod:", ":func:", "``", "None"):
        assert internal not in text, (command, internal)
    import re
    assert not re.search(r"\[GVTSIM_[A-Z0-9_]+\]", text)  # an environment variable always comes with its default


def test_load_refuses_an_unknown_type_and_an_impossible_chaos_plan_before_starting_anything(run: str) -> None:
    before = RunState.load(run)
    r = gvtsim("load", "--vms", "30", "--duration", "5", "--vgpu-type", "NOPE", "--run-dir", run)
    assert r.returncode == 2 and "unknown vGPU type 'NOPE'" in r.stderr and "GVTg_V5_8" in r.stderr
    assert "slots free" not in r.stderr and "scaling out" not in r.stderr
    r = gvtsim("load", "--vms", "30", "--duration", "5", "--chaos", "gvt:9", "--run-dir", run)
    assert r.returncode == 2 and "kills need" in r.stderr and "ramp-up" not in r.stderr
    r = gvtsim("load", "--vms", "1", "--duration", "30", "--chaos", "foo:1", "--run-dir", run)
    assert r.returncode == 2 and "foo" in r.stderr and "services: guest, gvt, pgpu, vhm" in r.stderr
    after = RunState.load(run)
    assert after.stacks == before.stacks and sorted(after.procs) == sorted(before.procs)  # nothing was added


def test_chaos_kill_of_a_guest_that_comes_back_reports_it_recovered(run: str) -> None:
    # (killing a guest once exited 1 with "error": "" although the guest had restarted)
    r = gvtsim("chaos", "--run-dir", run, "--json", "kill", "guest", "--restart-after", "0.3")
    rec = json.loads(r.stdout)
    assert r.returncode == 0 and rec["recovered"] and rec["error"] == "", (rec, r.stderr)
    assert rec["target"] == "s0/guest" and rec["new_pid"] != rec["old_pid"] and rec["ready_s"] is not None
    r = gvtsim("chaos", "--run-dir", run, "kill", "guest", "--restart-after", "0.3")
    assert r.returncode == 0 and "FAILED" not in r.stdout and "None" not in r.stdout, r.stdout + r.stderr
    assert "ready in" in r.stdout and "stack serving in" in r.stdout
