"""Render engines as GVT sees them: MMIO bases, per-engine register offsets, reset bits.

gvt/handlers.c, gvt/execlist.c: ring bases RCS 0x2000, VCS 0x12000, VCS2 0x1C000, VECS 0x1A000, BCS 0x22000.
gvt/vgpu.c: GEN6_GDRST 0x941C bits FULL 0, RENDER 1, MEDIA 2, BLT 3, VECS 4, GUC 5, MEDIA2 7.
"""

from __future__ import annotations

from typing import NamedTuple


class Engine(NamedTuple):
    """One engine: ``name`` as on the wire, MMIO ``base``, our engine-mask bit, its GDRST domain bit."""

    name: str
    base: int
    mask: int
    gdrst_bit: int


ENGINES: tuple[Engine, ...] = (
    Engine("rcs", 0x2000, 1 << 0, 1 << 1),
    Engine("bcs", 0x22000, 1 << 1, 1 << 3),
    Engine("vcs", 0x12000, 1 << 2, 1 << 2),
    Engine("vcs2", 0x1C000, 1 << 3, 1 << 7),
    Engine("vecs", 0x1A000, 1 << 4, 1 << 4),
)
ALL_ENGINES = 0
for _e in ENGINES:
    ALL_ENGINES |= _e.mask
BY_NAME: dict[str, Engine] = {e.name: e for e in ENGINES}
#: the engines pgpu has (vcs2 is not emulated by the physical GPU model): the engines gvt dispatches to
PHYSICAL_ENGINES = ("rcs", "bcs", "vcs", "vecs")

# Per-engine register offsets from the engine base (gvt/handlers.c, gvt/execlist.c).
RING_TAIL = 0x30
RING_HEAD = 0x34
RING_START = 0x38
RING_CTL = 0x3C
RING_HWS_PGA = 0x80
RING_RESET_CTL = 0xD0
RING_ELSP = 0x230  # the execlist submit port (execlist.py)
RING_EXECLIST_STATUS = 0x234
RING_CTX_SR_CTL = 0x244
RING_PDP_BASE = 0x270  # pdp n: LDW +0x270+8n, UDW +0x274+8n
RING_MODE = 0x29C
RING_CSB = 0x370  # the context status buffer, 6 entries
RING_CSB_PTR = 0x3A0

# GFX_MODE (RING_MODE) bits, a masked register.
GFX_PPGTT_ENABLE = 1 << 9
GFX_RUN_LIST_ENABLE = 1 << 15

# RING_RESET_CTL bits (masked): REQUEST_RESET bit 0, READY_TO_RESET bit 1.
RESET_CTL_REQUEST_RESET = 1 << 0
RESET_CTL_READY_TO_RESET = 1 << 1

GDRST = 0x941C
GDRST_FULL = 1 << 0
GDRST_GUC = 1 << 5
GUC_STATUS = 0xC000
GS_MIA_IN_RESET = 1 << 0


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
