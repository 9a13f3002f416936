"""The simulated EPT: a VM's guest-physical -> machine map, in machine memory.

Real ACRN keeps an EPT per VM and the CPU walks it on every guest access; write-protecting a page (HC
0x43 ``VM_WRITE_PROTECT_PAGE``) clears the entry's W bit so the next write exits as a WP ioreq. gvtsim keeps
the same structure in the shared machine memory so the same holds across processes: vhm writes it, the
guest process walks it before every RAM access, and a change is visible to the guest's very next access.

Layout (covers a 32-bit guest-physical space, enough for RAM below 4 GiB and 32-bit BARs):
* root: ``ROOT_FRAMES`` contiguous frames = 2048 u64 entries, entry i covering gpa [i*2 MiB, (i+1)*2 MiB);
  a root entry is ``table_mfn << 12 | PRESENT``;
* leaf tables: one frame of 512 u64 entries, one per 4 KiB page, EPT-like bits:
  bit 0 R, bit 1 W, bit 2 X, bits 51:12 the machine frame. An entry with R but no W is write-protected.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable

from .memory import PAGE_SHIFT, MachineMemory

ROOT_FRAMES = 4
ROOT_ENTRIES = ROOT_FRAMES * 512
LEAF_SHIFT = 9  # 512 entries per leaf table
GPA_LIMIT = ROOT_ENTRIES << (LEAF_SHIFT + PAGE_SHIFT)  # 4 GiB
MAX_GFN = GPA_LIMIT >> PAGE_SHIFT

EPT_R = 1 << 0
EPT_W = 1 << 1
EPT_X = 1 << 2
EPT_RWX = EPT_R | EPT_W | EPT_X
EPT_PRESENT = EPT_R
ADDR_MASK = ((1 << 52) - 1) & ~((1 << PAGE_SHIFT) - 1)


class Ept:
    """A VM's EPT over machine memory.

    Args:
        mem: the machine memory.
        root_mfn: first of the ``ROOT_FRAMES`` root frames (zeroed by the creator).
        alloc_table: writer side only (vhm): returns a fresh zeroed frame for a leaf table.
    """

    def __init__(self, mem: MachineMemory, root_mfn: int,
                 alloc_table: Callable[[], int] | None = None) -> None:
        self.mem = mem
        self.root = root_mfn << PAGE_SHIFT
        self._alloc_table = alloc_table
        self._leaf_cache: dict[int, int] = {}  # root index -> leaf table machine address (leaves never move)

    def _leaf(self, gfn: int, create: bool) -> int:
        ri = gfn >> LEAF_SHIFT
        leaf = self._leaf_cache.get(ri)
        if leaf is not None:
            return leaf
        if not 0 <= gfn < MAX_GFN:
            return 0
        entry = self.mem.read_u64(self.root + ri * 8)
        if entry & EPT_PRESENT:
            leaf = entry & ADDR_MASK
        elif create:
            if self._alloc_table is None:
                raise PermissionError("read-only EPT view cannot create tables")
            mfn = self._alloc_table()
            leaf = mfn << PAGE_SHIFT
            self.mem.write_u64(self.root + ri * 8, leaf | EPT_PRESENT)
        else:
            return 0
        self._leaf_cache[ri] = leaf
        return leaf

    def entry(self, gfn: int) -> int:
        """The raw leaf entry for ``gfn`` (0 when unmapped)."""
        leaf = self._leaf(gfn, False)
        if not leaf:
            return 0
        return self.mem.read_u64(leaf + (gfn & 511) * 8)

    def translate(self, gfn: int) -> tuple[int, bool] | None:
        """``(mfn, writable)`` for a mapped gfn, None when the gfn is not memory (an MMIO hole)."""
        e = self.entry(gfn)
        if not e & EPT_PRESENT:
            return None
        return (e & ADDR_MASK) >> PAGE_SHIFT, bool(e & EPT_W)

    def _set(self, gfn: int, value: int) -> None:
        leaf = self._leaf(gfn, True)
        self.mem.write_u64(leaf + (gfn & 511) * 8, value)

    def map(self, gfn: int, mfn: int, nr: int = 1, prot: int = EPT_RWX) -> None:
        """Map ``nr`` guest frames at ``gfn`` onto machine frames at ``mfn``."""
        self._check(gfn, nr)
        while nr > 0:  # one slice write per leaf table (512 entries), not one u64 write per page
            n = min(nr, 512 - (gfn & 511))
            first = (mfn << PAGE_SHIFT) | prot
            entries = array("Q", range(first, first + (n << PAGE_SHIFT), 1 << PAGE_SHIFT))
            self.mem.write(self._leaf(gfn, True) + (gfn & 511) * 8, memoryview(entries).cast("B"))
            gfn, mfn, nr = gfn + n, mfn + n, nr - n

    def map_extents(self, extents: list[tuple[int, int, int]], prot: int = EPT_RWX) -> None:
        """Map ``(gfn, mfn, count)`` extents that cover gfns contiguously from ``extents[0][0]`` (a VM's RAM
        map): the entries are built in one array and written one leaf table at a time."""
        if not extents:
            return
        gfn = extents[0][0]
        entries = array("Q")
        for g, mfn, count in extents:
            if g != gfn + len(entries):
                raise ValueError(f"extent at gfn {g:#x} does not follow gfn {gfn + len(entries):#x}")
            first = (mfn << PAGE_SHIFT) | prot
            entries.extend(range(first, first + (count << PAGE_SHIFT), 1 << PAGE_SHIFT))
        self._check(gfn, len(entries))
        raw = memoryview(entries).cast("B")
        done = 0
        while done < len(entries):
            n = min(len(entries) - done, 512 - ((gfn + done) & 511))
            self.mem.write(self._leaf(gfn + done, True) + ((gfn + done) & 511) * 8, raw[done * 8:(done + n) * 8])
            done += n

    def unmap(self, gfn: int, nr: int = 1) -> None:
        """Remove ``nr`` mappings (accesses there become MMIO exits again)."""
        self._check(gfn, nr)
        for i in range(nr):
            if self.entry(gfn + i):
                self._set(gfn + i, 0)

    def set_write_protect(self, gfn: int, protect: bool) -> bool:
        """Clear (``protect``) or set the W bit of a mapped page. Returns False if ``gfn`` is not mapped."""
        e = self.entry(gfn)
        if not e & EPT_PRESENT:
            return False
        self._set(gfn, (e & ~EPT_W) if protect else (e | EPT_W))
        return True

    def write_protected(self, gfn: int, nr: int) -> list[int]:
        """The gfns in ``[gfn, gfn + nr)`` mapped without W (one read per leaf table)."""
        self._check(gfn, nr)
        out: list[int] = []
        end = gfn + nr
        while gfn < end:
            n = min(end - gfn, 512 - (gfn & 511))
            leaf = self._leaf(gfn, False)
            if leaf:
                entries = array("Q")
                entries.frombytes(self.mem.read(leaf + (gfn & 511) * 8, n * 8))
                out.extend(gfn + i for i, e in enumerate(entries) if e & (EPT_PRESENT | EPT_W) == EPT_PRESENT)
            gfn += n
        return out

    def table_frames(self) -> list[int]:
        """Machine frames of every leaf table (for freeing them with the VM)."""
        out = []
        for ri in range(ROOT_ENTRIES):
            e = self.mem.read_u64(self.root + ri * 8)
            if e & EPT_PRESENT:
                out.append((e & ADDR_MASK) >> PAGE_SHIFT)
        return out

    def invalidate_cache(self) -> None:
        """Forget cached leaf locations (only needed if the EPT was rebuilt from scratch)."""
        self._leaf_cache.clear()

    @staticmethod
    def _check(gfn: int, nr: int) -> None:
        if gfn < 0 or nr < 0 or gfn + nr > MAX_GFN:
            raise ValueError(f"gfn range {gfn:#x}+{nr} outside the 4 GiB guest-physical space")
