"""The physical MMIO register file (BAR0's first 2 MiB) with the side effects the device model relies on.

Plain registers are stored as written. A declarative table gives the special ones their behaviour:
* GFX_FLSH_CNTL 0x101008 bit 0: invalidate the GGTT TLB (gvt/gtt.c, gvt/aperture_gm.c, step 5); reads back 0;
* GDRST 0x941C: engine reset by domain bit (i915 GEN6_GRDOM_FULL 0, RENDER 1, MEDIA 2, BLT 3, VECS 4);
  self-clearing, so it reads back 0 once the reset is done;
* forcewake (gen9, i915_reg.h): render 0xA278 -> ack 0x0D84, GT 0xA188 -> ack 0x130044, media 0xA270 -> ack
  0x0D88; masked registers (bits 31:16 select bits 15:0), the ack follows the new low 16 bits;
* per-engine RING_MODE (+0x29C) is masked too; RING_TAIL/HEAD/START/CTL (+0x30..0x3C) and EXECLIST_STATUS
  (+0x234) are kept up to date by the engines; fences 0x100000 + 8i (i < 32) are plain 64-bit registers;
* the TLB invalidation registers (gen8_tlb_mmio_offset_list: RCS 0x4260, VCS 0x4264, VCS2 0x4268, BCS 0x426C,
  VECS 0x4270): writing 1 invalidates that engine's TLBs, which completes at once (reads back 0, the wait in
  handle_tlb_pending_event ends); each invalidation is counted per engine.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from ...hardware.engines import BY_NAME, GDRST_FULL, GPU_ENGINES, TLB_INVAL_ENGINE
from ...hardware.regs import (
    FENCE_REG_GEN6_LO,
    FORCEWAKE_ACKS,
    GEN6_GDRST,
    GFX_FLSH_CNTL_EN,
    GFX_FLSH_CNTL_GEN6,
    MMIO_SIZE,
    NUM_FENCES,
    RING_MODE,
)


class MmioError(ValueError):
    """An access the register file refuses (misaligned or outside the 2 MiB)."""


class Mmio:
    """The register file.

    Args:
        on_flush: called when GFX_FLSH_CNTL is written with bit 0.
        on_reset: called with an engine name for each engine a GDRST write resets.
    """

    def __init__(self, on_flush: Callable[[], None], on_reset: Callable[[str], None]) -> None:
        self.regs: dict[int, int] = {}
        self._on_flush = on_flush
        self._on_reset = on_reset
        self.masked = set(FORCEWAKE_ACKS) | {BY_NAME[name].base + RING_MODE for name in GPU_ENGINES}
        #: offset -> write handler (offset, value); everything else is stored as written
        self.write_handlers: dict[int, Callable[[int, int], None]] = {
            GFX_FLSH_CNTL_GEN6: self._write_flush,
            GEN6_GDRST: self._write_gdrst,
            **{reg: self._write_forcewake for reg in FORCEWAKE_ACKS},
            **{reg: self._write_tlb_invalidate for reg in TLB_INVAL_ENGINE},
        }
        #: offsets that always read 0 (self-clearing / write-only)
        self.read_zero = {GFX_FLSH_CNTL_GEN6, GEN6_GDRST, *TLB_INVAL_ENGINE}
        self.tlb_invalidations: Counter[str] = Counter()  # engine -> TLB invalidations done

    @staticmethod
    def _check(offset: int, size: int) -> None:
        if size not in (4, 8) or offset % 4 or offset < 0 or offset + size > MMIO_SIZE:
            raise MmioError(f"MMIO access of {size} bytes at {offset:#x}")

    def read(self, offset: int, size: int = 4) -> int:
        """Read a 4- or 8-byte register (8 bytes = the dword at ``offset`` and the next one as high half)."""
        self._check(offset, size)
        value = self._read32(offset)
        if size == 8:
            value |= self._read32(offset + 4) << 32
        return value

    def _read32(self, offset: int) -> int:
        return 0 if offset in self.read_zero else self.regs.get(offset, 0)

    def write(self, offset: int, size: int, value: int) -> None:
        """Write a 4- or 8-byte register, with its side effects."""
        self._check(offset, size)
        self._write32(offset, value & 0xFFFF_FFFF)
        if size == 8:
            self._write32(offset + 4, value >> 32 & 0xFFFF_FFFF)

    def _write32(self, offset: int, value: int) -> None:
        handler = self.write_handlers.get(offset)
        if handler is not None:
            handler(offset, value)
        elif offset in self.masked:
            self.regs[offset] = self._masked(offset, value)
        else:
            self.regs[offset] = value

    def load(self, offset: int, value: int) -> None:
        """MI_LOAD_REGISTER_IMM: store the value (no side effects from the command stream)."""
        self.regs[offset] = value & 0xFFFF_FFFF

    def set(self, offset: int, value: int) -> None:
        """Hardware-side update (engine state mirrored into its registers)."""
        self.regs[offset] = value & 0xFFFF_FFFF

    # -------------------------------------------------------------------------------------- handlers
    def _masked(self, offset: int, value: int) -> int:
        mask = value >> 16
        return (self.regs.get(offset, 0) & ~mask | value & mask) & 0xFFFF

    def _write_flush(self, offset: int, value: int) -> None:
        if value & GFX_FLSH_CNTL_EN:
            self._on_flush()

    def _write_gdrst(self, offset: int, value: int) -> None:
        for name in GPU_ENGINES:  # GEN6_GRDOM_FULL resets all; else one domain bit per engine
            if value & (GDRST_FULL | BY_NAME[name].gdrst_bit):
                self._on_reset(name)

    def _write_forcewake(self, offset: int, value: int) -> None:
        self.regs[offset] = self._masked(offset, value)
        self.regs[FORCEWAKE_ACKS[offset]] = self.regs[offset]

    def _write_tlb_invalidate(self, offset: int, value: int) -> None:
        if value & 1:
            self.tlb_invalidations[TLB_INVAL_ENGINE[offset]] += 1

    def fence(self, index: int) -> int:
        """Fence register ``index`` (64-bit)."""
        if not 0 <= index < NUM_FENCES:
            raise MmioError(f"no fence {index}")
        return self.read(FENCE_REG_GEN6_LO + 8 * index, 8)
