"""One engine (RCS, BCS, VCS, VECS) with its execlist port.

gvt/handlers.c, gvt/execlist.c: an ELSP write submits one or two context descriptors (element 0 runs first, then
element 1). The port holds the running submission and one pending submission; a third is refused ("port busy"). Each
element is loaded from its context image (GGTT page lrca + 1), run by the command streamer, and on success
saved back (ring_header := tail, ctx_timestamp advanced), as gvt's ``update_guest_context`` expects.

Time: the engine executes a context as soon as it starts (memory effects land then), but its events are
due at ``start + simulated cost x time_scale`` and the next element starts only when the engine is free
again in clock time, so engines are busy for the simulated spans.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from ...hardware.engines import BY_NAME
from ...hardware.gtt import LEVELS_BY_MODE
from ...hardware.regs import EXECLIST_STATUS, RING_CTL, RING_HEAD, RING_START, RING_TAIL, RING_VALID
from ..common.memory import MachineMemory
from .cmd_streamer import Limits, StreamResult, Streamer
from .context import ContextDescriptor, read_ring_context, write_back
from .events import KIND_BY_STATUS, CtxStatus, EngineEvent
from .ggtt import Ggtt, PageFault
from .mmio import Mmio
from .ppgtt import Ppgtt
from .timing import TimingModel

PORT_DEPTH = 2  # running + pending submission


class PortBusy(Exception):
    """The execlist port already holds a running and a pending submission."""


@dataclass
class Element:
    """One accepted context descriptor."""

    desc: ContextDescriptor
    tag: int
    owner: Any
    submitted_at: float


@dataclass
class Submission:
    """One ELSP write: its elements still to run."""

    elements: deque[Element] = field(default_factory=deque)


@dataclass
class Running:
    """The element on the engine."""

    element: Element
    streamer: Streamer
    start: float
    ring_ctx: int  # machine address of the ring-context page


class Engine:
    """An engine and its execlist port."""

    def __init__(self, name: str, mem: MachineMemory, ggtt: Ggtt, mmio: Mmio, timing: TimingModel,
                 limits: Limits, time_scale: float) -> None:
        self.name = name
        self.base = BY_NAME[name].base
        self.mem, self.ggtt, self.mmio = mem, ggtt, mmio
        self.timing, self.limits, self.time_scale = timing, limits, time_scale
        self.port: deque[Submission] = deque()
        self.running: Running | None = None
        self.events: deque[EngineEvent] = deque()
        self.free_at = 0.0
        self.clock_ns = 0.0  # GPU time this engine has been busy (also its timestamp base)
        self.seq = 0
        self.stats: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # commands no-op'd in non-privileged batches (cmd_streamer.py)

    # ----------------------------------------------------------------------------------- submission
    def accept(self, descs: list[ContextDescriptor], tag: int, owner: Any, now: float) -> None:
        """Queue one ELSP submission. Raises PortBusy."""
        if len(self.port) >= PORT_DEPTH:
            raise PortBusy(f"{self.name} execlist port busy ({PORT_DEPTH} submissions pending)")
        self.port.append(Submission(deque(Element(d, tag, owner, now) for d in descs)))
        self.stats["submissions"] += 1

    def reset(self, now: float) -> int:
        """Engine reset: drop the running and pending contexts and their undelivered events (no events are
        sent for them). Returns how many contexts were dropped."""
        in_flight = [e for e in self.events if e.due > now]  # executed, but still running in GPU time
        dropped = (sum(len(s.elements) for s in self.port) + (1 if self.running else 0)
                   + sum(1 for e in in_flight if e.kind != "user_interrupt"))
        self.port.clear()
        self.running = None
        self.events = deque(e for e in self.events if e.due <= now)
        self.free_at = min(self.free_at, now)
        self._hw_reset()
        self.stats["resets"] += 1
        self.stats["dropped_by_reset"] += dropped
        return dropped

    def _hw_reset(self) -> None:
        for reg in (RING_TAIL, RING_HEAD, RING_START, RING_CTL, EXECLIST_STATUS, EXECLIST_STATUS + 4):
            self.mmio.set(self.base + reg, 0)

    # -------------------------------------------------------------------------------------- running
    def runnable(self, now: float) -> bool:
        """True when :meth:`step` has work to do at ``now``."""
        return self.running is not None or (bool(self.port) and now >= self.free_at)

    def next_deadline(self) -> float | None:
        """The next clock time something happens on this engine by itself (an event falls due, or the
        engine becomes free for a queued element)."""
        times = [self.events[0].due] if self.events else []
        if self.port and self.running is None:
            times.append(self.free_at)
        return min(times) if times else None

    def pop_due(self, now: float) -> list[EngineEvent]:
        """Events due at ``now``, in order."""
        out: list[EngineEvent] = []
        while self.events and self.events[0].due <= now:
            out.append(self.events.popleft())
        return out

    def step(self, now: float, budget: int) -> int:
        """Start and/or continue the running context for at most ``budget`` commands. Returns the number
        of commands executed."""
        if self.running is None:
            if not self.port or now < self.free_at:
                return 0
            element = self.port[0].elements.popleft()
            if not self.port[0].elements:
                self.port.popleft()
            self._start(element)
            if self.running is None:
                return 0
        run = self.running
        before = run.streamer.commands
        try:
            result = run.streamer.run(budget)
        except Exception as err:  # a bug in a handler must not escape: end the context, reset the engine
            self.stats["internal_errors"] += 1
            result = StreamResult(CtxStatus.INTERNAL, 0, f"{type(err).__name__}: {err}")
        executed = run.streamer.commands - before
        if result is not None:
            self._finish(run, result)
        return executed

    def _start(self, element: Element) -> None:
        desc = element.desc
        start = max(self.free_at, element.submitted_at)
        self.stats["contexts"] += 1
        try:
            ring_ctx = self.ggtt.translate(desc.ring_context)
            ring = read_ring_context(self.mem, ring_ctx, rcs=self.name == "rcs")
        except PageFault as fault:
            self._terminal(element, start, 0.0, StreamResult(CtxStatus.PAGE_FAULT, fault.gma, fault.reason))
            return
        except Exception as err:
            self._terminal(element, start, 0.0, StreamResult(CtxStatus.BAD_CONTEXT, desc.ring_context, str(err)))
            return
        if not ring.ctl & RING_VALID or ring.head >= ring.size or ring.tail >= ring.size:
            why = f"ring ctl {ring.ctl:#x} head {ring.head:#x} tail {ring.tail:#x} (size {ring.size:#x})"
            self._terminal(element, start, 0.0, StreamResult(CtxStatus.BAD_CONTEXT, desc.ring_context, why))
            return
        roots = ring.pdps if LEVELS_BY_MODE[desc.addressing_mode] == 3 else ring.pdps[:1]
        ppgtt = Ppgtt(self.mem, LEVELS_BY_MODE[desc.addressing_mode], roots) if any(roots) else None
        streamer = Streamer(self.name, self.mem, self.ggtt, ppgtt, ring, self.timing, self.limits,
                            self.mmio.load, self.clock_ns, read_register=self.mmio.read)
        for reg, value in ((RING_HEAD, ring.head), (RING_TAIL, ring.tail), (RING_START, ring.start),
                           (RING_CTL, ring.ctl), (EXECLIST_STATUS, 1 << 18), (EXECLIST_STATUS + 4, desc.ctx_id)):
            self.mmio.set(self.base + reg, value)  # execlist_0_active, current context id
        indirect, per_ctx = ring.wa_batches()
        if indirect is not None or per_ctx is not None:  # run at context restore, before the ring
            streamer.restore_batches(indirect, per_ctx)
            self.stats["wa_batches"] += 1
        self.running = Running(element, streamer, start, ring_ctx)

    def _finish(self, run: Running, result: StreamResult) -> None:
        st = run.streamer
        self.running = None
        self.stats["commands"] += st.commands
        for name, n in st.counts.items():
            self.stats[f"cmd_{name}"] += n
        self.refused.update(st.refused)
        for offset_ns, why in st.notifies:
            self._event(run.element, "user_interrupt", run.start + offset_ns * 1e-9 * self.time_scale, 0, 0,
                        int(offset_ns), why)
        if result.status == CtxStatus.OK:
            write_back(self.mem, run.ring_ctx, st.tail, st.cost_ns)
            self.mmio.set(self.base + RING_HEAD, st.tail)
        self._terminal(run.element, run.start, st.cost_ns, result)
        if result.status != CtxStatus.OK:
            self._hw_reset()  # a faulted or hung engine is reset and usable again
            self.stats["resets"] += result.status == CtxStatus.HANG
        else:
            self.mmio.set(self.base + EXECLIST_STATUS, 0)

    def _terminal(self, element: Element, start: float, cost_ns: float, result: StreamResult) -> None:
        due = start + cost_ns * 1e-9 * self.time_scale
        self.free_at = due
        self.clock_ns += cost_ns
        self.stats["busy_ns"] += int(cost_ns)
        self._event(element, KIND_BY_STATUS[result.status], due, int(result.status), result.detail, int(cost_ns),
                    result.reason)

    def _event(self, element: Element, kind: str, due: float, status: int, detail: int, busy_ns: int,
               reason: str) -> None:
        self.seq += 1
        self.stats[f"events_{kind}"] += 1
        self.events.append(EngineEvent(self.name, kind, element.desc.ctx_id, element.tag, status, detail, busy_ns,
                                       self.seq, reason, due, element.owner))
