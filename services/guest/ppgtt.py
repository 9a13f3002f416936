"""The guest's own PPGTT: gen8 page tables in guest RAM (i915 gen8_ppgtt.c; i915 gen8_ppgtt.c gen8_ppgtt_notify_vgt,
gvt/gtt.c, gvt/page_track.c).

Entries are ``gpa | PRESENT | RW`` (i915's gen8 PTE/PDE encode, without PPAT bits). Two shapes:
* 3-level (legacy 32-bit, context addressing mode 1): 4 page directories preallocated up front (i915's
  gen8_preallocate_top_level_pdp), so the 4 root pointers never change; PD -> PT -> page.
* 4-level (legacy 64-bit, mode 3): one PML4; PML4 -> PDP -> PD -> PT -> page.

Every table write goes through :meth:`GuestMachine.write_mem`: once GVT shadows a table its page is
write-protected and the write traps as a WP ioreq (GVT applies it, then updates its shadow). Reads are
plain RAM reads. A page table is freed only when no directory entry names it any more (a table can be
shared by two directory entries).
"""

from __future__ import annotations

from collections.abc import Callable

from ...hardware.gtt import ADDR_4K_MASK as ADDR_MASK
from ...hardware.gtt import GEN8_PAGE_PRESENT as PTE_PRESENT
from ...hardware.gtt import GEN8_PAGE_RW as PTE_RW
from ...hardware.gtt import PPGTT_L3_LIMIT as L3_LIMIT
from ...hardware.gtt import PPGTT_L4_LIMIT as L4_LIMIT
from ..common.memory import PAGE_SIZE
from .cpu import GuestMachine
from .runtime import Gen


#: allocates one page of guest RAM and returns its gpa (contents unspecified: the caller zeroes it)
PageAllocator = Callable[[], int]


def encode(gpa: int) -> int:
    """A present, writable gen8 PPGTT entry naming ``gpa``."""
    return (gpa & ADDR_MASK) | PTE_PRESENT | PTE_RW


def indices(va: int, levels: int) -> list[int]:
    """Table indices from the top level down (gvt/gtt.c, gvt/page_track.c index math): L3 [pdp, pde, pte] with the pdp
    from bits 31:30; L4 [pml4, pdp, pde, pte]."""
    pte, pde = (va >> 12) & 0x1FF, (va >> 21) & 0x1FF
    if levels == 3:
        return [(va >> 30) & 0x3, pde, pte]
    return [(va >> 39) & 0x1FF, (va >> 30) & 0x1FF, pde, pte]


