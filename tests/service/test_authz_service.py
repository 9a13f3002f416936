"""The authorisation table enforced by real vhm, gvt and pgpu processes: for every service and every message
type, each role that may not send it is refused (``ERROR unexpected``, counted); ids of other connections
are refused with ``forged_id``; the hole where a ``guest`` session on gvt's management socket reset a vGPU
is closed. CURVE is on (tests/conftest.py): each raw peer uses its role's own key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gvtsim.orchestration.fuzzgen import minimal
from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import authz
from gvtsim.protocol import messages as m
from support.rawpeer import RawPeer

pytestmark = pytest.mark.service
ROLES = sorted(authz.ALL_ROLES)


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, Any]]:
    with HostStack() as hs:
        guest = hs.guest("--vms", "1", "--vcpus", "1", "--ram-mb", "16", "--vgpu-types", "GVTg_V5_4",
                         "--workloads", "0", "--name-prefix", "owner", name="owner")
        ready = guest.wait_event("vm_ready", timeout=30)
        eps = {"vhm": hs.vhm.endpoint, "gvt": hs.gvt.endpoint, "pgpu": hs.pgpu.endpoint}
        peers: dict[tuple[str, str], RawPeer] = {}

        def peer(service: str, role: str) -> RawPeer:
            """One socket per (service, role) with the role's own key; a fresh HELLO each time (a raw peer sends
            no heartbeats, so the server forgets a session idle for 1.5 s)."""
            if (service, role) not in peers:
                peers[(service, role)] = RawPeer(eps[service], service, key=role)
            p = peers[(service, role)]
            ack = p.hello(role)
            assert isinstance(ack, m.HelloAck), (service, role, ack)
            return p

        yield {"hs": hs, "eps": eps, "vm": ready["vm"], "peer": peer}
        for p in peers.values():
            p.close()


def _cases() -> list[tuple[str, type[m.Message]]]:
    """Every (service, message type) with at least one wrong role (HEARTBEAT, BYE, STATUS: any session may)."""
    return [(s, cls) for s in authz.SERVICES for cls in m.ALL_MESSAGES
            if any(r not in authz.TABLE[cls].senders.get(s, ()) for r in ROLES
                   if cls is m.Hello or authz.may_hello(s, r))]


@pytest.mark.parametrize("service,cls", _cases(), ids=[f"{s}-{c.__struct_config__.tag}" for s, c in _cases()])
def test_a_wrong_role_is_refused(stack, service: str, cls: type[m.Message]) -> None:
    tag = cls.__struct_config__.tag
    rule = authz.TABLE[cls]
    allowed = rule.senders.get(service, frozenset())
    if cls is m.Hello:  # the roles a service opens no session for are refused at HELLO
        wrong = [r for r in ROLES if r not in allowed]
        for role in wrong:
            p = RawPeer(stack["eps"][service], service, key=role)
            try:
                reply = p.hello(role)
                assert isinstance(reply, m.Error) and reply.code == "unexpected", (role, reply)
                after = p.ask(m.VgpuReset(req=5, vm=stack["vm"]))
                assert isinstance(after, m.Error) and after.code == "not_hello", (role, after)
            finally:
                p.close()
        return
    wrong = [r for r in ROLES if authz.may_hello(service, r) and r not in allowed]
    assert wrong
    for role in wrong:
        p = stack["peer"](service, role)
        before = p.status().counters
        msg = minimal(cls)
        if "vm" in cls.__struct_fields__:
            msg = minimal(cls, vm=stack["vm"])
        p.send(msg)
        if cls not in m.REPLY_TYPES:
            reply = p.recv()
            assert isinstance(reply, m.Error) and reply.code == "unexpected", (role, reply)
            assert tag in reply.reason and role in reply.reason
            assert reply.req == getattr(msg, "req", None)
        after = p.status().counters
        counter = f"authz_refused_role_{tag}"
        assert after.get(counter, 0) == before.get(counter, 0) + 1, (role, counter)
        assert after["authz_refused"] == before.get("authz_refused", 0) + 1


def test_the_management_hole_is_closed(stack) -> None:
    """The measured hole: a peer that said HELLO as guest reset another VM's vGPU on gvt's management socket."""
    vm = stack["vm"]
    g = RawPeer(stack["eps"]["gvt"], "gvt", key="guest")
    try:
        refused = g.hello("guest")
        assert isinstance(refused, m.Error) and refused.code == "unexpected"
        reset = g.ask(m.VgpuReset(req=9, vm=vm))
        assert isinstance(reset, m.Error) and reset.code == "not_hello"
    finally:
        g.close()
    ctl = stack["peer"]("gvt", "ctl")
    before = ctl.status()
    reply = ctl.ask(m.VgpuReset(req=10, vm=vm))  # ctl may manage vGPUs, but this one is vhm's (its VM's)
    assert isinstance(reply, m.Error) and reply.code == "forged_id" and reply.vm == vm, reply
    destroy = ctl.ask(m.VgpuDestroy(req=11, vm=vm))
    assert isinstance(destroy, m.Error) and destroy.code == "forged_id"
    after = ctl.status()
    key = "authz_refused_owner_VGPU_RESET"
    assert after.counters[key] == before.counters.get(key, 0) + 1
    assert after.counters.get("vgpu_resets", 0) == before.counters.get("vgpu_resets", 0)
    assert {v["vm"] for v in after.info["vgpus"]} >= {vm}  # still there, untouched


def test_another_connection_cannot_name_the_vm(stack) -> None:
    vm = stack["vm"]
    intruder = stack["peer"]("vhm", "guest")  # a second guest connection
    for msg in (m.VmReset(req=1, vm=vm), m.VmDestroy(req=2, vm=vm)):
        reply = intruder.ask(msg)
        assert isinstance(reply, m.Error) and reply.code == "forged_id" and reply.vm == vm, reply
    intruder.send(m.Ioreq(vm=vm, vcpu=0, seq=1, kind=1, dir=0, addr=0xF000_0000, size=4))
    err = intruder.recv()
    assert isinstance(err, m.Error) and err.code == "forged_id"
    counters = intruder.status().counters
    assert counters["authz_refused_owner_VM_RESET"] >= 1 and counters["authz_refused_owner_IOREQ"] >= 1
    # a second device model cannot act on a VM the real gvt serves (device_model rule)
    dm = stack["peer"]("vhm", "gvt")
    for msg in (m.PageTrack(req=3, vm=vm, gfn=1, enable=True), m.WriteGpa(req=4, vm=vm, gpa=0, data=b"\xff"),
                m.InjectMsi(req=5, vm=vm, addr=0xFEE00000, data=0x30)):
        reply = dm.ask(msg)
        assert isinstance(reply, m.Error) and reply.code == "forged_id", (msg, reply)
