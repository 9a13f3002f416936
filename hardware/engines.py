"""The GPU's engines (Linux drivers/gpu/drm/i915/gt/intel_engine_cs.c intel_engines[], i915_reg.h).

One record per engine, and the engine set as one tuple of names. MMIO bases: RENDER_RING_BASE 0x2000,
BLT_RING_BASE 0x22000, GEN6_BSD_RING_BASE 0x12000, GEN8_BSD2_RING_BASE 0x1C000, VEBOX_RING_BASE 0x1A000.
GEN6_GDRST (0x941C) reset domains: GEN6_GRDOM_FULL bit 0, RENDER 1, MEDIA 2, BLT 3, VECS 4, MEDIA2 7.
Interrupts (gen8_gt_irq_postinstall): RCS and BCS in GT group 0 (shifts 0 and 16), VCS1/VCS2 in group 1 (0 and
16), VECS in group 3 (0); within an engine's 16 bits, GT_RENDER_USER_INTERRUPT is bit 0 and
GT_CONTEXT_SWITCH_INTERRUPT bit 8. TLB invalidation registers (gvt/mmio_context.c gvt_tlb_mmio_offset) and
MOCS bases (gvt/mmio_context.c, gen9: GEN9_GFX_MOCS, GEN9_MFX0_MOCS ...).
"""

from __future__ import annotations

from typing import NamedTuple


class Engine(NamedTuple):
    """One engine: ``name`` as on the wire, MMIO ``base``, its engine-mask bit, its GDRST domain bit, its GT
    interrupt group and the IIR bit numbers of MI_USER_INTERRUPT and of the context switch, its TLB
    invalidation register and its MOCS register base."""

    name: str
    base: int
    mask: int
    gdrst_bit: int
    irq_group: int
    user_irq_bit: int
    ctx_switch_bit: int
    tlb_inval: int
    mocs_base: int


#: every engine GVT emulates registers for (i915 intel_engine_id order: RCS0, BCS0, VCS0, VCS1, VECS0)
ENGINES: tuple[Engine, ...] = (
    Engine("rcs", 0x2000, 1 << 0, 1 << 1, 0, 0, 8, 0x4260, 0xC800),
    Engine("bcs", 0x22000, 1 << 1, 1 << 3, 0, 16, 24, 0x426C, 0xCC00),
    Engine("vcs", 0x12000, 1 << 2, 1 << 2, 1, 0, 8, 0x4264, 0xC900),
    Engine("vcs2", 0x1C000, 1 << 3, 1 << 7, 1, 16, 24, 0x4268, 0xCA00),
    Engine("vecs", 0x1A000, 1 << 4, 1 << 4, 3, 0, 8, 0x4270, 0xCB00),
)
BY_NAME: dict[str, Engine] = {e.name: e for e in ENGINES}
#: the engine set of the simulated GPU: the engines pgpu executes, the guest drives and the wire names
#: (protocol/messages.py ``Engine``); vcs2 (a GT3 part's second video engine) has registers only
GPU_ENGINES: tuple[str, ...] = ("rcs", "bcs", "vcs", "vecs")
#: an engine mask naming every engine (i915 ALL_ENGINES)
ALL_ENGINES = 0
for _e in ENGINES:
    ALL_ENGINES |= _e.mask
#: GEN6_GDRST: GEN6_GRDOM_FULL resets every engine
GDRST_FULL = 1 << 0
#: gen8_tlb_mmio_offset_list: engine -> the register that invalidates its TLBs, and the reverse
TLB_INVAL_REG: dict[str, int] = {e.name: e.tlb_inval for e in ENGINES}
TLB_INVAL_ENGINE: dict[int, str] = {e.tlb_inval: e.name for e in ENGINES}
#: gen9_mocs_mmio_offset_list: engine -> the first of its 64 MOCS control registers
MOCS_BASE: dict[str, int] = {e.name: e.mocs_base for e in ENGINES}


def engine_of(offset: int) -> Engine | None:
    """The engine whose 4 KB register page holds ``offset``."""
    for e in ENGINES:
        if e.base <= offset < e.base + 0x1000:
            return e
    return None


def mask_names(mask: int) -> list[str]:
    """Engine names in an engine mask."""
    return [e.name for e in ENGINES if mask & e.mask]


def gdrst_to_mask(value: int) -> int:
    """The engines a GDRST write resets: FULL means all, else one bit per domain."""
    if value & GDRST_FULL:
        return ALL_ENGINES
    mask = 0
    for e in ENGINES:
        if value & e.gdrst_bit:
            mask |= e.mask
    return mask
