"""kill -9 of gvt under load, and the guest notices only latency (docs/STATE.md, docs/VHM.md).

A raw guest with 4 vCPUs keeps one MMIO write+read pair outstanding per vCPU, each on its own fence
register, with increasing values, while the test kills gvt with SIGKILL and starts it again (same --id)
20 times. gvt re-opens each vGPU's saved state, vhm lets the new incarnation take over the old one's client
and sends it the requests that were in flight: every request is answered exactly once (no error, no
duplicate IOREQ_DONE, no VGPU_LOST) and every read returns the value its vCPU wrote last.
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
from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.liveness import HeartbeatConfig
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.pvinfo import VGT_MAGIC, VGT_PVINFO_PAGE
from vhm_scripted import ScriptedGuest

pytestmark = pytest.mark.service
HB = 0.2
R, W = IoreqDir.READ, IoreqDir.WRITE
MMIO, PIO = IoreqType.MMIO, IoreqType.PIO
BAR0 = 0xF000_0000
VCPUS = 4
KILLS = 20
GVT_ID = "gvt-restart-test"  # a restarted gvt is the same device model only under the same id


async def probe(guest: ScriptedGuest, vm: int) -> int:
    """Place BAR0 of 00:02.0 through CONF1, enable decode, read the PVINFO magic (as i915 does first)."""
    def conf(reg: int) -> int:
        return 1 << 31 | 2 << 11 | reg

    for port, size, value in ((0xCF8, 4, conf(0x10)), (0xCFC, 4, BAR0), (0xCF8, 4, conf(0x14)),
                              (0xCFC, 4, 0), (0xCF8, 4, conf(0x04)), (0xCFC, 2, 0x6)):
        await guest.ioreq(vm, 0, PIO, W, port, size, value)
    return await guest.ioreq(vm, 0, MMIO, R, BAR0 + VGT_PVINFO_PAGE, 8)


@pytest.fixture
async def stack() -> AsyncIterator[HostStack]:
    s = HostStack(mem_size_mb=256, heartbeat=HB, gvt_args=["--id", GVT_ID])
    await asyncio.to_thread(s.start)
    try:
        yield s
    finally:
        s.stop()


async def test_gvt_sigkill_20_times_every_request_answered_once_with_the_right_value(stack) -> None:
    ctx = zmq.asyncio.Context()
    guest = ScriptedGuest(ctx, stack.vhm.endpoint, "raw-guest", HeartbeatConfig(HB, 3))
    try:
        await guest.start()
        created = await guest.create_vm("fences", vcpus=VCPUS, ram_mb=4, vgpu_type="GVTg_V5_4")
        vm = created.vm
        assert await probe(guest, vm) == VGT_MAGIC

        pairs = [0] * VCPUS
        wrong: list[tuple[int, int, int]] = []
        failures: list[str] = []
        stop = asyncio.Event()

        async def vcpu(i: int) -> None:
            reg = BAR0 + FENCE_REG_GEN6_LO + 8 * i  # fence i: this vCPU's own register
            value = i << 24
            while not stop.is_set():
                value += 1
                try:
                    assert await guest.ioreq(vm, i, MMIO, W, reg, 4, value) == 0
                    got = await guest.ioreq(vm, i, MMIO, R, reg, 4)
                except Exception as err:  # an ERROR (client_lost, gpu_reset, timeout...): the guest noticed
                    failures.append(f"vCPU {i} value {value}: {type(err).__name__}: {err}")
                    return
                if got != value:
                    wrong.append((i, value, got))
                pairs[i] += 1

        tasks = [asyncio.create_task(vcpu(i)) for i in range(VCPUS)]
        outages: list[float] = []
        try:
            await asyncio.sleep(0.5)
            for _ in range(KILLS):
                before = list(pairs)
                t0 = time.monotonic()
                await asyncio.to_thread(stack.restart, "gvt")  # SIGKILL, the same command again: a new epoch
                # every vCPU completes pairs again: the requests that waited at vhm were answered
                async with asyncio.timeout(20):
                    while not all(p > b + 2 for p, b in zip(pairs, before)) and not failures:
                        await asyncio.sleep(0.01)
                outages.append(time.monotonic() - t0)
                assert not failures, failures
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)

        assert not failures, failures
        assert not wrong, wrong[:5]
        dup = [x for x in guest.stray if isinstance(x, (m.IoreqDone, m.Error))]
        assert not dup, dup[:5]  # no answer without a request waiting for it: nothing answered twice
        lost = [x for x in guest.stray if isinstance(x, m.VgpuLost)]
        assert not lost, lost
        v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
        g = await asyncio.to_thread(stack.gvt_status)
        assert v is not None and g is not None
        c: dict[str, Any] = v.counters
        assert c.get("clients_taken_over", 0) == KILLS and c.get("clients_restored", 0) == KILLS, c
        assert c.get("vgpus_lost", 0) == 0 and c.get("clients_lost", 0) == 0, c
        assert g.counters.get("vgpus_restored", 0) == 1  # this incarnation carried the vGPU on
        assert await guest.ioreq(vm, 0, MMIO, R, BAR0 + VGT_PVINFO_PAGE, 8) == VGT_MAGIC
        outages.sort()
        print(f"\n{KILLS} gvt SIGKILLs: {sum(pairs)} write+read pairs verified on {VCPUS} vCPUs, 0 wrong, "
              f"0 failed, 0 duplicated; requests re-sent by vhm {c.get('ioreqs_redispatched', 0)}; "
              f"kill-to-progress median {outages[len(outages) // 2]:.2f}s, max {outages[-1]:.2f}s")
    finally:
        await guest.close()
        ctx.destroy(linger=0)


async def test_idle_vms_left_without_a_vgpu_are_told_and_come_back() -> None:
    """A guest whose VMs finished their workloads issues no ioreq that would see a GPU reset. gvt restarts
    under another id (the default id names the pid): vhm loses the old one when --client-grace runs out and
    tells each VM VGPU_LOST; the guest driver takes the reset at once and creates its vGPU again, so no VM
    is left idle without a GPU."""
    stack = HostStack(mem_size_mb=256, heartbeat=HB)
    await asyncio.to_thread(stack.start)
    try:
        guest = await asyncio.to_thread(
            stack.guest, "--vms", "2", "--vgpu-types", "GVTg_V5_4", "--ram-mb", "16", "--recover",
            "--workloads", "4", "--mix", "store,fill,copy")
        for _ in range(2):
            await guest.await_event("vm_done", 60)
        await asyncio.to_thread(stack.restart, "gvt")
        t0 = time.monotonic()
        for _ in range(2):
            e = await guest.await_event(lambda e: e.get("event") == "vm_reset" and "idle" in e.get("reason", ""), 30)
            assert "no reconnect within" in e["reason"], e
        for _ in range(2):
            await guest.await_event("vm_recovered", 30)
        # gvt's vGPUs are exactly vhm's VMs, each with a vGPU again
        deadline = time.monotonic() + 20
        while True:
            g = await asyncio.to_thread(probe_sync, stack.gvt.endpoint, 2.0, True)
            v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
            assert g is not None and v is not None
            gvt = {x["vm"]: x["vgpu_id"] for x in g.info["vgpus"]}
            vhm = {x["vm"]: x["vgpu_id"] for x in v.info["vms"]["list"] if x["state"] == "running"}
            if len(vhm) == 2 and gvt == vhm and all(vhm.values()):
                break
            assert time.monotonic() < deadline, (gvt, vhm)
            await asyncio.sleep(0.1)
        print(f"\nidle VMs after a gvt restart under a new id: told after the grace, both back with a vGPU "
              f"{time.monotonic() - t0:.1f}s after the restart")
    finally:
        stack.stop()
