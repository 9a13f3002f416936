"""Device models across reconnects, driven on the vhm core alone (no sockets, time passed in): detach and
resume with the same epoch keeps every piece of state and re-sends waiting ioreqs once; a new epoch within
the grace takes the client over and holds its requests until its VGPU_SYNC says which vGPUs it carries on;
no grace or the end of the grace period loses the client and tells its VMs VGPU_LOST with a reason;
VGPU_SYNC keeps, destroys and reports lost vGPUs so that afterwards no VM has a dead vGPU and no vGPU lacks a VM."""

from __future__ import annotations


import pytest

from gvtsim.protocol import ErrorCode, IoreqDir, IoreqState, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.vhm.core import VhmCore
from gvtsim.services.vhm.outcomes import Completed, Dispatched, VmPlan
from gvtsim.services.vhm.vm import VmState

R, W = IoreqDir.READ, IoreqDir.WRITE
MMIO = IoreqType.MMIO
BAR0 = 0xC000_0000
GRACE = 5.0
EPOCH = 1111


@pytest.fixture
def core(mem) -> VhmCore:
    return VhmCore(mem, ioreq_timeout=30.0, client_grace=GRACE)


def ioreq(vm: int, vcpu: int, seq: int, d: int = R, addr: int = BAR0, value: int = 0) -> m.Ioreq:
    return m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=MMIO, dir=d, addr=addr, size=4, value=value)


def vm_with_vgpu(core: VhmCore, cid: int, owner: str = "guestA", vgpu_id: int = 1) -> int:
    """A RUNNING VM whose vGPU ``vgpu_id`` lives at client ``cid``, with BAR0 trapped, 00:02.0 claimed, one
    tracked page and one frame the client allocated."""
    plan = core.create_vm(owner, f"vm-{owner}", 2, 2, "GVTg_V5_4")
    assert isinstance(plan, VmPlan) and plan.vgpu is not None and plan.vgpu.client == cid
    assert core.vgpu_created(plan.vm, plan.serial, cid, vgpu_id)
    assert core.io_range(cid, plan.vm, MMIO, BAR0, BAR0 + 0xFF_FFFF, True).value == 1
    core.intercept_bdf(cid, plan.vm, 0, 2, 0, True)
    core.page_track(cid, plan.vm, 7, True)
    return plan.vm


def test_same_epoch_resumes_the_client_with_all_its_state(core):
    hello = core.client_hello("sess1", "gvt-a", EPOCH, 0.0)
    cid = hello.client
    assert not hello.resumed and hello.losses == []
    vm = vm_with_vgpu(core, cid)
    frames = core.alloc_frames(cid, 3, False)
    in_flight = core.submit_ioreq("guestA", ioreq(vm, 0, 1), 1.0)
    assert isinstance(in_flight, Dispatched)

    assert core.client_session_ended(cid, "sess1", 2.0) is None  # detached, nothing lost
    assert not core.connected(cid) and core.next_deadline() == pytest.approx(2.0 + GRACE)
    assert core.device_model() is None  # new VMs are not promised to a detached device model
    held = core.submit_ioreq("guestA", ioreq(vm, 1, 1, W, BAR0 + 4, 5), 3.0)
    assert isinstance(held, Dispatched)  # waits PROCESSING, not answered with all ones
    assert core.expire_clients(2.0 + GRACE - 0.01) == []

    again = core.client_hello("sess2", "gvt-a", EPOCH, 4.0)
    assert again.resumed and again.client == cid and again.losses == []
    assert core.connected(cid) and core.client_of("sess2") == cid and core.client_of("sess1") is None
    v = core.vms[vm]
    assert (v.vgpu_id, v.dm) == (1, cid) and v.page_tracks == {7: cid}
    assert v.bdfs.claim((0, 2, 0), cid + 1) == cid  # still claimed
    assert core.frames.owned_count(f"client:{cid}") == sum(r.count for r in frames.runs)

    rec = core.reconcile(cid, [(vm, 1)], 4.0)
    assert rec.resumed and rec.keep == [vm] and rec.destroy == [] and rec.notices == []
    assert rec.reply(9) == m.VgpuSyncReply(req=9, resumed=True, keep=[vm], destroy=[])
    resent = core.redispatch(cid, 4.0)
    assert [(d.ioreq.vcpu, d.ioreq.seq) for d in resent] == [(0, 1), (1, 1)]
    assert core.redispatch(cid, 4.0) == []  # once
    [done] = core.complete(cid, [m.IoreqResult(vm=vm, vcpu=0, seq=1, value=0x1234)], 4.1)
    assert isinstance(done, Completed) and done.value == 0x1234
    assert core.expire_clients(100.0) == [] and cid in core.clients


