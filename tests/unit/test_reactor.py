"""The reactor (services/common/reactor.py) on a real inproc socket pair: handlers run to their end inside
the loop's reader callback, a handler that suspends holds the socket until it ends (order kept, nothing
read meanwhile), and a handler's exception is logged without stopping the socket."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import zmq

from gvtsim.services.common.reactor import Frames, Reactor


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def exception(self, event: str, **kw: Any) -> None:
        self.lines.append((event, kw))

    warning = exception


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.setsockopt(zmq.LINGER, 0)
    b.setsockopt(zmq.LINGER, 0)
    a.bind("inproc://reactor-test")
    b.connect("inproc://reactor-test")
    yield a, b
    b.close(0)
    ctx.destroy(0)


async def _until(cond, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.001)


async def test_batches_arrive_in_order_and_a_suspended_handler_holds_the_socket(pair) -> None:
    a, b = pair
    got: list[bytes] = []
    gate = asyncio.get_running_loop().create_future()
    tasks_seen: list[bool] = []

    async def on_batch(batch: list[Frames]) -> None:
        for frames in batch:
            msg = frames[0]
            got.append(msg)
            tasks_seen.append(asyncio.current_task() is not None)
            if msg == b"wait":
                await gate  # suspends: nothing after it may be handled before it ends

    async def on_timer(now: float) -> None:
        pass

    r = Reactor("t", on_batch, on_timer, lambda: None, log=_Log())
    r.attach(a)
    r.start()
    b.send(b"1")
    await _until(lambda: got == [b"1"])
    assert tasks_seen == [False]  # ran inside the reader callback: no task for a handler that does not wait
    b.send(b"wait")
    await _until(lambda: got == [b"1", b"wait"])
    b.send(b"2")
    b.send(b"3")
    for _ in range(50):
        await asyncio.sleep(0.001)
    assert got == [b"1", b"wait"]  # held: the later messages wait for the suspended handler
    gate.set_result(None)
    await _until(lambda: got == [b"1", b"wait", b"2", b"3"])
    await r.stop()


async def test_a_failing_handler_is_logged_and_the_socket_goes_on(pair) -> None:
    a, b = pair
    got: list[bytes] = []
    log = _Log()

    async def on_batch(batch: list[Frames]) -> None:
        for frames in batch:
            if frames[0] == b"boom":
                raise ValueError("bad handler")
            got.append(frames[0])

    async def on_timer(now: float) -> None:
        pass

    r = Reactor("t", on_batch, on_timer, lambda: None, log=log)
    r.attach(a)
    r.start()
    b.send(b"boom")
    await _until(lambda: bool(log.lines))
    b.send(b"after")
    await _until(lambda: got == [b"after"])
    assert log.lines[0][0] == "reactor_failed" and "bad handler" in log.lines[0][1]["error"]
    await r.stop()


async def test_the_timer_fires_at_the_deadline_and_a_suspended_timer_handler_is_finished(pair) -> None:
    a, _ = pair
    at = time.monotonic() + 0.02
    state: dict[str, float | None] = {"due": at}
    fired: list[float] = []

    async def on_batch(batch: list[Frames]) -> None:
        pass

    async def on_timer(now: float) -> None:
        state["due"] = None
        await asyncio.sleep(0)  # suspends once: the reactor's task finishes it
        fired.append(now)

    r = Reactor("t", on_batch, on_timer, lambda: state["due"], log=_Log())
    r.attach(a)
    r.start()
    await _until(lambda: bool(fired))
    assert fired == [pytest.approx(fired[0])] and fired[0] >= at
    await r.stop()
