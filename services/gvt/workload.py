"""Workloads: their creation from a guest's context, the scan and shadowing of their commands, and the
shadow context they run in (gvt/scheduler.c intel_vgpu_create_workload, populate_shadow_context,
update_guest_context; gvt/cmd_parser.c intel_gvt_scan_and_shadow_workload).

Creating a workload reads the guest's ring context through the vGPU's GGTT (lrca + 1 page) and copies the
ring bytes [head, tail) out of guest memory; the render engine's workaround batches (indirect ctx, per-ctx
batch) are read too. The commands are scanned (cmd_parser.py: a violation puts the vGPU in failsafe) and
the privileged batches copied into shadow batch buffers: the GPU runs the bytes that were checked. At
dispatch the guest context is copied into the vGPU's shadow context for the engine (shadow.py), its ring
pointed at the shadow ring; at completion the context's register state goes back to the guest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from . import cmd_parser, mmio_context
from .engines import BY_NAME, RING_HWS_PGA
from .errors import FailsafeReason, WorkloadError, WorkloadRefused
from .execlist import desc_ctx_id
from .gtt import PPGTT_ROOT_L4, gma_to_gpa, read_gma
from .handlers import F
from .ppgtt import pdps_to_context
from .shadow import SHADOW_RING_PAGES, ShadowContext

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu



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
    scan_events: int = 0  # how many of pending_events the scan recorded (the rest came from the GPU)
    resubmits: int = 0  # times it went to a new pgpu because the one running it restarted
    # its commands load a shadow PML4 (an LRI of PDP0 the scan patched to the shadow's address): the
    # address is baked into the shadow ring, so the saved state cannot carry it to a rebuilt shadow
    pdp_patched: bool = False

    @property
    def ctx_id(self) -> int:
        return desc_ctx_id(self.desc)


def read_u32(vgpu: "Vgpu", gpa: int) -> int:
    """A dword of guest memory. Raises WorkloadError if ``gpa`` is not guest RAM."""
    data = vgpu.mpt.read_gpa(gpa, 4)
    if data is None:
        raise WorkloadError(f"gpa {gpa:#x} is not guest RAM")
    return int.from_bytes(data, "little")


# ---------------------------------------------------------------------------------------- creation
def create(gvt: "Gvt", wid: int, vgpu: "Vgpu", engine: str, desc: int, pair: tuple[int, int],
           emulate_schedule_in: bool, after: Workload | None = None) -> Workload:
    """intel_vgpu_create_workload: read head/tail/start/ctl from the guest ring context, copy the ring,
    then scan and shadow it. ``after``: the queued workload of the same context this one continues (the
    guest's head may be stale: the ring is read from that workload's tail)."""
    lrca = desc & 0xFFFF_F000
    try:  # intel_vgpu_create_workload: "invalid guest context LRCA" outside the vGPU's GGTT range
        ctx_gpa = gma_to_gpa(vgpu, lrca + PAGE_SIZE) & ~(PAGE_SIZE - 1)
    except WorkloadError:
        gvt.counters["workload_create_failed_lrca"] += 1
        raise
    head = read_u32(vgpu, ctx_gpa + CTX_RING_HEAD) & RB_HEAD_MASK
    tail = read_u32(vgpu, ctx_gpa + CTX_RING_TAIL) & RB_TAIL_MASK
    start = read_u32(vgpu, ctx_gpa + CTX_RB_START) & 0xFFFF_F000
    ctl = read_u32(vgpu, ctx_gpa + CTX_RB_CTRL)
    size = (ctl & RB_SIZE_MASK) + PAGE_SIZE
    if after is not None:
        head = after.tail
    if head >= size or tail >= size:
        raise WorkloadError(f"ring head {head:#x} / tail {tail:#x} outside the {size:#x}-byte ring")
    try:  # the ring is read through the vGPU's own GGTT view (gvt/scheduler.c copy_workload_to_ring_buffer)
        if tail >= head:
            pieces = [(start + head, read_gma(vgpu, start + head, tail - head))]
        else:
            pieces = [(start + head, read_gma(vgpu, start + head, size - head)),
                      (start, read_gma(vgpu, start, tail))]
    except WorkloadError:
        gvt.counters["workload_create_failed_ring"] += 1
        raise
    ring = b"".join(data for _gm, data in pieces)
    if len(ring) > (SHADOW_RING_PAGES - 1) * PAGE_SIZE:
        raise WorkloadError(f"{len(ring)} bytes of ring: larger than the shadow ring")
    pdps = tuple(read_u32(vgpu, ctx_gpa + off) for off in CTX_PDP_VALUES)
    w = Workload(wid, vgpu, engine, desc, pair, emulate_schedule_in, ctx_gpa, head, tail,
                 ring, pdps, scanned=[p for p in pieces if p[1]])
    if engine == "rcs":
        w.wa = _wa_ctx(gvt, vgpu, ctx_gpa)
    _scan(gvt, w)  # scanned and shadowed at creation: the GPU runs the bytes that were checked
    return w


def _wa_ctx(gvt: "Gvt", vgpu: "Vgpu", ctx_gpa: int) -> WaCtx | None:
    """intel_vgpu_create_workload (RCS0): RCS_INDIRECT_CTX gives the indirect-ctx buffer (address bits
    31:6, size in cachelines bits 5:0), BB_PER_CTX_PTR the per-ctx batch (bits 31:12, valid bit 0); each
    must lie in the vGPU's GM (intel_gvt_ggtt_validate_range, else -EINVAL)."""
    indirect = read_u32(vgpu, ctx_gpa + CTX_RCS_INDIRECT_CTX)
    per_ctx = read_u32(vgpu, ctx_gpa + CTX_BB_PER_CTX_PTR)
    wa = WaCtx(indirect & INDIRECT_CTX_ADDR_MASK, (indirect & INDIRECT_CTX_SIZE_MASK) * CACHELINE_BYTES,
               per_ctx & PER_CTX_ADDR_MASK, bool(per_ctx & PER_CTX_VALID))
    if not wa.present:
        return None
    if wa.indirect_size and not vgpu.resource.contains(wa.indirect_gma, wa.indirect_size):
        gvt.counters["wa_ctx_invalid"] += 1
        raise WorkloadError(f"invalid wa_ctx at {wa.indirect_gma:#x} (+{wa.indirect_size:#x})")
    if wa.per_ctx_valid and not vgpu.resource.contains(wa.per_ctx_gma, CACHELINE_BYTES):
        gvt.counters["wa_ctx_invalid"] += 1
        raise WorkloadError(f"invalid per_ctx at {wa.per_ctx_gma:#x}")
    if wa.indirect_size and wa.indirect_gma % PAGE_SIZE:  # scan_wa_ctx: "ring base is page aligned"
        gvt.counters["wa_ctx_invalid"] += 1
        raise WorkloadRefused(f"indirect ctx at {wa.indirect_gma:#x} is not page aligned")
    return wa


