"""A RouterServer with no socket, for unit tests of its batch handling and STATUS wiring: a handler that
records what reaches it, received frames as the server sees them under CURVE, and the server itself."""

from __future__ import annotations

from collections import Counter
from typing import Any

import structlog
import zmq

from gvtsim.protocol import WIRE_VERSION, encode
from gvtsim.protocol import messages as m
from gvtsim.services.common.liveness import HeartbeatConfig
from gvtsim.services.common.server import RouterServer


class Recorder:
    """A server handler that records (peer id, req) of every message delivered and counts batches."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.batches = 0

    async def on_hello(self, session: Any) -> None: ...

    async def on_lost(self, session: Any, reason: str) -> None: ...

    async def on_message(self, session: Any, msg: m.Message) -> None:
        self.seen.append((session.id, msg.req))  # type: ignore[attr-defined]

    async def after_batch(self) -> None:
        self.batches += 1

    def status(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


def server(handler: Recorder) -> RouterServer:
    """A vhm-role server around ``handler``, never bound (its batch and timer methods are called directly)."""
    srv = RouterServer(zmq.Context.instance(), "inproc://unused", role="vhm", ident="v", epoch=1,
                       hb=HeartbeatConfig(), handler=handler, log=structlog.get_logger(), counters=Counter())
    srv.admit = None  # ordering only: the authorisation table (the default hook) is tested on its own
    return srv


class Frame:
    """A received zmq.Frame as the server sees it under CURVE: its bytes and the ZAP User-Id (the gvt key)."""

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    def get(self, prop: str) -> str:
        assert prop == "User-Id"
        return "gvt"


def hello(name: str) -> list[Frame]:
    """A gvt's HELLO from routing id ``name``."""
    return [Frame(name.encode()), Frame(encode(m.Hello(role="gvt", id=name, epoch=1, wire=WIRE_VERSION)))]
