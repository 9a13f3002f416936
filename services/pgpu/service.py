"""The asyncio shell of pgpu: a ROUTER for gvt sessions, one task per engine, the core does the rest.

Requests (role "gvt" only): GGTT_WRITE -> OK, GGTT_FILL -> OK, GGTT_READ -> GGTT_ENTRIES, PGPU_MMIO_READ -> OK{value},
PGPU_MMIO_WRITE -> OK, ELSP_SUBMIT -> OK or ERROR, ENGINE_RESET -> OK. GPU_EVENTs go to the session that
submitted the context; if it is gone, the context still runs but its events are dropped (counted).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from ...hardware.engines import GPU_ENGINES
from ...protocol import messages as m
from ...protocol.errors import ErrorCode
from ..common import trace
from ..common.memory import MachineMemory
from ..common.server import RouterServer, Session
from ..common.service import BaseService
from .core import GpuError, PgpuConfig, PgpuCore
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
        self.handlers: dict[type[m.Message], Callable[[Session, Any], m.Message]] = {
            m.GgttWrite: self._ggtt_write,
            m.GgttFill: self._ggtt_fill,
            m.GgttRead: self._ggtt_read,
            m.PgpuMmioRead: self._mmio_read,
            m.PgpuMmioWrite: self._mmio_write,
            m.ElspSubmit: self._elsp_submit,
            m.EngineReset: self._engine_reset,
        }
        self.server = RouterServer(self.ctx, a.bind, role=self.role, ident=self.ident, epoch=self.epoch, hb=self.hb,
                                   handler=self, log=self.log, counters=self.counters)
        endpoint = await self.server.start()
        self._wake = {name: asyncio.Event() for name in GPU_ENGINES}
        self._tasks = [asyncio.create_task(self._engine_loop(name), name=f"pgpu-{name}") for name in GPU_ENGINES]
        return {"endpoint": endpoint, "mem_path": a.mem_path, "mem_mb": self.mem.size >> 20, "gm_mb": a.gm_mb,
                "time_scale": a.time_scale, "gpu_speed": a.gpu_speed}

    async def stop(self) -> None:
        for t in getattr(self, "_tasks", []):
            t.cancel()
        await asyncio.gather(*getattr(self, "_tasks", []), return_exceptions=True)
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
        try:
            reply = handler(session, msg)
        except GpuError as err:
            self.log.info("request_refused", msg_type=type(msg).__name__, code=err.code.value, reason=err.reason)
            await self.server.reply_error(session.ident, err.code, err.reason, req=req)
            return
        await self.server.send(session, reply)

    # ------------------------------------------------------------------------------------ requests
    def _ggtt_write(self, session: Session, msg: m.GgttWrite) -> m.Message:
        self.core.ggtt_write(msg.entries)
        return m.Ok(req=msg.req, value=len(msg.entries))

    def _ggtt_fill(self, session: Session, msg: m.GgttFill) -> m.Message:
        return m.Ok(req=msg.req, value=self.core.ggtt_fill(msg.index, msg.count, msg.pte))

    def _ggtt_read(self, session: Session, msg: m.GgttRead) -> m.Message:
        return m.GgttEntries(req=msg.req, ptes=self.core.ggtt_read(msg.index, msg.count))

    def _mmio_read(self, session: Session, msg: m.PgpuMmioRead) -> m.Message:
        return m.Ok(req=msg.req, value=self.core.mmio_read(msg.offset, msg.size, time.monotonic()))

    def _mmio_write(self, session: Session, msg: m.PgpuMmioWrite) -> m.Message:
        self.core.mmio_write(msg.offset, msg.size, msg.value, time.monotonic())
        for wake in self._wake.values():  # GDRST may have freed an engine
            wake.set()
        return m.Ok(req=msg.req)

    def _elsp_submit(self, session: Session, msg: m.ElspSubmit) -> m.Message:
        self.core.submit(msg.engine, list(msg.descs), msg.tag, time.monotonic(), owner=session)
        if trace.on:
            trace.instant("ELSP submit", "gpu", tid=GPU_ENGINES.index(msg.engine) if msg.engine in GPU_ENGINES else 0,
                          engine=msg.engine, tag=msg.tag, descs=len(msg.descs))
        self._wake[msg.engine].set()
        return m.Ok(req=msg.req)

    def _engine_reset(self, session: Session, msg: m.EngineReset) -> m.Message:
        dropped = self.core.reset_engine(msg.engine, time.monotonic())
        self._wake[msg.engine].set()
        return m.Ok(req=msg.req, value=dropped)

    # -------------------------------------------------------------------------------------- engines
    async def _engine_loop(self, name: str) -> None:
        """Run the engine's contexts in chunks and deliver its events when they fall due."""
        wake = self._wake[name]
        while True:
            wake.clear()
            try:
                events = self.core.advance(time.monotonic(), name)
            except Exception:  # the core catches its own faults; this is a last line of defence
                self.counters["internal_errors"] += 1
                self.log.exception("engine_loop_failed", engine=name)
                events = []
            for ev in events:
                await self._deliver(ev)
            if self.core.runnable(name, time.monotonic()):
                await asyncio.sleep(0)  # let the sockets breathe between chunks
                continue
            deadline = self.core.next_deadline(name)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _deliver(self, ev: EngineEvent) -> None:
        session = ev.owner
        if not isinstance(session, Session) or not session.alive:
            self.counters["events_dropped_peer_lost"] += 1
            return
        if ev.kind != "ctx_complete" and ev.kind != "user_interrupt":
            self.log.info("gpu_event", **{k: v for k, v in ev.fields().items() if k != "engine"}, engine=ev.engine)
        if trace.on:
            trace.instant(f"GPU {ev.kind}", "gpu", tid=GPU_ENGINES.index(ev.engine) if ev.engine in GPU_ENGINES else 0,
                          **ev.fields())
        await self.server.send(session, m.GpuEvent(**ev.fields()))
        self.counters[f"events_sent_{ev.kind}"] += 1
