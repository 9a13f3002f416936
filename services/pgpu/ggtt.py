"""The physical GGTT: one gen8 PTE per 4 KiB page of graphics memory (GM), holding machine addresses.

gvt/gtt.c, gvt/aperture_gm.c: "GGTT PTE format (gen8+): bit 0 = present; page address bits [45:12]"; the table has
``gm_bytes >> 12`` entries of 8 bytes (8 MiB for a 4 GiB GM). gvt writes the *host* entries here (same index
as the guest's, pfn replaced by the mfn), then invalidates the GGTT TLB by writing
``GFX_FLSH_CNTL_GEN6 (0x101008) = GFX_FLSH_CNTL_EN (bit 0)``.

The TLB is modelled: a present translation is cached until the flush register is written, so a GGTT update
without a flush can still hit the old page, as on the hardware. Non-present entries are never cached.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

from ...hardware.gtt import ADDR_4K_MASK, GEN8_PAGE_PRESENT, PAGE_MASK, PAGE_SHIFT


class PageFault(Exception):
    """A graphics address that does not translate (non-present entry or out of range)."""

    def __init__(self, gma: int, reason: str) -> None:
        self.gma = gma
        self.reason = reason
        super().__init__(f"page fault at gma {gma:#x}: {reason}")


class GgttRangeError(ValueError):
    """A GGTT index outside the table."""


def pte_encode(maddr: int, present: bool = True) -> int:
    """A gen8 GGTT PTE for the page at machine address ``maddr`` (the guest i915 writes ``addr | 1``)."""
    return (maddr & ADDR_4K_MASK) | (GEN8_PAGE_PRESENT if present else 0)


def pte_decode(pte: int) -> tuple[int, bool]:
    """(machine address of the page, present) of a gen8 PTE."""
    return pte & ADDR_4K_MASK, bool(pte & GEN8_PAGE_PRESENT)


class Ggtt:
    """The physical GGTT of ``gm_bytes`` of graphics memory."""

    def __init__(self, gm_bytes: int) -> None:
        if gm_bytes <= 0 or gm_bytes & PAGE_MASK:
            raise ValueError("GM size must be a positive multiple of 4 KiB")
        self.gm_bytes = gm_bytes
        self.num_entries = gm_bytes >> PAGE_SHIFT
        self.entries = array("Q", bytes(8 * self.num_entries))
        self._tlb: dict[int, int] = {}  # gma page number -> machine address of the page
        self.flushes = 0
        self.writes = 0

    # ----------------------------------------------------------------------------------------- entries
    def check_range(self, index: int, count: int = 1) -> None:
        """Raise :class:`GgttRangeError` unless entries ``[index, index + count)`` exist."""
        if index < 0 or count < 0 or index + count > self.num_entries:
            raise GgttRangeError(f"GGTT entries [{index:#x}, +{count}) outside 0..{self.num_entries:#x}")

    def write(self, index: int, pte: int) -> None:
        """Write one entry. Not visible to cached translations until :meth:`flush`."""
        self.check_range(index)
        self.entries[index] = pte & 0xFFFF_FFFF_FFFF_FFFF
        self.writes += 1

    def write_batch(self, entries: Iterable[tuple[int, int]]) -> int:
        """Write ``[index, pte]`` pairs all-or-nothing (every index is checked first), then flush the TLB
        as gvt does after each update. Returns the number written."""
        batch = list(entries)
        for index, _ in batch:
            self.check_range(index)
        for index, pte in batch:
            self.entries[index] = pte & 0xFFFF_FFFF_FFFF_FFFF
        self.writes += len(batch)
        self.flush()
        return len(batch)

    def fill(self, index: int, count: int, pte: int) -> int:
        """Write ``count`` entries from ``index`` with the same ``pte`` in one slice assignment (the scratch
        fill of a vGPU's GM range: ~115k entries for a 448 MB vGPU), then flush the TLB. Returns ``count``."""
        self.check_range(index, count)
        self.entries[index:index + count] = array("Q", [pte & 0xFFFF_FFFF_FFFF_FFFF]) * count
        self.writes += count
        self.flush()
        return count

    def read(self, index: int, count: int = 1) -> list[int]:
        """Entries ``[index, index + count)``."""
        self.check_range(index, count)
        return self.entries[index:index + count].tolist()

    def flush(self) -> None:
        """GFX_FLSH_CNTL write: drop every cached translation."""
        self._tlb.clear()
        self.flushes += 1

    # ------------------------------------------------------------------------------------- translation
    def translate(self, gma: int) -> int:
        """Machine address of graphics address ``gma``.

        Raises:
            PageFault: ``gma`` is beyond the GM or its entry is not present.
        """
        vpn = gma >> PAGE_SHIFT
        base = self._tlb.get(vpn)
        if base is None:
            if gma < 0 or vpn >= self.num_entries:
                raise PageFault(gma, f"beyond the {self.gm_bytes >> 20} MiB GGTT")
            pte = self.entries[vpn]
            if not pte & GEN8_PAGE_PRESENT:
                raise PageFault(gma, f"GGTT entry {vpn:#x} not present")
            base = pte & ADDR_4K_MASK
            self._tlb[vpn] = base
        return base | (gma & PAGE_MASK)
