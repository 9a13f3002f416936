"""The declarative register table (i915/gvt handlers.c): which MMIO offsets are tracked, their flags,
read-only bits and handlers. Untracked offsets read back whatever was written (plain vreg).

The table is a list of :class:`Reg` rows (each covering ``size`` bytes, one entry per dword as in
``setup_mmio_info``) and :class:`Block` ranges (the PVINFO page), built once into a dict. Its base is the
real SKL/KBL table (mmio_info.py: every row of handlers.c with its flags and ro_mask, 2,065 tracked
dwords); gvtsim's rows with behaviour are laid over it with :meth:`MmioTable.overlay` (their handlers, the
real flags). Other modules contribute rows the same way (execlist.py's ELSP / EXECLIST_STATUS / CSB, the
scanner's, a display module's handlers for the display rows the real table declares).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...hardware.engines import TLB_INVAL_ENGINE as TLB_CONTROL  # gvt_reg_tlb_control_handler's engine lookup
from ...hardware.regs import FENCE_REG_GEN6_LO, FORCEWAKE_ACKS, RING_IMR, RING_NOPID
from ...hardware.regs import NUM_FENCES as MAX_FENCES
from . import engines as eng
from . import interrupt as irq
from . import mmio_info
from . import pvinfo
from .effects import PgpuMmioWrite
from .errors import EmulationError, FailsafeReason

if TYPE_CHECKING:
    from .vgpu import Vgpu

ReadFn = Callable[["Vgpu", int, int], int]
WriteFn = Callable[["Vgpu", int, int, int], None]


class F(enum.IntFlag):
    """Register attributes (handlers.c F_*)."""

    NONE = 0
    RO = 1 << 0  # every bit read-only: guest writes are dropped (ro_mask = all ones)
    MODE_MASK = 1 << 1  # masked register: bits 31:16 select which of bits 15:0 a write changes
    CMD_ACCESS = 1 << 2  # a guest command buffer may touch it (LRI/SRM), checked by the command scanner
    UNALIGN = 1 << 3  # unaligned accesses allowed
    GMADR = 1 << 4  # holds a graphics memory address (addr_mask names its bits)
    CMD_WRITE_PATCH = 1 << 5  # an LRI of it gets its value from the register's write handler
    SR_IN_CTX = 1 << 6  # saved / restored in the context image
    HW_RO = 1 << 7  # F_RO of handlers.c: declared read-only (writes keep the ro_mask bits)
    PM_SAVE = 1 << 8
    ACCESSED = 1 << 9


@dataclass(frozen=True)
class Reg:
    """One tracked register (or ``size`` bytes of them), with its attributes and handlers."""

    offset: int
    size: int = 4
    flags: F = F.NONE
    ro_mask: int = 0
    read: ReadFn | None = None
    write: WriteFn | None = None
    default: int = 0  # its value in the device snapshot the vregs start from
    name: str = ""  # the register's name in the real table (handlers.c), when it has one
    handler: str = ""  # the real table's handler name(s) for this row ("read/write"), informational

    @property
    def effective_ro_mask(self) -> int:
        return (1 << 64) - 1 if self.flags & F.RO else self.ro_mask


@dataclass(frozen=True)
class Block:
    """A range handled as a whole (gvt_mmio_block), e.g. the PVINFO page."""

    start: int
    size: int
    read: ReadFn | None = None
    write: WriteFn | None = None

    def __contains__(self, offset: int) -> bool:
        return self.start <= offset < self.start + self.size


# ------------------------------------------------------------------------------------ handlers
def default_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    """intel_vgpu_default_mmio_read: the vreg."""
    return vgpu.mmio.read(offset, size)


def default_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """intel_vgpu_default_mmio_write: store into the vreg."""
    vgpu.mmio.write(offset, data, size)


def _masked_enabled(data: int, bits: int) -> bool:
    """IS_MASKED_BITS_ENABLED: the bits are selected by the mask half AND set."""
    return (data >> 16) & bits == bits and data & bits == bits


def calc_mode_mask_reg(old: int, new: int) -> int:
    """CALC_MODE_MASK_REG: apply a masked write to the low 16 bits, keep the written mask half."""
    return (new & 0xFFFF_0000) | ((old & 0xFFFF) & ~(new >> 16)) | (new & (new >> 16) & 0xFFFF)


def gdrst_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """GEN6_GDRST 0x941C: reset the named engines (FULL => all), not a DMLR; then ack (vreg := 0)."""
    vgpu.mmio.write(offset, data, size)
    value = vgpu.mmio.read32(offset)
    if not value & eng.GDRST_FULL and value & eng.GDRST_GUC:
        vgpu.mmio.write32(eng.GUC_STATUS, vgpu.mmio.read32(eng.GUC_STATUS) | eng.GS_MIA_IN_RESET)
    vgpu.reset(dmlr=False, engine_mask=eng.gdrst_to_mask(value))
    vgpu.mmio.write32(offset, 0)


def ring_mode_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """RING_MODE (GFX_MODE): enabling PPGTT or execlists before reading PVINFO => failsafe
    UNSUPPORTED_GUEST (i915_vgpu.c); enabling execlists selects execlist submission for the engine."""
    vgpu.mmio.write(offset, data, size)
    d = data & 0xFFFF_FFFF
    if ((_masked_enabled(d, eng.GFX_PPGTT_ENABLE) or _masked_enabled(d, eng.GFX_RUN_LIST_ENABLE))
            and not vgpu.pv_notified):
        vgpu.enter_failsafe(FailsafeReason.UNSUPPORTED_GUEST, "PPGTT/execlist enabled before reading PVINFO")
        return
    engine = eng.engine_of(offset)
    if engine is not None and _masked_enabled(d, eng.GFX_RUN_LIST_ENABLE):
        vgpu.submission.execlist_enabled.add(engine.name)


def ring_reset_ctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """RING_RESET_CTL: READY_TO_RESET follows REQUEST_RESET at once (the engine is always ready)."""
    vgpu.mmio.write(offset, data, size)
    value = vgpu.mmio.read32(offset)
    if _masked_enabled(value, eng.RESET_CTL_REQUEST_RESET):
        value |= eng.RESET_CTL_READY_TO_RESET
    elif (value >> 16) & eng.RESET_CTL_REQUEST_RESET:
        value &= ~eng.RESET_CTL_READY_TO_RESET
    vgpu.mmio.write32(offset, value)


def forcewake_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """mul_force_wake_write: apply the masked write, ack it immediately."""
    new = calc_mode_mask_reg(vgpu.mmio.read32(offset), data & 0xFFFF_FFFF)
    vgpu.mmio.write32(offset, new)
    vgpu.mmio.write32(FORCEWAKE_ACKS[offset], new & 0xFFFF)


def tlb_control_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """gvt_reg_tlb_control_handler: the vreg reads back 0 at once (the guest's wait ends), and the engine's
    bit in submission.tlb_handle_pending is set: the physical invalidation is done at the next switch of the
    engine to this vGPU (mmio_context.handle_tlb_pending_event)."""
    vgpu.mmio.write(offset, 0, size)
    vgpu.submission.tlb_handle_pending.add(TLB_CONTROL[offset])
    vgpu.count("tlb_invalidate_requests")


def _fence_check(vgpu: "Vgpu", offset: int) -> int:
    """sanitize_fence_mmio_access: an out-of-range fence is an error; before PVINFO it also marks the
    guest as not GVT-aware (failsafe UNSUPPORTED_GUEST)."""
    num = (offset - FENCE_REG_GEN6_LO) >> 3
    if num >= len(vgpu.resource.fences):
        if not vgpu.pv_notified:
            vgpu.enter_failsafe(FailsafeReason.UNSUPPORTED_GUEST, f"fence {num} accessed before reading PVINFO")
        raise EmulationError(f"fence register {num} beyond the vGPU's {len(vgpu.resource.fences)} fences")
    return num


def fence_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    _fence_check(vgpu, offset)
    return vgpu.mmio.read(offset, size)


def fence_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """Store, then program the host fence the vGPU owns (vGPU fence i -> host fence fences[i])."""
    num = _fence_check(vgpu, offset)
    vgpu.mmio.write(offset, data, size)
    host = FENCE_REG_GEN6_LO + 8 * vgpu.resource.fences[num]
    vgpu.emit(PgpuMmioWrite(host, 8, vgpu.mmio.read(FENCE_REG_GEN6_LO + 8 * num, 8)))


def force_nonpriv_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """force_nonpriv_write (handlers.c): a FORCE_NONPRIV slot may name only a whitelisted register
    (force_nonpriv_white_list) or the engine's RING_NOPID; anything else is logged and dropped."""
    engine = eng.engine_of(offset)
    if size != 4 or offset % 4 or engine is None:
        raise EmulationError(f"FORCE_NONPRIV access of {size} bytes at {offset:#x}")
    reg = data & 0x03FF_FFFC  # REG_GENMASK(25, 2)
    if reg not in FORCE_NONPRIV_WHITELIST and reg != engine.base + RING_NOPID:
        vgpu.count("force_nonpriv_refused")
        vgpu.log.warning("force_nonpriv_refused", vgpu=vgpu.id, offset=hex(offset), reg=hex(reg))
        return
    vgpu.mmio.write(offset, data, size)


FORCE_NONPRIV_WHITELIST = frozenset(mmio_info.FORCE_NONPRIV_WHITELIST)


def hws_pga_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """hws_pga_write (handlers.c): the engine's HWS page must be 0 or a page of the vGPU's GM (else
    -EINVAL); the value is vgpu->hws_pga[ring], where gvt mirrors the CSB and where store-index writes go."""
    value = data & 0xFFFF_FFFF
    if value and not vgpu.resource.contains(value, 4096):
        raise EmulationError(f"HWSP address {value:#x} outside the vGPU's graphics memory")
    vgpu.mmio.write(offset, value, size)


# --------------------------------------------------------------------------------------- table
#: handlers.c F_* -> gvtsim's F
_REAL_FLAGS: tuple[tuple[int, "F"], ...] = (
    (mmio_info.F_RO, F.HW_RO), (mmio_info.F_GMADR, F.GMADR), (mmio_info.F_MODE_MASK, F.MODE_MASK),
    (mmio_info.F_CMD_ACCESS, F.CMD_ACCESS), (mmio_info.F_UNALIGN, F.UNALIGN), (mmio_info.F_SR_IN_CTX, F.SR_IN_CTX),
    (mmio_info.F_CMD_WRITE_PATCH, F.CMD_WRITE_PATCH), (mmio_info.F_PM_SAVE, F.PM_SAVE),
    (mmio_info.F_ACCESSED, F.ACCESSED))


def real_flags(bits: int) -> "F":
    """gvtsim flags of a handlers.c F_* mask."""
    out = F.NONE
    for real, ours in _REAL_FLAGS:
        if bits & real:
            out |= ours
    return out


def real_regs() -> list[Reg]:
    """Every row of the SKL/KBL table (mmio_info.py) as a tracked row: its flags and ro_mask, the default
    MMIO handlers (the rows' behaviour comes from the rows laid over them)."""
    return [Reg(m.offset, m.size, real_flags(m.flags), m.ro_mask, name=m.name,
                handler="/".join(h for h in (m.read, m.write) if h)) for m in mmio_info.MMIO_INFO]


def _interrupt_regs() -> list[Reg]:
    regs = [Reg(irq.GEN8_MASTER_IRQ, write=irq.master_write)]
    # RING_IMR of every engine (MMIO_RING_DFH(RING_IMR, ..., intel_vgpu_reg_imr_handler)): store, check pending
    regs += [Reg(e.base + RING_IMR, flags=F.CMD_ACCESS, write=irq.imr_write) for e in eng.ENGINES]
    for g in irq.GROUPS:
        regs += [Reg(g.base + irq.ISR), Reg(g.base + irq.IMR, write=irq.imr_write),
                 Reg(g.base + irq.IIR, write=irq.iir_write), Reg(g.base + irq.IER, write=irq.ier_write)]
    return regs


def _engine_regs() -> list[Reg]:
    regs = []
    for e in eng.ENGINES:
        b = e.base
        regs += [
            Reg(b + eng.RING_TAIL, flags=F.CMD_ACCESS), Reg(b + eng.RING_HEAD, flags=F.CMD_ACCESS),
            Reg(b + eng.RING_START, flags=F.CMD_ACCESS), Reg(b + eng.RING_CTL, flags=F.CMD_ACCESS),
            Reg(b + eng.RING_RESET_CTL, flags=F.CMD_ACCESS, write=ring_reset_ctl_write),
            Reg(b + eng.RING_CTX_SR_CTL, flags=F.CMD_ACCESS),
            Reg(b + eng.RING_PDP_BASE, size=32, flags=F.CMD_ACCESS),
            Reg(b + eng.RING_MODE, flags=F.MODE_MASK | F.CMD_ACCESS, write=ring_mode_write),
        ]
    return regs


def _misc_regs() -> list[Reg]:
    regs = [
        Reg(eng.GDRST, write=gdrst_write),
        Reg(eng.GUC_STATUS, flags=F.RO),
        Reg(0x101008),  # GFX_FLSH_CNTL_GEN6: the guest's GGTT flush; the physical flush follows GGTT_WRITE
    ]
    regs += [Reg(req, write=forcewake_write) for req in FORCEWAKE_ACKS]  # masked by its handler
    regs += [Reg(ack, flags=F.RO) for ack in FORCEWAKE_ACKS.values()]
    regs += [Reg(off, write=tlb_control_write) for off in TLB_CONTROL]
    regs += [Reg(FENCE_REG_GEN6_LO + 8 * i, size=8, read=fence_read, write=fence_write) for i in range(MAX_FENCES)]
    # FORCE_NONPRIV slots of the render engine: 0x24d0, 12 registers (MMIO_F(_MMIO(0x24d0), 48, ...))
    regs += [Reg(0x24D0 + 4 * i, flags=F.CMD_ACCESS | F.CMD_WRITE_PATCH, write=force_nonpriv_write) for i in range(12)]
    regs += [Reg(e.base + eng.RING_HWS_PGA, flags=F.GMADR | F.CMD_ACCESS, write=hws_pga_write) for e in eng.ENGINES]
    return regs


def always_pure(vgpu: "Vgpu", offset: int) -> bool:
    """A :data:`PURE_READS` condition: the handler never changes anything."""
    return True


def _pvinfo_read_pure(vgpu: "Vgpu", offset: int) -> bool:
    """pvinfo_read changes only ``pv_notified`` (to True): nothing once it is set, except the pv_mmio
    redirect, which reads another register through its own handler."""
    return vgpu.pv_notified and offset != pvinfo.PV_MMIO


#: Read handlers that change nothing of the vGPU (statistics aside), and when: such a read, emulated again
#: after a gvt restart, returns what it returned the first time, so gvt need not record it before it
#: answers (state.py). A handler not listed here is taken to change state. Modules whose tables
#: hold more such handlers add them (execlist.py). A read that puts the vGPU in failsafe changed it
#: whatever its handler (core.py checks).
PURE_READS: dict[ReadFn, Callable[["Vgpu", int], bool]] = {
    default_read: always_pure,
    fence_read: always_pure,  # a refused fence read raises, and puts the vGPU in failsafe
    pvinfo.pvinfo_read: _pvinfo_read_pure,
}


def default_regs() -> list[Reg]:
    """Every tracked register of this issue, grouped by hardware concern."""
    return _interrupt_regs() + _engine_regs() + _misc_regs()


def default_blocks() -> list[Block]:
    return [Block(pvinfo.VGT_PVINFO_PAGE, pvinfo.VGT_PVINFO_SIZE, pvinfo.pvinfo_read, pvinfo.pvinfo_write)]


#: offsets whose read handler the table remembers at most (a few hundred are read in practice)
READ_FNS_MAX = 4096


class MmioTable:
    """The tracked-register dict (one entry per dword) plus blocks: intel_vgpu_mmio_reg_rw."""

    def __init__(self, regs: Iterable[Reg] = (), blocks: Iterable[Block] = ()) -> None:
        self.info: dict[int, Reg] = {}
        self.blocks: list[Block] = []
        # offset -> the read handler serving it (block, tracked register or the plain vreg): looked up on
        # every trapped read, and the rows change only while the table is built (extend, overlay clear it).
        # Bounded: the offsets are the guests' choice, and a guest reading every byte of its BAR0 must not
        # grow it without end (it starts again empty past READ_FNS_MAX)
        self._read_fns: dict[int, ReadFn] = {}
        self.extend(regs, blocks)

    def extend(self, regs: Iterable[Reg] = (), blocks: Iterable[Block] = ()) -> None:
        """Add rows (a later row for the same dword replaces the earlier one)."""
        for r in regs:
            for off in range(r.offset, r.offset + r.size, 4):
                self.info[off] = r
        self.blocks.extend(blocks)
        self._read_fns.clear()

    def overlay(self, regs: Iterable[Reg] = (), blocks: Iterable[Block] = ()) -> None:
        """Lay rows with behaviour over the table: where a dword is already tracked (a row of the real
        table), the new row brings its handlers, default and read-only bits and keeps the real flags (plus
        its own UNALIGN / RO); elsewhere it is added as :meth:`extend` would."""
        for r in regs:
            base = self.info.get(r.offset)
            if base is not None and base.name:
                keep = r.flags & (F.UNALIGN | F.MODE_MASK | F.RO)
                r = Reg(r.offset, r.size, base.flags | keep, r.ro_mask or base.ro_mask, r.read, r.write, r.default,
                        base.name, base.handler)
            for off in range(r.offset, r.offset + r.size, 4):
                self.info[off] = r
        self.blocks.extend(blocks)
        self._read_fns.clear()

    @property
    def tracked_mmio(self) -> int:
        """Tracked dwords (gvt->mmio.num_tracked_mmio)."""
        return len(self.info)

    def find_block(self, offset: int) -> Block | None:
        for b in self.blocks:
            if offset in b:
                return b
        return None

    def read_fn(self, offset: int) -> ReadFn:
        """The handler a read of ``offset`` runs: its block's, its tracked register's, or the plain vreg."""
        fn = self._read_fns.get(offset)
        if fn is None:
            block = self.find_block(offset)
            if block is not None:
                fn = block.read or default_read
            else:
                r = self.info.get(offset)
                fn = (r.read if r else None) or default_read
            if len(self._read_fns) >= READ_FNS_MAX:
                self._read_fns.clear()
            self._read_fns[offset] = fn
        return fn

    def has_flag(self, offset: int, flag: "F") -> bool:
        """Whether the tracked register holding ``offset`` has ``flag``."""
        r = self.info.get(offset & ~3)
        return bool(r and r.flags & flag)

    def cmd_write_patch(self, vgpu: "Vgpu", offset: int, value: int) -> int | None:
        """cmd_reg_handler's F_CMD_WRITE_PATCH step: run the register's write handler on ``value`` and
        return what it left in the vreg (the vreg itself restored); None when the register is not patched.
        A register with read-only bits is refused (-EBADRQC upstream): None is returned and counted."""
        r = self.info.get(offset & ~3)
        if r is None or not r.flags & F.CMD_WRITE_PATCH or r.write is None:
            return None
        if r.effective_ro_mask:
            vgpu.count("cmd_write_patch_ro")
            return None
        old = vgpu.mmio.read32(offset)
        r.write(vgpu, offset, value, 4)
        new = vgpu.mmio.read32(offset)
        vgpu.mmio.write32(offset, old)
        return new

    def allows_unaligned(self, offset: int) -> bool:
        r = self.info.get(offset & ~3)
        return bool(r and r.flags & F.UNALIGN)

    def snapshot(self, size: int) -> bytes:
        """The device's register snapshot (gvt->firmware.mmio) the vregs start from and DMLR restores."""
        buf = bytearray(size)
        for off, r in self.info.items():
            if r.default and off == r.offset:
                buf[off:off + r.size] = r.default.to_bytes(r.size, "little")
        return bytes(buf)

    def read(self, vgpu: "Vgpu", offset: int, size: int) -> int:
        """Read through the block, the tracked handler, or the plain vreg."""
        return self.read_fn(offset)(vgpu, offset, size)

    def read_is_pure(self, vgpu: "Vgpu", offset: int) -> bool:
        """Whether a read of ``offset`` now would change nothing of the vGPU (:data:`PURE_READS`)."""
        when = PURE_READS.get(self.read_fn(offset))
        return when is not None and when(vgpu, offset)

    def write(self, vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
        """Write with read-only bits kept and masked-register semantics applied after the handler."""
        block = self.find_block(offset)
        if block is not None:
            (block.write or default_write)(vgpu, offset, data, size)
            return
        r = self.info.get(offset)
        if r is None:
            default_write(vgpu, offset, data, size)
            return
        full = (1 << (8 * size)) - 1
        ro = r.effective_ro_mask & full
        if ro == full:
            vgpu.count("mmio_ro_write")
            vgpu.log.warning("mmio_ro_write", vgpu=vgpu.id, offset=hex(offset), data=hex(data))
            return
        if ro:
            data = (data & ~ro) | (vgpu.mmio.read(offset, size) & ro)
        old = vgpu.mmio.read32(offset)
        (r.write or default_write)(vgpu, offset, data, size)
        if r.flags & F.MODE_MASK:
            # bits 31:16 of a masked register choose which low bits change; they are not stored
            cur = vgpu.mmio.read32(offset)
            mask = cur >> 16
            vgpu.mmio.write32(offset, (old & ~mask) | (cur & mask))
