"""A peer that fills its pipe and hangs up must not abort the process at the other end.

libzmq 4.3.5 stops reading a connection whose pipe reached its RCVHWM; if the peer then closes it, the
engine is marked ``_io_error`` without being torn down, and the next ZMTP heartbeat timer on it calls
out_event(), which asserts: ``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)`` and abort().
A flooder that disconnects took gvt down that way during the flood test. services/common/sockets.py sets the
two ends so that neither condition meets the other (servers send no PINGs, clients never stop their input).

Each case runs the socket under test in its own process (an abort would take pytest with it) with the real
``make_socket`` options, floods it from here until libzmq pushes back, closes the flooding end, and checks
the process is still alive well after a heartbeat interval, and still serves.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import zmq

from gvtsim.services.common.sockets import ZMTP_HEARTBEAT_IVL

pytestmark = pytest.mark.service

# the process under test: make_socket(KIND), bound or connected to ENDPOINT, never reading until told to
# on stdin; then it waits 2.5 heartbeat intervals (the timer that aborted fires once per interval) and
# proves it still works by draining what it was sent
CHILD = textwrap.dedent("""
    import sys, time, zmq
    from gvtsim.services.common.sockets import make_socket, ZMTP_HEARTBEAT_IVL
    kind, where = sys.argv[1], sys.argv[2]
    ctx = zmq.Context()
    s = make_socket(ctx, zmq.ROUTER if kind == "router" else zmq.DEALER)
    if kind == "router":
        port = s.bind_to_random_port("tcp://127.0.0.1")
        print(port, flush=True)
    else:
        s.connect(where)
        s.send(b"hello")
        print("connected", flush=True)
    sys.stdin.readline()  # the flooder filled this socket's pipe and hung up
    time.sleep(2.5 * ZMTP_HEARTBEAT_IVL / 1000)
    n = 0
    try:
        while True:
            s.recv_multipart(zmq.NOBLOCK)
            n += 1
    except zmq.Again:
        pass
    print("alive", n, flush=True)
    s.close(0)
    ctx.term()
""")


def _child(kind: str, where: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, kind, where], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _flood_until_pushed_back(sock: zmq.Socket, frames: list[bytes]) -> int:
    """Send until libzmq refuses (this socket's queue and the peer's pipe are full): returns how many."""
    sent = 0
    while True:
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            if sock.poll(200, zmq.POLLOUT):  # the I/O thread moved some on: the peer's pipe is not full yet
                continue
            return sent
        sent += 1


def _finish(proc: subprocess.Popen[str]) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "alive" in out, (proc.returncode, err[-500:])
    assert "Assertion failed" not in err, err[-500:]
    return out


def test_a_server_survives_a_client_that_fills_its_pipe_and_hangs_up() -> None:
    proc = _child("router")
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    ctx = zmq.Context()
    try:
        for _ in range(3):  # several connections each fill and hang up
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.HEARTBEAT_IVL, ZMTP_HEARTBEAT_IVL)  # a client as ours: it PINGs
            d.connect(f"tcp://127.0.0.1:{port}")
            sent = _flood_until_pushed_back(d, [b"x" * 100])
            assert sent > 10_000  # the server's bounded pipe (and the TCP buffers) pushed back
            d.close(0)
        out = _finish(proc)
        assert int(out.split()[-1]) > 0  # and it still reads what came before the hang-ups
    finally:
        proc.kill()
        ctx.destroy(0)


def test_a_client_survives_a_server_that_fills_its_pipe_and_hangs_up() -> None:
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.SNDHWM, 20_000)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    proc = _child("dealer", f"tcp://127.0.0.1:{port}")
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        ident, _ = r.recv_multipart()
        for _ in range(20_000):  # far past the client's old RCVHWM of 10,000 messages
            r.send_multipart([ident, b"y" * 100])
        r.close(0)  # the server hangs up with the client's input full of its messages
        out = _finish(proc)
        assert int(out.split()[-1]) > 0  # and it still reads
    finally:
        proc.kill()
        ctx.destroy(0)
