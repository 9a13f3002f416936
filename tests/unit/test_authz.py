"""The authorisation table (protocol/authz.py): a row for every message type, and the pure check."""

from __future__ import annotations

import pytest

from gvtsim.orchestration.fuzzgen import minimal
from gvtsim.protocol import authz
from gvtsim.protocol import messages as m
from gvtsim.protocol.errors import ErrorCode


def test_every_message_type_has_a_row():
    missing = [c.__struct_config__.tag for c in m.ALL_MESSAGES if c not in authz.TABLE]
    assert missing == [], f"message types without an authorisation row: {missing}"
    assert set(authz.TABLE) == set(m.ALL_MESSAGES)


def test_every_row_names_known_receivers_and_roles():
    for cls, r in authz.TABLE.items():
        assert set(r.senders) <= set(authz.RECEIVERS), cls
        for roles in r.senders.values():
            assert roles <= authz.ALL_ROLES, cls
        assert any(r.senders.values()), f"{cls.__name__}: nobody may send it"


def test_requests_to_servers_name_a_server_and_answers_are_reply_rules():
    for cls in m.REPLY_TYPES:
        if cls is not m.Error:
            assert authz.TABLE[cls].owner is authz.Owner.REPLY, cls


def test_the_gvt_hole_is_closed_a_guest_cannot_manage_vgpus():
    assert not authz.may_hello("gvt", "guest")
    for cls in (m.VgpuCreate, m.VgpuDestroy, m.VgpuReset, m.MgmtList, m.MgmtTypes):
        msg = minimal(cls)
        for role in ("guest", "probe", "pgpu", "gvt"):
            ref = authz.check("gvt", role, msg)
            assert ref is not None and ref.code is ErrorCode.UNEXPECTED and ref.answer, (cls, role)
        assert authz.check("gvt", "ctl", msg) is None


@pytest.mark.parametrize("service", authz.SERVICES)
def test_each_server_refuses_every_role_not_in_the_row(service):
    for cls, r in authz.TABLE.items():
        allowed = r.senders.get(service, frozenset())
        for role in authz.ALL_ROLES:
            ref = authz.check(service, role, _sample(cls))
            if role in allowed:
                assert ref is None, (service, cls, role)
            else:
                assert ref is not None and ref.code is ErrorCode.UNEXPECTED, (service, cls, role)
                assert ref.counter == f"authz_refused_role_{cls.__struct_config__.tag}"
                assert ref.answer is (cls not in m.REPLY_TYPES)


def test_ownership_refusals_are_forged_id():
    msg = m.VmReset(req=7, vm=4)
    assert authz.check("vhm", "guest", msg, lambda kind, vm: kind is authz.Owner.VM_CREATOR and vm == 4) is None
    ref = authz.check("vhm", "guest", msg, lambda kind, vm: False)
    assert ref is not None and ref.code is ErrorCode.FORGED_ID and "VM 4" in ref.reason
    assert authz.check("vhm", "guest", msg, lambda kind, vm: None) is None  # no such VM: the core says so
    asked = []
    authz.check("vhm", "gvt", m.PageTrack(req=1, vm=2, gfn=5, enable=True), lambda k, vm: asked.append((k, vm)))
    assert asked == [(authz.Owner.DEVICE_MODEL, 2)]
    ref = authz.check("gvt", "ctl", m.VgpuDestroy(req=1, vm=2), lambda k, vm: False)
    assert ref is not None and ref.code is ErrorCode.FORGED_ID and "vGPU" in ref.reason


def test_markdown_lists_every_type():
    text = authz.markdown()
    for cls in m.ALL_MESSAGES:
        assert f"| `{cls.__struct_config__.tag}` |" in text


def _sample(cls):
    return minimal(cls)
