"""The command streamer: executes a context's ring [head, tail) and the batch buffers it starts.

* The ring lives in the GGTT at RING_START; offsets wrap at the ring size (gvt/handlers.c, gvt/execlist.c).
* MI_BATCH_BUFFER_START from the ring starts a first-level batch; from a first-level batch with bit 22 it
  calls a second-level batch (whose BB_END returns to the first level); without bit 22 it chains (jumps, no
  return). A second-level start from the ring, or from a second-level batch, is refused (gvt/cmd_parser.c).
  Bit 8 puts the batch in the PPGTT, else in the GGTT.
* A PPGTT batch of a context that has a PPGTT is non-privileged (gvt does not scan it: cmd_parser.c
  batch_buffer_needs_scan), and so is every batch it starts. The hardware no-ops privileged commands in
  such a batch (i915_cmd_parser.c: "the hardware will noop these commands in unsecure batches"): here a
  register load (MI_LOAD_REGISTER_IMM) and any GGTT access (the Use Global GTT bit of MI_STORE_DATA_IMM,
  MI_STORE_REGISTER_MEM, MI_FLUSH_DW and PIPE_CONTROL post-sync writes) are skipped, and a batch start from
  it stays in the PPGTT whatever its address-space bit says; each is counted by reason (``refused``).
* Every command costs simulated time (timing.py). The watchdog stops a context whose simulated time or
  command count passes its limit (an endless batch loop): status HANG.
* Execution is resumable: :meth:`Streamer.run` executes at most ``budget`` commands, so the shell can
  interleave other work with a long context.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ...hardware.regs import TIMESTAMP_NS_PER_TICK
from ..common.memory import MachineMemory, MemoryRangeError
from .commands import COMMANDS, CommandError, decode, lookup
from .context import RingContext
from .dma import Dma
from .events import CtxStatus
from .ggtt import Ggtt, PageFault
from .ppgtt import Ppgtt
from .timing import TimingModel


@dataclass(frozen=True)
class Limits:
    """Watchdog limits of one context run."""

    watchdog_ns: float = 100e6
    watchdog_cmds: int = 200_000


@dataclass
class Frame:
    """A batch buffer being executed: its address space, the next dword, its level (1 or 2)."""

    dma: Dma
    gma: int
    level: int
    privileged: bool = True  # False: a PPGTT batch of a context with a PPGTT, or a batch it started
    end: int | None = None  # a buffer of fixed length (the indirect-ctx buffer) ends here, not by BB_END


class Nooped(Exception):
    """A privileged command in a non-privileged batch: the hardware skips it (see the module docstring)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamResult:
    """How a context run ended."""

    status: CtxStatus
    detail: int = 0
    reason: str = ""


