"""The guest's CPUs as a sans-I/O scheduler: guest threads are generators, driven by events.

A guest thread (a vCPU's workload loop, an MSI handler, the boot sequence) is written in the driver's
sequential order as a generator. Where real code would stall, it yields an operation to this runtime:

* :class:`Trap`: an access that exits to the hypervisor (an ioreq); resumed with the read value once the
  shell reports IOREQ_DONE (:meth:`Runtime.ioreq_done`). One ioreq is outstanding per vCPU, as with one ACRN
  slot per vCPU (hypervisor/dm/io_req.c acrn_insert_request): a trap takes the vCPU's lock for its flight.
  A refused trap (:meth:`Runtime.ioreq_refused`) ends its thread with the :class:`Refusal` as its outcome,
  the way a failed access is a GPU reset for i915; ``tolerate=True`` resumes the thread with the Refusal
  instead (a driver probing what the host allows).
* :class:`Acquire`: a guest-kernel lock (:class:`Lock`), handed over in FIFO order.
* :class:`Wait`: sleep until a :class:`Signal` fires (an interrupt handler completed a request) or a
  deadline passes; resumed with True (fired) or False (timed out).

Nothing here does I/O or reads a clock: the shell passes ``now`` to every entry point, sends what
:attr:`Runtime.outbox` holds, collects :attr:`Runtime.finished`, and arms one timer at
:meth:`Runtime.next_deadline`. Unit tests drive it the same way, with no event loop (:func:`drive`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ...protocol import messages as m
from ...protocol.errors import ErrorCode, Refusal

if TYPE_CHECKING:
    from .cpu import Vcpu

T = TypeVar("T")


@dataclass(slots=True)
class Trap:
    """An ioreq the current thread waits on (built by :meth:`Vcpu.ioreq`)."""

    vcpu: "Vcpu"
    req: m.Ioreq
    tolerate: bool = False  # resume with the Refusal instead of ending the thread
    t0: float = 0.0  # when it was issued (the runtime's clock)
    took_lock: bool = False  # it holds the vCPU's lock for its flight (the thread did not already)


@dataclass(slots=True)
class Acquire:
    """Take ``lock`` (resumed with None once this thread owns it)."""

    lock: "Lock"


@dataclass(slots=True)
class Wait:
    """Sleep until ``signal`` fires or ``deadline`` passes (None: no deadline; no signal: a plain sleep)."""

    signal: "Signal | None"
    deadline: float | None


Op = Trap | Acquire | Wait
#: a guest thread's body, or any step of it (``yield from`` composes them)
Gen = Generator[Op, Any, T]


@dataclass(slots=True)
class Done:
    """The thread returned ``value``."""

    value: Any


@dataclass(slots=True)
class Failed:
    """The thread raised ``error`` (a DriverError for a GPU hang, a VerifyError for a wrong result...)."""

    error: BaseException


Outcome = Done | Failed | Refusal


class Lock:
    """A guest-kernel lock (i915's spinlocks and mutexes, the vCPU's own interrupt-off section), FIFO."""

    __slots__ = ("owner", "waiters")

    def __init__(self) -> None:
        self.owner: Thread | None = None
        self.waiters: deque[tuple[Thread, Trap | None]] = deque()

    def acquire(self) -> Gen[None]:
        """``yield from lock.acquire()``; pair it with :meth:`release` in a ``finally``."""
        yield Acquire(self)

    def hold(self) -> Gen["Held"]:
        """``with (yield from lock.hold()):`` takes the lock for the block (released however it ends)."""
        yield Acquire(self)
        return Held(self)

    def release(self) -> None:
        """Hand the lock to the next waiter (a thread, or a queued trap that goes out now)."""
        while self.waiters:
            th, trap = self.waiters.popleft()
            if th.dead:
                continue
            self.owner = th
            if trap is None:
                th.granted = self  # released again should the thread be killed before it runs
                th.rt._ready(th, None)
            else:
                trap.took_lock = True
                th.rt._issue(th, trap)
            return
        self.owner = None


class Held:
    """A held :class:`Lock` as a context manager (its exit releases it)."""

    __slots__ = ("lock",)

    def __init__(self, lock: Lock) -> None:
        self.lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


class Signal:
    """Something threads wait for (a request's completion, a flip): :meth:`fire` wakes them all."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[Thread] = []

    def fire(self) -> None:
        """Wake every thread waiting on this signal (they re-check what they wait for)."""
        waiters, self.waiters = self.waiters, []
        for th in waiters:
            if not th.dead and th.blocked_on is self:
                th.rt._ready(th, True)


def wait_until(signal: Signal, cond: Callable[[], bool], deadline: float | None) -> Gen[bool]:
    """Wait until ``cond()`` holds (re-checked each time ``signal`` fires) or ``deadline`` passes."""
    while not cond():
        if not (yield Wait(signal, deadline)):
            return cond()
    return True


def sleep_until(deadline: float) -> Gen[None]:
    """Sleep until ``deadline`` (the runtime's clock)."""
    yield Wait(None, deadline)


class Thread:
    """One guest thread: its generator, what it is blocked on, its outcome once finished."""

    __slots__ = ("rt", "gen", "name", "vm", "dead", "blocked_on", "outcome", "timer", "tag", "waiting", "granted")

    def __init__(self, rt: "Runtime", gen: Gen[Any], name: str, vm: int, tag: Any = None) -> None:
        self.rt = rt
        self.gen = gen
        self.name = name
        self.vm = vm
        self.dead = False  # finished or killed: never resumed again
        self.blocked_on: object = None  # the Trap, Lock or Signal it waits for
        self.outcome: Outcome | None = None
        self.timer = 0  # token of its current Wait deadline (a stale heap entry has another)
        self.tag = tag  # the shell's (what to do with the outcome)
        self.waiting = True  # blocked (or not started): may be made ready, once
        self.granted: Lock | None = None  # a lock handed to it that it has not resumed with yet


@dataclass
class Runtime:
    """All guest threads of a process, their traps in flight and their deadlines.

    Args:
        ioreq_timeout: seconds before a trap with no answer is refused with ``timeout`` (the guest's
            hangcheck on a hypervisor that never completes).
    """

    ioreq_timeout: float = 20.0
    now: float = 0.0
    wall_offset: float = 0.0  # now + wall_offset = the wall clock (what a guest's clock display shows)
    outbox: list[m.Ioreq] = field(default_factory=list)  # ioreqs to send (the shell drains it)
    finished: list[Thread] = field(default_factory=list)  # threads that ended (the shell drains it)
    inflight: dict[tuple[int, int, int], tuple[Thread, Trap]] = field(default_factory=dict)
    lost: dict[int, Refusal] = field(default_factory=dict)  # VM -> why every trap of it is refused now
    threads: dict[int, set[Thread]] = field(default_factory=dict)  # VM -> its live threads
    ending: Outcome | None = None  # while a thread is being ended from outside: why (its handlers may ask)
    timeouts: int = 0
    record: bool = False  # keep :attr:`events` (the shell turns them into trace spans)
    events: list[tuple[str, str, int, float]] = field(default_factory=list)  # (category, name, vm, seconds)
    _ready_q: deque[tuple[Thread, Any]] = field(default_factory=deque)
    _timers: list[tuple[float, int, Thread | tuple[int, int, int]]] = field(default_factory=list)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------------------------- entry points
    def spawn(self, gen: Gen[Any], now: float, name: str = "thread", vm: int = 0, tag: Any = None) -> Thread:
        """Start a guest thread; it runs until it first blocks."""
        th = Thread(self, gen, name, vm, tag)
        self.now = now
        self.threads.setdefault(vm, set()).add(th)
        self._ready(th, None)
        self._drain()
        return th

    def ioreq_done(self, vm: int, vcpu: int, seq: int, value: int, now: float) -> bool:
        """IOREQ_DONE for (vm, vcpu, seq): resume its thread with ``value``. False if nothing waits for it."""
        self.now = now
        entry = self.inflight.pop((vm, vcpu, seq), None)
        if entry is None:
            return False
        th, trap = entry
        self._landed(trap, True)
        if not th.dead:
            self._ready(th, value)
        self._drain()
        return True

    def ioreq_refused(self, vm: int, vcpu: int, seq: int, refusal: Refusal, now: float) -> bool:
        """An ERROR for (vm, vcpu, seq), or the shell could not send it. False if nothing waits for it."""
        self.now = now
        entry = self.inflight.pop((vm, vcpu, seq), None)
        if entry is None:
            return False
        th, trap = entry
        self._landed(trap, False)
        if not th.dead:
            if trap.tolerate:
                self._ready(th, refusal)
            else:
                self._end(th, refusal)
        self._drain()
        return True

    def refuse_vm(self, vm: int, refusal: Refusal, now: float, sticky: bool = True) -> None:
        """Refuse every trap of ``vm`` in flight (VGPU_LOST, vhm lost) and, if ``sticky``, every later one
        until :meth:`forget_vm` (the driver sees the GPU reset and the VM starts over)."""
        if sticky:
            self.lost[vm] = refusal
        for key in [k for k in self.inflight if k[0] == vm]:
            self.ioreq_refused(*key, refusal, now)

    def refuse_all(self, refusal: Refusal, now: float) -> None:
        """Refuse every trap in flight (the hypervisor is gone)."""
        for key in list(self.inflight):
            self.ioreq_refused(*key, refusal, now)

    def forget_vm(self, vm: int) -> None:
        """The VM was torn down: stop its threads, drop its traps in flight, let a new VM of that id trap."""
        self.lost.pop(vm, None)
        for key in [k for k in self.inflight if k[0] == vm]:
            th, trap = self.inflight.pop(key)
            self._landed(trap, False)
        for th in list(self.threads.get(vm, ())):
            self.kill(th)
        self.threads.pop(vm, None)
        self._drain()

    def kill(self, th: Thread) -> None:
        """Stop a thread where it is (a sibling vCPU failed, the display went with its VM)."""
        if th.dead:
            return
        blocked = th.blocked_on
        if isinstance(blocked, Lock):
            blocked.waiters = deque((t, tr) for t, tr in blocked.waiters if t is not th)
        elif isinstance(blocked, Signal) and th in blocked.waiters:
            blocked.waiters.remove(th)
        # a trap in flight stays in flight (the vCPU's slot is busy until it lands): only the thread goes
        self._end(th, Failed(Killed(f"{th.name} stopped")))

    def advance(self, now: float) -> None:
        """Time passed: wake sleepers whose deadline came, refuse traps that timed out."""
        self.now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, token, what = heapq.heappop(timers)
            if isinstance(what, Thread):
                if not what.dead and what.timer == token:
                    sig = what.blocked_on
                    if isinstance(sig, Signal) and what in sig.waiters:
                        sig.waiters.remove(what)
                    self._ready(what, False)
            else:
                entry = self.inflight.get(what)
                if entry is not None and entry[1].t0 + self.ioreq_timeout <= now:
                    self.timeouts += 1
                    self.ioreq_refused(*what, Refusal(ErrorCode.TIMEOUT,
                                                      f"ioreq {what} not completed in {self.ioreq_timeout}s"),
                                       now)
        self._drain()

    def next_deadline(self) -> float | None:
        """When :meth:`advance` next has something to do (None: nothing is timed)."""
        timers = self._timers
        while timers:
            _, token, what = timers[0]
            live = (not what.dead and what.timer == token) if isinstance(what, Thread) else what in self.inflight
            if live:
                return timers[0][0]
            heapq.heappop(timers)
        return None

    # ---------------------------------------------------------------------------------------- internals
    def _ready(self, th: Thread, value: Any) -> None:
        if not th.waiting:  # already made ready by another event (a fire and a deadline at once): once only
            return
        th.waiting = False
        th.timer = 0  # its deadline, if any, is spent: the heap entry goes stale
        th.blocked_on = None
        self._ready_q.append((th, value))

    def _drain(self) -> None:
        q = self._ready_q
        while q:
            th, value = q.popleft()
            if not th.dead:
                self._step(th, value)

    def _step(self, th: Thread, value: Any) -> None:
        """Run ``th`` until it blocks or ends (``th.waiting`` is set again where it blocks)."""
        gen = th.gen
        th.granted = None
        while True:
            try:
                op = gen.send(value)
            except StopIteration as stop:
                self._finish(th, Done(stop.value))
                return
            except Exception as err:  # the thread's own failure (a hang, a wrong result): its outcome
                self._finish(th, Failed(err))
                return
            t = type(op)
            if t is Trap:
                assert isinstance(op, Trap)
                lost = self.lost.get(op.req.vm)
                if lost is not None:  # the VM's GPU was reset: every access fails until it is torn down
                    if op.tolerate:
                        value = lost
                        continue
                    self._end(th, lost)
                    return
                lock = op.vcpu.lock
                if lock.owner is None:
                    lock.owner = th
                    op.took_lock = True
                elif lock.owner is not th:
                    th.blocked_on = lock
                    th.waiting = True
                    lock.waiters.append((th, op))
                    return
                self._issue(th, op)
                return
            if t is Acquire:
                assert isinstance(op, Acquire)
                lock = op.lock
                if lock.owner is None:
                    lock.owner = th
                    value = None
                    continue
                th.blocked_on = lock
                th.waiting = True
                lock.waiters.append((th, None))
                return
            if t is Wait:
                assert isinstance(op, Wait)
                if op.deadline is not None and op.deadline <= self.now:
                    value = False
                    continue
                th.blocked_on = op.signal if op.signal is not None else op
                th.waiting = True
                if op.signal is not None:
                    op.signal.waiters.append(th)
                if op.deadline is not None:
                    th.timer = next(self._tokens)
                    heapq.heappush(self._timers, (op.deadline, th.timer, th))
                else:
                    th.timer = 0
                return
            self._finish(th, Failed(TypeError(f"{th.name} yielded {op!r}, not a guest operation")))
            return

    def _issue(self, th: Thread, trap: Trap) -> None:
        req = trap.req
        trap.t0 = self.now
        key = (req.vm, req.vcpu, req.seq)
        th.blocked_on = trap
        th.waiting = True
        self.inflight[key] = (th, trap)
        self.outbox.append(req)
        heapq.heappush(self._timers, (self.now + self.ioreq_timeout, next(self._tokens), key))

    def _landed(self, trap: Trap, done: bool) -> None:
        """A trap's flight ended: count it, free the vCPU's slot."""
        if done:
            trap.vcpu.completed(trap, self.now - trap.t0)
        if trap.took_lock:
            trap.took_lock = False
            trap.vcpu.lock.release()

    def _end(self, th: Thread, outcome: Outcome) -> None:
        """End a blocked thread from outside (a refusal, a kill): its ``finally`` blocks run, without yields."""
        th.dead = True
        th.blocked_on = None
        self.ending = outcome
        try:
            th.gen.close()
        except Exception as err:  # a finally that yields or raises: reported with the outcome
            outcome = Failed(err) if not isinstance(outcome, Refusal) else outcome
        finally:
            self.ending = None
        self._finish(th, outcome)

    def _finish(self, th: Thread, outcome: Outcome) -> None:
        th.dead = True
        th.waiting = False
        th.blocked_on = None
        lock, th.granted = th.granted, None
        if lock is not None and lock.owner is th:  # handed a lock it never resumed to take: pass it on
            lock.release()
        th.outcome = outcome
        live = self.threads.get(th.vm)
        if live is not None:
            live.discard(th)
        self.finished.append(th)


class Killed(Exception):
    """A thread was stopped from outside (:meth:`Runtime.kill`)."""


def drive(gen: Gen[T], answer: Callable[[m.Ioreq], int | Refusal], rt: Runtime | None = None) -> T:
    """Run one guest thread to its end, answering each ioreq at once with ``answer(req)`` (tests, tools:
    a host in the same process). Returns the thread's value; raises what it raised, or a RuntimeError if it
    was refused or is left blocked (waiting for an interrupt nobody sends, say)."""
    rt = rt if rt is not None else Runtime()
    th = rt.spawn(gen, rt.now, "drive")
    while rt.outbox:
        req = rt.outbox.pop(0)
        got = answer(req)
        if isinstance(got, Refusal):
            rt.ioreq_refused(req.vm, req.vcpu, req.seq, got, rt.now)
        else:
            rt.ioreq_done(req.vm, req.vcpu, req.seq, got, rt.now)
    rt.finished = [t for t in rt.finished if t is not th]
    out = th.outcome
    if isinstance(out, Done):
        return out.value  # type: ignore[no-any-return]
    if isinstance(out, Failed):
        raise out.error
    if isinstance(out, Refusal):
        raise RuntimeError(f"refused: {out.code.value}: {out.reason}")
    raise RuntimeError(f"{th.name} is blocked on {th.blocked_on!r}")
