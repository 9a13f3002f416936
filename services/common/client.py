"""DEALER side of a gvtsim connection: the session rules (protocol/session.py) on a reactor.

HELLO, heartbeats, reconnect, pipelined requests. When the server is lost (the socket monitor reports a
disconnect, the server says BYE or forgot us, or, as a backstop, it is silent for the session timeout) every
pending request fails with :class:`PeerLost` (nothing waits forever), the socket is closed and a fresh one
(new routing id) re-HELLOs. The server's epoch in HELLO_ACK tells whether it restarted in between.

Messages are drained in batches and handed to ``on_message`` in order, in the reactor's task: no Future or
task per message. Only :meth:`Connection.request` (a caller that awaits an answer) makes a Future.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import zmq

from ...protocol import encode
from ...protocol import messages as m
from ...protocol import session as ps
from .liveness import HeartbeatConfig
from .reactor import Frames, Reactor
from . import curve
from .sockets import make_socket, send_one


class PeerLost(ConnectionError):
    """The server went away (or restarted) while a request was outstanding."""


class RemoteError(RuntimeError):
    """The server answered a request with ERROR."""

    def __init__(self, error: m.Error) -> None:
        self.error = error
        self.code = error.code
        super().__init__(f"{error.code}: {error.reason}")


OnMessage = Callable[[m.Message], Awaitable[None]]
OnUp = Callable[[int, bool], Awaitable[None]]  # (server_epoch, server_restarted)
OnDown = Callable[[str], Awaitable[None]]
OnBatchEnd = Callable[[], Awaitable[None]]

#: What the socket monitor reports that matters: the connection is gone, or it is ready for HELLO.
MONITOR_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


class Connection:
    """A client session to one server endpoint.

    Args:
        on_message: awaited for every message that is not a reply to a pending request (MSI, dispatches,
            events), in arrival order.
        on_up: awaited after each successful HELLO exchange with the server's epoch and whether it changed.
        on_down: awaited when the server is declared lost.
        after_batch: awaited after each drained batch (a service sends what the batch produced).
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, *, role: m.Role, ident: str, epoch: int,
                 hb: HeartbeatConfig, log: Any, counters: Counter[str] | None = None,
                 on_message: OnMessage | None = None, on_up: OnUp | None = None,
                 on_down: OnDown | None = None, name: str = "", after_batch: OnBatchEnd | None = None,
                 server_role: str = "") -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.role = role
        self.ident = ident
        self.epoch = epoch
        self.hb = hb
        self.log = log.bind(peer=name or endpoint) if hasattr(log, "bind") else log
        self.counters = counters if counters is not None else Counter()
        self.on_message = on_message
        self.on_up = on_up
        self.on_down = on_down
        self.after_batch = after_batch
        self.name = name or endpoint
        self.server_role = server_role or (name if name in curve.KEY_NAMES else "probe")  # whose CURVE key to expect
        self.session = ps.ClientSession(role, ident, epoch, hb.intervals, self.counters)
        self.up = asyncio.Event()
        self._sock: zmq.Socket | None = None
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._req = 0
        self.reactor = Reactor(f"conn-{self.name}", self._on_batch, self._on_timer, self.session.next_deadline,
                               on_monitor=self._on_monitor, log=self.log)

    @property
    def server_epoch(self) -> int | None:
        return self.session.server_epoch

    @property
    def server_id(self) -> str | None:
        return self.session.server_id

    # ----------------------------------------------------------------------------------------- public
    def start(self) -> None:
        """Start connecting in the background (``up`` is set once HELLO is acknowledged)."""
        self.reactor.start()

    async def wait_up(self, timeout: float) -> None:
        """Wait until the session is up; raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self.up.wait()

    async def close(self) -> None:
        """Say BYE, stop, fail pending requests, close the socket (LINGER 0)."""
        for ev in self.session.close():
            if isinstance(ev, ps.Send):
                self._send_raw(ev.msg)
            elif isinstance(ev, ps.CallFailed):
                self._fail(ev)
        self._fail_all("connection closed")
        self.up.clear()
        await self.reactor.stop()
        self._sock = None

    def next_req(self) -> int:
        """A fresh request id for this connection."""
        self._req += 1
        return self._req

    def send_now(self, msg: m.Message) -> None:
        """Send one message now (raises PeerLost if the session is down or no peer is connected)."""
        if not self.session.up or self._sock is None:
            raise PeerLost(f"{self.name} is not connected")
        if not self._send_raw(msg):
            self.counters["send_no_peer"] += 1
            raise PeerLost(f"{self.name}: no connected peer to send to")

    async def send(self, msg: m.Message) -> None:
        """:meth:`send_now` for callers that await (it never suspends)."""
        self.send_now(msg)

    async def request(self, cls: type[m.Message], /, timeout: float | None = None, **fields: Any) -> m.Message:
        """Send ``cls(req=<fresh id>, **fields)`` and await its answer (pipelined: many may be in flight).

        Raises:
            RemoteError: the answer was ERROR.
            PeerLost: the server went away first.
            TimeoutError: no answer within ``timeout`` seconds (default: the session timeout).
        """
        req = self.next_req()
        fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        self.session.call(req, time.monotonic(), timeout)
        try:
            self.send_now(cls(req=req, **fields))
            self.reactor.poke()  # the call's deadline may be the earliest
            reply = await fut
        finally:
            self._pending.pop(req, None)
            self.session.cancel(req)
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed by _fail_pending while we were cancelled or raised: retrieved
        if isinstance(reply, m.Error):
            raise RemoteError(reply)
        return reply

    # --------------------------------------------------------------------------------------- internals
    def _send_raw(self, msg: m.Message) -> bool:
        sock = self._sock
        if sock is None:
            return False
        try:
            # NOBLOCK: with IMMEDIATE on, a send with no live connection must fail now, not queue or wait
            # (a queued request would reach a restarted server as a stale duplicate).
            send_one(sock, encode(msg))
        except zmq.ZMQError:
            return False
        self.session.sent(time.monotonic())
        self.counters["msgs_out"] += 1
        self.reactor.poke()
        return True

    def _fail(self, ev: ps.CallFailed) -> None:
        fut = self._pending.get(ev.req)
        if fut is not None and not fut.done():
            fut.set_exception(PeerLost(ev.detail) if ev.why == "lost" else TimeoutError(ev.detail))

    def _fail_all(self, why: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerLost(why))

    def _new_socket(self) -> None:
        self._sock = make_socket(self.ctx, zmq.DEALER, request_sender=True)
        curve.secure_client(self._sock, self.role, self.server_role)
        self._sock.connect(self.endpoint)
        self.reactor.attach(self._sock, MONITOR_EVENTS)

    async def _on_timer(self, now: float) -> None:
        await self._handle(self.session.timers(now))

    async def _on_monitor(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event")
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.session.transport_ready(time.monotonic())  # a HELLO that found no connection goes now
        elif kind == zmq.EVENT_DISCONNECTED:
            await self._handle(self.session.transport_down("disconnected", time.monotonic()))

    async def _on_batch(self, batch: list[Frames]) -> None:
        session = self.session
        for frames in batch:
            if len(frames) != 1:
                self.counters["bad_framing"] += 1
                continue
            payload = frames[0]  # bytes: this reactor copies (a zmq.Frame only from a copy=False reactor)
            if not isinstance(payload, bytes):
                payload = payload.bytes
            await self._handle(session.receive(payload, time.monotonic()))
        if self.after_batch is not None:
            await self.after_batch()

    async def _handle(self, events: list[ps.Event]) -> None:
        for ev in events:
            t = type(ev)
            if t is ps.Deliver:
                if self.on_message is None:
                    self.counters["unsolicited_dropped"] += 1
                    continue
                try:
                    await self.on_message(ev.msg)
                except Exception:
                    self.counters["internal_errors"] += 1
                    self.log.exception("on_message_failed", msg_type=type(ev.msg).__name__)
            elif t is ps.Answer:
                fut = self._pending.get(ev.req)
                if fut is not None and not fut.done():
                    fut.set_result(ev.msg)
            elif t is ps.Send:
                if not self._send_raw(ev.msg):
                    self.session.send_failed(ev.msg, time.monotonic())
            elif t is ps.CallFailed:
                self._fail(ev)
            elif t is ps.Connect:
                self._new_socket()
                await self._handle(self.session.connect(time.monotonic()))
            elif t is ps.Up:
                self.up.set()
                self.log.info("server_hello", server_id=ev.server_id, server_epoch=ev.server_epoch,
                              restarted=ev.restarted)
                if self.on_up is not None:
                    try:
                        await self.on_up(ev.server_epoch, ev.restarted)
                    except Exception:
                        self.counters["internal_errors"] += 1
                        self.log.exception("on_up_failed")
            elif t is ps.Down:
                self.up.clear()
                self.log.warning("server_lost", reason=ev.reason)
                self._fail_all(f"{self.name} lost: {ev.reason}")
                self.reactor.detach()
                self._sock = None
                if self.on_down is not None:
                    try:
                        await self.on_down(ev.reason)
                    except Exception:
                        self.counters["internal_errors"] += 1
                        self.log.exception("on_down_failed")
            elif t is ps.Refused:
                self.log.warning("hello_refused", code=ev.code, reason=ev.reason)
            elif t is ps.Invalid:
                err = ev.error
                self.log.warning("decode_error", what=err.what, field=err.field, detail=err.detail)


__all__ = ["Connection", "PeerLost", "RemoteError"]
