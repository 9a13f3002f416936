"""A minimal pair of services on the common runtime, used to test it with real processes.

``server`` binds a ROUTER and answers STATUS; ``client`` connects, HELLOs, heartbeats and reconnects.
Both print JSON events on stdout (``ready``, ``peer_hello``, ``peer_lost``, ``server_up``,
``server_lost``) so a test can watch the session layer from outside.

    python -m gvtsim.services.common.echo server --bind tcp://127.0.0.1:*
    python -m gvtsim.services.common.echo client --connect tcp://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


from ...protocol import messages as m
from .client import Connection
from .server import RouterServer, Session
from .service import BaseService, common_args, run_service


def emit(**event: Any) -> None:
    event.setdefault("t", time.monotonic())
    print(json.dumps(event), flush=True)


class EchoServer(BaseService):
    role = "probe"

    async def start(self) -> dict[str, Any]:
        self.server = RouterServer(self.ctx, self.args.bind, role=self.role, ident=self.ident, epoch=self.epoch,
                                   hb=self.hb, handler=self, log=self.log, counters=self.counters)
        return {"endpoint": await self.server.start()}

    async def stop(self) -> None:
        await self.server.stop()

    async def on_hello(self, session: Session) -> None:
        emit(event="peer_hello", peer_id=session.id, peer_epoch=session.epoch)

    async def on_message(self, session: Session, msg: m.Message) -> None:
        if hasattr(msg, "req"):
            await self.server.send(session, m.Ok(req=msg.req))  # type: ignore[attr-defined]

    async def on_lost(self, session: Session, reason: str) -> None:
        emit(event="peer_lost", peer_id=session.id, peer_epoch=session.epoch, reason=reason)


class EchoClient(BaseService):
    role = "probe"

    async def start(self) -> dict[str, Any]:
        self.conn = Connection(self.ctx, self.args.connect, role=self.role, ident=self.ident, epoch=self.epoch,
                               hb=self.hb, log=self.log, counters=self.counters,
                               on_up=self._up, on_down=self._down)
        self.conn.start()
        return {"connect": self.args.connect}

    async def stop(self) -> None:
        await self.conn.close()

    async def _up(self, server_epoch: int, restarted: bool) -> None:
        emit(event="server_up", server_epoch=server_epoch, restarted=restarted)

    async def _down(self, reason: str) -> None:
        emit(event="server_lost", reason=reason)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="echo")
    sub = p.add_subparsers(dest="mode", required=True)
    s = common_args(sub.add_parser("server"), "echo-server")
    s.add_argument("--bind", default="tcp://127.0.0.1:*")
    c = common_args(sub.add_parser("client"), "echo-client")
    c.add_argument("--connect", required=True)
    args = p.parse_args(argv)
    factory = EchoServer if args.mode == "server" else EchoClient
    return run_service(factory, args)


if __name__ == "__main__":
    sys.exit(main())
