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

from ..common.memory import MachineMemory
from .ggtt import PAGE_SIZE

# ------------------------------------------------------------------------------------------- descriptor
DESC_VALID = 1 << 0
DESC_FORCE_PD_RESTORE = 1 << 1
DESC_FORCE_RESTORE = 1 << 2
DESC_MODE_SHIFT = 3
DESC_MODE_MASK = 0x3 << DESC_MODE_SHIFT
DESC_PRIVILEGE = 1 << 8
DESC_LRCA_MASK = 0xFFFF_F000
MODE_LEGACY_32 = 1  # i915 INTEL_LEGACY_32B_CONTEXT: 3-level PPGTT, 4 PDPs
MODE_LEGACY_64 = 3  # i915 INTEL_LEGACY_64B_CONTEXT: 4-level PPGTT, PML4 in pdp0


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


# ---------------------------------------------------------------------------------------- ring context
#: name -> (byte offset of the mmio dword, byte offset of the value dword, mmio offset from the engine base)
#: (gvt execlist.h struct execlist_ring_context; mmio offsets from i915 intel_lrc_reg.h / gvt/handlers.c,
#: gvt/execlist.c)
RING_CTX: dict[str, tuple[int, int, int]] = {
    "ctx_ctrl": (0x08, 0x0C, 0x244),
    "ring_header": (0x10, 0x14, 0x34),
    "ring_tail": (0x18, 0x1C, 0x30),
    "rb_start": (0x20, 0x24, 0x38),
    "rb_ctrl": (0x28, 0x2C, 0x3C),
    "bb_cur_head_UDW": (0x30, 0x34, 0x168),
    "bb_cur_head_LDW": (0x38, 0x3C, 0x140),
    "bb_state": (0x40, 0x44, 0x110),
    "second_bb_addr_UDW": (0x48, 0x4C, 0x11C),
    "second_bb_addr_LDW": (0x50, 0x54, 0x114),
    "second_bb_state": (0x58, 0x5C, 0x118),
    "bb_per_ctx_ptr": (0x60, 0x64, 0x1C0),
    "rcs_indirect_ctx": (0x68, 0x6C, 0x1C4),
    "rcs_indirect_ctx_offset": (0x70, 0x74, 0x1C8),
    "ctx_timestamp": (0x88, 0x8C, 0x3A8),
    "pdp3_UDW": (0x90, 0x94, 0x28C),
    "pdp3_LDW": (0x98, 0x9C, 0x288),
    "pdp2_UDW": (0xA0, 0xA4, 0x284),
    "pdp2_LDW": (0xA8, 0xAC, 0x280),
    "pdp1_UDW": (0xB0, 0xB4, 0x27C),
    "pdp1_LDW": (0xB8, 0xBC, 0x278),
    "pdp0_UDW": (0xC0, 0xC4, 0x274),
    "pdp0_LDW": (0xC8, 0xCC, 0x270),
}
LRI_CMD_1 = 0x04
LRI_CMD_2 = 0x84
RCS_ONLY = ("bb_per_ctx_ptr", "rcs_indirect_ctx", "rcs_indirect_ctx_offset")

RB_VALID = 1 << 0  # RING_CTL bit 0: ring buffer enabled
RB_SIZE_MASK = 0x001F_F000  # bits 12-20
RB_HEAD_MASK = 0x001F_FFFC  # bits 2-20
RB_TAIL_MASK = 0x001F_FFF8  # bits 3-20
#: gen9 command-streamer timestamp: 12 MHz (83.333 ns per tick)
TIMESTAMP_NS_PER_TICK = 1000.0 / 12.0


def ring_size(ctl: int) -> int:
    """Ring buffer size in bytes from RING_CTL."""
    return (ctl & RB_SIZE_MASK) + PAGE_SIZE


def ring_ctl(size: int, valid: bool = True) -> int:
    """RING_CTL for a ring of ``size`` bytes (a multiple of 4 KiB, at most 2 MiB)."""
    return ((size - PAGE_SIZE) & RB_SIZE_MASK) | (RB_VALID if valid else 0)


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
        size = (self.indirect_ctx & 0x3F) * 64
        indirect = (self.indirect_ctx & 0xFFFF_FFC0, size) if size else None
        per_ctx = self.per_ctx & 0xFFFF_F000 if self.per_ctx & 1 else None
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
    mem.write_u32(page + LRI_CMD_1, (0x22 << 23) | (2 * (14 if rcs else 11) - 1) | (1 << 12))
    mem.write_u32(page + LRI_CMD_2, (0x22 << 23) | (2 * 9 - 1) | (1 << 12))
    values = {"ring_header": head, "ring_tail": tail, "rb_start": start, "rb_ctrl": ring_ctl(size)}
    for i, pdp in enumerate(pdps):
        values[f"pdp{i}_UDW"] = pdp >> 32
        values[f"pdp{i}_LDW"] = pdp & 0xFFFF_FFFF
    for name, (mmio_off, value_off, reg) in RING_CTX.items():
        if name in RCS_ONLY and not rcs:
            continue  # NOOPs there on non-render engines
        mem.write_u32(page + mmio_off, engine_base + reg)
        mem.write_u32(page + value_off, values.get(name, 0))
