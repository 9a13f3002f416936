"""Virtual GGTT and the gen8 entry helpers (i915/gvt gtt.c; gvt/gtt.c, gvt/aperture_gm.c). PPGTT shadowing is ppgtt.py.

The guest writes GGTT entries through BAR0 + 8 MB, 8 bytes per entry (gen8 PTE: bit 0 present, bits
45:12 the page address). GVT keeps the guest's value (``virtual``), builds the host entry (the gfn
replaced by its machine frame, or the scratch page) and writes it to the physical GGTT at the SAME index:
the guest's ballooning makes guest and host GM addresses identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hardware.gtt import ADDR_4K_MASK, GEN8_PAGE_PRESENT, GTT_ENTRY_SHIFT, GTT_ENTRY_SIZE
from ...hardware.gtt import PAGE_SHIFT as GTT_PAGE_SHIFT
from .effects import PgpuGgttFill, PgpuGgttWrite
from .errors import EmulationError, WorkloadError
from .types import GTT_PAGE_SIZE

if TYPE_CHECKING:
    from .vgpu import Vgpu

U64 = (1 << 64) - 1

PPGTT_ROOT_L3 = "L3"  # GTT_TYPE_PPGTT_ROOT_L3_ENTRY: 4 PDP root pointers
PPGTT_ROOT_L4 = "L4"  # GTT_TYPE_PPGTT_ROOT_L4_ENTRY: pdp0 = the PML4


# ------------------------------------------------------------------------------- gen8 PTE helpers
def pte_present(pte: int) -> bool:
    """gen8_gtt_test_present for a GGTT PTE: bit 0."""
    return bool(pte & GEN8_PAGE_PRESENT)


def pte_pfn(pte: int) -> int:
    """gen8_gtt_get_pfn: bits 45:12."""
    return (pte & ADDR_4K_MASK) >> GTT_PAGE_SHIFT


def pte_set_pfn(pte: int, pfn: int) -> int:
    """gen8_gtt_set_pfn: replace bits 45:12, keep every flag bit."""
    return (pte & ~ADDR_4K_MASK & U64) | ((pfn << GTT_PAGE_SHIFT) & ADDR_4K_MASK)


def pte_encode(addr: int) -> int:
    """The i915 guest's GGTT PTE encode: ``addr | PRESENT`` (i915 gen8_ppgtt.c gen8_ppgtt_notify_vgt)."""
    return (addr & ADDR_4K_MASK) | GEN8_PAGE_PRESENT


def scratch_pte(scratch_mfn: int) -> int:
    """A present entry pointing at the scratch page (intel_vgpu_reset_ggtt)."""
    return pte_set_pfn(GEN8_PAGE_PRESENT, scratch_mfn)


# ------------------------------------------------------------------------ guest graphics memory
def gma_to_gpa(vgpu: "Vgpu", gma: int) -> int:
    """intel_vgpu_gma_to_gpa (gvt/gtt.c): a guest graphics address through the vGPU's virtual GGTT to a
    guest physical address (guest and host GM are the same addresses thanks to ballooning; the guest PTE
    holds the gfn). Raises WorkloadError outside the vGPU's GM or on a page the guest has not mapped."""
    if not vgpu.resource.contains(gma):
        raise WorkloadError(f"graphics address {gma:#x} outside the vGPU's GM")
    pte = vgpu.gtt.virtual.get(gma >> GTT_PAGE_SHIFT, 0)
    if not pte_present(pte):
        raise WorkloadError(f"graphics address {gma:#x} not mapped in the guest GGTT")
    return (pte_pfn(pte) << GTT_PAGE_SHIFT) | (gma & (GTT_PAGE_SIZE - 1))


def read_gma(vgpu: "Vgpu", gma: int, length: int) -> bytes:
    """``length`` bytes of guest graphics memory from ``gma``, page by page through the virtual GGTT
    (copy_gma_to_hva, gvt/cmd_parser.c). Raises WorkloadError on an address that is not guest RAM."""
    out = bytearray()
    while length:
        n = min(length, GTT_PAGE_SIZE - (gma & (GTT_PAGE_SIZE - 1)))
        data = vgpu.mpt.read_gpa(gma_to_gpa(vgpu, gma), n)
        if data is None:
            raise WorkloadError(f"graphics address {gma:#x} is not guest RAM")
        out += data
        gma, length = gma + n, length - n
    return bytes(out)


