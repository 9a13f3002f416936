"""The vhm asyncio shell: one ROUTER for every peer, moving messages in and out of :class:`VhmCore`.

Everything that decides lives in the core; this module only maps messages to core calls (declarative
tables per role), turns outcomes into messages, batches dispatches, and runs the few calls vhm itself makes
to the device model (VGPU_CREATE / VGPU_DESTROY / VGPU_RESET) in their own tasks, because the answer comes
back through the same receive loop that runs the handlers.

Batching (DESIGN section 3): dispatches are queued per client while the receive loop drains whatever the
socket holds (pyzmq resolves a recv at once while messages are queued, so the loop does not yield), and
the flusher task, which runs as soon as the loop yields, sends one IOREQ_DISPATCH per client: the requests
of all VMs and vCPUs that arrived together travel together. A queue reaching MAX_BATCH is flushed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import zmq.asyncio

from ...protocol import ErrorCode, authz
from ...protocol import messages as m
from ...protocol.constants import MAX_BATCH
from ..common.client import PeerLost, RemoteError
from ..common.memory import MachineMemory
from ..common.server import RouterServer, Session
from ..common.service import BaseService
from .core import VhmCore
from .outcomes import (Completed, DataReply, Dispatched, FramesOut, IoreqFailed, MptResult, Notice, Rejected,
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


class VhmService(BaseService):
    """``gvtsim vhm``: the hypervisor service module."""

    role = "vhm"

    def __init__(self, ctx: zmq.asyncio.Context, args: argparse.Namespace) -> None:
        super().__init__(ctx, args)
        self.mem: MachineMemory | None = None
        self.core: VhmCore | None = None
        self.server: RouterServer | None = None
        self._batches: dict[int, list[m.Ioreq]] = defaultdict(list)
        self._dirty: asyncio.Event | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------- lifecycle
    async def start(self) -> dict[str, Any]:
        """Create the machine memory, bind the ROUTER, start the flusher and the ioreq timeout ticker."""
        a = self.args
        self.mem = MachineMemory(a.mem_path, a.mem_size_mb << 20, create=True)
        self.core = VhmCore(self.mem, ram_max_run=a.ram_max_run, ioreq_timeout=a.ioreq_timeout,
                            counters=self.counters)
        self.server = RouterServer(self.ctx, a.bind, role=self.role, ident=self.ident, epoch=self.epoch,
                                   hb=self.hb, handler=self, log=self.log, counters=self.counters)
        endpoint = await self.server.start()
        self._dirty = asyncio.Event()
        self._loops = [asyncio.create_task(self._flush_loop(), name="vhm-flush"),
                       asyncio.create_task(self._tick_loop(), name="vhm-tick")]
        return {"endpoint": endpoint, "mem_path": a.mem_path, "total_frames": self.core.frames.total,
                "free_frames": self.core.frames.free_frames}

    async def stop(self) -> None:
        """Cancel our tasks, say BYE to every peer, close the socket and unmap machine memory."""
        tasks = [*self._loops, *self._tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.stop()
        if self.mem is not None:
            self.mem.close()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """STATUS: VMs, frames, clients, ioreq counts by type."""
        return self.core is not None, self.core.status_info() if self.core else {}

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
        if session.role == "gvt":
            cid = self.core.add_client(session, session.id)
            session.data["client"] = cid
            self.log.info("client_added", client=cid, peer_id=session.id)

    async def on_lost(self, session: Session, reason: str) -> None:
        """A client lost: fail its PROCESSING requests at once; a guest lost: destroy its VMs."""
        assert self.core is not None
        cid = session.data.get("client")
        if cid is not None:
            loss = self.core.client_lost(cid)
            self.log.warning("client_lost", client=cid, peer_id=session.id, reason=reason,
                             failed_ioreqs=len(loss.failed), frames_freed=loss.frames_freed)
            await self._fail(loss.failed)
            await self._notify(loss.notices)
        if session.role == "guest":
            for td in self.core.guest_lost(session):
                self.log.info("vm_orphaned", vm=td.vm, peer_id=session.id, reason=reason)
                self._spawn(self._finish_destroy(td, None, 0), name=f"destroy-vm{td.vm}")

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
        await self._send(session, m.Error(code=ErrorCode.UNEXPECTED.value, req=getattr(msg, "req", None),
                                          reason=f"{tag} is not accepted from role {session.role}"))

    # --------------------------------------------------------------------------------- sending
    async def _send(self, peer: Any, msg: m.Message) -> bool:
        assert self.server is not None
        if not isinstance(peer, Session) or not peer.alive:
            self.counters["send_to_dead_session"] += 1
            return False
        return await self.server.send(peer, msg)

    async def _reject(self, session: Session, rej: Rejected, req: int | None = None) -> None:
        self.log.warning("rejected", peer_role=session.role, peer_id=session.id, code=rej.code.value,
                         reason=rej.reason, vm=rej.vm, vcpu=rej.vcpu, seq=rej.seq, req=req)
        await self._send(session, rej.error(req))

    async def _done(self, c: Completed) -> None:
        """IOREQ_DONE to the guest, then the slot goes COMPLETE -> FREE (the vCPU resumed)."""
        assert self.core is not None
        await self._send(c.peer, c.message())
        self.core.resume(c.vm, c.vcpu, c.seq)

    async def _fail(self, failed: list[IoreqFailed]) -> None:
        for f in failed:
            await self._send(f.peer, f.error())

    async def _notify(self, notices: tuple[Notice, ...] | list[Notice]) -> None:
        for n in notices:
            await self._send(n.peer, n.message)

    def _queue(self, d: Dispatched) -> Awaitable[None] | None:
        batch = self._batches[d.client]
        batch.append(d.ioreq)
        if len(batch) >= MAX_BATCH:
            return self._flush()
        assert self._dirty is not None
        self._dirty.set()
        return None

    async def _flush(self) -> None:
        """One IOREQ_DISPATCH per client with everything queued for it."""
        assert self.core is not None
        batches, self._batches = self._batches, defaultdict(list)
        for cid, reqs in batches.items():
            client = self.core.clients.get(cid)
            if client is None:  # lost since: client_lost already failed these requests
                continue
            for i in range(0, len(reqs), MAX_BATCH):
                chunk = reqs[i:i + MAX_BATCH]
                self.counters["dispatch_batches"] += 1
                self.counters["dispatch_ioreqs"] += len(chunk)
                if not await self._send(client.peer, m.IoreqDispatch(reqs=chunk)):
                    break

    async def _flush_loop(self) -> None:
        assert self._dirty is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                self.log.exception("flush_failed")

    async def _tick_loop(self) -> None:
        assert self.core is not None
        while True:
            await asyncio.sleep(min(self.hb.interval, 1.0))
            try:
                await self._fail(self.core.tick(time.monotonic()))
            except asyncio.CancelledError:
                raise
            except Exception:
                self.counters["internal_errors"] += 1
                self.log.exception("tick_failed")

    # --------------------------------------------------------------------------- guest messages
    async def _on_ioreq(self, session: Session, msg: m.Ioreq) -> None:
        assert self.core is not None
        out = self.core.submit_ioreq(session, msg, time.monotonic())
        if isinstance(out, Dispatched):
            flush = self._queue(out)
            if flush is not None:
                await flush
        elif isinstance(out, Completed):
            await self._done(out)
        else:
            await self._reject(session, out)

    async def _on_vm_create(self, session: Session, msg: m.VmCreate) -> None:
        assert self.core is not None
        plan = self.core.create_vm(session, msg.name, msg.vcpus, msg.ram_mb, msg.vgpu_type)
        if isinstance(plan, Rejected):
            await self._reject(session, plan, msg.req)
        elif plan.vgpu is None:
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
        failure: Rejected | None = None
        try:
            if client is None:
                raise PeerLost("device model gone")
            reply = await self.server.request(client.peer, m.VgpuCreate, vm=plan.vm, spec=vg.spec,
                                              ept_root=vg.ept_root, ram_mb=vg.ram_mb, timeout=self.args.vgpu_timeout)
            if not isinstance(reply, m.VgpuCreated):
                raise RemoteError(m.Error(code="internal", reason=f"device model answered {type(reply).__name__}"))
        except RemoteError as err:
            failure = Rejected(ErrorCode(err.code), f"vGPU {vg.spec!r}: {err.error.reason}")
        except PeerLost as err:
            failure = Rejected(ErrorCode.NO_DEVICE_MODEL, f"vGPU {vg.spec!r}: device model lost ({err})")
        except TimeoutError:
            failure = Rejected(ErrorCode.TIMEOUT, f"vGPU {vg.spec!r}: device model did not answer in "
                               f"{self.args.vgpu_timeout:g}s")
        if failure is not None:
            freed = self.core.vgpu_failed(plan.vm, plan.serial)
            self.counters[f"error_{failure.code.value}"] += 1
            self.log.warning("vm_create_failed", vm=plan.vm, code=failure.code.value, reason=failure.reason,
                             frames_freed=freed)
            await self._send(session, failure.error(req))
            return
        assert isinstance(reply, m.VgpuCreated)
        if self.core.vgpu_created(plan.vm, plan.serial, vg.client, reply.vgpu_id):
            self.log.info("vm_created", vm=plan.vm, vgpu_id=reply.vgpu_id, spec=vg.spec)
            await self._send(session, plan.created(req, reply.vgpu_id))
        else:  # the guest went away meanwhile: the fresh vGPU is an orphan
            self.counters["orphan_vgpus"] += 1
            await self._call_dm(vg.client, m.VgpuDestroy, vm=plan.vm)

    async def _on_vm_destroy(self, session: Session, msg: m.VmDestroy) -> None:
        assert self.core is not None
        td = self.core.destroy_vm(session, msg.vm)
        if isinstance(td, Rejected):
            await self._reject(session, td, msg.req)
            return
        await self._fail(td.failed)
        self._spawn(self._finish_destroy(td, session, msg.req), name=f"destroy-vm{td.vm}")

    async def _finish_destroy(self, td: Teardown, session: Session | None, req: int) -> None:
        """VGPU_DESTROY to the device model (bounded wait), then free the VM's frames and answer OK."""
        assert self.core is not None
        if td.vgpu_client is not None:
            await self._call_dm(td.vgpu_client, m.VgpuDestroy, vm=td.vm)
        freed = self.core.reap_vm(td.vm, td.serial)
        self.log.info("vm_destroyed", vm=td.vm, frames_freed=freed, failed_ioreqs=len(td.failed))
        if session is not None:
            await self._send(session, m.Ok(req=req, value=freed))

    async def _on_vm_reset(self, session: Session, msg: m.VmReset) -> None:
        assert self.core is not None
        td = self.core.reset_vm(session, msg.vm)
        if isinstance(td, Rejected):
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

    async def _call_dm(self, client: int, cls: type[m.Message], **fields: Any) -> bool:
        """A call to a device model that must not block forever (gone or silent: logged, counted, False)."""
        assert self.core is not None and self.server is not None
        c = self.core.clients.get(client)
        if c is None:
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
        for out in self.core.complete(cid, msg.reqs):
            if isinstance(out, Completed):
                await self._done(out)
            else:
                await self._reject(session, out)

    async def _on_mpt(self, session: Session, msg: Any) -> None:
        assert self.core is not None
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
                res = Rejected(res.code, res.reason, vm=msg.vm)
            await self._reject(session, res, msg.req)


#: Who may send what (DESIGN section 4): guests only manage their VMs and send ioreqs; device models send
#: completions and MPT calls (MPT_CALLS); ctl/probe sessions get STATUS only (answered by the server).
ROLE_HANDLERS: dict[str, dict[type[m.Message], Handler]] = {
    "guest": {
        m.VmCreate: VhmService._on_vm_create,
        m.VmDestroy: VhmService._on_vm_destroy,
        m.VmReset: VhmService._on_vm_reset,
        m.Ioreq: VhmService._on_ioreq,
    },
    "gvt": {
        m.IoreqComplete: VhmService._on_complete,
        **{cls: VhmService._on_mpt for cls in MPT_CALLS},
    },
}
