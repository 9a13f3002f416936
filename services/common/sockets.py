"""Socket construction with the options DESIGN section 4 requires, in one place."""

from __future__ import annotations

import zmq
import zmq.asyncio

from ...protocol.constants import MAX_MESSAGE


def make_socket(ctx: zmq.asyncio.Context, kind: int, *, request_sender: bool = False) -> zmq.asyncio.Socket:
    """A socket with LINGER 0 (never hang on close), MAXMSGSIZE (drop oversized frames in libzmq),
    ROUTER_MANDATORY on ROUTERs (never drop silently: EHOSTUNREACH instead), IMMEDIATE on request
    senders (never queue requests for a peer that is not connected), and ZMTP heartbeats so a vanished
    TCP peer is noticed by libzmq too (application heartbeats remain the authority)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
    if kind == zmq.ROUTER:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if request_sender:
        sock.setsockopt(zmq.IMMEDIATE, 1)
    return sock
