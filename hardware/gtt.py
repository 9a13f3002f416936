"""Pages and GTT entry formats (Linux drivers/gpu/drm/i915/gvt/gtt.h and gtt.c, i915_gem_gtt.h, gen8).

A page is 4 KiB: the unit of the GGTT, of PPGTT tables and of machine frames (and of x86 guest pages).
A gen8 GGTT PTE is 8 bytes: bit 0 present, bits 45:12 the page address (GTT_HAW 46: ADDR_4K_MASK =
GENMASK_ULL(45, 12)). PPGTT entries (PML4E, PDPE, PDE, PTE) share that layout and add bit 1 RW, bit 7 PS (a
PDPE maps 1 GiB, a PDE 2 MiB), bit 11 IPS on a PDE (the PT below holds 64 KiB entries, every 16th). A legacy
32-bit context walks 3 levels (4 GiB), a legacy 64-bit context 4 levels (256 TiB).
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

GTT_HAW = 46  # the GPU's address width
GTT_ENTRY_SIZE = 8
GTT_ENTRY_SHIFT = 3
GTT_ENTRIES_PER_PAGE = PAGE_SIZE // GTT_ENTRY_SIZE
ADDR_4K_MASK = ((1 << GTT_HAW) - 1) & ~PAGE_MASK  # GENMASK_ULL(45, 12)
ADDR_64K_MASK = ((1 << GTT_HAW) - 1) & ~((1 << 16) - 1)  # GENMASK_ULL(45, 16)
ADDR_2M_MASK = ((1 << GTT_HAW) - 1) & ~((1 << 21) - 1)  # GENMASK_ULL(45, 21)
ADDR_1G_MASK = ((1 << GTT_HAW) - 1) & ~((1 << 30) - 1)  # GENMASK_ULL(45, 30)

GEN8_PAGE_PRESENT = 1 << 0  # _PAGE_PRESENT
GEN8_PAGE_RW = 1 << 1  # _PAGE_RW
PAGE_DIRTY = 1 << 6  # _PAGE_DIRTY
PAGE_PSE = 1 << 7  # _PAGE_PSE: PDE 2 MiB page, PDPE 1 GiB page
PAGE_PAT = 1 << 7  # _PAGE_PAT of a 4K PTE (the same bit as PS on a directory entry)
GEN8_PDE_IPS_64K = 1 << 11  # PDE: the PT below holds 64 KiB entries
PAGE_PAT_LARGE = 1 << 12  # _PAGE_PAT_LARGE of a 2M PDE
GTT_64K_PTE_STRIDE = 16  # a 64K PTE is every 16th entry of its PT

#: context descriptor addressing mode (bits 4:3) -> PPGTT levels (gvt/gtt.c: 1 legacy 32-bit = L3, 3 legacy
#: 64-bit = L4; advanced / SVM modes are not supported)
LEVELS_BY_MODE: dict[int, int] = {1: 3, 3: 4}
PPGTT_L3_LIMIT = 1 << 32  # the address space a 3-level walk covers
PPGTT_L4_LIMIT = 1 << 48  # and a 4-level walk
#: the size of the address space a walk of that many levels covers
LIMIT_BY_LEVELS: dict[int, int] = {3: PPGTT_L3_LIMIT, 4: PPGTT_L4_LIMIT}
