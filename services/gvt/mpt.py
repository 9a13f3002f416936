"""The MPT adapter (AcrnGT's role, ACRN gvt/acrngt.c): hypervisor look-ups the core calls synchronously.

AcrnGT maps guest memory into the Service VM (``map_guest_phys``) and translates gfn -> mfn itself;
gvtsim does the same by walking the VM's simulated EPT in the shared machine memory (read-only view).
A gfn is valid when it lies below the VM's RAM size and the EPT maps it. State changes of the
hypervisor (trap areas, page tracking, MSI, ...) are effects, not MPT calls (effects.py).
"""

from __future__ import annotations

from typing import Protocol

from ..common.ept import Ept
from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory, MemoryRangeError

FRAMES_PER_MB = 256


class Mpt(Protocol):
    """What the core asks the hypervisor about one VM."""

    def is_valid_gfn(self, gfn: int) -> bool: ...

    def gfn_to_mfn(self, gfn: int) -> int | None: ...

    def dma_map_guest_page(self, gfn: int) -> int | None: ...

    def read_gpa(self, gpa: int, length: int) -> bytes | None: ...

    def write_gpa(self, gpa: int, data: bytes) -> bool: ...


class NullMpt:
    """No guest memory known (VGPU_CREATE with ept_root 0): every gfn is invalid (=> scratch)."""

    def is_valid_gfn(self, gfn: int) -> bool:
        return False

    def gfn_to_mfn(self, gfn: int) -> int | None:
        return None

    def dma_map_guest_page(self, gfn: int) -> int | None:
        return None

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        return None

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        return False


class EptMpt:
    """Look-ups through the VM's EPT in machine memory (``Ept(mem, ept_root)``, read-only)."""

    def __init__(self, mem: MachineMemory, ept_root: int, ram_mb: int) -> None:
        self.mem = mem
        self.ept = Ept(mem, ept_root)
        self.ram_frames = ram_mb * FRAMES_PER_MB

    def gfn_to_mfn(self, gfn: int) -> int | None:
        """The machine frame behind a guest frame of RAM, None outside RAM or unmapped."""
        if not 0 <= gfn < self.ram_frames:
            return None
        try:
            t = self.ept.translate(gfn)
        except MemoryRangeError:
            return None
        if t is None:
            return None
        mfn = t[0]
        return mfn if 0 < mfn < self.mem.frames else None

    def is_valid_gfn(self, gfn: int) -> bool:
        return self.gfn_to_mfn(gfn) is not None

    def dma_map_guest_page(self, gfn: int) -> int | None:
        """AcrnGT: dma_map_guest_page = gfn_to_mfn (no IOMMU, nothing pinned)."""
        return self.gfn_to_mfn(gfn)

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        """Copy guest-physical memory page by page (AcrnGT map_guest_phys + memcpy); None if any page
        is not RAM."""
        out = bytearray()
        while length > 0:
            mfn = self.gfn_to_mfn(gpa >> PAGE_SHIFT)
            if mfn is None:
                return None
            off = gpa & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            out += self.mem.read((mfn << PAGE_SHIFT) + off, n)
            gpa += n
            length -= n
        return bytes(out)

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        """Write guest-physical memory; False (nothing written) if any page is not RAM."""
        pieces = []
        pos, cur = 0, gpa
        while pos < len(data):
            mfn = self.gfn_to_mfn(cur >> PAGE_SHIFT)
            if mfn is None:
                return False
            off = cur & (PAGE_SIZE - 1)
            n = min(len(data) - pos, PAGE_SIZE - off)
            pieces.append(((mfn << PAGE_SHIFT) + off, data[pos:pos + n]))
            pos += n
            cur += n
        for maddr, chunk in pieces:
            self.mem.write(maddr, chunk)
        return True
