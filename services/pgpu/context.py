"""Execlist context descriptors and the logical ring context (LRC) image in graphics memory.

gvt/handlers.c, gvt/execlist.c: descriptor ldw bit0 valid, bit1 force_pd_restore, bit2 force_restore, bits 3-4
addressing mode, bit5 llc coherency, bits 6-7 fault handling, bit8 privilege access, bits 12-31 LRCA (the GGTT address
of the LRC, page aligned); udw = context id. Page ``lrca`` is the per-process HW status page (PPHWSP), page
``lrca + 1`` the ring context: an LRI-format register state (``struct execlist_ring_context``: u32 nop1,
u32 lri_cmd_1, then {mmio, value} pairs). gvt reads the values at ring_context + offset; so does pgpu.
Ring size = (ctl & bits 12-20) + 4096; head mask bits 2-20, tail mask bits 3-20.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...hardware.gtt import PAGE_SIZE
from ...hardware.opcodes import MI_LOAD_REGISTER_IMM, MI_LRI_FORCE_POSTED
from ...hardware.regs import (
    CACHELINE_BYTES,
    DESC_LRCA_MASK,
    DESC_MODE_MASK,
    DESC_MODE_SHIFT,
    DESC_PRIVILEGE,
    DESC_VALID,
    INDIRECT_CTX_ADDR_MASK,
    INDIRECT_CTX_SIZE_MASK,
    LRI_CMD_1,
    LRI_CMD_2,
    MODE_LEGACY_64,
    PER_CTX_ADDR_MASK,
    PER_CTX_VALID,
    RB_HEAD_MASK,
    RB_SIZE_MASK,
    RB_TAIL_MASK,
    RCS_ONLY,
    RING_CTX,
    RING_VALID,
    TIMESTAMP_NS_PER_TICK,
)
from ..common.memory import MachineMemory

@dataclass(frozen=True, slots=True)
class ContextDescriptor:
    """One execlist element (the 64-bit value gvt writes as two ELSP dwords)."""

    raw: int

    @property
    def ldw(self) -> int:
        return self.raw & 0xFFFF_FFFF

    @property
    def valid(self) -> bool:
        return bool(self.raw & DESC_VALID)

    @property
    def addressing_mode(self) -> int:
        return (self.raw & DESC_MODE_MASK) >> DESC_MODE_SHIFT

    @property
    def privileged(self) -> bool:
        return bool(self.raw & DESC_PRIVILEGE)

    @property
    def lrca(self) -> int:
        """GGTT address of the LRC (the PPHWSP page)."""
        return self.raw & DESC_LRCA_MASK

    @property
    def ring_context(self) -> int:
        """GGTT address of the ring-context register state page (``lrca + 1`` in pages)."""
        return self.lrca + PAGE_SIZE

    @property
    def ctx_id(self) -> int:
        return self.raw >> 32 & 0xFFFF_FFFF


def make_descriptor(lrca: int, ctx_id: int, mode: int = MODE_LEGACY_64, privileged: bool = True) -> int:
    """Build a 64-bit context descriptor (what i915's ``lrc_descriptor`` | ctx id << 32 gives)."""
    ldw = (lrca & DESC_LRCA_MASK) | DESC_VALID | (mode << DESC_MODE_SHIFT) | (DESC_PRIVILEGE if privileged else 0)
    return (ctx_id & 0xFFFF_FFFF) << 32 | ldw


def ring_size(ctl: int) -> int:
    """Ring buffer size in bytes from RING_CTL."""
    return (ctl & RB_SIZE_MASK) + PAGE_SIZE


def ring_ctl(size: int, valid: bool = True) -> int:
    """RING_CTL for a ring of ``size`` bytes (a multiple of 4 KiB, at most 2 MiB)."""
    return ((size - PAGE_SIZE) & RB_SIZE_MASK) | (RING_VALID if valid else 0)


@dataclass(frozen=True, slots=True)
class RingContext:
    """The values pgpu reads from a ring context."""

    head: int
    tail: int
    start: int
    ctl: int
    pdps: tuple[int, int, int, int]  # pdp0..pdp3 (64-bit)
    timestamp: int
    indirect_ctx: int = 0  # RCS_INDIRECT_CTX: buffer address bits 31:6, size in cachelines bits 5:0
    indirect_ctx_offset: int = 0  # RCS_INDIRECT_CTX_OFFSET
    per_ctx: int = 0  # BB_PER_CTX_PTR: batch address bits 31:12, valid bit 0

    @property
    def size(self) -> int:
        return ring_size(self.ctl)

    def wa_batches(self) -> tuple[tuple[int, int] | None, int | None]:
        """The render context's workaround batches, run at context restore before the ring (i915
        intel_lrc.c: the indirect-ctx buffer, then the per-ctx batch): ((address, bytes) of the indirect-ctx
        buffer or None, the per-ctx batch address or None)."""
        size = (self.indirect_ctx & INDIRECT_CTX_SIZE_MASK) * CACHELINE_BYTES
        indirect = (self.indirect_ctx & INDIRECT_CTX_ADDR_MASK, size) if size else None
        per_ctx = self.per_ctx & PER_CTX_ADDR_MASK if self.per_ctx & PER_CTX_VALID else None
        return indirect, per_ctx


def _value(mem: MachineMemory, page: int, name: str) -> int:
    return mem.read_u32(page + RING_CTX[name][1])


def read_ring_context(mem: MachineMemory, page: int, rcs: bool = False) -> RingContext:
    """Read the ring context at machine address ``page`` (``rcs``: with the render engine's workaround
    batch registers, which only its context image has)."""
    pdps = tuple(_value(mem, page, f"pdp{i}_UDW") << 32 | _value(mem, page, f"pdp{i}_LDW") for i in range(4))
    wa = {name: _value(mem, page, name) if rcs else 0 for name in RCS_ONLY}
    return RingContext(head=_value(mem, page, "ring_header") & RB_HEAD_MASK,
                       tail=_value(mem, page, "ring_tail") & RB_TAIL_MASK,
                       start=_value(mem, page, "rb_start") & 0xFFFF_F000,
                       ctl=_value(mem, page, "rb_ctrl"),
                       pdps=pdps,  # type: ignore[arg-type]
                       timestamp=_value(mem, page, "ctx_timestamp"),
                       indirect_ctx=wa["rcs_indirect_ctx"], indirect_ctx_offset=wa["rcs_indirect_ctx_offset"],
                       per_ctx=wa["bb_per_ctx_ptr"])


def write_back(mem: MachineMemory, page: int, head: int, busy_ns: float) -> None:
    """Context save on completion: ring_header := the new head, ctx_timestamp += busy time in ticks."""
    mem.write_u32(page + RING_CTX["ring_header"][1], head)
    ts = _value(mem, page, "ctx_timestamp")
    mem.write_u32(page + RING_CTX["ctx_timestamp"][1], ts + int(busy_ns / TIMESTAMP_NS_PER_TICK))


def write_ring_context(mem: MachineMemory, page: int, engine_base: int, *, start: int, size: int, head: int = 0,
                       tail: int = 0, pdps: tuple[int, int, int, int] = (0, 0, 0, 0), rcs: bool = False) -> None:
    """Build a complete LRI-format ring context at machine address ``page`` (tests, gvt and guests use it):
    NOOP, MI_LOAD_REGISTER_IMM(14 on RCS, 11 elsewhere), the {mmio, value} pairs, NOOPs,
    MI_LOAD_REGISTER_IMM(9) for the timestamp and PDPs."""
    mem.write(page, bytes(PAGE_SIZE))
    mem.write_u32(page + LRI_CMD_1, MI_LOAD_REGISTER_IMM | (2 * (14 if rcs else 11) - 1) | MI_LRI_FORCE_POSTED)
    mem.write_u32(page + LRI_CMD_2, MI_LOAD_REGISTER_IMM | (2 * 9 - 1) | MI_LRI_FORCE_POSTED)
    values = {"ring_header": head, "ring_tail": tail, "rb_start": start, "rb_ctrl": ring_ctl(size)}
    for i, pdp in enumerate(pdps):
        values[f"pdp{i}_UDW"] = pdp >> 32
        values[f"pdp{i}_LDW"] = pdp & 0xFFFF_FFFF
    for name, (mmio_off, value_off, reg) in RING_CTX.items():
        if name in RCS_ONLY and not rcs:
            continue  # NOOPs there on non-render engines
        mem.write_u32(page + mmio_off, engine_base + reg)
        mem.write_u32(page + value_off, values.get(name, 0))
