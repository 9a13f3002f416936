"""Workloads the GPU really executes and the guest verifies in its own RAM.

Each workload builds a privileged batch in a GGTT-addressed buffer (the blit or the stores, then
MI_BATCH_BUFFER_END); the ring gets MI_BATCH_BUFFER_START(GGTT), a store-dword fence with the request's
seqno, and (if asked) MI_USER_INTERRUPT. After context_complete the guest checks the target bytes and the
fence in its own RAM. ``aperture_copy`` writes its input through the BAR2 aperture window, which the
hypervisor maps straight onto the buffer's machine frames (map_gfn_to_mfn): no trap, the pass-through half.

The ``ppgtt_*`` kinds run on the engine's PPGTT context (created on first use: 3-level on rcs/vcs, 4-level
on bcs/vecs): their batch is a non-privileged PPGTT batch (MI_BATCH_BUFFER_START bit 8) at a GPU virtual
address, and it writes a window of GPU virtual pages that the guest's page tables map onto a pool of guest
pages. Before each one the guest edits its page tables (map, unmap, remap: ``ppgtt_remap`` moves every
window page), each edit a trapped write GVT must shadow before the batch runs; afterwards every pool page
must hold exactly what the mapping at submission time says (written where mapped, untouched elsewhere).

``wa_store`` (render engine) also programs the context's workaround batches for its request, as i915 does
for its own: an indirect-ctx buffer (RCS_INDIRECT_CTX, whole cachelines, NOOP padded) and a per-ctx batch
(BB_PER_CTX_PTR), each storing a fresh value the guest checks with the batch's own stores; GVT must shadow
and scan them, and the GPU runs them at context restore.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from ...protocol.errors import Refusal
from ..common.histo import Histogram
from ..common.memory import PAGE_SIZE
from ...hardware import cmds
from ...hardware.engines import GPU_ENGINES
from .gem import Bo
from .i915 import PpgttContext, VgpuDriver
from .runtime import Gen, Lock, Signal, wait_until

WIDTH, HEIGHT = 64, 16  # pixels (32 bpp): 4 KiB per surface
PITCH = WIDTH * 4
SURFACE = PITCH * HEIGHT
KINDS = ("fill", "copy", "store", "aperture_copy", "ppgtt_store", "ppgtt_fill", "ppgtt_remap", "wa_store")
#: which engines can run a kind (real hardware: the XY_* blits are blitter-engine commands)
ENGINES_FOR: dict[str, tuple[str, ...]] = {
    "fill": ("bcs",), "copy": ("bcs",), "aperture_copy": ("bcs",), "store": GPU_ENGINES,
    "ppgtt_store": GPU_ENGINES, "ppgtt_fill": ("bcs",), "ppgtt_remap": GPU_ENGINES,
    "wa_store": ("rcs",),  # the workaround batches are the render context's
}
#: PPGTT shape of each engine's PPGTT context (both i915 shapes get exercised)
PPGTT_LEVELS = {"rcs": 3, "bcs": 4, "vcs": 3, "vecs": 4}
VA_BATCH = 0x0010_0000  # GPU virtual address of the PPGTT batch
VA_WINDOW = 0x4020_0000  # the window of GPU virtual pages the batches write (another PDP, another PD)
WINDOW_PAGES = 4
POOL_PAGES = 6  # guest pages the window pages are mapped onto (some always unmapped)
STORES_PER_PAGE = 4


@dataclass
class PpgttWindow:
    """One engine's PPGTT workload state: its context, batch page, page pool and the current mapping of
    the window (window page -> pool index, None = unmapped)."""

    ctx: PpgttContext
    batch_gpa: int
    pool: list[int]
    mapping: list[int | None]
    lock: Lock = field(default_factory=Lock)
    edits: int = 0

    def free_pool(self) -> list[int]:
        return [i for i in range(len(self.pool)) if i not in self.mapping]


def kinds_for(engine: str, mix: list[str]) -> list[str]:
    """The kinds of ``mix`` an engine runs, in mix order (a vCPU cycles through them)."""
    return [k for k in mix if engine in ENGINES_FOR.get(k, ())]


class VerifyError(AssertionError):
    """The GPU's result in guest RAM is not what the workload asked for."""


