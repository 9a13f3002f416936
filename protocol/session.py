"""The session rules of every gvtsim connection, sans-I/O (as h11's ``Connection``): no sockets, no clock.

One implementation of the rules for the three kinds of endpoint: :class:`ServerSessions` (a ROUTER with many
peers), :class:`ClientSession` (a DEALER talking to one server, as services, ``gvtsim ctl`` and
``gvtsim health`` use it). A shell feeds them what arrived (``receive(payload, now)``), what the transport
saw (``transport_down``), and the time (``timers(now)`` at ``next_deadline()``); they answer with events:
messages to send, messages to deliver, answers to pending calls, sessions opened and lost.

The rules (docs/PROTOCOL.md "Sessions" is their prose form):

* A client opens with ``HELLO {role, id, epoch, wire}``; the server answers ``HELLO_ACK`` with its own
  role, id, epoch, wire version and the two intervals the client must follow: ``heartbeat_ms`` (send a
  ``HEARTBEAT`` when you have sent nothing for that long) and ``timeout_ms`` (the silence after which
  either side declares the other lost). A changed server epoch means the server restarted.
* Any message counts as a sign of life. Dead peers are found by the transport first (libzmq's ZMTP
  heartbeats run in its I/O thread and the socket monitor reports the disconnect), so a process that is busy
  in Python is never declared lost; the application timeout is only a backstop for a hung process, and it is
  generous (seconds, not a few hundred milliseconds).
* Calls are pipelined and keyed by ``req`` (chosen by the caller, echoed by the answer). Each pending call
  ends exactly once: with its answer, with ``CallFailed("lost")`` when the session goes, or with
  ``CallFailed("timeout")``.
* Anything but HELLO / STATUS from a peer without a session gets ``ERROR not_hello`` (the server restarted
  and forgot it): the client answers the refused call with that error, then reconnects and re-HELLOs.
"""

from __future__ import annotations

import heapq
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .codec import decode
from .constants import WIRE_VERSION
from .errors import DecodeError, ErrorCode
from . import messages as m

#: How long a client waits for HELLO_ACK before trying again with a fresh socket (seconds).
HELLO_TIMEOUT = 5.0
#: How soon a client retries sending HELLO when the transport was not connected yet (seconds).
HELLO_RETRY = 0.02
#: First and largest pause before reconnecting after a loss (seconds, doubling).
BACKOFF_MIN, BACKOFF_MAX = 0.02, 1.0



def new_epoch() -> int:
    """This incarnation's epoch: changes on every restart (time-based, with the pid to break ties)."""
    return (time.time_ns() // 1000) << 8 | (os.getpid() & 0xFF)

@dataclass(frozen=True)
class Intervals:
    """Application heartbeat interval and the backstop silence timeout, in seconds."""

    heartbeat: float = 1.0
    timeout: float = 12.0

    @property
    def call_timeout(self) -> float:
        """Default bound on a call's answer."""
        return self.timeout


# ------------------------------------------------------------------------------------------------- events
@dataclass(slots=True)
class Send:
    """Send ``msg`` to the server (client side) or to routing id ``ident`` (server side)."""

    msg: m.Message
    ident: bytes = b""


@dataclass(slots=True)
class Deliver:
    """A message for the service (not a session message, not an answer to a pending call)."""

    msg: m.Message
    session: Session | None = None


@dataclass(slots=True)
class Answer:
    """The answer to pending call ``req`` (it may be an ERROR)."""

    req: int
    msg: m.Message
    session: Session | None = None


@dataclass(slots=True)
class CallFailed:
    """Pending call ``req`` ends without an answer: ``why`` is ``"lost"`` or ``"timeout"``."""

    req: int
    why: str
    detail: str
    session: Session | None = None


@dataclass(slots=True)
class Up:
    """Client: the session is up (HELLO_ACK received)."""

    server_id: str
    server_epoch: int
    restarted: bool
    intervals: Intervals


@dataclass(slots=True)
class Down:
    """Client: the session is gone (``reason``); pending calls have failed; a reconnect follows."""

    reason: str


@dataclass(slots=True)
class Connect:
    """Client: make a fresh socket (new routing id), connect it, then call :meth:`ClientSession.connect`."""


@dataclass(slots=True)
class Refused:
    """Client: HELLO was refused (``code``: wire_version...)."""

    code: str
    reason: str


@dataclass(slots=True)
class Opened:
    """Server: a peer said HELLO; ``replaced`` is the session it had on the same routing id, if any."""

    session: Session


@dataclass(slots=True)
class Lost:
    """Server: a session ended (``reason``); its pending calls have failed."""

    session: Session
    reason: str


@dataclass(slots=True)
class StatusWanted:
    """Server: answer STATUS ``req`` to ``ident`` (the shell knows the service's figures)."""

    ident: bytes
    req: int
    session: Session | None


@dataclass(slots=True)
class Invalid:
    """A frame failed to decode (already answered with ERROR where possible); for the shell's log."""

    error: DecodeError
    session: Session | None = None


Event = Any  # one of the dataclasses above


@dataclass(eq=False)
class Session:
    """One connected peer on a server, known by its ZeroMQ routing id, after its HELLO."""

    ident: bytes
    role: str
    id: str
    epoch: int
    last_heard: float = 0.0
    last_sent: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)  # what the service attaches (owned VMs, ...)
    alive: bool = True


