"""Workloads and their dispatch to the physical GPU (i915/gvt scheduler.c; gvt/handlers.c, gvt/execlist.c,
gvt/scheduler.c).

An ELSP submission becomes one workload per valid descriptor. Creating a workload reads the guest's ring
context through the vGPU's GGTT (lrca + 1) with read_gpa, and copies the ring bytes [head, tail) out of
guest memory. Dispatch (one workload at a time per physical engine, a vGPU switch only between
workloads) copies the guest context into the vGPU's *shadow context* for that engine (frames gvt got
from vhm, mapped in the host's reserved GM), puts the copied ring into the shadow ring, emulates the
execlist schedule-in, and submits the shadow descriptor to pgpu. On completion the guest context is
written back (ring head := the workload's tail, timestamp), the pending user interrupts are injected,
then the execlist schedule-out raises the context-switch event. A failed workload (page fault, hang,
error) is a vGPU hang: no schedule-out, no interrupt, and that engine's queued workloads are dropped.

Creating a workload also scans its commands (cmd_parser.py: a violation puts the vGPU in failsafe) and
copies its privileged batches into shadow batch buffers. Which vGPU's workloads the engines take is the
weighted time-slice policy's choice (sched_policy.py), run at every 1 ms ``tick`` and on events.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

# hardware definitions under the names this module uses (the ring context's value dwords, RING_CTX_OFF(x.val))
from ...hardware.engines import GPU_ENGINES as PHYSICAL_ENGINES  # the engines pgpu has (no vcs2)
from ...hardware.opcodes import MI_BATCH_BUFFER_END
from ...hardware.opcodes import MI_BATCH_BUFFER_START_GEN8 as PER_CTX_BB_START  # combine_wa_ctx appends it
from ...hardware.regs import CTX_BB_PER_CTX_PTR_VAL as CTX_BB_PER_CTX_PTR
from ...hardware.regs import CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT as CTX_RESTORE_INHIBIT
from ...hardware.regs import CTX_CTRL_VAL as CTX_CONTEXT_CONTROL_VAL
from ...hardware.regs import CTX_RB_CTRL_VAL as CTX_RB_CTRL
from ...hardware.regs import CTX_RB_START_VAL as CTX_RB_START
from ...hardware.regs import CTX_RCS_INDIRECT_CTX_VAL as CTX_RCS_INDIRECT_CTX
from ...hardware.regs import CTX_RING_HEAD_VAL as CTX_RING_HEAD
from ...hardware.regs import CTX_RING_TAIL_VAL as CTX_RING_TAIL
from ...hardware.regs import CTX_TIMESTAMP_VAL as CTX_TIMESTAMP
from ...hardware.regs import DESC_PRIVILEGE
from ...hardware.regs import RING_VALID as RB_VALID
from ...hardware.regs import (
    CACHELINE_BYTES,
    CTX_PDP_VALUES,
    EXECLIST_RING_CONTEXT_SIZE,
    INDIRECT_CTX_ADDR_MASK,
    INDIRECT_CTX_SIZE_MASK,
    PER_CTX_ADDR_MASK,
    PER_CTX_VALID,
    RB_HEAD_MASK,
    RB_SIZE_MASK,
    RB_TAIL_MASK,
    TIMESTAMP_NS_PER_TICK,
)
from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from . import cmd_parser
from . import mmio_context
from .cmd_parser import SHADOW_BB_GM_OFFSET, SHADOW_BB_GM_PAGES, ShadowBb, ShadowBbWindow
from .effects import PgpuGgttWrite, PgpuSubmit
from .execlist import VirtualExeclist, desc_ctx_id, desc_valid, same_context
from .gtt import pte_encode, pte_pfn, pte_present
from .handlers import F
from .sched_policy import TimeSlicePolicy
from .pvinfo import ENABLE_PVMMIO
from .pvmmio import PvmmioLevel

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

SHADOW_RING_PAGES = 8
SHADOW_PAGES = 2 + SHADOW_RING_PAGES  # PPHWSP + ring context + ring


class WorkloadError(Exception):
    """A workload that cannot be built from the guest's context (bad LRCA, ring outside guest memory)."""


class WorkloadRefused(WorkloadError):
    """A workload refused without marking the VM unhealthy (a -EPERM scan error): the submission fails,
    the vGPU stays out of failsafe (scheduler.c intel_vgpu_create_workload + vgpu_is_vm_unhealthy)."""


