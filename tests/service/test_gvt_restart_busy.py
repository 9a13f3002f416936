"""kill -9 of gvt while its vGPUs are busy, and the guest notices only latency (docs/STATE.md).

A real guest process runs verified workloads on two VMs (back to back: their vGPUs almost always have
workloads queued or on the GPU and execlist contexts scheduled in) while gvt is killed with SIGKILL and
started again with the same --id three times. The new gvt re-opens each vGPU's saved state with its
workloads, asks pgpu what became of those the dead one had given it (WORKLOAD_QUERY), completes the ones
pgpu finished once, submits again the ones it never saw: every workload verifies, none fails, no VM is
reset.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gvtsim.orchestration.hoststack import HostStack

pytestmark = pytest.mark.service
HB = 0.2
GVT_ID = "gvt-restart-busy-test"
GPU_SPEED = "0.0001"  # a workload's GPU time x10,000: tens of ms, so every kill finds the vGPUs busy


async def busy(stack: HostStack) -> None:
    """Wait (up to 5 s) until gvt's STATUS shows a workload on an engine: the kill then finds one in flight
    (or, as the STATUS is a snapshot, just completed: pgpu's events then went to the dead process)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        st = await asyncio.to_thread(stack.gvt_status)
        sched = st.info.get("scheduler", {}) if st is not None else {}
        if any(t is not None for t in sched.get("running", {}).values()):
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("mix", ["store,fill,copy", "ppgtt_store,ppgtt_remap,store"])
async def test_guest_process_workloads_go_on_across_gvt_kills(monkeypatch: pytest.MonkeyPatch, mix: str) -> None:
    """A real guest process (2 VMs, verified workloads, no --recover: any reset is a failure) while gvt is
    killed and restarted 3 times: every workload verified, none failed, and the restarted gvt carried the
    busy vGPUs on (restored, none refused, workloads reconciled with pgpu). The GPU is made slow
    (``--gpu-speed``) so that each workload stays on it long enough for every kill to find work in flight.
    The second mix runs on PPGTT contexts (guest page tables edited between workloads): their shadows are
    rebuilt by the restarted gvt."""
    monkeypatch.setenv("GVTSIM_PGPU_GPU_SPEED", GPU_SPEED)
    stack = HostStack(mem_size_mb=256, heartbeat=HB, gvt_args=["--id", GVT_ID])
    await asyncio.to_thread(stack.start)
    try:
        guest = await asyncio.to_thread(
            stack.guest, "--vms", "2", "--vgpu-types", "GVTg_V5_4", "--ram-mb", "16", "--duration", "12",
            "--mix", mix, "--stats-interval", "0.5")
        for _ in range(2):
            await guest.await_event("vm_ready", 30)
        verified = []
        for _ in range(3):
            before = (await guest.await_event("stats", 10)).get("verified", 0)
            await busy(stack)
            await asyncio.to_thread(stack.restart, "gvt")
            # the guest goes on: a later stats line shows more workloads verified
            e = await guest.await_event(lambda e, n=before: e.get("event") == "stats"
                                        and e.get("verified", 0) > n + 4, 20)
            verified.append(e["verified"])
        done = await guest.await_event("done", 60)
        bad = [e for e in guest.seen if e.get("event") in ("vm_reset", "vm_failed", "vgpu_lost")]
        assert not bad, bad[:3]
        assert done["workloads_failed"] == 0 and done["resets"] == 0, done["failures_by_reason"]
        logs = "".join(text for name, text in stack.logs().items() if name.startswith("gvt"))
        assert "vgpu_restore_refused" not in logs, [ln for ln in logs.splitlines() if "refused" in ln][:3]
        assert logs.count('"vgpus_restored"') >= 3
        reconciled = [ln for ln in logs.splitlines() if '"workloads_reconciled"' in ln]
        restored = [ln for ln in logs.splitlines() if '"vgpus_restored"' in ln]
        print("\n".join(restored))
        assert reconciled, "no restart found a workload on the GPU: the test did not test it"
        print(f"\n3 gvt SIGKILLs under a guest process ({mix}): {done['workloads_verified']} workloads verified "
              f"(after each restart: {verified}), 0 failed, 0 resets; restarts that found workloads on the GPU: "
              f"{len(reconciled)}; interrupts found by the hangcheck (MSI lost) {done['missed_irqs']}")
    finally:
        stack.stop()
