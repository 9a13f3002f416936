"""The asyncio shell of pgpu: a ROUTER for gvt sessions, one task per engine, the core does the rest.

Requests (role "gvt" only): GGTT_WRITE -> OK, GGTT_FILL -> OK, GGTT_READ -> GGTT_ENTRIES, PGPU_MMIO_READ -> OK{value},
PGPU_MMIO_WRITE -> OK, ELSP_SUBMIT -> OK or ERROR, ENGINE_RESET -> OK, WORKLOAD_QUERY -> WORKLOAD_STATUS.
GPU_EVENTs go to the session that submitted the context (or a later session of the same gvt id); if none is
there, the context still runs but its events are dropped (counted); a restarted gvt asks for them with
WORKLOAD_QUERY (the core remembers the events of the last ENDED_TAGS submissions).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from ...hardware.engines import GPU_ENGINES
from ...protocol import messages as m
from ...protocol.errors import ErrorCode, Refusal
from ..common import trace
from ..common.memory import MachineMemory
from ..common.server import RouterServer, Session
from ..common.timer import DeadlineTimer
from ..common.service import BaseService
from .core import PgpuConfig, PgpuCore
from .events import EngineEvent

SERVED_ROLES = ("gvt",)


async def open_memory(path: str, size_mb: int, create: bool, wait_s: float) -> MachineMemory:
    """Map the machine memory; create it with ``create``, else wait up to ``wait_s`` for vhm to create it."""
    if create:
        return MachineMemory(path, size_mb << 20, create=True)
    deadline = time.monotonic() + wait_s
    while not os.path.exists(path) or os.path.getsize(path) == 0:
        if time.monotonic() >= deadline:
            raise FileNotFoundError(f"machine memory {path} does not exist (start vhm first, or --create-mem)")
        await asyncio.sleep(0.05)
    return MachineMemory(path)


class PgpuService(BaseService):
    """``gvtsim pgpu``."""

    role = "pgpu"

    async def start(self) -> dict[str, Any]:
        a = self.args
        self.mem = await open_memory(a.mem_path, a.mem_size_mb, a.create_mem, a.mem_wait)
        self.core = PgpuCore(self.mem, PgpuConfig(gm_mb=a.gm_mb, aperture_mb=a.aperture_mb, time_scale=a.time_scale,
                                                  gpu_speed=a.gpu_speed, watchdog_ms=a.watchdog_ms,
                                                  watchdog_cmds=a.watchdog_cmds,
                                                  profile=getattr(a, "gpu_profile", "real")))
        # the core's refusals (GGTT/MMIO out of range, submits refused, commands no-op'd in non-privileged
        # batches) are counted where STATUS reads them
        self.core.counters = self.counters
        self.handlers: dict[type[m.Message], Callable[[Session, Any], m.Message | Refusal]] = {
            m.GgttWrite: self._ggtt_write,
            m.GgttFill: self._ggtt_fill,
            m.GgttRead: self._ggtt_read,
            m.PgpuMmioRead: self._mmio_read,
            m.PgpuMmioWrite: self._mmio_write,
            m.ElspSubmit: self._elsp_submit,
            m.EngineReset: self._engine_reset,
            m.WorkloadQuery: self._workload_query,
        }
        self.server = RouterServer(self.ctx, a.bind, role=self.role, ident=self.ident, epoch=self.epoch, hb=self.hb,
                                   handler=self, log=self.log, counters=self.counters)
        endpoint = await self.server.start()
        self._loop = asyncio.get_running_loop()
        self._run_soon: asyncio.Handle | None = None  # a pass over the engines is due now
        self._timer = DeadlineTimer(self._kick, self._loop)  # the earliest engine deadline (a context's end, an event)
        return {"endpoint": endpoint, "mem_path": a.mem_path, "mem_mb": self.mem.size >> 20, "gm_mb": a.gm_mb,
                "time_scale": a.time_scale, "gpu_speed": a.gpu_speed}

    async def stop(self) -> None:
        run_soon: asyncio.Handle | None = getattr(self, "_run_soon", None)
        if run_soon is not None:
            run_soon.cancel()
        if hasattr(self, "_timer"):
            self._timer.cancel()
        if hasattr(self, "server"):
            await self.server.stop()

    def status(self) -> tuple[bool, dict[str, Any]]:
        return True, self.core.status()

    # ------------------------------------------------------------------------------------ sessions
    async def on_hello(self, session: Session) -> None:
        self.counters[f"sessions_{session.role}"] += 1

    async def on_lost(self, session: Session, reason: str) -> None:
        if session.role == "gvt":  # a probe's BYE is not a lost device model
            self.log.info("gvt_lost", peer_id=session.id, reason=reason)

    async def on_message(self, session: Session, msg: m.Message) -> None:
        req = getattr(msg, "req", None)
        handler = self.handlers.get(type(msg))
        if handler is None or session.role not in SERVED_ROLES:
            self.counters["unexpected"] += 1
            await self.server.reply_error(session.ident, ErrorCode.UNEXPECTED,
                                          f"pgpu does not serve {type(msg).__name__} from role {session.role}",
                                          req=req)
            return
        reply = handler(session, msg)
        if isinstance(reply, Refusal):
            self.log.info("request_refused", msg_type=type(msg).__name__, code=reply.code.value, reason=reply.reason)
            await self.server.reply_error(session.ident, reply.code, reply.reason, req=req)
            return
        await self.server.send(session, reply)

    # ------------------------------------------------------------------------------------ requests
    def _ggtt_write(self, session: Session, msg: m.GgttWrite) -> m.Message | Refusal:
        written = self.core.ggtt_write(msg.entries)
        return written if isinstance(written, Refusal) else m.Ok(req=msg.req, value=len(msg.entries))

    def _ggtt_fill(self, session: Session, msg: m.GgttFill) -> m.Message | Refusal:
        written = self.core.ggtt_fill(msg.index, msg.count, msg.pte)
        return written if isinstance(written, Refusal) else m.Ok(req=msg.req, value=written)

    def _ggtt_read(self, session: Session, msg: m.GgttRead) -> m.Message | Refusal:
        ptes = self.core.ggtt_read(msg.index, msg.count)
        return ptes if isinstance(ptes, Refusal) else m.GgttEntries(req=msg.req, ptes=ptes)

    def _mmio_read(self, session: Session, msg: m.PgpuMmioRead) -> m.Message | Refusal:
        value = self.core.mmio_read(msg.offset, msg.size, time.monotonic())
        return value if isinstance(value, Refusal) else m.Ok(req=msg.req, value=value)

    def _mmio_write(self, session: Session, msg: m.PgpuMmioWrite) -> m.Message | Refusal:
        refused = self.core.mmio_write(msg.offset, msg.size, msg.value, time.monotonic())
        if refused is not None:
            return refused
        self._kick()  # GDRST may have freed an engine
        return m.Ok(req=msg.req)

    def _elsp_submit(self, session: Session, msg: m.ElspSubmit) -> m.Message | Refusal:
        refused = self.core.submit(msg.engine, list(msg.descs), msg.tag, time.monotonic(), owner=session)
        if refused is not None:
            return refused
        if trace.on:
            trace.instant("ELSP submit", "gpu", tid=GPU_ENGINES.index(msg.engine) if msg.engine in GPU_ENGINES else 0,
                          engine=msg.engine, tag=msg.tag, descs=len(msg.descs))
        self._kick()
        return m.Ok(req=msg.req)

    def _engine_reset(self, session: Session, msg: m.EngineReset) -> m.Message | Refusal:
        dropped = self.core.reset_engine(msg.engine, time.monotonic())
        if isinstance(dropped, Refusal):
            return dropped
        self._kick()
        return m.Ok(req=msg.req, value=dropped)

    def _workload_query(self, session: Session, msg: m.WorkloadQuery) -> m.Message | Refusal:
        """What became of a restarted gvt's predecessor's submissions: only those of the same gvt identity
        (role and id) are answered; another's read as never seen."""
        def mine(owner: Any) -> bool:
            return isinstance(owner, Session) and owner.role == session.role and owner.id == session.id

        active, ended = self.core.workload_status(msg.tags, mine)
        self.counters["workload_queries"] += 1
        return m.WorkloadStatus(req=msg.req, active=active, ended=[
            m.EndedEvent(**{k: v for k, v in e.fields().items()}) for e in ended[:4 * m.MAX_BATCH]])

    # -------------------------------------------------------------------------------------- engines
    def _kick(self) -> None:
        """Run the engines on the loop's next turn (after the current batch of requests is answered)."""
        if self._run_soon is None:
            self._run_soon = self._loop.call_soon(self._run_engines)

    def _run_engines(self) -> None:
        """One pass: a chunk of every engine that can run, the events that fell due delivered; then either
        another pass on the next turn (an engine still has work now: the sockets get a turn in between) or
        one timer at the earliest engine deadline, or nothing at all while the GPU is idle. No task and no
        polling loop: an idle GPU costs nothing."""
        self._run_soon = None
        now = time.monotonic()
        busy = False
        for name in GPU_ENGINES:
            try:
                events = self.core.advance(now, name)
            except Exception:  # the core catches its own faults; this is a last line of defence
                self.counters["internal_errors"] += 1
                self.log.exception("engine_failed", engine=name)
                events = []
            for ev in events:
                self._deliver(ev)
            busy = busy or self.core.runnable(name, time.monotonic())
        if busy:
            self._kick()
            return
        deadlines = [d for d in (self.core.next_deadline(name) for name in GPU_ENGINES) if d is not None]
        self._timer.arm(min(deadlines) if deadlines else None)

    def _deliver(self, ev: EngineEvent) -> None:
        session = ev.owner
        if isinstance(session, Session) and not session.alive:
            # the gvt that submitted it reconnected (same identity, new session): the event is its
            session = next((s for s in self.server.sessions.values()
                            if s.alive and s.role == session.role and s.id == session.id), session)
        if not isinstance(session, Session) or not session.alive:
            self.counters["events_dropped_peer_lost"] += 1
            return
        if ev.kind != "ctx_complete" and ev.kind != "user_interrupt":
            self.log.info("gpu_event", **{k: v for k, v in ev.fields().items() if k != "engine"}, engine=ev.engine)
        if trace.on:
            trace.instant(f"GPU {ev.kind}", "gpu", tid=GPU_ENGINES.index(ev.engine) if ev.engine in GPU_ENGINES else 0,
                          **ev.fields())
        self.server.send_now(session, m.GpuEvent(**ev.fields()))
        self.counters[f"events_sent_{ev.kind}"] += 1
