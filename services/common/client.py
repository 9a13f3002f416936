"""DEALER side of a gvtsim connection: HELLO, heartbeats, reconnect, pipelined requests.

Lazy-Pirate style (zguide ch.4): if the server is silent for ``liveness`` heartbeat intervals the
connection is declared down, every pending request fails with :class:`PeerLost` (nothing waits forever),
the socket is closed and a fresh one (new routing id) re-HELLOs. The server's epoch in HELLO_ACK tells
whether it restarted in between.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

from ...protocol import DecodeError, ErrorCode, WIRE_VERSION, decode, encode
from ...protocol import messages as m
from . import curve
from .liveness import HeartbeatConfig, Liveness
from .sockets import make_socket


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


class Connection:
    """A client session to one server endpoint.

    Args:
        on_message: called for every message that is not a reply to a pending request (MSI, dispatches, events).
        on_up: called after each successful HELLO exchange with the server's epoch and whether it changed.
        on_down: called when the server is declared lost.
    """

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, *, role: str, ident: str, epoch: int,
                 hb: HeartbeatConfig, log: Any, counters: Counter[str] | None = None,
                 on_message: OnMessage | None = None, on_up: OnUp | None = None,
                 on_down: OnDown | None = None, name: str = "", server_role: str = "") -> None:
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
        self.name = name or endpoint
        self.server_role = server_role or (name if name in curve.KEY_NAMES else "probe")  # whose CURVE key to expect
        self.server_epoch: int | None = None
        self.server_id: str | None = None
        self.up = asyncio.Event()
        self._sock: zmq.asyncio.Socket | None = None
        self._pending: dict[int, asyncio.Future[m.Message]] = {}
        self._req = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._liveness: Liveness | None = None
        self._send_lock = asyncio.Lock()

    # ----------------------------------------------------------------------------------------- public
    def start(self) -> None:
        """Start connecting in the background (``up`` is set once HELLO is acknowledged)."""
        self._task = asyncio.create_task(self._run(), name=f"conn-{self.name}")

    async def wait_up(self, timeout: float) -> None:
        """Wait until the session is up; raises TimeoutError."""
        async with asyncio.timeout(timeout):
            await self.up.wait()

    async def close(self) -> None:
        """Say BYE, stop, fail pending requests, close the socket (LINGER 0)."""
        self._closing = True
        if self.up.is_set() and self._sock is not None:
            try:
                await asyncio.wait_for(self._sock.send(encode(m.Bye(reason="shutdown")), flags=zmq.NOBLOCK), 0.2)
            except Exception:
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_pending("connection closed")
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def next_req(self) -> int:
        """A fresh request id for this connection."""
        return next(self._req)

    async def send(self, msg: m.Message) -> None:
        """Send one message (raises PeerLost if the session is down)."""
        if not self.up.is_set() or self._sock is None:
            raise PeerLost(f"{self.name} is not connected")
        await self._send(msg)

    async def request(self, cls: type[m.Message], /, timeout: float | None = None, **fields: Any) -> m.Message:
        """Send ``cls(req=<fresh id>, **fields)`` and await its answer (pipelined: many may be in flight).

        Raises:
            RemoteError: the answer was ERROR.
            PeerLost: the server went away first.
            TimeoutError: no answer within ``timeout`` seconds (default: liveness x interval x 4).
        """
        req = self.next_req()
        fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[req] = fut
        try:
            await self.send(cls(req=req, **fields))
            async with asyncio.timeout(timeout if timeout is not None else self.hb.timeout * 4):
                reply = await fut
        finally:
            self._pending.pop(req, None)
        if isinstance(reply, m.Error):
            raise RemoteError(reply)
        return reply

    # --------------------------------------------------------------------------------------- internals
    async def _send(self, msg: m.Message) -> None:
        assert self._sock is not None
        try:
            # NOBLOCK: with IMMEDIATE on, a send with no live connection must fail now, not queue or wait
            # (a queued request would reach a restarted server as a stale duplicate).
            await self._sock.send(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            self.counters["send_no_peer"] += 1
            raise PeerLost(f"{self.name}: no connected peer to send to") from None
        if self._liveness is not None:
            self._liveness.sent(time.monotonic())
        self.counters["msgs_out"] += 1

    def _fail_pending(self, why: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PeerLost(why))
        self._pending.clear()

    async def _run(self) -> None:
        backoff = 0.05
        while not self._closing:
            self._sock = make_socket(self.ctx, zmq.DEALER, request_sender=True)
            curve.secure_client(self._sock, self.role, self.server_role)
            self._sock.connect(self.endpoint)
            try:
                ok = await self._handshake()
                if ok:
                    backoff = 0.05
                    await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                self.counters["conn_errors"] += 1
                self.log.warning("connection_error", error=f"{type(err).__name__}: {err}")
            finally:
                was_up = self.up.is_set()
                self.up.clear()
                self._fail_pending(f"{self.name} lost")
                if self._sock is not None:
                    self._sock.close(linger=0)
                    self._sock = None
            if was_up and not self._closing and self.on_down is not None:
                try:
                    await self.on_down("server lost")
                except Exception:
                    self.log.exception("on_down_failed")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.hb.interval)

    async def _handshake(self) -> bool:
        assert self._sock is not None
        hello = m.Hello(role=self.role, id=self.ident, epoch=self.epoch, wire=WIRE_VERSION)
        try:
            async with asyncio.timeout(self.hb.timeout):
                await self._sock.send(encode(hello))
                while True:
                    raw = await self._sock.recv()
                    msg = decode(raw)
                    if isinstance(msg, m.HelloAck):
                        break
                    if isinstance(msg, m.Error):
                        self.log.warning("hello_refused", code=msg.code, reason=msg.reason)
                        if msg.code == ErrorCode.WIRE_VERSION.value:
                            await asyncio.sleep(self.hb.timeout)
                            return False
        except (TimeoutError, DecodeError):
            self.counters["hello_timeouts"] += 1
            return False
        restarted = self.server_epoch is not None and msg.epoch != self.server_epoch
        self.server_epoch, self.server_id = msg.epoch, msg.id
        self._liveness = Liveness(self.hb, time.monotonic())
        self.up.set()
        self.counters["hellos"] += 1
        self.log.info("server_hello", server_id=msg.id, server_epoch=msg.epoch, restarted=restarted)
        if self.on_up is not None:
            await self.on_up(msg.epoch, restarted)
        return True

    async def _serve(self) -> None:
        assert self._sock is not None and self._liveness is not None
        sock, live = self._sock, self._liveness
        while not self._closing:
            now = time.monotonic()
            if live.expired(now):
                self.counters["server_lost"] += 1
                self.log.warning("server_lost", silent_s=round(live.silence(now), 3))
                return
            if live.need_heartbeat(now):
                try:
                    await self._send(m.Heartbeat(epoch=self.epoch))
                except PeerLost:
                    pass  # the pipe is gone; expiry decides
            if not await sock.poll(timeout=int(self.hb.tick * 1000), flags=zmq.POLLIN):
                continue
            while True:
                try:
                    raw = await sock.recv(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                live.heard(time.monotonic())
                await self._dispatch(raw)

    async def _dispatch(self, raw: bytes) -> None:
        try:
            msg = decode(raw)
        except DecodeError as err:
            self.counters["decode_errors"] += 1
            self.log.warning("decode_error", what=err.what, field=err.field, detail=err.detail)
            return
        if isinstance(msg, m.Heartbeat):
            return
        if isinstance(msg, m.Bye):
            self.log.info("server_bye", reason=msg.reason)
            raise ConnectionResetError("server said BYE")
        forgot = isinstance(msg, m.Error) and msg.code == ErrorCode.NOT_HELLO.value
        req = getattr(msg, "req", None) if isinstance(msg, m.REPLY_TYPES) else None
        if forgot:  # the server restarted and does not know us: answer the call it refused, then re-HELLO
            fut = self._pending.get(req) if req is not None else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif req is not None and self.on_message is not None:
                await self.on_message(msg)
            raise ConnectionResetError("server forgot our session")
        if req is not None:
            fut = self._pending.get(req)
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
        if self.on_message is not None:
            try:
                await self.on_message(msg)
            except Exception:
                self.counters["internal_errors"] += 1
                self.log.exception("on_message_failed", msg_type=type(msg).__name__)
        else:
            self.counters["unsolicited_dropped"] += 1
