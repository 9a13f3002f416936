"""The thin asyncio shell of the GVT device model: moves messages in and out, calls the core.

Three connections: a DEALER to vhm (ioreq dispatches, vGPU lifecycle from VM creation, MPT services),
a DEALER to pgpu (physical GGTT and registers), and the management ROUTER (``gvtsim ctl``, probes).
After every core call the effects outbox is drained and sent in order before the answer that follows
it. Callbacks run inside a connection's reactor (a batch of drained messages at a time), so they never
await a request on that connection: setup calls (scratch frame, pgpu identity) run as tasks. The ioreq
path is future-free: the completions of every IOREQ_DISPATCH in a batch leave as one IOREQ_COMPLETE when
the batch ends, after the effects they caused. The scheduler's 1 ms timer is armed only while some vGPU
has a workload queued or running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

import zmq.asyncio

from ...protocol import authz
from ...protocol import messages as m
from ...protocol.constants import MAX_BATCH, IoreqType
from ...protocol.errors import ErrorCode, Refusal
from ..common import trace
from ..common.timer import DeadlineTimer
from ..common.client import Connection, PeerLost, RemoteError
from ..common.memory import MachineMemory
from ..common.server import RouterServer, Session
from ..common.service import BaseService
from . import effects as fx
from .core import Gvt
from .mpt import EptMpt, Mpt
from .sched_policy import GVT_DEFAULT_TIME_SLICE
from .state import StateRefused, StateStore, sweep_dead
from .types import PhysicalGpu

#: Entries per GGTT_WRITE message: 15 bytes each at most on the wire keeps a message under 0.5 MiB.
GGTT_BATCH = 32768
#: Entries per GGTT_FILL message (the message's bound: a 4 GiB GM has 1 Mi entries).

Outgoing = tuple[str, type[m.Message], dict[str, Any]]  # (peer, message class, fields without req)

#: effect type -> (peer, message class, fields). PgpuGgttWrite / PgpuGgttFill / Uevent are special-cased.
EFFECT_ROUTES: dict[type, tuple[str, type[m.Message], Any]] = {
    fx.SetTrapArea: ("vhm", m.IoRange,
                     lambda e: dict(vm=e.vm, kind=int(IoreqType.MMIO), start=e.start, end=e.end, add=e.add)),
    fx.InterceptBdf: ("vhm", m.InterceptBdf, lambda e: dict(vm=e.vm, bus=e.bus, dev=e.dev, func=e.func, add=e.add)),
    fx.AttachVgpu: ("vhm", m.AttachVgpu, lambda e: dict(vm=e.vm, vgpu_id=e.vgpu_id, attach=e.attach)),
    fx.InjectMsi: ("vhm", m.InjectMsi, lambda e: dict(vm=e.vm, addr=e.addr, data=e.data)),
    fx.PageTrack: ("vhm", m.PageTrack, lambda e: dict(vm=e.vm, gfn=e.gfn, enable=e.enable)),
    fx.PgpuMmioWrite: ("pgpu", m.PgpuMmioWrite, lambda e: dict(offset=e.offset, size=e.size, value=e.value)),
    fx.PgpuSubmit: ("pgpu", m.ElspSubmit, lambda e: dict(engine=e.engine, descs=list(e.descs), tag=e.tag)),
    fx.MapGfnToMfn: ("vhm", m.MapGfnToMfn, lambda e: dict(vm=e.vm, gfn=e.gfn, mfn=e.mfn, nr=e.nr, map=e.map)),
}

#: Frames gvt asks vhm for, for shadow contexts and rings (7 vGPUs x 4 engines x 10 pages, rounded up)
#: plus shadow batch buffers (cmd_parser.py: a few pages per queued workload).
SHADOW_POOL_FRAMES = 320 + 256
#: The time-slice policy's timer period (sched_policy.py, gvt/sched_policy.c: GVT_DEFAULT_TIME_SLICE 1 ms).
SCHED_TICK = GVT_DEFAULT_TIME_SLICE
#: More frames for PPGTT shadow page tables (per vGPU: 3 scratch tables + one SPT per guest table page).
PPGTT_POOL_FRAMES = 1024


def pool_frames(max_vgpu: int) -> int:
    """Frames gvt asks vhm for at start: the pools above for 7 vGPUs, scaled to the GPU profile's vGPU
    limit (frames are holes in machine memory until gvt writes them, so an unused pool costs nothing)."""
    return -(-(SHADOW_POOL_FRAMES + PPGTT_POOL_FRAMES) * max(7, max_vgpu) // 7)


def effects_to_messages(effects: list[fx.Effect]) -> list[Outgoing]:
    """Map effects to messages, in order. Consecutive GGTT writes are merged into batches of at most
    GGTT_BATCH entries; a fill is one GGTT_FILL. Uevents produce no message (the shell logs them)."""
    out: list[Outgoing] = []
    pending: list[tuple[int, int]] = []

    def flush_ggtt() -> None:
        for i in range(0, len(pending), GGTT_BATCH):
            out.append(("pgpu", m.GgttWrite, {"entries": pending[i:i + GGTT_BATCH]}))
        pending.clear()

    for e in effects:
        if isinstance(e, fx.PgpuGgttWrite):
            pending.extend(e.entries)
            continue
        if isinstance(e, fx.PgpuGgttFill):  # one GGTT_FILL, not one entry per page: a pgpu restart rewrites
            flush_ggtt()                       # every vGPU's slices, and expanding them kept gvt busy ~1.4 s
            if e.count:
                out.append(("pgpu", m.GgttFill, {"index": e.index, "count": e.count, "pte": e.pte}))
            continue
        flush_ggtt()
        route = EFFECT_ROUTES.get(type(e))
        if route is not None:
            peer, cls, build = route
            out.append((peer, cls, build(e)))
    flush_ggtt()
    return out


class GvtService(BaseService):
    """``gvtsim gvt``: the device model process."""

    role = "gvt"

    def __init__(self, ctx: zmq.asyncio.Context, args: Any) -> None:
        super().__init__(ctx, args)
        self.core = Gvt(PhysicalGpu(profile=getattr(args, "gpu_profile", "real")),
                        counters=self.counters, mpt_factory=self._mpt,
                        enable_out_of_sync=bool(getattr(args, "enable_oos", False)),
                        enable_pvmmio=int(getattr(args, "enable_pvmmio", 1)))
        self._mem: MachineMemory | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: dict[tuple[str, int], str] = {}  # (peer, req) -> what, for refused effects
        self._submits: dict[int, int] = {}  # ELSP_SUBMIT req -> workload tag
        self._attaches: dict[int, int] = {}  # ATTACH_VGPU (attach) req -> VM, to settle a ctl create
        self._attach_waiters: dict[int, asyncio.Future[str]] = {}  # VM -> vhm's answer ("" ok, else why)
        self.conns: dict[str, Connection] = {}
        self._sched: asyncio.TimerHandle | None = None
        self._results: list[m.IoreqResult] = []  # completions of this batch's dispatches
        self._vblank = DeadlineTimer(self._on_vblank)  # armed at the core's next deadline (display.py)
        # the vGPUs' state in machine memory (state.py, docs/STATE.md): what changed is written after each
        # batch, before its completions leave, so a restarted gvt with the same --id carries on from there
        self.state: StateStore | None = None
        self._dirty: set[int] = set()  # vGPU ids whose state may have changed since the last commit
        self._vhm_epoch: int | None = None  # the vhm our vGPUs belong to
        self._restored_epoch: int | None = None  # the vhm the restored vGPUs belonged to
        self._pgpu_grace: asyncio.TimerHandle | None = None  # pgpu is away: when its workloads fail
        self._unsent: set[int] = set()  # workload tags whose ELSP_SUBMIT found no pgpu to send to

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> dict[str, Any]:
        restored = self._open_state()
        self.mgmt = RouterServer(self.ctx, self.args.bind, role=self.role, ident=self.ident, epoch=self.epoch,
                                 hb=self.hb, handler=self, log=self.log, counters=self.counters)
        endpoint = await self.mgmt.start()
        for name, endpoint_arg, on_message, on_up in (("vhm", self.args.vhm, self._on_vhm, self._vhm_up),
                                                      ("pgpu", self.args.pgpu, self._on_pgpu, self._pgpu_up)):
            conn = Connection(self.ctx, endpoint_arg, role=self.role, ident=self.ident, epoch=self.epoch, hb=self.hb,
                              log=self.log, counters=self.counters, on_message=on_message, on_up=on_up,
                              on_down=self._down_cb(name), name=name, after_batch=self._after_batch)
            self.conns[name] = conn
            conn.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._debug_reconnect)
        return {"endpoint": endpoint, "vhm": self.args.vhm, "pgpu": self.args.pgpu,
                "state_dir": self.state.dir if self.state else "off", "vgpus_restored": restored}

    # ------------------------------------------------------------------------------------ saved state
    def _state_dir(self) -> str:
        d = getattr(self.args, "state_dir", "") or ""
        if d == "off":
            return ""
        return d or f"{self.args.mem_path}.{self.ident}.state"

    def _open_state(self) -> int:
        """Re-open the state an earlier gvt of this --id left (state.py): every vGPU whose record is whole
        and restorable comes back as it was; the others are refused with their reason (their guests get a
        GPU reset from vhm's reconciliation). Returns how many came back."""
        directory = self._state_dir()
        if not directory:
            return 0
        default_id = f"gvt-{socket.gethostname()[:32]}-"  # common_args: the default --id names host and pid
        if not getattr(self.args, "state_dir", "") and self.ident.startswith(default_id):
            for name in sweep_dead(directory, f"{os.path.basename(self.args.mem_path)}.{default_id}", os.getpid()):
                self.log.info("state_swept", state_dir=name, reason="left by a gvt that died under a default --id")
        try:
            self.state = StateStore(directory)
            got = self.state.restore(self.core, self._mpt)
        except (OSError, StateRefused) as err:
            self.counters["state_unavailable"] += 1
            self.log.warning("state_unavailable", state_dir=directory, error=f"{type(err).__name__}: {err}")
            return 0
        for vm, vid, why in got.refused:
            self.counters["vgpus_restore_refused"] += 1
            self.log.warning("vgpu_restore_refused", vm=vm, vgpu=vid, reason=why)
        if got.device:
            self.log.warning("state_refused", reason=got.device)
        if got.vgpus:
            self._restored_epoch = got.vhm_epoch
            self.counters["vgpus_restored"] += len(got.vgpus)
            try:
                if self._mem is None:
                    self._mem = MachineMemory(self.args.mem_path)
                self.core.shadow.init(self._mem)
            except OSError as err:
                self.counters["machine_memory_unavailable"] += 1
                self.log.warning("machine_memory_unavailable", path=self.args.mem_path, error=str(err))
            sched = self.core.scheduler
            self.log.info("vgpus_restored", vgpus=sorted((v.vm, v.id) for v in got.vgpus),
                          workloads_on_gpu=len(sched.inflight), workloads_queued=sum(map(len, sched.queues.values())),
                          pipes_running=sum(len(v.display.timers) for v in got.vgpus),
                          vhm_epoch=got.vhm_epoch, scratch_mfn=self.core.scratch_mfn,
                          frame_pool=len(self.core.shadow.frame_pool))
        self._dirty.update(v.id for v in got.vgpus)  # recorded again from scratch, in this incarnation's files
        return len(got.vgpus)

    def _mark_vm(self, vm: int) -> None:
        v = self.core.by_vm.get(vm)
        if v is not None:
            self._dirty.add(v.id)

    def _mark_busy(self) -> None:
        """The vGPUs the scheduler or the display may have changed (those with work, or a pipe running)."""
        sched = self.core.scheduler
        self._dirty.update(w.vgpu.id for w in sched.inflight.values())
        self._dirty.update(vid for (vid, _), q in sched.queues.items() if q)
        self._dirty.update(self.core.display_active)

    def _commit(self) -> None:
        """Write what changed (state.py). Never raises: a failure is counted and logged, the state is off."""
        if self.state is None:
            return
        dirty, self._dirty = self._dirty, set()
        try:
            self.state.commit(self.core, dirty, self._vhm_epoch)  # a replaced vGPU (same id) gets a full record
            # Every live vGPU has a recorder once committed (it is dirty from its creation on), so more
            # recorders than vGPUs means some were destroyed: only then is the whole table looked through.
            if len(self.state.recorders) > len(self.core.vgpus):
                vgpus = self.core.vgpus
                for vid in [vid for vid, rec in self.state.recorders.items() if vgpus.get(vid) is not rec.vgpu]:
                    self.state.forget(vid)  # destroyed: its journal goes
        except Exception as err:
            self.counters["state_write_failed"] += 1
            self.log.error("state_write_failed", error=f"{type(err).__name__}: {err}", exc_info=True)
            self.state.close()
            self.state = None

    def _sched_busy(self) -> bool:
        sched = self.core.scheduler
        return bool(sched.inflight) or any(sched.queues.values())

    def _arm_sched(self) -> None:
        """Arm the scheduler's timer if some vGPU has work and it is not armed (no tick while idle)."""
        if self._sched is None and self.core.vgpus and self._sched_busy():
            self._sched = asyncio.get_running_loop().call_later(SCHED_TICK, self._sched_timer)

    def _sched_timer(self) -> None:
        """The scheduler's 1 ms hrtimer: a policy pass (balance every 100 ms), then dispatch."""
        self._sched = None
        try:
            before = self.core.scheduler.policy.current
            self.core.scheduler.tick(time.monotonic())
            if trace.on and self.core.scheduler.policy.current != before:
                trace.instant("scheduler switch", "sched", vgpu_from=before,
                              vgpu_to=self.core.scheduler.policy.current)
        except Exception as err:  # a bug must not stop the timer: counted and logged
            self.counters["internal_errors"] += 1
            self.log.error("sched_tick_failed", error=f"{type(err).__name__}: {err}", exc_info=True)
        if self.core.effects or self.core.log.events:
            self._flush_now()
        self._arm_sched()

    async def _after_batch(self) -> None:
        """A connection's reactor finished a batch: the ioreq completions, then the scheduler timer."""
        if self._results:
            self._flush_now()  # trap ranges, MSIs, GGTT writes go out before the completion
            self._commit()  # then the state they leave: a redispatch after a kill finds them in last_done
            results, self._results = self._results, []
            for i in range(0, len(results), MAX_BATCH):
                await self._send("vhm", m.IoreqComplete(reqs=results[i:i + MAX_BATCH]))
        self._arm_sched()
        self._arm_vblank()  # a batch may have enabled or disabled a pipe without leaving effects

    def _arm_vblank(self) -> None:
        """One timer at the core's next deadline (the earliest vblank of an enabled pipe); none while no
        pipe is enabled. The core's clock is time.monotonic(), the loop's too."""
        self._vblank.arm(self.core.next_deadline())

    def _on_vblank(self) -> None:
        try:
            self.core.on_timer(time.monotonic())
        except Exception as err:  # a bug must not stop the timer: counted and logged
            self.counters["internal_errors"] += 1
            self.log.error("vblank_failed", error=f"{type(err).__name__}: {err}", exc_info=True)
        if self.core.effects or self.core.log.events:
            self._flush_now()  # MSIs of the vblank / flip-done events; _flush_now re-arms
        else:
            self._arm_vblank()

    async def stop(self) -> None:
        if self._sched is not None:
            self._sched.cancel()
        self._vblank.cancel()
        if self._pgpu_grace is not None:
            self._pgpu_grace.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in self.conns.values():
            await conn.close()
        await self.mgmt.stop()
        if self.state is not None:
            self._commit()
            if self.state is not None:
                self.state.close()
        if self._mem is not None:
            self._mem.close()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Ready only with both vhm and pgpu connected; info lists vGPUs and types."""
        up = {name: conn.up.is_set() for name, conn in self.conns.items()}
        return all(up.values()) and bool(up), {**self.core.status_info(), "connected": up}

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """Every task's exception is retrieved: logged and counted, never "exception was never retrieved"."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counters["internal_errors"] += 1
            self.log.error("task_failed", task=task.get_name(), error=repr(task.exception()),
                           exc_info=task.exception())

    def _mpt(self, vm: int, ept_root: int, ram_mb: int) -> Mpt:
        """The MPT of a VM: its EPT in machine memory (mapped on first use; vhm creates the file)."""
        if self._mem is None:
            self._mem = MachineMemory(self.args.mem_path)
        return EptMpt(self._mem, ept_root, ram_mb)

    # -------------------------------------------------------------------------------------- output
    async def _flush(self) -> None:
        """:meth:`_flush_now` for callers that await (it never suspends)."""
        self._flush_now()

    def _flush_now(self) -> None:
        """Log what the core had to say, then send its effects in order (fire-and-forget requests;
        refusals are logged on reply)."""
        self._log_core()
        effects = self.core.drain_effects()
        self._arm_vblank()  # whatever just ran may have enabled or disabled a pipe
        for e in effects:
            if isinstance(e, fx.Uevent):
                self.log.info("uevent", vm=e.vm, name=e.name, value=e.value)
        unsent: list[int] = []
        for peer, cls, fields in effects_to_messages(effects):
            conn = self.conns.get(peer)
            req = conn.next_req() if conn is not None else 0
            try:
                if conn is None or not conn.up.is_set():
                    raise PeerLost(f"{peer} not connected")
                conn.send_now(cls(req=req, **fields))
            except PeerLost:
                self.counters[f"effects_dropped_{peer}"] += 1
                if cls is m.ElspSubmit:  # never leave a workload waiting for a GPU that did not get it:
                    unsent.append(fields["tag"])  # it goes again when pgpu is back, or fails after the grace
                if cls is m.AttachVgpu:  # no vhm to ask: the vGPU stands (it attaches when vhm comes)
                    waiter = self._attach_waiters.pop(int(fields["vm"]), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result("")
                continue
            self.counters[f"effects_sent_{peer}"] += 1
            if trace.on and cls in (m.InjectMsi, m.ElspSubmit):
                trace.instant("MSI inject" if cls is m.InjectMsi else "workload submit", "gpu",
                              tid=int(fields.get("vm", 0)), **fields)
            if cls is m.ElspSubmit:
                self._submits[req] = fields["tag"]
            if cls is m.AttachVgpu and fields.get("attach"):
                self._attaches[req] = fields["vm"]
            if len(self._sent) > 10_000:
                self._sent.clear()
            self._sent[(peer, req)] = m.tag_of(cls)
        if unsent:
            self._unsent.update(unsent)
            self._pgpu_away("a submission found no GPU to send to")
        if self.state is not None and not self._results:  # _after_batch commits before its completions
            self._mark_busy()
            if self._dirty:
                self._commit()

    def _log_core(self) -> None:
        """The core's log events (events.py) through this service's logger."""
        if self.core.log.events:
            for ev in self.core.log.drain():
                getattr(self.log, ev.level)(ev.event, **ev.fields)

    def _effect_reply(self, peer: str, msg: m.Message) -> None:
        req = getattr(msg, "req", -1)
        what = self._sent.pop((peer, req), None)
        tag = self._submits.pop(req, None) if peer == "pgpu" else None
        attach_vm = self._attaches.pop(req, None) if peer == "vhm" else None
        if attach_vm is not None:
            waiter = self._attach_waiters.pop(attach_vm, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(f"{msg.code}: {msg.reason}" if isinstance(msg, m.Error) else "")
        if tag is not None and isinstance(msg, m.Error):
            self.core.scheduler.submit_failed(tag, f"{msg.code}: {msg.reason}", time.monotonic())
        if isinstance(msg, m.Error):
            self.counters[f"effects_refused_{peer}"] += 1
            self.log.warning("effect_refused", peer=peer, what=what, code=msg.code, reason=msg.reason)

    # ---------------------------------------------------------------------------------- management
    def manage(self, msg: m.Message, owner: str) -> m.Message:
        """Answer a lifecycle / management request (pure: the caller flushes effects, then replies)."""
        req = getattr(msg, "req", None)
        if isinstance(msg, m.VgpuCreate):
            r = self.core.create_vgpu(msg.vm, msg.spec, ept_root=msg.ept_root, ram_mb=msg.ram_mb, owner=owner,
                                      now=time.monotonic())
            if isinstance(r, Refusal):
                return m.Error(code=r.code, reason=r.reason, req=req, vm=msg.vm)
            if self.state is not None:
                self.state.mpt_args[r.id] = (msg.ept_root, msg.ram_mb)
                self._dirty.add(r.id)
            return m.VgpuCreated(req=msg.req, vm=msg.vm, vgpu_id=r.id)
        if isinstance(msg, (m.VgpuDestroy, m.VgpuReset)):
            self._mark_vm(msg.vm)
            r2 = self.core.destroy_vgpu(msg.vm) if isinstance(msg, m.VgpuDestroy) else self.core.reset_vgpu(msg.vm)
            if isinstance(r2, Refusal):
                return m.Error(code=r2.code, reason=r2.reason, req=req, vm=msg.vm)
            return m.Ok(req=msg.req)
        if isinstance(msg, m.MgmtTypes):
            return m.MgmtTypesReply(req=msg.req, types=[
                m.VgpuTypeInfo(name=s.type.name, low_gm_mb=s.type.low_gm_mb, high_gm_mb=s.type.high_gm_mb,
                               fence=s.type.fence, weight=s.type.weight, avail=min(s.avail, 0xFFFF),
                               description=s.type.description + ("" if s.registered else
                                                                 "; aperture too small: i915 would not register it"))
                for s in self.core.types()])
        if isinstance(msg, m.PlaneQuery):
            plane = self.core.query_plane(msg.vm, msg.plane, msg.pipe)
            if isinstance(plane, Refusal):
                return m.Error(code=plane.code, reason=plane.reason, req=req, vm=msg.vm)
            fields = {k: v for k, v in plane.as_dict().items() if k not in ("plane", "pipe", "enabled")}
            if not plane.enabled:
                fields = {}
            return m.PlaneInfo(req=msg.req, vm=msg.vm, plane=msg.plane, pipe=msg.pipe, enabled=plane.enabled,
                               **fields)
        if isinstance(msg, m.FbRead):
            data = self.core.read_framebuffer(msg.vm, self._mem, msg.ggtt_addr, msg.offset, msg.length)
            if isinstance(data, Refusal):
                return m.Error(code=data.code, reason=data.reason, req=req, vm=msg.vm)
            return m.Data(req=msg.req, data=data)
        if isinstance(msg, m.MgmtList):
            return m.MgmtListReply(req=msg.req, vgpus=[m.VgpuInfo(**v.info()) for v in
                                                       sorted(self.core.vgpus.values(), key=lambda v: v.id)])
        self.counters["unexpected_messages"] += 1
        return m.Error(code=ErrorCode.UNEXPECTED, reason=f"gvt does not serve {type(msg).__name__}", req=req)

    # RouterServer handler (management endpoint)
    async def on_hello(self, session: Session) -> None:
        pass

    def owns(self, session: Session | None, kind: authz.Owner, vm: int) -> bool | None:
        """Ownership for the authorisation table: a vGPU belongs to the role that created it (vhm for the VMs
        it hosts, ctl for its own); None when the VM has no vGPU."""
        vgpu = self.core.vgpu_for_vm(vm)
        if vgpu is None or kind is not authz.Owner.VGPU_CREATOR:
            return None
        return vgpu.owner == (session.role if session is not None else "vhm")

    async def on_message(self, session: Session, msg: m.Message) -> None:
        fresh = isinstance(msg, m.VgpuCreate) and msg.vm not in self.core.by_vm
        reply = self.manage(msg, owner="ctl")
        waiter: asyncio.Future[str] | None = None
        if fresh and isinstance(reply, m.VgpuCreated):
            waiter = self._attach_waiters[reply.vm] = asyncio.get_running_loop().create_future()
        await self._flush()
        if waiter is not None and isinstance(reply, m.VgpuCreated):
            reply = await self._settle_ctl_create(reply, waiter)
        await self.mgmt.send(session, reply)

    async def _settle_ctl_create(self, reply: m.VgpuCreated, waiter: asyncio.Future[str]) -> m.Message:
        """A ctl-created vGPU exists only if vhm attached it to the VM (MPT attach_vgpu): when vhm refuses
        (no such VM) or does not answer, the vGPU is destroyed again and ctl gets the refusal."""
        try:
            why = await asyncio.wait_for(waiter, 3.0)
        except TimeoutError:
            why = "vhm did not answer the attach within 3 s"
        finally:
            self._attach_waiters.pop(reply.vm, None)
        if not why:
            return reply
        self.counters["vgpu_create_attach_refused"] += 1
        self.core.destroy_vgpu(reply.vm)
        await self._flush()
        return m.Error(code=ErrorCode.NO_SUCH_VM, req=reply.req, vm=reply.vm,
                       reason=f"vhm refused to attach vGPU {reply.vgpu_id} to vm {reply.vm} ({why}); "
                              f"the vGPU was destroyed again")

    async def on_lost(self, session: Session, reason: str) -> None:
        pass

    # ------------------------------------------------------------------------------------------ vhm
    async def _on_vhm(self, msg: m.Message) -> None:
        if isinstance(msg, m.IoreqDispatch):
            now = time.monotonic()
            handle = self.core.handle_ioreq
            t0 = trace.now_us() if trace.on else 0.0
            self._results.extend(m.IoreqResult(vm=r.vm, vcpu=r.vcpu, seq=r.seq, value=handle(r, now))
                                 for r in msg.reqs)
            if self.state is not None:
                self._dirty |= self.core.touched
            self.core.touched.clear()
            if trace.on:
                trace.complete("gvt emulate", "ioreq", t0, trace.now_us() - t0, ioreqs=len(msg.reqs),
                               first=f"vm{msg.reqs[0].vm}/{msg.reqs[0].vcpu}/{msg.reqs[0].seq}" if msg.reqs else "")
        elif isinstance(msg, (m.Ok, m.Error)):
            self._effect_reply("vhm", msg)
        elif isinstance(msg, (m.VgpuCreate, m.VgpuDestroy, m.VgpuReset)):
            await self._after_batch()  # earlier ioreqs of this batch complete first, in order
            refusal = authz.check("gvt", "vhm", msg, lambda kind, vm: self.owns(None, kind, vm))
            if refusal is not None:
                self.counters["authz_refused"] += 1
                self.counters[refusal.counter] += 1
                await self._send("vhm", m.Error(code=refusal.code, reason=refusal.reason, req=msg.req, vm=msg.vm))
                return
            reply = self.manage(msg, owner="vhm")
            await self._flush()
            await self._send("vhm", reply)
        else:
            self.counters["unexpected_messages"] += 1
            if getattr(msg, "req", None) is not None:
                await self._send("vhm", m.Error(code=ErrorCode.UNEXPECTED, req=msg.req,  # type: ignore[attr-defined]
                                                reason=f"gvt does not serve {type(msg).__name__}"))

    async def _send(self, peer: str, msg: m.Message) -> None:
        try:
            self.conns[peer].send_now(msg)
        except PeerLost:
            self.counters[f"replies_dropped_{peer}"] += 1

    async def _vhm_up(self, server_epoch: int, restarted: bool) -> None:
        # a vhm restarted with its state keeps its lineage (HELLO_ACK): our vGPUs still belong to it
        lineage = self.conns["vhm"].session.server_lineage or server_epoch
        if self._restored_epoch is not None and self._restored_epoch not in (server_epoch, lineage):
            # the vGPUs restored from the saved state belong to a vhm that is gone: nothing to carry on
            self.log.warning("restored_state_stale", saved_vhm_epoch=self._restored_epoch, vhm_epoch=server_epoch)
            restarted = True
        self._restored_epoch = None
        self._vhm_epoch = lineage
        self._dirty.update(self.core.vgpus)  # the device record names the vhm
        if restarted:
            # vhm lost its VMs: their vGPUs are gone with them (ctl-created ones stay), and its frames
            self.core.vhm_restarted()
            self.log.warning("vhm_restarted", server_epoch=server_epoch)
        self._spawn(self._vhm_setup())

    async def _vhm_setup(self) -> None:
        """Reconcile (VGPU_SYNC), then, unless vhm kept our state, get a scratch frame (ALLOC_FRAMES 1) and
        the shadow-context pool, map the machine memory, and announce DOM0_READY."""
        conn = self.conns["vhm"]
        try:
            resumed = await self._vhm_sync(conn)
            if not (resumed and self.core.shadow.frame_pool and self.core.scratch_mfn):
                await self._vhm_frames(conn)
            await conn.request(m.Dom0Ready)
            self.log.info("vhm_setup_done", scratch_mfn=self.core.scratch_mfn, resumed=resumed)
        except (PeerLost, RemoteError, TimeoutError, AssertionError) as err:
            self.counters["vhm_setup_failed"] += 1
            self.log.warning("vhm_setup_failed", error=f"{type(err).__name__}: {err}")

    async def _vhm_sync(self, conn: Connection) -> bool:
        """VGPU_SYNC: tell vhm our vGPUs, destroy those whose VM it does not have, re-register the rest
        (core.reconcile). Returns whether vhm kept our session's state (same epoch, within its grace)."""
        vgpus = [m.VgpuEntry(vm=vm, vgpu_id=vid) for vm, vid in self.core.vhm_vgpus()]
        reply = await conn.request(m.VgpuSync, vgpus=vgpus)
        assert isinstance(reply, m.VgpuSyncReply)
        destroyed = self.core.reconcile(list(reply.keep), list(reply.destroy))
        if not reply.resumed:  # vhm freed whatever frames it had given us: shadows built on them are void
            self.core.scheduler.frames_lost()
        self.log.info("vhm_reconciled", resumed=reply.resumed, kept=list(reply.keep), destroyed=destroyed)
        await self._flush()
        return reply.resumed

    async def _vhm_frames(self, conn: Connection) -> None:
        reply = await conn.request(m.AllocFrames, count=1)
        assert isinstance(reply, m.FramesReply) and reply.runs
        self.core.set_scratch_mfn(reply.runs[0].mfn)
        if not self.core.shadow.frame_pool:  # a new vhm: shadows built on the old one's frames go
            self.core.ppgtt.frames_lost()
        pool = await conn.request(m.AllocFrames, count=pool_frames(self.core.max_vgpu))
        assert isinstance(pool, m.FramesReply)
        try:
            if self._mem is None:
                self._mem = MachineMemory(self.args.mem_path)
            self.core.shadow.init(self._mem)
        except OSError as err:  # workloads will fail with a clear reason until it can be mapped
            self.counters["machine_memory_unavailable"] += 1
            self.log.warning("machine_memory_unavailable", path=self.args.mem_path, error=str(err))
        self.core.shadow.add_frames([r.mfn + i for r in pool.runs for i in range(r.count)])
        await self._flush()

    def _debug_reconnect(self) -> None:
        """SIGUSR1 (a test hook): drop the connection to vhm without a BYE and connect again with the same
        epoch, as a network blip would; vhm resumes the session and both sides reconcile."""
        old = self.conns.get("vhm")
        if old is None:
            return
        self.counters["debug_reconnects"] += 1
        self.log.warning("debug_reconnect", peer="vhm")
        old.up.clear()  # no BYE: vhm learns of it from the new HELLO (or the old session's silence)
        conn = Connection(self.ctx, self.args.vhm, role=self.role, ident=self.ident, epoch=self.epoch, hb=self.hb,
                          log=self.log, counters=self.counters, on_message=self._on_vhm, on_up=self._vhm_up,
                          on_down=self._down_cb("vhm"), name="vhm", after_batch=self._after_batch)
        self.conns["vhm"] = conn

        async def swap() -> None:
            await old.close()
            conn.start()
        self._spawn(swap())

    # ----------------------------------------------------------------------------------------- pgpu
    async def _on_pgpu(self, msg: m.Message) -> None:
        if isinstance(msg, (m.Ok, m.Error)):
            self._effect_reply("pgpu", msg)
            await self._flush()
        elif isinstance(msg, m.GpuEvent):
            self.counters[f"gpu_events_{msg.kind}"] += 1
            if trace.on:
                trace.instant(f"workload {msg.kind}", "gpu", engine=msg.engine, tag=msg.tag, busy_ns=msg.busy_ns)
            w = self.core.scheduler.inflight.get(msg.tag)
            if w is not None:
                self._dirty.add(w.vgpu.id)
            self.core.scheduler.on_gpu_event(msg.engine, msg.kind, msg.tag, msg.status, msg.busy_ns, msg.reason,
                                             now=time.monotonic())
            await self._flush()  # guest context written back; MSIs and the next submission go out
        else:
            self.counters["unexpected_messages"] += 1

    async def _pgpu_up(self, server_epoch: int, restarted: bool) -> None:
        if self._pgpu_grace is not None:
            self._pgpu_grace.cancel()
            self._pgpu_grace = None
        unsent, self._unsent = self._unsent, set()
        if restarted:
            # a new GPU knows nothing of what the old one was running: those workloads go to it again once
            # _pgpu_setup has rewritten the physical GGTT (the effects leave in order: the GGTT first)
            self._submits.clear()
            n = self.core.scheduler.requeue_inflight()
            if n:
                self.log.info("workloads_resubmitted", count=n, reason="pgpu restarted")
        elif unsent:
            # same epoch (the connection was reset, the GPU kept running): pgpu sends the events of what it
            # ran to our new session; only what never reached it goes again
            n = self.core.scheduler.requeue_inflight(unsent)
            if n:
                self.log.info("workloads_resubmitted", count=n, reason="never reached pgpu")
        self._spawn(self._pgpu_setup())

    async def _pgpu_setup(self) -> None:
        """Learn the GPU's identity and sizes, then (re)write every vGPU's slice of the physical GGTT."""
        conn = self.conns["pgpu"]
        try:
            reply = await conn.request(m.StatusRequest)
            gpu_info = reply.info.get("gpu") if isinstance(reply, m.StatusReply) else None
            if isinstance(gpu_info, dict):
                self.core.set_physical_gpu(PhysicalGpu.from_info(gpu_info))
        except (PeerLost, RemoteError, TimeoutError, ValueError) as err:
            self.counters["pgpu_setup_failed"] += 1
            self.log.warning("pgpu_setup_failed", error=f"{type(err).__name__}: {err}")
        self.core.resync_host_ggtt()
        if self.core.scheduler.reconciling:
            await self._reconcile_restored(conn)
        if conn.session.state == conn.session.UP:  # not lost again meanwhile (then the next setup resumes)
            self.core.scheduler.paused = False
        self.core.scheduler.kick()  # the resubmitted and waiting workloads, behind the GGTT they need
        await self._flush()

    async def _reconcile_restored(self, conn: Connection) -> None:
        """The workloads the saved state had on the GPU (state.py): ask pgpu what became of them
        (WORKLOAD_QUERY). Those that ended complete now, once (their completion went to the dead gvt, or
        came to it and was not recorded); those pgpu never saw are submitted again; the rest are still
        running and their events come to this session. If pgpu refuses or does not answer, they fail as a
        hang (their guests take the reset path): never a workload run twice, nor an engine held forever."""
        sched = self.core.scheduler
        tags = sorted(sched.reconciling)
        active: list[int] = []
        ended: list[tuple[str, str, int, int, int, str]] = []
        for i in range(0, len(tags), MAX_BATCH):  # a handful in practice: one per engine and vGPU at most
            why = ""
            try:
                reply = await conn.request(m.WorkloadQuery, tags=tags[i:i + MAX_BATCH])
                if not isinstance(reply, m.WorkloadStatus):
                    why = f"pgpu answered {type(reply).__name__}"
            except PeerLost as err:  # pgpu went away: the next setup (a reconnect, or a restart) asks again
                self.counters["workload_reconcile_failed"] += 1
                self.log.warning("workload_reconcile_failed", tags=len(tags), error=f"{type(err).__name__}: {err}")
                return
            except (RemoteError, TimeoutError) as err:
                why = f"{type(err).__name__}: {err}"
            if why or not isinstance(reply, m.WorkloadStatus):
                # pgpu cannot say: submitting them again could run one twice, waiting would hold their
                # engines forever. They fail as a hang (their guests take the reset path), nothing else waits.
                self.counters["workload_reconcile_failed"] += 1
                self.log.warning("workload_reconcile_failed", tags=len(tags), error=why, outcome="failed as a hang")
                now = time.monotonic()
                for tag in sorted(sched.reconciling):
                    sched.submit_failed(tag, f"pgpu could not say what became of it ({why})", now)
                sched.reconciling.clear()
                return
            active += reply.active
            ended += [(e.engine, e.kind, e.tag, e.status, e.busy_ns, e.reason) for e in reply.ended]
        done, again = sched.reconcile_restored(active, ended, time.monotonic())
        self._mark_busy()
        self._dirty.update(self.core.vgpus)
        self.counters["workloads_reconciled"] += len(tags)
        self.log.info("workloads_reconciled", asked=len(tags), ended=done, still_running=len(active),
                      resubmitted=again)

    def _down_cb(self, name: str) -> Any:
        async def down(reason: str) -> None:
            self.counters[f"{name}_lost"] += 1
            self.log.warning("peer_down", peer=name, reason=reason)
            if name == "pgpu":
                self._pgpu_away(reason)
        return down

    def _pgpu_away(self, reason: str) -> None:
        """pgpu is gone or unreachable. Nothing goes to a GPU until _pgpu_setup has rewritten its GGTT; the
        workloads on it wait (a restart resubmits them, a reconnect finishes them); only if it stays away
        for --pgpu-grace do they fail and their guests see a hang."""
        self.core.scheduler.paused = True
        if self._pgpu_grace is None:
            self._pgpu_grace = asyncio.get_running_loop().call_later(
                self._grace_s(), lambda: self._spawn(self._pgpu_gone(reason)))

    def _grace_s(self) -> float:
        return float(getattr(self.args, "pgpu_grace", 10.0))

    async def _pgpu_gone(self, reason: str) -> None:
        self._pgpu_grace = None
        self.counters["pgpu_grace_expired"] += 1
        self._submits.clear()
        self._unsent.clear()
        self.core.scheduler.engine_lost(f"pgpu lost: {reason} (not back within {self._grace_s():g} s)",
                                         time.monotonic())
        conn = self.conns.get("pgpu")
        if conn is not None and conn.session.state == conn.session.UP:  # it was never down: submit again
            self.core.scheduler.paused = False
            self.core.scheduler.kick()
        await self._flush()
