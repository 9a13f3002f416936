"""Socket construction with the options every gvtsim socket needs, in one place."""

from __future__ import annotations

import zmq

from ...protocol.constants import MAX_MESSAGE

#: ZMTP heartbeats (libzmq >= 4.2, RFC 37/ZMTP 3.1 PING/PONG), in milliseconds. libzmq sends and answers them
#: in its own I/O thread, so a peer whose Python code is busy still answers; a peer that is gone or hung
#: (SIGSTOP, a dead host) is disconnected after HEARTBEAT_TIMEOUT and the socket monitor reports it.
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
    connected), bounded per-peer queues, and ZMTP heartbeats so a dead or hung peer is detected by libzmq."""
    sock: zmq.Socket = zmq.Socket(ctx, kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    sock.setsockopt(zmq.SNDHWM, SNDHWM_PER_PEER)
    sock.setsockopt(zmq.RCVHWM, RCVHWM_PER_PEER)
    sock.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, ZMTP_HEARTBEAT_TIMEOUT)
    sock.setsockopt(zmq.HEARTBEAT_TTL, ZMTP_HEARTBEAT_TTL)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if request_sender:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock
