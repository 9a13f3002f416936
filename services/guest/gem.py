"""Guest-side graphics memory management: pages of guest RAM bound into the vGPU's GGTT slice.

After ballooning (i915_vgpu.c) the guest owns exactly the host GGTT addresses of its slice: a mappable
(aperture) range and a non-mappable range. A buffer object is a run of guest RAM pages plus a range of
graphics memory; binding writes one 8-byte gen8 PTE ``gfn << 12 | PRESENT`` per page through BAR0 + 8 MB
(each write traps: GVT translates gfn -> mfn and writes the host GGTT at the same index).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...hardware.gtt import GEN8_PAGE_PRESENT as GEN8_PTE_PRESENT
from ...hardware.regs import GGTT_OFFSET
from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .cpu import GuestMachine
from .runtime import Gen


@dataclass
class Bo:
    """A buffer object: guest-physical pages bound at a graphics-memory address."""

    gpa: int  # first guest-physical byte (pages are contiguous in guest-physical space)
    gm: int  # graphics-memory address (GGTT)
    size: int
    mappable: bool

    @property
    def pages(self) -> int:
        return self.size >> PAGE_SHIFT


class RangeAllocator:
    """Bump allocator over [start, end) in page units (objects are long-lived in this driver)."""

    def __init__(self, start: int, end: int, name: str) -> None:
        self.start, self.end, self.next, self.name = start, end, start, name

    def alloc(self, size: int) -> int:
        size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        if self.next + size > self.end:
            raise MemoryError(f"{self.name}: no room for {size:#x} bytes")
        addr, self.next = self.next, self.next + size
        return addr


class Gem:
    """Allocates guest RAM and GM, and binds them through the trapped GGTT."""

    def __init__(self, machine: GuestMachine, bar0: int, ram_reserved: int, mappable: tuple[int, int],
                 nonmappable: tuple[int, int]) -> None:
        self.machine = machine
        self.bar0 = bar0
        self.ram = RangeAllocator(ram_reserved, machine.ram_bytes, "guest RAM")
        self.low = RangeAllocator(mappable[0], mappable[0] + mappable[1], "mappable GM")
        self.high = RangeAllocator(nonmappable[0], nonmappable[0] + nonmappable[1], "non-mappable GM")
        self.ptes_written = 0

    def create(self, size: int, mappable: bool = False) -> Gen[Bo]:
        """Allocate and bind a buffer object of ``size`` bytes (rounded to pages), zero-filled."""
        size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        gpa = self.ram.alloc(size)
        gm = (self.low if mappable else self.high).alloc(size)
        bo = Bo(gpa, gm, size, mappable)
        yield from self.machine.write_mem(gpa, bytes(size))
        for i in range(bo.pages):
            yield from self.bind_page(gm + (i << PAGE_SHIFT), (gpa >> PAGE_SHIFT) + i)
        return bo

    def bind_page(self, gm: int, gfn: int) -> Gen[None]:
        """Write the gen8 GGTT PTE for one page (an 8-byte MMIO write into BAR0 + 8 MB)."""
        pte_gpa = self.bar0 + GGTT_OFFSET + (gm >> PAGE_SHIFT) * 8
        yield from self.machine.mmio_write(pte_gpa, 8, (gfn << PAGE_SHIFT) | GEN8_PTE_PRESENT)
        self.ptes_written += 1

    def read_pte(self, gm: int) -> Gen[int]:
        """Read back a GGTT entry (GVT returns the guest's value)."""
        return (yield from self.machine.mmio_read(self.bar0 + GGTT_OFFSET + (gm >> PAGE_SHIFT) * 8, 8))
