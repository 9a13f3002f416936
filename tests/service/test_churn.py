"""VM churn with every service real: 1,000 VM creations and destructions, each VM with a vGPU, leave no
frame, frame owner, vGPU id, graphics memory, fence or shadow frame behind in any service, and give the
machine memory's pages back (what each service's STATUS reports, and the memory file's allocated blocks).

Both GPU profiles: the real one (7 vGPUs at a time, GVTg_V5_8) and the dense one (64 at a time of its
fenceless AcrnGT_dense_1_2 type, ids beyond the real layout's 63).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psutil
import pytest
import zmq.asyncio

from gvtsim.orchestration.health import probe, status_dict
from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import messages as m
from gvtsim.services.common.liveness import HeartbeatConfig
from vhm_scripted import ScriptedGuest

pytestmark = pytest.mark.service
CYCLES = 1000


async def info(endpoint: str) -> dict[str, Any]:
    return status_dict(await probe(endpoint, 5.0))


async def gvt_pool_ready(endpoint: str, timeout: float = 30.0) -> dict[str, Any]:
    """gvt answers ready before its shadow frame pool arrives from vhm (a background call): wait for it."""
    async with asyncio.timeout(timeout):
        while True:
            d = await info(endpoint)
            if d["info"]["scheduler"]["frame_pool"]:
                return d
            await asyncio.sleep(0.05)


def leak_view(vhm: dict[str, Any], gvt: dict[str, Any]) -> dict[str, Any]:
    """Everything that must come back to where it was once every VM is gone."""
    v, g = vhm["info"], gvt["info"]
    return {"vms": v["vms"]["count"], "free_frames": v["free_frames"], "frame_owners": v["frame_owners"],
            "vgpus": len(g["vgpus"]), "vgpu_ids_free": g["vgpu_ids_free"], "gm_free_mb": g["gm_free_mb"],
            "frame_pool": g["scheduler"]["frame_pool"], "types": g["types"]}


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile,vgpu_type,batch", [("real", "GVTg_V5_8", 7), ("dense", "AcrnGT_dense_1_2", 64)])
async def test_a_thousand_vm_lifecycles_leak_nothing_in_any_service(profile: str, vgpu_type: str, batch: int) -> None:
    # a generous heartbeat: on a shared 2-core machine the default one can declare a busy peer lost
    hs = HostStack(mem_size_mb=2048, gpu_profile=profile, heartbeat=2.0)
    try:
        await asyncio.to_thread(hs.start)  # its readiness probe runs its own event loop
        ctx = zmq.asyncio.Context()
        guest = await ScriptedGuest(ctx, hs.vhm.endpoint, f"churn-{os.getpid()}", HeartbeatConfig(0.5, 10)).start()
        try:
            gvt0 = await gvt_pool_ready(hs.gvt.endpoint)
            vhm0 = await info(hs.vhm.endpoint)
            base = leak_view(vhm0, gvt0)
            assert base["vms"] == 0 and base["vgpus"] == 0
            assert base["vgpu_ids_free"] == {"real": 7, "dense": 512}[profile]
            pids = {"vhm": hs.vhm.proc.pid, "gvt": hs.gvt.proc.pid, "pgpu": hs.pgpu.proc.pid}
            rss_warm: dict[str, float] = {}
            done, ids_seen = 0, set()
            while done < CYCLES:
                n = min(batch, CYCLES - done)
                vms = await asyncio.gather(*(guest.create_vm(f"churn{done + i}", vcpus=1, ram_mb=16,
                                                             vgpu_type=vgpu_type) for i in range(n)))
                assert all(v.vgpu_id for v in vms) and len({v.vgpu_id for v in vms}) == n
                ids_seen |= {v.vgpu_id for v in vms}
                if done == 0:  # the first batch really holds frames, vGPU ids and GM
                    during = leak_view(await info(hs.vhm.endpoint), await info(hs.gvt.endpoint))
                    assert during["vms"] == n and during["vgpus"] == n
                    assert during["vgpu_ids_free"] == base["vgpu_ids_free"] - n
                    assert during["free_frames"] < base["free_frames"] - n * 16 * 256
                replies = await asyncio.gather(*(guest.conn.request(m.VmDestroy, vm=v.vm, timeout=30) for v in vms))
                assert all(isinstance(r, m.Ok) and r.value > 16 * 256 for r in replies)  # RAM + EPT frames freed
                done += n
                if not rss_warm and done >= 10 * batch:
                    rss_warm = {name: rss_mb(pid) for name, pid in pids.items()}
            vhm1, gvt1 = await info(hs.vhm.endpoint), await info(hs.gvt.endpoint)
            assert leak_view(vhm1, gvt1) == base
            assert gvt1["counters"]["vgpus_created"] == gvt1["counters"]["vgpus_destroyed"] == CYCLES
            assert vhm1["counters"]["vms_created"] == vhm1["counters"]["vms_destroyed"] == CYCLES
            assert ids_seen == set(range(1, batch + 1))  # ids are reused (lowest free), none lost on the way
            # every page the VMs had went back to the machine memory (holes again): what is left is gvt's
            # scratch page and the shadow pages it wrote
            assert vhm1["info"]["resident_mb"] <= vhm0["info"]["resident_mb"] + 1
            # no service grows with the churn (a leak of a vGPU's vregs alone would be 2 MB per cycle)
            growth = {name: round(rss_mb(pid) - rss_warm[name], 1) for name, pid in pids.items()}
            print(f"\nchurn {profile}: {CYCLES} VM lifecycles, RSS growth after warm-up (MB): {growth}")
            assert all(g < 24 for g in growth.values()), growth
        finally:
            await guest.close()
            ctx.destroy(linger=0)
    finally:
        hs.stop()
