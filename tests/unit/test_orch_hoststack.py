"""HostStack runs the compose plan the launcher runs: its processes come from docker-compose.yml, not from
argv of its own (no process is started here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gvtsim.orchestration.compose import load_topology
from gvtsim.orchestration.hoststack import GUEST_WORKLOAD_ENV, HostStack, default_compose_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _insecure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GVTSIM_INSECURE", "1")  # no keys to make: nothing connects here


@pytest.fixture()
def stacks() -> Iterator[list[HostStack]]:
    made: list[HostStack] = []
    yield made
    for hs in made:
        hs.stop()  # removes its directory (no process was started)


def test_the_default_compose_file_is_the_repositorys() -> None:
    assert Path(default_compose_file()) == ROOT / "docker-compose.yml"


def test_services_and_order_are_the_compose_files(stacks: list[HostStack]) -> None:
    hs = HostStack(mem_size_mb=256, heartbeat=0.25)
    stacks.append(hs)
    levels = load_topology(str(ROOT / "docker-compose.yml")).start_levels()
    order = [name for level in levels for name in level if name not in ("keygen", "guest", "web")]
    assert [s.service for s in hs.plan] == order
    for spec in hs.plan:
        assert spec.env["GVTSIM_MEM_PATH"] == hs.mem and hs.mem.startswith(hs.run_dir)
        assert spec.env["GVTSIM_MEM_SIZE_MB"] == "256" and spec.env["GVTSIM_HEARTBEAT_IVL"] == "0.25"
        assert spec.env["GVTSIM_METRICS"] == "127.0.0.1:0"  # never the compose file's 0.0.0.0
        assert "GVTSIM_ID" not in spec.env  # its own default id: a restarted service is a new process
    assert hs.guest_plan is not None and hs.guest_plan.service == "guest"


def test_a_changed_compose_file_changes_what_runs(tmp_path: Path, stacks: list[HostStack]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    text = text.replace('["gvtsim", "vhm", "--bind", "tcp://0.0.0.0:5555"]',
                        '["gvtsim", "vhm", "--bind", "tcp://0.0.0.0:6000", "--ioreq-timeout", "7"]')
    text = text.replace("tcp://vhm:5555", "tcp://vhm:6000")
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(text)
    hs = HostStack(compose_file=str(compose))
    stacks.append(hs)
    vhm = next(s for s in hs.plan if s.service == "vhm")
    assert vhm.argv[-4:] == ("--bind", "tcp://127.0.0.1:6000", "--ioreq-timeout", "7")
    gvt = next(s for s in hs.plan if s.service == "gvt")
    assert gvt.env["GVTSIM_VHM_ENDPOINT"] == "tcp://127.0.0.1:6000"
    hs.endpoints[vhm.endpoint or ""] = "tcp://127.0.0.1:41234"  # what vhm would have bound
    assert hs._wired(gvt.env["GVTSIM_VHM_ENDPOINT"]) == "tcp://127.0.0.1:41234"


def test_a_guest_keeps_the_wiring_and_drops_the_compose_runs_workload(stacks: list[HostStack]) -> None:
    hs = HostStack()
    stacks.append(hs)
    assert hs.guest_plan is not None
    assert set(GUEST_WORKLOAD_ENV) <= set(hs.guest_plan.env), "every knob dropped is one the compose guest sets"
    spec, first = hs.next_guest()
    _, second = hs.next_guest()
    assert spec.service == "guest" and spec.argv[-1] == "guest"
    assert not set(GUEST_WORKLOAD_ENV) & set(first)
    assert first["GVTSIM_VHM_ENDPOINT"] == hs.guest_plan.env["GVTSIM_VHM_ENDPOINT"]
    assert first["GVTSIM_MEM_PATH"] == hs.mem
    assert "GVTSIM_ID" not in first and "GVTSIM_ID" not in second  # each process names itself (role, host, pid)