def test_a_stale_session_ending_after_the_resume_changes_nothing(core):
    cid = core.client_hello("old", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    sent = core.submit_ioreq("guestA", ioreq(vm, 0, 1), 0.5)  # went out on the old connection
    assert isinstance(sent, Dispatched)
    # the connection dropped without a word: the new session's HELLO comes before the old one times out
    assert core.client_hello("new", "gvt-a", EPOCH, 1.0).resumed
    assert core.client_session_ended(cid, "old", 2.5) is None
    assert core.connected(cid) and core.vms[vm].dm == cid
    assert core.next_deadline() == pytest.approx(0.5 + core.ioreq_timeout)  # only the ioreq timeout is due
    assert [(d.ioreq.vcpu, d.ioreq.seq) for d in core.redispatch(cid, 1.0)] == [(0, 1)]  # sent again, on the new one


def test_new_epoch_without_grace_loses_the_old_incarnation_and_tells_its_vms(mem):
    core = VhmCore(mem, client_grace=0.0)
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    core.submit_ioreq("guestA", ioreq(vm, 0, 1), 0.5)
    hello = core.client_hello("s2", "gvt-a", EPOCH + 1, 2.0)
    assert not hello.resumed and not hello.taken_over and hello.client != cid and cid not in core.clients
    [loss] = hello.losses
    assert [(f.vcpu, f.code) for f in loss.failed] == [(0, ErrorCode.CLIENT_LOST)]
    lost = [n for n in loss.notices if isinstance(n.message, m.VgpuLost)]
    assert [(n.peer, n.message.vm) for n in lost] == [("guestA", vm)]
    assert "restarted (new epoch)" in lost[0].message.reason
    v = core.vms[vm]
    assert (v.vgpu_id, v.dm, v.page_tracks) == (0, None, {}) and not v.memory.is_write_protected(7)
    assert core.frames.owned_count(f"client:{cid}") == 0
    # the restarted device model has no vGPU for it; nothing is kept, the guest was already told
    rec = core.reconcile(hello.client, [], 2.0)
    assert (rec.keep, rec.destroy, rec.notices, rec.resumed) == ([], [], [], False)


def restarted_with_work_waiting(core: VhmCore) -> tuple[int, int, int]:
    """A device model with one VM (vCPU 0 PROCESSING when it died), detached at 1.0; a request for its range
    arrives while it is away (vCPU 1), then a new incarnation (new epoch) says HELLO at 2.0. Returns
    (client, vm, frames it had allocated)."""
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    frames = core.alloc_frames(cid, 3, False)
    assert isinstance(core.submit_ioreq("guestA", ioreq(vm, 0, 1, W, BAR0 + 0x100000, 0x11), 0.5), Dispatched)
    assert core.client_session_ended(cid, "s1", 1.0) is None
    away = core.submit_ioreq("guestA", ioreq(vm, 1, 1, W, BAR0 + 0x100008, 0x22), 1.5)
    assert isinstance(away, Dispatched)  # never the fallback's dropped write for a range with a client
    hello = core.client_hello("s2", "gvt-a", EPOCH + 1, 2.0)
    assert hello.taken_over and not hello.resumed and hello.client == cid and hello.losses == []
    assert core.connected(cid) and core.client_of("s2") == cid and core.clients[cid].epoch == EPOCH + 1
    return cid, vm, sum(r.count for r in frames.runs)


def test_new_epoch_takes_over_and_nothing_is_sent_before_its_vgpu_sync(core):
    cid, vm, nframes = restarted_with_work_waiting(core)
    assert core.redispatch(cid, 2.0) == []  # it has not said yet which vGPUs it carries on
    # the VM's own requests keep waiting at it, PROCESSING (not PENDING for the fallback, not failed)
    v = core.vms[vm]
    assert [s.state for s in v.slots] == [IoreqState.PROCESSING, IoreqState.PROCESSING]
    assert core.expire_clients(2.0 + 10 * GRACE) == []  # it is back: no grace runs any more
    assert core.clients[cid].restarting and not core.clients[cid].accepting

    rec = core.reconcile(cid, [(vm, 1)], 2.1)  # it restored the vGPU from its saved state
    assert rec.resumed and rec.keep == [vm] and rec.notices == [] and rec.failed == []
    assert core.counters["clients_restored"] == 1
    assert core.frames.owned_count(f"client:{cid}") == nframes  # its shadows' frames stay its own
    resent = core.redispatch(cid, 2.1)
    assert [(d.ioreq.vcpu, d.ioreq.seq, d.ioreq.value) for d in resent] == [(0, 1, 0x11), (1, 1, 0x22)]
    assert core.redispatch(cid, 2.2) == []  # once
    assert core.next_deadline() == pytest.approx(2.1 + core.ioreq_timeout)  # timed from the new send
    done = core.complete(cid, [m.IoreqResult(vm=vm, vcpu=0, seq=1, value=0),
                               m.IoreqResult(vm=vm, vcpu=1, seq=1, value=0)], 2.2)
    assert all(isinstance(d, Completed) for d in done)
    # a second answer for the same request (e.g. one the dead incarnation sent late) is refused: once only
    [dup] = core.complete(cid, [m.IoreqResult(vm=vm, vcpu=0, seq=1, value=0)], 2.3)
    assert not isinstance(dup, Completed)
    assert core.vms[vm].ranges.lookup(MMIO, BAR0, 4) == cid


def test_new_epoch_without_the_old_state_takes_the_reset_path(core):
    cid, vm, _ = restarted_with_work_waiting(core)
    rec = core.reconcile(cid, [], 2.1)  # a fresh start: no saved state, or its check failed
    assert not rec.resumed and rec.keep == []
    assert sorted((f.vcpu, f.code) for f in rec.failed) == [(0, ErrorCode.GPU_RESET), (1, ErrorCode.GPU_RESET)]
    [n] = rec.notices
    assert n.peer == "guestA" and isinstance(n.message, m.VgpuLost) and n.message.vm == vm
    assert "restarted without the state of vGPU 1" in n.message.reason
    assert core.frames.owned_count(f"client:{cid}") == 0  # the old incarnation's frames went
    assert core.redispatch(cid, 2.1) == []
    out = core.submit_ioreq("guestA", ioreq(vm, 0, 2), 2.2)
    assert isinstance(out, Completed) and out.value == 0xFFFF_FFFF  # its ranges went with the vGPU


def test_new_epoch_before_the_old_session_is_noticed_dead(core):
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    core.submit_ioreq("guestA", ioreq(vm, 0, 1), 0.5)  # went out to the process that is now dead
    hello = core.client_hello("s2", "gvt-a", EPOCH + 1, 1.0)
    assert hello.taken_over and hello.client == cid
    assert core.client_session_ended(cid, "s1", 1.5) is None  # the dead session ending changes nothing now
    assert core.connected(cid)
    assert core.reconcile(cid, [(vm, 1)], 1.6).keep == [vm]
    assert [(d.ioreq.vcpu, d.ioreq.seq) for d in core.redispatch(cid, 1.6)] == [(0, 1)]


def test_a_restarted_device_model_that_never_comes_back_is_lost_after_the_grace(core):
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    core.submit_ioreq("guestA", ioreq(vm, 0, 1), 0.5)
    core.client_session_ended(cid, "s1", 1.0)
    assert core.next_deadline() == pytest.approx(1.0 + GRACE)
    [loss] = core.expire_clients(1.0 + GRACE)
    [n] = [n for n in loss.notices if isinstance(n.message, m.VgpuLost)]
    assert n.message.vm == vm and "no reconnect within 5s" in n.message.reason
    assert [(f.vcpu, f.code) for f in loss.failed] == [(0, ErrorCode.CLIENT_LOST)]
    late = core.client_hello("s2", "gvt-a", EPOCH + 1, 9.0)  # too late: a new client, nothing to take over
    assert not late.taken_over and late.client != cid


def test_grace_expiry_loses_the_client(core):
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    core.submit_ioreq("guestA", ioreq(vm, 1, 4), 0.0)
    core.client_session_ended(cid, "s1", 10.0)
    [loss] = core.expire_clients(10.0 + GRACE)
    assert loss.client == cid and [f.seq for f in loss.failed] == [4]
    assert any(isinstance(n.message, m.VgpuLost) and n.message.vm == vm for n in loss.notices)
    out = core.submit_ioreq("guestA", ioreq(vm, 1, 5), 16.0)
    assert isinstance(out, Completed) and out.value == 0xFFFF_FFFF  # no range any more
    # the same process coming back late is a new client whose vGPU list vhm rejects
    hello = core.client_hello("s2", "gvt-a", EPOCH, 20.0)
    assert not hello.resumed and hello.losses == []
    rec = core.reconcile(hello.client, [(vm, 1)], 20.0)
    assert rec.destroy == [vm] and rec.keep == [] and not rec.resumed


def test_zero_grace_loses_the_client_when_its_session_ends(mem):
    core = VhmCore(mem, client_grace=0.0)
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    vm = vm_with_vgpu(core, cid)
    loss = core.client_session_ended(cid, "s1", 1.0)
    assert loss is not None and cid not in core.clients
    assert [n.message.vm for n in loss.notices if isinstance(n.message, m.VgpuLost)] == [vm]


def test_reconcile_destroys_vgpus_without_a_vm_and_reports_vms_without_a_vgpu(core):
    cid = core.client_hello("s1", "gvt-a", EPOCH, 0.0).client
    core.dom0_ready(cid)  # the device model vhm asks for vGPUs
    other = core.client_hello("s9", "gvt-b", 42, 0.0).client
    kept = vm_with_vgpu(core, cid, "guestA", 1)
    gone = vm_with_vgpu(core, cid, "guestB", 2)  # gvt lost this one
    dying = vm_with_vgpu(core, cid, "guestC", 3)
    td = core.destroy_vm("guestC", dying)
    elsewhere = core.create_vm("guestD", "d", 1, 2, "GVTg_V5_4")
    assert isinstance(elsewhere, VmPlan)
    core.vgpu_created(elsewhere.vm, elsewhere.serial, other, 4)
    creating = core.create_vm("guestE", "e", 1, 2, "GVTg_V5_4")
    assert isinstance(creating, VmPlan) and creating.vgpu is not None and creating.vgpu.client == cid
    no_vgpu = core.create_vm("guestF", "f", 1, 2, "")
    assert isinstance(no_vgpu, VmPlan)
    busy = core.submit_ioreq("guestB", ioreq(gone, 0, 1), 1.0)
    assert isinstance(busy, Dispatched)

    rec = core.reconcile(cid, [(kept, 1), (dying, 3), (elsewhere.vm, 4), (creating.vm, 5), (no_vgpu.vm, 6),
                               (999, 7), ], 2.0)
    assert rec.keep == sorted([kept, creating.vm])
    assert rec.destroy == sorted([dying, elsewhere.vm, no_vgpu.vm, 999])
    assert [(n.peer, n.message) for n in rec.notices] == [
        ("guestB", m.VgpuLost(vm=gone, reason="the device model no longer holds vGPU 2"))]
    assert [(f.vm, f.code) for f in rec.failed] == [(gone, ErrorCode.GPU_RESET)]
    g = core.vms[gone]
    assert (g.vgpu_id, g.dm, g.page_tracks) == (0, None, {}) and g.slots[0].state is IoreqState.FREE
    out = core.submit_ioreq("guestB", ioreq(gone, 0, 2), 3.0)
    assert isinstance(out, Completed) and out.value == 0xFFFF_FFFF  # its ranges went with the vGPU
    assert core.vms[kept].dm == cid and core.vms[elsewhere.vm].dm == other  # untouched
    assert core.reap_vm(td.vm, td.serial) > 0
    # after reconciling, the invariant holds: every RUNNING VM with a vGPU has it at a connected client
    for v in core.vms.values():
        if v.state is VmState.RUNNING and v.vgpu_spec and v.vgpu_id:
            assert core.connected(v.dm)


def test_reconcile_from_an_unknown_client_destroys_everything(core):
    rec = core.reconcile(77, [(1, 1), (2, 2)], 0.0)
    assert rec.destroy == [1, 2] and rec.keep == [] and not rec.resumed
