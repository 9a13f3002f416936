"""Workloads and their dispatch to the physical GPU (i915/gvt scheduler.c; gvt-facts 5.1, 5.2, 11).

An ELSP submission becomes one workload per valid descriptor. Creating a workload reads the guest's ring
context through the vGPU's GGTT (lrca + 1) with read_gpa, and copies the ring bytes [head, tail) out of
guest memory. Dispatch (one workload at a time per physical engine, a vGPU switch only between
workloads) copies the guest context into the vGPU's *shadow context* for that engine (frames gvt got
from vhm, mapped in the host's reserved GM), puts the copied ring into the shadow ring, emulates the
execlist schedule-in, and submits the shadow descriptor to pgpu. On completion the guest context is
written back (ring head := the workload's tail, timestamp), the pending user interrupts are injected,
then the execlist schedule-out raises the context-switch event. A failed workload (page fault, hang,
error) is a vGPU hang: no schedule-out, no interrupt, and that engine's queued workloads are dropped.

The pick between vGPUs is round robin here; the weighted time-slice policy plugs in at ``_pick``.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from . import engines as eng
from .effects import PgpuGgttWrite, PgpuSubmit
from .execlist import DESC_PRIVILEGE, VirtualExeclist, desc_ctx_id, desc_valid, same_context
from .gtt import pte_encode, pte_pfn, pte_present

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

#: engines pgpu has (vcs2 is not emulated by the physical GPU model)
PHYSICAL_ENGINES = ("rcs", "bcs", "vcs", "vecs")
# ring-context value offsets (struct execlist_ring_context; gvt-facts 5.1)
CTX_RING_HEAD = 0x14
CTX_RING_TAIL = 0x1C
CTX_RB_START = 0x24
CTX_RB_CTRL = 0x2C
CTX_TIMESTAMP = 0x8C
CTX_PDP_VALUES = (0x94, 0x9C, 0xA4, 0xAC, 0xB4, 0xBC, 0xC4, 0xCC)
RB_HEAD_MASK = 0x001F_FFFC
RB_TAIL_MASK = 0x001F_FFF8
RB_SIZE_MASK = 0x001F_F000
RB_VALID = 1
SHADOW_RING_PAGES = 8
SHADOW_PAGES = 2 + SHADOW_RING_PAGES  # PPHWSP + ring context + ring
TIMESTAMP_NS_PER_TICK = 1000.0 / 12.0  # gen9 CS timestamp, 12 MHz


class WorkloadError(Exception):
    """A workload that cannot be built from the guest's context (bad LRCA, ring outside guest memory)."""


@dataclass
class Workload:
    """One context execution requested by a guest (struct intel_vgpu_workload)."""

    id: int
    vgpu: "Vgpu"
    engine: str
    desc: int
    ctx: tuple[int, int]  # the ELSP pair it came from
    emulate_schedule_in: bool
    ring_ctx_gpa: int
    head: int
    tail: int
    ring: bytes
    guest_pdps: tuple[int, ...]
    pending_events: list[str] = field(default_factory=list)
    busy_ns: int = 0
    status: str = "queued"

    @property
    def ctx_id(self) -> int:
        return desc_ctx_id(self.desc)


@dataclass
class ShadowContext:
    """A vGPU's shadow context for one engine: frames from vhm, mapped at ``gm`` in the host's GM."""

    gm: int
    mfns: list[int]

    def maddr(self, page: int) -> int:
        return self.mfns[page] << PAGE_SHIFT


