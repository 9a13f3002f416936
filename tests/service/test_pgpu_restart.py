"""kill -9 of pgpu while workloads run on it, and the guests see only latency.

A restarted pgpu is a new GPU: it knows nothing of the contexts the old one was running. gvt keeps the
workloads it had submitted, rewrites the physical GGTT on the new GPU and submits them again; the guests'
workloads all verify, none fails and no VM is reset.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack

pytestmark = pytest.mark.service
KILLS = 4


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostStack]:
    # a GPU five times slower in wall time: a workload is on the engines at most instants, so a kill finds some
    monkeypatch.setenv("GVTSIM_PGPU_TIME_SCALE", "5")
    with HostStack(heartbeat=0.5, gvt_args=["--id", "gvt-pgpu-restart"]) as hs:
        yield hs


def gvt_counters(hs: HostStack) -> dict[str, int]:
    st = probe_sync(hs.gvt.endpoint, 2.0, True)
    assert st is not None, "gvt does not answer STATUS"
    return dict(st.counters)


def test_pgpu_sigkilled_under_load_its_workloads_are_resubmitted_and_none_fails(stack: HostStack) -> None:
    g = stack.guest("--vms", "2", "--vcpus", "2", "--ram-mb", "16", "--duration", "300", "--hang-timeout", "30",
                    name="busy")
    g.wait_event("vm_ready", timeout=30)
    kills = 0
    for _ in range(KILLS):
        time.sleep(1.5)  # the guests run workloads meanwhile (nothing to wait for: any instant will do)
        stack.restart("pgpu")
        kills += 1
    time.sleep(2.0)  # and on the last new GPU
    g.kill(signal.SIGUSR1)  # the guest ends its run: each VM finishes its workload and reports
    done = g.wait_event("done", timeout=120)
    resets = [e for e in g.seen if e.get("event") == "vm_reset"]
    c = gvt_counters(stack)
    print(f"\n{kills} pgpu SIGKILLs under load: {done['workloads_verified']} workloads verified, "
          f"{done['workloads_failed']} failed, {c.get('workloads_resubmitted', 0)} resubmitted to a new GPU, "
          f"{len(resets)} VM resets")
    assert kills == KILLS
    assert done["workloads_failed"] == 0, done
    assert done["workloads_verified"] == done["workloads_submitted"] > 0, done
    assert not resets, resets
    assert c.get("workloads_resubmitted", 0) > 0, c  # some kills did find workloads on the GPU
    assert c.get("pgpu_grace_expired", 0) == 0, c
