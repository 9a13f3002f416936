"""ROUTER side of a gvtsim connection: the session rules (protocol/session.py) on a reactor.

The server never lets a peer's input stop it: every frame is decoded by the generic codec, a bad frame
gets an ERROR reply and a counter, a handler exception gets an ERROR ``internal`` and a log line.

Per batch of drained messages the work is taken round-robin across peers (one message of each peer in turn,
each peer's own order kept), so a flooding peer cannot starve the others; each peer's queue is bounded by
its pipe's high-water mark in libzmq (sockets.py). After the batch the handler's ``after_batch()`` runs
(vhm sends the IOREQ_DISPATCHes the batch produced, one per client).

Liveness: a peer that disconnects (or stops answering ZMTP heartbeats) is reported by the socket monitor;
the server then finds which sessions lost their pipe (a send to a routing id without a pipe fails with
EHOSTUNREACH under ROUTER_MANDATORY) and drops them. Application heartbeats are a backstop only.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import zmq

from ...protocol import ErrorCode, authz, encode
from ...protocol import messages as m
from ...protocol import session as ps
from ...protocol.session import Session
from . import curve
from .liveness import HeartbeatConfig
from .reactor import Frames, Reactor
from .sockets import make_socket, send_routed
from .status_budget import StatusBudget

__all__ = ["RouterServer", "Session", "SessionHandler"]

#: Re-check which sessions lost their pipe this long after a disconnect event (the pipe's termination reaches
#: the socket a little after the monitor event).
PROBE_DELAYS = (0.01, 0.1, 0.5)
#: the longest a session without a pipe waits for the socket to be drained before it is dropped anyway
SUSPECT_MAX_S = 3.0
#: Decode-error log lines per peer before they are only counted (a flood of garbage must not flood the log).
LOG_BUDGET = 20
#: Decode-error ERROR replies per routing id before the rest are only counted (``decode_errors_unanswered``)
ANSWER_BUDGET = 100
#: Roles whose sessions are one request long (gvtsim health, ctl): logged at debug level.
TRANSIENT_ROLES = frozenset({"probe", "ctl"})
#: What :meth:`RouterServer._authorised` returns for a refusal that is not answered (dropped, only counted).
_SILENT = m.Error(code=ErrorCode.UNEXPECTED, reason="refused")


class SessionHandler(Protocol):
    """What a service implements to sit behind a :class:`RouterServer` (``after_batch`` is optional)."""

    async def on_hello(self, session: Session) -> None: ...

    async def on_message(self, session: Session, msg: m.Message) -> None: ...

    async def on_lost(self, session: Session, reason: str) -> None: ...

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(ready, info) for STATUS replies."""
        ...


