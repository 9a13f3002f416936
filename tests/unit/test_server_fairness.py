"""The server's batch handling without sockets: round-robin across peers, each peer's order kept, and the
one admission hook every message from a session passes."""

from __future__ import annotations

from typing import Any

from support.fakeserver import Frame, Recorder, hello, server

from gvtsim.protocol import encode
from gvtsim.protocol import messages as m


def call(name: str, req: int) -> list[Frame]:
    return [Frame(name.encode()), Frame(encode(m.MgmtList(req=req)))]


async def test_a_flooding_peer_does_not_delay_another_peers_message_behind_its_own():
    rec = Recorder()
    srv = server(rec)
    await srv._on_batch([hello("flood"), hello("calm")])
    flood = [call("flood", i) for i in range(1, 51)]
    await srv._on_batch([*flood, call("calm", 1), call("calm", 2)])
    # the calm peer's first message is handled right after the flooder's first, not after all 50
    assert rec.seen[:4] == [("flood", 1), ("calm", 1), ("flood", 2), ("calm", 2)]
    # and each peer's own order is kept
    assert [r for who, r in rec.seen if who == "flood"] == list(range(1, 51))
    # what the first round produced is sent before the rest of the flood is worked through
    assert rec.batches >= 2


async def test_admit_sees_every_message_from_a_session_and_can_refuse_it():
    rec = Recorder()
    srv = server(rec)
    checked: list[int] = []

    def admit(session: Any, msg: m.Message) -> m.Error | None:
        checked.append(msg.req)  # type: ignore[attr-defined]
        return m.Error(code="unexpected", reason="not allowed", req=msg.req) if msg.req == 2 else None  # type: ignore[attr-defined]

    srv.admit = admit
    await srv._on_batch([hello("a"), call("a", 1), call("a", 2), call("a", 3)])
    assert checked == [1, 2, 3] and rec.seen == [("a", 1), ("a", 3)]


async def test_a_garbage_flood_is_answered_up_to_a_budget_then_only_counted():
    from gvtsim.services.common import server as srv_mod

    rec = Recorder()
    srv = server(rec)
    sent: list[tuple[bytes, m.Message]] = []
    srv._send_raw = lambda ident, msg: sent.append((ident, msg))  # type: ignore[method-assign]
    n = srv_mod.ANSWER_BUDGET + 50
    await srv._on_batch([[Frame(b"flood"), Frame(b"\xc1not msgpack")] for _ in range(n)])
    await srv._on_batch([[Frame(b"other"), Frame(b"\xc1")]])
    errors = [(i, e) for i, e in sent if isinstance(e, m.Error)]
    assert len([1 for i, _ in errors if i == b"flood"]) == srv_mod.ANSWER_BUDGET
    assert [i for i, _ in errors if i == b"other"] == [b"other"]  # another peer still learns what was wrong
    assert srv.counters["decode_errors"] == n + 1 and srv.counters["decode_errors_unanswered"] == 50
    assert srv.counters["error_sent_decode"] == srv_mod.ANSWER_BUDGET + 1
