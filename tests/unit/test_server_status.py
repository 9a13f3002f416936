"""STATUS in the server without sockets: the budget's wiring (one request answered at once, one that comes
sooner answered by the next build, from the timer) and a failing build answered with ERROR internal."""

from __future__ import annotations

from typing import Any

from support.fakeserver import Frame, Recorder, server

from gvtsim.protocol import ErrorCode, encode
from gvtsim.protocol import messages as m


class Sent:
    def __init__(self) -> None:
        self.out: list[tuple[bytes, m.Message]] = []

    def __call__(self, ident: bytes, msg: m.Message) -> None:
        self.out.append((ident, msg))


def status(ident: str, req: int) -> list[Frame]:
    return [Frame(ident.encode()), Frame(encode(m.StatusRequest(req=req)))]


class Counting(Recorder):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.builds = 0
        self.fail = fail

    def status(self) -> tuple[bool, dict[str, Any]]:
        self.builds += 1
        if self.fail:
            raise RuntimeError("a bug in status")
        return True, {"build": self.builds}


async def test_a_status_that_comes_sooner_waits_for_the_timer_and_shares_its_build() -> None:
    handler = Counting()
    srv = server(handler)
    sent = Sent()
    srv._send_raw = sent  # type: ignore[method-assign]
    await srv._on_batch([status("a", 1), status("b", 2), status("c", 3)])
    assert [(i, msg.req, msg.info) for i, msg in sent.out] == [(b"a", 1, {"build": 1})]  # type: ignore[attr-defined]
    due = srv._deadline()
    assert due is not None and srv.counters["status_waited"] == 2
    await srv._on_timer(due)
    assert [(i, msg.req, msg.info) for i, msg in sent.out[1:]] == [  # type: ignore[attr-defined]
        (b"b", 2, {"build": 2}), (b"c", 3, {"build": 2})]
    assert handler.builds == 2


async def test_a_failing_status_build_answers_every_waiting_request_with_an_error() -> None:
    handler = Counting(fail=True)
    srv = server(handler)
    sent = Sent()
    srv._send_raw = sent  # type: ignore[method-assign]
    await srv._on_batch([status("a", 1), status("b", 2)])
    await srv._on_timer(srv._deadline() or 0.0)
    assert [(i, type(msg), msg.code, msg.req) for i, msg in sent.out] == [  # type: ignore[attr-defined]
        (b"a", m.Error, ErrorCode.INTERNAL, 1), (b"b", m.Error, ErrorCode.INTERNAL, 2)]
    assert srv.counters["internal_errors"] == 2
