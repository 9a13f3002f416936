"""The compose model and its native translation (orchestration/compose.py): pure, no processes."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.orchestration.compose import ComposeError, NativeLayout, interpolate, load_topology, native_plan, \
    parse_duration, parse_topology, port_stride, translate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE = os.path.join(ROOT, "docker-compose.yml")


def test_interpolation_forms() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A}-${B:-x}-${EMPTY:-d}-${EMPTY-d}-$$-$A", env) == "1-x-d--$-1"
    with pytest.raises(ComposeError, match="B is required: set it"):
        interpolate("${B:?set it}", env)


@given(st.text(alphabet=st.characters(blacklist_characters="$"), max_size=30))
def test_interpolation_leaves_dollar_free_text_alone(text: str) -> None:
    assert interpolate(text, {}) == text


@pytest.mark.parametrize("text,seconds", [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), (3, 3.0), ("1h", 3600.0)])
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text, 0.0) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ComposeError):
        parse_duration("2 s", 0.0)


def test_the_real_compose_file() -> None:
    topo = load_topology(COMPOSE, {})
    assert topo.project == "gvtsim"
    assert topo.start_levels() == [["keygen"], ["vhm"], ["pgpu"], ["gvt"], ["guest"]]
    assert topo.services["guest"].replicas == 2
    assert topo.services["gvt"].depends_on == {"keygen": "service_healthy",
                                               "vhm": "service_healthy", "pgpu": "service_healthy"}
    assert topo.services["vhm"].healthcheck is not None
    assert topo.services["vhm"].healthcheck.test == ("gvtsim", "health", "tcp://127.0.0.1:5555", "--server", "vhm")
    assert topo.services["vhm"].healthcheck.interval == 2.0
    assert topo.services["guest"].volumes == {"machine-memory": "/mem", "keys": "/keys"}
    assert topo.ports() == [5555, 5556, 5557]
    assert port_stride(topo) == 10
    scaled = load_topology(COMPOSE, {"GVTSIM_GUEST_REPLICAS": "5", "GVTSIM_VMS_PER_GUEST": "3"})
    assert scaled.services["guest"].replicas == 5
    assert scaled.services["guest"].environment["GVTSIM_VMS"] == "3"


def test_curve_keys_in_the_compose_topology() -> None:
    """keygen writes the keys once into the keys volume; every other service waits for it, mounts the volume
    read-only and points GVTSIM_KEYS at it; natively the launcher makes the keys itself (no keygen process)."""
    import yaml

    topo = load_topology(COMPOSE, {})
    keygen = topo.services["keygen"]
    assert keygen.command == ("gvtsim", "keys", "/keys", "--stay") and keygen.volumes == {"keys": "/keys"}
    assert keygen.native == "launcher" and keygen.replicas == 1
    assert keygen.healthcheck is not None and keygen.healthcheck.test == ("gvtsim", "keys", "/keys", "--check")
    raw = yaml.safe_load(open(COMPOSE))
    assert "keys" in raw["volumes"]
    for name, svc in topo.services.items():
        if name == "keygen":
            continue
        assert svc.depends_on.get("keygen") == "service_healthy", name
        assert svc.volumes.get("keys") == "/keys" and svc.environment["GVTSIM_KEYS"] == "/keys", name
        assert "keys:/keys:ro" in raw["x-common"]["volumes"]
        assert svc.environment["GVTSIM_INSECURE"] == "", name  # on unless GVTSIM_INSECURE is set
    assert load_topology(COMPOSE, {"GVTSIM_INSECURE": "1"}).services["vhm"].environment["GVTSIM_INSECURE"] == "1"
    layout = NativeLayout(port_offset=0, stride=10, shm_root="/dev/shm/gvtsim-x")
    plan = native_plan(topo, [0], layout)
    assert "s0/keygen" not in {p.name for p in plan}
    assert all("keygen" not in p.depends_on for p in plan)


def test_native_plan_gives_each_stack_its_ports_and_memory() -> None:
    topo = load_topology(COMPOSE, {})
    layout = NativeLayout(port_offset=100, stride=10, shm_root="/dev/shm/gvtsim-x")
    plan = native_plan(topo, [0, 2], layout)
    by = {p.name: p for p in plan}
    assert [p.name for p in plan] == ["s0/vhm", "s0/pgpu", "s0/gvt", "s0/guest.1", "s0/guest.2",
                                      "s2/vhm", "s2/pgpu", "s2/gvt", "s2/guest.1", "s2/guest.2"]
    assert by["s0/vhm"].endpoint == "tcp://127.0.0.1:5655"
    assert by["s2/vhm"].endpoint == "tcp://127.0.0.1:5675"
    assert by["s2/gvt"].env["GVTSIM_VHM_ENDPOINT"] == "tcp://127.0.0.1:5675"
    assert by["s2/gvt"].env["GVTSIM_PGPU_ENDPOINT"] == "tcp://127.0.0.1:5677"
    assert by["s2/guest.2"].env["GVTSIM_MEM_PATH"] == "/dev/shm/gvtsim-x/s2/machine-memory/machine.mem"
    assert by["s0/vhm"].env["GVTSIM_MEM_PATH"] != by["s2/vhm"].env["GVTSIM_MEM_PATH"]
    assert by["s0/guest.1"].env["GVTSIM_NAME_PREFIX"] != by["s0/guest.2"].env["GVTSIM_NAME_PREFIX"]
    assert by["s0/vhm"].argv[:3] == (sys.executable, "-m", "gvtsim.orchestration")
    assert by["s2/pgpu"].health is not None and by["s2/pgpu"].health[4:] == ("tcp://127.0.0.1:5677", "--server", "pgpu")
    assert by["s0/guest.1"].health is None
    assert [p.name for p in native_plan(topo, [1], layout, guests=False)] == ["s1/vhm", "s1/pgpu", "s1/gvt"]
    assert len(native_plan(topo, [0], layout, replicas={"guest": 4})) == 7


def test_translate_leaves_foreign_hosts_and_paths() -> None:
    topo = load_topology(COMPOSE, {})
    layout = NativeLayout(0, 10, "/dev/shm/g")
    assert translate("tcp://example.org:5555", topo, layout, 1, {"v": "/mem"}) == "tcp://example.org:5555"
    assert translate("/memory/x", topo, layout, 1, {"v": "/mem"}) == "/memory/x"
    assert translate("/mem/x", topo, layout, 1, {"v": "/mem"}) == "/dev/shm/g/s1/v/x"
    assert translate("tcp://0.0.0.0:5557", topo, layout, 3, {}) == "tcp://127.0.0.1:5587"


@pytest.mark.parametrize("doc,match", [
    ({}, "no 'services'"),
    ({"services": {"a": {"image": "x"}}}, "explicit command"),
    ({"services": {"a": {"command": ["x"], "depends_on": ["b"]}}}, "unknown service"),
    ({"services": {"a": {"command": ["x"], "depends_on": ["b"]}, "b": {"command": ["y"], "depends_on": ["a"]}}},
     "cycle"),
    ({"services": {"a": {"command": ["x"], "healthcheck": {"test": ["WHAT"]}}}}, "healthcheck"),
])
def test_bad_topologies_are_refused_with_a_reason(doc: dict, match: str) -> None:
    with pytest.raises(ComposeError, match=match):
        parse_topology(doc, {})


def test_web_service_runs_only_with_its_profile() -> None:
    """The compose file's `web` service (the live wall) has a profile: left out by default, as compose does,
    and planned natively on the stack's own port block when COMPOSE_PROFILES names it."""
    import os

    from gvtsim.orchestration.compose import NativeLayout, load_topology, native_plan

    path = os.path.join(os.path.dirname(__file__), "..", "..", "docker-compose.yml")
    assert "web" not in load_topology(path, env={}).services
    topo = load_topology(path, env={"COMPOSE_PROFILES": "web", "GVTSIM_DISPLAY": "1"})
    assert topo.services["web"].depends_on == {"gvt": "service_healthy"}
    assert topo.services["guest"].environment["GVTSIM_DISPLAY_ON"] == "1"
    layout = NativeLayout(port_offset=100, stride=10, shm_root="/dev/shm/x")
    web = next(p for p in native_plan(topo, [1], layout) if p.service == "web")
    assert web.argv[-4:] == ("--vhm", "tcp://127.0.0.1:5665", "--listen", "tcp://127.0.0.1:5668")


def test_gvtsim_keys_makes_keeps_and_checks(tmp_path) -> None:
    import subprocess

    from gvtsim.services.common import curve

    d = str(tmp_path / "keys")
    cli = [sys.executable, "-m", "gvtsim.orchestration", "keys", d]
    assert subprocess.run([*cli, "--check"], capture_output=True, timeout=30).returncode == 1
    first = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and '"created": ["vhm", "gvt", "pgpu", "guest", "ctl", "probe"]' in first.stdout
    pub = open(os.path.join(d, "public", "guest.key")).read()
    again = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert '"created": []' in again.stdout and open(os.path.join(d, "public", "guest.key")).read() == pub
    assert subprocess.run([*cli, "--check"], capture_output=True, timeout=30).returncode == 0
    assert oct(os.stat(os.path.join(d, "private", "guest.key_secret")).st_mode & 0o777) == "0o600"
    keys = curve.Keys.load(d)
    assert set(keys.public) == set(curve.KEY_NAMES) and keys.pair("ctl")[1] is not None
