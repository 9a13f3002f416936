"""The MPT services of the vhm core (ACRN gvt/acrngt.c / 9.1), driven directly: translation, DMA pins, aperture
mappings, page tracking, guest memory access with bounds, MSI, frames for device models, vGPU binding."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvtsim.protocol import ErrorCode, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.ept import Ept
from gvtsim.services.common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from gvtsim.services.vhm.core import VhmCore
from gvtsim.protocol.errors import Refusal
from gvtsim.services.vhm.outcomes import DataReply, FramesOut, Reply, VmPlan

RAM_MB = 1
RAM_BYTES = RAM_MB << 20


@pytest.fixture
def mem(tmp_path) -> Iterator[MachineMemory]:
    mm = MachineMemory(str(tmp_path / "machine.mem"), 32 << 20, create=True)
    yield mm
    mm.close()


@pytest.fixture
def core(mem) -> VhmCore:
    return VhmCore(mem)


@pytest.fixture
def plan(core) -> VmPlan:
    p = core.create_vm("guestA", "vm", 2, RAM_MB)
    assert isinstance(p, VmPlan)
    return p


@pytest.fixture
def cid(core) -> int:
    return core.add_client("gvt", "gvt")


def rejected(out: object, code: ErrorCode) -> bool:
    return isinstance(out, Refusal) and out.code is code


def test_gfn_to_mfn_follows_the_ram_map(core, plan, cid):
    for gfn, mfn, count in plan.ram:
        for i in (0, count - 1):
            out = core.gfn_to_mfn(cid, plan.vm, gfn + i)
            assert isinstance(out, Reply) and out.value == mfn + i
    assert rejected(core.gfn_to_mfn(cid, plan.vm, RAM_BYTES >> PAGE_SHIFT), ErrorCode.BAD_ADDRESS)
    assert rejected(core.gfn_to_mfn(cid, 42, 0), ErrorCode.NO_SUCH_VM)


def test_dma_map_pins_and_unmap(core, plan, cid):
    out = core.dma_map_guest_page(cid, plan.vm, 3)
    mfn = core.gfn_to_mfn(cid, plan.vm, 3).value
    assert isinstance(out, Reply) and out.value == mfn
    core.dma_map_guest_page(cid, plan.vm, 3)
    assert isinstance(core.dma_unmap_guest_page(cid, plan.vm, mfn), Reply)
    assert isinstance(core.dma_unmap_guest_page(cid, plan.vm, mfn), Reply)
    assert rejected(core.dma_unmap_guest_page(cid, plan.vm, mfn), ErrorCode.BAD_ADDRESS)  # no pin left
    assert rejected(core.dma_map_guest_page(cid, plan.vm, 1 << 20), ErrorCode.BAD_ADDRESS)


def test_map_gfn_to_mfn_outside_ram_only_and_notifies_the_guest(core, mem, plan, cid):
    frames = core.alloc_frames(cid, 4, contiguous=True)
    assert isinstance(frames, FramesOut)
    mfn = frames.runs[0].mfn
    gfn = 0xD0000  # an aperture gfn, far above RAM
    assert rejected(core.map_gfn_to_mfn(cid, plan.vm, 10, mfn, 4, True), ErrorCode.BAD_ADDRESS)  # inside RAM
    assert rejected(core.map_gfn_to_mfn(cid, plan.vm, gfn, mem.frames, 1, True), ErrorCode.BAD_ADDRESS)
    out = core.map_gfn_to_mfn(cid, plan.vm, gfn, mfn, 4, True)
    assert isinstance(out, Reply)
    assert [(n.peer, n.message) for n in out.notices] == [("guestA", m.EptChanged(vm=plan.vm))]
    ept = Ept(mem, plan.ept_root)
    assert ept.translate(gfn + 3) == (mfn + 3, True)
    assert core.gfn_to_mfn(cid, plan.vm, gfn + 1).value == mfn + 1
    assert rejected(core.map_gfn_to_mfn(cid, plan.vm, gfn, mfn, 1, True), ErrorCode.BAD_ADDRESS)  # mapped
    assert isinstance(core.map_gfn_to_mfn(cid, plan.vm, gfn, mfn, 4, False), Reply)
    assert ept.translate(gfn) is None
    assert rejected(core.map_gfn_to_mfn(cid, plan.vm, gfn, mfn, 1, False), ErrorCode.BAD_ADDRESS)


def test_client_loss_unmaps_what_it_mapped_before_its_frames_go(core, mem, plan, cid):
    mfn = core.alloc_frames(cid, 2).runs[0].mfn
    core.map_gfn_to_mfn(cid, plan.vm, 0xD0000, mfn, 1, True)
    loss = core.client_lost(cid)
    assert loss.frames_freed == 2
    assert [n.message for n in loss.notices] == [m.EptChanged(vm=plan.vm)]
    assert Ept(mem, plan.ept_root).translate(0xD0000) is None


def test_page_track_adds_a_wp_range_and_write_protects(core, mem, plan, cid):
    vm = core.vms[plan.vm]
    ept = Ept(mem, plan.ept_root)
    assert core.page_track(cid, plan.vm, 7, True).value == 1
    assert ept.translate(7)[1] is False
    assert vm.ranges.lookup(IoreqType.WP, 7 << PAGE_SHIFT, 8) == cid
    assert vm.ranges.lookup(IoreqType.WP, (8 << PAGE_SHIFT) - 4, 4) == cid
    assert vm.ranges.lookup(IoreqType.WP, 8 << PAGE_SHIFT, 4) is None
    assert core.page_track(cid, plan.vm, 7, True).value == 0  # already tracked
    other = core.add_client("other", "other")
    assert rejected(core.page_track(other, plan.vm, 7, True), ErrorCode.BAD_REQUEST)
    assert rejected(core.page_track(other, plan.vm, 7, False), ErrorCode.BAD_REQUEST)
    assert rejected(core.page_track(cid, plan.vm, RAM_BYTES >> PAGE_SHIFT, True), ErrorCode.BAD_ADDRESS)
    assert core.page_track(cid, plan.vm, 7, False).value == 1
    assert ept.translate(7)[1] is True and len(vm.ranges) == 0


def test_read_write_gpa_across_scattered_frames(core, mem, plan, cid):
    gpa = (16 << PAGE_SHIFT) - 100  # crosses gfn 15 -> 16, which are not contiguous in machine memory
    data = bytes(range(256)) * 2
    assert isinstance(core.write_gpa(cid, plan.vm, gpa, data), Reply)
    out = core.read_gpa(cid, plan.vm, gpa, len(data))
    assert isinstance(out, DataReply) and out.data == data
    ept = Ept(mem, plan.ept_root)
    m15, m16 = ept.translate(15)[0], ept.translate(16)[0]
    assert m16 != m15 + 1  # the guest RAM map really is fragmented here
    assert mem.read((m15 << PAGE_SHIFT) + PAGE_SIZE - 100, 100) == data[:100]
    assert mem.read(m16 << PAGE_SHIFT, 412) == data[100:]


@pytest.mark.parametrize("gpa,length,ok", [
    (RAM_BYTES - 4, 4, True), (RAM_BYTES - 4, 5, False), (RAM_BYTES, 1, False), (0, RAM_BYTES + 1, False),
    (0, 1, True),
])
def test_gpa_bounds(core, plan, cid, gpa, length, ok):
    rd = core.read_gpa(cid, plan.vm, gpa, length)
    wr = core.write_gpa(cid, plan.vm, gpa, b"\x01" * length)
    if ok:
        assert isinstance(rd, DataReply) and isinstance(wr, Reply)
    else:
        assert rejected(rd, ErrorCode.BAD_ADDRESS) and rejected(wr, ErrorCode.BAD_ADDRESS)


def test_inject_msi_goes_to_the_vm_owner_with_a_per_vm_seq(core, plan, cid):
    other = core.create_vm("guestB", "b", 1, RAM_MB)
    a1 = core.inject_msi(cid, plan.vm, 0xFEE0_1000, 0x41)
    a2 = core.inject_msi(cid, plan.vm, 0xFEE0_1000, 0x42)
    b1 = core.inject_msi(cid, other.vm, 0xFEE0_0000, 0x30)
    assert [(n.peer, n.message) for n in a1.notices + a2.notices] == [
        ("guestA", m.Msi(vm=plan.vm, addr=0xFEE0_1000, data=0x41, seq=1)),
        ("guestA", m.Msi(vm=plan.vm, addr=0xFEE0_1000, data=0x42, seq=2))]
    assert [(n.peer, n.message.seq) for n in b1.notices] == [("guestB", 1)]
    assert rejected(core.inject_msi(cid, 999, 0, 0), ErrorCode.NO_SUCH_VM)


def test_frames_for_device_models(core, mem, cid):
    free0 = core.frames.free_frames
    dirty = core.alloc_frames(cid, 10)  # a previous holder writes its frames and gives them back
    for r in dirty.runs:
        mem.fill(r.mfn << PAGE_SHIFT, r.count << PAGE_SHIFT, 0x5A)
    assert core.free_frames(cid, [(r.mfn, r.count) for r in dirty.runs]).value == 10
    out = core.alloc_frames(cid, 10)
    assert {r.mfn for r in out.runs} == {r.mfn for r in dirty.runs}  # the same frames, zero again
    assert isinstance(out, FramesOut) and sum(r.count for r in out.runs) == 10
    for r in out.runs:
        assert mem.read(r.mfn << PAGE_SHIFT, r.count << PAGE_SHIFT) == bytes(r.count << PAGE_SHIFT)
    other = core.add_client("other", "other")
    runs = [(r.mfn, r.count) for r in out.runs]
    assert rejected(core.free_frames(other, runs), ErrorCode.BAD_REQUEST)  # not its frames
    assert rejected(core.free_frames(cid, runs + [(1, 1)]), ErrorCode.BAD_REQUEST)  # all or nothing
    assert core.frames.free_frames == free0 - 10
    assert core.free_frames(cid, runs).value == 10 and core.frames.free_frames == free0
    assert rejected(core.alloc_frames(cid, core.frames.free_frames + 1), ErrorCode.NO_SPACE)
    core.alloc_frames(cid, 3, contiguous=True)
    assert core.client_lost(cid).frames_freed == 3 and core.frames.free_frames == free0


def test_io_range_and_bdf_arguments_are_checked(core, plan, cid):
    assert rejected(core.io_range(cid, plan.vm, IoreqType.PCI, 0, 1, True), ErrorCode.BAD_REQUEST)
    assert rejected(core.io_range(cid, plan.vm, IoreqType.MMIO, 2, 1, True), ErrorCode.BAD_REQUEST)
    assert rejected(core.io_range(cid, plan.vm, IoreqType.PIO, 0xFFF0, 0x10000, True), ErrorCode.BAD_REQUEST)
    assert rejected(core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 1, False), ErrorCode.BAD_REQUEST)
    assert rejected(core.io_range(cid, 4242, IoreqType.MMIO, 0, 1, True), ErrorCode.NO_SUCH_VM)
    assert core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 1, True).value == 1
    assert core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 1, True).value == 0
    assert rejected(core.intercept_bdf(cid, plan.vm, 0, 2, 0, False), ErrorCode.BAD_REQUEST)
    assert isinstance(core.intercept_bdf(cid, plan.vm, 0, 2, 0, True), Reply)
    assert rejected(core.intercept_bdf(core.add_client("x", "x"), plan.vm, 0, 2, 0, True), ErrorCode.BAD_REQUEST)


def test_releasing_calls_on_a_dying_vm_answer_ok(core, plan, cid):
    core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 0xFFF, True)
    core.page_track(cid, plan.vm, 1, True)
    core.attach_vgpu(cid, plan.vm, 1, True)
    td = core.destroy_vm("guestA", plan.vm)
    assert td.vgpu_client == cid
    assert isinstance(core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 0xFFF, False), Reply)
    assert isinstance(core.page_track(cid, plan.vm, 1, False), Reply)
    assert isinstance(core.attach_vgpu(cid, plan.vm, 1, False), Reply)
    assert rejected(core.io_range(cid, plan.vm, IoreqType.MMIO, 0, 0xFFF, True), ErrorCode.NO_SUCH_VM)
    assert rejected(core.read_gpa(cid, plan.vm, 0, 4), ErrorCode.NO_SUCH_VM)


def test_attach_detach_and_dom0_ready(core, plan, cid):
    late = core.add_client("late", "late")
    assert core.device_model() == late  # newest, nobody ready yet
    assert isinstance(core.dom0_ready(cid), Reply)
    assert core.device_model() == cid  # the ready one
    assert isinstance(core.attach_vgpu(cid, plan.vm, 2, True), Reply)
    assert core.vms[plan.vm].vgpu_id == 2 and core.vms[plan.vm].dm == cid
    assert rejected(core.attach_vgpu(cid, plan.vm, 3, True), ErrorCode.BAD_REQUEST)
    assert rejected(core.attach_vgpu(cid, plan.vm, 3, False), ErrorCode.BAD_REQUEST)
    core.client_lost(cid)  # the vGPU dies with its device model...
    assert core.vms[plan.vm].vgpu_id == 0
    assert isinstance(core.attach_vgpu(late, plan.vm, 2, True), Reply)  # ...and a new one re-attaches it
    assert core.vms[plan.vm].dm == late


def test_status_info(core, plan, cid):
    info = core.status_info()
    assert info["vms"]["count"] == 1 and info["vms"]["list"][0]["vm"] == plan.vm
    assert info["vms"]["list"][0]["owner"] == "guestA" and info["vms"]["list"][0]["ram_mb"] == RAM_MB
    assert info["free_frames"] == core.frames.free_frames and info["total_frames"] == core.frames.total
    assert [c["client"] for c in info["clients"]] == [cid]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gpa=st.integers(0, RAM_BYTES - 1), data=st.binary(min_size=1, max_size=9000))
def test_write_then_read_gpa_roundtrip(core, plan, cid, gpa, data):
    out = core.write_gpa(cid, plan.vm, gpa, data)
    if gpa + len(data) > RAM_BYTES:
        assert rejected(out, ErrorCode.BAD_ADDRESS)
    else:
        assert core.read_gpa(cid, plan.vm, gpa, len(data)).data == data
