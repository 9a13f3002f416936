"""Engines as GVT's register handlers reach them (``from . import engines as eng``): the engine records and the
per-engine ring registers, under the names gvt/handlers.c and gvt/execlist.c use. Nothing is declared here: the
values are gvtsim.hardware's (engines.py: bases, mask bits, GDRST domains; regs.py: the ring registers).
"""

from __future__ import annotations

from ...hardware.engines import ALL_ENGINES, BY_NAME, ENGINES, GDRST_FULL, Engine, engine_of, gdrst_to_mask, mask_names
from ...hardware.regs import CSB_BUF as RING_CSB
from ...hardware.regs import CSB_PTR as RING_CSB_PTR
from ...hardware.regs import ELSP as RING_ELSP
from ...hardware.regs import EXECLIST_STATUS as RING_EXECLIST_STATUS
from ...hardware.regs import GEN6_GDRST as GDRST
from ...hardware.regs import GEN6_GRDOM_GUC as GDRST_GUC
from ...hardware.regs import (
    GFX_PPGTT_ENABLE,
    GFX_RUN_LIST_ENABLE,
    GS_MIA_IN_RESET,
    GUC_STATUS,
    RESET_CTL_READY_TO_RESET,
    RESET_CTL_REQUEST_RESET,
    RING_CTL,
    RING_HEAD,
    RING_HWS_PGA,
    RING_MODE,
    RING_PDP_BASE,
    RING_RESET_CTL,
    RING_START,
    RING_TAIL,
)
from ...hardware.regs import RING_CTX_CTRL as RING_CTX_SR_CTL

#: the engines pgpu has (vcs2 is not emulated by the physical GPU model): the engines gvt dispatches to
from ...hardware.engines import GPU_ENGINES as PHYSICAL_ENGINES

__all__ = [
    "ALL_ENGINES", "BY_NAME", "ENGINES", "PHYSICAL_ENGINES",
    "GDRST", "GDRST_FULL", "GDRST_GUC", "GFX_PPGTT_ENABLE", "GFX_RUN_LIST_ENABLE",
    "GS_MIA_IN_RESET", "GUC_STATUS", "RESET_CTL_READY_TO_RESET", "RESET_CTL_REQUEST_RESET", "RING_CSB", "RING_CSB_PTR",
    "RING_CTL", "RING_CTX_SR_CTL", "RING_ELSP", "RING_EXECLIST_STATUS", "RING_HEAD", "RING_HWS_PGA", "RING_MODE",
    "RING_PDP_BASE", "RING_RESET_CTL", "RING_START", "RING_TAIL", "Engine", "engine_of", "gdrst_to_mask", "mask_names",
]
