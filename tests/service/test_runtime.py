"""The common service runtime with real processes: HELLO, heartbeats, loss detection, restart epochs,
readiness, health probe, SIGTERM, and bad input on a live socket."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import msgspec
import pytest

from gvtsim.services.common import curve
import zmq
import zmq.asyncio

from gvtsim.protocol import WIRE_VERSION, decode, encode
from gvtsim.protocol import messages as m
from support.procs import ServiceProc

pytestmark = pytest.mark.service
IVL = 0.5  # heartbeat interval for these tests


@pytest.fixture
def procs():
    started: list[ServiceProc] = []

    def make(*argv: str) -> ServiceProc:
        p = ServiceProc(list(argv), name=argv[0], module="gvtsim.services.common.echo")
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def test_hello_heartbeats_loss_detection_and_restart_epochs(procs):
    hb = ["--heartbeat-ivl", str(IVL)]
    server = procs("server", "--bind", "tcp://127.0.0.1:*", *hb)
    server.start()
    endpoint = server.endpoint
    client = procs("client", "--connect", endpoint, *hb)
    client.start()
    up = client.wait_event("server_up")
    hello = server.wait_event("peer_hello")
    assert up["server_epoch"] == server.ready["epoch"] and not up["restarted"]
    assert hello["peer_epoch"] == client.ready["epoch"]

    # the server dies: the client learns it from the transport (socket monitor), not from a timeout; the
    # timing rules (heartbeats while idle, the backstop) are fake-clock tests in tests/unit/test_liveness.py
    server.kill(signal.SIGKILL)
    lost = client.wait_event("server_lost", timeout=10)
    assert lost["reason"] == "disconnected"

    # the server restarts on the same endpoint with a new epoch: the client re-HELLOs and sees the change
    server2 = procs("server", "--bind", endpoint, *hb)
    server2.start()
    up2 = client.wait_event("server_up", timeout=10)
    assert up2["restarted"] and up2["server_epoch"] == server2.ready["epoch"] != server.ready["epoch"]
    server2.wait_event("peer_hello")

    # the client dies: the server notices through the transport as well
    client.kill(signal.SIGKILL)
    gone = server2.wait_event("peer_lost", timeout=10)
    assert gone["reason"] == "disconnected"

    # ...and the restarted client HELLOs with a new epoch of its own
    client2 = procs("client", "--connect", endpoint, *hb)
    client2.start()
    rehello = server2.wait_event("peer_hello", timeout=10)
    assert rehello["peer_epoch"] == client2.ready["epoch"] != client.ready["epoch"]


def test_sigterm_exits_cleanly_within_two_seconds(procs):
    server = procs("server", "--bind", "tcp://127.0.0.1:*")
    server.start()
    client = procs("client", "--connect", server.endpoint)
    client.start()
    client.wait_event("server_up")
    for p in (client, server):
        t0 = time.monotonic()
        code = p.terminate(timeout=2.0)
        assert code == 0 and time.monotonic() - t0 < 2.0


def test_health_probe(procs):
    server = procs("server", "--bind", "tcp://127.0.0.1:*")
    server.start()
    gvtsim = [sys.executable, "-m", "gvtsim.orchestration", "health"]
    ok = subprocess.run([*gvtsim, server.endpoint, "--json"], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    assert msgspec.json.decode(ok.stdout)["ready"] is True
    server.kill()
    server.proc.wait(5)
    bad = subprocess.run([*gvtsim, server.endpoint, "--timeout", "0.5"], capture_output=True, text=True, timeout=20)
    assert bad.returncode == 1 and "unhealthy" in bad.stderr


async def test_bad_input_gets_error_replies_and_counters(procs):
    server = procs("server", "--bind", "tcp://127.0.0.1:*")
    server.start()
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    curve.secure_client(sock, "guest", "probe")
    sock.connect(server.endpoint)
    try:
        async with asyncio.timeout(10):
            async def ask(frame: bytes) -> m.Message:
                await sock.send(frame)
                return decode(await sock.recv())

            before_hello = await ask(encode(m.Ok(req=1)))
            assert isinstance(before_hello, m.Error) and before_hello.code == "not_hello"
            garbage = await ask(b"\xc1\xff\x00garbage")
            assert isinstance(garbage, m.Error) and garbage.code == "decode"
            wrong = await ask(msgspec.msgpack.encode({"type": "HELLO", "role": "guest", "id": "x", "epoch": -5,
                                                      "wire": WIRE_VERSION}))
            assert isinstance(wrong, m.Error) and wrong.code == "decode" and "epoch" in wrong.reason
            old = await ask(encode(m.Hello(role="guest", id="x", epoch=1, wire=WIRE_VERSION + 1)))
            assert isinstance(old, m.Error) and old.code == "wire_version"
            ack = await ask(encode(m.Hello(role="guest", id="x", epoch=1, wire=WIRE_VERSION)))
            assert isinstance(ack, m.HelloAck)
            status = await ask(encode(m.StatusRequest(req=9)))
            while not isinstance(status, m.StatusReply):
                status = decode(await sock.recv())
            assert status.counters["decode_errors"] == 2 and status.counters["not_hello"] == 1
        # the oversized frame is dropped by libzmq (MAXMSGSIZE) and the server stays up
        sock.send(b"\x00" * (2 << 20))
        from gvtsim.orchestration.health import probe
        reply = await probe(server.endpoint, timeout=5)
        assert reply.ready
    finally:
        sock.close(0)
        ctx.destroy(0)


@pytest.mark.parametrize("level", ["info", "debug"])
def test_a_health_probe_is_logged_only_at_debug_level(level: str) -> None:
    """Every `gvtsim health` opens and closes a session: at info level that must not log a peer_hello /
    peer_lost pair per probe (a healthcheck every second would flood the log); at debug level it does."""
    import json
    import os
    import uuid

    path = f"/dev/shm/gvtsim-test-probelog-{uuid.uuid4().hex[:12]}.mem"
    proc = ServiceProc(["pgpu", "--bind", "tcp://127.0.0.1:*", "--mem-path", path, "--create-mem",
                        "--mem-size-mb", "64", "--gm-mb", "256", "--aperture-mb", "64", "--log-level", level])
    try:
        proc.start()
        for _ in range(2):
            r = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "health", proc.endpoint],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
        assert proc.terminate() == 0  # its log is complete once it has exited
        with open(proc.stderr_path) as f:
            events = [json.loads(line) for line in f if line.startswith("{")]
        probes = [e for e in events if e.get("event") in ("peer_hello", "peer_lost") and e.get("peer_role") == "probe"]
        if level == "info":
            assert probes == [], probes
            assert any(e.get("event") == "ready" for e in events)  # the log itself is there
        else:
            assert [e["event"] for e in probes].count("peer_hello") == 2, probes
    finally:
        proc.stop()
        if os.path.exists(path):
            os.unlink(path)
