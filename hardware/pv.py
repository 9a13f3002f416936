"""The paravirtual shared page's layout, the ABI gvt and the guest driver share (docs/PV.md).

It follows the i915 PV patchset (lts2019: ``pv_caps`` and ``shared_page_gpa`` in PVINFO, regs.py) with a
versioned header: one 4 KiB page of guest RAM, little-endian; the header at 0x000 (magic "GVPV", version,
header size, size, features), one submission slot of 0x40 bytes per engine from 0x100, in the order of
engines.GPU_ENGINES, and the PPGTT update record at 0x300.
"""

from __future__ import annotations

import enum

from .engines import GPU_ENGINES
from .gtt import PAGE_SIZE

PV_PAGE_MAGIC = 0x56505647  # "GVPV": the shared page header's magic (PVINFO's magic is regs.VGT_MAGIC)
PV_HEADER_SIZE = 32
PV_PAGE_SIZE = PAGE_SIZE
#: the engines with a submission slot, slot n at SLOT_BASE + SLOT_SIZE * n
PV_ENGINES: tuple[str, ...] = GPU_ENGINES
SLOT_BASE, SLOT_SIZE = 0x100, 0x40
PPGTT_UPDATE = 0x300


class PvCaps(enum.IntFlag):
    """pv_caps bits (PV patchset)."""

    PPGTT = 1 << 0
    GGTT = 1 << 1
    SUBMISSION = 1 << 2