class RouterServer:
    """A bound ROUTER socket that speaks the session layer and hands messages to a handler."""

    def __init__(self, ctx: zmq.Context, bind: str, *, role: m.Role, ident: str, epoch: int,
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
        self.core = ps.ServerSessions(role, ident, epoch, hb.intervals, counters)
        self.sock: zmq.Socket | None = None
        self.endpoint = ""
        self._curve = curve.enabled()  # frames come as zmq.Frame: the HELLO gate reads the peer's ZAP User-Id
        self.reactor = Reactor(f"{role}-router", self._on_batch, self._on_timer, self._deadline,
                               on_monitor=self._on_monitor, log=log, copy=not self._curve)
        self._pending: dict[tuple[bytes, int], asyncio.Future[m.Message]] = {}
        self._req = itertools.count(1)
        self._probe_at: list[float] = []
        self._suspects: dict[bytes, float] = {}
        self._log_budget: Counter[bytes] = Counter()
        self._garbage_answered: Counter[bytes] = Counter()
        self._after_batch = getattr(handler, "after_batch", None)
        self._owns: Callable[[Session, authz.Owner, int], bool | None] | None = getattr(handler, "owns", None)
        self._deferred: list[ps.Event] = []
        self.status_budget = StatusBudget()  # STATUS builds take a bounded share of the time (status_budget.py)
        #: The one place every decoded message from a session passes before its handler: a check returning
        #: an ERROR to send back (the message is then not handled) or None to let it through.
        self.admit: Callable[[Session, m.Message], m.Error | None] | None = \
            self._authorised if role in authz.SERVICES else None
        #: the last frame of the message being received (CURVE on: a zmq.Frame, whose ZAP User-Id names the
        #: sender's key); read only by the HELLO gate, so an established session's messages never pay for it
        self._peer_frame: Any = None
        self.core.gate_hello = self._gate_hello

    @property
    def sessions(self) -> dict[bytes, Session]:
        return self.core.sessions

    async def start(self) -> str:
        """Bind and start serving. Returns the real endpoint (port resolved for ``tcp://host:*``)."""
        sock = make_socket(self.ctx, zmq.ROUTER)
        try:
            curve.secure_server(sock, self.role, self.counters, self.log)
        except BaseException:
            sock.close(linger=0)  # no keys: the service stops with one clear line, nothing left open
            raise
        try:
            sock.bind(self.bind_addr)
        except BaseException:
            # the reactor never saw this socket, so nothing else closes it: left open, it would block the
            # context's term() and the service would hang instead of exiting with its error (port taken)
            curve.release_server(sock)
            sock.close(linger=0)
            raise
        self.sock = sock
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.reactor.attach(self.sock, zmq.EVENT_DISCONNECTED | curve.HANDSHAKE_FAILED_EVENTS)
        self.reactor.start()
        return self.endpoint

    async def stop(self) -> None:
        """Say BYE to every peer, stop the reactor and close the socket (LINGER 0)."""
        for s in list(self.sessions.values()):
            self._send_raw(s.ident, m.Bye(reason="shutdown"))
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        await self.reactor.stop()
        if self.sock is not None:
            curve.release_server(self.sock)

    # ------------------------------------------------------------------------------------------ send
    def send_now(self, session: Session, msg: m.Message) -> bool:
        """Send to a session without waiting. Returns False (and drops the session) if the peer is gone."""
        if not session.alive:
            self.counters["send_to_dead_session"] += 1
            return False
        err = self._send_raw(session.ident, msg)
        if err is None:
            session.last_sent = time.monotonic()
            return True
        if err == zmq.EHOSTUNREACH:
            self._dispatch_now(self.core.drop(session, "unreachable"))
        return False

    async def send(self, session: Session, msg: m.Message) -> bool:
        """:meth:`send_now` for callers that await (it never suspends)."""
        return self.send_now(session, msg)

    def _send_raw(self, ident: bytes, msg: m.Message) -> int | None:
        """Send now; None on success, else the errno (counted)."""
        sock = self.sock
        if sock is None:
            return zmq.ENOTSOCK
        try:
            send_routed(sock, ident, encode(msg))
        except zmq.Again:  # the peer's pipe is at its high-water mark: it is not reading
            self.counters["send_hwm_full"] += 1
            return zmq.EAGAIN
        except zmq.ZMQError as err:
            self.counters["send_unreachable"] += 1
            return err.errno
        self.counters["msgs_out"] += 1
        self.reactor.poke()
        return None

    async def request(self, session: Session, cls: type[m.Message], /, timeout: float | None = None,
                      **fields: Any) -> m.Message:
        """Send ``cls(req=<fresh id>, **fields)`` to a session and await its answer (server-initiated call,
        e.g. vhm asking gvt to create a vGPU). One Future per awaited call.

        Raises:
            RemoteError: the answer was ERROR.
            PeerLost: the session was lost first.
            TimeoutError: no answer within ``timeout`` (default: the session timeout).
        """
        from .client import PeerLost, RemoteError

        req = next(self._req)
        key = (session.ident, req)
        fut: asyncio.Future[m.Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        self.core.call(session, req, time.monotonic(), timeout)
        try:
            if not self.send_now(session, cls(req=req, **fields)):
                raise PeerLost(f"{session.role} {session.id} unreachable")
            self.reactor.poke()
            reply = await fut
        finally:
            self._pending.pop(key, None)
            self.core.cancel(session, req)
            if fut.done() and not fut.cancelled():
                fut.exception()  # drop() may have failed it while we raised before awaiting it: retrieved
        if isinstance(reply, m.Error):
            raise RemoteError(reply)
        return reply

    async def reply_error(self, ident: bytes, code: ErrorCode, reason: str, **keys: Any) -> None:
        """Send an ERROR to a routing id (known session or not)."""
        self._error_to(ident, code, reason, **keys)

    def _error_to(self, ident: bytes, code: ErrorCode, reason: str, **keys: Any) -> None:
        self.counters[f"error_sent_{code.value}"] += 1
        self._send_raw(ident, m.Error(code=code, reason=reason[:1024], **keys))

    # --------------------------------------------------------------------------------------- session
    async def drop(self, session: Session, reason: str) -> None:
        """Forget a session and tell the handler (idempotent)."""
        await self._handle(self.core.drop(session, reason))

    # ------------------------------------------------------------------------------------ the reactor
    def _deadline(self) -> float | None:
        """The earliest of the session sweep, the pipe probes and the STATUS budget (read every round)."""
        if self._deferred:
            return 0.0
        at = self.core.next_deadline()
        for t in (self._probe_at[0] if self._probe_at else None, self.status_budget.next_deadline()):
            if t is not None and (at is None or t < at):
                at = t
        return at

    async def _on_timer(self, now: float) -> None:
        if self._deferred:
            events, self._deferred = self._deferred, []
            await self._handle(events)
        if self._probe_at and self._probe_at[0] <= now:
            self._probe_at = [t for t in self._probe_at if t > now]
            await self._probe_pipes()
        waiting = self.status_budget.due(now)
        if waiting:
            self._answer_status(waiting)
        await self._handle(self.core.timers(now))

    async def _on_monitor(self, event: Mapping[str, Any]) -> None:
        failed = curve.handshake_failure(event)
        if failed is not None:  # wrong server key, no CURVE, or a key ZAP refused: counted by reason
            self.counters["curve_handshake_failed"] += 1
            self.counters[f"curve_handshake_failed_{failed}"] += 1
            if self.counters["curve_handshake_failed"] <= 100:  # a flood of them is counted, not logged
                ep = event.get("endpoint", b"")
                self.log.warning("curve_handshake_failed", reason=failed,
                                 endpoint=ep.decode(errors="replace") if isinstance(ep, bytes) else str(ep))
            return
        if event.get("event") == zmq.EVENT_DISCONNECTED:
            self.counters["transport_disconnects"] += 1
            now = time.monotonic()
            self._probe_at = sorted({*self._probe_at, *(now + d for d in PROBE_DELAYS)})

    async def _probe_pipes(self) -> None:
        """After a disconnect: every session whose routing id has no pipe any more is lost. A session found
        without a pipe is only suspect at first: what its peer sent before closing (a BYE) may still be
        queued, so it is dropped at a later probe if it is still there and still has no pipe."""
        hb = encode(m.Heartbeat(epoch=self.epoch))
        assert self.sock is not None
        now = time.monotonic()
        suspects, self._suspects = self._suspects, {}
        for s in list(self.sessions.values()):
            try:
                send_routed(self.sock, s.ident, hb)
                s.last_sent = now
            except zmq.Again:
                pass
            except zmq.ZMQError as err:
                if err.errno != zmq.EHOSTUNREACH:
                    continue
                first = suspects.get(s.ident)
                # dropped once the socket has been drained since it was first found without a pipe (so a BYE
                # it sent before closing, queued behind other peers' messages, was handled as a BYE), or when
                # it has been suspect for SUSPECT_MAX_S whatever the backlog
                if first is not None and now - first >= 0.05 and (self.reactor.drained_at > first
                                                                  or now - first >= SUSPECT_MAX_S):
                    await self._handle(self.core.drop(s, "disconnected"))
                else:
                    self._suspects[s.ident] = first if first is not None else now
        if self._suspects and not self._probe_at:
            self._probe_at = [now + 0.1]

    async def _on_batch(self, batch: list[Frames]) -> None:
        now = time.monotonic()
        items = [item for item in map(self._frames, batch) if item is not None]
        if len({item[0] for item in items}) <= 1:  # one peer (mostly one message per wake-up): in order
            for ident, payload, last in items:
                self._peer_frame = last
                await self._handle(self.core.receive(ident, payload, now), ident)
        else:
            by_peer: dict[bytes, deque[tuple[bytes, bytes, Any]]] = {}
            for item in items:
                q = by_peer.get(item[0])
                if q is None:
                    by_peer[item[0]] = deque([item])
                else:
                    q.append(item)
            queues = list(by_peer.values())
            first = True
            while queues:  # round-robin across peers, each peer's order kept
                for q in queues:
                    ident, payload, last = q.popleft()
                    self._peer_frame = last
                    await self._handle(self.core.receive(ident, payload, now), ident)
                queues = [q for q in queues if q]
                if first and queues and self._after_batch is not None:
                    # what the first round produced (every peer's first message) leaves before the rest of
                    # a flooder's messages are worked through
                    first = False
                    await self._after_batch()
        if self._after_batch is not None:
            await self._after_batch()

    def _frames(self, msg_frames: Frames) -> tuple[bytes, bytes, Any] | None:
        """(routing id, payload, last frame) of one drained message, or None for bad framing (answered and
        counted). The last frame is a zmq.Frame when CURVE is on (its ZAP User-Id is read at HELLO)."""
        # one recv_multipart gives all bytes or all zmq.Frame, so the last frame tells the whole list's type
        if msg_frames and not isinstance(msg_frames[-1], bytes):
            frames = [f.bytes for f in msg_frames]
        else:
            frames = cast(list[bytes], msg_frames)
        if len(frames) != 2:
            self.counters["bad_framing"] += 1
            if frames:
                self._error_to(frames[0], ErrorCode.DECODE, f"expected 1 payload frame, got {len(frames) - 1}")
            return None
        return frames[0], frames[1], msg_frames[-1]

    # ---------------------------------------------------------------------------------- authorisation
    def _gate_hello(self, ident: bytes, hello: m.Hello) -> m.Error | None:
        """Before a session opens: may this service open one for the claimed role (protocol/authz.py), and
        may the peer's CURVE key claim it (the ZAP handler named the key; services/common/curve.py)."""
        if self.role in authz.SERVICES and not authz.may_hello(self.role, hello.role):
            self.counters["authz_refused"] += 1
            self.counters["authz_refused_hello_" + hello.role] += 1
            return m.Error(code=ErrorCode.UNEXPECTED,
                           reason=f"{self.role} opens no session for role {hello.role}"[:1024])
        key = curve.peer_key(self._peer_frame)  # None for a bytes frame (CURVE off)
        if not curve.may_claim(key, hello.role):
            self.counters["curve_role_refused"] += 1
            self.log.warning("role_not_bound_to_key", key=key, claimed_role=hello.role, peer_id=hello.id)
            return m.Error(code=ErrorCode.UNEXPECTED,
                           reason=f"the {key} key may not say HELLO as {hello.role}"[:1024])
        return None

    def _authorised(self, session: Session, msg: m.Message) -> m.Error | None:
        """The one authorisation check (protocol/authz.py): role and ownership; a refusal is counted, logged
        and answered (an ERROR echoing the request's keys), or dropped silently when the table says so."""
        owns = self._owns
        refusal = authz.check(self.role, session.role, msg,
                              (lambda kind, vm: owns(session, kind, vm)) if owns is not None else None)
        if refusal is None:
            return None
        self.counters["authz_refused"] += 1
        self.counters[refusal.counter] += 1
        self.log.warning("refused", peer_role=session.role, peer_id=session.id, code=refusal.code.value,
                         reason=refusal.reason)
        if not refusal.answer:
            return _SILENT
        self.counters[f"error_sent_{refusal.code.value}"] += 1
        return m.Error(code=refusal.code, reason=refusal.reason[:1024],
                       **{k: getattr(msg, k) for k in ("req", "vm", "vcpu", "seq") if hasattr(msg, k)})

    def admit_entry(self, session: Session, entry: m.Message) -> bool:
        """The check :attr:`admit` makes of a message, made of one entry of a batch (an IOREQ inside an
        IOREQ_BATCH is checked as an IOREQ). A refusal is counted, logged and answered with the entry's
        keys; False then, and the entry is not handled."""
        if self.admit is None:
            return True
        refusal = self.admit(session, entry)
        if refusal is None:
            return True
        if refusal is not _SILENT:
            self.send_now(session, refusal)
        return False

    def _dispatch_now(self, events: list[ps.Event]) -> None:
        """Events produced outside the reactor's own turn (a send that found the peer gone): the reactor runs
        them next, never re-entrantly inside the caller."""
        if events:
            self._deferred.extend(events)
            self.reactor.poke()

    async def _handle(self, events: list[ps.Event], ident: bytes | None = None) -> None:
        for ev in events:
            try:
                await self._event(ev)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # never let one message stop the service
                self.counters["internal_errors"] += 1
                self.log.exception("handler_failed", error=str(err))
                if ident is not None:
                    await self.reply_error(ident, ErrorCode.INTERNAL, f"{type(err).__name__}: {err}")

    async def _event(self, ev: ps.Event) -> None:
        t = type(ev)
        if t is ps.Deliver:
            session = ev.session
            if self.admit is not None:
                refusal = self.admit(session, ev.msg)
                if refusal is not None:
                    if refusal is not _SILENT:
                        self.send_now(session, refusal)
                    return
            await self.handler.on_message(session, ev.msg)
        elif t is ps.Send:
            if type(ev.msg) is m.Error and ev.msg.code is ErrorCode.DECODE and not self._answer_garbage(ev.ident):
                return
            self._send_raw(ev.ident, ev.msg)
            s = self.sessions.get(ev.ident)
            if s is not None:
                s.last_sent = time.monotonic()
        elif t is ps.Answer:
            fut = self._pending.get((ev.session.ident, ev.req))
            if fut is not None and not fut.done():
                fut.set_result(ev.msg)
        elif t is ps.StatusWanted:
            verdict = self.status_budget.want(ev.ident, ev.req, time.monotonic())
            if verdict == "now":
                self._answer_status([(ev.ident, ev.req)])
            elif verdict == "wait":
                self.counters["status_waited"] += 1
            else:
                self.counters["status_busy"] += 1
                self.counters["error_sent_busy"] += 1
                self._send_raw(ev.ident, m.Error(code=ErrorCode.BUSY, req=ev.req, reason=(
                    f"{len(self.status_budget.waiting)} STATUS requests are waiting for this {self.role}'s next "
                    "answer, some of them yours: read those answers before asking again")[:1024]))
        elif t is ps.Opened:
            s = ev.session
            (self.log.debug if s.role in TRANSIENT_ROLES else self.log.info)(
                "peer_hello", peer_role=s.role, peer_id=s.id, epoch=s.epoch)
            await self.handler.on_hello(s)
        elif t is ps.Lost:
            await self._lost(ev.session, ev.reason)
        elif t is ps.CallFailed:
            from .client import PeerLost

            fut = self._pending.get((ev.session.ident, ev.req)) if ev.session is not None else None
            if fut is not None and not fut.done():
                fut.set_exception(PeerLost(ev.detail) if ev.why == "lost" else TimeoutError(ev.detail))
        elif t is ps.Invalid:
            err = ev.error
            key = ev.session.ident if ev.session is not None else b""
            self._log_budget[key] += 1
            if self._log_budget[key] <= LOG_BUDGET:
                self.log.warning("decode_error", what=err.what, msg_type=err.msg_type, field=err.field,
                                 detail=err.detail, peer_id=ev.session.id if ev.session else None)

    def _answer_status(self, waiting: list[tuple[bytes, int]]) -> None:
        """Build the STATUS info once and answer every request in ``waiting`` with it; the build's cost
        sets when the next may start (status_budget.py)."""
        started = time.monotonic()
        try:
            ready, info = self.handler.status()
        except Exception as err:  # a bug: every waiting request still gets its answer, an ERROR
            self.counters["internal_errors"] += 1
            self.log.exception("status_failed", error=f"{type(err).__name__}: {err}")
            for ident, req in waiting:
                self.counters["error_sent_internal"] += 1
                self._send_raw(ident, m.Error(code=ErrorCode.INTERNAL, req=req,
                                              reason=f"STATUS failed: {type(err).__name__}: {err}"[:1024]))
        else:
            counters = dict(self.counters)
            for ident, req in waiting:
                self._send_raw(ident, m.StatusReply(req=req, role=self.role, id=self.ident, epoch=self.epoch,
                                                    ready=ready, counters=counters, info=info))
        self.status_budget.built(started, time.monotonic() - started)

    def _answer_garbage(self, ident: bytes) -> bool:
        """Whether a frame that did not decode gets its ERROR: the first ANSWER_BUDGET of each routing id do
        (the sender learns what was wrong), the rest of a flood is only counted. Answering every frame of a
        flood would queue tens of thousands of replies to a peer that does not read them, and a peer that
        resets its connection with replies queued can abort libzmq's I/O thread (libzmq issue #4841,
        ``!_io_error`` in ``stream_engine_base.cpp``: input and output events of one epoll batch)."""
        if len(self._garbage_answered) > 10_000:  # every new connection has a new routing id: bounded
            self._garbage_answered.clear()
        self._garbage_answered[ident] += 1
        if self._garbage_answered[ident] <= ANSWER_BUDGET:
            return True
        self.counters["decode_errors_unanswered"] += 1
        self.counters["error_sent_decode"] -= 1  # the session core counted it as sent when it produced it
        return False

    async def _lost(self, session: Session, reason: str) -> None:
        # health probes and ctl come and go every few seconds: their sessions log at debug, peers at info
        (self.log.debug if session.role in TRANSIENT_ROLES else self.log.info)(
            "peer_lost", peer_role=session.role, peer_id=session.id, epoch=session.epoch, reason=reason)
        self._log_budget.pop(session.ident, None)
        self._garbage_answered.pop(session.ident, None)
        self.status_budget.forget(session.ident)
        try:
            await self.handler.on_lost(session, reason)
        except Exception:
            self.counters["internal_errors"] += 1
            self.log.exception("on_lost_failed", peer_id=session.id)
