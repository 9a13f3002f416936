"""The vhm core (sans-I/O): the VM table, ioreq clients, the ioreq path and the VM lifecycle.

Driven by method calls with time passed in (``now``), h11/aioquic style; every public method is an entry
point that returns plain data (outcomes.py) and never raises into the shell. The MPT services device
models call live in mpt.py (mixed in here), routing rules in routing.py, guest RAM and EPT in
guest_memory.py.

The ioreq path (docs/ARCHITECTURE.md, the ioreq path, ACRN acrn_common.h-8.3), per vCPU slot:

    insert_ioreq   FREE -> PENDING            the hypervisor queued the vCPU's request (acrn_insert_request)
    distribute     PENDING -> COMPLETE        0xCF8 latch, CONF1 disabled, fallback: done inside vhm
                   PENDING -> PROCESSING      handed to the ioreq client that claims it
    complete       PROCESSING -> COMPLETE     the client answered (acrn_ioreq_complete_request)
    resume         COMPLETE -> FREE           the vCPU got IOREQ_DONE (dm_emulate_io_complete)

A request PROCESSING at a client that vanishes, or that outlives ``ioreq_timeout``, or whose VM is destroyed
or reset, is force-completed and freed (acrn_ioreq_clear_request) and reported as :class:`IoreqFailed`.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ...protocol import ErrorCode, IoreqDir, IoreqState, IoreqType
from ...protocol import messages as m
from ...protocol.constants import MAX_VCPUS, MAX_VM_ID
from ...protocol.errors import Refusal
from ..common.histo import Histogram, record_pair
from ..common.memory import FrameAllocator, MachineMemory, OutOfFrames
from .guest_memory import GuestMemory
from .mpt import MptServices
from .reconcile import ClientSessions
from .outcomes import (ClientLoss, Completed, Dispatched, IoreqFailed, Notice, Peer, Teardown,
                       VgpuRequest, VhmError, VmPlan, entry_point)
from .admission import GUEST_KIND_CHECKS
from .routing import all_ones, fallback_value, handle_cf8cfc, route
from .vm import AwaitingGuest, Vm, VmState

#: IoreqType by its wire value, and its name (the trap path looks these up per request: an Enum call costs
#: more than the dict lookup)
_KIND = {t.value: t for t in IoreqType}
_KIND_NAME = {t.value: t.name for t in IoreqType}
_KIND_LOWER = {t.value: t.name.lower() for t in IoreqType}
_PIO, _READ, _WRITE = int(IoreqType.PIO), int(IoreqDir.READ), int(IoreqDir.WRITE)  # int compares: no Enum __eq__

MAX_CLIENT_ID = 1023  # VHM client ids are 1..1023 (idr_alloc_cyclic), ACRN drivers/vhm/vhm_ioreq.c


@dataclass(eq=False)
class Client:
    """An ioreq client (a device model session, role gvt): the Service VM, privileged for MPT calls."""

    id: int
    peer: Peer | None  # None while detached (its session ended; reconcile.py)
    name: str
    ready: bool = False  # sent DOM0_READY
    epoch: int | None = None  # the device model's incarnation (HELLO epoch), when known
    detached_at: float | None = None  # when its session ended (it is lost ``client_grace`` later)
    resumed: bool = False  # its last HELLO resumed the client (same id and epoch)
    synced: bool = False  # sent VGPU_SYNC since its last HELLO
    restarting: bool = False  # a new incarnation took it over (new epoch) and has not sent VGPU_SYNC yet
    held: set[tuple[int, int, int]] = field(default_factory=set)  # (vm, vcpu, seq) to send again on resume

    @property
    def accepting(self) -> bool:
        """Dispatches may be sent to it now: it has a session, and a new incarnation has said (VGPU_SYNC)
        which vGPUs it carries on (until then what it would get might be for a vGPU it no longer has)."""
        return self.peer is not None and not self.restarting

    @property
    def owner(self) -> str:
        """Frame-allocator owner key of the frames this client allocated (freed when it is lost)."""
        return f"client:{self.id}"


class VhmCore(MptServices, ClientSessions):
    """All of vhm's state and rules, with no sockets.

    Args:
        mem: the machine memory (vhm created it).
        ram_max_run: longest contiguous machine run in a VM's RAM map (fragmented on purpose).
        ioreq_timeout: seconds a request may stay PROCESSING at a live client before it is failed.
        client_grace: seconds a device model whose session ended keeps its state, waiting for it to
            reconnect with the same epoch (reconcile.py); 0 loses it at once.
        counters: where error and traffic counters go (the service shares its own).
    """

    def __init__(self, mem: MachineMemory, *, ram_max_run: int = 16, ioreq_timeout: float = 30.0,
                 client_grace: float = 0.0, counters: Counter[str] | None = None, fresh: bool = True) -> None:
        self.mem = mem
        # A free frame is a hole in the file (zero, costing nothing): frames handed out need no zeroing and
        # frames given back are discarded. A vhm that starts without state keeps nothing, so whatever an
        # earlier incarnation left in the file goes now; one that restores its state (``fresh`` False,
        # state.py) claims the frames its VMs and clients hold and discards only the rest.
        self.frames = FrameAllocator(mem.frames, on_release=mem.discard_frames)
        if fresh:
            mem.discard_frames(0, mem.frames)
        self.ram_max_run = ram_max_run
        self.ioreq_timeout = ioreq_timeout
        self.client_grace = client_grace
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.ioreq_counts: Counter[str] = Counter()  # by final type: pio, mmio, pci, wp
        self.ioreqs_by_vm: dict[int, Counter[str]] = {}  # VM -> ioreqs by type (STATUS, `gvtsim top`)
        self.ioreq_hist: dict[int, dict[str, Histogram]] = {}  # VM -> type -> dispatch-to-completion time
        self.ioreq_hist_total: dict[str, Histogram] = {}  # the same over every VM, destroyed ones included
        self.vms: dict[int, Vm] = {}
        self.clients: dict[int, Client] = {}
        self._client_by_peer: dict[Peer, int] = {}
        self._last_vm = 0
        self._last_client = 0
        self._serials = itertools.count(1)
        self.next_serial = 1  # what _serials gives next (recorded, so a restarted vhm never reuses one)

    # ================================================================================== ioreq clients
    def add_client(self, peer: Peer, name: str) -> int:
        """A device model said HELLO: register it as an ioreq client. Returns its client id."""
        old = self._client_by_peer.get(peer)
        if old is not None:
            return old
        cid = self._cyclic_id(self._last_client, MAX_CLIENT_ID, self.clients)
        self._last_client = cid
        self.clients[cid] = Client(cid, peer, name)
        self._client_by_peer[peer] = cid
        self.counters["clients_added"] += 1
        return cid

    def client_of(self, peer: Peer) -> int | None:
        """The client id of a peer, None if it is not a client."""
        return self._client_by_peer.get(peer)

    def device_model(self) -> int | None:
        """The client that should create vGPUs: the newest that said DOM0_READY, else the newest."""
        if not self.clients:
            return None
        live = [c for c in self.clients.values() if c.peer is not None]  # not a detached one
        if not live:
            return None
        ready = [c.id for c in live if c.ready]
        return (ready or [c.id for c in live])[-1]

    def client_lost(self, client: int, why: str = "") -> ClientLoss:
        """A client's session ended: fail what was PROCESSING at it (ERROR client_lost, slots FREE), drop its
        ranges/BDFs/page tracks (later accesses go to the fallback), unmap what it mapped into guests, free
        the frames it allocated. Every RUNNING VM whose vGPU it held is told VGPU_LOST (the guest resets),
        with ``why`` in the reason."""
        c = self.clients.pop(client, None)
        if c is None:
            return ClientLoss([], [], 0)
        if c.peer is not None:
            self._client_by_peer.pop(c.peer, None)
        self.counters["clients_lost"] += 1
        failed: list[IoreqFailed] = []
        notices: list[Notice] = []
        lost = f"ioreq client {c.name} (#{c.id}) lost while the request was PROCESSING" + (f": {why}" if why else "")
        for vm in self.vms.values():
            for slot in vm.slots:
                if slot.state is IoreqState.PROCESSING and slot.client == client:
                    failed.append(self._fail_slot(vm, slot.vcpu, ErrorCode.CLIENT_LOST, lost))
            had_vgpu = vm.dm == client and vm.vgpu_id and vm.state is VmState.RUNNING
            mapped = vm.remove_client(client)
            for gfn in mapped:  # its frames are about to be freed: the guest must not keep them
                vm.memory.unmap_extra(gfn, 1)
                del vm.extra_maps[gfn]
            if mapped and vm.state is not VmState.DYING:
                notices.append(Notice(vm.owner, m.EptChanged(vm=vm.id)))
            if had_vgpu:
                self.counters["vgpus_lost"] += 1
                reason = f"device model {c.name} lost" + (f": {why}" if why else "")
                notices.append(Notice(vm.owner, m.VgpuLost(vm=vm.id, reason=reason[:1024])))
        return ClientLoss(failed, notices, self.frames.free_owner(c.owner), c.id)

    # ======================================================================================= ioreqs
    @entry_point
    def submit_ioreq(self, peer: Peer, req: m.Ioreq, now: float) -> Completed | Dispatched | None:
        """A guest vCPU's request: insert it in the vCPU's slot and distribute it.

        Returns:
            Completed (answered inside vhm: 0xCF8, CONF1 disabled, fallback; or a request sent again that was
            answered before), Dispatched (PROCESSING at a client), None (sent again while it is still in
            flight: its answer comes once) or Refusal (forged_id, no_such_vm, bad_request, slot_busy; the
            slot is untouched).
        """
        try:
            vm = self._insert(peer, req)
        except _Resent as again:
            return self._resent(again.vm, again.vcpu, again.seq)
        return self._distribute(vm, req.vcpu, now)

    def _resent(self, vm: Vm, vcpu: int, seq: int) -> Completed | None:
        """A request the guest sent again (same vCPU and seq) after it lost its session to vhm: answered
        from the slot or the last completion if it is done; nothing if it is still in flight (its answer
        comes when the device model completes it, once)."""
        slot = vm.slots[vcpu]
        if slot.state is IoreqState.COMPLETE:
            self.counters["ioreq_resent_done"] += 1
            return Completed(vm.owner, vm.id, vcpu, seq, slot.value)
        if slot.busy:
            self.counters["ioreq_resent_inflight"] += 1
            return None
        if vm.done_to[vcpu] is vm.owner and vm.owner is not None:
            # its answer went to this very session after the guest sent it again (they crossed): it has it
            self.counters["ioreq_resent_answered"] += 1
            return None
        self.counters["ioreq_resent_done"] += 1
        vm.done_to[vcpu] = vm.owner
        return Completed(vm.owner, vm.id, vcpu, seq, vm.last_done[vcpu][1])

    @entry_point
    def insert_ioreq(self, peer: Peer, req: m.Ioreq) -> None:
        """The hypervisor half alone: FREE -> PENDING (:meth:`distribute` does the VHM half)."""
        try:
            self._insert(peer, req)
        except _Resent:
            pass

    @entry_point
    def distribute(self, vm_id: int, vcpu: int, now: float) -> Completed | Dispatched:
        """The VHM half alone: route the PENDING request of ``vm_id``/``vcpu``."""
        vm = self.vms.get(vm_id)
        if vm is None or not 0 <= vcpu < vm.vcpus or vm.slots[vcpu].state is not IoreqState.PENDING:
            raise VhmError(ErrorCode.BAD_REQUEST, f"no PENDING request on VM {vm_id} vCPU {vcpu}")
        return self._distribute(vm, vcpu, now)

    def _insert(self, peer: Peer, req: m.Ioreq) -> Vm:
        # the trap path: the checks read fields directly, and the keys an ERROR echoes are built only
        # for a refusal (a dict per request cost more than the rest of the checks)
        self.counters["ioreqs_in"] += 1
        vm = self.vms.get(req.vm)
        if vm is None or vm.owner != peer:
            vm = self._guest_vm(peer, req.vm, **_keys(req))  # raises: no_such_vm or forged_id
        if vm.state is not VmState.RUNNING:
            raise VhmError(ErrorCode.NO_SUCH_VM, f"VM {vm.id} is {vm.state.value}", **_keys(req))
        vcpu = req.vcpu
        if vcpu >= vm.vcpus:
            raise VhmError(ErrorCode.BAD_REQUEST, f"VM {vm.id} has {vm.vcpus} vCPUs, no vCPU {vcpu}", **_keys(req))
        try:
            GUEST_KIND_CHECKS[_KIND[req.kind]](vm, req)
        except VhmError:  # admission.py: counted by request type (a forged WP ioreq is ioreq_refused_wp)
            self.counters[f"ioreq_refused_{IoreqType(req.kind).name.lower()}"] += 1
            raise
        slot = vm.slots[vcpu]
        if slot.state is not IoreqState.FREE:
            held = vm.request_of(slot)
            if held.seq == req.seq:
                raise _Resent(vm, vcpu, req.seq)  # already in flight (or done): see submit_ioreq
            if vm.restored and slot.state is IoreqState.COMPLETE and held.seq < req.seq:
                # restored COMPLETE: its IOREQ_DONE left the dead vhm (the guest sends the next one only then)
                vm.last_done[vcpu] = (held.seq, slot.value)
                slot.free()
                self.counters["ioreq_done_before_restart"] += 1
            else:  # ACRN acrn_common.h: a vCPU cannot issue a new request until its slot is FREE again
                raise VhmError(ErrorCode.SLOT_BUSY, f"vCPU {vcpu} of VM {vm.id} already has request "
                               f"seq {held.seq} {slot.state.name}", **_keys(req))
        elif req.seq == vm.last_done[vcpu][0]:
            # sent again by a guest that reconnected after a vhm restart: it was answered before (the answer
            # may have been lost with the dead process); answered again, never emulated twice
            raise _Resent(vm, vcpu, req.seq)
        if req.dir == _WRITE and req.value > all_ones(req.size):
            req = _with(req, value=req.value & all_ones(req.size))
        slot.insert(req)
        return vm

    def _distribute(self, vm: Vm, vcpu: int, now: float) -> Completed | Dispatched:
        slot = vm.slots[vcpu]
        req = vm.request_of(slot)
        if req.kind == _PIO:  # ACRN drivers/vhm/vhm_ioreq.c: CONF1 first, before client lookup
            cf = handle_cf8cfc(vm.pci_conf_addr, req)
            if cf is not None:
                vm.pci_conf_addr = cf.latch
                if cf.request is None:
                    self.ioreq_counts["pio"] += 1
                    self.counters["ioreq_in_vhm"] += 1
                    return self._complete_in_vhm(vm, vcpu, cf.value or 0)
                req = cf.request
                slot.request = req  # rewritten in place to REQ_PCICFG, as VHM does
        self.ioreq_counts[_KIND_LOWER[req.kind]] += 1
        by_vm = self.ioreqs_by_vm.get(vm.id)
        if by_vm is None:
            by_vm = self.ioreqs_by_vm[vm.id] = Counter()
        by_vm[_KIND_NAME[req.kind]] += 1
        cid = route(vm.ranges, vm.bdfs, req)
        client = self.clients.get(cid) if cid is not None else None
        if client is None:
            self.counters["ioreq_fallback"] += 1  # nobody claims it: the fallback client answers
            return self._complete_in_vhm(vm, vcpu, fallback_value(req))
        slot.dispatch(client.id)
        vm.dispatched_at[vcpu] = now
        if not client.accepting:  # detached or restarting: it waits PROCESSING (reconcile.py)
            client.held.add((vm.id, vcpu, req.seq))
        self.counters["ioreq_dispatched"] += 1
        return Dispatched(client.id, req)

    def _complete_in_vhm(self, vm: Vm, vcpu: int, value: int) -> Completed:
        slot = vm.slots[vcpu]
        slot.complete(value)  # PENDING -> COMPLETE, the in-kernel fast path
        return Completed(vm.owner, vm.id, vcpu, vm.request_of(slot).seq, value)

    def complete(self, client: int, results: list[m.IoreqResult], now: float) -> list[Completed | Refusal]:
        """A client's completions (IOREQ_COMPLETE). Each valid one moves its slot PROCESSING -> COMPLETE
        and gives a :class:`Completed` for the guest; each stale or foreign one gives a :class:`Refusal`
        for the client (the slot it names is not touched)."""
        out: list[Completed | Refusal] = []
        for r in results:
            try:
                out.append(self._complete_one(client, r, now))
            except VhmError as err:
                self.counters["stale_completions"] += 1
                out.append(Refusal(err.code, err.reason, **err.keys))
            except Exception as err:  # a bug: counted, the other completions still go through
                self.counters["internal_errors"] += 1
                out.append(Refusal(ErrorCode.INTERNAL, f"{type(err).__name__}: {err}", r.vm, r.vcpu, r.seq))
        return out

    def _complete_one(self, client: int, r: m.IoreqResult, now: float) -> Completed:
        vm = self.vms.get(r.vm)
        vcpu = r.vcpu
        if vm is None or vcpu >= vm.vcpus:
            raise VhmError(ErrorCode.BAD_REQUEST, f"no VM {r.vm} vCPU {vcpu} (destroyed?)", **_keys(r))
        slot = vm.slots[vcpu]
        req = slot.request
        if slot.state is not IoreqState.PROCESSING or slot.client != client or not isinstance(req, m.Ioreq) \
                or req.seq != r.seq:
            raise VhmError(ErrorCode.BAD_REQUEST, f"VM {r.vm} vCPU {vcpu} seq {r.seq} is not PROCESSING at "
                           f"client {client} (completed, failed or timed out before)", **_keys(r))
        value = r.value & all_ones(req.size) if req.dir == _READ else 0
        slot.complete(value)
        self.counters["ioreq_completed"] += 1
        # dispatch -> completion: the device model's service time, as the VM sees it (per VM and in all)
        kind = _KIND_NAME[req.kind]
        hists = self.ioreq_hist.get(vm.id)
        if hists is None:
            hists = self.ioreq_hist[vm.id] = {}
        record_pair(self._hist(hists, kind), self._hist(self.ioreq_hist_total, kind), now - vm.dispatched_at[vcpu])
        return Completed(vm.owner, vm.id, vcpu, r.seq, value)

    @staticmethod
    def _hist(table: dict[str, Histogram], kind: str) -> Histogram:
        h = table.get(kind)
        if h is None:
            h = table[kind] = Histogram()
        return h

    def resume(self, vm_id: int, vcpu: int, seq: int) -> bool:
        """The guest was sent IOREQ_DONE: COMPLETE -> FREE. Returns False if that request is not COMPLETE
        there (the VM was destroyed in between)."""
        vm = self.vms.get(vm_id)
        if vm is None or not 0 <= vcpu < vm.vcpus:
            return False
        slot = vm.slots[vcpu]
        if slot.state is not IoreqState.COMPLETE or vm.request_of(slot).seq != seq:
            return False
        vm.last_done[vcpu] = (seq, slot.value)
        vm.done_to[vcpu] = vm.owner
        slot.free()
        return True

    def tick(self, now: float) -> list[IoreqFailed]:
        """Fail requests PROCESSING for longer than ``ioreq_timeout`` (a live but stuck client): nothing
        waits forever. Call it periodically."""
        failed = []
        for vm in self.vms.values():
            for slot in vm.slots:
                if slot.state is IoreqState.PROCESSING and now - vm.dispatched_at[slot.vcpu] > self.ioreq_timeout:
                    self.counters["ioreq_timeouts"] += 1
                    failed.append(self._fail_slot(vm, slot.vcpu, ErrorCode.TIMEOUT,
                                                  f"client #{slot.client} did not complete within "
                                                  f"{self.ioreq_timeout:g}s"))
        return failed

    def _fail_slot(self, vm: Vm, vcpu: int, code: ErrorCode, reason: str) -> IoreqFailed:
        """Force-complete and free a busy slot (acrn_ioreq_clear_request)."""
        slot = vm.slots[vcpu]
        req = vm.request_of(slot)
        if slot.state is not IoreqState.COMPLETE:
            slot.complete(0)
        slot.free()
        self.counters[f"ioreq_failed_{code.value}"] += 1
        return IoreqFailed(vm.owner, vm.id, vcpu, req.seq, code, reason)

    # ================================================================================ VM lifecycle
    @entry_point
    def create_vm(self, peer: Peer, name: str, vcpus: int, ram_mb: int, vgpu_type: str = "") -> VmPlan:
        """VM_CREATE: allocate non-identity RAM and the EPT. With a vGPU type the VM stays CREATING and the
        plan asks the device model for the vGPU (no device model: no_device_model); no frames: no_space."""
        if not 1 <= vcpus <= MAX_VCPUS or ram_mb < 1:
            raise VhmError(ErrorCode.BAD_REQUEST, f"vcpus must be 1..{MAX_VCPUS} and ram_mb >= 1")
        dm = None
        if vgpu_type:
            dm = self.device_model()
            if dm is None:
                raise VhmError(ErrorCode.NO_DEVICE_MODEL, f"vGPU {vgpu_type!r} asked and no device model connected")
        vm_id = self._cyclic_id(self._last_vm, MAX_VM_ID, self.vms)
        try:
            memory = GuestMemory(self.mem, self.frames, f"vm{vm_id}", ram_mb, self.ram_max_run)
        except OutOfFrames as err:
            raise VhmError(ErrorCode.NO_SPACE, f"{ram_mb} MB of RAM: {err}") from None
        self._last_vm = vm_id
        self.next_serial += 1
        vm = Vm(vm_id, next(self._serials), name, vcpus, ram_mb, peer, memory,
                state=VmState.CREATING if vgpu_type else VmState.RUNNING, vgpu_spec=vgpu_type, dm=dm,
                owner_id=(str(getattr(peer, "id", peer)), int(getattr(peer, "epoch", 0) or 0)))
        self.vms[vm_id] = vm
        self.counters["vms_created"] += 1
        vgpu = VgpuRequest(dm, vgpu_type, memory.ept_root, ram_mb) if dm is not None else None
        return VmPlan(vm_id, vm.serial, list(memory.extents), memory.ept_root, vgpu)

    def vgpu_created(self, vm_id: int, serial: int, client: int, vgpu_id: int) -> bool:
        """The device model created the vGPU: the VM is RUNNING. False if the VM went away meanwhile (the
        shell then destroys the orphan vGPU)."""
        vm = self.vms.get(vm_id)
        if vm is None or vm.serial != serial or vm.state is not VmState.CREATING:
            return False
        vm.state, vm.vgpu_id, vm.dm = VmState.RUNNING, vgpu_id, client
        return True

    def vgpu_failed(self, vm_id: int, serial: int) -> int:
        """The vGPU could not be created: the VM creation fails and its frames go. Returns frames freed."""
        vm = self.vms.get(vm_id)
        if vm is None or vm.serial != serial:
            return 0
        self._teardown(vm, ErrorCode.NO_SUCH_VM, "VM creation failed")
        return self.reap_vm(vm_id, serial)

    def stale_namesake(self, peer: Peer, name: str) -> int | None:
        """The id of a live VM this connection already created under ``name``, if any.

        A guest that asks for a VM by a name it already holds lost track of the first one (its VM_CREATED
        answer was lost with a broken session, or the guest re-initialises after a reset): the shell
        destroys that one before creating the new, so a boot storm with lost answers leaks no VM, frame or
        vGPU."""
        for vm in self.vms.values():
            if vm.owner == peer and vm.name == name and vm.state is not VmState.DYING:
                return vm.id
        return None

    @entry_point
    def destroy_vm(self, peer: Peer, vm_id: int) -> Teardown:
        """VM_DESTROY: the VM goes DYING (no new ioreqs, in-flight ones fail with no_such_vm, its ranges go).
        The shell asks the device model to destroy the vGPU, then calls :meth:`reap_vm`."""
        vm = self._guest_vm(peer, vm_id)
        if vm.state is VmState.DYING:
            raise VhmError(ErrorCode.NO_SUCH_VM, f"VM {vm_id} is already being destroyed")
        return self._teardown(vm, ErrorCode.NO_SUCH_VM, f"VM {vm_id} destroyed")

    def guest_hello(self, peer: Peer, ident: str, epoch: int) -> list[int]:
        """A guest said HELLO: the VMs a restarted vhm restored for that guest identity (state.py) are its
        again. Returns their ids."""
        back = []
        for vm in self.vms.values():
            if isinstance(vm.owner, AwaitingGuest) and vm.owner_id == (ident, epoch):
                vm.owner = peer
                back.append(vm.id)
        self.counters["vms_reclaimed"] += len(back)
        return back

    def expire_unclaimed(self, now: float, grace: float) -> list[Teardown]:
        """Restored VMs whose guest did not say HELLO again within ``grace`` seconds: destroyed (their
        guest is gone; a guest that comes back later finds no such VM and resets it)."""
        late = [vm for vm in self.vms.values() if isinstance(vm.owner, AwaitingGuest)
                and now - vm.owner.since >= grace and vm.state is not VmState.DYING]
        self.counters["vms_unclaimed"] += len(late)
        return [self._teardown(vm, ErrorCode.PEER_LOST, "its guest did not come back after a vhm restart")
                for vm in late]

    def unclaimed_deadline(self, grace: float) -> float:
        """When :meth:`expire_unclaimed` next has something to do (inf: never)."""
        return min((vm.owner.since + grace for vm in self.vms.values() if isinstance(vm.owner, AwaitingGuest)
                    and vm.state is not VmState.DYING), default=math.inf)

    def guest_lost(self, peer: Peer) -> list[Teardown]:
        """A guest connection died: every VM it created is destroyed."""
        return [self._teardown(vm, ErrorCode.PEER_LOST, "guest connection lost")
                for vm in list(self.vms.values()) if vm.owner == peer and vm.state is not VmState.DYING]

    def hand_over(self, old: Peer, new: Peer) -> list[int]:
        """The VMs of a guest's connection ``old`` become its connection ``new``'s (the same guest, its id
        and epoch: its socket reconnected). Returns their ids."""
        moved = [vm for vm in self.vms.values() if vm.owner == old and vm.state is not VmState.DYING]
        for vm in moved:
            vm.owner = new
        self.counters["vms_moved_to_reconnected_guest"] += len(moved)
        return [vm.id for vm in moved]

    def _teardown(self, vm: Vm, code: ErrorCode, reason: str) -> Teardown:
        failed = [self._fail_slot(vm, s.vcpu, code, reason) for s in vm.busy_slots()]
        for s in vm.slots:
            if s.state is IoreqState.COMPLETE:
                s.free()
        vgpu_client = vm.dm if vm.vgpu_id and vm.dm in self.clients else None
        vm.state = VmState.DYING
        vm.ranges.clean()
        vm.bdfs.clean()
        vm.page_tracks.clear()
        vm.dma_pins.clear()
        self.ioreqs_by_vm.pop(vm.id, None)
        self.ioreq_hist.pop(vm.id, None)
        self.counters["vms_destroyed"] += 1
        return Teardown(vm.id, vm.serial, failed, vgpu_client)

    def reap_vm(self, vm_id: int, serial: int) -> int:
        """Forget a DYING VM and free all its frames (RAM, EPT root and tables). Returns frames freed."""
        vm = self.vms.get(vm_id)
        if vm is None or vm.serial != serial:
            return 0
        del self.vms[vm_id]
        return vm.memory.clean()

    @entry_point
    def reset_vm(self, peer: Peer, vm_id: int) -> Teardown:
        """VM_RESET: in-flight ioreqs are cleared (ERROR gpu_reset: the vGPU is reset under them), the CONF1
        latch is cleared; RAM, ranges and page tracks stay. The shell sends VGPU_RESET to ``vgpu_client``."""
        vm = self._guest_vm(peer, vm_id)
        if vm.state is not VmState.RUNNING:
            raise VhmError(ErrorCode.NO_SUCH_VM, f"VM {vm_id} is {vm.state.value}")
        failed = [self._fail_slot(vm, s.vcpu, ErrorCode.GPU_RESET, f"VM {vm_id} reset") for s in vm.busy_slots()]
        vm.pci_conf_addr = 0
        self.counters["vms_reset"] += 1
        return Teardown(vm.id, vm.serial, failed, vm.dm if vm.vgpu_id and vm.dm in self.clients else None)

    # ==================================================================================== helpers
    def _guest_vm(self, peer: Peer, vm_id: int, **keys: int) -> Vm:
        """A VM named by a guest: it must exist and belong to that guest's connection (docs/PROTOCOL.md)."""
        vm = self.vms.get(vm_id)
        if vm is None:
            raise VhmError(ErrorCode.NO_SUCH_VM, f"no VM {vm_id}", **keys)
        if vm.owner != peer:
            raise VhmError(ErrorCode.FORGED_ID, f"VM {vm_id} was not created by this connection", **keys)
        return vm

    @staticmethod
    def _cyclic_id(last: int, limit: int, used: dict[int, Any]) -> int:
        """The next free id after ``last`` in 1..limit, wrapping (ids are not reused at once, so a late
        message about a dead VM or client does not hit its successor)."""
        for i in range(limit):
            cand = (last + i) % limit + 1
            if cand not in used:
                return cand
        raise VhmError(ErrorCode.NO_SPACE, f"all ids 1..{limit} in use")

    def status_info(self) -> dict[str, Any]:
        """The STATUS ``info`` of vhm."""
        return {
            "vms": {"count": len(self.vms), "list": [vm.info() for vm in self.vms.values()]},
            "free_frames": self.frames.free_frames,
            "total_frames": self.frames.total,
            "frame_owners": len(self.frames.owners()),
            "discarded_frames": self.mem.discarded_frames,
            "resident_mb": round(self.mem.resident_bytes() / (1 << 20), 1),
            "clients": [{"client": c.id, "name": c.name, "ready": c.ready} for c in self.clients.values()],
            "ioreqs": dict(self.ioreq_counts),
            "ioreqs_by_vm": {str(k): dict(v) for k, v in self.ioreqs_by_vm.items() if k in self.vms},
            "ioreq_latency_us_by_vm": {str(k): {t: h.summary() for t, h in v.items()}
                                       for k, v in self.ioreq_hist.items() if k in self.vms},
            # every VM's histograms added, per type (Prometheus buckets are made from these)
            "ioreq_hist": {t: h.encode() for t, h in sorted(self.ioreq_hist_total.items())},
        }


class _Resent(Exception):
    """Inside the core: the request is one the guest sent before (same vCPU and seq)."""

    def __init__(self, vm: Vm, vcpu: int, seq: int) -> None:
        super().__init__(f"VM {vm.id} vCPU {vcpu} seq {seq} sent again")
        self.vm, self.vcpu, self.seq = vm, vcpu, seq


def _keys(r: m.Ioreq | m.IoreqResult) -> dict[str, int]:
    """What an ERROR about one request echoes (docs/PROTOCOL.md: vm, vcpu, seq)."""
    return {"vm": r.vm, "vcpu": r.vcpu, "seq": r.seq}


def _with(req: m.Ioreq, **changes: Any) -> m.Ioreq:
    return msgspec.structs.replace(req, **changes)