def is_inhibit_context(w: Workload) -> bool:
    """is_inhibit_context: CTX_CONTEXT_CONTROL's value has RESTORE_INHIBIT masked-enabled."""
    try:
        ctl = read_u32(w.vgpu, w.ring_ctx_gpa + CTX_CONTEXT_CONTROL_VAL)
    except WorkloadError:
        return False
    mask = CTX_RESTORE_INHIBIT << 16 | CTX_RESTORE_INHIBIT
    return ctl & mask == mask


# ------------------------------------------------------------------------------------ command scan
def _scan_hooks(gvt: "Gvt", w: Workload) -> cmd_parser.ScanHooks:
    """The vGPU side of the scanner's LRI patches and index mode for workload ``w``."""
    vgpu, table = w.vgpu, gvt.table

    def shadow_pml4(pml4: int) -> int | None:
        mm = vgpu.ppgtt.find(PPGTT_ROOT_L4, (pml4, 0, 0, 0))
        if mm is not None and not mm.shadowed:  # deferred, or restored by a restarted gvt: build it now
            vgpu.ppgtt.try_shadow(mm)
        if mm is None or not mm.shadowed:
            return None
        return mm.shadow_pdps[0]

    inhibit = is_inhibit_context(w)
    return cmd_parser.ScanHooks(
        hws_pga=vgpu.mmio.read32(BY_NAME[w.engine].base + RING_HWS_PGA),
        shadow_pml4=shadow_pml4,
        write_patch=lambda off, value: table.cmd_write_patch(vgpu, off, value),
        set_vreg=vgpu.mmio.write32,
        sr_in_ctx=lambda off: table.has_flag(off, F.SR_IN_CTX),
        restore_inhibit=inhibit)


