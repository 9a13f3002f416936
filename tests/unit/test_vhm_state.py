"""vhm's saved state (services/vhm/state.py, docs/STATE.md): a VM table, its memory maps, page tracks, ioreq
slots and clients restored by a new vhm on the same machine memory, exactly; a journal cut or corrupted at
any byte gives a state that was committed or a clean refusal, never a wrong one."""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from typing import Any

import pytest

from gvtsim.protocol import IoreqDir, IoreqState, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.journal import REC_HEADER
from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.vhm.core import VhmCore
from gvtsim.services.vhm.outcomes import Completed, Dispatched, VmPlan
from gvtsim.services.vhm.state import VhmStore, mem_identity, restore
from gvtsim.services.vhm.vm import AwaitingGuest

R, W = IoreqDir.READ, IoreqDir.WRITE
MMIO, PIO = IoreqType.MMIO, IoreqType.PIO
BAR0 = 0xC000_0000


@dataclass(frozen=True)
class Peer:
    id: str
    epoch: int


GUEST, GVT = Peer("guest-a", 11), Peer("gvt-1", 7)


def ioreq(vm: int, vcpu: int, seq: int, kind: int, d: int, addr: int, value: int = 0) -> m.Ioreq:
    return m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=kind, dir=d, addr=addr, size=4, value=value)


def fingerprint(core: VhmCore, vid: int) -> tuple[Any, ...]:
    vm = core.vms[vid]
    return (tuple((s.state, s.client, s.value, s.request) for s in vm.slots), tuple(vm.last_done),
            vm.pci_conf_addr, vm.msi_seq, vm.vgpu_id, vm.dm, tuple(sorted(vm.page_tracks.items())),
            len(vm.ranges), tuple(vm.memory.extents), vm.memory.ept_root, tuple(core.frames.owned(f"vm{vid}")))


class Rig:
    """A vhm core with its store, one device model and one guest VM of 4 vCPUs."""

    def __init__(self, mem: MachineMemory, directory: str) -> None:
        self.mem, self.dir = mem, directory
        self.core = VhmCore(mem, client_grace=5.0)
        self.store = VhmStore(directory)
        self.store.lineage, self.store.mem_id = 1234, mem_identity(mem.path)
        self.cid = self.core.client_hello(GVT, GVT.id, GVT.epoch, 0.0).client
        plan = self.core.create_vm(GUEST, "a", 4, 2, "")
        assert isinstance(plan, VmPlan)
        self.vm = plan.vm
        assert self.core.io_range(self.cid, self.vm, MMIO, BAR0, BAR0 + 0xFFFF, True).value == 1
        self.seq = 0
        self.commit()

    def commit(self) -> None:
        self.store.mark_all()
        self.store.commit(self.core)

    def pair(self, vcpu: int, value: int) -> None:
        """A write+read on the vCPU's register, completed by the device model; the read left PROCESSING."""
        self.seq += 1
        out = self.core.submit_ioreq(GUEST, ioreq(self.vm, vcpu, self.seq, MMIO, W, BAR0 + 8 * vcpu, value), 0.0)
        assert isinstance(out, Dispatched)
        done = self.core.complete(self.cid, [m.IoreqResult(vm=self.vm, vcpu=vcpu, seq=self.seq, value=0)], 0.0)
        assert isinstance(done[0], Completed) and self.core.resume(self.vm, vcpu, self.seq)
        self.seq += 1
        assert isinstance(self.core.submit_ioreq(GUEST, ioreq(self.vm, vcpu, self.seq, MMIO, R, BAR0 + 8 * vcpu),
                                                 0.0), Dispatched)

    def finish_read(self, vcpu: int, value: int) -> None:
        seq = self.core.vms[self.vm].slots[vcpu].request.seq
        done = self.core.complete(self.cid, [m.IoreqResult(vm=self.vm, vcpu=vcpu, seq=seq, value=value)], 0.0)
        assert isinstance(done[0], Completed) and self.core.resume(self.vm, vcpu, seq)


def reopen(mem: MachineMemory, directory: str) -> tuple[VhmCore, Any]:
    core = VhmCore(mem, client_grace=5.0, fresh=False)
    got = restore(core, VhmStore(directory), now=100.0)
    return core, got


