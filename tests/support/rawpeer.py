"""A raw, synchronous wire peer for tests: one DEALER, any role, any key (or none), frames in and out."""

from __future__ import annotations

import os
import time

import zmq

from gvtsim.protocol import WIRE_VERSION, decode, encode
from gvtsim.protocol import messages as m
from gvtsim.services.common import curve


class RawPeer:
    """A DEALER to ``endpoint``. ``key``: the topology key to use (default: the role's own); ``key=False``:
    CURVE with a fresh key that is not the topology's; ``key=None`` with ``plain=True``: no CURVE at all."""

    def __init__(self, endpoint: str, server: str, key: str | bool | None = None, plain: bool = False,
                 ctx: zmq.Context | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if not plain and curve.enabled():
            if key is False:
                public, secret = zmq.curve_keypair()
                self.sock.curve_serverkey = curve.keys().server_public(server)
                self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
            else:
                curve.secure_client(self.sock, "probe", server, key=str(key) if key else None)
        self.sock.connect(endpoint)
        self.req = 1000

    def send(self, msg: m.Message | bytes, timeout: float = 2.0) -> bool:
        """Send one frame; False if no connection took it within ``timeout`` (a refused handshake leaves the
        DEALER with no pipe to queue on)."""
        self.sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        try:
            self.sock.send(msg if isinstance(msg, bytes) else encode(msg))
            return True
        except zmq.Again:
            return False

    def recv(self, timeout: float = 5.0, skip_heartbeats: bool = True) -> m.Message | None:
        """The next message (None on timeout); heartbeats are skipped."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                return None
            msg = decode(self.sock.recv())
            if skip_heartbeats and isinstance(msg, m.Heartbeat):
                continue
            return msg

    def hello(self, role: str, timeout: float = 5.0) -> m.Message | None:
        self.send(m.Hello(role=role, id=f"raw-{role}-{os.getpid()}", epoch=1, wire=WIRE_VERSION))
        return self.recv(timeout)

    def ask(self, msg: m.Message, timeout: float = 5.0) -> m.Message | None:
        """Send and return the first answer that is not a heartbeat or an unsolicited event."""
        self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self.recv(max(0.0, deadline - time.monotonic()))
            if reply is None or isinstance(reply, m.REPLY_TYPES):
                return reply

    def status(self, timeout: float = 5.0) -> m.StatusReply:
        self.req += 1
        reply = self.ask(m.StatusRequest(req=self.req), timeout)
        assert isinstance(reply, m.StatusReply), reply
        return reply

    def close(self) -> None:
        self.sock.close(0)
