"""kill -9 of vhm under load, and the guest notices only latency (docs/STATE.md, "vhm's saved state").

A raw guest with 4 vCPUs keeps one MMIO write+read pair outstanding per vCPU, each on its own fence
register, with increasing values, while the test kills vhm with SIGKILL and starts it again on the same
machine memory many times. The new vhm re-opens its journals (VM table, memory maps, ioreq slots, gvt's
client), the guest and gvt say HELLO again and see the same lineage; the guest sends what was in flight
again with the same seq: every request is answered exactly once (no error, no duplicate IOREQ_DONE, no
VGPU_LOST, no VM reset) and every read returns the value its vCPU wrote last. A real guest process
running verified workloads across vhm kills finishes with 0 failed workloads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import zmq.asyncio

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import messages as m
from gvtsim.services.common.client import PeerLost
from gvtsim.services.common.liveness import HeartbeatConfig
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.pvinfo import VGT_MAGIC, VGT_PVINFO_PAGE
from fence_pairs import BAR0, MMIO, R, W, FencePairs, probe
from vhm_scripted import ScriptedGuest

pytestmark = pytest.mark.service
HB = 0.2
VCPUS = 4
KILLS = 20
GVT_ID = "gvt-vhm-restart-test"


class ResendingGuest(ScriptedGuest):
    """A raw guest that keeps what it sent until it is answered and, when its session to vhm comes back
    (the same lineage), sends it again with the same seq, as the guest process does."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.outstanding: dict[tuple[int, int, int], m.Ioreq] = {}
        self.restarted: list[int] = []
        self.resent = 0
        self.conn.on_up = self._up

    async def _up(self, server_epoch: int, restarted: bool) -> None:
        if restarted:
            self.restarted.append(server_epoch)
        for req in list(self.outstanding.values()):
            try:
                self.conn.send_now(req)
                self.resent += 1
            except PeerLost:
                return

    def _record(self, msg: m.Message) -> None:
        if isinstance(msg, (m.IoreqDone, m.Error)) and msg.seq is not None:
            self.outstanding.pop((msg.vm or 0, msg.vcpu or 0, msg.seq), None)
        super()._record(msg)

    async def start_ioreq(self, vm: int, vcpu: int, kind: int, direction: int, addr: int, size: int = 4,
                          value: int = 0, seq: int | None = None) -> asyncio.Future[int]:
        seq = self.next_seq() if seq is None else seq
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        req = m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=kind, dir=direction, addr=addr, size=size, value=value)
        self.waiters[(vm, vcpu, seq)] = fut
        self.outstanding[(vm, vcpu, seq)] = req
        try:
            self.conn.send_now(req)
        except PeerLost:
            pass  # vhm is away: sent when the session is back
        return fut


@pytest.fixture
async def fences() -> AsyncIterator[tuple[HostStack, ResendingGuest, int]]:
    stack = HostStack(mem_size_mb=256, heartbeat=HB, gvt_args=["--id", GVT_ID])
    await asyncio.to_thread(stack.start)
    ctx = zmq.asyncio.Context()
    guest = ResendingGuest(ctx, stack.vhm.endpoint, "raw-guest", HeartbeatConfig(HB, 3))
    try:
        await guest.start()
        created = await guest.create_vm("fences", vcpus=VCPUS, ram_mb=4, vgpu_type="GVTg_V5_4")
        assert await probe(guest, created.vm) == VGT_MAGIC
        yield stack, guest, created.vm
    finally:
        await guest.close()
        ctx.destroy(linger=0)
        stack.stop()