def _scan(gvt: "Gvt", w: Workload) -> None:
    """intel_gvt_scan_and_shadow_workload (gvt/cmd_parser.c): scan the ring and the privileged batches,
    copy the batches into shadow batch buffers mapped in host GM, patch the ring to them, record the
    user interrupts. A ScanError puts this vGPU alone in failsafe; the workload is not queued."""
    vgpu = w.vgpu

    def read_gm(gm: int, n: int) -> bytes:
        try:
            return read_gma(vgpu, gm, n)
        except WorkloadError as err:
            raise cmd_parser.ScanError(cmd_parser.Errno.EFAULT, f"batch buffer: {err}") from None

    def parser() -> cmd_parser.Parser:
        return cmd_parser.Parser(w.engine, vgpu.resource.contains, cmd_parser.whitelist(gvt.table),
                                 any(w.guest_pdps), read_gm, _scan_hooks(gvt, w))

    def scan(p: cmd_parser.Parser, data: bytes, what: str) -> None:
        try:
            p.scan(data)
        except cmd_parser.ScanError as err:
            gvt.counters["cmd_scan_errors"] += 1
            gvt.counters[f"cmd_scan_{err.errno.value.lower()}"] += 1
            if what != "ring":
                gvt.counters["wa_ctx_scan_errors"] += 1
            gvt.log.warning("cmd_scan_error", vgpu=vgpu.id, vm=vgpu.vm, engine=w.engine, buffer=what,
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
    _shadow_scanned(gvt, w, p, p_ind, p_per)
    w.pdp_patched = any(x is not None and x.counts.get("pdp_patched") for x in (p, p_ind, p_per))
    gvt.counters["workloads_scanned"] += 1


def _shadow_scanned(gvt: "Gvt", w: Workload, p: cmd_parser.Parser, p_ind: cmd_parser.Parser | None,
                    p_per: cmd_parser.Parser | None) -> None:
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
    bb = gvt.shadow.alloc_batch(w.id, size) if size else None
    base = bb.gm if bb is not None else 0
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
        gvt.counters["wa_ctx_shadowed"] += 1
    if bb is not None:
        mem = gvt.shadow.mem
        assert mem is not None  # alloc_batch checked it
        for i, mfn in enumerate(bb.mfns):
            mem.write(mfn << PAGE_SHIFT, bytes(buf[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]).ljust(PAGE_SIZE, b"\0"))
        gvt.counters["shadow_bb_bytes"] += size
    w.ring = ring
    w.pending_events.extend(p.events)


# ---------------------------------------------------------------------------------- shadow context
def populate_shadow_context(gvt: "Gvt", w: Workload, sh: ShadowContext,
                            shadow_pdps: tuple[int, int, int, int] = (0, 0, 0, 0), prologue: bytes = b"") -> None:
    """populate_shadow_context: copy the guest's PPHWSP and ring-context pages, point the ring at the
    shadow ring holding the copied commands (head 0, tail = their length), and put the shadow PPGTT
    root pointers in place of the guest's (update_shadow_pdps; all zero: no PPGTT). ``prologue``: the
    engine-switch commands that run ahead of the guest's (mmio_context.py)."""
    mem = gvt.shadow.mem
    if mem is None:
        raise WorkloadError("machine memory is not mapped in gvt")
    vgpu = w.vgpu
    lrca = w.desc & 0xFFFF_F000
    pphwsp = vgpu.mpt.read_gpa(gma_to_gpa(vgpu, lrca) & ~(PAGE_SIZE - 1), PAGE_SIZE)
    state = vgpu.mpt.read_gpa(w.ring_ctx_gpa, PAGE_SIZE)
    if pphwsp is None or state is None:
        raise WorkloadError("context pages are not guest RAM")
    mem.write(sh.maddr(0), pphwsp)
    image = bytearray(state)
    commands = prologue + w.ring
    wa_in_ring = w.wa is not None and bool(prologue)
    if wa_in_ring:
        assert w.wa is not None
        commands = prologue + _wa_calls(w.wa) + w.ring
    if len(commands) > (SHADOW_RING_PAGES - 1) * PAGE_SIZE:
        raise WorkloadError(f"{len(commands)} bytes of ring with the engine switch: larger than the shadow ring")
    tail = (len(commands) + 7) & ~7
    for off, val in ((CTX_RING_HEAD, 0), (CTX_RING_TAIL, tail), (CTX_RB_START, sh.gm + 2 * PAGE_SIZE),
                     (CTX_RB_CTRL, ((SHADOW_RING_PAGES - 1) * PAGE_SIZE) | RB_VALID)):
        image[off:off + 4] = val.to_bytes(4, "little")
    for off, val in zip(CTX_PDP_VALUES, pdps_to_context(shadow_pdps)):
        image[off:off + 4] = val.to_bytes(4, "little")
    if wa_in_ring:
        # the engine's registers are switched by the prologue in the ring: the workaround batches must
        # run after it (restore, then the WA batches, as the hardware orders a context restore), so they
        # are called from the ring and the shadow context names none
        for off in (CTX_RCS_INDIRECT_CTX, CTX_BB_PER_CTX_PTR):
            image[off:off + 4] = bytes(4)
        gvt.counters["wa_ctx_after_switch"] += 1
    elif w.wa is not None:
        _update_wa_ctx_2_shadow_ctx(w.wa, image)
    mem.write(sh.maddr(1), bytes(image))
    ring = commands + bytes(tail - len(commands))
    for i in range(0, len(ring), PAGE_SIZE):
        mem.write(sh.maddr(2 + i // PAGE_SIZE), ring[i:i + PAGE_SIZE])


def inhibit_restore_commands(w: Workload) -> bytes:
    """restore_context_mmio_for_inhibit: a restore-inhibit context loads no register state, so its
    in-context registers are loaded from the vregs by commands ahead of its ring."""
    dws = mmio_context.lri(mmio_context.inhibit_registers(w.engine), w.vgpu.mmio.read32)
    return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)


def _wa_calls(wa: WaCtx) -> bytes:
    """MI_BATCH_BUFFER_START (GGTT, privileged) of the indirect-ctx shadow (it ends with the
    MI_BATCH_BUFFER_END gvt put after it) and of the per-ctx shadow, each padded to a qword."""
    dws: list[int] = []
    if wa.indirect_size:
        dws += [PER_CTX_BB_START, wa.indirect_shadow_gma, 0, 0]
    if wa.per_ctx_valid:
        dws += [PER_CTX_BB_START, wa.per_ctx_shadow_gma, 0, 0]
    return struct.pack(f"<{len(dws)}I", *dws)


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


# -------------------------------------------------------------------------------------- completion
def update_guest_context(gvt: "Gvt", w: Workload) -> None:
    """update_guest_context: the ring-context page past ``struct execlist_ring_context`` (the register
    state the GPU saved beyond the fields gvt shadows: ring pointers, timestamp, PDPs) goes back from the
    shadow context to the guest's; the ring head becomes the workload's tail and the timestamp advances by
    the time the workload was busy."""
    vgpu = w.vgpu
    sh = gvt.shadow.contexts.get((vgpu.id, w.engine))
    mem = gvt.shadow.mem
    if sh is not None and mem is not None:
        image = mem.read(sh.maddr(1) + EXECLIST_RING_CONTEXT_SIZE, PAGE_SIZE - EXECLIST_RING_CONTEXT_SIZE)
        vgpu.mpt.write_gpa(w.ring_ctx_gpa + EXECLIST_RING_CONTEXT_SIZE, image)
    ctx = w.ring_ctx_gpa
    ts = read_u32(vgpu, ctx + CTX_TIMESTAMP)
    vgpu.mpt.write_gpa(ctx + CTX_RING_HEAD, w.tail.to_bytes(4, "little"))
    ticks = (ts + int(w.busy_ns / TIMESTAMP_NS_PER_TICK)) & 0xFFFF_FFFF
    vgpu.mpt.write_gpa(ctx + CTX_TIMESTAMP, ticks.to_bytes(4, "little"))


def guest_modified(w: Workload) -> int | None:
    """The graphics address of the first ring or batch bytes the guest changed after the scan (from the
    CPU, or by the GPU writing its own commands), or None. What ran was the shadow copy (cmd_parser.c
    perform_bb_shadow, scheduler.c copy_workload_to_ring_buffer), so nothing else follows."""
    for gm, data in w.scanned:
        try:
            now = read_gma(w.vgpu, gm, len(data))
        except WorkloadError:
            now = b""
        if now != data:
            return gm
    return None