def _error(code: ErrorCode, reason: str, **keys: Any) -> m.Error:
    return m.Error(code=code, reason=reason[:1024], **keys)


class _Calls:
    """Pending calls keyed by ``req`` with deadlines (a heap; answered or failed entries are skipped)."""

    def __init__(self) -> None:
        self.pending: dict[Any, float] = {}
        self._heap: list[tuple[float, Any]] = []

    def add(self, key: Any, deadline: float) -> None:
        self.pending[key] = deadline
        heapq.heappush(self._heap, (deadline, key))

    def pop(self, key: Any) -> bool:
        return self.pending.pop(key, None) is not None

    def next_deadline(self) -> float | None:
        while self._heap and self.pending.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[Any]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            deadline, key = heapq.heappop(self._heap)
            if self.pending.get(key) == deadline:
                del self.pending[key]
                out.append(key)
        return out


def _min(*ts: float | None) -> float | None:
    vals = [t for t in ts if t is not None]
    return min(vals) if vals else None


# ------------------------------------------------------------------------------------------------ client
class ClientSession:
    """The client side of one connection (a DEALER to one server)."""

    IDLE, HELLO_WAIT, UP, BACKOFF, CLOSED = "idle", "hello_wait", "up", "backoff", "closed"

    def __init__(self, role: m.Role, ident: str, epoch: int, intervals: Intervals,
                 counters: Counter[str] | None = None) -> None:
        self.role, self.ident, self.epoch = role, ident, epoch
        self.intervals = intervals  # ours until HELLO_ACK announces the server's
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.state = self.IDLE
        self.server_id: str | None = None
        self.server_epoch: int | None = None
        self.server_lineage: int | None = None  # HELLO_ACK lineage (its epoch when it says none)
        self.calls = _Calls()
        self.last_heard = self.last_sent = 0.0
        self._hello_deadline = 0.0
        self._hello_resend: float | None = None
        self._reconnect_at: float | None = 0.0  # connect at once
        self._backoff = BACKOFF_MIN

    @property
    def up(self) -> bool:
        return self.state == self.UP

    # ---------------------------------------------------------------------------------------- input
    def connect(self, now: float) -> list[Event]:
        """The shell has a fresh socket connected: send HELLO."""
        self.state = self.HELLO_WAIT
        self._reconnect_at = None
        self._hello_deadline = now + HELLO_TIMEOUT
        self._hello_resend = None
        return [Send(self.hello())]

    def hello(self) -> m.Hello:
        return m.Hello(role=self.role, id=self.ident, epoch=self.epoch, wire=WIRE_VERSION)

    def send_failed(self, msg: m.Message, now: float) -> None:
        """A send found no connected peer (IMMEDIATE): retry HELLO shortly; other messages are the caller's."""
        if isinstance(msg, m.Hello) and self.state == self.HELLO_WAIT:
            self._hello_resend = now + HELLO_RETRY

    def transport_ready(self, now: float) -> None:
        """The transport finished its handshake: a HELLO that could not be sent yet goes now."""
        if self.state == self.HELLO_WAIT and self._hello_resend is not None:
            self._hello_resend = now

    def sent(self, now: float) -> None:
        """Something went to the server."""
        self.last_sent = now

    def call(self, req: int, now: float, timeout: float | None = None) -> None:
        """Register pending call ``req`` (its request is being sent now)."""
        self.calls.add(req, now + (timeout if timeout is not None else self.intervals.call_timeout))

    def cancel(self, req: int) -> None:
        """Forget pending call ``req`` (the caller gave up)."""
        self.calls.pop(req)

    def receive(self, payload: bytes, now: float) -> list[Event]:
        """One frame from the server."""
        try:
            msg = decode(payload)
        except DecodeError as err:
            self.counters["decode_errors"] += 1
            return [Invalid(err)]
        return self.receive_msg(msg, now)

    def receive_msg(self, msg: m.Message, now: float) -> list[Event]:
        """One decoded message from the server."""
        if self.state == self.HELLO_WAIT:
            if isinstance(msg, m.HelloAck):
                return self._on_ack(msg, now)
            if isinstance(msg, m.Error) and msg.code == ErrorCode.WIRE_VERSION.value:
                self.counters["hello_refused"] += 1
                return [Refused(msg.code, msg.reason), *self._lose("hello refused", now, pause=self.intervals.timeout)]
            self.counters["stale_before_ack"] += 1  # something for an older socket's session: not ours
            return []
        if self.state != self.UP:
            self.counters["stale_messages"] += 1
            return []
        self.last_heard = now
        if isinstance(msg, m.Heartbeat):
            return []
        if isinstance(msg, m.Bye):
            return self._lose(f"server said BYE ({msg.reason})" if msg.reason else "server said BYE", now)
        req = getattr(msg, "req", None) if isinstance(msg, m.REPLY_TYPES) else None
        if isinstance(msg, m.Error) and msg.code == ErrorCode.NOT_HELLO.value:
            # the server restarted and forgot us: answer the call it refused, then re-HELLO
            out: list[Event] = []
            if req is not None:
                out.append(Answer(req, msg) if self.calls.pop(req) else Deliver(msg))
            return out + self._lose("server forgot our session", now)
        if req is not None and self.calls.pop(req):
            return [Answer(req, msg)]
        return [Deliver(msg)]

    def _on_ack(self, ack: m.HelloAck, now: float) -> list[Event]:
        lineage = ack.lineage or ack.epoch
        # a new epoch of the same lineage is the server restarted with its state (vhm, docs/STATE.md): it
        # still knows us and what we had there, so it is not a restart for the client
        restarted = (self.server_epoch is not None and ack.epoch != self.server_epoch
                     and lineage != self.server_lineage)
        self.server_id, self.server_epoch, self.server_lineage = ack.id, ack.epoch, lineage
        if ack.heartbeat_ms and ack.timeout_ms:
            self.intervals = Intervals(ack.heartbeat_ms / 1000, ack.timeout_ms / 1000)
        self.state = self.UP
        self.last_heard = self.last_sent = now
        self._backoff = BACKOFF_MIN
        self.counters["hellos"] += 1
        return [Up(ack.id, ack.epoch, restarted, self.intervals)]

    def transport_down(self, reason: str, now: float) -> list[Event]:
        """The transport reported the connection gone (socket monitor: disconnected / heartbeat timeout)."""
        if self.state in (self.UP, self.HELLO_WAIT):
            self.counters["transport_lost"] += 1
            return self._lose(reason, now)
        return []

    def close(self) -> list[Event]:
        """We are closing: BYE if up; every pending call fails."""
        out: list[Event] = [Send(m.Bye(reason="shutdown"))] if self.state == self.UP else []
        out += self._fail_calls("connection closed")
        self.state = self.CLOSED
        return out

    # ---------------------------------------------------------------------------------------- timers
    def next_deadline(self) -> float | None:
        """When :meth:`timers` must next run (None: nothing pending)."""
        if self.state == self.UP:
            return _min(self.last_sent + self.intervals.heartbeat, self.last_heard + self.intervals.timeout,
                        self.calls.next_deadline())
        if self.state == self.HELLO_WAIT:
            return _min(self._hello_deadline, self._hello_resend, self.calls.next_deadline())
        if self.state in (self.BACKOFF, self.IDLE):
            return _min(self._reconnect_at, self.calls.next_deadline())
        return None

    def timers(self, now: float) -> list[Event]:
        """Run what is due: heartbeats, the backstop, call timeouts, HELLO retries, reconnects."""
        out: list[Event] = [CallFailed(req, "timeout", "no answer in time") for req in self.calls.expired(now)]
        if self.state == self.UP:
            # compared as deadlines, exactly as next_deadline() computes them (no float drift)
            if now >= self.last_heard + self.intervals.timeout:
                self.counters["server_silent"] += 1
                return out + self._lose(f"silent for {now - self.last_heard:.2f}s", now)
            if now >= self.last_sent + self.intervals.heartbeat:
                self.counters["heartbeats_out"] += 1
                out.append(Send(m.Heartbeat(epoch=self.epoch)))
        elif self.state == self.HELLO_WAIT:
            if now >= self._hello_deadline:
                self.counters["hello_timeouts"] += 1
                return out + self._lose("no HELLO_ACK", now)
            if self._hello_resend is not None and now >= self._hello_resend:
                self._hello_resend = None
                out.append(Send(self.hello()))
        elif self.state in (self.BACKOFF, self.IDLE) and self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            out.append(Connect())
        return out

    # ------------------------------------------------------------------------------------- internals
    def _fail_calls(self, why: str) -> list[Event]:
        out: list[Event] = [CallFailed(req, "lost", why) for req in self.calls.pending]
        self.calls = _Calls()
        return out

    def _lose(self, reason: str, now: float, pause: float | None = None) -> list[Event]:
        was_up = self.state == self.UP
        self.state = self.BACKOFF
        self._reconnect_at = now + (pause if pause is not None else self._backoff)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        out = self._fail_calls(f"server lost: {reason}")
        if was_up:  # a session that never came up was never announced, so it is not reported lost
            self.counters["server_lost"] += 1
            out.insert(0, Down(reason))
        return out


