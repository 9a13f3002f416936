"""DMA into machine memory through a graphics address space (GGTT or a PPGTT).

The engines never see machine addresses in commands: every address is a graphics memory address (gma) that
is translated page by page (pages contiguous in GM need not be contiguous in machine memory). A
:class:`Dma` lives for one context run and caches the page translations it made, like the engine's TLB.
Any machine address outside the machine memory is a page fault too (a PTE naming a frame that is not there).
"""

from __future__ import annotations

import struct
from typing import Protocol

from ...hardware.gtt import PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ..common.memory import MachineMemory
from .ggtt import PageFault

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class AddressSpace(Protocol):
    """Anything with ``translate(gma) -> machine address`` raising PageFault (Ggtt, Ppgtt)."""

    def translate(self, gma: int) -> int: ...


class Dma:
    """Byte and dword access to graphics memory of one address space."""

    def __init__(self, mem: MachineMemory, space: AddressSpace, name: str) -> None:
        self.mem = mem
        self.space = space
        self.name = name
        self._pages: dict[int, int] = {}  # gma page number -> machine address of the page
        self._views: dict[int, memoryview] = {}  # gma page number -> u32 view of the page

    def page(self, gma: int) -> int:
        """Machine address of the page holding ``gma`` (translated once per run)."""
        vpn = gma >> PAGE_SHIFT
        base = self._pages.get(vpn)
        if base is None:
            base = self.space.translate(vpn << PAGE_SHIFT)
            if base < 0 or base + PAGE_SIZE > self.mem.size:
                raise PageFault(gma, f"{self.name} maps the page to {base:#x}, outside machine memory")
            self._pages[vpn] = base
        return base

    def dwords(self, gma: int, count: int) -> list[int]:
        """``count`` little-endian dwords from ``gma`` (dword aligned), crossing pages as needed."""
        out: list[int] = []
        while count:
            vpn = gma >> PAGE_SHIFT
            view = self._views.get(vpn)
            if view is None:
                view = self.mem.view(self.page(gma), PAGE_SIZE).cast("I")
                self._views[vpn] = view
            i = (gma & PAGE_MASK) >> 2
            n = min(count, 1024 - i)
            out.extend(view[i:i + n])
            count -= n
            gma += n * 4
        return out

    def read(self, gma: int, length: int) -> bytes:
        """``length`` bytes from ``gma``."""
        if length <= PAGE_SIZE - (gma & PAGE_MASK):  # the common case: inside one page
            return self.mem.read(self.page(gma) | (gma & PAGE_MASK), length)
        parts: list[bytes] = []
        while length:
            n = min(length, PAGE_SIZE - (gma & PAGE_MASK))
            parts.append(self.mem.read(self.page(gma) | (gma & PAGE_MASK), n))
            gma += n
            length -= n
        return b"".join(parts)

    def write(self, gma: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``gma``. Every page is translated before the first byte lands, so a fault
        leaves memory untouched."""
        length = len(data)
        if length <= PAGE_SIZE - (gma & PAGE_MASK):
            self.mem.write(self.page(gma) | (gma & PAGE_MASK), data)
            return
        chunks: list[tuple[int, int, int]] = []
        off = 0
        while off < length:
            n = min(length - off, PAGE_SIZE - ((gma + off) & PAGE_MASK))
            chunks.append((self.page(gma + off) | ((gma + off) & PAGE_MASK), off, n))
            off += n
        view = memoryview(data)
        for maddr, start, n in chunks:
            self.mem.write(maddr, view[start:start + n])

    def write_u32(self, gma: int, value: int) -> None:
        self.write(gma, _U32.pack(value & 0xFFFF_FFFF))

    def write_u64(self, gma: int, value: int) -> None:
        self.write(gma, _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF))
