"""One VM's guest-physical memory: RAM frames, the gfn->mfn map, the simulated EPT, extra mappings.

Guest RAM is machine memory. vhm allocates it deliberately non-identity (from the top of
machine memory, in short runs) so that code confusing a gfn with an mfn breaks at once. The EPT
(services/common/ept.py) lives in machine memory too: the guest process walks it before every RAM access,
so a write-protect change is visible to the guest's very next write (HC 0x43 VM_WRITE_PROTECT_PAGE clears
the entry's W bit, as ACRN's ept_modify_mr does).
"""

from __future__ import annotations

import bisect

from ..common.ept import EPT_RWX, MAX_GFN, ROOT_FRAMES, Ept
from ..common.memory import PAGE_SHIFT, PAGE_SIZE, FrameAllocator, MachineMemory

FRAMES_PER_MB = (1 << 20) >> PAGE_SHIFT


class GuestMemoryError(ValueError):
    """A guest-physical address or frame outside what the VM may touch (answered with bad_address)."""


class GuestMemory:
    """RAM of one VM at gpa 0, mapped RWX in a fresh EPT.

    Args:
        mem: the machine memory.
        frames: the host's frame allocator; every frame (RAM, EPT root and leaf tables) is taken for
            ``owner`` so one ``free_owner`` returns them all.
        owner: allocator owner key (``vm{id}``).
        ram_mb: RAM size.
        max_run: longest run of contiguous machine frames in the RAM map (fragmentation on purpose).

    Raises:
        OutOfFrames: (services/common/memory.py) not enough machine frames (everything taken so far is released first).
    """

    def __init__(self, mem: MachineMemory, frames: FrameAllocator, owner: str, ram_mb: int,
                 max_run: int = 16) -> None:
        self.mem = mem
        self.frames = frames
        self.owner = owner
        self.ram_frames = ram_mb * FRAMES_PER_MB
        self.extents: list[tuple[int, int, int]] = []  # (gfn, mfn, count), gfn ascending: the RAM map
        self._starts: list[int] = []  # the extents' first gfns, for bisect
        self.extra: dict[int, int] = {}  # gfn -> mfn mapped by map_gfn_to_mfn (outside RAM)
        # Frames come from the allocator zero (a free frame is a hole in the machine memory file, see
        # services/common/memory.py): nothing is written here but the EPT, so a VM costs what it touches.
        try:
            root = frames.alloc(ROOT_FRAMES, owner, contiguous=True, from_top=True)[0]
            self.ept_root = root.mfn
            self.ept = Ept(mem, root.mfn, alloc_table=self._alloc_table)
            gfn = 0
            for run in frames.alloc(self.ram_frames, owner, max_run=max_run, from_top=True):
                self.extents.append((gfn, run.mfn, run.count))
                self._starts.append(gfn)
                gfn += run.count
            self.ept.map_extents(self.extents, EPT_RWX)
        except BaseException:
            frames.free_owner(owner)
            raise

    @classmethod
    def reopen(cls, mem: MachineMemory, frames: FrameAllocator, owner: str, ram_mb: int, ept_root: int,
               extents: list[tuple[int, int, int]], extra: dict[int, int]) -> "GuestMemory":
        """The memory of a VM a restarted vhm restores (services/vhm/state.py): its RAM, EPT and extra
        mappings are still in machine memory, its frames already claimed for ``owner``; nothing is written.
        Raises GuestMemoryError if the RAM map does not cover the RAM exactly."""
        self = cls.__new__(cls)
        self.mem, self.frames, self.owner = mem, frames, owner
        self.ram_frames = ram_mb * FRAMES_PER_MB
        gfn = 0
        for g, mfn, count in extents:
            if g != gfn or count <= 0 or mfn < frames.reserved or mfn + count > mem.frames:
                raise GuestMemoryError(f"RAM map extent ({g:#x}, {mfn:#x}, {count}) does not follow gfn {gfn:#x}")
            gfn += count
        if gfn != self.ram_frames:
            raise GuestMemoryError(f"RAM map covers {gfn} frames, the VM has {self.ram_frames}")
        self.extents = [(int(g), int(f), int(c)) for g, f, c in extents]
        self._starts = [g for g, _, _ in self.extents]
        self.extra = dict(extra)
        self.ept_root = ept_root
        self.ept = Ept(mem, ept_root, alloc_table=self._alloc_table)
        return self

    def _alloc_table(self) -> int:
        return self.frames.alloc(1, self.owner, from_top=True)[0].mfn  # zero: fresh from the allocator

    def _ram_mfn(self, gfn: int) -> int:
        """The machine frame of RAM gfn ``gfn`` (0 <= gfn < ram_frames): a bisect over the extents."""
        g, mfn, _ = self.extents[bisect.bisect_right(self._starts, gfn) - 1]
        return mfn + gfn - g

    # ------------------------------------------------------------------------------------ lookups
    def is_ram(self, gfn: int) -> bool:
        """``gfn`` is one of the VM's RAM frames."""
        return 0 <= gfn < self.ram_frames

    def translate(self, gfn: int) -> int | None:
        """The machine frame behind ``gfn`` (RAM or an extra mapping), None if unmapped (an MMIO hole)."""
        if 0 <= gfn < self.ram_frames:
            return self._ram_mfn(gfn)
        return self.extra.get(gfn)

    def is_write_protected(self, gfn: int) -> bool:
        """The EPT entry of ``gfn`` is present without W (writes exit as WP ioreqs)."""
        t = self.ept.translate(gfn)
        return t is not None and not t[1]

    def write_protect(self, gfn: int, protect: bool) -> None:
        """Clear (``protect``) or set the W bit of a RAM page (HC 0x43 semantics: the gpa must be mapped)."""
        if not self.is_ram(gfn):
            raise GuestMemoryError(f"gfn {gfn:#x} is not guest RAM (RAM is gfn 0..{self.ram_frames - 1:#x})")
        self.ept.set_write_protect(gfn, protect)

    # ------------------------------------------------------------------------------ gpa read/write
    def _check_ram(self, gpa: int, length: int) -> None:
        if gpa < 0 or length <= 0 or gpa + length > self.ram_frames << PAGE_SHIFT:
            raise GuestMemoryError(f"gpa range [{gpa:#x}, +{length:#x}) outside guest RAM "
                                   f"[0, {self.ram_frames << PAGE_SHIFT:#x})")

    def _pieces(self, gpa: int, length: int) -> list[tuple[int, int, int]]:
        """(machine address, offset in buffer, length) pieces of a RAM range, split at page boundaries."""
        out = []
        off = 0
        while off < length:
            addr = gpa + off
            n = min(PAGE_SIZE - (addr & (PAGE_SIZE - 1)), length - off)
            out.append(((self._ram_mfn(addr >> PAGE_SHIFT) << PAGE_SHIFT) | (addr & (PAGE_SIZE - 1)), off, n))
            off += n
        return out

    def read(self, gpa: int, length: int) -> bytes:
        """Read guest RAM (read_gpa: the Service VM's mapping of guest memory, no EPT permissions apply)."""
        self._check_ram(gpa, length)
        return b"".join(self.mem.read(maddr, n) for maddr, _, n in self._pieces(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest RAM (write_gpa: bypasses write protection, as the Service VM's mapping does)."""
        self._check_ram(gpa, len(data))
        view = memoryview(data)
        for maddr, off, n in self._pieces(gpa, len(data)):
            self.mem.write(maddr, view[off:off + n])

    # ------------------------------------------------------------------------- extra (aperture) maps
    def map_extra(self, gfn: int, mfn: int, nr: int) -> None:
        """Map ``nr`` gfns outside RAM onto existing machine frames (map_gfn_to_mfn, HC 0x42 MR_ADD)."""
        if gfn < self.ram_frames or gfn + nr > MAX_GFN:
            raise GuestMemoryError(f"gfn range {gfn:#x}+{nr} must lie above RAM (gfn >= {self.ram_frames:#x}) "
                                   f"and below {MAX_GFN:#x}")
        if mfn < self.frames.reserved or mfn + nr > self.mem.frames:
            raise GuestMemoryError(f"machine frames {mfn:#x}+{nr} do not exist")
        taken = [g for g in range(gfn, gfn + nr) if g in self.extra]
        if taken:
            raise GuestMemoryError(f"gfn {taken[0]:#x} is already mapped (unmap first)")
        self.ept.map(gfn, mfn, nr, EPT_RWX)
        for i in range(nr):
            self.extra[gfn + i] = mfn + i

    def unmap_extra(self, gfn: int, nr: int) -> None:
        """Remove extra mappings (HC 0x42 MR_DEL); every gfn must have been mapped by ``map_extra``."""
        missing = [g for g in range(gfn, gfn + nr) if g not in self.extra]
        if missing:
            raise GuestMemoryError(f"gfn {missing[0]:#x} is not an extra mapping")
        self.ept.unmap(gfn, nr)
        for i in range(nr):
            del self.extra[gfn + i]

    # ---------------------------------------------------------------------------------- lifetime
    def clean(self) -> int:
        """Free every frame of the VM (RAM, EPT root, EPT leaf tables). Returns the frame count."""
        self.extra.clear()
        return self.frames.free_owner(self.owner)