class GuestPpgtt:
    """One PPGTT address space of the guest.

    Args:
        machine: the VM (RAM access, trapping writes).
        alloc_page: gives a page of guest RAM for a table.
        levels: 3 or 4.
    """

    def __init__(self, machine: GuestMachine, alloc_page: PageAllocator, levels: int = 3) -> None:
        if levels not in (3, 4):
            raise ValueError(f"{levels}-level PPGTT")
        self.machine = machine
        self.alloc_page = alloc_page
        self.levels = levels
        self.dirty: list[tuple[int, int]] = []  # [lo, hi) GPU VA ranges edited since the last PV update
        self.top: list[int] = []  # L3: the 4 PD gpas; L4: [PML4 gpa]
        self.pt_users: dict[int, int] = {}  # PT gpa -> how many PDEs name it
        self.free_pts: list[int] = []
        self.table_writes = 0

    @property
    def limit(self) -> int:
        return L3_LIMIT if self.levels == 3 else L4_LIMIT

    @property
    def roots(self) -> tuple[int, int, int, int]:
        """The root pointers for PVINFO pdp[0..3] and the context image (L4: pdp0 = PML4, rest 0)."""
        r = self.top + [0] * (4 - len(self.top))
        return r[0], r[1], r[2], r[3]

    def _new_table(self, vcpu: int) -> Gen[int]:
        gpa = self.free_pts.pop() if self.free_pts else self.alloc_page()
        yield from self.machine.write_mem(gpa, bytes(PAGE_SIZE), vcpu)
        return gpa

    def create(self, vcpu: int = 0) -> Gen[None]:
        """Allocate the top level (4 PDs, or the PML4), zeroed."""
        top = []
        for _ in range(4 if self.levels == 3 else 1):
            top.append((yield from self._new_table(vcpu)))
        self.top = top

    def _write_entry(self, table: int, index: int, value: int, vcpu: int) -> Gen[None]:
        yield from self.machine.write_u64(table + 8 * index, value, vcpu)
        self.table_writes += 1

    def _read_entry(self, table: int, index: int) -> int:
        return self.machine.read_u64(table + 8 * index)

    def _pd_for(self, va: int, create: bool, vcpu: int) -> Gen[int | None]:
        """The PD covering ``va`` (creating the PDP on the way for L4)."""
        if not 0 <= va < self.limit:
            raise ValueError(f"va {va:#x} outside the {self.levels}-level PPGTT")
        idx = indices(va, self.levels)
        if self.levels == 3:
            return self.top[idx[0]]
        table = self.top[0]
        for i in idx[:2]:  # PML4 -> PDP -> PD
            e = self._read_entry(table, i)
            if not e & PTE_PRESENT:
                if not create:
                    return None
                child = yield from self._new_table(vcpu)
                yield from self._write_entry(table, i, encode(child), vcpu)
                e = encode(child)
            table = e & ADDR_MASK
        return table

    def _touch(self, va: int, size: int) -> None:
        """Remember the edited range, merged with an adjacent or overlapping one (a PV guest posts each
        range in one PV_PPGTT_UPDATE before it submits)."""
        lo, hi = va & ~0xFFF, (va & ~0xFFF) + size
        for i, (a, b) in enumerate(self.dirty):
            if lo <= b and a <= hi:
                self.dirty[i] = (min(a, lo), max(b, hi))
                return
        self.dirty.append((lo, hi))

    def map(self, va: int, gpa: int, vcpu: int = 0) -> Gen[None]:
        """Map the GPU virtual page of ``va`` onto the guest page ``gpa`` (a remap if already mapped)."""
        self._touch(va, 4096)
        pd = yield from self._pd_for(va, True, vcpu)
        assert pd is not None
        pde_i, pte_i = indices(va, self.levels)[-2:]
        pde = self._read_entry(pd, pde_i)
        if not pde & PTE_PRESENT:
            pt = yield from self._new_table(vcpu)
            yield from self._write_entry(pd, pde_i, encode(pt), vcpu)
            self.pt_users[pt] = self.pt_users.get(pt, 0) + 1
            pde = encode(pt)
        yield from self._write_entry(pde & ADDR_MASK, pte_i, encode(gpa), vcpu)

    def unmap(self, va: int, vcpu: int = 0) -> Gen[bool]:
        """Clear the PTE of ``va``. Returns whether it was mapped."""
        self._touch(va, 4096)
        pt = yield from self._pt_of(va)
        if pt is None:
            return False
        pte_i = indices(va, self.levels)[-1]
        if not self._read_entry(pt, pte_i) & PTE_PRESENT:
            return False
        yield from self._write_entry(pt, pte_i, 0, vcpu)
        return True

    def _pt_of(self, va: int) -> Gen[int | None]:
        pd = yield from self._pd_for(va, False, 0)
        if pd is None:
            return None
        pde = self._read_entry(pd, indices(va, self.levels)[-2])
        return (pde & ADDR_MASK) if pde & PTE_PRESENT else None

    def unlink_table(self, va: int, vcpu: int = 0) -> Gen[bool]:
        """Clear the PDE covering ``va`` (a 2 MiB range goes at once); its PT is freed when no other PDE
        names it. Returns whether a PT was linked."""
        self._touch(va & ~((1 << 21) - 1), 1 << 21)
        pd = yield from self._pd_for(va, False, vcpu)
        if pd is None:
            return False
        pde_i = indices(va, self.levels)[-2]
        pde = self._read_entry(pd, pde_i)
        if not pde & PTE_PRESENT:
            return False
        yield from self._write_entry(pd, pde_i, 0, vcpu)
        pt = pde & ADDR_MASK
        self.pt_users[pt] = self.pt_users.get(pt, 1) - 1
        if self.pt_users[pt] <= 0:
            del self.pt_users[pt]
            self.free_pts.append(pt)
        return True

    def share_table(self, va_from: int, va_to: int, vcpu: int = 0) -> Gen[bool]:
        """Make the PDE covering ``va_to`` name the same PT as the one covering ``va_from`` (one guest
        table reached two ways: GVT shares its shadow). Returns False if ``va_from`` has no PT."""
        pt = yield from self._pt_of(va_from)
        if pt is None:
            return False
        yield from self.unlink_table(va_to, vcpu)
        pd = yield from self._pd_for(va_to, True, vcpu)
        assert pd is not None
        yield from self._write_entry(pd, indices(va_to, self.levels)[-2], encode(pt), vcpu)
        self.pt_users[pt] = self.pt_users.get(pt, 0) + 1
        if pt in self.free_pts:
            self.free_pts.remove(pt)
        return True

    def translate(self, va: int) -> int | None:
        """The guest-physical address ``va`` maps to, walking the tables in RAM (None: not mapped)."""
        if not 0 <= va < self.limit or not self.top:
            return None
        idx = indices(va, self.levels)
        if self.levels == 3:
            table, rest = self.top[idx[0]], idx[1:]
        else:
            table, rest = self.top[0], idx
        for i in rest:
            e = self._read_entry(table, i)
            if not e & PTE_PRESENT:
                return None
            table = e & ADDR_MASK
        return table | (va & (PAGE_SIZE - 1))