class Streamer:
    """Runs one context. Implements the ``commands.Exec`` protocol for the handlers.

    Args:
        engine: engine name (selects the command table rows).
        ring: the ring state read from the context image.
        ppgtt: the context's PPGTT, or None (all roots zero: PPGTT accesses go through the GGTT).
        load_register: where MI_LOAD_REGISTER_IMM writes go.
        clock_ns: the engine's GPU clock at the start of the run (for timestamps).
    """

    def __init__(self, engine: str, mem: MachineMemory, ggtt: Ggtt, ppgtt: Ppgtt | None, ring: RingContext,
                 timing: TimingModel, limits: Limits, load_register: Callable[[int, int], None],
                 clock_ns: float = 0.0, read_register: Callable[[int], int] | None = None) -> None:
        self.engine = engine
        self.ggtt_dma = Dma(mem, ggtt, "GGTT")
        self.ppgtt_dma = Dma(mem, ppgtt, "PPGTT") if ppgtt is not None else self.ggtt_dma
        self.ring_start = ring.start
        self.ring_size = ring.size
        self.head = ring.head
        self.tail = ring.tail
        self.timing = timing
        self.limits = limits
        self._load_register = load_register
        self._read_register = read_register or (lambda offset: 0)
        self.clock_ns = clock_ns
        self.stack: list[Frame] = []
        self.cost_ns = timing.ctx_switch()
        self.commands = 0
        self.notifies: list[tuple[float, str]] = []  # (simulated ns into the run, why)
        self.counts: dict[str, int] = {}
        self.refused: Counter[str] = Counter()  # privileged commands skipped in non-privileged batches, by reason
        self.result: StreamResult | None = None
        self._cost = {c.name: timing.command(c.name) for c in COMMANDS}
        self._restore: list[Frame] = []  # workaround batches run at context restore, before the ring

    def restore_batches(self, indirect: tuple[int, int] | None, per_ctx: int | None) -> None:
        """The render context's workaround batches (GGTT): the indirect-ctx buffer (``(address, bytes)``:
        it ends after that many bytes) then the per-ctx batch (it ends with MI_BATCH_BUFFER_END), both
        privileged first-level batches run before the ring's commands."""
        if per_ctx is not None:
            self._restore.append(Frame(self.ggtt_dma, per_ctx, 1))
        if indirect is not None:
            self._restore.append(Frame(self.ggtt_dma, indirect[0], 1, end=indirect[0] + indirect[1]))

    # --------------------------------------------------------------------------------- Exec protocol
    def _privileged(self) -> bool:
        return not self.stack or self.stack[-1].privileged

    def space(self, ggtt: bool) -> Dma:
        """The GGTT, or the context's PPGTT. Raises Nooped for a GGTT access from a non-privileged batch."""
        if ggtt and not self._privileged():
            raise Nooped("nonpriv_ggtt_access")
        return self.ggtt_dma if ggtt else self.ppgtt_dma

    def batch_start(self, gma: int, ppgtt: bool, second_level: bool) -> None:
        privileged = self._privileged()
        if not ppgtt and not privileged:  # a non-privileged batch cannot start a privileged (GGTT) one
            self.refused["nonpriv_ggtt_batch_start"] += 1
            ppgtt = True
        dma = self.ppgtt_dma if ppgtt else self.ggtt_dma
        # aliasing PPGTT (no PPGTT roots): "PPGTT" batches are GGTT ones, scanned and shadowed by gvt
        privileged = privileged and not (ppgtt and self.ppgtt_dma is not self.ggtt_dma)
        level = sum(1 for f in self.stack if f.end is None)  # the indirect-ctx buffer starts batches as a ring
        if second_level and level != 1:
            where = "the ring" if level == 0 else "a second-level batch"
            raise CommandError(CtxStatus.BAD_COMMAND, f"second-level MI_BATCH_BUFFER_START from {where}")
        if level == 0 or second_level:
            self.stack.append(Frame(dma, gma, level + 1, privileged))
        else:  # chained: jump, keep the level (and the return point of the level below)
            self.stack[-1] = Frame(dma, gma, level, privileged)

    def batch_end(self) -> None:
        if not self.stack:
            raise CommandError(CtxStatus.BAD_COMMAND, "MI_BATCH_BUFFER_END in the ring")
        self.stack.pop()

    def notify(self, why: str) -> None:
        self.notifies.append((self.cost_ns, why))

    def load_register(self, offset: int, value: int) -> None:
        if not self._privileged():
            raise Nooped("nonpriv_register_load")
        self._load_register(offset, value)

    def read_register(self, offset: int) -> int:
        return self._read_register(offset)

    def timestamp(self) -> int:
        return int((self.clock_ns + self.cost_ns) / TIMESTAMP_NS_PER_TICK)

    def charge_regs(self, nregs: int) -> None:
        self.cost_ns += self.timing.lri(nregs)

    def charge_bytes(self, nbytes: int) -> None:
        self.cost_ns += self.timing.blit(nbytes)

    # ------------------------------------------------------------------------------------- fetching
    def _ring_dwords(self, count: int) -> list[int]:
        avail = (self.tail - self.head) % self.ring_size
        if count * 4 > avail:
            raise CommandError(CtxStatus.BAD_COMMAND,
                               f"command of {count} dwords at ring offset {self.head:#x} runs past the tail")
        first = min(count, (self.ring_size - self.head) // 4)
        out = self.ggtt_dma.dwords(self.ring_start + self.head, first)
        if first < count:  # wraps to the ring start
            out += self.ggtt_dma.dwords(self.ring_start, count - first)
        return out

    # ---------------------------------------------------------------------------------------- running
    def run(self, budget: int) -> StreamResult | None:
        """Execute up to ``budget`` commands. Returns the result once the context ended, else None."""
        if self.result is not None:
            return self.result
        try:
            self.result = self._run(budget)
        except PageFault as fault:
            self.result = StreamResult(CtxStatus.PAGE_FAULT, fault.gma, fault.reason)
        except CommandError as err:
            self.result = StreamResult(CtxStatus(err.status), err.detail, err.reason)
        except MemoryRangeError as err:
            self.result = StreamResult(CtxStatus.PAGE_FAULT, 0, str(err))
        return self.result

    def _run(self, budget: int) -> StreamResult | None:
        engine, stack, cost, counts = self.engine, self.stack, self._cost, self.counts
        limits = self.limits
        for _ in range(budget):
            if not stack and self._restore:
                stack.append(self._restore.pop())
            if stack:
                frame = stack[-1]
                if frame.end is not None and frame.gma >= frame.end:
                    stack.pop()
                    continue
                hdr = frame.dma.dwords(frame.gma, 1)[0]
            elif self.head == self.tail:
                return StreamResult(CtxStatus.OK)
            else:
                frame = None
                hdr = self.ggtt_dma.dwords(self.ring_start + self.head, 1)[0]
            spec = lookup(engine, hdr)
            if spec is None:
                info = decode(engine, hdr)
                if info is None:
                    raise CommandError(CtxStatus.UNKNOWN_COMMAND, f"unknown command {hdr:#010x} on {engine}", hdr)
                raise CommandError(CtxStatus.UNSUPPORTED_COMMAND,
                                   f"{info.name} ({hdr:#010x}) on {engine}: decoded, not executed by the emulator", hdr)
            n = spec.length(hdr)
            if frame is not None:
                dws = [hdr] + frame.dma.dwords(frame.gma + 4, n - 1) if n > 1 else [hdr]
                frame.gma += 4 * n
            else:
                dws = self._ring_dwords(n)
                self.head = (self.head + 4 * n) % self.ring_size
            self.cost_ns += cost[spec.name]
            try:
                spec.handler(self, dws)
            except Nooped as skipped:  # the command does nothing (its checks ran before any effect)
                self.refused[skipped.reason] += 1
            self.commands += 1
            counts[spec.name] = counts.get(spec.name, 0) + 1
            if self.cost_ns > limits.watchdog_ns or self.commands >= limits.watchdog_cmds:
                return StreamResult(CtxStatus.HANG, self.commands,
                                    f"watchdog: {self.commands} commands, {self.cost_ns / 1e6:.3f} ms simulated")
        return None
