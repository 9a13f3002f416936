"""The CURVE cost benchmark runs: ``gvtsim bench --only e2e`` (plain and CURVE alternating, one run) and
``gvtsim bench e2e --insecure`` say what they measured. Figures are printed, never asserted against a target."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.service


@pytest.mark.timeout(300)
def test_bench_e2e_section_measures_plain_and_curve() -> None:
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "bench", "--only", "e2e", "-n", "500",
                          "--json"], capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])["e2e"]
    for mode in ("plain", "curve"):
        assert res[mode]["ioreq_roundtrip_us"] > 0 and res[mode]["ioreqs_per_s_16_in_flight"] > 0, res
    assert res["curve_over_plain"]["roundtrip_ratio"] > 0
    print("bench --only e2e:", res)


@pytest.mark.timeout(300)
def test_bench_e2e_insecure_says_curve_is_off() -> None:
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "bench", "e2e", "--insecure", "--rounds", "1",
                          "--vms", "1", "--vcpus", "2", "--seconds", "0.5", "--sync-n", "100", "--idle", "0"],
                         capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "topology with CURVE off (--insecure)" in out.stdout, out.stdout
