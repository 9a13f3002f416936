"""What users watch a run with: `gvtsim top` (JSON and the live view in a pseudo-terminal), every service's
Prometheus endpoint (parsed by prometheus_client's own parser), and `gvtsim trace` of a demo (valid
trace-event JSON with events from all four kinds of process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pexpect
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gvtsim.orchestration.launcher import RunState
from gvtsim.orchestration.top import COLUMNS
from test_launcher import COMPOSE, gvtsim

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("obs") / "run")
    r = gvtsim("up", "-f", COMPOSE, "--run-dir", path,
               env={"GVTSIM_GUEST_WORKLOADS": "2", "GVTSIM_GUEST_REPLICAS": "1"})
    assert r.returncode == 0, r.stderr
    yield path
    gvtsim("down", "--run-dir", path)


def test_top_once_json_lists_every_vgpu_of_a_running_load(run: str, tmp_path) -> None:
    load = subprocess.Popen([sys.executable, "-m", "gvtsim.orchestration", "load", "--vms", "3", "--duration", "60",
                             "--run-dir", run, "--vms-per-guest", "3"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert load.stderr is not None
        for line in load.stderr:  # the load's own progress line says when its VMs run
            if "VMs running 3/3" in line:
                break
        else:
            pytest.fail(f"the load never had its 3 VMs running: {load.wait()}")
        r = gvtsim("top", "--run-dir", run, "--once", "--json", "--interval", "1.5")
        assert r.returncode == 0, r.stderr
        top = json.loads(r.stdout)
        gvt = json.loads(gvtsim("health", RunState.load(run).endpoint(0, "gvt"), "--json").stdout)
        assert sorted(v["vm"] for v in top["vgpus"]) == sorted(v["vm"] for v in gvt["info"]["vgpus"])
        assert len(top["vgpus"]) >= 4  # the up's guest VM and the load's 3
        for row in top["vgpus"]:
            assert set(COLUMNS) <= set(row), set(COLUMNS) - set(row)
            assert row["type"].startswith("GVTg_V5_") and row["pv"] in ("on", "off")
        busy = [r for r in top["vgpus"] if r["workloads_s"] > 0]
        assert busy, top["vgpus"]  # the load's VMs are running workloads: their rates show it
        assert all(r["ioreqs_MMIO_s"] > 0 and r["mmio_p99_us"] >= r["mmio_p50_us"] > 0 for r in busy)
        assert any(r["busy_rcs"] + r["busy_bcs"] > 0 for r in busy)
        assert sum(r["weight_share"] for r in top["vgpus"]) == pytest.approx(1.0, abs=0.01)
    finally:
        load.send_signal(signal.SIGINT)  # the load stops its guests on the way out
        load.wait(60)


def test_top_live_view_refreshes_in_a_pseudo_terminal(run: str) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "gvtsim.orchestration", "top", "--run-dir", run, "--interval", "0.3",
                                           "--count", "50"], env={**os.environ, "COLUMNS": "220", "LINES": "40"},
                          dimensions=(40, 220), timeout=20, encoding="utf-8")
    try:
        for _ in range(3):  # three refreshes, each redrawing the table
            child.expect("gvtsim top: [0-9]+ vGPUs on 1 host stack")
        child.expect("s0-guest-vm")
        child.send("s")  # sort by the next column
        child.expect("sorted by NAME")
        child.send("r")
        child.expect(r"sorted by NAME \(descending\)")
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def _families(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_every_service_serves_prometheus_metrics(run: str) -> None:
    state = RunState.load(run)
    assert state is not None
    want = {"vhm": {"gvtsim_vhm_vms", "gvtsim_vhm_ioreqs", "gvtsim_vhm_ioreq_service_seconds", "gvtsim_vm_ioreqs"},
            "gvt": {"gvtsim_gvt_vgpus", "gvtsim_vgpu_traps", "gvtsim_vgpu_engine_busy_seconds", "gvtsim_vgpu_weight"},
            "pgpu": {"gvtsim_engine_busy_seconds", "gvtsim_engine_submissions", "gvtsim_gpu_events"},
            "guest": {"gvtsim_guest_vms", "gvtsim_guest_workloads", "gvtsim_guest_ioreq_rtt_seconds"}}
    seen = set()
    for proc in state.procs.values():
        if proc.owner != "up":
            continue
        assert proc.metrics.startswith("http://127.0.0.1:"), proc
        fams = _families(proc.metrics)
        assert {"gvtsim_ready", "gvtsim_events"} <= set(fams)
        assert want[proc.service] <= set(fams), want[proc.service] - set(fams)
        for f in fams.values():
            if f.type != "histogram":
                continue
            by_labels: dict[tuple, list] = {}
            for s in f.samples:
                if s.name.endswith("_bucket"):
                    key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                    by_labels.setdefault(key, []).append(s.value)
            for counts in by_labels.values():  # cumulative buckets: never decreasing
                assert counts == sorted(counts) and counts
        seen.add(proc.service)
    assert seen == {"vhm", "gvt", "pgpu", "guest"}
    r = gvtsim("metrics", "--run-dir", run, "--scrape-config")
    assert r.returncode == 0 and "scrape_configs:" in r.stdout and r.stdout.count("targets:") >= 4


def test_trace_of_a_short_demo_is_trace_event_json_from_all_four_kinds_of_process(tmp_path) -> None:
    out = tmp_path / "demo.trace.json"
    r = gvtsim("trace", "--out", str(out), "demo", "--vms", "2", "--workloads", "2", timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    events = doc["traceEvents"]
    kinds = {e["pid"]: e["args"]["labels"] for e in events if e["ph"] == "M" and e["name"] == "process_labels"}
    assert sorted(set(kinds.values())) == ["guest", "gvt", "pgpu", "vhm"]
    timed = [e for e in events if e["ph"] != "M"]
    assert {kinds[e["pid"]] for e in timed} == {"guest", "gvt", "pgpu", "vhm"}
    for e in timed:
        assert e["ph"] in ("X", "i") and isinstance(e["ts"], float | int) and isinstance(e["name"], str)
        assert e["ph"] != "X" or e["dur"] >= 0
    names = {e["name"] for e in timed}
    assert {"ioreq MMIO", "vhm dispatch", "gvt emulate", "vhm complete", "MSI inject", "MSI received",
            "workload submit", "ELSP submit"} <= names, names
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