def test_a_restarted_vhm_has_every_vm_map_track_slot_and_client_back(mem, tmp_path) -> None:
    rig = Rig(mem, str(tmp_path / "st"))
    core = rig.core
    vm = core.vms[rig.vm]
    vm.memory.write(0x1000, b"guest data")
    assert core.page_track(rig.cid, rig.vm, 5, True).value == 1
    frames = core.alloc_frames(rig.cid, 3)
    core.submit_ioreq(GUEST, ioreq(rig.vm, 3, 900, PIO, W, 0xCF8, 0x8000_1000), 0.0)  # the CONF1 latch
    core.resume(rig.vm, 3, 900)
    rig.pair(0, 0x11)
    rig.pair(1, 0x22)
    rig.finish_read(1, 0x22)
    rig.commit()
    want = fingerprint(core, rig.vm)
    free, owners = core.frames.free_frames, core.frames.owners()

    core2, got = reopen(mem, rig.dir)
    assert got.lineage == 1234 and got.vms == [rig.vm] and not got.refused and not got.refused_all
    assert fingerprint(core2, rig.vm) == want
    assert core2.frames.free_frames == free and core2.frames.owners() == owners
    assert core2.frames.owned(f"client:{rig.cid}") == frames.runs
    vm2 = core2.vms[rig.vm]
    assert vm2.memory.read(0x1000, 10) == b"guest data"  # RAM was not zeroed
    assert vm2.memory.is_write_protected(5) and not vm2.memory.is_write_protected(6)
    assert isinstance(vm2.owner, AwaitingGuest)
    c = core2.clients[rig.cid]
    assert c.peer is None and c.epoch == GVT.epoch and c.detached_at == 100.0
    # a new VM never gets a frame a restored one holds, nor its id
    other = core2.create_vm(Peer("guest-b", 1), "b", 1, 1, "")
    assert isinstance(other, VmPlan) and other.vm != rig.vm
    held = {r.mfn + i for r in core2.frames.owned(f"vm{rig.vm}") for i in range(r.count)}
    assert not held & {e[1] + i for e in other.ram for i in range(e[2])}

    # the guest says HELLO again with its identity: its VM is its own again
    g2 = Peer("guest-a", 11)
    assert core2.submit_ioreq(g2, ioreq(rig.vm, 2, 999, MMIO, R, BAR0), 100.0).code.value == "forged_id"
    assert core2.guest_hello(g2, "guest-a", 11) == [rig.vm]
    # vCPU 1's read was answered before the kill: sent again, it gets the same answer, not a new emulation
    seq1 = vm2.last_done[1][0]
    assert seq1 == rig.seq
    again = core2.submit_ioreq(g2, ioreq(rig.vm, 1, seq1, MMIO, R, BAR0 + 8), 100.0)
    assert isinstance(again, Completed) and again.value == 0x22 and core2.counters["ioreq_resent_done"] == 1
    # vCPU 0's read is still PROCESSING: sent again, nothing (its answer comes once)
    seq0 = vm2.slots[0].request.seq
    assert core2.submit_ioreq(g2, vm2.slots[0].request, 100.0) is None
    # the device model comes back with the same epoch: it resumes and gets the request again
    hello = core2.client_hello(Peer("gvt-1", 7), "gvt-1", 7, 101.0)
    assert hello.resumed and hello.client == rig.cid
    sent = core2.redispatch(rig.cid, 101.0)
    assert [(d.ioreq.vcpu, d.ioreq.seq) for d in sent] == [(0, seq0)]
    done = core2.complete(rig.cid, [m.IoreqResult(vm=rig.vm, vcpu=0, seq=seq0, value=0x11)], 101.0)
    assert isinstance(done[0], Completed) and done[0].value == 0x11 and done[0].peer is g2


def test_a_vm_whose_guest_does_not_come_back_is_destroyed_after_the_grace(mem, tmp_path) -> None:
    rig = Rig(mem, str(tmp_path / "st"))
    core2, got = reopen(mem, rig.dir)
    assert core2.unclaimed_deadline(5.0) == 105.0
    assert core2.expire_unclaimed(104.0, 5.0) == []
    gone = core2.expire_unclaimed(105.0, 5.0)
    assert [td.vm for td in gone] == [rig.vm] and core2.counters["vms_unclaimed"] == 1
    assert core2.reap_vm(gone[0].vm, gone[0].serial) > 0


