"""BAR0 access dispatch and the vGPU's virtual registers (i915/gvt mmio.c; gvt/gtt.c, gvt/aperture_gm.c).

``offset = gpa - BAR0 base`` (from the vGPU's config space). ``[8 MB, 8 MB + GGTT size)`` is the GGTT
(4 or 8 bytes, 4-aligned); ``[0, 2 MB)`` the registers (naturally aligned unless the register allows
otherwise, tracked ones through the register table, untracked ones read back their vreg); anything
else in the BAR is ignored (reads 0). A failsafe vGPU's registers and GGTT are plain memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import pvmmio
from ...hardware.regs import GEN8_MMIO_RESET_OFFSET, MMIO_SIZE
from ...hardware.regs import GGTT_OFFSET as GTT_START  # gtt_start_offset: the GGTT at BAR0 + 8 MB
from .errors import EmulationError
from .gtt import GTT_ENTRY_SHIFT

if TYPE_CHECKING:
    from .vgpu import Vgpu


def ggtt_mmio_size(gm_size: int) -> int:
    """gvt_ggtt_sz: (GM >> 12) << 3 bytes of GGTT entries (8 MB for 4 GB of GM)."""
    return (gm_size >> 12) << GTT_ENTRY_SHIFT


VREG_PAGE_SHIFT = 12
VREG_PAGE = 1 << VREG_PAGE_SHIFT


class MmioState:
    """The 2 MB of virtual registers (vgpu->mmio.vreg), initialised from the device snapshot.

    Linux vzalloc()s 2 MB per vGPU and copies the snapshot in; here a vGPU keeps only the 4 KiB pages it
    wrote (copy-on-write over the device's shared, immutable snapshot), so a vGPU costs the few pages of
    registers its guest touches (a few tens of KiB), not 2 MB: hundreds of vGPUs fit in one gvt."""

    def __init__(self, snapshot: bytes) -> None:
        self.snapshot = bytes(snapshot)
        self._pages: dict[int, bytearray] = {}  # page number -> this vGPU's copy of that page

    @property
    def pages_written(self) -> int:
        """Pages of vreg this vGPU holds its own copy of."""
        return len(self._pages)

    def _get(self, offset: int, size: int) -> bytes:
        out = b""
        while size > 0:
            pn, po = offset >> VREG_PAGE_SHIFT, offset & (VREG_PAGE - 1)
            n = min(size, VREG_PAGE - po)
            page = self._pages.get(pn)
            out += page[po:po + n] if page is not None else self.snapshot[offset:offset + n]
            offset, size = offset + n, size - n
        return out

    def _put(self, offset: int, data: bytes) -> None:
        done = 0
        while done < len(data):
            pn, po = offset >> VREG_PAGE_SHIFT, offset & (VREG_PAGE - 1)
            n = min(len(data) - done, VREG_PAGE - po)
            page = self._pages.get(pn)
            if page is None:
                base = pn << VREG_PAGE_SHIFT
                page = self._pages[pn] = bytearray(self.snapshot[base:base + VREG_PAGE])
            page[po:po + n] = data[done:done + n]
            offset, done = offset + n, done + n

    def read(self, offset: int, size: int) -> int:
        """Little-endian read of ``size`` bytes of vreg."""
        return int.from_bytes(self._get(offset, size), "little")

    def write(self, offset: int, data: int, size: int) -> None:
        """Little-endian write of the low ``size`` bytes of ``data``."""
        self._put(offset, (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def read32(self, offset: int) -> int:
        return self.read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.write(offset, value, 4)

    def reset(self, dmlr: bool) -> None:
        """intel_vgpu_reset_mmio: DMLR restores all 2 MB; a GT reset only [0, 0x44200)."""
        if dmlr:
            self._pages.clear()
            return
        last = GEN8_MMIO_RESET_OFFSET >> VREG_PAGE_SHIFT
        for pn in [p for p in self._pages if p < last]:
            del self._pages[pn]
        page = self._pages.get(last)
        if page is not None:  # the page holding the boundary: restore its part below 0x44200
            n = GEN8_MMIO_RESET_OFFSET & (VREG_PAGE - 1)
            page[:n] = self.snapshot[last << VREG_PAGE_SHIFT:(last << VREG_PAGE_SHIFT) + n]


def _is_gtt(vgpu: "Vgpu", offset: int) -> bool:
    return GTT_START <= offset < GTT_START + vgpu.gvt.ggtt_mmio_size


def _is_mmio(offset: int) -> bool:
    return 0 <= offset < MMIO_SIZE


def _is_pvmmio_page(vgpu: "Vgpu", offset: int, size: int) -> bool:
    return pvmmio.is_shared_page(vgpu, offset, size)


def _check_register_access(vgpu: "Vgpu", offset: int, size: int) -> None:
    if not _is_mmio(offset + size - 1):
        raise EmulationError(f"register access [{offset:#x}, +{size}) crosses the end of the 2 MB MMIO range")
    if offset % size and not vgpu.gvt.table.allows_unaligned(offset):
        raise EmulationError(f"unaligned {size}-byte register access at {offset:#x}")


def _check_gtt_access(vgpu: "Vgpu", offset: int, size: int) -> None:
    if offset % 4 or size not in (4, 8) or not _is_gtt(vgpu, offset + size - 1):
        raise EmulationError(f"GGTT access must be 4 or 8 bytes, 4-aligned, inside the table "
                             f"(offset {offset:#x}, size {size})")


def emulate_mmio_read(vgpu: "Vgpu", gpa: int, size: int) -> int:
    """intel_vgpu_emulate_mmio_read. Raises EmulationError for a bad access (the caller completes the
    ioreq and puts the vGPU in failsafe)."""
    return read_at(vgpu, gpa - vgpu.cfg.bar0_base(), size)


def read_at(vgpu: "Vgpu", offset: int, size: int) -> int:
    """:func:`emulate_mmio_read` of ``offset`` into BAR0 (the trap path computes it once per ioreq)."""
    if vgpu.failsafe:
        return _failsafe_read(vgpu, offset, size)
    if size < 1 or size > 8:
        raise EmulationError(f"MMIO read of {size} bytes (at most 8)")
    if _is_gtt(vgpu, offset):
        _check_gtt_access(vgpu, offset, size)
        return vgpu.gtt.read(offset - GTT_START, size)
    if not _is_mmio(offset):
        if _is_pvmmio_page(vgpu, offset, size):
            return pvmmio.page_read(vgpu, offset - pvmmio.SHARED_PAGE_OFFSET, size)
        vgpu.count("mmio_hole_read")
        return 0
    _check_register_access(vgpu, offset, size)
    return vgpu.gvt.table.read(vgpu, offset, size)


def read_is_pure(vgpu: "Vgpu", gpa: int, size: int) -> bool:
    """Whether :func:`emulate_mmio_read` of ``gpa`` would change nothing of the vGPU (statistics aside):
    failsafe and GGTT reads, holes, and registers whose handler is listed in handlers.PURE_READS."""
    return read_is_pure_at(vgpu, gpa - vgpu.cfg.bar0_base(), size)


def read_is_pure_at(vgpu: "Vgpu", offset: int, size: int) -> bool:
    """:func:`read_is_pure` of ``offset`` into BAR0."""
    if vgpu.failsafe or _is_gtt(vgpu, offset):
        return True
    if not _is_mmio(offset):
        return not _is_pvmmio_page(vgpu, offset, size)
    return vgpu.gvt.table.read_is_pure(vgpu, offset)


def emulate_mmio_write(vgpu: "Vgpu", gpa: int, data: int, size: int) -> None:
    """intel_vgpu_emulate_mmio_write. Raises EmulationError for a bad access."""
    offset = gpa - vgpu.cfg.bar0_base()
    if vgpu.failsafe:
        _failsafe_write(vgpu, offset, data, size)
        return
    if size < 1 or size > 8:
        raise EmulationError(f"MMIO write of {size} bytes (at most 8)")
    data &= (1 << (8 * size)) - 1
    if _is_gtt(vgpu, offset):
        _check_gtt_access(vgpu, offset, size)
        vgpu.gtt.write(offset - GTT_START, data, size)
        return
    if not _is_mmio(offset):
        if _is_pvmmio_page(vgpu, offset, size):  # the PVMMIO shared page before the hypervisor mapped it
            pvmmio.page_write(vgpu, offset - pvmmio.SHARED_PAGE_OFFSET, data, size)
            vgpu.count("pvmmio_page_trapped")
            return
        vgpu.count("mmio_hole_write")
        return
    _check_register_access(vgpu, offset, size)
    vgpu.gvt.table.write(vgpu, offset, data, size)


def _failsafe_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    """failsafe_emulate_mmio_rw (read): plain vreg, plain virtual GGTT, nothing else."""
    size = max(0, min(size, 8))
    if _is_mmio(offset) and _is_mmio(offset + size - 1):
        return vgpu.mmio.read(offset, size)
    if _is_gtt(vgpu, offset):
        return vgpu.gtt.failsafe_read(offset - GTT_START, size)
    return 0


def _failsafe_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """failsafe_emulate_mmio_rw (write): stored as plain memory; no handler runs, nothing leaves."""
    size = max(0, min(size, 8))
    if _is_mmio(offset) and _is_mmio(offset + size - 1):
        vgpu.mmio.write(offset, data, size)
    elif _is_gtt(vgpu, offset):
        vgpu.gtt.failsafe_write(offset - GTT_START, data, size)
