"""End to end with every process real: vhm, pgpu, gvt and two guest processes.

Two VMs with different vGPU types run workloads the GPU executes; every result is verified by its guest;
the user interrupts each VM saw equal the completions that asked for one; and VM A's workloads (its GGTT
writes, its GPU DMA, its aperture writes) leave VM B's memory byte-for-byte unchanged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from gvtsim.orchestration.health import probe_sync
from gvtsim.services.common.ept import Ept
from gvtsim.services.common.memory import PAGE_SHIFT, MachineMemory
from gvtsim.orchestration.hoststack import HostStack
from support.procs import ServiceProc

pytestmark = pytest.mark.service
WORKLOADS = 24


@pytest.fixture
def stack() -> Iterator[dict]:
    with HostStack() as hs:
        def guest(name: str, vgpu_type: str) -> ServiceProc:
            return hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--vgpu-types", vgpu_type,
                            "--workloads", str(WORKLOADS), "--name-prefix", name, name=name)

        yield {"mem": hs.mem, "gvt": hs.gvt, "vhm": hs.vhm, "guest": guest}


def ram_digest(mem: MachineMemory, ept_root: int, ram_mb: int) -> str:
    """SHA-256 of a VM's whole RAM, read frame by frame through its EPT."""
    ept = Ept(mem, ept_root)
    h = hashlib.sha256()
    for gfn in range(ram_mb << 8):
        t = ept.translate(gfn)
        assert t is not None, f"RAM gfn {gfn:#x} unmapped"
        h.update(mem.read(t[0] << PAGE_SHIFT, 1 << PAGE_SHIFT))
    return h.hexdigest()


def check_vm(done: dict) -> dict:
    assert done["workloads_failed"] == 0, done
    assert done["workloads_verified"] == done["workloads_submitted"] == WORKLOADS
    (vm,) = done["per_vm"]
    assert vm["state"] == "done" and vm["failures"] == []
    assert set(vm["by_kind"]) == {"store", "fill", "copy", "aperture_copy"}
    # every completion that asked for a user interrupt delivered exactly one, through an MSI
    assert vm["user_irqs"] == vm["user_irqs_asked"] and sum(vm["user_irqs_asked"].values()) > 0
    assert vm["completions"] == {"rcs": WORKLOADS // 2, "bcs": WORKLOADS // 2}
    assert vm["msis"] > 0
    return vm


def test_two_vms_two_types_verified_and_isolated(stack):
    b = stack["guest"]("b", "GVTg_V5_4")
    b_ready = b.wait_event("vm_ready", timeout=30)
    b_done = b.wait_event("done", timeout=120)
    vm_b = check_vm(b_done)
    mem = MachineMemory(stack["mem"])
    try:
        before = ram_digest(mem, b_ready["ept_root"], b_ready["ram_mb"])

        a = stack["guest"]("a", "GVTg_V5_8")  # a different type, a different slice of GM
        a_ready = a.wait_event("vm_ready", timeout=30)
        assert a_ready["vgpu_id"] != b_ready["vgpu_id"]
        assert a_ready["balloon"] != b_ready["balloon"]
        vm_a = check_vm(a.wait_event("done", timeout=120))
        assert vm_a["vgpu_type"] == "GVTg_V5_8" and vm_b["vgpu_type"] == "GVTg_V5_4"

        assert ram_digest(mem, b_ready["ept_root"], b_ready["ram_mb"]) == before, "VM A changed VM B's RAM"
    finally:
        mem.close()
    # gvt injected at least as many MSIs as each guest received (none invented on the way)
    status = probe_sync(stack["gvt"].endpoint, want_reply=True)
    injected = status.info["msis_by_vm"]
    assert injected[str(a_ready["vm"])] >= vm_a["msis"] and injected[str(b_ready["vm"])] >= vm_b["msis"]
    # the two vCPUs of each VM, trapping in the same turn, sent their ioreqs together (IOREQ_BATCH) and
    # were answered together (IOREQ_DONE_BATCH); every answer was still checked by the workloads above
    vhm = probe_sync(stack["vhm"].endpoint, want_reply=True).counters
    assert vhm["ioreq_batches"] > 0 and vhm["done_batches"] > 0, vhm


def test_a_niced_guest_runs_below_the_services_and_still_verifies() -> None:
    """``--nice`` (what `gvtsim load` gives its guests): every thread of the guest process, libzmq's I/O
    thread included, runs at the lower priority; the host services keep theirs; the workloads verify."""
    import psutil

    with HostStack() as hs:
        g = hs.guest("--vms", "1", "--vcpus", "2", "--ram-mb", "16", "--workloads", "4", "--nice", "7", name="niced")
        g.wait_event("vm_ready", timeout=30)
        assert g.proc is not None
        threads = [psutil.Process(t.id) for t in psutil.Process(g.proc.pid).threads()]
        assert len(threads) > 1 and {t.nice() for t in threads} == {7}
        assert hs.vhm.proc is not None and psutil.Process(hs.vhm.proc.pid).nice() == 0
        done = g.wait_event("done", timeout=120)
        assert done["workloads_failed"] == 0 and done["workloads_verified"] == 4
