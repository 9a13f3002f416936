"""``gvtsim health ENDPOINT``: ask a service for STATUS; exit 0 if it answers ready, 1 otherwise.

Used as the compose healthcheck and by the native launcher. Speaks the wire protocol like any peer:
HELLO (role ``probe``), STATUS, BYE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import zmq
import zmq.asyncio

from ..protocol import WIRE_VERSION, decode, encode
from ..protocol import messages as m
from ..services.common.sockets import make_socket
from ..services.common.helptext import UserHelpFormatter


async def probe(endpoint: str, timeout: float = 2.0) -> m.StatusReply:
    """One STATUS round trip to ``endpoint``. Raises TimeoutError or RuntimeError."""
    ctx = zmq.asyncio.Context()
    sock = make_socket(ctx, zmq.DEALER)
    try:
        sock.connect(endpoint)
        async with asyncio.timeout(timeout):
            await sock.send(encode(m.Hello(role="probe", id=f"probe-{os.getpid()}", epoch=0, wire=WIRE_VERSION)))
            await sock.send(encode(m.StatusRequest(req=1)))
            while True:
                msg = decode(await sock.recv())
                if isinstance(msg, m.StatusReply):
                    await sock.send(encode(m.Bye(reason="probe done")))
                    return msg
                if isinstance(msg, m.Error):
                    raise RuntimeError(f"{msg.code}: {msg.reason}")
    finally:
        sock.close(linger=0)
        ctx.destroy(linger=0)


def probe_sync(endpoint: str, timeout: float = 2.0, want_reply: bool = False) -> Any:
    """Blocking probe for synchronous callers: True/False for readiness, or the reply (None on failure)."""
    try:
        reply = asyncio.run(probe(endpoint, timeout))
    except Exception:
        return None if want_reply else False
    return reply if want_reply else reply.ready


def status_dict(reply: m.StatusReply) -> dict[str, Any]:
    return {"role": reply.role, "id": reply.id, "epoch": reply.epoch, "ready": reply.ready,
            "counters": reply.counters, "info": reply.info}


def explain(err: BaseException, endpoint: str, timeout: float) -> str:
    """One line a user can act on for a failed probe."""
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s; is the service up? (`gvtsim status`)"
    if isinstance(err, zmq.ZMQError) and err.errno == zmq.EINVAL:
        return f"{endpoint!r} is not a valid endpoint; use tcp://HOST:PORT or ipc://PATH"
    return str(err) or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim health``."""
    p = argparse.ArgumentParser(prog="gvtsim health", description=__doc__, formatter_class=UserHelpFormatter)
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5555 (vhm), :5556 (gvt), :5557 (pgpu)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer [2]")
    p.add_argument("--json", action="store_true", help="print the STATUS reply as JSON")
    args = p.parse_args(argv)
    try:
        reply = asyncio.run(probe(args.endpoint, args.timeout))
    except Exception as err:
        print(f"unhealthy: {args.endpoint}: {explain(err, args.endpoint, args.timeout)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status_dict(reply)))
    else:
        print(f"{reply.role} {reply.id} {'ready' if reply.ready else 'not ready'}")
    return 0 if reply.ready else 1


if __name__ == "__main__":
    sys.exit(main())
