"""STATUS under a time budget, on a real vhm with VMs (services/common/status_budget.py): a peer that pipelines
50 STATUS requests gets 50 answers, each a STATUS_REPLY or ERROR busy echoing its req, the refusals
counted; another peer's STATUS asked meanwhile is answered with the service's figures as they are."""

from __future__ import annotations

import pytest

from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import ErrorCode
from gvtsim.protocol import messages as m
from support.rawpeer import RawPeer

pytestmark = pytest.mark.service


def test_a_status_flood_is_answered_in_shared_builds_and_refused_past_its_share() -> None:
    with HostStack() as hs:
        guest = hs.guest("--vms", "3", "--vcpus", "1", "--ram-mb", "16", "--workloads", "0", name="owner")
        for _ in range(3):
            guest.wait_event("vm_ready", timeout=30)
        flooder, calm = RawPeer(hs.vhm.endpoint, "vhm"), RawPeer(hs.vhm.endpoint, "vhm")
        try:
            for req in range(1, 51):  # pipelined: all 50 reach vhm before it answers the first
                assert flooder.send(m.StatusRequest(req=req))
            reply = calm.status()
            assert reply.info["vms"]["count"] == 3  # the figures as they are, not a stale copy
            answers: dict[int, m.Message] = {}
            while len(answers) < 50:
                msg = flooder.recv(timeout=5.0)
                assert msg is not None, f"only {len(answers)} of 50 STATUS requests were answered"
                if isinstance(msg, (m.StatusReply, m.Error)):
                    assert msg.req is not None and msg.req not in answers
                    answers[msg.req] = msg
            busy = [a for a in answers.values() if isinstance(a, m.Error)]
            built = [a for a in answers.values() if isinstance(a, m.StatusReply)]
            assert all(a.code is ErrorCode.BUSY and "waiting" in a.reason for a in busy)
            # one answered at once, at most 4 of the connection's waiting for the next build: the rest refused
            assert len(built) + len(busy) == 50 and len(built) >= 1 and len(busy) >= 1
            counters = calm.status().counters
            assert counters["status_busy"] == len(busy) and counters["error_sent_busy"] == len(busy)
            assert counters["status_waited"] >= 1
        finally:
            flooder.close()
            calm.close()
