"""Per-process GTT walks: 3-level legacy 32-bit (4 PDPs) and 4-level (PML4) tables in machine memory.

gvt/gtt.c, gvt/page_track.c (index math, gen8): pte = (gma>>12)&0x1FF, pde = (gma>>21)&0x1FF, l3 pdp = (gma>>30)&0x3,
l4 pdp = (gma>>30)&0x1FF, pml4 = (gma>>39)&0x1FF; 512 entries x 8 B per table page. Root entries (the PDPs in
the context image) are "present" when ``val != 0`` (i915 writes root pointers without the present bit); every
other level uses bit 0. PDE bit 7 = 2 MiB page, PDPE bit 7 = 1 GiB page (masks GENMASK(45, 21/30)).

The tables pgpu walks are gvt's *shadow* tables, so every entry holds a machine address.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...hardware.gtt import (
    ADDR_1G_MASK,
    ADDR_2M_MASK,
    ADDR_4K_MASK,
    GEN8_PAGE_PRESENT,
    LIMIT_BY_LEVELS,
    PAGE_MASK,
    PAGE_PSE,
)
from ..common.memory import MachineMemory, MemoryRangeError
from .ggtt import PageFault


def pml4_index(gma: int) -> int:
    return (gma >> 39) & 0x1FF


def pdp_index(gma: int, levels: int) -> int:
    return (gma >> 30) & (0x3 if levels == 3 else 0x1FF)


def pd_index(gma: int) -> int:
    return (gma >> 21) & 0x1FF


def pt_index(gma: int) -> int:
    return (gma >> 12) & 0x1FF


class Ppgtt:
    """One context's PPGTT, walked in machine memory.

    Args:
        mem: machine memory holding the tables.
        levels: 3 (legacy 32-bit: ``roots`` are the 4 PDP entries) or 4 (``roots[0]`` is the PML4 pointer).
        roots: root pointers as read from the context image (pdp0 first).
    """

    def __init__(self, mem: MachineMemory, levels: int, roots: Sequence[int]) -> None:
        if levels not in LIMIT_BY_LEVELS:
            raise ValueError(f"{levels}-level PPGTT not supported")
        self.mem = mem
        self.levels = levels
        self.roots = tuple(roots)
        self.limit = LIMIT_BY_LEVELS[levels]
        self.walks = 0

    def _entry(self, table: int, index: int, gma: int, what: str) -> int:
        try:
            entry = self.mem.read_u64(table + index * 8)
        except MemoryRangeError:
            raise PageFault(gma, f"{what} table at {table:#x} outside machine memory") from None
        if not entry & GEN8_PAGE_PRESENT:
            raise PageFault(gma, f"{what}[{index}] not present")
        return entry

    def translate(self, gma: int) -> int:
        """Machine address of ``gma``.

        Raises:
            PageFault: out of the address space, a root is zero, or an entry on the way is not present.
        """
        self.walks += 1
        if gma < 0 or gma >= self.limit:
            raise PageFault(gma, f"beyond the {self.levels}-level PPGTT")
        if self.levels == 4:
            root = self.roots[0] if self.roots else 0
            if root == 0:
                raise PageFault(gma, "PML4 root not present")
            pml4e = self._entry(root & ADDR_4K_MASK, pml4_index(gma), gma, "PML4")
            pdpe = self._entry(pml4e & ADDR_4K_MASK, pdp_index(gma, 4), gma, "PDP")
        else:
            i = pdp_index(gma, 3)
            pdpe = self.roots[i] if i < len(self.roots) else 0
            if pdpe == 0:  # root entries: present means non-zero
                raise PageFault(gma, f"PDP{i} root not present")
        if self.levels == 4 and pdpe & PAGE_PSE:
            return (pdpe & ADDR_1G_MASK) | (gma & ((1 << 30) - 1))
        pde = self._entry(pdpe & ADDR_4K_MASK, pd_index(gma), gma, "PD")
        if pde & PAGE_PSE:
            return (pde & ADDR_2M_MASK) | (gma & ((1 << 21) - 1))
        pte = self._entry(pde & ADDR_4K_MASK, pt_index(gma), gma, "PT")
        return (pte & ADDR_4K_MASK) | (gma & PAGE_MASK)

    def page(self, gma: int) -> int:
        """Machine address of the 4 KiB page holding ``gma``."""
        return self.translate(gma & ~PAGE_MASK)


__all__ = ["Ppgtt", "pml4_index", "pdp_index", "pd_index", "pt_index"]