@dataclass
class WaCtx:
    """struct intel_shadow_wa_ctx: the render context's indirect-ctx buffer and per-ctx batch, as the guest
    programmed them, and where their scanned shadows sit in host GM."""

    indirect_gma: int = 0
    indirect_size: int = 0  # bytes (a whole number of cachelines)
    per_ctx_gma: int = 0
    per_ctx_valid: bool = False
    indirect_shadow_gma: int = 0
    per_ctx_shadow_gma: int = 0

    @property
    def present(self) -> bool:
        return bool(self.indirect_size or self.per_ctx_valid)


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
    mmio_save_for: int | None = None  # the vGPU whose engine registers this workload's prologue saves
    busy_ns: int = 0
    dispatched_at: float = 0.0  # scheduler clock when it went to the engine (engine occupancy, `gvtsim top`)
    status: str = "queued"
    pv: bool = False  # submitted through the PV shared page (no execlist emulation)
    pv_seq: int | None = None  # the slot's submit_seq, on the last element of a PV submission
    wa: WaCtx | None = None  # the render context's workaround batches (rcs only)
    # the guest's ring and batch bytes as scanned (graphics address, bytes): checked again at completion to
    # count a guest that changed them after the scan (the GPU ran the shadow copies all the same)
    scanned: list[tuple[int, bytes]] = field(default_factory=list)

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


#: pgpu's user_interrupt reason -> the event's name after the engine (interrupt.EVENTS)
NOTIFY_EVENTS: dict[str, str] = {"PIPE_CONTROL notify": "PIPE_CONTROL", "MI_FLUSH_DW notify": "MI_FLUSH_DW"}


def notify_event(engine: str, reason: str) -> str:
    """The virtual interrupt event of a notify pgpu reported (MI_USER_INTERRUPT unless named)."""
    return f"{engine.upper()}_{NOTIFY_EVENTS.get(reason, 'MI_USER_INTERRUPT')}"


def shadow_context_gm(aperture_size: int, vgpu_id: int, engine_index: int) -> int:
    """Where the shadow context of (vGPU, engine) sits in the host's reserved high GM: a 64 KiB window
    each from the aperture end, below the shadow batch window (room for vGPU ids 1..63). Higher ids (only
    simulated GPU profiles have them: services/common/gpu_profiles.py) go above the batch window."""
    slot = vgpu_id * len(PHYSICAL_ENGINES) + engine_index
    below = SHADOW_BB_GM_OFFSET // (16 * PAGE_SIZE)
    if slot < below:
        return aperture_size + slot * 16 * PAGE_SIZE
    return aperture_size + SHADOW_BB_GM_OFFSET + (SHADOW_BB_GM_PAGES << PAGE_SHIFT) + (slot - below) * 16 * PAGE_SIZE


