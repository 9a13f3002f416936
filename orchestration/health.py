"""``gvtsim health ENDPOINT``: ask a service for STATUS; exit 0 if it answers ready, 1 otherwise.

Used as the compose healthcheck and by the native launcher. Speaks the wire protocol like any peer, through
the same session layer (protocol/session.py): HELLO (role ``probe``), STATUS, BYE.
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

from ..protocol import messages as m
from ..services.common import curve
from ..services.common.client import Connection
from ..services.common.helptext import UserHelpFormatter
from ..services.common.liveness import HeartbeatConfig
from ..protocol.session import new_epoch


async def probe(endpoint: str, timeout: float = 2.0, server: str | None = None,
                checked: bool = False) -> m.StatusReply:
    """One STATUS round trip to ``endpoint`` over a session (HELLO as role ``probe``, STATUS, BYE).
    Raises TimeoutError or RuntimeError.

    With CURVE on, the probe must know the server's key: ``server`` names it (vhm, gvt, pgpu), else every
    server key is tried at once and the first answer wins (a session with the wrong server key never opens)."""
    reply = await one_call(endpoint, "probe", m.StatusRequest, timeout=timeout, server=server, checked=checked)
    assert isinstance(reply, m.StatusReply)
    return reply


#: The server keys a call to an unnamed server tries (CURVE on): the one whose key the server has answers.
SERVER_KEYS = ("vhm", "gvt", "pgpu", "probe")


async def probe_service(endpoint: str, service: str, timeout: float = 2.0) -> m.StatusReply:
    """:func:`probe` of a service a run started (``service``: its name, vhm, gvt or pgpu): with its own key
    (an unnamed probe would try every server key, each wrong one a failed handshake and a warning at the
    service) and without the malformed-endpoint check (``checked``)."""
    return await probe(endpoint, timeout, server=service if service in SERVER_KEYS else None, checked=True)


async def one_call(endpoint: str, role: m.Role, cls: type[m.Message], /, timeout: float = 2.0,
                   server: str | None = None, checked: bool = False, **fields: Any) -> m.Message:
    """Open a session to ``endpoint`` (the same session layer every service uses), make one call, close.

    With CURVE on, ``server`` names the server's key; None tries every server key at once (SERVER_KEYS),
    the first session that opens makes the call. ``checked``: the endpoint is known to be well formed (a
    run's state): the check that makes a malformed one fail at once is skipped, since the connection it
    opens and drops costs the service a failed handshake and a warning.

    Raises:
        TimeoutError: no session or no answer within ``timeout`` seconds (in all).
        zmq.ZMQError: a malformed endpoint (EINVAL).
        RemoteError: the answer was ERROR.
    """
    if server is None and curve.enabled():
        return await _any_server(endpoint, role, cls, timeout, fields)
    ctx = zmq.asyncio.Context()
    if not checked:
        check = ctx.socket(zmq.DEALER)  # a malformed endpoint fails here (zmq.ZMQError EINVAL), not as a timeout
        try:
            # a connection this socket opens and drops costs the service a failed handshake (and a warning)
            check.connect(endpoint)
        except zmq.ZMQError:
            ctx.destroy(linger=0)
            raise
        finally:
            check.close(linger=0)
    conn = Connection(ctx, endpoint, role=role, ident=f"{role}-{os.getpid()}", epoch=new_epoch(),
                      hb=HeartbeatConfig(), log=_quiet, server_role=server or "probe")
    conn.start()
    try:
        async with asyncio.timeout(timeout):
            await conn.up.wait()
            return await conn.request(cls, **fields)
    finally:
        await conn.close()
        ctx.destroy(linger=0)


async def _any_server(endpoint: str, role: m.Role, cls: type[m.Message], timeout: float,
                      fields: dict[str, Any]) -> m.Message:
    """Open one session per server key at once; the first that is up makes the call, the others close."""
    ctx = zmq.asyncio.Context()
    conns = [Connection(ctx, endpoint, role=role, ident=f"{role}-{os.getpid()}-{s}", epoch=new_epoch(),
                        hb=HeartbeatConfig(), log=_quiet, server_role=s) for s in SERVER_KEYS]
    for c in conns:
        c.start()
    waits = [asyncio.ensure_future(c.up.wait()) for c in conns]
    try:
        async with asyncio.timeout(timeout):
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            conn = conns[waits.index(next(iter(done)))]
            return await conn.request(cls, **fields)
    finally:
        for w in waits:
            w.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        ctx.destroy(linger=0)


class _Quiet:
    """A logger that says nothing (a CLI reports its own errors, in one line)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: None


_quiet = _Quiet()


def probe_sync(endpoint: str, timeout: float = 2.0, want_reply: bool = False, server: str | None = None) -> Any:
    """Blocking probe for synchronous callers: True/False for readiness, or the reply (None on failure).
    ``server`` names the server's key (see :func:`probe`)."""
    try:
        reply = asyncio.run(probe(endpoint, timeout, server=server))
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
    p.add_argument("--server", choices=list(SERVER_KEYS), default=None,
                   help="which service it is (its CURVE key); without it every server key is tried at once and "
                        "the service counts the wrong ones as failed handshakes (curve_handshake_failed)")
    p.add_argument("--json", action="store_true", help="print the STATUS reply as JSON")
    args = p.parse_args(argv)
    try:
        reply = asyncio.run(probe(args.endpoint, args.timeout, server=args.server))
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
