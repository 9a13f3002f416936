"""The guest driver as a sans-I/O core (services/guest/runtime.py): the i915-like driver, its interrupt
handler and the vCPUs run as plain generator threads, driven by events (an ioreq completed or refused, an
MSI, time passed in) against the real GVT core in the same process: no event loop, no socket, a fake clock.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from test_gvt_ppgtt_fixtures import BAR0, Host

from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.protocol.errors import ErrorCode, Refusal
from gvtsim.hardware import cmds
from gvtsim.hardware import regs as r
from gvtsim.services.guest.i915 import DriverError, VgpuDriver
from gvtsim.services.guest.pci import PciDevice
from gvtsim.services.guest.runtime import Done, Failed, Gen, Lock, Runtime, Signal, Thread, wait_until


@pytest.fixture(autouse=True)
def no_loop_no_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here runs outside any event loop, and opening a socket fails it."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the guest driver core opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    yield
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.close()


def _driver(host: Host) -> tuple[VgpuDriver, object]:
    g = host.add_vm(1, ram_mb=4)
    gpu = PciDevice(0, 2, 0, 0x8086, 0x1912, 6, 0x30000, bar0=BAR0, bar0_size=16 << 20,
                    bar2_size=host.gvt.gpu.aperture_size, msi_vector=0x40)
    return VgpuDriver(g.machine, gpu, engines=("rcs",)), g


def _mmio_offsets(reqs: list[m.Ioreq]) -> list[tuple[str, int]]:
    return [("w" if q.dir == IoreqDir.WRITE else "r", q.addr - BAR0) for q in reqs if q.kind == IoreqType.MMIO]


def test_init_runs_the_i915_probe_order_as_a_plain_thread(host: Host) -> None:
    drv, g = _driver(host)
    seen: list[m.Ioreq] = []
    send = host._send
    host._send = lambda req: (seen.append(req), send(req))[1]  # type: ignore[method-assign]
    host.run(drv.init())
    order = _mmio_offsets(seen)
    assert order[0] == ("r", r.PV_MAGIC) and order[-1] == ("w", r.PV_DISPLAY_READY)  # intel_vgpu_detect first
    balloon = [o for o in order if o[1] in (r.PV_MAPPABLE_BASE, r.PV_MAPPABLE_SIZE, r.PV_NONMAPPABLE_BASE,
                                            r.PV_NONMAPPABLE_SIZE)]
    assert [o[1] for o in balloon] == [r.PV_MAPPABLE_BASE, r.PV_MAPPABLE_SIZE, r.PV_NONMAPPABLE_BASE,
                                       r.PV_NONMAPPABLE_SIZE]
    assert order.index(("w", r.MASTER_IRQ)) < order.index(("w", 0x2000 + r.RING_MODE))  # irqs, then execlists
    assert drv.ready and drv.balloon[1] > 0 and not g.vgpu.failsafe  # type: ignore[attr-defined]


def test_a_request_completes_on_the_msi_and_not_before(host: Host) -> None:
    drv, g = _driver(host)
    host.run(drv.init())
    rt = host.rt
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP, cmds.MI_USER_INTERRUPT], wait_user_irq=True), 1.0, "submit", 1)
    host.pump()
    e = drv.engines["rcs"]
    assert sub.outcome is None and e.pending and e.user_pending  # blocked in its wait, no loop under it
    assert drv.submission_traps == {4: 1}  # the 4 ELSP dwords, nothing else trapped for the submission
    (w,) = host.gvt.scheduler.inflight.values()
    host.gvt.scheduler.on_gpu_event("rcs", "user_interrupt", w.id, now=1.0)
    host.gvt.scheduler.on_gpu_event("rcs", "ctx_complete", w.id, now=1.0)
    host.run(drv.on_msi(0xFEE0_0000, 0x40))
    assert isinstance(sub.outcome, Done) and e.completions == 1 and e.user_irqs == 1 and drv.msis == 1


def test_a_completion_no_request_waits_for_is_counted_and_a_repeated_gpu_event_completes_once(host: Host) -> None:
    """A GPU event pgpu delivers twice (a replay after a restart) completes the request once: gvt writes
    one CSB entry, the guest counts no unexpected completion. A context_complete for a request nobody
    waits for any more (completed already, or declared hung) is counted: the load report fails a run
    with one and no hang (a workload completed twice)."""
    drv, _ = _driver(host)
    host.run(drv.init())
    rt = host.rt
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP, cmds.MI_USER_INTERRUPT], wait_user_irq=True), 1.0, "submit", 1)
    host.pump()
    (w,) = host.gvt.scheduler.inflight.values()
    for _ in range(2):
        host.gvt.scheduler.on_gpu_event("rcs", "user_interrupt", w.id, now=1.0)
        host.gvt.scheduler.on_gpu_event("rcs", "ctx_complete", w.id, now=1.0)
    host.run(drv.on_msi(0xFEE0_0000, 0x40))
    e = drv.engines["rcs"]
    assert isinstance(sub.outcome, Done) and e.completions == 1 and drv.unexpected_completions == 0
    sub2 = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP]), 2.0, "submit", 1)
    host.pump()
    (w2,) = host.gvt.scheduler.inflight.values()
    e.pending = False  # as after its hangcheck gave up on it
    host.gvt.scheduler.on_gpu_event("rcs", "ctx_complete", w2.id, now=2.0)
    host.run(drv.on_msi(0xFEE0_0000, 0x40))
    assert drv.unexpected_completions == 1 and sub2.outcome is None


def test_a_lost_msi_is_found_by_the_next_hangcheck_and_the_request_completes(host: Host) -> None:
    """The completion reached IIR but its MSI was lost (a vhm killed with it on the wire): the hangcheck
    runs the handler, which finds the pending summary bits, and the request completes, not a hang."""
    drv, _ = _driver(host)
    host.run(drv.init())
    rt = host.rt
    drv.hangcheck_period = 0.5
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP, cmds.MI_USER_INTERRUPT], timeout=3.0, wait_user_irq=True),
                   20.0, "submit", 1)
    host.pump()
    (w,) = host.gvt.scheduler.inflight.values()
    host.gvt.scheduler.on_gpu_event("rcs", "user_interrupt", w.id, now=20.1)
    host.gvt.scheduler.on_gpu_event("rcs", "ctx_complete", w.id, now=20.1)  # its MSI is never delivered
    rt.advance(20.4)
    host.pump()
    assert sub.outcome is None and drv.missed_irqs == 0  # before the hangcheck nothing looks
    rt.advance(20.5)
    host.pump()
    e = drv.engines["rcs"]
    assert isinstance(sub.outcome, Done), sub.outcome
    assert drv.missed_irqs == 1 and drv.msis == 0 and e.completions == 1 and e.user_irqs == 1


def test_the_hangcheck_handler_run_does_nothing_when_no_event_is_pending(host: Host) -> None:
    """No completion at all: every hangcheck runs the handler; only the first finds an event (the CSB's
    idle-to-active switch, whose MSI this host never delivers), the next ones read MASTER_IRQ and stop,
    and the request is still a hang at its timeout."""
    drv, _ = _driver(host)
    host.run(drv.init())
    rt = host.rt
    drv.hangcheck_period = 0.5
    seen: list[m.Ioreq] = []
    send = host._send
    host._send = lambda req: (seen.append(req), send(req))[1]  # type: ignore[method-assign]
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP], timeout=2.0), 30.0, "submit", 1)
    host.pump()
    for now in (30.5, 31.0, 31.5, 32.0):
        rt.advance(now)
        host.pump()
    assert isinstance(sub.outcome, Failed) and "GPU hang" in str(sub.outcome.error)
    offsets = _mmio_offsets(seen)
    assert offsets.count(("r", r.MASTER_IRQ)) == 3  # one handler run per hangcheck before the deadline
    assert offsets.count(("w", r.MASTER_IRQ)) == 2  # master off and on again: the first run only
    assert drv.missed_irqs == 1


def test_no_completion_is_a_hang_found_by_hangcheck_on_the_fake_clock(host: Host) -> None:
    drv, _ = _driver(host)
    host.run(drv.init())
    rt = host.rt
    drv.hangcheck_period = 0.5
    seen: list[m.Ioreq] = []
    send = host._send
    host._send = lambda req: (seen.append(req), send(req))[1]  # type: ignore[method-assign]
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP], timeout=2.0), 10.0, "submit", 1)
    host.pump()
    assert rt.next_deadline() == 10.5  # the first hangcheck
    for now in (10.5, 11.0, 11.5):
        rt.advance(now)
        host.pump()
        assert sub.outcome is None
    execlist_status = ("r", 0x2000 + r.EXECLIST_STATUS)
    assert _mmio_offsets(seen).count(execlist_status) == 3  # one engine check per hangcheck period
    rt.advance(12.0)
    host.pump()
    assert isinstance(sub.outcome, Failed) and isinstance(sub.outcome.error, DriverError)
    assert "GPU hang (no context_complete in 2.0s)" in str(sub.outcome.error)
    assert not drv.engines["rcs"].pending and drv.engines["rcs"].lock.owner is None


def test_a_device_reading_all_ones_is_gone_at_the_first_hangcheck(host: Host) -> None:
    drv, _ = _driver(host)
    host.run(drv.init())
    rt = host.rt
    send = host._send
    host._send = lambda req: 0xFFFF_FFFF if req.addr == BAR0 + 0x2000 + r.EXECLIST_STATUS else send(req)  # type: ignore[method-assign]
    sub = rt.spawn(drv.submit("rcs", [cmds.MI_NOOP], timeout=3.0), 0.0, "submit", 1)
    host.pump()
    rt.advance(drv.hangcheck_period)
    host.pump()
    assert isinstance(sub.outcome, Failed) and "GPU gone" in str(sub.outcome.error)


def test_a_refused_ioreq_is_the_threads_outcome_and_frees_the_vcpu(host: Host) -> None:
    drv, _ = _driver(host)
    rt, vcpu = host.rt, drv.machine.vcpus[0]
    finally_ran: list[bool] = []

    def reader() -> Gen[None]:
        try:
            yield from vcpu.ioreq(IoreqType.MMIO, IoreqDir.READ, 0xF000_0000, 4)
            yield from vcpu.ioreq(IoreqType.MMIO, IoreqDir.READ, 0xF000_0004, 4)  # never reached
        finally:
            finally_ran.append(True)

    def prober() -> Gen[int | Refusal]:
        got = yield from vcpu.try_ioreq(IoreqType.MMIO, IoreqDir.READ, 0xF000_0008, 4)
        return got

    a = rt.spawn(reader(), 0.0, "a", 1)
    b = rt.spawn(prober(), 0.0, "b", 1)
    assert len(rt.outbox) == 1  # one slot per vCPU: b waits behind a's trap
    req = rt.outbox.pop()
    refusal = Refusal(ErrorCode.BAD_ADDRESS, "no such register", 1, 0, req.seq)
    assert rt.ioreq_refused(1, 0, req.seq, refusal, 0.1)
    assert a.outcome == refusal and finally_ran == [True]  # an outcome, not an exception; unwound
    (req_b,) = rt.outbox  # the vCPU is free again: b's trap went out
    rt.outbox.clear()
    rt.ioreq_refused(1, 0, req_b.seq, Refusal(ErrorCode.GPU_RESET, "reset", 1, 0, req_b.seq), 0.2)
    assert isinstance(b.outcome, Done) and isinstance(b.outcome.value, Refusal)  # tolerated: handed back
    assert b.outcome.value.code is ErrorCode.GPU_RESET and vcpu.lock.owner is None


def test_an_ioreq_nobody_answers_times_out_on_the_fake_clock(host: Host) -> None:
    drv, _ = _driver(host)
    rt = Runtime(ioreq_timeout=10.0)
    drv.machine.rt = rt
    th: Thread = rt.spawn(drv.rd(r.PV_MAGIC, 8), 100.0, "probe", 1)
    assert len(rt.outbox) == 1 and rt.next_deadline() == 110.0
    rt.advance(109.9)
    assert th.outcome is None
    rt.advance(110.0)
    assert isinstance(th.outcome, Refusal) and th.outcome.code is ErrorCode.TIMEOUT and rt.timeouts == 1
    assert not rt.ioreq_done(1, 0, rt.outbox[0].seq, 0, 111.0)  # a late answer finds nobody: stray


def test_a_vgpu_lost_refuses_what_is_in_flight_and_what_comes_after(host: Host) -> None:
    drv, _ = _driver(host)
    rt = host.rt
    first = rt.spawn(drv.rd(r.PV_MAGIC, 8), 0.0, "a", 1)
    lost = Refusal(ErrorCode.GPU_RESET, "vGPU lost: gvt restarted", 1)
    rt.refuse_vm(1, lost, 0.0)
    later = rt.spawn(drv.rd(r.PV_VGT_ID), 0.0, "b", 1)
    assert first.outcome == lost and later.outcome == lost
    rt.outbox.clear()
    rt.forget_vm(1)  # torn down: a new incarnation may trap again
    again = rt.spawn(drv.rd(r.PV_MAGIC, 8), 0.0, "c", 1)
    host.pump()
    assert isinstance(again.outcome, Done) and again.outcome.value == r.VGT_MAGIC


def test_a_spent_deadline_never_wakes_a_thread_that_waits_for_something_else(host: Host) -> None:
    """A hangcheck wait woken by its interrupt leaves its deadline behind; when that time comes the thread is
    blocked on a trap (or a lock) and must stay blocked: resuming it would send a second ioreq on the vCPU
    while the first is in flight (vhm: slot_busy)."""
    drv, _ = _driver(host)
    rt, vcpu = host.rt, drv.machine.vcpus[0]
    sig = Signal()
    seen: list[object] = []

    def waiter() -> Gen[None]:
        seen.append((yield from wait_until(sig, lambda: bool(seen), 5.0)))
        seen.append((yield from vcpu.ioreq(IoreqType.MMIO, IoreqDir.READ, BAR0 + r.PV_MAGIC, 8)))

    th = rt.spawn(waiter(), 0.0, "waiter", 1)
    seen.append("fired")
    sig.fire()
    rt.advance(1.0)
    assert seen == ["fired", True] and len(rt.outbox) == 1  # woken by the signal, now in its trap
    rt.advance(6.0)  # past the spent deadline
    assert th.outcome is None and th.blocked_on is not None and len(rt.outbox) == 1
    req = rt.outbox.pop()
    rt.ioreq_done(1, 0, req.seq, 42, 6.5)
    assert seen[-1] == 42 and isinstance(th.outcome, Done)


def test_a_lock_handed_to_a_thread_killed_before_it_ran_goes_to_the_next_one(host: Host) -> None:
    rt = host.rt
    lock = Lock()
    got: list[str] = []

    def taker(name: str) -> Gen[None]:
        yield from lock.acquire()  # and keeps it
        got.append(name)

    a = rt.spawn(taker("a"), 0.0, "a", 1)
    b = rt.spawn(taker("b"), 0.0, "b", 1)
    c = rt.spawn(taker("c"), 0.0, "c", 1)
    assert got == ["a"] and lock.owner is a and b.outcome is None and c.outcome is None
    lock.release()  # from outside the runtime's stepping: handed to b, which has not run yet
    assert lock.owner is b and got == ["a"]
    rt.kill(b)  # (a sibling vCPU failed, say) before b could run
    assert lock.owner is c  # not left with the dead b
    rt.advance(0.0)
    assert got == ["a", "c"] and isinstance(c.outcome, Done)


def test_the_guest_core_modules_import_no_event_loop_socket_or_logging_library() -> None:
    """The sans-I/O part of services/guest (everything but the shell: service.py, lifecycle.py, main.py,
    events.py) imports neither asyncio, zmq, socket nor a logging library, nor the shared transport."""
    import ast
    import pathlib

    import gvtsim.services.guest as pkg

    shell = {"service.py", "lifecycle.py", "main.py", "events.py", "__init__.py"}
    banned = {"asyncio", "zmq", "socket", "structlog", "logging", "uvloop"}
    banned_common = {"client", "service", "reactor", "sockets", "trace", "log"}
    core = [p for p in pathlib.Path(pkg.__file__).parent.glob("*.py") if p.name not in shell]
    assert {"runtime.py", "cpu.py", "i915.py", "pci.py", "workloads.py"} <= {p.name for p in core}
    found = []
    for path in core:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                names = [mod] + ([f"common.{a.name}" for a in node.names] if mod.endswith("common") else [])
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] in banned or (len(parts) >= 2 and parts[-2] == "common" and parts[-1] in banned_common):
                    found.append(f"{path.name}: {name}")
    assert not found, found
