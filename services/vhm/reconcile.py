"""Device-model sessions across reconnects, and reconciliation of vhm's VMs with a device model's vGPUs.

A device model (role gvt) is one ioreq *client*: its ranges, BDF claims, page tracks, DMA pins, extra
mappings and frames belong to its client id, not to the connection that carried its HELLO. So:

* A session that ends (silence, unreachable, BYE) only **detaches** the client (:meth:`client_session_ended`).
  Everything it owned stays, requests PROCESSING at it stay PROCESSING, and requests that arrive for its
  ranges wait there too (nothing is answered with all ones behind its back).
* A HELLO with the same id **and epoch** (:meth:`client_hello`) is the same process reconnecting: it gets its
  client back (``resumed``), and the waiting requests are sent again right away
  (:meth:`redispatch`; gvt answers a request it had already completed from its last completion, so a
  request still completes exactly once).
* A HELLO with the same id and a **new** epoch is a restart. With a grace period the new incarnation
  **takes over** the client (``taken_over``): its ranges, claims, page tracks, frames and the requests
  PROCESSING at it stay, and nothing is dispatched to it until its VGPU_SYNC has said which vGPUs it carries
  on (a device model that kept its state in machine memory lists them; one that did not lists none). Then
  the VMs whose vGPU it kept get their waiting requests (:meth:`redispatch`; the slot's seq lets the device
  model answer a request it had completed before dying from its saved last completion, never twice) and
  the others take the reset path below; if it kept no vGPU at all, the old incarnation's frames are freed.
  Without a grace period (``client_grace`` 0) the old incarnation is lost at once
  (:meth:`~.core.VhmCore.client_lost`). A detached client that does not come back within ``client_grace``
  seconds is lost too (:meth:`expire_clients`, due at :meth:`next_deadline`). Losing a client fails what was
  PROCESSING at it (``client_lost``), drops what it owned and tells every VM that had a vGPU there:
  VGPU_LOST with the reason (the guest resets and creates the VM again).
* On every HELLO the device model sends its vGPU list (VGPU_SYNC) and :meth:`reconcile` compares it with
  the VM table: a vGPU whose VM vhm does not have (or is destroying, or that belongs to another client) is
  to be destroyed; a VM whose vGPU the client no longer holds is told VGPU_LOST. Afterwards every RUNNING
  VM with a vGPU has it at a connected device model, and no device model holds a vGPU without a VM.

ACRN has no network between VHM and the device model, so it never needs this; the rules follow what the
Service VM does when acrn-dm dies (``acrn_ioreq_destroy_client`` fails the client's pending requests and
the VM is torn down) and keep a live device model's state over a dropped connection.

This is a mixin of :class:`~.core.VhmCore`; every method takes ``now`` and returns outcomes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...protocol import ErrorCode, IoreqState
from ...protocol import messages as m
from ..common.memory import FrameAllocator
from .outcomes import ClientLoss, Dispatched, IoreqFailed, Notice, Peer
from .vm import Vm, VmState

if TYPE_CHECKING:
    from .core import Client


@dataclass(frozen=True)
class ClientHello:
    """A device model said HELLO. ``resumed``: it got its client (and all its state) back; ``taken_over``: a
    new incarnation took over the client of the old one (held until its VGPU_SYNC); ``losses``: an earlier
    incarnation (same id, other epoch) that is now lost, to be reported like any client loss."""

    client: int
    resumed: bool
    losses: list[ClientLoss] = field(default_factory=list)
    taken_over: bool = False


@dataclass(frozen=True)
class Reconciliation:
    """The outcome of VGPU_SYNC: answer ``reply``, fail ``failed``, send ``notices`` (VGPU_LOST)."""

    keep: list[int]
    destroy: list[int]
    resumed: bool
    failed: list[IoreqFailed] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    def reply(self, req: int) -> m.VgpuSyncReply:
        return m.VgpuSyncReply(req=req, resumed=self.resumed, keep=self.keep, destroy=self.destroy)


class ClientSessions:
    """Detach / resume / expire device-model clients and reconcile vGPU lists (mixed into VhmCore)."""

    vms: dict[int, Vm]
    clients: dict[int, "Client"]
    _client_by_peer: dict[Peer, int]
    counters: Counter[str]
    client_grace: float
    ioreq_timeout: float
    frames: FrameAllocator

    if TYPE_CHECKING:  # defined by VhmCore (core.py)
        def add_client(self, peer: Peer, name: str) -> int: ...
        def client_lost(self, client: int, why: str = "") -> ClientLoss: ...
        def _fail_slot(self, vm: Vm, vcpu: int, code: ErrorCode, reason: str) -> IoreqFailed: ...

    # ------------------------------------------------------------------------------------ sessions
    def client_hello(self, peer: Peer, name: str, epoch: int, now: float) -> ClientHello:
        """HELLO from a device model: resume its client (same ``name`` and ``epoch``), let a new incarnation
        take it over (same ``name``, new ``epoch``, a grace period configured), or register a new one after
        losing every earlier incarnation of ``name``."""
        losses: list[ClientLoss] = []
        same = [c for c in self.clients.values() if c.name == name]
        for c in same:
            if c.epoch == epoch:
                self._attach(c, peer)
                c.resumed = True
                self.counters["clients_resumed"] += 1
                return ClientHello(c.id, True)
        if same and self.client_grace > 0:
            c = same[-1]  # the newest incarnation (there is only ever one per name)
            for older in same[:-1]:
                losses.append(self.client_lost(older.id, "replaced by a newer incarnation"))
            self._attach(c, peer)
            c.epoch, c.resumed, c.restarting = epoch, False, True
            self.counters["clients_taken_over"] += 1
            return ClientHello(c.id, False, losses, taken_over=True)
        for c in same:
            self.counters["clients_restarted"] += 1
            losses.append(self.client_lost(c.id, "restarted (new epoch)"))
        cid = self.add_client(peer, name)
        self.clients[cid].epoch = epoch
        return ClientHello(cid, False, losses)

    def _attach(self, c: "Client", peer: Peer) -> None:
        """Move ``c`` to the session ``peer``; what was PROCESSING at it is held for a new send."""
        if c.peer is not None:
            self._client_by_peer.pop(c.peer, None)
        c.peer, c.detached_at, c.synced = peer, None, False
        self._hold_processing(c)  # sent on the old connection (or to the dead process): maybe never arrived
        self._client_by_peer[peer] = c.id

    def client_session_ended(self, client: int, peer: Peer, now: float) -> ClientLoss | None:
        """The session ``peer`` of ``client`` ended. If it still carries the client, the client is detached
        (state kept for ``client_grace`` seconds; a grace of 0 loses it at once). Returns the loss if the
        client was lost now; None if it was only detached or had already moved to a newer session."""
        c = self.clients.get(client)
        if c is None or c.peer != peer:
            return None
        if self.client_grace <= 0:
            return self.client_lost(client)
        self._client_by_peer.pop(peer, None)
        c.peer, c.detached_at = None, now
        self._hold_processing(c)  # sent on the dead session: the completion may never come back
        self.counters["clients_detached"] += 1
        return None

    def _hold_processing(self, c: "Client") -> None:
        """Mark every request PROCESSING at ``c`` to be sent again after its next VGPU_SYNC."""
        for vm in self.vms.values():
            for slot in vm.slots:
                if slot.state is IoreqState.PROCESSING and slot.client == c.id:
                    c.held.add((vm.id, slot.vcpu, vm.request_of(slot).seq))

    def expire_clients(self, now: float) -> list[ClientLoss]:
        """Lose every client detached for ``client_grace`` seconds or more."""
        late = [c.id for c in self.clients.values()
                if c.detached_at is not None and now - c.detached_at >= self.client_grace]
        self.counters["clients_expired"] += len(late)
        return [self.client_lost(cid, f"no reconnect within {self.client_grace:g}s") for cid in late]

    def next_deadline(self) -> float:
        """When :meth:`expire_clients` or ``tick`` (ioreq timeouts) next has something to do (inf: never)."""
        t = min((c.detached_at + self.client_grace for c in self.clients.values() if c.detached_at is not None),
                default=math.inf)
        for vm in self.vms.values():
            for slot in vm.slots:
                if slot.state is IoreqState.PROCESSING:
                    t = min(t, vm.dispatched_at[slot.vcpu] + self.ioreq_timeout)
        return t

    def connected(self, client: int) -> bool:
        """The client exists and has a live session (not detached)."""
        c = self.clients.get(client)
        return c is not None and c.peer is not None

    def redispatch(self, client: int, now: float) -> list[Dispatched]:
        """The requests still PROCESSING at ``client`` that were sent on a session that died or arrived while
        it was detached, to be sent to it again (once), in VM / vCPU order. Nothing while the client does
        not accept dispatches (detached, or restarting before its VGPU_SYNC). Their ioreq timeout starts
        again at ``now`` (the time spent waiting for the device model's return does not count)."""
        c = self.clients.get(client)
        if c is None or not c.accepting:
            return []
        out = []
        for vm_id, vcpu, seq in sorted(c.held):
            vm = self.vms.get(vm_id)
            if vm is None or vcpu >= vm.vcpus:
                continue
            slot = vm.slots[vcpu]
            if slot.state is IoreqState.PROCESSING and slot.client == client and vm.request_of(slot).seq == seq:
                out.append(Dispatched(client, vm.request_of(slot)))
                vm.dispatched_at[vcpu] = now
        c.held.clear()
        self.counters["ioreqs_redispatched"] += len(out)
        return out

    # ------------------------------------------------------------------------------- reconciliation
    def reconcile(self, client: int, vgpus: Iterable[tuple[int, int]], now: float) -> Reconciliation:
        """VGPU_SYNC: ``vgpus`` are the (vm, vgpu_id) the device model holds for vhm's VMs.

        * kept: the VM is RUNNING with this vGPU at this client, or CREATING with this client asked for it;
        * destroyed: any other vGPU in the list (no such VM, VM dying, no vGPU expected, another client or
          another vGPU id);
        * lost: a RUNNING VM whose vGPU is at this client but not in the list: its in-flight ioreqs fail
          with gpu_reset, the client's ranges, BDF and page tracks of that VM go, the guest gets VGPU_LOST.
        """
        c = self.clients.get(client)
        if c is None:
            return Reconciliation([], [vm for vm, _ in vgpus], False)
        held = dict(vgpus)
        keep, destroy = [], []
        for vm_id, vgpu_id in sorted(held.items()):
            vm = self.vms.get(vm_id)
            if vm is not None and vm.dm == client and vm.vgpu_spec and (
                    (vm.state is VmState.RUNNING and vm.vgpu_id == vgpu_id)
                    or (vm.state is VmState.CREATING and not vm.vgpu_id)):
                keep.append(vm_id)
            else:
                destroy.append(vm_id)
        failed: list[IoreqFailed] = []
        notices: list[Notice] = []
        why = (f"device model {c.name} restarted without the state of vGPU" if c.restarting
               else "the device model no longer holds vGPU")
        for vm in self.vms.values():
            if vm.state is VmState.RUNNING and vm.dm == client and vm.vgpu_id and vm.id not in held:
                f, n = self.vgpu_gone(vm, f"{why} {vm.vgpu_id}")
                failed += f
                notices += n
        resumed = c.resumed
        if c.restarting:
            c.restarting = False
            resumed = bool(keep)  # it carries on with the old incarnation's state (and frames)
            if keep:
                self.counters["clients_restored"] += 1
            else:  # a fresh start: nothing uses the old incarnation's frames any more
                self.counters["restart_frames_freed"] += self.frames.free_owner(c.owner)
        c.synced = True
        self.counters["reconciliations"] += 1
        self.counters["reconcile_kept"] += len(keep)
        self.counters["reconcile_destroyed"] += len(destroy)
        return Reconciliation(keep, destroy, resumed, failed, notices)

    def vgpu_gone(self, vm: Vm, reason: str) -> tuple[list[IoreqFailed], list[Notice]]:
        """The VM's vGPU no longer exists at its device model: fail the VM's in-flight ioreqs (gpu_reset),
        drop the device model's claims on the VM, and tell the guest (VGPU_LOST)."""
        failed = [self._fail_slot(vm, s.vcpu, ErrorCode.GPU_RESET, reason) for s in vm.busy_slots()]
        if vm.dm is not None:
            for gfn in vm.remove_client(vm.dm):
                vm.memory.unmap_extra(gfn, 1)
                del vm.extra_maps[gfn]
        vm.dm, vm.vgpu_id = None, 0
        self.counters["vgpus_lost"] += 1
        return failed, [Notice(vm.owner, m.VgpuLost(vm=vm.id, reason=reason[:1024]))]
