"""The vhm core, driven directly (no sockets): VM lifecycle, every ioreq slot transition, routing through the
core, fallback, client loss, timeouts, forged ids, page tracking seen by a guest's next write."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvtsim.protocol import ErrorCode, IoreqDir, IoreqState, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.ept import Ept
from gvtsim.services.common.memory import PAGE_SHIFT, MachineMemory
from gvtsim.services.vhm.core import VhmCore
from gvtsim.protocol.errors import Refusal
from gvtsim.services.vhm.outcomes import Completed, Dispatched, IoreqFailed, VmPlan
from gvtsim.services.vhm.vm import VmState

R, W = IoreqDir.READ, IoreqDir.WRITE
MMIO, PIO, PCI, WP = IoreqType.MMIO, IoreqType.PIO, IoreqType.PCI, IoreqType.WP
BAR0 = 0xC000_0000  # above any RAM these tests create


@pytest.fixture
def core(mem) -> VhmCore:
    return VhmCore(mem, ioreq_timeout=5.0)


def make_vm(core: VhmCore, owner: str = "guestA", vcpus: int = 2, ram_mb: int = 2, vgpu: str = "") -> VmPlan:
    plan = core.create_vm(owner, f"vm-{owner}", vcpus, ram_mb, vgpu)
    assert isinstance(plan, VmPlan), plan
    return plan


def ioreq(vm: int, vcpu: int, seq: int, kind: int, d: int, addr: int, size: int = 4, value: int = 0) -> m.Ioreq:
    return m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=kind, dir=d, addr=addr, size=size, value=value)


def mmio_client(core: VhmCore, vm: int, name: str = "gvt") -> int:
    cid = core.add_client(name, name)
    assert core.io_range(cid, vm, MMIO, BAR0, BAR0 + 0xFF_FFFF, True).value == 1
    return cid


# ================================================================================ VM lifecycle and memory
def test_vm_ram_is_non_identity_fragmented_zeroed_and_in_the_ept(core, mem):
    free0 = core.frames.free_frames
    prev = make_vm(core, "guestP", ram_mb=2)  # a previous owner writes all its RAM, then is destroyed
    for _, mfn, count in prev.ram:
        mem.fill(mfn << PAGE_SHIFT, count << PAGE_SHIFT, 0xAA)
    td = core.destroy_vm("guestP", prev.vm)
    core.reap_vm(td.vm, td.serial)
    assert core.frames.free_frames == free0
    plan = make_vm(core, ram_mb=2, vcpus=3)  # lands on the same frames (from the top)
    assert {mfn for _, mfn, _ in plan.ram} & {mfn for _, mfn, _ in prev.ram}
    frames = 2 * 256
    assert sum(c for _, _, c in plan.ram) == frames
    gfn = 0
    for g, mfn, count in plan.ram:
        assert g == gfn and count <= core.ram_max_run and mfn != g
        gfn += count
    ept = Ept(mem, plan.ept_root)  # what the guest process sees
    for g, mfn, count in plan.ram:
        for i in range(count):
            assert ept.translate(g + i) == (mfn + i, True)
            assert mem.read((mfn + i) << PAGE_SHIFT, 64) == bytes(64)
    assert ept.translate(frames) is None  # above RAM: an MMIO hole
    assert ept.translate(BAR0 >> PAGE_SHIFT) is None
    used = free0 - core.frames.free_frames
    assert used > frames  # RAM + EPT root + leaf tables
    assert core.frames.owned_count(f"vm{plan.vm}") == used
    vm = core.vms[plan.vm]
    assert len(vm.slots) == 3 and all(s.state is IoreqState.FREE for s in vm.slots)


def test_freed_frames_are_given_back_and_fresh_ones_are_never_written(core, mem):
    """Memory costs what is touched: creating a VM writes nothing into its RAM frames (they are holes in
    the file, zero), destroying it punches its frames out of the file again."""
    base = mem.resident_bytes()
    plan = make_vm(core, ram_mb=32)
    created = mem.resident_bytes() - base
    assert created < 256 << 10  # 32 MB of RAM: only the EPT (root + 16 leaf tables) holds pages
    for _, mfn, count in plan.ram:  # the guest touches every page of its RAM
        mem.fill(mfn << PAGE_SHIFT, count << PAGE_SHIFT, 0x5A)
    assert mem.resident_bytes() - base >= 32 << 20
    td = core.destroy_vm("guestA", plan.vm)
    core.reap_vm(td.vm, td.serial)
    assert mem.read(plan.ram[0][1] << PAGE_SHIFT, 4096) == bytes(4096)
    if not mem.discarded_frames:
        pytest.skip(f"{mem.path}: this file system cannot punch holes (frames were zeroed by writing)")
    assert mem.resident_bytes() - base <= 0  # every page went back (no zeros written: holes)


def test_vm_ids_are_distinct_and_destroy_returns_every_frame(core):
    free0 = core.frames.free_frames
    a, b = make_vm(core), make_vm(core, "guestB")
    assert a.vm != b.vm and a.vm >= 1
    td = core.destroy_vm("guestA", a.vm)
    assert core.vms[a.vm].state is VmState.DYING
    assert core.reap_vm(td.vm, td.serial) > 0 and a.vm not in core.vms
    td = core.destroy_vm("guestB", b.vm)
    core.reap_vm(td.vm, td.serial)
    assert core.frames.free_frames == free0 and core.frames.owners() == {}


def test_create_with_vgpu_needs_a_device_model(core):
    free0 = core.frames.free_frames
    out = core.create_vm("guestA", "v", 1, 2, "GVTg_V5_4")
    assert isinstance(out, Refusal) and out.code is ErrorCode.NO_DEVICE_MODEL
    assert core.frames.free_frames == free0 and not core.vms
    cid = core.add_client("gvt", "gvt")
    plan = make_vm(core, vgpu="GVTg_V5_4")
    assert plan.vgpu is not None and plan.vgpu.client == cid and plan.vgpu.ept_root == plan.ept_root
    assert plan.vgpu.spec == "GVTg_V5_4" and plan.vgpu.ram_mb == 2
    assert core.vms[plan.vm].state is VmState.CREATING
    # the guest does not know the id yet: no ioreq reaches a CREATING VM
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0), 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.NO_SUCH_VM
    assert core.vgpu_created(plan.vm, plan.serial, cid, 3)
    assert core.vms[plan.vm].state is VmState.RUNNING and core.vms[plan.vm].vgpu_id == 3


def test_vgpu_failure_releases_the_vm(core):
    free0 = core.frames.free_frames
    core.add_client("gvt", "gvt")
    plan = make_vm(core, vgpu="GVTg_V5_1")
    assert core.vgpu_failed(plan.vm, plan.serial) > 0
    assert core.frames.free_frames == free0 and plan.vm not in core.vms
    assert not core.vgpu_created(plan.vm, plan.serial, 1, 1)  # too late: the shell destroys the orphan


def test_out_of_frames_is_no_space_and_leaks_nothing(core):
    free0 = core.frames.free_frames
    out = core.create_vm("guestA", "huge", 1, 4096)
    assert isinstance(out, Refusal) and out.code is ErrorCode.NO_SPACE
    assert core.frames.free_frames == free0 and core.counters["error_no_space"] == 1


def test_forged_and_unknown_vm_ids(core):
    a = make_vm(core, "guestA")
    out = core.submit_ioreq("guestB", ioreq(a.vm, 0, 1, MMIO, R, BAR0), 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.FORGED_ID
    assert (out.vm, out.vcpu, out.seq) == (a.vm, 0, 1)
    assert core.counters["error_forged_id"] == 1
    assert isinstance(core.destroy_vm("guestB", a.vm), Refusal)
    assert core.counters["error_forged_id"] == 2 and core.vms[a.vm].state is VmState.RUNNING
    out = core.submit_ioreq("guestA", ioreq(999, 0, 1, MMIO, R, BAR0), 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.NO_SUCH_VM


@pytest.mark.parametrize("req,why", [
    (ioreq(1, 0, 1, PCI, R, 0xCFC), "guests do not send PCI"),
    (ioreq(1, 5, 1, MMIO, R, BAR0), "no vCPU 5"),
    (ioreq(1, 0, 1, PIO, R, 0xFFFF, size=2), "64 KiB port space"),
    (ioreq(1, 0, 1, WP, W, 0x1000), "not write-protected"),
    (ioreq(1, 0, 1, WP, R, 0x1000), "WP request is a write"),
])
def test_bad_guest_requests(core, req, why):
    make_vm(core)
    out = core.submit_ioreq("guestA", req, 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.BAD_REQUEST and why in out.reason
    assert all(s.state is IoreqState.FREE for s in core.vms[1].slots)


# ========================================================================================= slot machine
def test_slot_free_pending_processing_complete_free(core):
    plan = make_vm(core)
    cid = mmio_client(core, plan.vm)
    slot = core.vms[plan.vm].slots[1]
    assert core.insert_ioreq("guestA", ioreq(plan.vm, 1, 7, MMIO, R, BAR0 + 0x10)) is None
    assert slot.state is IoreqState.PENDING
    out = core.distribute(plan.vm, 1, now=1.0)
    assert isinstance(out, Dispatched) and out.client == cid and out.ioreq.seq == 7
    assert slot.state is IoreqState.PROCESSING and slot.client == cid
    [done] = core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=1, seq=7, value=0xBEEF)], 1.5)
    assert isinstance(done, Completed) and (done.peer, done.vm, done.vcpu, done.seq, done.value) == \
        ("guestA", plan.vm, 1, 7, 0xBEEF)
    assert slot.state is IoreqState.COMPLETE
    assert core.resume(plan.vm, 1, 7) and slot.state is IoreqState.FREE
    assert not core.resume(plan.vm, 1, 7)  # only once


def test_slot_pending_complete_fast_path(core):
    plan = make_vm(core)
    slot = core.vms[plan.vm].slots[0]
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, PIO, W, 0xCF8, value=0x8000_1000), 0.0)
    assert isinstance(out, Completed) and slot.state is IoreqState.COMPLETE
    assert core.resume(plan.vm, 0, 1) and slot.state is IoreqState.FREE
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 2, PIO, R, 0xCF8), 0.0)
    assert isinstance(out, Completed) and out.value == 0x8000_1000  # the latch, read back


@pytest.mark.parametrize("stage", ["PENDING", "PROCESSING", "COMPLETE"])
def test_second_request_on_a_busy_slot_is_refused(core, stage):
    plan = make_vm(core)
    cid = mmio_client(core, plan.vm)
    core.insert_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0))
    if stage != "PENDING":
        core.distribute(plan.vm, 0, 0.0)
    if stage == "COMPLETE":
        core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=1, value=5)], 0.5)
    slot = core.vms[plan.vm].slots[0]
    assert slot.state.name == stage
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 2, MMIO, R, BAR0), 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.SLOT_BUSY and out.seq == 2
    assert slot.state.name == stage and slot.request.seq == 1  # untouched
    assert core.counters["error_slot_busy"] == 1
    # the other vCPU is independent
    assert isinstance(core.submit_ioreq("guestA", ioreq(plan.vm, 1, 1, MMIO, R, BAR0), 0.0), Dispatched)


def test_completion_from_the_wrong_client_or_seq_is_refused(core):
    plan = make_vm(core)
    cid = mmio_client(core, plan.vm)
    other = core.add_client("other", "other")
    core.submit_ioreq("guestA", ioreq(plan.vm, 0, 4, MMIO, R, BAR0), 0.0)
    bad = core.complete(other, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=4, value=1)], 0.5)
    bad += core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=3, value=1),
                               m.IoreqResult(vm=plan.vm, vcpu=1, seq=4, value=1),
                               m.IoreqResult(vm=77, vcpu=0, seq=4, value=1)], 0.5)
    assert all(isinstance(r, Refusal) and r.code is ErrorCode.BAD_REQUEST for r in bad)
    assert core.vms[plan.vm].slots[0].state is IoreqState.PROCESSING
    assert core.counters["stale_completions"] == 4


def test_completion_values_masked_to_size_and_writes_return_zero(core):
    plan = make_vm(core)
    cid = mmio_client(core, plan.vm)
    core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0, size=2), 0.0)
    core.submit_ioreq("guestA", ioreq(plan.vm, 1, 1, MMIO, W, BAR0, size=4, value=9), 0.0)
    a, b = core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=1, value=0x12345),
                               m.IoreqResult(vm=plan.vm, vcpu=1, seq=1, value=0x99)], 0.5)
    assert isinstance(a, Completed) and a.value == 0x2345
    assert isinstance(b, Completed) and b.value == 0


# ============================================================================ routing through the core
@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, 0xFFFF_FFFF_FFFF_FFFF)])
def test_unclaimed_requests_go_to_the_fallback(core, size, ones):
    plan = make_vm(core)
    rd = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, 0xFED0_0000, size=size), 0.0)
    assert isinstance(rd, Completed) and rd.value == ones
    core.resume(plan.vm, 0, 1)
    wr = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 2, PIO, W, 0x3F8, size=size if size < 8 else 4, value=1), 0)
    assert isinstance(wr, Completed) and wr.value == 0
    assert core.vms[plan.vm].slots[0].state is IoreqState.COMPLETE  # the slot still completes
    assert core.counters["ioreq_fallback"] == 2


def test_pci_config_through_cf8_cfc_reaches_the_bdf_client(core):
    plan = make_vm(core)
    cid = core.add_client("gvt", "gvt")
    assert isinstance(core.intercept_bdf(cid, plan.vm, 0, 2, 0, True).value, int)

    def run(seq: int, req: m.Ioreq):
        out = core.submit_ioreq("guestA", req, 0.0)
        if isinstance(out, Completed):
            core.resume(plan.vm, 0, seq)
        return out

    # CONF1 disabled: a config read sees all ones and never reaches the client
    out = run(1, ioreq(plan.vm, 0, 1, PIO, R, 0xCFC, size=2))
    assert isinstance(out, Completed) and out.value == 0xFFFF
    run(2, ioreq(plan.vm, 0, 2, PIO, W, 0xCF8, value=0x8000_1000 | 0x10))  # 00:02.0 reg 0x10 (BAR0)
    out = run(3, ioreq(plan.vm, 0, 3, PIO, R, 0xCFE, size=2))
    assert isinstance(out, Dispatched) and out.client == cid
    assert (out.ioreq.kind, out.ioreq.bus, out.ioreq.dev, out.ioreq.func, out.ioreq.reg) == (PCI, 0, 2, 0, 0x12)
    assert core.vms[plan.vm].slots[0].request.kind == PCI  # rewritten in place
    [done] = core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=3, value=0xFE00)], 3.5)
    assert isinstance(done, Completed) and done.value == 0xFE00
    core.resume(plan.vm, 0, 3)
    # another device: nobody intercepts it, the fallback answers all ones
    run(4, ioreq(plan.vm, 0, 4, PIO, W, 0xCF8, value=0x8000_1800))
    out = run(5, ioreq(plan.vm, 0, 5, PIO, R, 0xCFC))
    assert isinstance(out, Completed) and out.value == 0xFFFF_FFFF
    assert core.ioreq_counts["pci"] == 2


def test_the_latch_is_per_vm(core):
    a, b = make_vm(core, "guestA"), make_vm(core, "guestB")
    core.submit_ioreq("guestA", ioreq(a.vm, 0, 1, PIO, W, 0xCF8, value=0x8000_1000), 0.0)
    out = core.submit_ioreq("guestB", ioreq(b.vm, 0, 1, PIO, R, 0xCF8), 0.0)
    assert isinstance(out, Completed) and out.value == 0


# ============================================================================= client loss and timeouts
def test_client_lost_fails_processing_requests_and_later_ones_fall_back(core):
    plan = make_vm(core)
    cid = mmio_client(core, plan.vm)
    core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0), 0.0)
    core.submit_ioreq("guestA", ioreq(plan.vm, 1, 9, MMIO, W, BAR0 + 4, value=3), 0.0)
    loss = core.client_lost(cid)
    assert sorted((f.vcpu, f.seq) for f in loss.failed) == [(0, 1), (1, 9)]
    assert all(isinstance(f, IoreqFailed) and f.code is ErrorCode.CLIENT_LOST and "gvt" in f.reason
               and f.peer == "guestA" for f in loss.failed)
    assert all(s.state is IoreqState.FREE for s in core.vms[plan.vm].slots)
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 2, MMIO, R, BAR0), 0.0)
    assert isinstance(out, Completed) and out.value == 0xFFFF_FFFF  # the range went with the client
    late = core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=1, seq=9, value=0)], 0.5)
    assert isinstance(late[0], Refusal)


def test_stuck_requests_time_out(core):
    plan = make_vm(core)
    mmio_client(core, plan.vm)
    core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0), now=100.0)
    assert core.tick(104.9) == []
    [f] = core.tick(105.1)
    assert f.code is ErrorCode.TIMEOUT and f.seq == 1
    assert core.vms[plan.vm].slots[0].state is IoreqState.FREE


def test_destroy_and_guest_loss_fail_in_flight_requests(core):
    free0 = core.frames.free_frames
    a, b = make_vm(core), make_vm(core)
    c = make_vm(core, "guestB")
    cid = mmio_client(core, a.vm)
    core.io_range(cid, b.vm, MMIO, BAR0, BAR0 + 0xFFF, True)
    core.submit_ioreq("guestA", ioreq(a.vm, 0, 1, MMIO, R, BAR0), 0.0)
    td = core.destroy_vm("guestA", a.vm)
    assert [(f.vm, f.code) for f in td.failed] == [(a.vm, ErrorCode.NO_SUCH_VM)]
    assert len(core.vms[a.vm].ranges) == 0
    assert isinstance(core.destroy_vm("guestA", a.vm), Refusal)  # already dying
    core.reap_vm(td.vm, td.serial)
    tds = core.guest_lost("guestA")
    assert [t.vm for t in tds] == [b.vm]
    for t in tds:
        core.reap_vm(t.vm, t.serial)
    assert list(core.vms) == [c.vm]
    td = core.destroy_vm("guestB", c.vm)
    core.reap_vm(td.vm, td.serial)
    assert core.frames.free_frames == free0


def test_reset_clears_in_flight_requests_and_the_latch(core):
    plan = make_vm(core)
    cid = core.add_client("gvt", "gvt")
    core.attach_vgpu(cid, plan.vm, 2, True)
    core.io_range(cid, plan.vm, MMIO, BAR0, BAR0 + 0xFFF, True)
    core.submit_ioreq("guestA", ioreq(plan.vm, 1, 1, PIO, W, 0xCF8, value=0x8000_0000), 0.0)
    core.resume(plan.vm, 1, 1)
    core.submit_ioreq("guestA", ioreq(plan.vm, 0, 1, MMIO, R, BAR0), 0.0)
    td = core.reset_vm("guestA", plan.vm)
    assert [f.code for f in td.failed] == [ErrorCode.GPU_RESET] and td.vgpu_client == cid
    vm = core.vms[plan.vm]
    assert vm.pci_conf_addr == 0 and vm.state is VmState.RUNNING and len(vm.ranges) == 1


# ================================================================================= page tracking (WP)
def guest_write(core: VhmCore, mem: MachineMemory, plan: VmPlan, vcpu: int, seq: int, gpa: int, value: int):
    """What the guest runtime does for a 4-byte RAM write: read its EPT entry first; writable -> store in
    RAM directly, write-protected -> a WP ioreq."""
    ept = Ept(mem, plan.ept_root)
    mfn, writable = ept.translate(gpa >> PAGE_SHIFT)
    if writable:
        mem.write_u32(mfn << PAGE_SHIFT | gpa & 0xFFF, value)
        return "plain"
    return core.submit_ioreq("guestA", ioreq(plan.vm, vcpu, seq, WP, W, gpa, value=value), 0.0)


def test_page_track_on_gives_wp_requests_off_gives_plain_writes(core, mem):
    plan = make_vm(core)
    cid = core.add_client("gvt", "gvt")
    gfn, gpa = 5, (5 << PAGE_SHIFT) + 0x40
    assert core.page_track(cid, plan.vm, gfn, True).value == 1
    out = guest_write(core, mem, plan, 0, 1, gpa, 0xAABB)
    assert isinstance(out, Dispatched) and out.client == cid
    assert (out.ioreq.kind, out.ioreq.addr, out.ioreq.value) == (WP, gpa, 0xAABB)
    assert core.vms[plan.vm].memory.read(gpa, 4) == bytes(4)  # the write did not land
    core.complete(cid, [m.IoreqResult(vm=plan.vm, vcpu=0, seq=1, value=0)], 0.5)
    core.resume(plan.vm, 0, 1)
    assert core.page_track(cid, plan.vm, gfn, False).value == 1
    assert guest_write(core, mem, plan, 0, 2, gpa, 0xCCDD) == "plain"
    assert core.vms[plan.vm].memory.read(gpa, 4) == (0xCCDD).to_bytes(4, "little")
    # a WP request for a page that is no longer protected is refused
    out = core.submit_ioreq("guestA", ioreq(plan.vm, 0, 3, WP, W, gpa, value=1), 0.0)
    assert isinstance(out, Refusal) and out.code is ErrorCode.BAD_REQUEST


def test_client_loss_unprotects_its_pages(core, mem):
    plan = make_vm(core)
    cid = core.add_client("gvt", "gvt")
    core.page_track(cid, plan.vm, 3, True)
    core.client_lost(cid)
    assert guest_write(core, mem, plan, 0, 1, 3 << PAGE_SHIFT, 1) == "plain"


# ============================================================================== property: exactly once
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["submit", "complete", "lose", "tick"]), st.integers(0, 3),
                              st.sampled_from([0x3F8, BAR0, BAR0 + 0x1000, 0xCF8])), max_size=60))
def test_every_request_ends_exactly_once(mem, ops):
    """Whatever the interleaving of submissions, completions, client losses and timeouts, every accepted
    request ends exactly once (answered or failed) and its slot is FREE again once the guest resumed."""
    core = VhmCore(mem, ioreq_timeout=5.0)
    plan = make_vm(core, vcpus=4, ram_mb=1)
    cid = mmio_client(core, plan.vm)
    seq, now = 0, 0.0
    accepted: set[tuple[int, int]] = set()
    ended: list[tuple[int, int]] = []

    def finish(outs):
        for o in outs:
            if isinstance(o, Completed):
                ended.append((o.vcpu, o.seq))
                assert core.resume(o.vm, o.vcpu, o.seq)
            elif isinstance(o, IoreqFailed):
                ended.append((o.vcpu, o.seq))

    for op, vcpu, addr in ops:
        now += 1.0
        if op == "submit":
            seq += 1
            out = core.submit_ioreq("guestA", ioreq(plan.vm, vcpu, seq, PIO if addr < 0x10000 else MMIO, R, addr),
                                    now)
            if not isinstance(out, Refusal):
                accepted.add((vcpu, seq))
                finish([out])
            else:
                assert out.code is ErrorCode.SLOT_BUSY
        elif op == "complete":
            vm = core.vms[plan.vm]
            s = vm.slots[vcpu]
            if s.state is IoreqState.PROCESSING:
                finish(core.complete(s.client, [m.IoreqResult(vm=plan.vm, vcpu=vcpu, seq=s.request.seq, value=1)], now))
        elif op == "lose":
            finish(core.client_lost(cid).failed)
            cid = mmio_client(core, plan.vm, f"gvt{seq}")
        else:
            finish(core.tick(now + 10))
    finish(core.client_lost(cid).failed)
    assert sorted(ended) == sorted(accepted) and len(set(ended)) == len(ended)
    assert all(s.state is IoreqState.FREE for s in core.vms[plan.vm].slots)


def test_a_vm_asked_again_by_name_names_the_stale_one_of_that_connection_only(core):
    a = make_vm(core, "guestA")
    name = core.vms[a.vm].name
    assert core.stale_namesake("guestA", name) == a.vm
    assert core.stale_namesake("guestB", name) is None  # another guest's namesake is not ours to replace
    assert core.stale_namesake("guestA", "other") is None
    core.destroy_vm("guestA", a.vm)
    assert core.stale_namesake("guestA", name) is None  # already going


def test_a_lost_guest_connection_with_a_live_successor_hands_its_vms_over(core):
    """The same guest (id and epoch) on a second connection, the first one dying after: its VMs stay and
    are the second connection's (they are not destroyed, and the first connection owns nothing)."""
    a, b = make_vm(core, "guestA"), make_vm(core, "guestA")
    other = make_vm(core, "guestB")
    assert sorted(core.hand_over("guestA", "guestA-again")) == sorted([a.vm, b.vm])
    assert core.guest_lost("guestA") == []  # the old connection owns nothing any more
    assert core.vms[a.vm].owner == core.vms[b.vm].owner == "guestA-again"
    assert core.vms[other.vm].owner == "guestB"
    assert core.counters["vms_moved_to_reconnected_guest"] == 2
    assert [t.vm for t in core.guest_lost("guestA-again")] == sorted([a.vm, b.vm])  # then lost for real
