"""The swarm stack file derived from docker-compose.yml, VM spreading, clock alignment, the in-container
wait (orchestration/swarm.py, orchestration/swarmload.py): no Docker engine needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.orchestration.compose import ComposeError, load_topology
from gvtsim.orchestration.swarm import NODE_LABEL, SERVICE_LABEL, STACK_LABEL, SwarmError, assign, load_compose, \
    stack_document, swarm_ports, wait_prefix
from gvtsim.orchestration.swarmload import ClockAlign, spread

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")


@pytest.fixture(scope="module")
def doc() -> dict:
    return stack_document(load_compose(COMPOSE), {}, "gvtsim-s3", "rack2")


def test_every_service_of_the_compose_file_is_in_the_stack_placed_on_one_node(doc: dict) -> None:
    topo = load_topology(COMPOSE, env={})
    assert sorted(doc["services"]) == sorted(topo.services)
    for name, svc in doc["services"].items():
        deploy = svc["deploy"]
        assert f"node.labels.{NODE_LABEL} == rack2" in deploy["placement"]["constraints"]
        assert deploy["labels"] == {STACK_LABEL: "gvtsim-s3", SERVICE_LABEL: name}
        assert deploy["restart_policy"]["condition"] == "any"
        assert deploy["endpoint_mode"] == "dnsrr"
        assert "depends_on" not in svc and "build" not in svc
        assert svc["networks"] == ["hoststack"]
        assert svc.get("environment", {}) == dict(topo.services[name].environment)  # the compose file's, unchanged
        assert name == "keygen" or "machine-memory:/mem" in svc["volumes"]
        hc = dict(topo.services[name].healthcheck.__dict__) if topo.services[name].healthcheck else None
        if hc:  # the compose file's check, with at least 30 s per probe: swarm replaces unhealthy tasks
            assert svc["healthcheck"]["test"][1:] == list(hc["test"])
            assert svc["healthcheck"]["interval"] == "10s" and svc["healthcheck"]["timeout"] == "30s"
    assert doc["networks"]["hoststack"]["driver"] == "overlay"
    assert doc["volumes"]["machine-memory"]["driver_opts"]["type"] == "tmpfs"  # node-local machine memory


def test_depends_on_becomes_a_wait_for_the_dependencies_health_endpoints(doc: dict) -> None:
    topo = load_topology(COMPOSE, env={})
    for name, svc in doc["services"].items():
        cmd = svc["command"]
        # keygen's healthcheck is a local check (keys written), not an endpoint: not waited for
        deps = sorted(d for d in topo.services[name].depends_on if d != "keygen")
        if not deps:
            assert cmd == list(topo.services[name].command)
            continue
        assert cmd[:3] == ["gvtsim", "swarm", "wait"]
        sep = cmd.index("--")
        assert cmd[sep + 1:] == list(topo.services[name].command)  # then the compose command, as is
        waited = sorted(cmd[i + 1] for i, a in enumerate(cmd[:sep]) if a == "--ready")
        ports = {"vhm": 5555, "gvt": 5556, "pgpu": 5557}
        assert waited == sorted(f"tcp://{d}:{ports[d]}" for d in deps)
    probed = doc["services"]["gvt"]["healthcheck"]["test"]
    assert probed[-3:] == ["tcp://127.0.0.1:5556", "--server", "gvt"]  # probed in place, with gvt's own key
    assert wait_prefix(load_compose(COMPOSE), "vhm") == []


def test_interpolation_and_guest_replicas() -> None:
    compose = load_compose(COMPOSE)
    assert stack_document(compose, {"GVTSIM_GUEST_REPLICAS": "5"}, "s", "n")["services"]["guest"]["deploy"][
        "replicas"] == 5
    assert stack_document(compose, {}, "s", "n")["services"]["guest"]["deploy"]["replicas"] == 2
    assert stack_document(compose, {}, "s", "n", guest_replicas=0)["services"]["guest"]["deploy"]["replicas"] == 0
    assert {s["image"] for s in stack_document(compose, {}, "s", "n", image="reg.example/gvtsim:1")[
        "services"].values()} == {"reg.example/gvtsim:1"}
    assert stack_document(compose, {"GVTSIM_LOG_LEVEL": "debug"}, "s", "n")["services"]["vhm"]["environment"][
        "GVTSIM_LOG_LEVEL"] == "debug"


def test_secrets_pass_through_for_docker_stack_deploy() -> None:
    compose = load_compose(COMPOSE)
    compose["secrets"] = {"curve-gvt": {"file": "./keys/gvt.key_secret"}}
    compose["services"]["gvt"]["secrets"] = ["curve-gvt"]
    doc = stack_document(compose, {}, "s", "n")
    assert doc["secrets"] == {"curve-gvt": {"file": "./keys/gvt.key_secret"}}
    assert doc["services"]["gvt"]["secrets"] == ["curve-gvt"]


def test_a_dependency_without_healthcheck_is_refused() -> None:
    compose = load_compose(COMPOSE)
    compose["services"]["vhm"].pop("healthcheck")
    with pytest.raises(ComposeError, match="depends on vhm, which has no healthcheck"):
        stack_document(compose, {}, "s", "n")
    compose = load_compose(COMPOSE)
    compose["services"]["guest"].pop("image")
    with pytest.raises(ComposeError, match="guest: a swarm service needs an image"):
        stack_document(compose, {}, "s", "n")


def test_the_generated_stack_file_is_a_compose_file() -> None:
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "swarm", "config", "-f", COMPOSE,
                          "--node", "n1", "--stack", "gvtsim-s0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    import yaml
    assert yaml.safe_load(out.stdout)["services"]["vhm"]["deploy"]["placement"]["constraints"] == [
        f"node.labels.{NODE_LABEL} == n1"]


def test_assign_round_robin_and_no_labelled_node() -> None:
    assert assign(5, ["b", "a"]) == ["a", "b", "a", "b", "a"]
    with pytest.raises(SwarmError, match="docker node update --label-add gvtsim.node"):
        assign(1, [])


@given(st.dictionaries(st.sampled_from(["s0", "s1", "s2", "s3"]), st.integers(0, 7), min_size=1),
       st.integers(1, 28), st.integers(1, 5))
def test_spread_fills_evenly_within_free_slots(free: dict[str, int], n: int, per_guest: int) -> None:
    if n > sum(free.values()):
        with pytest.raises(ValueError, match="deploy more stacks"):
            spread(n, free, per_guest)
        return
    plans = spread(n, free, per_guest)
    per_stack = {k: sum(p.vms for p in plans if p.stack == k) for k in free}
    assert sum(per_stack.values()) == n
    assert all(per_stack[k] <= free[k] for k in free)
    assert all(1 <= p.vms <= per_guest for p in plans)
    # even: a stack gets less than another only when it is full
    for a in free:
        for b in free:
            if per_stack[a] + 1 < per_stack[b]:
                assert per_stack[a] == free[a]
    assert len({p.source for p in plans}) == len(plans)


def test_spread_14_vms_over_two_stacks() -> None:
    plans = spread(14, {"s0": 7, "s1": 7}, 4)
    assert [(p.stack, p.vms) for p in plans] == [("s0", 4), ("s0", 3), ("s1", 4), ("s1", 3)]


def test_clock_align_keeps_spacing_and_lines_up_with_ready() -> None:
    a = ClockAlign()
    assert a.event("g", {"event": "ready", "t": 5000.0}, 10.0)["t"] == 10.0
    assert a.event("g", {"event": "stats", "t": 5002.5}, 13.0)["t"] == 12.5  # its own spacing, not read time
    assert a.event("h", {"event": "ready", "t": 1.0}, 11.0)["t"] == 11.0  # another machine, another clock
    assert a.event("g", {"event": "vm_ready"}, 14.0) == {"event": "vm_ready"}


def test_wait_gives_up_on_an_endpoint_that_never_answers() -> None:
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "swarm", "wait", "--ready",
                          "tcp://127.0.0.1:9", "--timeout", "1", "--", "gvtsim", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1
    assert json.loads(out.stdout.splitlines()[-1])["not_ready"] == ["tcp://127.0.0.1:9"]


def test_wait_with_nothing_to_wait_for_execs_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "swarm", "wait", "--", "gvtsim", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage: gvtsim COMMAND" in out.stdout


def test_ports_are_published_in_host_mode_and_loopback_only_ports_are_left_out(doc: dict) -> None:
    # swarm refuses ingress-mode ports on a dnsrr service and cannot bind one address of a node
    for svc in doc["services"].values():
        assert all(p["mode"] == "host" for p in svc.get("ports", [])), svc.get("ports")
    assert swarm_ports(["127.0.0.1::9100", "127.0.0.1:8080:5558"]) == []
    assert swarm_ports(["9100", "8080:5558/udp", "0.0.0.0:81:80"]) == [
        {"target": 9100, "protocol": "tcp", "mode": "host"},
        {"target": 5558, "protocol": "udp", "mode": "host", "published": 8080},
        {"target": 80, "protocol": "tcp", "mode": "host", "published": 81}]
    assert swarm_ports([{"target": 9100, "host_ip": "127.0.0.1"}, {"target": 5, "published": 6}]) == [
        {"target": 5, "protocol": "tcp", "mode": "host", "published": 6}]


def test_free_slots_take_each_stacks_profile_default_type_when_no_type_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `load --swarm` without --vgpu-type counted the slots of type None (always 0) and refused every load
    from gvtsim.orchestration import swarmload
    from gvtsim.orchestration.swarm import SwarmStack

    def gvt_info(default: str, avail: int) -> dict:
        return {"gvt": {"info": {"profile": {"default_type": default},
                                 "types": [{"name": "GVTg_V5_8", "avail": 7}, {"name": default, "avail": avail}]}}}

    infos = {"a": gvt_info("GVTg_V5_8", 7), "b": gvt_info("AcrnGT_dense_1_2", 500)}
    monkeypatch.setattr(swarmload, "probe_stack", lambda c, st: infos[st.name])
    stacks = [SwarmStack("a"), SwarmStack("b")]
    assert swarmload.free_slots(None, stacks, None) == {"a": ("GVTg_V5_8", 7), "b": ("AcrnGT_dense_1_2", 500)}
    assert swarmload.free_slots(None, stacks, "GVTg_V5_8") == {"a": ("GVTg_V5_8", 7), "b": ("GVTg_V5_8", 7)}