# ----------------------------------------------------------------------------------- the GGTT
class Ggtt:
    """One vGPU's view of the GGTT: guest values, partial (4-byte) writes, host entries it wrote."""

    def __init__(self, vgpu: "Vgpu") -> None:
        self.vgpu = vgpu
        self.virtual: dict[int, int] = {}  # index -> guest PTE (sparse virtual_ggtt)
        self.host: dict[int, int] = {}  # index -> host PTE written over the scratch fill
        self.partial: dict[int, tuple[int, int]] = {}  # index -> (byte offset of the half, value so far)

    # -------------------------------------------------------------------------------- lifecycle
    def init(self) -> None:
        """intel_vgpu_init_gtt: the vGPU's slices of the physical GGTT point at the scratch page."""
        self._scratch_fill()

    def _scratch_fill(self) -> None:
        """intel_vgpu_reset_ggtt: every entry of the vGPU's slices -> the scratch page (present)."""
        self.host.clear()
        pte = scratch_pte(self.vgpu.gvt.scratch_mfn)
        for index, count in self.vgpu.resource.ggtt_ranges():
            if count:
                self.vgpu.emit(PgpuGgttFill(index, count, pte))

    def resync_host(self) -> None:
        """Re-send everything this vGPU put in the physical GGTT (pgpu restarted, or the scratch page
        changed): the scratch fill, then every entry the guest wrote, rebuilt from its guest value."""
        written = sorted(self.host)
        self._scratch_fill()
        entries = []
        for index in written:
            self.host[index] = self._host_entry(self.virtual.get(index, 0))
            entries.append((index, self.host[index]))
        if entries:
            self.vgpu.emit(PgpuGgttWrite(tuple(entries)))

    def reset(self) -> None:
        """DMLR: host slices to scratch; a half-written entry is forgotten (the guest starts over)."""
        self.partial.clear()
        self._scratch_fill()

    def clean(self) -> None:
        """vGPU destroy: host slices to scratch, virtual GGTT freed."""
        self._scratch_fill()
        self.virtual.clear()
        self.partial.clear()

    # ------------------------------------------------------------------------------- emulation
    def _in_range(self, index: int) -> bool:
        return self.vgpu.resource.contains(index << GTT_PAGE_SHIFT)

    def read(self, off: int, size: int) -> int:
        """emulate_ggtt_mmio_read (``off`` from the GGTT start): the guest's value, 0 outside the vGPU's
        slices. An 8-byte read at a 4-aligned, non-8-aligned offset reads the two halves it covers."""
        if size not in (4, 8):
            raise EmulationError(f"GGTT read of {size} bytes (must be 4 or 8)")
        if size == 8 and off % 8:
            return self.read(off, 4) | (self.read(off + 4, 4) << 32)
        index = off >> GTT_ENTRY_SHIFT
        if not self._in_range(index):
            return 0
        shift = 8 * (off & (GTT_ENTRY_SIZE - 1))
        return (self.virtual.get(index, 0) >> shift) & ((1 << (8 * size)) - 1)

    def write(self, off: int, data: int, size: int) -> None:
        """emulate_ggtt_mmio_write (gvt/gtt.c, gvt/aperture_gm.c steps 1-5). An 8-byte write straddling two entries is
        taken as two 4-byte halves."""
        if size not in (4, 8):
            raise EmulationError(f"GGTT write of {size} bytes (must be 4 or 8)")
        if size == 8 and off % 8:
            self.write(off, data & 0xFFFF_FFFF, 4)
            self.write(off + 4, data >> 32, 4)
            return
        index = off >> GTT_ENTRY_SHIFT
        if not self._in_range(index):
            # the guest may write the whole table because of ballooning: ignored
            self.vgpu.count("ggtt_write_out_of_range")
            return
        half = off & (GTT_ENTRY_SIZE - 1)
        e = (data & ((1 << (8 * size)) - 1)) << (8 * half)
        first_half = False
        if size < GTT_ENTRY_SIZE:
            pending = self.partial.get(index)
            if pending is not None and pending[0] == half:
                # the same first half again: only the guest entry changes (the host entry is already scratch)
                self.partial[index] = (half, e)
                self.virtual[index] = e
                return
            if pending is None:
                # the first half: remembered, and the host entry becomes the scratch page, not present,
                # until the other half arrives (gtt.c emulate_ggtt_mmio_write, partial_update)
                self.partial[index] = (half, e)
                first_half = True
            else:
                del self.partial[index]
                e |= pending[1]
        else:
            self.partial.pop(index, None)
        self.virtual[index] = e
        host = pte_set_pfn(0, self.vgpu.gvt.scratch_mfn) if first_half else self._host_entry(e)
        self.host[index] = host
        self.vgpu.emit(PgpuGgttWrite(((index, host),)))
        self.vgpu.aperture.on_host_entry(index, host)

    def _host_entry(self, e: int) -> int:
        """Present: gfn -> mfn through the MPT (invalid gfn => scratch). Not present: scratch, cleared."""
        scratch = self.vgpu.gvt.scratch_mfn
        if not pte_present(e):
            return pte_set_pfn(0, scratch)
        gfn = pte_pfn(e)
        mpt = self.vgpu.mpt
        if not mpt.is_valid_gfn(gfn):
            self.vgpu.count("ggtt_invalid_gfn")
            return pte_set_pfn(e, scratch)
        mfn = mpt.dma_map_guest_page(gfn)
        if mfn is None:
            self.vgpu.count("ggtt_dma_map_failed")
            return pte_set_pfn(e, scratch)
        return pte_set_pfn(e, mfn)

    # ---------------------------------------------------------------------------------- failsafe
    def failsafe_read(self, off: int, size: int) -> int:
        """failsafe_emulate_mmio_rw: the virtual GGTT as plain memory (any offset, any size)."""
        out = 0
        for i in range(size):
            index, byte = divmod(off + i, GTT_ENTRY_SIZE)
            out |= ((self.virtual.get(index, 0) >> (8 * byte)) & 0xFF) << (8 * i)
        return out

    def failsafe_write(self, off: int, data: int, size: int) -> None:
        """Plain copy into the virtual GGTT: no shadowing, nothing reaches the physical GGTT."""
        for i in range(size):
            index, byte = divmod(off + i, GTT_ENTRY_SIZE)
            cur = self.virtual.get(index, 0) & ~(0xFF << (8 * byte))
            self.virtual[index] = cur | (((data >> (8 * i)) & 0xFF) << (8 * byte))