@dataclass
class Surfaces:
    """Long-lived buffers one engine's workloads use (allocated once, after driver init): each engine has
    its own, so workloads running at the same time on two engines never share a target."""

    src: Bo
    dst: Bo
    batch: Bo
    aperture_src: Bo
    wa: Bo | None = None  # render engine: page 0 the indirect-ctx buffer, page 1 the per-ctx batch


def allocate(drv: VgpuDriver) -> Gen[tuple[dict[str, Surfaces], Bo]]:
    """Per-engine surfaces and the shared fence page (one 64-byte slot per engine)."""
    assert drv.gem is not None
    g = drv.gem
    surfaces = {}
    for e in drv.engines:
        src = yield from g.create(SURFACE)
        dst = yield from g.create(SURFACE)
        batch = yield from g.create(4096)
        aperture_src = yield from g.create(SURFACE, mappable=True)
        wa = (yield from g.create(2 * 4096)) if e == "rcs" else None
        surfaces[e] = Surfaces(src=src, dst=dst, batch=batch, aperture_src=aperture_src, wa=wa)
    return surfaces, (yield from g.create(4096))


class WorkloadRunner:
    """Runs numbered workloads on a VM and verifies each one."""

    def __init__(self, drv: VgpuDriver, surfaces: dict[str, Surfaces], fence: Bo, seed: int) -> None:
        self.drv = drv
        self.surfaces = surfaces
        self.fence = fence
        self.rng = random.Random(seed)
        self.seqno = 0
        self.asked_user_irq: dict[str, int] = {e: 0 for e in drv.engines}
        self.windows: dict[str, PpgttWindow] = {}
        self._window_lock = Lock()

    def run(self, kind: str, engine: str, vcpu: int = 0, user_irq: bool = True) -> Gen[None]:
        """Submit one workload of ``kind`` on ``engine`` and verify it. Raises VerifyError / DriverError."""
        if kind.startswith("ppgtt_"):
            yield from self._run_ppgtt(kind, engine, vcpu, user_irq)
            return
        self.seqno += 1
        seq = self.seqno
        m = self.drv.machine
        s = self.surfaces[engine]
        wa: tuple[int, int, int | None] | None = None
        if kind == "fill":
            color = self.rng.getrandbits(32)
            body = cmds.color_blt(s.dst.gm, PITCH, WIDTH, HEIGHT, color)
            expect = color.to_bytes(4, "little") * (WIDTH * HEIGHT)
        elif kind in ("copy", "aperture_copy"):
            pattern = self.rng.randbytes(SURFACE)
            src = s.src if kind == "copy" else s.aperture_src
            if kind == "copy":
                yield from m.write_mem(src.gpa, pattern, vcpu)
            else:
                yield from self._write_through_aperture(src, pattern, vcpu)
            body = cmds.src_copy_blt(s.dst.gm, PITCH, src.gm, PITCH, WIDTH, HEIGHT)
            expect = pattern
        elif kind == "store":
            values = [self.rng.getrandbits(32) for _ in range(16)]
            body = []
            for i, v in enumerate(values):
                body += cmds.store_dword(s.dst.gm + 256 * i, v)
            expect = b""
        elif kind == "wa_store":
            if s.wa is None:
                raise ValueError(f"wa_store on {engine}: only the render engine has workaround batches")
            values = [self.rng.getrandbits(32) for _ in range(4)]
            body = []
            for i, v in enumerate(values):
                body += cmds.store_dword(s.dst.gm + 256 * i, v)
            wa_values = (self.rng.getrandbits(32), self.rng.getrandbits(32))
            indirect = cmds.store_dword(s.dst.gm + 4, wa_values[0])
            indirect += [cmds.MI_NOOP] * (-len(indirect) % 16)  # whole cachelines
            yield from m.write_mem(s.wa.gpa, cmds.to_bytes(indirect), vcpu)
            yield from m.write_mem(s.wa.gpa + 4096, cmds.to_bytes(cmds.store_dword(s.dst.gm + 8, wa_values[1])
                                   + [cmds.MI_BATCH_BUFFER_END]), vcpu)
            wa = (s.wa.gm, len(indirect) // 16, s.wa.gm + 4096)
            expect = b""
        else:
            raise ValueError(kind)
        batch = s.batch
        yield from m.write_mem(batch.gpa, cmds.to_bytes(body + [cmds.MI_BATCH_BUFFER_END]), vcpu)
        ring = cmds.batch_buffer_start(batch.gm) + cmds.store_dword(self.fence.gm + 64 * _slot(engine), seq)
        if user_irq:
            ring.append(cmds.MI_USER_INTERRUPT)
            self.asked_user_irq[engine] += 1
        yield from self.drv.submit(engine, ring, vcpu=vcpu, wait_user_irq=user_irq, wa=wa)
        fence = m.read_u32(self.fence.gpa + 64 * _slot(engine))
        if fence != seq:
            raise VerifyError(f"{kind}#{seq} on {engine}: fence {fence} != {seq}")
        if kind == "wa_store":
            for off, v, what in ((4, wa_values[0], "indirect-ctx"), (8, wa_values[1], "per-ctx")):
                stored = m.read_u32(s.dst.gpa + off)
                if stored != v:
                    raise VerifyError(f"wa_store#{seq}: the {what} batch's store = {stored:#x}, expected {v:#x}")
        if kind in ("store", "wa_store"):
            for i, v in enumerate(values):
                got = m.read_u32(s.dst.gpa + 256 * i)
                if got != v:
                    raise VerifyError(f"store#{seq}: dword {i} = {got:#x}, expected {v:#x}")
        else:
            surface = m.read_mem(s.dst.gpa, SURFACE)
            if surface != expect:
                bad = next(i for i in range(SURFACE) if surface[i] != expect[i])
                raise VerifyError(f"{kind}#{seq} on {engine}: first wrong byte at {bad}")

    # ------------------------------------------------------------------------------------------ PPGTT
    def _window(self, engine: str, vcpu: int) -> Gen[PpgttWindow]:
        """The engine's PPGTT context and window, set up on first use: g2v CREATE, then the batch page
        and the window mapped (trapped writes from then on)."""
        with (yield from self._window_lock.hold()):
            w = self.windows.get(engine)
            if w is not None:
                return w
            ctx = yield from self.drv.create_ppgtt_context(engine, PPGTT_LEVELS.get(engine, 3), vcpu)
            alloc = self.drv.alloc_table_page
            batch_gpa = alloc()
            pool = [alloc() for _ in range(POOL_PAGES)]
            yield from ctx.ppgtt.map(VA_BATCH, batch_gpa, vcpu)
            for i in range(WINDOW_PAGES):
                yield from ctx.ppgtt.map(VA_WINDOW + i * PAGE_SIZE, pool[i], vcpu)
            w = PpgttWindow(ctx, batch_gpa, pool, list(range(WINDOW_PAGES)))
            self.windows[engine] = w
            return w

    def _edit(self, w: PpgttWindow, kind: str, vcpu: int) -> Gen[None]:
        """Page-table edits between workloads: ``ppgtt_remap`` maps every window page onto a new pool
        page; the other kinds make one random map, unmap or remap."""
        ppgtt = w.ctx.ppgtt
        if kind == "ppgtt_remap":
            order = self.rng.sample(range(len(w.pool)), WINDOW_PAGES)
            if order == w.mapping:
                order = order[1:] + order[:1]
            for i, p in enumerate(order):
                yield from ppgtt.map(VA_WINDOW + i * PAGE_SIZE, w.pool[p], vcpu)
            w.mapping = list(order)
            w.edits += WINDOW_PAGES
            return
        mapped = [i for i, p in enumerate(w.mapping) if p is not None]
        unmapped = [i for i, p in enumerate(w.mapping) if p is None]
        op = self.rng.choice(["map", "unmap", "remap"])
        if op == "unmap" and len(mapped) > 1:
            slot = self.rng.choice(mapped)
            yield from ppgtt.unmap(VA_WINDOW + slot * PAGE_SIZE, vcpu)
            w.mapping[slot] = None
        else:
            slot = self.rng.choice(unmapped) if op == "map" and unmapped else self.rng.choice(mapped)
            p = self.rng.choice(w.free_pool())
            yield from ppgtt.map(VA_WINDOW + slot * PAGE_SIZE, w.pool[p], vcpu)
            w.mapping[slot] = p
        w.edits += 1

    def _run_ppgtt(self, kind: str, engine: str, vcpu: int, user_irq: bool) -> Gen[None]:
        """A non-privileged PPGTT batch writing the window, checked page by page in the pool."""
        m = self.drv.machine
        w = yield from self._window(engine, vcpu)
        with (yield from w.lock.hold()):
            yield from self._edit(w, kind, vcpu)
            self.seqno += 1
            seq = self.seqno
            sentinel = self.rng.getrandbits(32).to_bytes(4, "little") * (PAGE_SIZE // 4)
            expect = {p: bytearray(sentinel) for p in range(len(w.pool))}
            for gpa in w.pool:
                yield from m.write_mem(gpa, sentinel, vcpu)
            body: list[int] = []
            for slot, p in enumerate(w.mapping):
                if p is None:
                    continue
                va = VA_WINDOW + slot * PAGE_SIZE
                if kind == "ppgtt_fill":
                    color = self.rng.getrandbits(32)
                    body += cmds.color_blt(va, PITCH, WIDTH, HEIGHT, color)
                    expect[p][:] = color.to_bytes(4, "little") * (PAGE_SIZE // 4)
                else:
                    for k in range(STORES_PER_PAGE):
                        off, value = 1024 * k + 8 * slot, self.rng.getrandbits(32)
                        body += cmds.store_dword(va + off, value, ggtt=False)  # PPGTT address
                        expect[p][off:off + 4] = value.to_bytes(4, "little")
            yield from m.write_mem(w.batch_gpa, cmds.to_bytes(body + [cmds.MI_BATCH_BUFFER_END]), vcpu)
            ring = (cmds.batch_buffer_start(VA_BATCH, ppgtt=True)  # non-privileged: not scanned by GVT
                    + cmds.store_dword(self.fence.gm + 64 * _slot(engine), seq))
            if user_irq:
                ring.append(cmds.MI_USER_INTERRUPT)
                self.asked_user_irq[engine] += 1
            yield from self.drv.submit(engine, ring, vcpu=vcpu, wait_user_irq=user_irq, ppgtt=True)
            fence = m.read_u32(self.fence.gpa + 64 * _slot(engine))
            if fence != seq:
                raise VerifyError(f"{kind}#{seq} on {engine}: fence {fence} != {seq}")
            for p, gpa in enumerate(w.pool):
                got = m.read_mem(gpa, PAGE_SIZE)
                if got != bytes(expect[p]):
                    bad = next(i for i in range(PAGE_SIZE) if got[i] != expect[p][i])
                    where = "mapped" if p in w.mapping else "unmapped"
                    raise VerifyError(f"{kind}#{seq} on {engine}: pool page {p} ({where}) wrong at byte {bad}")

    def _write_through_aperture(self, bo: Bo, data: bytes, vcpu: int) -> Gen[None]:
        """CPU writes through the BAR2 window at the buffer's GM offset: memory accesses, never ioreqs."""
        m = self.drv.machine
        gpa = self.drv.gpu.bar2 + bo.gm
        if not m.is_memory(gpa):
            raise VerifyError(f"aperture window at {gpa:#x} is not mapped (map_gfn_to_mfn missing)")
        before = sum(m.ioreqs.values())
        yield from m.write_mem(gpa, data, vcpu)
        if sum(m.ioreqs.values()) != before:
            raise VerifyError("aperture writes trapped: pass-through expected")


def _slot(engine: str) -> int:
    return GPU_ENGINES.index(engine)


# ------------------------------------------------------------------------------------------ vCPU loops
def reason_category(reason: str) -> str:
    """A failure reason with its numbers folded ("fill#12 ... 3.0s" -> "fill#N ... N s"), for grouping."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d+)?", "N", reason)[:160]


class WorkloadAborted(RuntimeError):
    """A workload ended without a result (hang, failed ioreq): the VM needs a reset."""


@dataclass
class Tally:
    """A VM's workload counts: what was submitted, verified, failed and why, and the latencies."""

    submitted: int = 0
    verified: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    latencies: Histogram = field(default_factory=Histogram)  # per verified workload (since the last stats)

    def fail(self, reason: str) -> None:
        """A workload failed: count it under its reason (numbers folded, so alike failures group)."""
        self.failed += 1
        if len(self.failures) < 100:
            self.failures.append(reason)
        self.failure_reasons[reason_category(reason)] += 1


@dataclass
class Budget:
    """How long the vCPU loops run: ``workloads`` per VM, or until ``deadline`` (the runtime's clock); and
    ``think``, the seconds a vCPU pauses between two workloads (0: back to back)."""

    workloads: int
    vcpus: int
    deadline: float | None = None
    think: float = 0.0
    #: fired when ``deadline`` moves earlier (the load's end): a vCPU pausing between workloads stops then
    ended: Signal = field(default_factory=Signal)

    def pause(self, rng: random.Random, first: bool) -> float:
        """The pause before a workload: ``think`` on average, between half and one and a half of it; the
        first one anywhere in [0, think), so that VMs booted together do not submit in step."""
        if self.think <= 0:
            return 0.0
        return rng.uniform(0.0, self.think) if first else rng.uniform(0.5 * self.think, 1.5 * self.think)

    def share(self, vcpu: int) -> int:
        """vCPU ``vcpu``'s part of the workloads."""
        return self.workloads // self.vcpus + (1 if vcpu < self.workloads % self.vcpus else 0)


def vcpu_loop(runner: WorkloadRunner, tally: Tally, vcpu: int, engine: str, kinds: list[str],
              budget: Budget) -> Gen[None]:
    """Run this vCPU's share of the workloads (or run until the budget's deadline). A verification failure
    counts and goes on; a hang, a failed ioreq or any other error ends the loop with its reason (the VM
    then resets if it recovers)."""
    if not kinds:
        return
    rt = runner.drv.machine.rt
    share = budget.share(vcpu)
    rng = random.Random(runner.drv.machine.vm_id * 64 + vcpu)  # the same pauses in every run of a VM
    i = 0
    while (i < share) if budget.deadline is None else rt.now < budget.deadline:
        pause = budget.pause(rng, first=i == 0)
        if pause > 0:
            over = (lambda: budget.deadline is not None and rt.now >= budget.deadline)  # noqa: E731
            wake = rt.now + pause
            yield from wait_until(budget.ended, over, wake if budget.deadline is None else min(wake, budget.deadline))
            if over():
                break
        kind = kinds[i % len(kinds)]
        tally.submitted += 1
        t0 = rt.now
        try:
            yield from runner.run(kind, engine, vcpu=vcpu, user_irq=(i % 3 != 2))
        except VerifyError as err:
            tally.fail(f"VerifyError: {err}")
        except GeneratorExit:  # ended from outside: an ioreq refused, or a sibling vCPU hit a reset
            why = rt.ending
            if isinstance(why, Refusal):
                tally.fail(f"{kind} on {engine}: ioreq refused: {why.code.value}: {why.reason}")
            else:
                tally.fail(f"{kind} on {engine}: aborted by the VM reset")
            raise
        except Exception as err:
            reason = f"{kind} on {engine}: {type(err).__name__}: {err}"
            tally.fail(reason)
            raise WorkloadAborted(reason) from err
        else:
            tally.verified += 1
            tally.by_kind[kind] += 1
            tally.latencies.record_s(rt.now - t0)
            if rt.record:
                rt.events.append(("workload", f"workload {kind} on {engine}", runner.drv.machine.vm_id, rt.now - t0))
        i += 1