def test_another_machine_memory_or_version_is_refused_and_nothing_is_kept(mem, tmp_path) -> None:
    rig = Rig(mem, str(tmp_path / "st"))
    other = MachineMemory(str(tmp_path / "other.mem"), 64 << 20, create=True)
    try:
        core = VhmCore(other, fresh=False)
        got = restore(core, VhmStore(rig.dir), now=1.0)
        assert "another machine memory" in got.refused_all and not core.vms and not got.lineage
        assert core.frames.free_frames == core.frames.total - core.frames.reserved
        assert not os.listdir(rig.dir)  # refused journals are deleted
    finally:
        other.close()
    rig2 = Rig(mem, str(tmp_path / "st2"))
    path = os.path.join(rig2.dir, "vhm.journal")
    data = bytearray(open(path, "rb").read())
    data[8] ^= 0x02  # the version
    open(path, "wb").write(bytes(data))
    core, got = reopen(mem, rig2.dir)
    assert got.refused_all and not core.vms


def _history(mem: MachineMemory, directory: str) -> tuple[list[tuple[Any, ...]], bytes, int]:
    """Batches of fence-register pairs, committed one by one: the fingerprint after each commit, the VM
    journal's bytes and where its last record starts."""
    rig = Rig(mem, directory)
    states = [fingerprint(rig.core, rig.vm)]
    path = os.path.join(directory, f"vm-{rig.vm}.journal")
    size = os.path.getsize(path)
    for i in range(12):
        vcpu = i % 4
        if rig.core.vms[rig.vm].slots[vcpu].state is IoreqState.PROCESSING:
            rig.finish_read(vcpu, 0x100 + i)
        rig.pair(vcpu, 0x100 + i)
        if i == 7:
            assert rig.core.page_track(rig.cid, rig.vm, 9, True).value == 1
        rig.store.mark(rig.vm, struct=i == 7)
        size = os.path.getsize(path)
        rig.store.commit(rig.core)
        states.append(fingerprint(rig.core, rig.vm))
    rig.store.close()
    return states, open(path, "rb").read(), size


def _restore_bytes(mem: MachineMemory, src: str, vid_name: str, data: bytes, dst: str) -> Any:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    with open(os.path.join(dst, vid_name), "wb") as f:
        f.write(data)
    core, got = reopen(mem, dst)
    return core, got


def test_a_write_cut_at_any_byte_restores_the_batch_before_or_after_it(mem, tmp_path) -> None:
    src = str(tmp_path / "st")
    states, data, last = _history(mem, src)
    name = [n for n in os.listdir(src) if n.startswith("vm-")][0]
    vid = int(name[3:-8])
    assert len(data) - last > REC_HEADER.size
    for cut in range(last, len(data) + 1):
        core, got = _restore_bytes(mem, src, name, data[:cut], str(tmp_path / "t"))
        assert got.vms == [vid], (cut, got.refused)
        want = states[-1] if cut == len(data) else states[-2]
        assert fingerprint(core, vid) == want, cut


def test_a_flipped_bit_anywhere_gives_a_committed_state_or_a_clean_refusal(mem, tmp_path) -> None:
    src = str(tmp_path / "st")
    states, data, last = _history(mem, src)
    name = [n for n in os.listdir(src) if n.startswith("vm-")][0]
    vid = int(name[3:-8])
    rnd = random.Random(18)
    spots = list(range(last, len(data))) + [rnd.randrange(len(data)) for _ in range(300)]
    refused = 0
    for off in spots:
        bad = bytearray(data)
        bad[off] ^= 1 << rnd.randrange(8)
        core, got = _restore_bytes(mem, src, name, bytes(bad), str(tmp_path / "t"))
        if got.vms:
            assert fingerprint(core, vid) in states, off
        else:
            refused += 1
            assert got.refused and got.refused[0][0] == vid
    assert refused > 0


@pytest.mark.parametrize("cut", [0, 5, 16, 40])
def test_vhm_record_cut_or_absent_is_refused_or_a_fresh_start(mem, tmp_path, cut) -> None:
    rig = Rig(mem, str(tmp_path / "st"))
    path = os.path.join(rig.dir, "vhm.journal")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:cut])
    core, got = reopen(mem, rig.dir)
    assert not core.vms and not got.lineage
    assert core.frames.free_frames == core.frames.total - core.frames.reserved