async def test_vhm_sigkill_many_times_every_request_answered_once_with_the_right_value(fences) -> None:
    stack, guest, vm = fences
    fp = FencePairs(guest, vm, VCPUS, ioreq_timeout=30, progress_timeout=30)
    outages = await fp.across(stack, "vhm", KILLS)  # no failure, wrong value, duplicate or VGPU_LOST
    assert not guest.restarted, guest.restarted  # every vhm it met carried its VM on (same lineage)
    v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
    g = await asyncio.to_thread(stack.gvt_status)
    assert v is not None and g is not None
    c: dict[str, Any] = v.counters
    assert c.get("state_restored", 0) == 1 and c.get("vms_restored", 0) == 1, c
    assert c.get("vgpus_lost", 0) == 0 and c.get("clients_lost", 0) == 0 and c.get("vms_unclaimed", 0) == 0, c
    assert g.counters.get("vhm_lost", 0) == KILLS and g.counters.get("reconcile_destroyed", 0) == 0, g.counters
    # the vGPU is the one created at the start, and still answers
    assert await guest.ioreq(vm, 0, MMIO, R, BAR0 + VGT_PVINFO_PAGE, 8) == VGT_MAGIC
    print(f"\n{KILLS} vhm SIGKILLs: {sum(fp.pairs)} write+read pairs verified on {VCPUS} vCPUs, 0 wrong, 0 failed, "
          f"0 duplicated, 0 VM resets; requests sent again by the guest {guest.resent}; kill-to-progress "
          f"median {outages[len(outages) // 2]:.2f}s, max {outages[-1]:.2f}s")


async def test_guest_process_workloads_go_on_across_vhm_kills() -> None:
    """A real guest process (2 VMs, verified workloads, no --recover: any reset is a failure) while vhm is
    killed and restarted 3 times: every workload verified, none failed."""
    stack = HostStack(mem_size_mb=256, heartbeat=HB, gvt_args=["--id", GVT_ID])
    await asyncio.to_thread(stack.start)
    try:
        guest = await asyncio.to_thread(
            stack.guest, "--vms", "2", "--vgpu-types", "GVTg_V5_4", "--ram-mb", "16", "--duration", "12",
            "--mix", "store,fill,copy", "--stats-interval", "0.5")
        for _ in range(2):
            await guest.await_event("vm_ready", 30)
        kills = 0
        for _ in range(3):
            await guest.await_event("stats", 10)
            await asyncio.to_thread(stack.restart, "vhm")
            kills += 1
            await guest.await_event("vhm_back", 20)
        done = await guest.await_event("done", 60)
        bad = [e for e in guest.seen if e.get("event") in ("vm_reset", "vm_failed", "vhm_restarted", "vgpu_lost")]
        assert not bad, bad[:3]
        assert done["workloads_failed"] == 0 and done["resets"] == 0, done["failures_by_reason"]
        assert done["workloads_verified"] > 0, done
        backs = [e for e in guest.seen if e.get("event") == "vhm_back"]
        print(f"\n{kills} vhm SIGKILLs under a guest process: {done['workloads_verified']} workloads verified, "
              f"0 failed, 0 resets; back after {[e['away_s'] for e in backs]} s, traps sent again "
              f"{sum(e['resent'] for e in backs)}, interrupts found by the hangcheck (MSI lost) {done['missed_irqs']}")
    finally:
        stack.stop()


async def test_a_refused_journal_is_a_different_vhm_and_the_vm_takes_the_reset_path(fences) -> None:
    """The old path stays when the state cannot be trusted: vhm.journal corrupted between the kill and the
    start is refused (logged with its reason, counted), the guest sees a new lineage and its VM is gone
    (no_such_vm), gvt drops the vGPU of the old vhm's VM."""
    stack, guest, vm = fences
    assert await guest.ioreq(vm, 1, MMIO, W, BAR0 + FENCE_REG_GEN6_LO + 8, 4, 5) == 0
    stack.vhm.kill(9)
    assert stack.vhm.proc is not None
    stack.vhm.proc.wait(10)
    path = f"{stack.mem}.vhm.state/vhm.journal"
    with open(path, "r+b") as f:
        f.seek(9)
        f.write(b"\xff")  # the format version: the header's CRC fails
    await asyncio.to_thread(stack.restart, "vhm")
    async with asyncio.timeout(20):
        while not guest.restarted:
            await asyncio.sleep(0.05)
    with pytest.raises(Exception, match="no_such_vm"):
        await guest.ioreq(vm, 1, MMIO, R, BAR0 + FENCE_REG_GEN6_LO + 8, 4, timeout=10)
    v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
    assert v is not None and v.counters.get("state_refused", 0) == 1 and not v.info["vms"]["list"], v.counters
    assert "state_refused" in "".join(stack.logs().values())
    deadline = time.monotonic() + 15
    while (g := await asyncio.to_thread(stack.gvt_status)) is None or g.info["vgpus"]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
