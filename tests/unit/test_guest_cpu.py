"""The guest's CPU view: RAM goes straight to machine memory through the EPT, write-protected pages and MMIO
holes trap as ioreqs of the right kind, one outstanding ioreq per vCPU."""

from __future__ import annotations

import pytest

from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.ept import ROOT_FRAMES, Ept
from gvtsim.services.common.memory import FrameAllocator, MachineMemory
from gvtsim.services.guest.cpu import GuestMachine
from gvtsim.services.guest.runtime import Runtime


@pytest.fixture
def vm(tmp_path):
    mem = MachineMemory(str(tmp_path / "m.mem"), 8 << 20, create=True)
    alloc = FrameAllocator(mem.frames)
    root = alloc.alloc(ROOT_FRAMES, "vm", contiguous=True)[0].mfn
    ept = Ept(mem, root, lambda: alloc.alloc(1, "vm")[0].mfn)
    ram = alloc.alloc(16, "vm", from_top=True, max_run=3)
    gfn = 0
    for run in ram:
        ept.map(gfn, run.mfn, run.count)
        gfn += run.count
    sent: list[m.Ioreq] = []
    rt = Runtime()
    machine = GuestMachine(vm_id=7, vcpus=2, mem=mem, ept_root=root, ram_bytes=16 << 12, rt=rt)

    def run(gen):  # the vCPU's thread to its end, each ioreq answered as it comes out (no event loop)
        th = rt.spawn(gen, rt.now, "test", 7)
        while rt.outbox:
            req = rt.outbox.pop(0)
            sent.append(req)
            rt.ioreq_done(req.vm, req.vcpu, req.seq, 0x1234 if req.dir == IoreqDir.READ else 0, rt.now)
        assert th.outcome is not None and not hasattr(th.outcome, "error"), th.outcome
        return th.outcome.value  # type: ignore[union-attr]

    machine.run = run  # type: ignore[attr-defined]
    yield machine, ept, sent, mem
    mem.close()


def test_ram_is_direct_and_lands_in_the_mapped_machine_frame(vm):
    machine, ept, sent, mem = vm
    machine.run(machine.write_mem(0x1FFC, b"abcdefgh"))  # straddles gfn 1 and gfn 2
    assert sent == []
    assert machine.read_mem(0x1FFC, 8) == b"abcdefgh"
    mfn1, _ = ept.translate(1)
    mfn2, _ = ept.translate(2)
    assert (mfn1, mfn2) != (1, 2)  # gfn != mfn
    assert mem.read((mfn1 << 12) + 0xFFC, 4) == b"abcd" and mem.read(mfn2 << 12, 4) == b"efgh"


def test_write_protected_page_traps_as_wp_and_is_not_committed(vm):
    machine, ept, sent, _ = vm
    machine.run(machine.write_u64(0x3000, 0x1111))
    ept.set_write_protect(3, True)
    machine.run(machine.write_mem(0x3004, bytes(range(12))))  # 12 bytes: 4 + 8, naturally aligned pieces
    assert [(r.kind, r.addr, r.size) for r in sent] == [(IoreqType.WP, 0x3004, 4), (IoreqType.WP, 0x3008, 8)]
    assert machine.read_u64(0x3000) == 0x1111  # the hypervisor does not commit a WP write; the handler does
    ept.set_write_protect(3, False)
    machine.run(machine.write_u32(0x3000, 5))
    assert len(sent) == 2 and machine.read_u32(0x3000) == 5  # tracking off: a plain write again


def test_mmio_and_pio_trap(vm):
    machine, _, sent, _ = vm
    assert machine.run(machine.mmio_read(0xF0078000, 8)) == 0x1234
    machine.run(machine.outl(0xCF8, 0x80001000))
    assert [(r.kind, r.dir, r.addr, r.size, r.vm, r.vcpu) for r in sent] == [
        (IoreqType.MMIO, IoreqDir.READ, 0xF0078000, 8, 7, 0), (IoreqType.PIO, IoreqDir.WRITE, 0xCF8, 4, 7, 0)]
    assert machine.ioreqs == {"MMIO": 1, "PIO": 1}


def test_one_outstanding_ioreq_per_vcpu(vm):
    machine, _, sent, _ = vm
    rt = machine.rt
    inflight = {0: 0, 1: 0}
    peak = {0: 0, 1: 0}
    threads = [rt.spawn(machine.mmio_read(0xF0000000 + 4 * i, 4, vcpu=i % 2), 0.0, f"t{i}", 7) for i in range(20)]
    pending: list[m.Ioreq] = []
    while rt.outbox or pending:  # the host answers late: everything the vCPUs let out is in flight at once
        for req in rt.outbox:
            inflight[req.vcpu] += 1
            peak[req.vcpu] = max(peak[req.vcpu], inflight[req.vcpu])
        pending += rt.outbox
        rt.outbox.clear()
        req = pending.pop(0)
        inflight[req.vcpu] -= 1
        rt.ioreq_done(req.vm, req.vcpu, req.seq, 0, 0.001)
    assert all(th.outcome is not None for th in threads)
    assert peak == {0: 1, 1: 1}  # both vCPUs ran, each with at most one ioreq in flight
