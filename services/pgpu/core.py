"""PgpuCore: the physical GPU as a sans-I/O object (GGTT + MMIO + four engines over machine memory).

Every entry point takes the clock time ``now`` (seconds, any monotonic clock) and never raises: a request
the GPU refuses is answered by a returned :class:`~gvtsim.protocol.errors.Refusal` (the ERROR code and
reason the shell replies with), as every core does. The shell drives it:

    core.submit("rcs", [desc], tag, now, owner)      # ELSP_SUBMIT
    events = core.advance(now, "rcs")                # run a chunk, collect the events now due
    core.next_deadline("rcs")                        # when to call advance again if not runnable()
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ...protocol.errors import ErrorCode, Refusal
from ...hardware.engines import BY_NAME, GPU_ENGINES
from ...hardware.gtt import LEVELS_BY_MODE
from ...hardware.regs import NUM_FENCES
from ..common.memory import MachineMemory
from .cmd_streamer import Limits
from .context import ContextDescriptor
from .engine import Engine, PortBusy
from .events import EVENT_KINDS, EngineEvent
from .ggtt import Ggtt, GgttRangeError, PageFault
from .mmio import Mmio, MmioError
from .timing import TimingModel

#: how many ended submissions (by tag) pgpu remembers the events of, for a restarted gvt's WORKLOAD_QUERY
ENDED_TAGS = 16384

#: the device gvt sees through STATUS (SKL GT2 0x1912 rev 6; gvt/gtt.c, gvt/aperture_gm.c: msi_cap 0xAC on SKL)
GPU_IDENTITY = {"vendor": 0x8086, "device": 0x1912, "revision": 6, "msi_cap": 0xAC, "fences": NUM_FENCES}


@dataclass(frozen=True)
class PgpuConfig:
    """Configuration (flags of ``gvtsim pgpu``)."""

    gm_mb: int = 4096
    aperture_mb: int = 1024
    time_scale: float = 1.0  # clock seconds per simulated second (0: deliver as fast as possible)
    gpu_speed: float = 1.0  # cost divisor
    watchdog_ms: float = 100.0  # simulated time a context may run
    watchdog_cmds: int = 200_000  # commands a context may execute
    budget: int = 20_000  # commands per advance() chunk
    profile: str = "real"  # the GPU profile reported to gvt (services/common/gpu_profiles.py)


class PgpuCore:
    """The physical GPU."""

    def __init__(self, mem: MachineMemory, config: PgpuConfig | None = None) -> None:
        self.config = cfg = config or PgpuConfig()
        if cfg.aperture_mb > cfg.gm_mb:
            raise ValueError("aperture larger than GM")
        self.mem = mem
        self.ggtt = Ggtt(cfg.gm_mb << 20)
        self.mmio = Mmio(on_flush=self.ggtt.flush, on_reset=self._gdrst_reset)
        self.timing = TimingModel(speed=cfg.gpu_speed)
        self.limits = Limits(watchdog_ns=cfg.watchdog_ms * 1e6, watchdog_cmds=cfg.watchdog_cmds)
        self.engines = {name: Engine(name, mem, self.ggtt, self.mmio, self.timing, self.limits, cfg.time_scale)
                        for name in GPU_ENGINES}
        self.counters: Counter[str] = Counter()
        self._now = 0.0
        # tag -> the events of that submission once due (delivered or not): a gvt restarted from its saved
        # state asks what became of the submissions its predecessor made (WORKLOAD_QUERY)
        self.ended: OrderedDict[int, list[EngineEvent]] = OrderedDict()

    # ----------------------------------------------------------------------------------------- GGTT
    def ggtt_write(self, entries: Iterable[tuple[int, int]]) -> int | Refusal:
        """Write ``[index, pte]`` pairs (all or nothing) and flush the GGTT TLB. Returns how many were
        written, or a bad_address refusal (an index past the GGTT; nothing is written)."""
        try:
            return self.ggtt.write_batch(entries)
        except GgttRangeError as err:
            self.counters["ggtt_write_refused"] += 1
            return Refusal(ErrorCode.BAD_ADDRESS, str(err))

    def ggtt_fill(self, index: int, count: int, pte: int) -> int | Refusal:
        """Write ``count`` entries from ``index`` with ``pte`` (all or nothing) and flush the GGTT TLB."""
        try:
            return self.ggtt.fill(index, count, pte)
        except GgttRangeError as err:
            self.counters["ggtt_write_refused"] += 1
            return Refusal(ErrorCode.BAD_ADDRESS, str(err))

    def ggtt_read(self, index: int, count: int) -> list[int] | Refusal:
        """Entries ``[index, index + count)``, or a bad_address refusal for a range past the GGTT."""
        try:
            return self.ggtt.read(index, count)
        except GgttRangeError as err:
            self.counters["ggtt_read_refused"] += 1
            return Refusal(ErrorCode.BAD_ADDRESS, str(err))

    # ----------------------------------------------------------------------------------------- MMIO
    def mmio_read(self, offset: int, size: int, now: float) -> int | Refusal:
        """Read a physical register, or a bad_address refusal (unaligned, outside BAR0)."""
        self._now = now
        try:
            return self.mmio.read(offset, size)
        except MmioError as err:
            self.counters["mmio_refused"] += 1
            return Refusal(ErrorCode.BAD_ADDRESS, str(err))

    def mmio_write(self, offset: int, size: int, value: int, now: float) -> Refusal | None:
        """Write a physical register (GFX_FLSH_CNTL flushes the GGTT TLB, GDRST resets engines).
        Returns None, or a bad_address refusal (nothing written)."""
        self._now = now
        try:
            self.mmio.write(offset, size, value)
        except MmioError as err:
            self.counters["mmio_refused"] += 1
            return Refusal(ErrorCode.BAD_ADDRESS, str(err))
        return None

    def _gdrst_reset(self, engine: str) -> None:
        self.counters["gdrst_resets"] += 1
        self.engines[engine].reset(self._now)

    # ------------------------------------------------------------------------------------- execlists
    def submit(self, engine: str, descs: list[int], tag: int, now: float, owner: Any = None) -> Refusal | None:
        """ELSP submission of one or two descriptors (element 0 first). An invalid element 1 means "no
        element 1", as on the hardware; element 0 must be valid.

        Returns None when the port took the elements, else a refusal (nothing was queued): bad_request
        (unknown engine, element 0 not valid, unsupported addressing mode), bad_address (LRCA not mapped in
        the GGTT), no_space (port busy).
        """
        self._now = now
        eng = self.engines.get(engine)
        if eng is None or not 1 <= len(descs) <= 2:
            self.counters["submit_refused"] += 1
            return Refusal(ErrorCode.BAD_REQUEST, f"engine {engine!r} with {len(descs)} descriptors")
        elements = [ContextDescriptor(d & 0xFFFF_FFFF_FFFF_FFFF) for d in descs]
        if len(elements) == 2 and not elements[1].valid:
            elements.pop()
        for i, desc in enumerate(elements):
            refused = self._check_descriptor(i, desc)
            if refused is not None:
                self.counters["submit_refused"] += 1
                return refused
        try:
            eng.accept(elements, tag, owner, now)
        except PortBusy as err:
            self.counters["submit_port_busy"] += 1
            return Refusal(ErrorCode.NO_SPACE, str(err))
        self.counters["submits"] += 1
        return None

    def _check_descriptor(self, i: int, desc: ContextDescriptor) -> Refusal | None:
        if not desc.valid:
            return Refusal(ErrorCode.BAD_REQUEST, f"element {i} descriptor {desc.raw:#x} not valid")
        if desc.addressing_mode not in LEVELS_BY_MODE:
            return Refusal(ErrorCode.BAD_REQUEST,
                           f"element {i}: addressing mode {desc.addressing_mode} not supported (1 or 3)")
        for gma in (desc.lrca, desc.ring_context):
            try:
                self.ggtt.translate(gma)
            except PageFault as fault:
                return Refusal(ErrorCode.BAD_ADDRESS, f"element {i}: LRC not mapped: {fault.reason}")
        return None

    def reset_engine(self, engine: str, now: float) -> int | Refusal:
        """ENGINE_RESET: drop the engine's running and pending contexts. Returns how many were dropped, or a
        bad_request refusal for an unknown engine."""
        self._now = now
        eng = self.engines.get(engine)
        if eng is None:
            return Refusal(ErrorCode.BAD_REQUEST, f"no engine {engine!r}")
        self.counters["engine_resets"] += 1
        return eng.reset(now)

    # ------------------------------------------------------------------------------------------- time
    def advance(self, now: float, engine: str | None = None) -> list[EngineEvent]:
        """Run one chunk (``config.budget`` commands) on ``engine`` (or every engine) and return the events
        due at ``now``, oldest first."""
        self._now = now
        events: list[EngineEvent] = []
        for eng in ([self.engines[engine]] if engine else self.engines.values()):
            if eng.runnable(now):
                eng.step(now, self.config.budget)
            events.extend(eng.pop_due(now))
            if eng.refused:  # counted by reason in STATUS: what the hardware no-op'd in non-privileged batches
                self.counters.update(eng.refused)
                eng.refused.clear()
        for ev in events:
            self.counters[f"events_{ev.kind}"] += 1
            self._remember(ev)
        return events

    def _remember(self, ev: EngineEvent) -> None:
        got = self.ended.get(ev.tag)
        if got is None:
            self.ended[ev.tag] = [ev]
            if len(self.ended) > ENDED_TAGS:
                self.ended.popitem(last=False)
        else:
            got.append(ev)

    def workload_status(self, tags: Iterable[int], mine: Any = None) -> tuple[list[int], list[EngineEvent]]:
        """What became of the submissions ``tags`` (WORKLOAD_QUERY): the tags still queued or running on an
        engine (or whose events are not yet due), and the events of those that ended, in order. ``mine``:
        a predicate on a submission's owner (the submitter's identity); others' submissions are unknown."""
        def ok(owner: Any) -> bool:
            return mine is None or bool(mine(owner))

        live: set[int] = set()
        for eng in self.engines.values():
            live.update(el.tag for sub in eng.port for el in sub.elements if ok(el.owner))
            if eng.running is not None and ok(eng.running.element.owner):
                live.add(eng.running.element.tag)
            live.update(e.tag for e in eng.events if ok(e.owner))
        active: list[int] = []
        ended: list[EngineEvent] = []
        for tag in dict.fromkeys(tags):
            if tag in live:
                active.append(tag)
            elif tag in self.ended:
                ended.extend(e for e in self.ended[tag] if ok(e.owner))
        return active, ended

    def runnable(self, engine: str, now: float) -> bool:
        """True when ``advance`` has work to do on ``engine`` right now."""
        eng = self.engines[engine]
        return eng.runnable(now) or bool(eng.events and eng.events[0].due <= now)

    def next_deadline(self, engine: str) -> float | None:
        """When ``engine`` next needs an ``advance`` by itself (None: only a submit can wake it)."""
        return self.engines[engine].next_deadline()

    def idle(self) -> bool:
        """No engine has queued work or undelivered events."""
        return all(not e.port and e.running is None and not e.events for e in self.engines.values())

    # ----------------------------------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        """STATUS info: the device identity gvt relies on, per-engine figures, events by kind."""
        cfg = self.config
        engines = {}
        for name, eng in self.engines.items():
            s = eng.stats
            engines[name] = {"busy_ns": s["busy_ns"], "contexts": s["contexts"], "commands": s["commands"],
                             "resets": s["resets"], "submissions": s["submissions"],
                             "queued": sum(len(x.elements) for x in eng.port) + (eng.running is not None),
                             "mmio_base": BY_NAME[name].base, "tlb_invalidations": self.mmio.tlb_invalidations[name],
                             "wa_batches": s["wa_batches"]}
        return {
            "gpu": {**GPU_IDENTITY, "gm_mb": cfg.gm_mb, "aperture_mb": cfg.aperture_mb, "profile": cfg.profile},
            "engines": engines,
            "events": {kind: sum(e.stats[f"events_{kind}"] for e in self.engines.values()) for kind in EVENT_KINDS},
            "ggtt": {"entries": self.ggtt.num_entries, "writes": self.ggtt.writes, "flushes": self.ggtt.flushes},
            "time_scale": cfg.time_scale, "gpu_speed": cfg.gpu_speed,
        }