# ------------------------------------------------------------------------------------------------ server
class ServerSessions:
    """The server side: every peer of one ROUTER socket, by routing id."""

    def __init__(self, role: m.Role, ident: str, epoch: int, intervals: Intervals,
                 counters: Counter[str] | None = None) -> None:
        self.role, self.ident, self.epoch = role, ident, epoch
        self.lineage = 0  # HELLO_ACK lineage: set by a server that restarted from its saved state
        self.intervals = intervals
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.sessions: dict[bytes, Session] = {}
        self.calls = _Calls()  # keys (ident, req)
        self._sweep_at: float | None = None
        #: Checked on every well-versioned HELLO before a session opens: an ERROR to send back instead (no
        #: session is opened) or None (the server's authorisation of the claimed role, CURVE key binding).
        self.gate_hello: Callable[[bytes, m.Hello], m.Error | None] | None = None

    def hello_ack(self) -> m.HelloAck:
        return m.HelloAck(role=self.role, id=self.ident, epoch=self.epoch, wire=WIRE_VERSION,
                          heartbeat_ms=round(self.intervals.heartbeat * 1000),
                          timeout_ms=round(self.intervals.timeout * 1000), lineage=self.lineage)

    def receive(self, ident: bytes, payload: bytes, now: float) -> list[Event]:
        """One frame from routing id ``ident``."""
        self.counters["msgs_in"] += 1
        session = self.sessions.get(ident)
        if session is not None:
            session.last_heard = now
        try:
            msg = decode(payload)
        except DecodeError as err:
            self.counters["decode_errors"] += 1
            return [Invalid(err, session), self._err(ident, ErrorCode.DECODE, str(err))]
        if isinstance(msg, m.Hello):
            return self._hello(ident, msg, now)
        if session is None:
            if isinstance(msg, m.StatusRequest):  # health probes may skip HELLO
                return [StatusWanted(ident, msg.req, None)]
            if isinstance(msg, (m.Heartbeat, m.Bye)):
                self.counters["stray_heartbeats"] += 1
                return [self._err(ident, ErrorCode.NOT_HELLO, "session unknown (server restarted?): send HELLO")]
            self.counters["not_hello"] += 1
            return [self._err(ident, ErrorCode.NOT_HELLO, f"{type(msg).__name__} before HELLO",
                              req=getattr(msg, "req", None))]
        if isinstance(msg, m.Heartbeat):
            self.counters["heartbeats_in"] += 1
            return []
        if isinstance(msg, m.Bye):
            return self.drop(session, f"bye: {msg.reason}")
        if isinstance(msg, m.StatusRequest):
            return [StatusWanted(ident, msg.req, session)]
        if isinstance(msg, m.REPLY_TYPES):
            req = msg.req  # type: ignore[attr-defined]
            if req is not None and self.calls.pop((ident, req)):
                return [Answer(req, msg, session)]
        return [Deliver(msg, session)]

    def _err(self, ident: bytes, code: ErrorCode, reason: str, **keys: Any) -> Send:
        self.counters[f"error_sent_{code.value}"] += 1
        return Send(_error(code, reason, **keys), ident)

    def _hello(self, ident: bytes, hello: m.Hello, now: float) -> list[Event]:
        if hello.wire != WIRE_VERSION:
            return [self._err(ident, ErrorCode.WIRE_VERSION,
                              f"wire version {hello.wire} not supported (this peer speaks {WIRE_VERSION})")]
        if self.gate_hello is not None:
            refusal = self.gate_hello(ident, hello)
            if refusal is not None:
                self.counters[f"error_sent_{refusal.code}"] += 1
                return [Send(refusal, ident)]
        out: list[Event] = []
        old = self.sessions.get(ident)
        if old is not None:
            out += self.drop(old, "re-hello")
        session = Session(ident=ident, role=hello.role, id=hello.id, epoch=hello.epoch, last_heard=now, last_sent=now)
        self.sessions[ident] = session
        self.counters["hellos"] += 1
        self._arm(now + self.intervals.heartbeat)
        return out + [Send(self.hello_ack(), ident), Opened(session)]

    def sent(self, session: Session, now: float) -> None:
        """Something went to ``session``."""
        session.last_sent = now

    def call(self, session: Session, req: int, now: float, timeout: float | None = None) -> None:
        """Register a server-initiated call ``req`` to ``session``."""
        deadline = now + (timeout if timeout is not None else self.intervals.call_timeout)
        self.calls.add((session.ident, req), deadline)
        self._arm(deadline)

    def cancel(self, session: Session, req: int) -> None:
        self.calls.pop((session.ident, req))

    def drop(self, session: Session, reason: str) -> list[Event]:
        """End a session (idempotent): its pending calls fail, then :class:`Lost`."""
        if not session.alive:
            return []
        session.alive = False
        if self.sessions.get(session.ident) is session:
            del self.sessions[session.ident]
        out: list[Event] = []
        for key in [k for k in self.calls.pending if k[0] == session.ident]:
            self.calls.pop(key)
            out.append(CallFailed(key[1], "lost", f"{session.role} {session.id} lost: {reason}", session))
        self.counters["sessions_lost"] += 1
        out.append(Lost(session, reason))
        return out

    def _arm(self, t: float) -> None:
        if self._sweep_at is None or t < self._sweep_at:
            self._sweep_at = t

    def next_deadline(self) -> float | None:
        """When :meth:`timers` must next run. Hearing or sending only moves a session's deadlines later, so
        a sweep time computed earlier is never late (at worst a sweep finds nothing to do)."""
        return self._sweep_at

    def timers(self, now: float) -> list[Event]:
        """Sweep: call timeouts, the silence backstop, heartbeats to sessions we have not sent to lately."""
        if self._sweep_at is None or now < self._sweep_at:
            return []
        out: list[Event] = []
        for ident, req in self.calls.expired(now):
            s = self.sessions.get(ident)
            out.append(CallFailed(req, "timeout", "no answer in time", s))
        ivl, timeout = self.intervals.heartbeat, self.intervals.timeout
        nxt: float | None = self.calls.next_deadline()
        for s in list(self.sessions.values()):
            if now >= s.last_heard + timeout:
                self.counters["sessions_silent"] += 1
                out += self.drop(s, f"silent for {now - s.last_heard:.2f}s")
                continue
            if now >= s.last_sent + ivl:
                self.counters["heartbeats_out"] += 1
                out.append(Send(m.Heartbeat(epoch=self.epoch), s.ident))
                s.last_sent = now
            nxt = _min(nxt, s.last_sent + ivl, s.last_heard + timeout)
        self._sweep_at = nxt
        return out
