"""ROUTER side of a gvtsim connection: sessions, HELLO, heartbeats, validated dispatch.

The server never lets a peer's input stop it: every frame is decoded by the generic codec, a bad frame
gets an ERROR reply and a counter, a handler exception gets an ERROR ``internal`` and a log line.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq
import zmq.asyncio

from ...protocol import DecodeError, ErrorCode, WIRE_VERSION, decode, encode
from ...protocol import authz
from ...protocol import messages as m
from . import curve
from .liveness import HeartbeatConfig, Liveness
from .sockets import make_socket


@dataclass(eq=False)
class Session:
    """One connected peer, known by its ZeroMQ routing id, after its HELLO."""

    ident: bytes
    role: str
    id: str
    epoch: int
    liveness: Liveness
    data: dict[str, Any] = field(default_factory=dict)  # what the service attaches (owned VMs, ...)
    alive: bool = True


class SessionHandler(Protocol):
    """What a service implements to sit behind a :class:`RouterServer`."""

    async def on_hello(self, session: Session) -> None: ...

    async def on_message(self, session: Session, msg: m.Message) -> None: ...

    async def on_lost(self, session: Session, reason: str) -> None: ...

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(ready, info) for STATUS replies."""
        ...


class RouterServer:
    """A bound ROUTER socket that speaks the session layer and hands messages to a handler."""

    def __init__(self, ctx: zmq.asyncio.Context, bind: str, *, role: str, ident: str, epoch: int,
                 hb: HeartbeatConfig, handler: SessionHandler, log: Any, counters: Counter[str]) -> None:
        self.ctx = ctx
        self.bind_addr = bind
        self.role = role
        self.ident = ident
        self.epoch = epoch
        self.hb = hb
        self.handler = handler
        self.log = log
        self.counters = counters
        self.sessions: dict[bytes, Session] = {}
        self.sock: zmq.asyncio.Socket | None = None
        self.endpoint = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[tuple[bytes, int], asyncio.Future[m.Message]] = {}
        self._req = itertools.count(1)

    async def start(self) -> str:
        """Bind and start serving. Returns the real endpoint (port resolved for ``tcp://host:*``)."""
        self.sock = make_socket(self.ctx, zmq.ROUTER)
        curve.secure_server(self.sock, self.role, self.counters, self.log)
        self.sock.bind(self.bind_addr)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._tasks = [asyncio.create_task(self._recv_loop(), name=f"{self.role}-recv"),
                       asyncio.create_task(self._heartbeat_loop(), name=f"{self.role}-hb")]
        return self.endpoint

    async def stop(self) -> None:
        """Say BYE to every peer, stop the loops and close the socket (LINGER 0)."""
        for s in list(self.sessions.values()):
            await self._send_raw(s.ident, m.Bye(reason="shutdown"), quiet=True)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sock is not None:
            self.sock.close(linger=0)
            curve.release_server(self.sock)

    # ------------------------------------------------------------------------------------------ send
    async def send(self, session: Session, msg: m.Message) -> bool:
        """Send to a session. Returns False (and drops the session) if the peer is unreachable."""
        if not session.alive:
            self.counters["send_to_dead_session"] += 1
            return False
        ok = await self._send_raw(session.ident, msg)
        if ok:
            session.liveness.sent(time.monotonic())
        else:
            await self.drop(session, "unreachable")
        return ok

    async def _send_raw(self, ident: bytes, msg: m.Message, quiet: bool = False) -> bool:
        assert self.sock is not None
        try:
            await self.sock.send_multipart([ident, encode(msg)])
            return True
        except zmq.ZMQError as err:
            if err.errno in (zmq.EHOSTUNREACH, zmq.ENOTSOCK, zmq.ETERM) or quiet:
                self.counters["send_unreachable"] += 1
                return False
            raise

    async def request(self, session: Session, cls: type[m.Message], /, timeout: float | None = None,
                      **fields: Any) -> m.Message:
        """Send ``cls(req=<fresh id>, **fields)`` to a session and await its answer (server-initiated call,
        e.g. vhm asking gvt to create a vGPU).

        Raises:
            RemoteError: the answer was ERROR.
            PeerLost: the session was lost first.
            TimeoutError: no answer within ``timeout`` (default: 4 heartbeat timeouts).
        """
        from .client import PeerLost, RemoteError

        req = next(self._req)
        key = (session.ident, req)
        fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            if not await self.send(session, cls(req=req, **fields)):
                raise PeerLost(f"{session.role} {session.id} unreachable")
            async with asyncio.timeout(timeout if timeout is not None else self.hb.timeout * 4):
                reply = await fut
        finally:
            self._pending.pop(key, None)
        if isinstance(reply, m.Error):
            raise RemoteError(reply)
        return reply

    async def reply_error(self, ident: bytes, code: ErrorCode, reason: str, **keys: Any) -> None:
        """Send an ERROR to a routing id (known session or not)."""
        self.counters[f"error_sent_{code.value}"] += 1
        await self._send_raw(ident, m.Error(code=code.value, reason=reason[:1024], **keys), quiet=True)

    # --------------------------------------------------------------------------------------- session
    async def drop(self, session: Session, reason: str) -> None:
        """Forget a session and tell the handler (idempotent)."""
        if not session.alive:
            return
        session.alive = False
        if self.sessions.get(session.ident) is session:
            del self.sessions[session.ident]
        from .client import PeerLost

        for (ident, req), fut in list(self._pending.items()):
            if ident == session.ident and not fut.done():
                fut.set_exception(PeerLost(f"{session.role} {session.id} lost: {reason}"))
        self.counters["sessions_lost"] += 1
        self.log.info("peer_lost", peer_role=session.role, peer_id=session.id, epoch=session.epoch, reason=reason)
        try:
            await self.handler.on_lost(session, reason)
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.exception("on_lost_failed", peer_id=session.id)

    # ------------------------------------------------------------------------------------------ loops
    async def _recv_loop(self) -> None:
        assert self.sock is not None
        while True:
            try:
                raw = await self.sock.recv_multipart(copy=False)
                frames = [f.bytes for f in raw]
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as err:
                self.counters["recv_errors"] += 1
                self.log.warning("recv_error", error=str(err))
                await asyncio.sleep(0.01)
                continue
            try:
                await self._on_frames(frames, raw[-1] if raw else None)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never let one message stop the service
                self.counters["internal_errors"] += 1
                self.log.exception("handler_failed", error=str(err))
                if frames:
                    await self.reply_error(frames[0], ErrorCode.INTERNAL, f"{type(err).__name__}: {err}")

    async def _on_frames(self, frames: list[bytes], last: Any = None) -> None:
        if len(frames) != 2:
            self.counters["bad_framing"] += 1
            if frames:
                await self.reply_error(frames[0], ErrorCode.DECODE, f"expected 1 payload frame, got {len(frames) - 1}")
            return
        ident, payload = frames
        now = time.monotonic()
        self.counters["msgs_in"] += 1
        session = self.sessions.get(ident)
        if session is not None:
            session.liveness.heard(now)
        try:
            msg = decode(payload)
        except DecodeError as err:
            self.counters["decode_errors"] += 1
            self.log.warning("decode_error", what=err.what, msg_type=err.msg_type, field=err.field,
                             detail=err.detail, peer_id=session.id if session else None)
            await self.reply_error(ident, ErrorCode.DECODE, str(err))
            return
        if isinstance(msg, m.Hello):
            await self._on_hello(ident, msg, now, curve.peer_key(last))
            return
        if session is None:
            if isinstance(msg, m.StatusRequest):  # health probes may skip HELLO
                await self._send_raw(ident, self._status(msg.req), quiet=True)
                return
            if isinstance(msg, (m.Heartbeat, m.Bye)):
                self.counters["stray_heartbeats"] += 1
                await self.reply_error(ident, ErrorCode.NOT_HELLO, "session unknown (server restarted?): send HELLO")
                return
            self.counters["not_hello"] += 1
            await self.reply_error(ident, ErrorCode.NOT_HELLO, f"{type(msg).__name__} before HELLO",
                                   req=getattr(msg, "req", None))
            return
        if not await self._authorised(session, msg):
            return
        if isinstance(msg, m.Heartbeat):
            self.counters["heartbeats_in"] += 1
            return
        if isinstance(msg, m.Bye):
            await self.drop(session, f"bye: {msg.reason}")
            return
        if isinstance(msg, m.StatusRequest):
            await self.send(session, self._status(msg.req))
            return
        if isinstance(msg, m.REPLY_TYPES):
            fut = self._pending.get((ident, msg.req))  # type: ignore[attr-defined]
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
        await self.handler.on_message(session, msg)

    async def _authorised(self, session: Session, msg: m.Message) -> bool:
        """The one authorisation check (protocol/authz.py): role and ownership; a refusal is answered and counted."""
        if self.role not in authz.SERVICES:
            return True
        owns = getattr(self.handler, "owns", None)
        refusal = authz.check(self.role, session.role, msg,
                              (lambda kind, vm: owns(session, kind, vm)) if owns is not None else None)
        if refusal is None:
            return True
        self.counters["authz_refused"] += 1
        self.counters[refusal.counter] += 1
        self.log.warning("refused", peer_role=session.role, peer_id=session.id, code=refusal.code.value,
                         reason=refusal.reason)
        if refusal.answer:
            await self.reply_error(session.ident, refusal.code, refusal.reason,  # echo the request's keys
                                   **{k: getattr(msg, k) for k in ("req", "vm", "vcpu", "seq") if hasattr(msg, k)})
        return False

    def _status(self, req: int) -> m.StatusReply:
        ready, info = self.handler.status()
        return m.StatusReply(req=req, role=self.role, id=self.ident, epoch=self.epoch, ready=ready,
                             counters=dict(self.counters), info=info)

    async def _on_hello(self, ident: bytes, hello: m.Hello, now: float, key: str | None = None) -> None:
        if hello.wire != WIRE_VERSION:
            await self.reply_error(ident, ErrorCode.WIRE_VERSION,
                                   f"wire version {hello.wire} not supported (this peer speaks {WIRE_VERSION})")
            return
        if self.role in authz.SERVICES and not authz.may_hello(self.role, hello.role):
            self.counters["authz_refused"] += 1
            self.counters["authz_refused_hello_" + hello.role] += 1
            await self.reply_error(ident, ErrorCode.UNEXPECTED, f"{self.role} opens no session for role {hello.role}")
            return
        if not curve.may_claim(key, hello.role):
            self.counters["curve_role_refused"] += 1
            self.log.warning("role_not_bound_to_key", key=key, claimed_role=hello.role, peer_id=hello.id)
            await self.reply_error(ident, ErrorCode.UNEXPECTED, f"the {key} key may not say HELLO as {hello.role}")
            return
        old = self.sessions.get(ident)
        if old is not None:
            await self.drop(old, "re-hello")
        session = Session(ident=ident, role=hello.role, id=hello.id, epoch=hello.epoch,
                          liveness=Liveness(self.hb, now))
        self.sessions[ident] = session
        self.counters["hellos"] += 1
        await self.send(session, m.HelloAck(role=self.role, id=self.ident, epoch=self.epoch, wire=WIRE_VERSION))
        self.log.info("peer_hello", peer_role=hello.role, peer_id=hello.id, epoch=hello.epoch)
        await self.handler.on_hello(session)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.hb.tick)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                if s.liveness.expired(now):
                    await self.drop(s, f"silent for {s.liveness.silence(now):.2f}s")
                elif s.liveness.need_heartbeat(now):
                    self.counters["heartbeats_out"] += 1
                    await self.send(s, m.Heartbeat(epoch=self.epoch))
