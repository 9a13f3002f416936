"""A short structure-aware fuzz in the test tier (the 1,000,000-message runs: tests/service/fuzz_soak.py).

Each of vhm, pgpu and gvt is fuzzed while the fuzzer is its socket's only peer, so the service's counters
must account for exactly the frames sent; then the rest of the stack starts and a well-behaved VM verifies
its workloads, and every service answers STATUS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gvtsim.orchestration.fuzz import Fuzzer
from gvtsim.orchestration.hoststack import HostStack

pytestmark = pytest.mark.service
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("target", ["vhm", "pgpu", "gvt"])
def test_short_fuzz_then_a_vm_verifies(target: str) -> None:
    out = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_soak.py"), target, "4000"], capture_output=True,
                         text=True, timeout=110, env={**os.environ, "SEED": str(7 + len(target))})
    assert out.stdout.strip(), out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    fz = res["fuzz"]
    assert fz["hangs"] == 0 and fz["still_serving"] and not fz["service_restarted"], fz
    assert fz["accounting"]["frames_counted_by_server"] == fz["accounting"]["frames_sent"] == fz["frames"]
    assert fz["server_counters"]["internal_errors"] == 0
    assert fz["server_counters"]["decode_errors"] > 0 and fz["server_counters"]["authz_refused"] > 0
    assert res["vm_after"]["workloads_failed"] == 0 and res["vm_after"]["workloads_verified"] == 16
    assert all(res["status_after"].values()) and res["pass"]


def test_gvtsim_fuzz_cli_reports_and_exits_0() -> None:
    with HostStack() as hs:
        out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "fuzz", hs.gvt.endpoint, "--messages",
                              "1500", "--pool", "50", "--json"], capture_output=True, text=True, timeout=100)
        assert out.returncode == 0, out.stderr[-2000:]
        rep = json.loads(out.stdout)
        assert rep["service"] == "gvt" and rep["ok"] and rep["messages"] >= 1500
        assert rep["accounting"]["other_peers"] == 0  # the management socket's only peer was the fuzzer
        assert sum(rep["mutations"].values()) >= 1500 and rep["mutations"]["byte_flip"] > 0
        assert Fuzzer  # the module imports without hypothesis being asked for anything else
