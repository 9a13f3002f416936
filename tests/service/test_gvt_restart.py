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
import structlog
import zmq.asyncio

from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import messages as m
from gvtsim.services.common.client import Connection
from gvtsim.services.common.liveness import HeartbeatConfig
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.pvinfo import VGT_MAGIC, VGT_PVINFO_PAGE
from fence_pairs import BAR0, MMIO, R, FencePairs, probe
from vhm_scripted import ScriptedGuest

pytestmark = pytest.mark.service
HB = 0.2
VCPUS = 4
KILLS = 20
GVT_ID = "gvt-restart-test"  # a restarted gvt is the same device model only under the same id


@pytest.fixture
async def stack() -> AsyncIterator[HostStack]:
    s = HostStack(mem_size_mb=256, heartbeat=HB, gvt_args=["--id", GVT_ID])
    await asyncio.to_thread(s.start)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def fences(stack) -> AsyncIterator[tuple[HostStack, FencePairs]]:
    ctx = zmq.asyncio.Context()
    guest = ScriptedGuest(ctx, stack.vhm.endpoint, "raw-guest", HeartbeatConfig(HB, 3))
    try:
        await guest.start()
        created = await guest.create_vm("fences", vcpus=VCPUS, ram_mb=4, vgpu_type="GVTg_V5_4")
        assert await probe(guest, created.vm) == VGT_MAGIC
        yield stack, FencePairs(guest, created.vm)
    finally:
        await guest.close()
        ctx.destroy(linger=0)


async def test_gvt_sigkill_20_times_every_request_answered_once_with_the_right_value(fences) -> None:
    stack, fp = fences
    outages = await fp.across(stack, "gvt", KILLS)
    v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
    g = await asyncio.to_thread(stack.gvt_status)
    assert v is not None and g is not None
    c: dict[str, Any] = v.counters
    assert c.get("clients_taken_over", 0) == KILLS and c.get("clients_restored", 0) == KILLS, c
    assert c.get("vgpus_lost", 0) == 0 and c.get("clients_lost", 0) == 0, c
    assert c.get("stale_completions", 0) == 0, c  # no request was sent to gvt twice
    assert g.counters.get("vgpus_restored", 0) == 1  # this incarnation carried the vGPU on
    assert await fp.guest.ioreq(fp.vm, 0, MMIO, R, BAR0 + VGT_PVINFO_PAGE, 8) == VGT_MAGIC
    print(f"\n{KILLS} gvt SIGKILLs: {sum(fp.pairs)} write+read pairs verified on {VCPUS} vCPUs, 0 wrong, "
          f"0 failed, 0 duplicated; requests re-sent by vhm {c.get('ioreqs_redispatched', 0)}; "
          f"kill-to-progress median {outages[len(outages) // 2]:.2f}s, max {outages[-1]:.2f}s")


async def pgpu_fences(stack: HostStack) -> set[int]:
    """The low dwords of every physical fence register, read from pgpu as gvt would."""
    ctx = zmq.asyncio.Context()
    conn = Connection(ctx, stack.pgpu.endpoint, role="gvt", ident="fence-reader", epoch=1, hb=HeartbeatConfig(HB, 3),
                      log=structlog.get_logger(), name="pgpu", server_role="pgpu")
    try:
        conn.start()
        await conn.wait_up(5)
        out = set()
        for f in range(32):
            reply = await conn.request(m.PgpuMmioRead, offset=FENCE_REG_GEN6_LO + 8 * f, size=8, timeout=5)
            assert isinstance(reply, m.Ok)
            out.add(int(reply.value or 0) & 0xFFFF_FFFF)
        return out
    finally:
        await conn.close()
        ctx.destroy(linger=0)


async def test_pgpu_sigkill_20_times_every_request_answered_once_and_the_fences_are_restored(fences) -> None:
    stack, fp = fences
    outages = await fp.across(stack, "pgpu", KILLS)
    v = await asyncio.to_thread(probe_sync, stack.vhm.endpoint, 2.0, True)
    assert v is not None and v.counters.get("vgpus_lost", 0) == 0 and v.counters.get("clients_lost", 0) == 0
    # one more GPU, with the guest quiet: only gvt's rewrite when it comes up can give it the fences
    await asyncio.to_thread(stack.restart, "pgpu")
    deadline = time.monotonic() + 15
    while not set(fp.last) <= (held := await pgpu_fences(stack)):
        assert time.monotonic() < deadline, (fp.last, sorted(held))
        await asyncio.sleep(0.2)
    print(f"\n{KILLS} pgpu SIGKILLs: {sum(fp.pairs)} write+read pairs verified, 0 wrong, 0 failed, 0 duplicated; "
          f"a new GPU gets every vCPU's last fence value from gvt; kill-to-progress median "
          f"{outages[len(outages) // 2]:.2f}s, max {outages[-1]:.2f}s")


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
            e = await guest.await_event(lambda e: e.get("event") == "vm_reset" and "idle" in e.get("reason", ""), 45)
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