class Scheduler:
    """Per-engine queues of workloads, dispatch to pgpu, completion back to the guest."""

    def __init__(self, gvt: "Gvt") -> None:
        self.gvt = gvt
        self.queues: dict[tuple[int, str], deque[Workload]] = {}
        self.current: dict[str, Workload | None] = {e: None for e in PHYSICAL_ENGINES}
        # mmio_context.c: whose engine registers each physical engine holds (None: the host's)
        self.engine_owner: dict[str, int | None] = {e: None for e in PHYSICAL_ENGINES}
        self.inflight: dict[int, Workload] = {}  # tag -> workload on pgpu
        self.order: list[int] = []  # vGPU ids, round robin
        self.shadows: dict[tuple[int, str], ShadowContext] = {}
        self.frame_pool: list[int] = []
        self.host_ptes: dict[int, int] = {}  # GGTT index -> pte of gvt's own (shadow) pages
        self._ids = itertools.count(1)
        self.policy = TimeSlicePolicy()  # sched_policy.py: which vGPU owns the engines
        self.now = 0.0  # the latest time an entry point was given: the policy's clock
        self.shadow_bbs: dict[int, ShadowBb] = {}  # workload id -> its shadow batch buffers
        self.bb_window = ShadowBbWindow()
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
        gm = shadow_context_gm(self.gvt.gpu.aperture_size, vgpu.id, PHYSICAL_ENGINES.index(engine))
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
            self.gvt.counters["elsp_refused_element0_invalid"] += 1
            raise EmulationError("ELSP submission with element 0 invalid")
        for d in pair:
            if desc_valid(d) and not d & DESC_PRIVILEGE:
                self.gvt.counters["elsp_refused_unprivileged"] += 1
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
                raise EmulationError(f"workload creation failed: {err}",
                                     failsafe=not isinstance(err, WorkloadRefused)) from None
            self.queues.setdefault((vgpu.id, engine), deque()).append(w)
            self.gvt.counters["workloads_queued"] += 1
        if vgpu.id not in self.order:
            self.order.append(vgpu.id)
        self.kick()

    def submit_pv(self, vgpu: "Vgpu", engine: str, pair: tuple[int, int], seq: int) -> None:
        """PV submission (pv.py): the descriptors came from the shared page with one trap. The same checks
        and workload creation as an ELSP write, but no execlist emulation: no CSB, no context-switch
        interrupt (the PV patchset skips them); completion is published in the slot, then an MSI."""
        from .errors import EmulationError

        if engine not in PHYSICAL_ENGINES:
            raise EmulationError(f"no physical engine for {engine}")
        descs = [d for d in pair if desc_valid(d)]
        if not descs or any(not d & DESC_PRIVILEGE for d in descs):
            raise EmulationError("PV submission: element 0 invalid or not privileged")
        for d in descs:
            try:
                w = self._create(vgpu, engine, d, pair, emulate_schedule_in=False)
            except WorkloadError as err:
                self.gvt.counters["workload_create_failed"] += 1
                raise EmulationError(f"workload creation failed: {err}",
                                     failsafe=not isinstance(err, WorkloadRefused)) from None
            w.pv = True
            w.pv_seq = seq if d == descs[-1] else None  # the slot completes with its last element
            self.queues.setdefault((vgpu.id, engine), deque()).append(w)
            self.gvt.counters["workloads_queued"] += 1
        if vgpu.id not in self.order:
            self.order.append(vgpu.id)
        self.kick()

    def _create(self, vgpu: "Vgpu", engine: str, desc: int, pair: tuple[int, int],
                emulate_schedule_in: bool) -> Workload:
        """intel_vgpu_create_workload: read head/tail/start/ctl from the guest ring context."""
        lrca = desc & 0xFFFF_F000
        try:  # intel_vgpu_create_workload: "invalid guest context LRCA" outside the vGPU's GGTT range
            ctx_gpa = self._gm_to_gpa(vgpu, lrca + PAGE_SIZE) & ~(PAGE_SIZE - 1)
        except WorkloadError:
            self.gvt.counters["workload_create_failed_lrca"] += 1
            raise
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
        try:  # the ring is read through the vGPU's own GGTT view (gvt/scheduler.c copy_workload_to_ring_buffer)
            if tail >= head:
                pieces = [(start + head, self._read_gm(vgpu, start + head, tail - head))]
            else:
                pieces = [(start + head, self._read_gm(vgpu, start + head, size - head)),
                          (start, self._read_gm(vgpu, start, tail))]
        except WorkloadError:
            self.gvt.counters["workload_create_failed_ring"] += 1
            raise
        ring = b"".join(data for _gm, data in pieces)
        if len(ring) > (SHADOW_RING_PAGES - 1) * PAGE_SIZE:
            raise WorkloadError(f"{len(ring)} bytes of ring: larger than the shadow ring")
        pdps = tuple(self._u32(vgpu, ctx_gpa + off) for off in CTX_PDP_VALUES)
        w = Workload(next(self._ids), vgpu, engine, desc, pair, emulate_schedule_in, ctx_gpa, head, tail,
                     ring, pdps, scanned=[p for p in pieces if p[1]])
        if engine == "rcs":
            w.wa = self._wa_ctx(vgpu, ctx_gpa)
        self._scan(w)  # scanned and shadowed at creation: the GPU runs the bytes that were checked
        return w

    def _wa_ctx(self, vgpu: "Vgpu", ctx_gpa: int) -> WaCtx | None:
        """intel_vgpu_create_workload (RCS0): RCS_INDIRECT_CTX gives the indirect-ctx buffer (address bits
        31:6, size in cachelines bits 5:0), BB_PER_CTX_PTR the per-ctx batch (bits 31:12, valid bit 0); each
        must lie in the vGPU's GM (intel_gvt_ggtt_validate_range, else -EINVAL)."""
        indirect = self._u32(vgpu, ctx_gpa + CTX_RCS_INDIRECT_CTX)
        per_ctx = self._u32(vgpu, ctx_gpa + CTX_BB_PER_CTX_PTR)
        wa = WaCtx(indirect & INDIRECT_CTX_ADDR_MASK, (indirect & INDIRECT_CTX_SIZE_MASK) * CACHELINE_BYTES,
                   per_ctx & PER_CTX_ADDR_MASK, bool(per_ctx & PER_CTX_VALID))
        if not wa.present:
            return None
        if wa.indirect_size and not vgpu.resource.contains(wa.indirect_gma, wa.indirect_size):
            self.gvt.counters["wa_ctx_invalid"] += 1
            raise WorkloadError(f"invalid wa_ctx at {wa.indirect_gma:#x} (+{wa.indirect_size:#x})")
        if wa.per_ctx_valid and not vgpu.resource.contains(wa.per_ctx_gma, CACHELINE_BYTES):
            self.gvt.counters["wa_ctx_invalid"] += 1
            raise WorkloadError(f"invalid per_ctx at {wa.per_ctx_gma:#x}")
        if wa.indirect_size and wa.indirect_gma % PAGE_SIZE:  # scan_wa_ctx: "ring base is page aligned"
            self.gvt.counters["wa_ctx_invalid"] += 1
            raise WorkloadRefused(f"indirect ctx at {wa.indirect_gma:#x} is not page aligned")
        return wa

    # -------------------------------------------------------------------------------- command scan
    def _scan_hooks(self, w: Workload) -> "cmd_parser.ScanHooks":
        """The vGPU side of the scanner's LRI patches and index mode for workload ``w``."""
        from .engines import BY_NAME, RING_HWS_PGA
        from .gtt import PPGTT_ROOT_L4

        vgpu, table = w.vgpu, self.gvt.table

        def shadow_pml4(pml4: int) -> int | None:
            mm = vgpu.ppgtt.find(PPGTT_ROOT_L4, (pml4, 0, 0, 0))
            if mm is None or not mm.shadowed:
                return None
            return mm.shadow_pdps[0]

        inhibit = self._inhibit(w)
        return cmd_parser.ScanHooks(
            hws_pga=vgpu.mmio.read32(BY_NAME[w.engine].base + RING_HWS_PGA),
            shadow_pml4=shadow_pml4,
            write_patch=lambda off, value: table.cmd_write_patch(vgpu, off, value),
            set_vreg=vgpu.mmio.write32,
            sr_in_ctx=lambda off: table.has_flag(off, F.SR_IN_CTX),
            restore_inhibit=inhibit)

    def _scan(self, w: Workload) -> None:
        """intel_gvt_scan_and_shadow_workload (gvt/cmd_parser.c): scan the ring and the privileged batches,
        copy the batches into shadow batch buffers mapped in host GM, patch the ring to them, record the
        user interrupts. A ScanError puts this vGPU alone in failsafe; the workload is not queued."""
        from .vgpu import FailsafeReason  # vgpu -> ppgtt -> scheduler: imported late

        vgpu = w.vgpu

        def read_gm(gm: int, n: int) -> bytes:
            try:
                return self._read_gm(vgpu, gm, n)
            except WorkloadError as err:
                raise cmd_parser.ScanError(cmd_parser.Errno.EFAULT, f"batch buffer: {err}") from None

        def parser() -> cmd_parser.Parser:
            return cmd_parser.Parser(w.engine, vgpu.resource.contains, cmd_parser.whitelist(self.gvt.table),
                                     any(w.guest_pdps), read_gm, self._scan_hooks(w))

        def scan(p: cmd_parser.Parser, data: bytes, what: str) -> None:
            try:
                p.scan(data)
            except cmd_parser.ScanError as err:
                self.gvt.counters["cmd_scan_errors"] += 1
                self.gvt.counters[f"cmd_scan_{err.errno.value.lower()}"] += 1
                if what != "ring":
                    self.gvt.counters["wa_ctx_scan_errors"] += 1
                self.gvt.log.warning("cmd_scan_error", vgpu=vgpu.id, vm=vgpu.vm, engine=w.engine, buffer=what,
                                     errno=err.errno.value, reason=err.reason)
                if err.errno in cmd_parser.VM_UNHEALTHY:  # vgpu_is_vm_unhealthy: -EBADRQC, -EFAULT only
                    vgpu.enter_failsafe(FailsafeReason.GUEST_ERR, f"command scan ({what}): {err}")
                    raise WorkloadError(f"command scan ({what}): {err}") from None
                raise WorkloadRefused(f"command scan ({what}): {err}") from None

        p = parser()
        scan(p, w.ring, "ring")
        wa = w.wa
        p_ind = p_per = None
        if wa is not None:
            # intel_gvt_scan_and_shadow_wa_ctx: shadow_indirect_ctx copies the buffer, scan_wa_ctx scans it as
            # a privileged ring. combine_wa_ctx appends MI_BATCH_BUFFER_START(per-ctx batch) to the copy, so
            # the per-ctx batch is shadowed as a batch the buffer starts; upstream does it only when an
            # indirect-ctx buffer exists (its size check comes first): gvtsim scans a per-ctx batch either
            # way, so no unscanned batch of the guest reaches the GPU.
            if wa.indirect_size:
                p_ind = parser()
                scan(p_ind, read_gm(wa.indirect_gma, wa.indirect_size), "indirect_ctx")
            if wa.per_ctx_valid:
                p_per = parser()
                scan(p_per, struct.pack("<3I", PER_CTX_BB_START, wa.per_ctx_gma, 0), "per_ctx")
        self._shadow_scanned(w, p, p_ind, p_per)
        self.gvt.counters["workloads_scanned"] += 1

    def _shadow_scanned(self, w: Workload, p: "cmd_parser.Parser", p_ind: "cmd_parser.Parser | None",
                        p_per: "cmd_parser.Parser | None") -> None:
        """Lay the scanned buffers out in one shadow allocation of host GM: the ring's batches, then (page
        aligned) the indirect-ctx copy followed by a zeroed cacheline (prepare_shadow_wa_ctx clears the
        combined per-ctx start), its batches, and the per-ctx batch (page aligned: BB_PER_CTX_PTR keeps bits
        31:12). Patch the ring to the shadows; record the WA shadows' addresses for the shadow context."""
        def up(n: int) -> int:
            return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)

        wa = w.wa
        ring_len = p.shadow_size()
        ind_len = up(wa.indirect_size + CACHELINE_BYTES) if wa is not None and p_ind is not None else 0
        ind_bb = p_ind.shadow_size() if p_ind is not None else 0
        per_bb = p_per.shadow_size() if p_per is not None else 0
        regions: tuple[int, ...] = (up(ring_len), ind_len, up(ind_bb), up(per_bb)) if wa is not None else (ring_len,)
        size = sum(regions)
        base = self._alloc_shadow_bb(w, size) if size else 0
        ring, image = p.layout(base)
        w.scanned += p.guest_bytes()
        buf = bytearray(size)
        buf[:len(image)] = image
        if wa is not None:
            at = regions[0]
            if p_ind is not None:
                ind_ring, ind_image = p_ind.layout(base + at + ind_len)
                buf[at:at + len(ind_ring)] = ind_ring
                # the cacheline after the copy (prepare_shadow_wa_ctx clears the combined per-ctx start there):
                # MI_BATCH_BUFFER_END, so the copy can also be called as a batch from the ring (_wa_calls);
                # the context restore runs only ``indirect_size`` bytes and never reaches it
                buf[at + wa.indirect_size:at + wa.indirect_size + 4] = MI_BATCH_BUFFER_END.to_bytes(4, "little")
                buf[at + ind_len:at + ind_len + len(ind_image)] = ind_image
                wa.indirect_shadow_gma = base + at
                w.pending_events.extend(p_ind.events)
            at += ind_len + regions[2]
            if p_per is not None:
                per_ring, per_image = p_per.layout(base + at)
                buf[at:at + len(per_image)] = per_image
                wa.per_ctx_shadow_gma = int.from_bytes(per_ring[4:8], "little")  # the patched start
                w.pending_events.extend(p_per.events)
            self.gvt.counters["wa_ctx_shadowed"] += 1
        if size:
            assert self.mem is not None  # _alloc_shadow_bb checked it
            for i, mfn in enumerate(self.shadow_bbs[w.id].mfns):
                self.mem.write(mfn << PAGE_SHIFT, bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]).ljust(PAGE_SIZE, b"\0"))
            self.gvt.counters["shadow_bb_bytes"] += size
        w.ring = ring
        w.pending_events.extend(p.events)

    def _alloc_shadow_bb(self, w: Workload, size: int) -> int:
        """Frames from the pool mapped at a free run of the shadow-batch window of host GM. Returns the
        graphics address of the first byte."""
        pages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        if self.mem is None:
            raise WorkloadError("machine memory is not mapped in gvt")
        if len(self.frame_pool) < pages:
            raise WorkloadError("no frames for a shadow batch buffer (vhm ALLOC_FRAMES pending or exhausted)")
        first = self.bb_window.alloc(pages)
        if first is None:
            raise WorkloadError("the shadow batch buffer window of host GM is full")
        mfns = [self.frame_pool.pop() for _ in range(pages)]
        gm = self.bb_window.gm(self.gvt.gpu.aperture_size, first)
        entries = []
        for i, mfn in enumerate(mfns):
            pte = pte_encode(mfn << PAGE_SHIFT)
            self.host_ptes[(gm >> PAGE_SHIFT) + i] = pte
            entries.append(((gm >> PAGE_SHIFT) + i, pte))
        self.gvt.effects.append(PgpuGgttWrite(tuple(entries)))
        self.shadow_bbs[w.id] = ShadowBb(gm, first, mfns)
        return gm

    def _reclaim_shadow_bbs(self) -> None:
        """Give back the shadow batches of workloads that ended (completed, failed, dropped, abandoned).
        Frames whose host mapping was forgotten (vhm restarted: they are not ours any more) stay out."""
        if not self.shadow_bbs:
            return
        live = {w.id for q in self.queues.values() for w in q} | set(self.inflight)
        for wid in [i for i in self.shadow_bbs if i not in live]:
            bb = self.shadow_bbs.pop(wid)
            self.bb_window.free(bb.first, len(bb.mfns))
            index = bb.gm >> PAGE_SHIFT
            mapped = [self.host_ptes.pop(index + i, None) is not None for i in range(len(bb.mfns))]
            if all(mapped):
                self.frame_pool.extend(bb.mfns)

    # ------------------------------------------------------------------------------------ dispatch
    def tick(self, now: float) -> None:
        """The 1 ms timer of the time-slice policy (INTEL_GVT_REQUEST_SCHED): a pass, then dispatch."""
        self.now = max(self.now, now)
        self._schedule(timer=True)
        self.kick(schedule=False)

    def _has_work(self, vgpu_id: int) -> bool:
        """vgpu_has_pending_workload: a queued workload on any engine."""
        return any(self.queues.get((vgpu_id, e)) for e in PHYSICAL_ENGINES)

    def _schedule(self, timer: bool) -> None:
        """intel_gvt_schedule: the run queue is the vGPUs with execlists on, active and not in failsafe
        (start/stop_schedule), then the policy's pass."""
        runnable = {v.id: v.type.weight for v in self.gvt.vgpus.values()
                    if v.active and not v.failsafe and v.submission.execlist_enabled}
        self.policy.sync(runnable, self.now)
        self.policy.schedule(self.now, timer=timer, has_work=self._has_work,
                             engines_idle=all(w is None for w in self.current.values()))

    def _pick(self, engine: str) -> Workload | None:
        """pick_next_workload: the current vGPU's next workload for this engine, unless a switch is
        pending (need_reschedule) or there is no current vGPU (the idle vGPU)."""
        vid = self.policy.dispatchable()
        if vid is None:
            return None
        vgpu = self.gvt.vgpus.get(vid)
        q = self.queues.get((vid, engine))
        if vgpu is None or not q or not vgpu.active or vgpu.failsafe:
            return None
        return q.popleft()

    def kick(self, schedule: bool = True) -> None:
        """intel_gvt_kick_schedule: a policy pass (``schedule``), then dispatch the current vGPU's
        workloads to every idle physical engine."""
        self._reclaim_shadow_bbs()
        if schedule:
            self._schedule(timer=False)
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
            shadow_pdps = (0, 0, 0, 0)
            if any(w.guest_pdps):
                # gvt/gtt.c, gvt/page_track.c / 5.2 prepare_workload: the mm of the context's roots (lazily created),
                # shadowed, OOS pages synced, post-shadow flushed; its SHADOW roots go in the context
                shadow_pdps = vgpu.ppgtt.prepare_workload(w.desc, w.guest_pdps, w.id)
            sh = self._shadow_for(vgpu, w.engine)
            prologue = self._mmio_switch(w, sh)
            self._populate_shadow(w, sh, shadow_pdps, prologue)
        except WorkloadError as err:
            self._fail(w, str(err))
            return False
        self.current[w.engine] = w
        self.inflight[w.id] = w
        w.status = "running"
        w.dispatched_at = self.now
        el = vgpu.submission.execlists[w.engine]
        if w.emulate_schedule_in:
            el.schedule_in(w.ctx)
        # the shadow descriptor: same addressing mode and flags, the shadow LRCA, a host context id
        shadow_desc = ((w.desc & 0xFFF) | sh.gm) | ((vgpu.id << 8 | PHYSICAL_ENGINES.index(w.engine)) << 32)
        self.gvt.effects.append(PgpuSubmit(w.engine, (shadow_desc,), w.id))
        self.gvt.counters["workloads_dispatched"] += 1
        return True

    def _mmio_switch(self, w: Workload, sh: ShadowContext) -> bytes:
        """intel_gvt_switch_mmio, when the engine passes to another vGPU: the commands that save the
        engine's registers for the previous owner and load this vGPU's (mmio_context.py), run ahead of the
        guest's commands; the save lands in the last page of the shadow context (unused by its ring)."""
        owner = self.engine_owner.get(w.engine)
        if owner == w.vgpu.id:
            if not self._inhibit(w):
                return b""
            # a restore-inhibit context loads no register state: its in-context registers come from the
            # vregs (restore_context_mmio_for_inhibit), even with no switch
            self.gvt.counters["mmio_inhibit_restores"] += 1
            dws = mmio_context.lri(mmio_context.inhibit_registers(w.engine), w.vgpu.mmio.read32)
            return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)
        pre = self.gvt.vgpus.get(owner) if owner is not None else None
        save_gm = sh.gm + (SHADOW_PAGES - 1) * PAGE_SIZE if pre is not None else None
        dws = mmio_context.switch_commands(w.engine, w.vgpu.mmio.read32, save_gm)
        w.mmio_save_for = pre.id if pre is not None else None
        self.engine_owner[w.engine] = w.vgpu.id
        self.gvt.counters["mmio_switches"] += 1
        mmio_context.handle_tlb_pending_event(w.vgpu, w.engine)  # switch_mmio ends with it, for next
        return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)

    def _inhibit(self, w: Workload) -> bool:
        """is_inhibit_context: CTX_CONTEXT_CONTROL's value has RESTORE_INHIBIT masked-enabled."""
        try:
            ctl = self._u32(w.vgpu, w.ring_ctx_gpa + CTX_CONTEXT_CONTROL_VAL)
        except WorkloadError:
            return False
        mask = CTX_RESTORE_INHIBIT << 16 | CTX_RESTORE_INHIBIT
        return ctl & mask == mask

    def _save_switched_mmio(self, w: Workload) -> None:
        """The save half of the switch: the previous owner's registers from the save page into its vregs."""
        pre = self.gvt.vgpus.get(w.mmio_save_for) if w.mmio_save_for is not None else None
        sh = self.shadows.get((w.vgpu.id, w.engine))
        if pre is None or sh is None or self.mem is None:
            return
        page = self.mem.read(sh.maddr(SHADOW_PAGES - 1), PAGE_SIZE)
        for offset, value in mmio_context.saved_values(w.engine, page):
            pre.mmio.write32(offset, value)

    def _populate_shadow(self, w: Workload, sh: ShadowContext,
                         shadow_pdps: tuple[int, int, int, int] = (0, 0, 0, 0), prologue: bytes = b"") -> None:
        """populate_shadow_context: copy the guest's PPHWSP and ring-context pages, point the ring at the
        shadow ring holding the copied commands (head 0, tail = their length), and put the shadow PPGTT
        root pointers in place of the guest's (update_shadow_pdps; all zero: no PPGTT)."""
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
        commands = prologue + w.ring
        wa_in_ring = w.wa is not None and bool(prologue)
        if wa_in_ring:
            assert w.wa is not None
            commands = prologue + self._wa_calls(w.wa) + w.ring
        if len(commands) > (SHADOW_RING_PAGES - 1) * PAGE_SIZE:
            raise WorkloadError(f"{len(commands)} bytes of ring with the engine switch: larger than the shadow ring")
        tail = (len(commands) + 7) & ~7
        for off, val in ((CTX_RING_HEAD, 0), (CTX_RING_TAIL, tail), (CTX_RB_START, sh.gm + 2 * PAGE_SIZE),
                         (CTX_RB_CTRL, ((SHADOW_RING_PAGES - 1) * PAGE_SIZE) | RB_VALID)):
            image[off:off + 4] = val.to_bytes(4, "little")
        from .ppgtt import pdps_to_context  # here: ppgtt imports this module

        for off, val in zip(CTX_PDP_VALUES, pdps_to_context(shadow_pdps)):
            image[off:off + 4] = val.to_bytes(4, "little")
        if wa_in_ring:
            # the engine's registers are switched by the prologue in the ring: the workaround batches must
            # run after it (restore, then the WA batches, as the hardware orders a context restore), so they
            # are called from the ring and the shadow context names none
            for off in (CTX_RCS_INDIRECT_CTX, CTX_BB_PER_CTX_PTR):
                image[off:off + 4] = bytes(4)
            self.gvt.counters["wa_ctx_after_switch"] += 1
        elif w.wa is not None:
            self._update_wa_ctx_2_shadow_ctx(w.wa, image)
        self.mem.write(sh.maddr(1), bytes(image))
        ring = commands + bytes(tail - len(commands))
        for i in range(0, len(ring), PAGE_SIZE):
            self.mem.write(sh.maddr(2 + i // PAGE_SIZE), ring[i:i + PAGE_SIZE])

    @staticmethod
    def _wa_calls(wa: WaCtx) -> bytes:
        """MI_BATCH_BUFFER_START (GGTT, privileged) of the indirect-ctx shadow (it ends with the
        MI_BATCH_BUFFER_END gvt put after it) and of the per-ctx shadow, each padded to a qword."""
        dws: list[int] = []
        if wa.indirect_size:
            dws += [PER_CTX_BB_START, wa.indirect_shadow_gma, 0, 0]
        if wa.per_ctx_valid:
            dws += [PER_CTX_BB_START, wa.per_ctx_shadow_gma, 0, 0]
        return struct.pack(f"<{len(dws)}I", *dws)

    @staticmethod
    def _update_wa_ctx_2_shadow_ctx(wa: WaCtx, image: bytearray) -> None:
        """update_wa_ctx_2_shadow_ctx (gvt/scheduler.c): the shadow context's BB_PER_CTX_PTR and
        RCS_INDIRECT_CTX point at the shadows (their flag / size bits kept); RCS_INDIRECT_CTX_OFFSET stays."""
        def patch(off: int, mask: int, gma: int) -> None:
            val = int.from_bytes(image[off:off + 4], "little")
            image[off:off + 4] = ((val & ~mask & 0xFFFF_FFFF) | (gma & mask)).to_bytes(4, "little")

        if wa.indirect_size:
            patch(CTX_RCS_INDIRECT_CTX, INDIRECT_CTX_ADDR_MASK, wa.indirect_shadow_gma)
        if wa.per_ctx_valid:
            patch(CTX_BB_PER_CTX_PTR, PER_CTX_ADDR_MASK, wa.per_ctx_shadow_gma)

    # ---------------------------------------------------------------------------------- completion
    def on_gpu_event(self, engine: str, kind: str, tag: int, status: int = 0, busy_ns: int = 0,
                     reason: str = "", now: float | None = None) -> None:
        """A GPU_EVENT from pgpu for workload ``tag``."""
        if now is not None:
            self.now = max(self.now, now)
        w = self.inflight.get(tag)
        if w is None:
            self.gvt.counters["gpu_event_unknown_tag"] += 1
            return
        if kind == "user_interrupt":
            # The scanner records (and NOOPs) the MI_USER_INTERRUPTs of the ring and privileged batches;
            # what pgpu still reports comes from unscanned PPGTT batches or a PIPE_CONTROL / MI_FLUSH_DW
            # notify: recorded as the matching event (gvt/interrupt.c bits)
            w.pending_events.append(notify_event(w.engine, reason))
            return
        del self.inflight[tag]
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        w.busy_ns = busy_ns
        w.vgpu.figures.workload_done(busy_ns)
        # the engine was this vGPU's from dispatch to completion (what intel_gpu_top calls busy)
        w.vgpu.engine_busy_ns[w.engine] += int(max(0.0, self.now - w.dispatched_at) * 1e9) if w.dispatched_at else 0
        if w.status == "abandoned":  # its vGPU was reset or destroyed meanwhile: nothing to report
            self.gvt.counters["workloads_abandoned"] += 1
            if kind == "ctx_complete" and status == 0:
                self._save_switched_mmio(w)
        elif kind == "ctx_complete" and status == 0:
            self._save_switched_mmio(w)
            self._complete(w)
        else:
            self.engine_owner[w.engine] = None  # what the registers hold is unknown: restore, no save, next
            self._fail(w, reason or f"{kind} (status {status:#x})")
        # complete_current_workload asks for a pass when a switch waits; so does a current vGPU that ran
        # out of work (sim: the GPU does not sit idle until the next tick)
        cur = self.policy.current
        self.kick(schedule=self.policy.need_reschedule or cur is None or not self._has_work(cur))

    def submit_failed(self, tag: int, reason: str) -> None:
        """pgpu refused the ELSP_SUBMIT (or is gone): the workload fails like a hang."""
        w = self.inflight.pop(tag, None)
        if w is None:
            return
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        self.engine_owner[w.engine] = None
        self._fail(w, f"submit refused: {reason}")
        self.kick()

    def _complete(self, w: Workload) -> None:
        """complete_current_workload: write back the guest context, pending events, then schedule-out."""
        vgpu = w.vgpu
        w.status = "done"
        vgpu.workloads_ended["completed"] += 1
        if vgpu.id not in self.gvt.vgpus:  # destroyed meanwhile
            return
        self._check_scanned(w)
        ctx = w.ring_ctx_gpa
        self._update_guest_context(w)
        ts = self._u32(vgpu, ctx + CTX_TIMESTAMP)
        vgpu.mpt.write_gpa(ctx + CTX_RING_HEAD, w.tail.to_bytes(4, "little"))
        ticks = (ts + int(w.busy_ns / TIMESTAMP_NS_PER_TICK)) & 0xFFFF_FFFF
        vgpu.mpt.write_gpa(ctx + CTX_TIMESTAMP, ticks.to_bytes(4, "little"))
        if w.pv:
            self._complete_pv(w)
            return
        for ev in w.pending_events:
            self.gvt.trigger_event(vgpu, ev)
        q = self.queues.get((vgpu.id, w.engine))
        nxt_same = same_context(q[0].desc, w.desc) if q else False
        vgpu.submission.execlists[w.engine].schedule_out(w.desc, nxt_same)
        self.gvt.counters["workloads_completed"] += 1

    def _check_scanned(self, w: Workload) -> None:
        """Count a workload whose ring or batch bytes the guest changed after the scan (from the CPU, or by the
        GPU writing its own commands): a self-modifying or racing guest. What ran was the shadow copy
        (cmd_parser.c perform_bb_shadow, scheduler.c copy_workload_to_ring_buffer), so nothing else follows."""
        for gm, data in w.scanned:
            try:
                now = self._read_gm(w.vgpu, gm, len(data))
            except WorkloadError:
                now = b""
            if now != data:
                self.gvt.counters["shadow_guest_modified"] += 1
                self.gvt.log.info("shadow_guest_modified", vgpu=w.vgpu.id, vm=w.vgpu.vm, engine=w.engine, gm=hex(gm))
                return

    def _update_guest_context(self, w: Workload) -> None:
        """update_guest_context: the ring-context page past ``struct execlist_ring_context`` (the register
        state the GPU saved beyond the fields gvt shadows: ring pointers, timestamp, PDPs) goes back from the
        shadow context to the guest's; head and timestamp are written by the caller."""
        sh = self.shadows.get((w.vgpu.id, w.engine))
        if sh is None or self.mem is None:
            return
        image = self.mem.read(sh.maddr(1) + EXECLIST_RING_CONTEXT_SIZE, PAGE_SIZE - EXECLIST_RING_CONTEXT_SIZE)
        w.vgpu.mpt.write_gpa(w.ring_ctx_gpa + EXECLIST_RING_CONTEXT_SIZE, image)

    def _complete_pv(self, w: Workload) -> None:
        """PV completion: done_seq in the slot, then the engine's user interrupt (always: it is how the
        guest learns of a PV completion), the scanner's recorded ones merged into it."""
        from . import pv

        self.gvt.counters["workloads_completed"] += 1
        if w.pv_seq is None:
            return  # element 0 of a two-element submission: the slot completes with element 1
        pv.complete(w.vgpu, w.engine, w.pv_seq, ok=True)
        for ev in dict.fromkeys(w.pending_events + [f"{w.engine.upper()}_MI_USER_INTERRUPT"]):
            self.gvt.trigger_event(w.vgpu, ev)
        self.gvt.counters["workloads_completed_pv"] += 1

    def _fail(self, w: Workload, reason: str) -> None:
        """A failed workload emulates a vGPU hang: no schedule-out, no interrupt, the engine's queue of
        that vGPU dropped (gvt/handlers.c, gvt/execlist.c)."""
        w.status = "failed"
        w.vgpu.workloads_ended["failed"] += 1
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
            if self.engine_owner.get(e) == vgpu.id:
                self.engine_owner[e] = None  # its vregs are reset: the next dispatch restores them
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
        for vgpu in self.gvt.vgpus.values():  # the PVMMIO shared pages were such frames too: no grant now
            if vgpu.pvmmio.mfn is not None:
                vgpu.pvmmio.mfn = vgpu.pvmmio.gfn = None
                vgpu.pvmmio.granted = PvmmioLevel(0)
                vgpu.mmio.write32(ENABLE_PVMMIO, 0)

    def engine_lost(self, reason: str) -> None:
        """pgpu went away: every workload on it fails (the guests see a hang and reset)."""
        for tag in list(self.inflight):
            self.submit_failed(tag, reason)
