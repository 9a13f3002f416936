"""The vhm asyncio shell: one ROUTER for every peer, moving messages in and out of :class:`VhmCore`.

Everything that decides lives in the core; this module only maps messages to core calls (declarative
tables per role), turns outcomes into messages, batches dispatches, and runs the few calls vhm itself makes
to the device model (VGPU_CREATE / VGPU_DESTROY / VGPU_RESET) in their own tasks, because the answer comes
back through the same receive loop that runs the handlers.

Batching: the server's reactor drains every message the socket holds (a bounded batch, taken round-robin
across peers) and hands them over one by one; dispatches are queued per client meanwhile and, when the batch
ends (``after_batch``), sent as one IOREQ_DISPATCH per client: the requests of all VMs and vCPUs that arrived
together travel together. A queue reaching MAX_BATCH is flushed at once. No task or Future per message.
The ioreq timeout is one timer at the oldest PROCESSING request's deadline, armed only while some request
is PROCESSING.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import zmq.asyncio

from ...protocol import ErrorCode, authz
from ...protocol import messages as m
from ...protocol.constants import MAX_BATCH
from ...protocol.errors import Refusal
from ..common import trace
from ..common.client import PeerLost, RemoteError
from ..common.memory import MachineMemory
from ..common.server import RouterServer, Session
from .admission import CreateAdmission
from ..common.service import BaseService
from .core import VhmCore
from .state import FORMAT_VERSION, VhmStore, mem_identity, restore
from .outcomes import (ClientLoss, Completed, DataReply, Dispatched, FramesOut, IoreqFailed, MptResult, Notice,
                       Reply, Teardown, VmPlan)

Handler = Callable[["VhmService", Session, Any], Awaitable[None]]

#: MPT calls of ioreq clients (role gvt): message -> core call. The client id comes from the session.
MPT_CALLS: dict[type[m.Message], Callable[[VhmCore, int, Any], MptResult]] = {
    m.IoRange: lambda c, cid, x: c.io_range(cid, x.vm, x.kind, x.start, x.end, x.add),
    m.InterceptBdf: lambda c, cid, x: c.intercept_bdf(cid, x.vm, x.bus, x.dev, x.func, x.add),
    m.GfnToMfn: lambda c, cid, x: c.gfn_to_mfn(cid, x.vm, x.gfn),
    m.DmaMapGuestPage: lambda c, cid, x: c.dma_map_guest_page(cid, x.vm, x.gfn),
    m.DmaUnmapGuestPage: lambda c, cid, x: c.dma_unmap_guest_page(cid, x.vm, x.mfn),
    m.MapGfnToMfn: lambda c, cid, x: c.map_gfn_to_mfn(cid, x.vm, x.gfn, x.mfn, x.nr, x.map),
    m.PageTrack: lambda c, cid, x: c.page_track(cid, x.vm, x.gfn, x.enable),
    m.ReadGpa: lambda c, cid, x: c.read_gpa(cid, x.vm, x.gpa, x.length),
    m.WriteGpa: lambda c, cid, x: c.write_gpa(cid, x.vm, x.gpa, x.data),
    m.InjectMsi: lambda c, cid, x: c.inject_msi(cid, x.vm, x.addr, x.data),
    m.AllocFrames: lambda c, cid, x: c.alloc_frames(cid, x.count, x.contiguous),
    m.FreeFrames: lambda c, cid, x: c.free_frames(cid, [(r.mfn, r.count) for r in x.runs]),
    m.AttachVgpu: lambda c, cid, x: c.attach_vgpu(cid, x.vm, x.vgpu_id, x.attach),
    m.Dom0Ready: lambda c, cid, x: c.dom0_ready(cid),
}


#: What each MPT call may change of vhm's saved state (state.py): "tables" a VM's ranges, BDFs, page tracks,
#: mappings, pins or vGPU binding; "vm" its small fields (the MSI counter); "vhm" vhm's own record (a
#: client's frames, DOM0_READY). A call not listed changes nothing recorded (reads, translations).
MPT_STATE: dict[type[m.Message], str] = {
    m.IoRange: "tables", m.InterceptBdf: "tables", m.MapGfnToMfn: "tables", m.PageTrack: "tables",
    m.DmaMapGuestPage: "tables", m.DmaUnmapGuestPage: "tables", m.AttachVgpu: "tables",
    m.InjectMsi: "vm", m.AllocFrames: "vhm", m.FreeFrames: "vhm", m.Dom0Ready: "vhm",
}


class VhmService(BaseService):
    """``gvtsim vhm``: the hypervisor service module."""

    role = "vhm"

    def __init__(self, ctx: zmq.asyncio.Context, args: argparse.Namespace) -> None:
        super().__init__(ctx, args)
        self.mem: MachineMemory | None = None
        self.core: VhmCore | None = None
        self.server: RouterServer | None = None
        self._batches: dict[int, list[m.Ioreq]] = defaultdict(list)
        self._tick: asyncio.TimerHandle | None = None
        self._dispatched = False
        self._tasks: set[asyncio.Task[None]] = set()
        # vhm's state in machine memory (state.py, docs/STATE.md): committed after each batch, before what
        # it produced leaves; the IOREQ_DONEs of a batch wait here for that commit
        self.store: VhmStore | None = None
        self._out: list[tuple[Any, m.Message | list[m.IoreqResult]]] = []
        # the IOREQ_DONE_BATCH being filled for each batching guest connection (routing id): a list in _out,
        # so it leaves where its first completion would have; anything sent before it closes the batch
        self._done_lists: dict[bytes, list[m.IoreqResult]] = {}

    # ------------------------------------------------------------------------------- lifecycle
    async def start(self) -> dict[str, Any]:
        """Create the machine memory, bind the ROUTER, start the flusher and the ioreq timeout ticker."""
        a = self.args
        self.mem = MachineMemory(a.mem_path, a.mem_size_mb << 20, create=True)
        state_dir = self._state_dir()
        self.core = VhmCore(self.mem, ram_max_run=a.ram_max_run, ioreq_timeout=a.ioreq_timeout,
                            client_grace=getattr(a, "client_grace", 0.0), counters=self.counters,
                            fresh=not state_dir)
        lineage = self._open_state(state_dir) if state_dir else self.epoch
        # boot storms: creations admitted at a bounded rate, vGPU creations in flight at gvt bounded
        self.admission = CreateAdmission(getattr(a, "create_rate", 100.0), getattr(a, "create_burst", 16))
        self._vgpu_inflight = asyncio.Semaphore(getattr(a, "create_inflight", 8))
        self.server = RouterServer(self.ctx, a.bind, role=self.role, ident=self.ident, epoch=self.epoch,
                                   hb=self.hb, handler=self, log=self.log, counters=self.counters)
        self.server.core.lineage = lineage  # HELLO_ACK: guests and gvt see a restart with state as none
        endpoint = await self.server.start()
        self._rearm_tick()  # restored clients and VMs wait for their peers for a grace period
        return {"endpoint": endpoint, "mem_path": a.mem_path, "total_frames": self.core.frames.total,
                "free_frames": self.core.frames.free_frames, "state_dir": state_dir or "off",
                "lineage": lineage, "vms_restored": len(self.core.vms)}

    # ------------------------------------------------------------------------------- saved state
    def _state_dir(self) -> str:
        d = getattr(self.args, "state_dir", "") or ""
        if d == "off":
            return ""
        return d or f"{self.args.mem_path}.vhm.state"

    def _open_state(self, directory: str) -> int:
        """Re-open the state a killed vhm of this machine memory left (state.py). Returns the lineage to
        announce: the restored one, or this incarnation's epoch when nothing was restored."""
        assert self.core is not None and self.mem is not None
        try:
            self.store = VhmStore(directory)
            got = restore(self.core, self.store)
        except OSError as err:
            self.counters["state_unavailable"] += 1
            self.log.warning("state_unavailable", state_dir=directory, error=f"{type(err).__name__}: {err}")
            self.store = None
            self.mem.discard_frames(0, self.mem.frames)
            return self.epoch
        self.store.mem_id = mem_identity(self.mem.path)
        if got.refused_all:
            self.counters["state_refused"] += 1
            self.log.warning("state_refused", state_dir=directory, reason=got.refused_all,
                             format_version=FORMAT_VERSION)
        for vm, why in got.refused:
            self.counters["vm_restore_refused"] += 1
            self.log.warning("vm_restore_refused", vm=vm, reason=why)
        if not got.lineage:
            self.store.lineage = self.epoch
            return self.epoch
        self.counters["state_restored"] += 1
        self.counters["vms_restored"] += len(got.vms)
        self.log.info("state_restored", lineage=got.lineage, vms=got.vms, clients=got.clients,
                      free_frames=self.core.frames.free_frames)
        return got.lineage

    def _sync(self) -> None:
        """Commit what changed (state.py), then let the IOREQ_DONEs waiting for it go, in order. A failure
        is counted and logged, and the state is off from then on."""
        assert self.server is not None
        if self.store is not None and self.store.pending:
            assert self.core is not None
            try:
                self.store.commit(self.core)
            except Exception as err:
                self.counters["state_write_failed"] += 1
                self.log.error("state_write_failed", error=f"{type(err).__name__}: {err}", exc_info=True)
                self.store.close()
                self.store = None
        out, self._out = self._out, []
        self._done_lists.clear()
        for peer, msg in out:
            if not isinstance(peer, Session) or not peer.alive:
                self.counters["send_to_dead_session"] += 1
            elif isinstance(msg, list):  # completions for a batching guest connection
                self.counters["done_batches"] += 1
                for i in range(0, len(msg), MAX_BATCH):
                    self.server.send_now(peer, m.IoreqDoneBatch(dones=msg[i:i + MAX_BATCH]))
            else:
                self.server.send_now(peer, msg)

    def _mark(self, vm: int | None = None, struct: bool = False, vhm: bool = False) -> None:
        """What a step may have changed of the recorded state: a VM's slots and small fields (``struct``:
        its tables too), vhm's own record (``vhm``), or, with neither, anything (rare steps only: every VM
        is looked at)."""
        if self.store is not None:
            if vhm:
                self.store.mark_vhm()
            if vm is not None:
                self.store.mark(vm, struct)
            elif not vhm:
                self.store.mark_all()

    async def stop(self) -> None:
        """Cancel our tasks, say BYE to every peer, close the socket and unmap machine memory. A clean stop
        leaves no state: every peer was told BYE (a kill leaves it, for the next vhm)."""
        if self._tick is not None:
            self._tick.cancel()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
        if self.store is not None:
            self.store.delete_all()
            self.store = None
        if self.mem is not None:
            self.mem.close()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """STATUS: VMs, frames, clients, ioreq counts by type."""
        if self.core is None:
            return False, {}
        return True, {**self.core.status_info(),
                      "admission": {"admitted": self.admission.admitted, "delayed": self.admission.delayed}}

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                self.log.exception("task_failed", task=name)

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------------------------- sessions
    async def on_hello(self, session: Session) -> None:
        """A device model (role gvt) becomes an ioreq client; guests need nothing until VM_CREATE."""
        assert self.core is not None
        if session.role == "guest" and self.store is not None:  # state.py: its VMs after a vhm restart
            back = self.core.guest_hello(session, session.id, session.epoch)
            if back:
                self.log.info("vms_reclaimed", vms=back, peer_id=session.id)
        if session.role == "guest":
            # The same guest incarnation (id and epoch) on a new connection: its socket reconnected, and it
            # sends on this one from now on (the older one dies soon). Its VMs go with it, as a restarted
            # vhm gives them back to that identity (guest_hello).
            for old in self._same_guest(session):
                self._hand_over(old, session, "said HELLO again on a new connection")
        if session.role == "gvt":  # reconcile.py: the same id and epoch resumes its client
            hello = self.core.client_hello(session, session.id, session.epoch, time.monotonic())
            session.data["client"] = hello.client
            self._mark(vhm=not hello.losses)  # a client came (and with losses: VMs changed)
            event = "client_resumed" if hello.resumed else "client_taken_over" if hello.taken_over else "client_added"
            self.log.info(event, client=hello.client, peer_id=session.id, epoch=session.epoch)
            for loss in hello.losses:
                await self._client_loss(loss, session.id, "restarted (new epoch)")
            if hello.resumed:  # its state is intact: what it may not have received goes out again now
                await self._redispatch(hello.client)
            # taken over by a new incarnation: what waits for it goes out after its VGPU_SYNC

    async def _redispatch(self, cid: int) -> None:
        assert self.core is not None
        # a request queued in this batch before the client came back is in the batch already: once only
        queued = {(r.vm, r.vcpu, r.seq) for r in self._batches.get(cid, ())}
        for d in self.core.redispatch(cid, time.monotonic()):
            if (d.ioreq.vm, d.ioreq.vcpu, d.ioreq.seq) not in queued:
                self._batches[d.client].append(d.ioreq)
        await self._flush()

    async def _client_loss(self, loss: ClientLoss, peer_id: str, reason: str) -> None:
        self.log.warning("client_lost", client=loss.client, peer_id=peer_id, reason=reason,
                         failed_ioreqs=len(loss.failed), frames_freed=loss.frames_freed,
                         vgpus_lost=sum(isinstance(n.message, m.VgpuLost) for n in loss.notices))
        await self._fail(loss.failed)
        await self._notify(loss.notices)

    async def on_lost(self, session: Session, reason: str) -> None:
        """A client's session ended: it is detached (lost after the grace period, reconcile.py); a guest
        lost: destroy its VMs."""
        assert self.core is not None
        cid = session.data.get("client")
        if cid is not None:
            loss = self.core.client_session_ended(cid, session, time.monotonic())
            if loss is not None:
                self._mark()
                await self._client_loss(loss, session.id, reason)
            elif self.core.clients.get(cid) is not None and self.core.clients[cid].peer is None:
                self.log.warning("client_detached", client=cid, peer_id=session.id, reason=reason,
                                 grace_s=self.core.client_grace)
                self._rearm_tick()  # the grace period ends at a deadline of the core
        if session.role == "guest":
            successor = next(iter(self._same_guest(session)), None)
            if successor is not None:  # the same guest lives on another connection: its VMs go there
                self._hand_over(session, successor, reason)
                return
            for td in self.core.guest_lost(session):
                self._mark(td.vm)
                self.log.info("vm_orphaned", vm=td.vm, peer_id=session.id, reason=reason)
                self._spawn(self._finish_destroy(td, None, 0), name=f"destroy-vm{td.vm}")

    def _same_guest(self, session: Session) -> list[Session]:
        """The other live guest connections with ``session``'s id and epoch (the same guest incarnation)."""
        assert self.server is not None
        return [s for s in self.server.sessions.values() if s is not session and s.alive and s.role == "guest"
                and (s.id, s.epoch) == (session.id, session.epoch)]

    def _hand_over(self, old: Session, new: Session, why: str) -> None:
        """The VMs of one connection of a guest become another's (VhmCore.hand_over)."""
        assert self.core is not None
        vms = self.core.hand_over(old, new)
        if vms:
            self.log.info("vms_moved_to_reconnected_guest", peer_id=new.id, vms=vms, why=why)

    def owns(self, session: Session, kind: authz.Owner, vm_id: int) -> bool | None:
        """Ownership for the authorisation table: a VM belongs to the guest connection that created it and
        to the device model that serves its vGPU (None: no such VM, the core answers no_such_vm)."""
        assert self.core is not None
        vm = self.core.vms.get(vm_id)
        if vm is None:
            return None
        if kind is authz.Owner.VM_CREATOR:
            return vm.owner is session
        if kind is authz.Owner.DEVICE_MODEL:
            return vm.dm is None or vm.dm == session.data.get("client")
        return None

    async def on_message(self, session: Session, msg: m.Message) -> None:
        """Route a message by the sender's role and the message type (ROLE_HANDLERS)."""
        handler = ROLE_HANDLERS.get(session.role, {}).get(type(msg))
        if handler is None:
            await self._unexpected(session, msg)
            return
        await handler(self, session, msg)

    async def _unexpected(self, session: Session, msg: m.Message) -> None:
        if isinstance(msg, m.REPLY_TYPES):  # a late answer to a call that timed out: never answer an answer
            self.counters["stray_replies"] += 1
            return
        self.counters["error_unexpected"] += 1
        tag = type(msg).__struct_config__.tag
        self.log.warning("unexpected", peer_role=session.role, peer_id=session.id, msg_type=tag)
        await self._send(session, m.Error(code=ErrorCode.UNEXPECTED, req=getattr(msg, "req", None),
                                          reason=f"{tag} is not accepted from role {session.role}"))

    # --------------------------------------------------------------------------------- sending
    async def _send(self, peer: Any, msg: m.Message) -> bool:
        assert self.server is not None
        if self._out or (self.store is not None and self.store.pending):
            self._sync()  # what this message follows is recorded first, and leaves first
        if not isinstance(peer, Session) or not peer.alive:
            self.counters["send_to_dead_session"] += 1
            return False
        return self.server.send_now(peer, msg)

    async def _reject(self, session: Session, rej: Refusal, req: int | None = None) -> None:
        self.log.warning("rejected", peer_role=session.role, peer_id=session.id, code=rej.code.value,
                         reason=rej.reason, vm=rej.vm, vcpu=rej.vcpu, seq=rej.seq, req=req)
        await self._send(session, m.refusal_error(rej, req))

    async def _done(self, c: Completed) -> None:
        """IOREQ_DONE to the guest (inside an IOREQ_DONE_BATCH for a connection that batches), then the slot
        goes COMPLETE -> FREE (the vCPU resumed)."""
        assert self.core is not None
        self.core.resume(c.vm, c.vcpu, c.seq)
        if self.store is not None:
            self.store.mark(c.vm)
        peer = c.peer
        if isinstance(peer, Session) and peer.data.get("batched"):
            # sent when the batch ends (after_batch), with the other completions for that connection
            dones = self._done_lists.get(peer.ident)
            if dones is None:
                dones = self._done_lists[peer.ident] = []
                self._out.append((peer, dones))
            dones.append(m.IoreqResult(vm=c.vm, vcpu=c.vcpu, seq=c.seq, value=c.value))
            return
        if self.store is not None:  # sent once the batch's state is committed (after_batch, _send)
            self._out.append((c.peer, c.message()))
            return
        await self._send(c.peer, c.message())

    async def _fail(self, failed: list[IoreqFailed]) -> None:
        for f in failed:
            await self._send(f.peer, f.error())

    async def _notify(self, notices: tuple[Notice, ...] | list[Notice]) -> None:
        for n in notices:
            await self._send(n.peer, n.message)

    def _queue(self, d: Dispatched) -> Awaitable[None] | None:
        batch = self._batches[d.client]
        batch.append(d.ioreq)
        self._dispatched = True
        if len(batch) >= MAX_BATCH:
            return self._flush()
        return None

    async def after_batch(self) -> None:
        """The server's reactor finished a batch: record its state, send the completions and dispatches it
        produced, arm the ioreq timer."""
        if self._out or (self.store is not None and self.store.pending):
            self._sync()
        if self._batches:
            await self._flush()
        if self._dispatched:
            self._dispatched = False
            if self._tick is None:  # every request dispatched now times out after the ones already armed for
                self._arm_tick(time.monotonic() + self.args.ioreq_timeout)

    async def _flush(self) -> None:
        """One IOREQ_DISPATCH per client with everything queued for it."""
        assert self.core is not None
        if self._out or (self.store is not None and self.store.pending):
            self._sync()  # a dispatch leaves only once its slot's PROCESSING is recorded
        batches, self._batches = self._batches, defaultdict(list)
        for cid, reqs in batches.items():
            client = self.core.clients.get(cid)
            if client is None:  # lost since: client_lost already failed these requests
                continue
            if not client.accepting or client.peer is None:  # detached or restarting: they wait, sent once it is back
                self.counters["dispatch_held"] += len(reqs)
                continue
            for i in range(0, len(reqs), MAX_BATCH):
                chunk = reqs[i:i + MAX_BATCH]
                self.counters["dispatch_batches"] += 1
                self.counters["dispatch_ioreqs"] += len(chunk)
                if trace.on:
                    trace.instant("vhm dispatch", "ioreq", tid=cid, client=cid, ioreqs=len(chunk),
                                  first=f"vm{chunk[0].vm}/{chunk[0].vcpu}/{chunk[0].seq}")
                if not await self._send(client.peer, m.IoreqDispatch(reqs=chunk)):
                    break

    def _arm_tick(self, at: float) -> None:
        self._tick = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()), self._on_tick)

    def _on_tick(self) -> None:
        """The ioreq timeout timer: fail what is overdue, re-arm at the next PROCESSING request's deadline."""
        assert self.core is not None
        self._tick = None
        try:
            now = time.monotonic()
            for td in self.core.expire_unclaimed(now, self.core.client_grace):
                self._mark(td.vm)
                self.log.warning("vm_unclaimed", vm=td.vm, reason="its guest did not come back after a vhm "
                                 f"restart within {self.core.client_grace:g}s")
                self._spawn(self._finish_destroy(td, None, 0), name=f"destroy-vm{td.vm}")
            failed = self.core.tick(now)
            for f in failed:
                self._mark(f.vm)
            if failed:
                self._spawn(self._fail(failed), name="ioreq-timeouts")
            for loss in self.core.expire_clients(now):
                self._mark()
                self._spawn(self._client_loss(loss, "", f"no reconnect within {self.core.client_grace:g}s"),
                            name="client-expired")
            self._rearm_tick()
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.exception("tick_failed")

    def _rearm_tick(self) -> None:
        """(Re-)arm the timer at the core's next deadline (ioreq timeouts, client grace), if there is one."""
        assert self.core is not None
        at = min(self.core.next_deadline(), self.core.unclaimed_deadline(self.core.client_grace))
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        if at != math.inf:
            self._arm_tick(at + 0.001)  # tick() fails what is strictly past its timeout

    # --------------------------------------------------------------------------- guest messages
    async def _on_ioreq(self, session: Session, msg: m.Ioreq) -> None:
        assert self.core is not None
        if self.store is not None:
            self.store.mark(msg.vm)
        out = self.core.submit_ioreq(session, msg, time.monotonic())
        if out is None:  # sent again while in flight: its answer comes once
            return
        if isinstance(out, Dispatched):
            flush = self._queue(out)
            if flush is not None:
                await flush
        elif isinstance(out, Completed):
            await self._done(out)
        else:
            await self._reject(session, out)

    async def _on_ioreq_batch(self, session: Session, msg: m.IoreqBatch) -> None:
        """Each entry as an IOREQ of its own (its ownership checked as the session layer checks an IOREQ's);
        from now on this connection's completions go out as IOREQ_DONE_BATCH."""
        assert self.server is not None
        if len({(r.vm, r.vcpu) for r in msg.reqs}) != len(msg.reqs):
            self.counters["ioreq_batch_refused"] += 1
            await self._send(session, m.Error(code=ErrorCode.BAD_REQUEST, reason=(
                "IOREQ_BATCH names one vCPU twice: a vCPU has one ioreq slot (one request in flight)")))
            return
        session.data["batched"] = True
        self.counters["ioreq_batches"] += 1
        admitted: set[int] = set()  # VMs whose entries passed the check: handling an IOREQ never changes owners
        for req in msg.reqs:
            if req.vm in admitted or self.server.admit_entry(session, req):
                admitted.add(req.vm)
                await self._on_ioreq(session, req)

    async def _on_vm_create(self, session: Session, msg: m.VmCreate) -> None:
        assert self.core is not None
        wait = self.admission.reserve(time.monotonic())
        if wait > 0:  # over the admission rate: this creation starts later (its own timer: it has work)
            self.counters["vm_create_delayed"] += 1

            async def later() -> None:
                await asyncio.sleep(wait)
                await self._create_now(session, msg)
            self._spawn(later(), name=f"create-vm-later-{msg.req}")
            return
        await self._create_now(session, msg)

    async def _create_now(self, session: Session, msg: m.VmCreate) -> None:
        assert self.core is not None
        stale = self.core.stale_namesake(session, msg.name)
        if stale is not None:  # the guest lost track of that VM: it goes before its successor comes
            td = self.core.destroy_vm(session, stale)
            self._mark(stale)
            if not isinstance(td, Refusal):
                self.counters["vm_replaced_by_name"] += 1
                await self._fail(td.failed)
                self._spawn(self._finish_destroy(td, None, 0), name=f"destroy-vm{td.vm}")
        plan = self.core.create_vm(session, msg.name, msg.vcpus, msg.ram_mb, msg.vgpu_type)
        if isinstance(plan, Refusal):
            await self._reject(session, plan, msg.req)
            return
        self._mark(plan.vm, struct=True, vhm=True)  # the id counters; the VM once it is RUNNING
        if plan.vgpu is None:
            self.log.info("vm_created", vm=plan.vm, name=msg.name, vcpus=msg.vcpus, ram_mb=msg.ram_mb)
            await self._send(session, plan.created(msg.req))
        else:
            self._spawn(self._create_vgpu(session, msg.req, plan), name=f"create-vgpu-vm{plan.vm}")

    async def _create_vgpu(self, session: Session, req: int, plan: VmPlan) -> None:
        """Ask the device model for the VM's vGPU (acrn-dm writing create_gvt_instance); the VM creation
        fails with the device model's reason (no_space...) if it cannot."""
        assert self.core is not None and self.server is not None and plan.vgpu is not None
        vg = plan.vgpu
        client = self.core.clients.get(vg.client)
        failure: Refusal | None = None
        try:
            if client is None or not isinstance(client.peer, Session):  # the core's peers are our Sessions
                raise PeerLost("device model gone")
            async with self._vgpu_inflight:
                reply = await self.server.request(client.peer, m.VgpuCreate, vm=plan.vm, spec=vg.spec,
                                                  ept_root=vg.ept_root, ram_mb=vg.ram_mb,
                                                  timeout=self.args.vgpu_timeout)
            if not isinstance(reply, m.VgpuCreated):
                raise RemoteError(m.Error(code=ErrorCode.INTERNAL,
                                          reason=f"device model answered {type(reply).__name__}"))
        except RemoteError as err:
            failure = Refusal(ErrorCode(err.code), f"vGPU {vg.spec!r}: {err.error.reason}")
        except PeerLost as err:
            failure = Refusal(ErrorCode.NO_DEVICE_MODEL, f"vGPU {vg.spec!r}: device model lost ({err})")
        except TimeoutError:
            failure = Refusal(ErrorCode.TIMEOUT, f"vGPU {vg.spec!r}: device model did not answer in "
                               f"{self.args.vgpu_timeout:g}s")
        if failure is not None:
            freed = self.core.vgpu_failed(plan.vm, plan.serial)
            if failure.code in (ErrorCode.NO_DEVICE_MODEL, ErrorCode.TIMEOUT) and client is not None:
                # the device model may have created it with the answer lost on the way: no vGPU without a VM
                self._spawn(self._destroy_vgpu_at(vg.client, plan.vm), name=f"orphan-vm{plan.vm}")
            self.counters[f"error_{failure.code.value}"] += 1
            self.log.warning("vm_create_failed", vm=plan.vm, code=failure.code.value, reason=failure.reason,
                             frames_freed=freed)
            await self._send(session, m.refusal_error(failure, req))
            return
        assert isinstance(reply, m.VgpuCreated)
        self._mark(plan.vm, struct=True)
        if self.core.vgpu_created(plan.vm, plan.serial, vg.client, reply.vgpu_id):
            self.log.info("vm_created", vm=plan.vm, vgpu_id=reply.vgpu_id, spec=vg.spec)
            await self._send(session, plan.created(req, reply.vgpu_id))
        else:  # the guest went away meanwhile: the fresh vGPU is an orphan
            self.counters["orphan_vgpus"] += 1
            await self._call_dm(vg.client, m.VgpuDestroy, vm=plan.vm)

    async def _on_vm_destroy(self, session: Session, msg: m.VmDestroy) -> None:
        assert self.core is not None
        self._mark(msg.vm)
        td = self.core.destroy_vm(session, msg.vm)
        if isinstance(td, Refusal):
            await self._reject(session, td, msg.req)
            return
        await self._fail(td.failed)
        self._spawn(self._finish_destroy(td, session, msg.req), name=f"destroy-vm{td.vm}")

    async def _finish_destroy(self, td: Teardown, session: Session | None, req: int) -> None:
        """VGPU_DESTROY to the device model (bounded wait), then free the VM's frames and answer OK."""
        assert self.core is not None
        if td.vgpu_client is not None:
            await self._destroy_vgpu_at(td.vgpu_client, td.vm)
        freed = self.core.reap_vm(td.vm, td.serial)
        self.log.info("vm_destroyed", vm=td.vm, frames_freed=freed, failed_ioreqs=len(td.failed))
        if session is not None:
            await self._send(session, m.Ok(req=req, value=freed))

    async def _on_vm_reset(self, session: Session, msg: m.VmReset) -> None:
        assert self.core is not None
        self._mark(msg.vm)
        td = self.core.reset_vm(session, msg.vm)
        if isinstance(td, Refusal):
            await self._reject(session, td, msg.req)
            return
        await self._fail(td.failed)
        req = msg.req

        async def finish() -> None:
            if td.vgpu_client is not None:
                await self._call_dm(td.vgpu_client, m.VgpuReset, vm=td.vm)
            self.log.info("vm_reset", vm=td.vm, failed_ioreqs=len(td.failed))
            await self._send(session, m.Ok(req=req))

        self._spawn(finish(), name=f"reset-vm{td.vm}")

    async def _destroy_vgpu_at(self, client: int, vm: int) -> None:
        """VGPU_DESTROY that survives a reconnect: if the call was lost with a session that has since been
        replaced (the client resumed on a new one, whose VGPU_SYNC may already have happened), ask once more
        on the new one. A client still detached reconciles on its next HELLO (reconcile.py)."""
        assert self.core is not None
        c = self.core.clients.get(client)
        peer = c.peer if c is not None else None
        if await self._call_dm(client, m.VgpuDestroy, vm=vm):
            return
        c = self.core.clients.get(client)
        if c is not None and c.peer is not None and c.peer is not peer:
            self.counters["dm_destroy_retried"] += 1
            await self._call_dm(client, m.VgpuDestroy, vm=vm)

    async def _call_dm(self, client: int, cls: type[m.Message], **fields: Any) -> bool:
        """A call to a device model that must not block forever (gone or silent: logged, counted, False)."""
        assert self.core is not None and self.server is not None
        c = self.core.clients.get(client)
        if c is None or not isinstance(c.peer, Session):  # detached (None): it reconciles when it comes back
            self.counters["dm_call_no_client"] += 1
            return False
        try:
            await self.server.request(c.peer, cls, timeout=self.args.vgpu_timeout, **fields)
            return True
        except (RemoteError, PeerLost, TimeoutError) as err:
            self.counters["dm_call_failed"] += 1
            self.log.warning("dm_call_failed", call=cls.__struct_config__.tag, client=client,
                             error=f"{type(err).__name__}: {err}", **fields)
            return False

    # -------------------------------------------------------------------------- client messages
    async def _on_complete(self, session: Session, msg: m.IoreqComplete) -> None:
        assert self.core is not None
        cid = session.data.get("client")
        assert cid is not None
        if trace.on:
            trace.instant("vhm complete", "ioreq", tid=cid, client=cid, ioreqs=len(msg.reqs))
        if self.store is not None:
            for r in msg.reqs:
                self.store.mark(r.vm)
        for out in self.core.complete(cid, msg.reqs, time.monotonic()):
            if isinstance(out, Completed):
                await self._done(out)
            else:
                await self._reject(session, out)

    async def _on_vgpu_sync(self, session: Session, msg: m.VgpuSync) -> None:
        """Reconciliation (reconcile.py): compare the client's vGPUs with the VM table, answer what to keep
        and destroy, tell VMs whose vGPU is gone."""
        assert self.core is not None
        self._mark()
        cid = session.data["client"]
        rec = self.core.reconcile(cid, [(e.vm, e.vgpu_id) for e in msg.vgpus], time.monotonic())
        self.log.info("reconciled", client=cid, peer_id=session.id, resumed=rec.resumed, keep=rec.keep,
                      destroy=rec.destroy, vgpus_lost=len(rec.notices))
        await self._fail(rec.failed)
        await self._notify(rec.notices)
        await self._send(session, rec.reply(msg.req))
        await self._redispatch(cid)  # anything held since the HELLO (normally nothing)

    async def _on_mpt(self, session: Session, msg: Any) -> None:
        assert self.core is not None
        what = MPT_STATE.get(type(msg)) if self.store is not None else None
        if what is not None and self.store is not None:
            if what == "vhm":
                self.store.mark_vhm()
            else:
                self.store.mark(msg.vm, struct=what == "tables")
        res = MPT_CALLS[type(msg)](self.core, session.data["client"], msg)
        if isinstance(res, Reply):
            await self._notify(res.notices)  # first: when the caller sees OK, the MSI/EPT_CHANGED is on its way
            await self._send(session, m.Ok(req=msg.req, value=res.value))
        elif isinstance(res, DataReply):
            await self._send(session, m.Data(req=msg.req, data=res.data))
        elif isinstance(res, FramesOut):
            await self._send(session, m.FramesReply(req=msg.req, runs=[m.Run(mfn=r.mfn, count=r.count)
                                                                       for r in res.runs]))
        else:
            if res.vm is None and hasattr(msg, "vm"):
                res = Refusal(res.code, res.reason, vm=msg.vm)
            await self._reject(session, res, msg.req)


#: Who may send what (docs/PROTOCOL.md): guests only manage their VMs and send ioreqs; device models send
#: completions and MPT calls (MPT_CALLS); ctl/probe sessions get STATUS only (answered by the server).
ROLE_HANDLERS: dict[str, dict[type[m.Message], Handler]] = {
    "guest": {
        m.VmCreate: VhmService._on_vm_create,
        m.VmDestroy: VhmService._on_vm_destroy,
        m.VmReset: VhmService._on_vm_reset,
        m.Ioreq: VhmService._on_ioreq,
        m.IoreqBatch: VhmService._on_ioreq_batch,
    },
    "gvt": {
        m.IoreqComplete: VhmService._on_complete,
        m.VgpuSync: VhmService._on_vgpu_sync,
        **{cls: VhmService._on_mpt for cls in MPT_CALLS},
    },
}