def test_write_protection_in_the_ept_follows_the_record_after_a_kill_between_the_two(mem, tmp_path) -> None:
    """PAGE_TRACK writes the EPT (machine memory) before the commit: a kill in between leaves the EPT one
    step ahead of the record, and gvt never got its OK. The restored VM's EPT is made to match the record."""
    rig = Rig(mem, str(tmp_path / "st"))
    assert rig.core.page_track(rig.cid, rig.vm, 7, True).value == 1
    rig.commit()
    ept = rig.core.vms[rig.vm].memory
    ept.write_protect(9, True)  # enabled after the last commit: not recorded
    ept.write_protect(7, False)  # disabled after the last commit: still recorded
    core2, got = reopen(mem, rig.dir)
    vm = core2.vms[rig.vm]
    assert vm.page_tracks == {7: rig.cid}
    assert vm.memory.ept.write_protected(0, vm.memory.ram_frames) == [7]


def test_a_request_sent_again_is_answered_once_whatever_crossed(mem, tmp_path) -> None:
    """After a restart the guest sends what it waits for again: answered once from the record if its
    answer was lost with the dead vhm; not again if this session was sent the answer meanwhile (they
    crossed); a restored COMPLETE slot is freed by the guest's next request (its answer left)."""
    rig = Rig(mem, str(tmp_path / "st"))
    rig.pair(0, 0x11)
    rig.pair(1, 0x22)
    vm = rig.core.vms[rig.vm]
    seq1 = vm.slots[1].request.seq
    rig.core.complete(rig.cid, [m.IoreqResult(vm=rig.vm, vcpu=1, seq=seq1, value=0x22)], 0.0)  # COMPLETE
    rig.commit()
    core2, _ = reopen(mem, rig.dir)
    g2 = Peer("guest-a", 11)
    core2.guest_hello(g2, "guest-a", 11)
    vm2 = core2.vms[rig.vm]
    seq0 = vm2.slots[0].request.seq
    assert core2.client_hello(Peer("gvt-1", 7), "gvt-1", 7, 101.0).resumed
    [d] = [d for d in core2.redispatch(rig.cid, 101.0) if d.ioreq.vcpu == 0]
    [done] = core2.complete(rig.cid, [m.IoreqResult(vm=rig.vm, vcpu=0, seq=seq0, value=0x11)], 101.0)
    assert isinstance(done, Completed) and done.peer is g2 and core2.resume(rig.vm, 0, seq0)
    # the guest's resend crossed that answer on the same session: not answered twice
    assert core2.submit_ioreq(g2, d.ioreq, 101.0) is None and core2.counters["ioreq_resent_answered"] == 1
    # on a new session (the answer went to the one that died) it is answered again, from the record
    g3 = Peer("guest-a", 11)
    core2.guest_hello(g3, "guest-a", 11)  # nothing to reclaim: g2 holds the VM
    vm2.owner = g3  # as if g2's session had been lost and the guest came back
    again = core2.submit_ioreq(g3, d.ioreq, 102.0)
    assert isinstance(again, Completed) and again.value == 0x11
    # vCPU 1 was restored COMPLETE (its IOREQ_DONE left the dead vhm): the guest's next request frees it
    assert vm2.slots[1].state is IoreqState.COMPLETE
    nxt = core2.submit_ioreq(g3, ioreq(rig.vm, 1, seq1 + 100, MMIO, W, BAR0 + 8, 5), 102.0)
    assert isinstance(nxt, Dispatched) and vm2.last_done[1] == (seq1, 0x22)
    assert core2.counters["ioreq_done_before_restart"] == 1


def test_a_journal_holding_requests_as_maps_is_still_read(mem, tmp_path, monkeypatch) -> None:
    """Journals written before slot requests were recorded as field lists hold them as maps of the
    fields: a vhm restarting on such a state restores the in-flight requests from them just the same."""
    import msgspec

    from gvtsim.services.vhm import state

    def slot_as_map(vm: Any, v: int) -> list[Any]:
        s = vm.slots[v]
        seq, value = vm.last_done[v]
        req = msgspec.structs.asdict(s.request) if isinstance(s.request, m.Ioreq) else None
        return [int(s.state), s.client, s.value, req, seq, value]

    monkeypatch.setattr(state, "_slot", slot_as_map)
    rig = Rig(mem, str(tmp_path / "st"))
    rig.pair(0, 0x11)  # vCPU 0's read left PROCESSING: its request is in the journal
    rig.commit()
    want = fingerprint(rig.core, rig.vm)
    core2, got = reopen(mem, rig.dir)
    assert got.vms == [rig.vm] and not got.refused
    assert fingerprint(core2, rig.vm) == want
    assert isinstance(core2.vms[rig.vm].slots[0].request, m.Ioreq)
