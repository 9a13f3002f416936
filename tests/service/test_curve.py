"""CURVE on every socket, with real vhm, gvt and pgpu processes (keys from tests/conftest.py).

A peer without the topology's keys gets nothing back (no HELLO_ACK, no ERROR, not even STATUS), whether it
speaks plain ZMTP or CURVE with a key of its own; the ZAP handler counts the refused key. A peer with the
guest key cannot say HELLO as ctl or gvt. ``--insecure`` turns CURVE off and says so in the log.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest

from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import messages as m
from gvtsim.services.common import curve
from support.procs import ServiceProc
from support.rawpeer import RawPeer

pytestmark = pytest.mark.service
SERVICES = ("vhm", "gvt", "pgpu")


@pytest.fixture(scope="module")
def stack() -> Iterator[HostStack]:
    with HostStack() as hs:
        yield hs


def _eps(hs: HostStack) -> dict[str, str]:
    return {"vhm": hs.vhm.endpoint, "gvt": hs.gvt.endpoint, "pgpu": hs.pgpu.endpoint}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("how", ["plain", "foreign_key"])
def test_a_peer_without_the_topology_keys_gets_no_reply(stack, service: str, how: str) -> None:
    ep = _eps(stack)[service]
    admin = RawPeer(ep, service, key="ctl")
    assert isinstance(admin.hello("ctl" if service != "vhm" else "probe"), m.HelloAck)
    before = admin.status().counters
    intruder = RawPeer(ep, service, plain=True) if how == "plain" else RawPeer(ep, service, key=False)
    try:
        intruder.send(m.Hello(role="ctl", id="intruder", epoch=1, wire=1))
        intruder.send(m.StatusRequest(req=1))
        intruder.send(m.VgpuReset(req=2, vm=1))
        assert intruder.recv(timeout=2.0, skip_heartbeats=False) is None
    finally:
        intruder.close()
    after = admin.status().counters
    assert after.get("hellos", 0) == before.get("hellos", 0)  # the intruder never reached the session layer
    for c in ("not_hello", "decode_errors", "authz_refused", "error_sent_not_hello"):
        assert after.get(c, 0) == before.get(c, 0), c
    if how == "foreign_key":  # refused by the ZAP handler, counted
        assert after.get("curve_denied", 0) > before.get("curve_denied", 0)
    admin.close()


@pytest.mark.parametrize("service,role", [("gvt", "ctl"), ("vhm", "gvt"), ("pgpu", "gvt"), ("vhm", "ctl")])
def test_a_guest_key_cannot_claim_another_role(stack, service: str, role: str) -> None:
    p = RawPeer(_eps(stack)[service], service, key="guest")
    try:
        reply = p.hello(role)
        assert isinstance(reply, m.Error) and reply.code == "unexpected", reply
        assert "guest key" in reply.reason and role in reply.reason
        assert isinstance(p.ask(m.MgmtList(req=3)), m.Error)  # no session: not_hello
    finally:
        p.close()
    owner = RawPeer(_eps(stack)[service], service, key="ctl")
    try:
        assert isinstance(owner.hello("ctl"), (m.HelloAck, m.Error))
        assert owner.status().counters["curve_role_refused"] >= 1
    finally:
        owner.close()


def test_the_right_key_for_the_role_is_admitted(stack) -> None:
    for service, role in (("vhm", "guest"), ("gvt", "ctl"), ("pgpu", "gvt"), ("vhm", "probe")):
        p = RawPeer(_eps(stack)[service], service, key=role)
        try:
            assert isinstance(p.hello(role), m.HelloAck), (service, role)
        finally:
            p.close()


def test_missing_keys_stop_a_service_with_one_clear_line(tmp_path) -> None:
    proc = ServiceProc(["pgpu", "--bind", "tcp://127.0.0.1:*", "--create-mem", "--mem-path",
                        f"/dev/shm/gvtsim-test-{uuid.uuid4().hex[:8]}.mem", "--mem-size-mb", "64"],
                       env={curve.ENV_KEYS: str(tmp_path / "none")}, name="pgpu-nokeys")
    with pytest.raises(RuntimeError):
        proc.start(timeout=10)
    log = open(proc.stderr_path).read()
    assert "no CURVE keys in" in log and "gvtsim keys" in log and "--insecure" in log
    proc.stop()


def test_insecure_runs_without_keys_and_says_so_loudly(tmp_path) -> None:
    mem = f"/dev/shm/gvtsim-test-{uuid.uuid4().hex[:8]}.mem"
    proc = ServiceProc(["pgpu", "--bind", "tcp://127.0.0.1:*", "--create-mem", "--mem-path", mem, "--mem-size-mb",
                        "64", "--insecure"], env={curve.ENV_KEYS: str(tmp_path / "none")}, name="pgpu-insecure")
    try:
        proc.start(timeout=15)
        p = RawPeer(proc.endpoint, "pgpu", plain=True)
        assert isinstance(p.hello("gvt"), m.HelloAck)  # anyone may connect now: that is the point of the warning
        p.close()
        lines = [json.loads(x) for x in open(proc.stderr_path) if x.startswith("{")]
        warn = [x for x in lines if x.get("event") == "insecure"]
        assert warn and warn[0]["level"] == "warning" and "CURVE IS OFF" in warn[0]["detail"]
    finally:
        proc.stop()
        if os.path.exists(mem):
            os.unlink(mem)


#: how the intruder dials -> the reasons the server's socket monitor may report for its failed handshake (a plain
#: client that reads the server's CURVE greeting first may hang up before the server reads its own: no detail)
HANDSHAKE_REASONS = {"wrong_server_key": ("zmtp_cryptographic",), "plain": ("zmtp_mechanism_mismatch", "no_detail"),
                     "foreign_key": ("auth_400",)}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("how", sorted(HANDSHAKE_REASONS))
def test_a_failed_handshake_is_counted_by_reason(stack, service: str, how: str) -> None:
    """A peer with a topology key that dials with another service's public key (its HELLO box does not open),
    one with no CURVE, one with a key of its own: no reply, and the server counts the failed handshake by
    reason (STATUS counters, hence /metrics) from its socket monitor."""
    import time

    ep = _eps(stack)[service]
    admin = RawPeer(ep, service, key="ctl")
    assert isinstance(admin.hello("ctl" if service != "vhm" else "probe"), m.HelloAck)
    names = [f"curve_handshake_failed_{r}" for r in HANDSHAKE_REASONS[how]]
    before = admin.status().counters
    if how == "wrong_server_key":
        other = next(s for s in SERVICES if s != service)
        intruder = RawPeer(ep, other, key="ctl")  # the operator's own key, but the wrong server's public key
    else:
        intruder = RawPeer(ep, service, plain=True) if how == "plain" else RawPeer(ep, service, key=False)
    try:
        intruder.send(m.Hello(role="ctl", id="intruder", epoch=1, wire=1), timeout=0.5)
        assert intruder.recv(timeout=1.0, skip_heartbeats=False) is None
        deadline = time.monotonic() + 10  # the monitor event is counted on the server's loop, soon after
        while True:
            after = admin.status().counters
            grew = [n for n in names if after.get(n, 0) > before.get(n, 0)]
            if grew or time.monotonic() > deadline:
                break
    finally:
        intruder.close()
    assert grew, {k: v for k, v in after.items() if "curve" in k}
    assert after["curve_handshake_failed"] > before.get("curve_handshake_failed", 0)
    assert after.get("hellos", 0) == before.get("hellos", 0)  # it never reached the session layer
    admin.close()
