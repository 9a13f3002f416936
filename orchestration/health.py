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
from ..services.common import curve
from ..services.common.sockets import make_socket


async def probe(endpoint: str, timeout: float = 2.0, server: str | None = None) -> m.StatusReply:
    """One STATUS round trip to ``endpoint``. Raises TimeoutError or RuntimeError.

    With CURVE on, the probe must know the server's key: ``server`` names it (vhm, gvt, pgpu), else one probe
    per server key runs at once and the first answer wins (a probe with the wrong server key gets none)."""
    if server is None and curve.enabled():
        servers = ("vhm", "gvt", "pgpu", "probe")
        tasks = [asyncio.ensure_future(probe(endpoint, timeout, s)) for s in servers]
        try:
            for fut in asyncio.as_completed(tasks):
                try:
                    return await fut
                except (TimeoutError, RuntimeError, curve.CurveError) as err:
                    last = err
            raise last
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    ctx = zmq.asyncio.Context()
    sock = make_socket(ctx, zmq.DEALER)
    try:
        curve.secure_client(sock, "probe", server or "probe")
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim health", description=__doc__)
    p.add_argument("endpoint", help="e.g. tcp://127.0.0.1:5555")
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--json", action="store_true", help="print the STATUS reply as JSON")
    args = p.parse_args(argv)
    try:
        reply = asyncio.run(probe(args.endpoint, args.timeout))
    except Exception as err:
        print(f"unhealthy: {args.endpoint}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status_dict(reply)))
    else:
        print(f"{reply.role} {reply.id} {'ready' if reply.ready else 'not ready'}")
    return 0 if reply.ready else 1


if __name__ == "__main__":
    sys.exit(main())
