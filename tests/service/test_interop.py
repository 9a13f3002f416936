"""A client written from docs/PROTOCOL.md alone (plain msgpack + pyzmq, no gvtsim imports) interoperates."""

from __future__ import annotations

import os

import msgpack
import pytest
import zmq

from support.procs import ServiceProc

pytestmark = pytest.mark.service


def _key(path: str, which: str) -> bytes:
    for line in open(path):
        k, _, v = line.strip().partition("=")
        if k.strip() == which:
            return v.strip().strip('"').encode()
    raise KeyError(which)


def test_plain_msgpack_client_follows_the_document():
    server = ServiceProc(["server", "--bind", "tcp://127.0.0.1:*"], module="gvtsim.services.common.echo")
    server.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    # CURVE as docs/PROTOCOL.md says: the topology's key files are zmq.auth certificates (z85 text)
    keys = os.environ["GVTSIM_KEYS"]
    sock.curve_serverkey = _key(f"{keys}/public/probe.key", "public-key")
    sock.curve_publickey = _key(f"{keys}/private/probe.key_secret", "public-key")
    sock.curve_secretkey = _key(f"{keys}/private/probe.key_secret", "secret-key")
    try:
        sock.connect(server.endpoint)
        sock.send(msgpack.packb({"type": "HELLO", "role": "probe", "id": "doc-client", "epoch": 42, "wire": 1}))
        ack = msgpack.unpackb(sock.recv())
        assert ack["type"] == "HELLO_ACK" and ack["epoch"] == server.ready["epoch"]
        sock.send(msgpack.packb({"type": "STATUS", "req": 77}))
        reply = msgpack.unpackb(sock.recv())
        while reply["type"] == "HEARTBEAT":
            reply = msgpack.unpackb(sock.recv())
        assert reply["type"] == "STATUS_REPLY" and reply["req"] == 77 and reply["ready"] is True
        sock.send(msgpack.packb({"type": "STATUS", "req": 78, "bogus": True}))
        err = msgpack.unpackb(sock.recv())
        while err["type"] == "HEARTBEAT":
            err = msgpack.unpackb(sock.recv())
        assert err["type"] == "ERROR" and err["code"] == "decode" and "bogus" in err["reason"]
        sock.send(msgpack.packb({"type": "BYE", "reason": "done"}))
    finally:
        sock.close(0)
        ctx.term()
        server.stop()