class Scheduler:
    """Per-engine queues of workloads, dispatch to pgpu, completion back to the guest."""

    def __init__(self, gvt: "Gvt") -> None:
        self.gvt = gvt
        self.queues: dict[tuple[int, str], deque[Workload]] = {}
        self.current: dict[str, Workload | None] = {e: None for e in PHYSICAL_ENGINES}
        self.inflight: dict[int, Workload] = {}  # tag -> workload on pgpu
        self.order: list[int] = []  # vGPU ids, round robin
        self.shadows: dict[tuple[int, str], ShadowContext] = {}
        self.frame_pool: list[int] = []
        self.host_ptes: dict[int, int] = {}  # GGTT index -> pte of gvt's own (shadow) pages
        self._ids = itertools.count(1)
        self.mem: MachineMemory | None = None

    # ----------------------------------------------------------------------------------- resources
    def add_frames(self, mfns: list[int]) -> None:
        """Frames (from vhm ALLOC_FRAMES) for shadow contexts and rings."""
        self.frame_pool.extend(mfns)

    def _shadow_for(self, vgpu: "Vgpu", engine: str) -> ShadowContext:
        key = (vgpu.id, engine)
        sh = self.shadows.get(key)
        if sh is not None:
            return sh
        if len(self.frame_pool) < SHADOW_PAGES:
            raise WorkloadError("no frames for a shadow context (vhm ALLOC_FRAMES pending or exhausted)")
        mfns = [self.frame_pool.pop() for _ in range(SHADOW_PAGES)]
        # the host's reserved high GM starts at the aperture end; each (vGPU, engine) gets a 64 KiB window
        slot = vgpu.id * len(PHYSICAL_ENGINES) + PHYSICAL_ENGINES.index(engine)
        gm = self.gvt.gpu.aperture_size + slot * 16 * PAGE_SIZE
        entries = []
        for i, mfn in enumerate(mfns):
            index = (gm >> PAGE_SHIFT) + i
            pte = pte_encode(mfn << PAGE_SHIFT)
            self.host_ptes[index] = pte
            entries.append((index, pte))
        self.gvt.effects.append(PgpuGgttWrite(tuple(entries)))
        sh = ShadowContext(gm, mfns)
        self.shadows[key] = sh
        return sh

    def resync_host_ggtt(self) -> None:
        """pgpu restarted: map gvt's own shadow pages again."""
        if self.host_ptes:
            self.gvt.effects.append(PgpuGgttWrite(tuple(sorted(self.host_ptes.items()))))

    # -------------------------------------------------------------------------------- guest memory
    def _gm_to_gpa(self, vgpu: "Vgpu", gm: int) -> int:
        """Translate a guest graphics address through the vGPU's virtual GGTT (identity guest<->host GM
        thanks to ballooning; the guest PTE holds the gfn)."""
        if not vgpu.resource.contains(gm):
            raise WorkloadError(f"graphics address {gm:#x} outside the vGPU's GM")
        pte = vgpu.gtt.virtual.get(gm >> PAGE_SHIFT, 0)
        if not pte_present(pte):
            raise WorkloadError(f"graphics address {gm:#x} not mapped in the guest GGTT")
        return (pte_pfn(pte) << PAGE_SHIFT) | (gm & (PAGE_SIZE - 1))

    def _read_gm(self, vgpu: "Vgpu", gm: int, length: int) -> bytes:
        out = bytearray()
        while length:
            n = min(length, PAGE_SIZE - (gm & (PAGE_SIZE - 1)))
            data = vgpu.mpt.read_gpa(self._gm_to_gpa(vgpu, gm), n)
            if data is None:
                raise WorkloadError(f"graphics address {gm:#x} is not guest RAM")
            out += data
            gm, length = gm + n, length - n
        return bytes(out)

    def _u32(self, vgpu: "Vgpu", gpa: int) -> int:
        data = vgpu.mpt.read_gpa(gpa, 4)
        if data is None:
            raise WorkloadError(f"gpa {gpa:#x} is not guest RAM")
        return int.from_bytes(data, "little")

    # ------------------------------------------------------------------------------------ creation
    def submit_execlist(self, vgpu: "Vgpu", el: VirtualExeclist, pair: tuple[int, int]) -> None:
        """intel_vgpu_submit_execlist: one workload per valid descriptor; desc0 must be valid and every
        valid descriptor privileged ("unexpected GGTT elsp submission" otherwise)."""
        from .errors import EmulationError

        if not desc_valid(pair[0]):
            raise EmulationError("ELSP submission with element 0 invalid")
        for d in pair:
            if desc_valid(d) and not d & DESC_PRIVILEGE:
                raise EmulationError("unexpected GGTT elsp submission (privilege_access = 0)")
        engine = el.engine.name
        if engine not in PHYSICAL_ENGINES:
            raise EmulationError(f"no physical engine for {engine}")
        for i, d in enumerate(pair):
            if not desc_valid(d):
                continue
            try:
                w = self._create(vgpu, engine, d, pair, emulate_schedule_in=(i == 0))
            except WorkloadError as err:
                self.gvt.counters["workload_create_failed"] += 1
                raise EmulationError(f"workload creation failed: {err}") from None
            self.queues.setdefault((vgpu.id, engine), deque()).append(w)
            self.gvt.counters["workloads_queued"] += 1
        if vgpu.id not in self.order:
            self.order.append(vgpu.id)
        self.kick()

    def _create(self, vgpu: "Vgpu", engine: str, desc: int, pair: tuple[int, int],
                emulate_schedule_in: bool) -> Workload:
        """intel_vgpu_create_workload: read head/tail/start/ctl from the guest ring context."""
        lrca = desc & 0xFFFF_F000
        ctx_gpa = self._gm_to_gpa(vgpu, lrca + PAGE_SIZE) & ~(PAGE_SIZE - 1)
        head = self._u32(vgpu, ctx_gpa + CTX_RING_HEAD) & RB_HEAD_MASK
        tail = self._u32(vgpu, ctx_gpa + CTX_RING_TAIL) & RB_TAIL_MASK
        start = self._u32(vgpu, ctx_gpa + CTX_RB_START) & 0xFFFF_F000
        ctl = self._u32(vgpu, ctx_gpa + CTX_RB_CTRL)
        size = (ctl & RB_SIZE_MASK) + PAGE_SIZE
        queue = self.queues.get((vgpu.id, engine))
        if queue and same_context(queue[-1].desc, desc):
            head = queue[-1].tail  # the guest's head may be stale: continue after the queued one
        if head >= size or tail >= size:
            raise WorkloadError(f"ring head {head:#x} / tail {tail:#x} outside the {size:#x}-byte ring")
        if tail >= head:
            ring = self._read_gm(vgpu, start + head, tail - head)
        else:
            ring = self._read_gm(vgpu, start + head, size - head) + self._read_gm(vgpu, start, tail)
        if len(ring) > (SHADOW_RING_PAGES - 1) * PAGE_SIZE:
            raise WorkloadError(f"{len(ring)} bytes of ring: larger than the shadow ring")
        pdps = tuple(self._u32(vgpu, ctx_gpa + off) for off in CTX_PDP_VALUES)
        return Workload(next(self._ids), vgpu, engine, desc, pair, emulate_schedule_in, ctx_gpa, head, tail,
                        ring, pdps)

    # ------------------------------------------------------------------------------------ dispatch
    def _pick(self, engine: str) -> Workload | None:
        """The next workload for an idle engine: round robin over vGPUs with queued work."""
        for _ in range(len(self.order)):
            vid = self.order.pop(0)
            self.order.append(vid)
            vgpu = self.gvt.vgpus.get(vid)
            q = self.queues.get((vid, engine))
            if vgpu is None or not q or not vgpu.active or vgpu.failsafe:
                continue
            return q.popleft()
        return None

    def kick(self) -> None:
        """Dispatch to every idle physical engine (intel_gvt_kick_schedule)."""
        for engine in PHYSICAL_ENGINES:
            while self.current[engine] is None:
                w = self._pick(engine)
                if w is None:
                    break
                if self._dispatch(w):
                    break

    def _dispatch(self, w: Workload) -> bool:
        """Prepare the shadow context and submit it. Returns False if the workload failed instead."""
        vgpu = w.vgpu
        try:
            if any(w.guest_pdps):
                raise WorkloadError("PPGTT contexts need shadow page tables (not supported yet)")
            sh = self._shadow_for(vgpu, w.engine)
            self._populate_shadow(w, sh)
        except WorkloadError as err:
            self._fail(w, str(err))
            return False
        self.current[w.engine] = w
        self.inflight[w.id] = w
        w.status = "running"
        el = vgpu.submission.execlists[w.engine]
        if w.emulate_schedule_in:
            el.schedule_in(w.ctx)
        # the shadow descriptor: same addressing mode and flags, the shadow LRCA, a host context id
        shadow_desc = ((w.desc & 0xFFF) | sh.gm) | ((vgpu.id << 8 | PHYSICAL_ENGINES.index(w.engine)) << 32)
        self.gvt.effects.append(PgpuSubmit(w.engine, (shadow_desc,), w.id))
        self.gvt.counters["workloads_dispatched"] += 1
        return True

    def _populate_shadow(self, w: Workload, sh: ShadowContext) -> None:
        """populate_shadow_context: copy the guest's PPHWSP and ring-context pages, point the ring at the
        shadow ring holding the copied commands (head 0, tail = their length)."""
        if self.mem is None:
            raise WorkloadError("machine memory is not mapped in gvt")
        vgpu = w.vgpu
        lrca = w.desc & 0xFFFF_F000
        pphwsp = vgpu.mpt.read_gpa(self._gm_to_gpa(vgpu, lrca) & ~(PAGE_SIZE - 1), PAGE_SIZE)
        state = vgpu.mpt.read_gpa(w.ring_ctx_gpa, PAGE_SIZE)
        if pphwsp is None or state is None:
            raise WorkloadError("context pages are not guest RAM")
        self.mem.write(sh.maddr(0), pphwsp)
        image = bytearray(state)
        tail = (len(w.ring) + 7) & ~7
        for off, val in ((CTX_RING_HEAD, 0), (CTX_RING_TAIL, tail), (CTX_RB_START, sh.gm + 2 * PAGE_SIZE),
                         (CTX_RB_CTRL, ((SHADOW_RING_PAGES - 1) * PAGE_SIZE) | RB_VALID)):
            image[off:off + 4] = val.to_bytes(4, "little")
        for off in CTX_PDP_VALUES:
            image[off:off + 4] = bytes(4)
        self.mem.write(sh.maddr(1), bytes(image))
        ring = w.ring + bytes(tail - len(w.ring))
        for i in range(0, len(ring), PAGE_SIZE):
            self.mem.write(sh.maddr(2 + i // PAGE_SIZE), ring[i:i + PAGE_SIZE])

    # ---------------------------------------------------------------------------------- completion
    def on_gpu_event(self, engine: str, kind: str, tag: int, status: int = 0, busy_ns: int = 0,
                     reason: str = "") -> None:
        """A GPU_EVENT from pgpu for workload ``tag``."""
        w = self.inflight.get(tag)
        if w is None:
            self.gvt.counters["gpu_event_unknown_tag"] += 1
            return
        if kind == "user_interrupt":
            # the scanner of the real GVT records MI_USER_INTERRUPT as a pending event; here pgpu reports it
            w.pending_events.append(f"{w.engine.upper()}_MI_USER_INTERRUPT")
            return
        del self.inflight[tag]
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        w.busy_ns = busy_ns
        if w.status == "abandoned":  # its vGPU was reset or destroyed meanwhile: nothing to report
            self.gvt.counters["workloads_abandoned"] += 1
        elif kind == "ctx_complete" and status == 0:
            self._complete(w)
        else:
            self._fail(w, reason or f"{kind} (status {status:#x})")
        self.kick()

    def submit_failed(self, tag: int, reason: str) -> None:
        """pgpu refused the ELSP_SUBMIT (or is gone): the workload fails like a hang."""
        w = self.inflight.pop(tag, None)
        if w is None:
            return
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        self._fail(w, f"submit refused: {reason}")
        self.kick()

    def _complete(self, w: Workload) -> None:
        """complete_current_workload: write back the guest context, pending events, then schedule-out."""
        vgpu = w.vgpu
        w.status = "done"
        if vgpu.id not in self.gvt.vgpus:  # destroyed meanwhile
            return
        ctx = w.ring_ctx_gpa
        ts = self._u32(vgpu, ctx + CTX_TIMESTAMP)
        vgpu.mpt.write_gpa(ctx + CTX_RING_HEAD, w.tail.to_bytes(4, "little"))
        ticks = (ts + int(w.busy_ns / TIMESTAMP_NS_PER_TICK)) & 0xFFFF_FFFF
        vgpu.mpt.write_gpa(ctx + CTX_TIMESTAMP, ticks.to_bytes(4, "little"))
        for ev in w.pending_events:
            self.gvt.trigger_event(vgpu, ev)
        q = self.queues.get((vgpu.id, w.engine))
        nxt_same = bool(q) and same_context(q[0].desc, w.desc)
        vgpu.submission.execlists[w.engine].schedule_out(w.desc, nxt_same)
        self.gvt.counters["workloads_completed"] += 1

    def _fail(self, w: Workload, reason: str) -> None:
        """A failed workload emulates a vGPU hang: no schedule-out, no interrupt, the engine's queue of
        that vGPU dropped (gvt-facts 5.1)."""
        w.status = "failed"
        dropped = self.queues.pop((w.vgpu.id, w.engine), deque())
        self.gvt.counters["workloads_failed"] += 1
        self.gvt.counters["workloads_dropped"] += len(dropped)
        self.gvt.log.warning("workload_failed", vgpu=w.vgpu.id, vm=w.vgpu.vm, engine=w.engine, ctx=w.ctx_id,
                             reason=reason, dropped=len(dropped))

    # ------------------------------------------------------------------------------------- resets
    def drop(self, vgpu: "Vgpu", engines: list[str]) -> None:
        """intel_vgpu_reset_submission / destroy: forget queued workloads of these engines; a running one
        finishes on the GPU but its completion is not reported to the guest."""
        for e in engines:
            self.queues.pop((vgpu.id, e), None)
            cur = self.current.get(e)
            if cur is not None and cur.vgpu is vgpu:
                cur.status = "abandoned"
        for w in self.inflight.values():
            if w.vgpu is vgpu and w.engine in engines:
                w.status = "abandoned"

    def forget_vgpu(self, vgpu: "Vgpu") -> list[int]:
        """vGPU destroyed: drop its queues and return its shadow frames to the pool."""
        self.drop(vgpu, list(PHYSICAL_ENGINES))
        if vgpu.id in self.order:
            self.order.remove(vgpu.id)
        freed = []
        for e in PHYSICAL_ENGINES:
            sh = self.shadows.pop((vgpu.id, e), None)
            if sh is not None:
                for i in range(len(sh.mfns)):
                    self.host_ptes.pop((sh.gm >> PAGE_SHIFT) + i, None)
                self.frame_pool.extend(sh.mfns)
                freed.extend(sh.mfns)
        return freed

    def forget_frames(self) -> None:
        """vhm restarted: the frames it gave us are gone; shadow contexts are rebuilt from a new pool."""
        self.frame_pool.clear()
        self.shadows.clear()
        self.host_ptes.clear()

    def engine_lost(self, reason: str) -> None:
        """pgpu went away: every workload on it fails (the guests see a hang and reset)."""
        for tag in list(self.inflight):
            self.submit_failed(tag, reason)
