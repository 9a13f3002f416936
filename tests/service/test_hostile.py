"""Hostile guests against real processes: vhm, pgpu, gvt, one normal guest and four hostile guests.

Each hostile VM tries one attack after boot (services/guest/hostile.py): an LRI to a register off the
whitelist, MI_UPDATE_GTT, a store to a GGTT address outside its slices, a GGTT PTE naming a frame that is
not its own. The first three put that vGPU alone in failsafe (gvt STATUS shows it) and its guest sees a
hang; the PTE attack's write lands in the scratch page. Meanwhile the normal VM's workloads all verify.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.services.common.memory import PAGE_SHIFT, MachineMemory
from gvtsim.services.guest.hostile import MARK
from gvtsim.orchestration.hoststack import HostStack
from support.procs import ServiceProc

pytestmark = pytest.mark.service
WORKLOADS = 24
FAILSAFE_ATTACKS = ("lri", "update_gtt", "ggtt_oob")


@pytest.fixture
def stack() -> Iterator[dict]:
    with HostStack() as hs:
        def guest(name: str, vgpu_type: str, *extra: str) -> ServiceProc:
            return hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", vgpu_type,
                            "--name-prefix", name, *extra, name=name)

        yield {"mem": hs.mem, "gvt": hs.gvt, "guest": guest}


def test_hostile_vgpus_go_failsafe_or_hit_scratch_and_the_normal_vm_verifies(stack):
    normal = stack["guest"]("normal", "GVTg_V5_4", "--workloads", str(WORKLOADS))
    normal_ready = normal.wait_event("vm_ready", timeout=30)
    hostiles = {kind: stack["guest"](f"h_{kind}_", "GVTg_V5_8", "--workloads", "0", "--hang-timeout", "1",
                                     "--hostile", kind)
                for kind in (*FAILSAFE_ATTACKS, "foreign_pte")}
    seen = {kind: p.wait_event("hostile", timeout=30) for kind, p in hostiles.items()}

    # the normal VM, running alongside, verified every workload
    done = normal.wait_event("done", timeout=120)
    assert done["workloads_failed"] == 0, done
    assert done["workloads_verified"] == done["workloads_submitted"] == WORKLOADS

    status = probe_sync(stack["gvt"].endpoint, want_reply=True)
    assert status is not None
    failsafe_vms = {str(seen[k]["vm"]) for k in FAILSAFE_ATTACKS}
    for kind in FAILSAFE_ATTACKS:  # refused by the scanner: a hang for that guest only
        assert seen[kind]["hang"] is True and "hang" in seen[kind]["error"], seen[kind]
    assert status.info["failsafe"] == {vm: "GUEST_ERR" for vm in failsafe_vms}
    by_vm = {v["vm"]: v for v in status.info["vgpus"]}
    assert by_vm[normal_ready["vm"]]["failsafe"] is False and by_vm[seen["foreign_pte"]["vm"]]["failsafe"] is False
    assert all(by_vm[int(vm)]["failsafe"] for vm in failsafe_vms)
    assert status.counters["cmd_scan_errors"] == len(FAILSAFE_ATTACKS)
    assert status.counters["cmd_scan_ebadrqc"] == 2 and status.counters["cmd_scan_efault"] == 1

    # the foreign PTE became the scratch page: the GPU's write landed there, the guest saw no hang
    fp = seen["foreign_pte"]
    assert fp["hang"] is False and fp["pte_read_back"] == (fp["gfn"] << PAGE_SHIFT) | 1
    mem = MachineMemory(stack["mem"])
    try:
        assert mem.read_u32((status.info["scratch_mfn"] << PAGE_SHIFT) + fp["offset"]) == MARK
    finally:
        mem.close()
