"""Socket construction with the options every gvtsim socket needs, in one place."""

from __future__ import annotations

from typing import Any, cast

import zmq
import zmq.backend

from ...protocol.constants import MAX_MESSAGE

#: ZMTP heartbeats (libzmq >= 4.2, RFC 37/ZMTP 3.1 PING/PONG), in milliseconds, sent by clients (see
#: make_socket). libzmq sends and answers them in its own I/O thread, so a peer whose Python code is busy
#: still answers; a server that is gone or hung (SIGSTOP, a dead host) is disconnected by its client after
#: HEARTBEAT_TIMEOUT, a client silent past the TTL its PINGs carry by the server, and the socket monitor
#: reports it.
ZMTP_HEARTBEAT_IVL = 1000
ZMTP_HEARTBEAT_TIMEOUT = 3000
ZMTP_HEARTBEAT_TTL = 3000
#: Bounded queue per peer: libzmq keeps one pipe per connected peer, each with its own high-water mark, and a
#: ROUTER takes input round-robin across pipes (fair-queueing), so a flooding peer fills its own pipe and
#: is pushed back while others keep their share.
RCVHWM_PER_PEER = 10_000
SNDHWM_PER_PEER = 100_000


def make_socket(ctx: zmq.Context, kind: int, *, request_sender: bool = False) -> zmq.Socket:
    """A plain (non-asyncio) socket for a :class:`~.reactor.Reactor`, with LINGER 0 (never hang on close),
    MAXMSGSIZE (libzmq drops oversized frames), ROUTER_MANDATORY on ROUTERs (never drop silently:
    EHOSTUNREACH instead), IMMEDIATE on request senders (never queue requests for a peer that is not
    connected), bounded per-peer queues on servers, and ZMTP heartbeats from clients so a dead or hung peer
    is detected by libzmq."""
    sock: zmq.Socket = zmq.Socket(ctx, kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    sock.setsockopt(zmq.SNDHWM, SNDHWM_PER_PEER)
    # libzmq 4.3.5 aborts the whole process (``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)``)
    # when a connection whose input it had stopped (the peer's pipe at its RCVHWM) is closed by the peer and
    # the engine's ZMTP heartbeat timer fires afterwards: in_event() on the hang-up marks the engine
    # ``_io_error`` without tearing it down, and timer_event() calls out_event(), which asserts. Any client
    # could trigger it by filling its pipe and disconnecting. So the two ends avoid one condition each:
    if kind == zmq.ROUTER:
        # a server's pipes stay bounded (push-back on a flooder) but it sends no PINGs of its own, so no
        # heartbeat timer runs on its connections; a client's PINGs carry a TTL (below), and libzmq drops a
        # connection that stays silent past it; the sessions' application heartbeats are the backstop
        sock.setsockopt(zmq.RCVHWM, RCVHWM_PER_PEER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    else:
        # a client's one pipe is from the server it chose (CURVE pins the server's key), whose traffic the
        # protocol bounds (one ioreq per vCPU): its input is never stopped, so its heartbeats are safe
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT)
        sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_HEARTBEAT_TTL)
    if request_sender:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock


# ------------------------------------------------------------------------------------------- hot path
# The trap path's sends and receives call pyzmq's backend methods directly with int flags. The
# ``zmq.Socket`` sugar wraps each call in Python (flag enums combined and re-created per call,
# ``send_multipart``'s per-frame loop, ``recv_multipart``'s ``getsockopt(RCVMORE)`` through the enum
# layer): measured on this machine, ``send_multipart`` of a 2-frame message took 6-7 us against 0.6-2 us
# for the two backend sends, out of a budget of a few tens of microseconds per message.
_backend_send = zmq.backend.Socket.send
_backend_recv = zmq.backend.Socket.recv
_backend_get = zmq.backend.Socket.get
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_SNDMORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def send_routed(sock: zmq.Socket, ident: bytes, payload: bytes) -> None:
    """``send_multipart((ident, payload), NOBLOCK)`` on a ROUTER. libzmq checks the high-water mark and the
    routing id on the first frame, so Again or EHOSTUNREACH leave nothing half-sent."""
    _backend_send(sock, ident, _NOBLOCK_SNDMORE)
    _backend_send(sock, payload, _NOBLOCK)


def send_one(sock: zmq.Socket, payload: bytes) -> None:
    """``send(payload, NOBLOCK)``: one frame."""
    _backend_send(sock, payload, _NOBLOCK)


def recv_frames(sock: zmq.Socket, copy: bool = True) -> list[Any]:
    """``recv_multipart(NOBLOCK, copy=copy)``: bytes (or zmq.Frame with ``copy=False``, whose ``more``
    says whether a frame follows without a ``getsockopt(RCVMORE)``); raises zmq.Again."""
    part = _backend_recv(sock, _NOBLOCK, copy)
    parts = [part]
    if copy:
        while _backend_get(sock, _RCVMORE):
            parts.append(_backend_recv(sock, _NOBLOCK, copy))
    else:
        while cast(zmq.Frame, part).more:
            part = _backend_recv(sock, _NOBLOCK, copy)
            parts.append(part)
    return parts


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting (``ZMQ_EVENTS & POLLIN``; this also runs libzmq's pending commands, which is what
    re-arms the edge-triggered ZMQ_FD)."""
    return bool(cast(int, _backend_get(sock, _EVENTS)) & _POLLIN)
