"""Engine MMIO state switched between vGPUs (i915/gvt mmio_context.c).

Source: Linux 5.14 drivers/gpu/drm/i915/gvt/mmio_context.c: ``gen9_engine_mmio_list[]`` (engine, register,
mask, in_context), ``gen9_mocs_mmio_offset_list[]`` / ``switch_mocs`` (64 MOCS control registers per
engine, 32 L3CC registers for RCS) and ``switch_mmio``: when an engine passes from vGPU *pre* to vGPU
*next*, every listed register is saved from the hardware into pre's vregs (the mask half of a masked
register cleared) and next's vreg is written to the hardware (a masked one with its mask half set), so a
register one vGPU's workload set is never seen by another's.

How gvtsim does it: gvt cannot read pgpu's registers synchronously, so the switch rides in the shadow ring
of next's first workload on that engine, ahead of the guest's commands: MI_STORE_REGISTER_MEM of every
listed register into a save page gvt owns (the save), then MI_LOAD_REGISTER_IMM of next's values (the
restore), as i915 itself restores registers with LRIs for an inhibit context
(``restore_context_mmio_for_inhibit``). When the workload completes gvt copies the save page into pre's
vregs. Differences from gen9 upstream, because pgpu keeps no register state in its context images: the
registers marked in_context, and RCS's MOCS / L3CC tables (upstream: in the render context image), are
switched here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from ...hardware.engines import MOCS_BASE
from ...hardware.engines import TLB_INVAL_REG as TLB_MMIO_OFFSET
from ...hardware.opcodes import MI_LOAD_REGISTER_IMM, MI_STORE_REGISTER_MEM_GGTT
from ..common.memory import PAGE_SIZE
from .effects import PgpuMmioWrite

if TYPE_CHECKING:
    from .vgpu import Vgpu

GEN9_MOCS_SIZE = 64
L3CC_BASE, L3CC_SIZE = 0xB020, GEN9_MOCS_SIZE // 2


class EngineMmio(NamedTuple):
    """struct engine_mmio: the engine, the register, its mask (0xffff: masked register), in_context."""

    engine: str
    offset: int
    mask: int
    in_context: bool


_E = EngineMmio
#: gen9_engine_mmio_list[] (its INVALID_MMIO_REG terminator left out); GEN9_CTX_PREEMPT_REG appears twice
GEN9_ENGINE_MMIO_LIST: tuple[EngineMmio, ...] = (
    _E("rcs", 0x229C, 0xFFFF, False), _E("rcs", 0x2248, 0, False), _E("rcs", 0x2098, 0, False),
    _E("rcs", 0x20C0, 0xFFFF, True),
    *(_E("rcs", 0x24D0 + 4 * i, 0, False) for i in range(12)),  # RING_FORCE_TO_NONPRIV(RENDER, 0..11)
    _E("rcs", 0x7004, 0xFFFF, True), _E("rcs", 0x7008, 0xFFFF, True), _E("rcs", 0x7000, 0xFFFF, True),
    _E("rcs", 0x7010, 0xFFFF, True), _E("rcs", 0x7300, 0xFFFF, True), _E("rcs", 0x83A4, 0xFFFF, True),
    _E("rcs", 0x40E0, 0, False), _E("rcs", 0x40E4, 0, False), _E("rcs", 0x2580, 0xFFFF, True),
    _E("rcs", 0x7014, 0xFFFF, True), _E("rcs", 0x20EC, 0xFFFF, False), _E("rcs", 0xB118, 0, False),
    _E("rcs", 0xB11C, 0, False), _E("rcs", 0xB008, 0, False), _E("rcs", 0xE100, 0xFFFF, True),
    _E("rcs", 0xE180, 0xFFFF, True), _E("rcs", 0xE184, 0xFFFF, True), _E("rcs", 0xE188, 0xFFFF, True),
    _E("rcs", 0xE194, 0xFFFF, True), _E("rcs", 0xE4F0, 0xFFFF, True), _E("rcs", 0x4DE0, 0, True),
    _E("rcs", 0x4DE4, 0, True), _E("rcs", 0x4DE8, 0, True), _E("rcs", 0x4DEC, 0, True),
    _E("rcs", 0x4DF0, 0, True), _E("rcs", 0x4DF4, 0, True), _E("rcs", 0x4DFC, 0, True),
    _E("bcs", 0x2229C, 0xFFFF, False), _E("bcs", 0x2209C, 0xFFFF, False), _E("bcs", 0x220C0, 0xFFFF, False),
    _E("bcs", 0x22098, 0, False), _E("bcs", 0x22028, 0xFFFF, False),
    _E("vcs2", 0x1C028, 0xFFFF, False),
    _E("vecs", 0x1A028, 0xFFFF, False),
    _E("rcs", 0x7304, 0xFFFF, True), _E("rcs", 0x2248, 0, False), _E("rcs", 0x940C, 0, False),
    _E("rcs", 0x4AB8, 0, False), _E("rcs", 0x4AB0, 0, False), _E("rcs", 0x20D4, 0xFFFF, False),
    _E("rcs", 0x20D8, 0xFFFF, True), _E("rcs", 0xB004, 0, False), _E("rcs", 0x20A0, 0, False),
    _E("rcs", 0x20E4, 0xFFFF, False),
)

#: the engine's GFX_MODE (RING_MODE) is gvt's own business (execlist enable, written by the guest through
#: its trapped handler): switching it would hand the hardware the guest's mode bits. Upstream the host
#: programs the physical GFX_MODE; pgpu does not model its bits, so it is left out here.
_NOT_SWITCHED = frozenset({0x229C, 0x2229C})


def handle_tlb_pending_event(vgpu: "Vgpu", engine: str) -> bool:
    """handle_tlb_pending_event (switch_mmio, for next): if the guest asked for a TLB invalidation of this
    engine (test_and_clear_bit of submission.tlb_handle_pending), write 1 to the physical register (it
    completes at once on pgpu) and clear the vreg. Returns whether one was done."""
    pending = vgpu.submission.tlb_handle_pending
    if engine not in pending:
        return False
    pending.discard(engine)
    reg = TLB_MMIO_OFFSET[engine]
    vgpu.emit(PgpuMmioWrite(reg, 4, 0x1))
    vgpu.mmio.write32(reg, 0)
    vgpu.count("tlb_invalidations")
    return True


def engine_registers(engine: str) -> list[tuple[int, int]]:
    """(offset, mask) of every register switched on ``engine``: its rows of the list (each once), then its
    MOCS table, then (RCS) the L3CC table."""
    seen: set[int] = set()
    out: list[tuple[int, int]] = []
    for m in GEN9_ENGINE_MMIO_LIST:
        if m.engine == engine and m.offset not in seen and m.offset not in _NOT_SWITCHED:
            seen.add(m.offset)
            out.append((m.offset, m.mask))
    base = MOCS_BASE.get(engine)
    if base is not None:
        out += [(base + 4 * i, 0) for i in range(GEN9_MOCS_SIZE)]
    if engine == "rcs":
        out += [(L3CC_BASE + 4 * i, 0) for i in range(L3CC_SIZE)]
    return out


def switch_commands(engine: str, next_vreg: "callable", save_gm: int | None) -> list[int]:  # type: ignore[valid-type]
    """The commands of a switch to the vGPU whose vreg reader is ``next_vreg``: save (SRM into the page at
    ``save_gm``, slot i for register i; None: the host owned the engine, nothing to save), then restore (one
    LRI of next's values, a masked register with its mask half set)."""
    regs = engine_registers(engine)
    assert len(regs) * 4 <= PAGE_SIZE
    out: list[int] = []
    if save_gm is not None:
        for i, (offset, _mask) in enumerate(regs):
            gma = save_gm + 4 * i
            out += [MI_STORE_REGISTER_MEM_GGTT, offset, gma & 0xFFFF_FFFF, gma >> 32 & 0xFFFF]
    return out + lri(regs, next_vreg)


def inhibit_registers(engine: str) -> list[tuple[int, int]]:
    """restore_context_mmio_for_inhibit: the in_context registers of ``engine`` and, for RCS, the MOCS
    control and L3CC tables (restore_render_mocs_control / _l3cc_for_inhibit)."""
    out = [(m.offset, m.mask) for m in GEN9_ENGINE_MMIO_LIST if m.engine == engine and m.in_context]
    if engine == "rcs":
        out += [(MOCS_BASE["rcs"] + 4 * i, 0) for i in range(GEN9_MOCS_SIZE)]
        out += [(L3CC_BASE + 4 * i, 0) for i in range(L3CC_SIZE)]
    return out


def lri(regs: list[tuple[int, int]], vreg: Callable[[int], int]) -> list[int]:
    """MI_LOAD_REGISTER_IMMs (63 pairs at most each) of ``vreg``'s values, masked registers with their mask
    half set, padded to an even number of dwords."""
    out: list[int] = []
    for start in range(0, len(regs), 63):
        chunk = regs[start:start + 63]
        out.append(MI_LOAD_REGISTER_IMM | (2 * len(chunk) - 1))
        for offset, mask in chunk:
            value = vreg(offset)
            out += [offset, (value | mask << 16) if mask else value]
    if len(out) % 2:
        out.append(0)
    return out


def saved_values(engine: str, page: bytes) -> list[tuple[int, int]]:
    """(offset, value) pre's vregs take from the save page: a masked register without its mask half."""
    out = []
    for i, (offset, mask) in enumerate(engine_registers(engine)):
        value = int.from_bytes(page[4 * i:4 * i + 4], "little")
        out.append((offset, value & ~(mask << 16) & 0xFFFF_FFFF if mask else value))
    return out
