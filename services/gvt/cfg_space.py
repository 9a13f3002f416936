"""The vGPU's PCI configuration space (i915/gvt cfg_space.c).

Content is a sanitised copy of the host GPU's configuration space (``intel_vgpu_init_cfg_space`` copies
``gvt->firmware.cfg_space``): the host's vendor/device/revision, no stolen memory, COMMAND cleared, BAR0
(GTTMMADR, 16 MB, 64-bit) unassigned, BAR2 preset to the host aperture address, the ROM BAR and ASLS
cleared, and the host's whole capability chain (SKL GT2: vendor-specific at 0x40, PCI Express at 0x70,
MSI at ``msi_cap`` 0xAC, power management at 0xD0). Writes follow the writable-bit bitmap of the standard
header (``pci_cfg_space_rw_bmp``); above 0x40 they are stored verbatim. Behaviour:

* COMMAND (offset 4) takes 1- or 2-byte writes only (a wider one is refused, -EINVAL); its memory-enable
  bit traps and untraps BAR0 and maps the aperture;
* a sizing write of BAR0 / BAR2 answers ``~(size - 1)``: BAR sizes are powers of two (PCI Local Bus spec
  6.2.5.1), so the aperture must be one; other BARs answer 0; the ROM BAR answers 0 (no ROM);
* a write of PMCSR (PM capability + 4) entering D3hot sets ``d3_entered`` (the next DMLR then keeps the
  PPGTT and ``pv_notified``, as after S3; the first ELSP write clears it);
* 0xE8 SWSCI runs the OpRegion request (opregion.py; the register itself is not stored), 0xFC ASLS places
  the virtual OpRegion at the guest address written.
"""

from __future__ import annotations

from collections.abc import Callable

from ...hardware.pci import (
    CFG_SPACE_SIZE,
    INTEL_GVT_PCI_GMCH_CONTROL,
    INTEL_GVT_PCI_OPREGION,
    INTEL_GVT_PCI_SWSCI,
    PCI_BASE_ADDRESS_0,
    PCI_BASE_ADDRESS_2,
    PCI_BASE_ADDRESS_5,
    PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
    PCI_CAPABILITY_LIST,
    PCI_CAP_ID_EXP,
    PCI_CAP_ID_MSI,
    PCI_CAP_ID_PM,
    PCI_CAP_ID_VNDR,
    PCI_CLASS_DEVICE,
    PCI_COMMAND,
    PCI_COMMAND_MEMORY,
    PCI_D3HOT,
    PCI_DEVICE_ID,
    PCI_INTERRUPT_LINE,
    PCI_INTERRUPT_PIN,
    PCI_PM_CTRL,
    PCI_PM_CTRL_STATE_MASK,
    PCI_REVISION_ID,
    PCI_ROM_ADDRESS,
    PCI_ROM_ADDRESS_MASK,
    PCI_STATUS,
    PCI_STATUS_CAP_LIST,
    PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID,
)
from .effects import Effect, SetTrapArea
from .errors import EmulationError
from .types import MB, PhysicalGpu

#: The host GPU's capabilities other than MSI (SKL GT2 8086:1912 as lspci shows it): (offset, raw bytes).
#: Vendor-specific (len 0x0C), PCI Express v2 root-complex integrated endpoint, PM v2 (D0/D3hot only).
HOST_CAPS: tuple[tuple[int, bytes], ...] = (
    (0x40, bytes([PCI_CAP_ID_VNDR, 0, 0x0C, 0x01]) + bytes(8)),
    (0x70, bytes([PCI_CAP_ID_EXP, 0, 0x92, 0x00]) + bytes(0x38)),
    (0xD0, bytes([PCI_CAP_ID_PM, 0, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00])),
)

BAR0_SIZE = 16 * MB  # gvt/gtt.c, gvt/aperture_gm.c: 2 MB MMIO, 6 MB reserved, 8 MB GGTT

#: gvt/cfg_space.c: writable bits of the standard header (pci_cfg_space_rw_bmp); offsets >= 0x40 are stored verbatim.
_RW_TABLE: tuple[tuple[int, bytes], ...] = (
    (PCI_COMMAND, b"\xff\x07"),
    (PCI_STATUS, b"\x00\xf9"),  # the high byte holds the RW1C bits
    (0x0C, b"\xff"),  # PCI_CACHE_LINE_SIZE
    (PCI_BASE_ADDRESS_0, b"\xff" * 24),  # BAR0..BAR5
    (PCI_ROM_ADDRESS, b"\x01\xf8\xff\xff"),
    (PCI_INTERRUPT_LINE, b"\xff"),
)
_rw = bytearray(0x40)
for _off, _bits in _RW_TABLE:
    _rw[_off:_off + len(_bits)] = _bits
RW_BITMAP = bytes(_rw)


class CfgSpace:
    """One vGPU's configuration space. ``emit`` receives the effects (trap / untrap of BAR0)."""

    def __init__(self, gpu: PhysicalGpu, vm: int, emit: Callable[[Effect], None]) -> None:
        self.gpu = gpu
        self.vm = vm
        self.emit = emit
        self.data = bytearray(CFG_SPACE_SIZE)
        self.bar_size = {0: BAR0_SIZE, 2: gpu.aperture_size}
        self.trapped: tuple[int, int] | None = None  # the BAR0 range vhm traps for us, inclusive
        self.pmcsr_off = 0
        self.d3_entered = False  # vgpu->d3_entered: not touched by init/reset of the space itself
        self.on_swsci: Callable[[int], None] | None = None  # set by the vGPU (opregion.py)
        self.on_asls: Callable[[int], None] | None = None
        self.init()
        self.on_memory_decode: Callable[[bool], None] | None = None  # set by the vGPU (aperture mapping)
        self.on_bar0_trap: Callable[[bool], None] | None = None  # set by the vGPU (the PVMMIO shared page)

    # ------------------------------------------------------------------------------------ init / reset
    def init(self, primary: bool = True) -> None:
        """intel_vgpu_init_cfg_space: the host snapshot, sanitised (gvt/cfg_space.c)."""
        d = self.data
        d[:] = bytes(CFG_SPACE_SIZE)
        self._put(PCI_VENDOR_ID, 2, self.gpu.vendor)
        self._put(PCI_DEVICE_ID, 2, self.gpu.device)
        self._put(PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
        self._put(PCI_REVISION_ID, 1, self.gpu.revision)
        # class 0x03 display: 0x0300 VGA when primary, INTEL_GVT_PCI_CLASS_VGA_OTHER 0x80 otherwise
        self._put(PCI_CLASS_DEVICE, 2, 0x0300 if primary else 0x0380)
        self._put(PCI_BASE_ADDRESS_0, 4, PCI_BASE_ADDRESS_MEM_TYPE_64)
        # BAR2 preset to the host aperture PA; BAR1/BAR3 upper halves and BAR4 cleared (gvt/cfg_space.c)
        self._put(PCI_BASE_ADDRESS_2, 4, (self.gpu.aperture_base & 0xFFFF_FFF0)
                  | PCI_BASE_ADDRESS_MEM_TYPE_64 | PCI_BASE_ADDRESS_MEM_PREFETCH)
        self._put(PCI_SUBSYSTEM_VENDOR_ID, 2, self.gpu.vendor)
        self._put(PCI_SUBSYSTEM_ID, 2, self.gpu.device)
        self._put(PCI_INTERRUPT_PIN, 1, 1)
        self._put(INTEL_GVT_PCI_GMCH_CONTROL, 2, 0x00C0)  # GGMS = 8 MB GGTT; GMS (stolen) field cleared
        # the host's capability chain, in address order; MSI (id 5, control 0 = 32-bit address, one
        # message, disabled) at the host's msi_cap; a host capability MSI would overlap is left out
        msi = self.gpu.msi_cap
        caps = [(off, raw) for off, raw in HOST_CAPS if off + len(raw) <= msi or off >= msi + 0x0C]
        caps.append((msi, bytes([PCI_CAP_ID_MSI, 0]) + bytes(8)))
        caps.sort()
        for i, (off, raw) in enumerate(caps):
            d[off:off + len(raw)] = raw
            d[off + 1] = caps[i + 1][0] if i + 1 < len(caps) else 0
        self._put(PCI_CAPABILITY_LIST, 1, caps[0][0])
        # PM support: find PMCSR by walking the chain, as intel_vgpu_init_cfg_space does
        self.pmcsr_off = 0
        nxt = d[PCI_CAPABILITY_LIST]
        while nxt:
            if d[nxt] == PCI_CAP_ID_PM:
                self.pmcsr_off = nxt + PCI_PM_CTRL
                break
            nxt = d[nxt + 1]
        self.trapped = None

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, capability id) of every capability in the chain, in chain order."""
        out: list[tuple[int, int]] = []
        nxt = self.data[PCI_CAPABILITY_LIST]
        while nxt and len(out) < 48:
            out.append((nxt, self.data[nxt]))
            nxt = self.data[nxt + 1]
        return out

    def reset(self) -> None:
        """intel_vgpu_reset_cfg_space (DMLR): untrap BAR0 if memory decode was on, then re-init."""
        primary = self.data[PCI_CLASS_DEVICE] != 0x80
        self.trap_bar0(False)
        self.init(primary)

    def clean(self) -> None:
        """vGPU destroy: remove the trap range."""
        self.trap_bar0(False)

    # -------------------------------------------------------------------------------------- helpers
    def _put(self, off: int, size: int, value: int) -> None:
        self.data[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def get(self, off: int, size: int) -> int:
        """Little-endian read of the raw space (no checks)."""
        return int.from_bytes(self.data[off:off + size], "little")

    @property
    def memory_enabled(self) -> bool:
        return bool(self.data[PCI_COMMAND] & PCI_COMMAND_MEMORY)

    def bar0_base(self) -> int:
        """The guest-physical base of BAR0 (64-bit when the type bits say so), flag bits masked."""
        if self.data[PCI_BASE_ADDRESS_0] & PCI_BASE_ADDRESS_MEM_TYPE_64:
            raw = self.get(PCI_BASE_ADDRESS_0, 8)
        else:
            raw = self.get(PCI_BASE_ADDRESS_0, 4)
        return raw & ~0xF

    def msi(self) -> tuple[int, int, int]:
        """(control, address, data) of the MSI capability: control @+2, address @+4, data @+8 (u16)."""
        cap = self.gpu.msi_cap
        return self.get(cap + 2, 2), self.get(cap + 4, 4), self.get(cap + 8, 2)

    def trap_bar0(self, trap: bool) -> None:
        """trap_gttmmio: ask the hypervisor to trap (or stop trapping) the whole 16 MB BAR0.

        Unlike i915 (which recomputes the range from the BAR, possibly after a sizing write), the range
        untrapped is exactly the one trapped before, so vhm never sees a range it does not know.
        """
        if trap == (self.trapped is not None):
            return
        if trap:
            start = self.bar0_base()
            self.trapped = (start, start + BAR0_SIZE - 1)
            self.emit(SetTrapArea(self.vm, start, start + BAR0_SIZE - 1, True))
        else:
            assert self.trapped is not None
            start, end = self.trapped
            self.trapped = None
            self.emit(SetTrapArea(self.vm, start, end, False))
        if self.on_bar0_trap is not None:  # what lives at a BAR0 offset follows the BAR (pvmmio.py)
            self.on_bar0_trap(trap)

    # ----------------------------------------------------------------------------------- emulation
    def read(self, offset: int, size: int) -> int:
        """intel_vgpu_emulate_cfg_read: plain copy. Raises EmulationError for size > 4 or past the end."""
        self._check(offset, size)
        return self.get(offset, size)

    def write(self, offset: int, data: int, size: int) -> None:
        """intel_vgpu_emulate_cfg_write. Raises EmulationError for bad size, range or BAR alignment."""
        self._check(offset, size)
        data &= (1 << (8 * size)) - 1
        if offset == PCI_COMMAND:
            # intel_vgpu_emulate_cfg_write: drm_WARN_ON(bytes > 2) => -EINVAL
            if size > 2:
                raise EmulationError(f"{size}-byte write at PCI_COMMAND (at most 2)")
            self._command_write(data, size)
            return
        base = offset & ~3
        if base == PCI_ROM_ADDRESS:
            if offset % 4:
                raise EmulationError(f"unaligned ROM BAR write at {offset:#x}")
            if size == 4 and (data & PCI_ROM_ADDRESS_MASK) == PCI_ROM_ADDRESS_MASK:
                self._put(offset, 4, 0)  # we have no ROM: sizing answers 0
            else:
                self._mem_write(offset, data, size)
        elif PCI_BASE_ADDRESS_0 <= base <= PCI_BASE_ADDRESS_5:
            if offset % 4 or size != 4:
                raise EmulationError(f"BAR write must be an aligned dword (offset {offset:#x}, size {size})")
            self._bar_write(offset, data)
        elif base == INTEL_GVT_PCI_SWSCI:
            if offset % 4:
                raise EmulationError(f"unaligned SWSCI write at {offset:#x}")
            if self.on_swsci is not None:  # intel_vgpu_emulate_opregion_request; SWSCI itself is not stored
                self.on_swsci(data)
        elif base == INTEL_GVT_PCI_OPREGION:
            if offset % 4:
                raise EmulationError(f"unaligned ASLS write at {offset:#x}")
            if self.on_asls is not None:  # intel_vgpu_opregion_base_write_handler
                self.on_asls(data)
            self._mem_write(offset, data, size)
        else:
            self._mem_write(offset, data, size)

    def _check(self, offset: int, size: int) -> None:
        if size < 1 or size > 4:
            raise EmulationError(f"config access of {size} bytes (at most 4)")
        if offset < 0 or offset + size > CFG_SPACE_SIZE:
            raise EmulationError(f"config access [{offset:#x}, +{size}) beyond {CFG_SPACE_SIZE:#x}")

    def _mem_write(self, offset: int, data: int, size: int) -> None:
        """vgpu_pci_cfg_mem_write: masked by the rw bitmap below 0x40, RW1C status byte, verbatim above."""
        src = data.to_bytes(size, "little")
        for i in range(size):
            off = offset + i
            if off >= len(RW_BITMAP):
                self.data[off] = src[i]
                continue
            mask = RW_BITMAP[off]
            old = self.data[off] & mask
            new = src[i] & mask
            if off == PCI_STATUS + 1:
                new = (~new & old) & mask  # write-1-to-clear
            self.data[off] = (self.data[off] & ~mask & 0xFF) | new
        if self.pmcsr_off and offset == self.pmcsr_off:
            if self.get(offset, 2) & PCI_PM_CTRL_STATE_MASK == PCI_D3HOT:
                self.d3_entered = True

    def _command_write(self, data: int, size: int) -> None:
        """emulate_pci_command_write: a MEMORY-enable toggle traps / untraps BAR0 (gvt/cfg_space.c)."""
        old = self.data[PCI_COMMAND]
        changed = old ^ (data & 0xFF)
        self._mem_write(PCI_COMMAND, data, size)
        if changed & PCI_COMMAND_MEMORY:
            self.trap_bar0(not old & PCI_COMMAND_MEMORY)
            if self.on_memory_decode is not None:  # map_aperture / unmap (aperture.py)
                self.on_memory_decode(bool(not old & PCI_COMMAND_MEMORY))

    def _write_bar(self, offset: int, value: int, low: bool) -> None:
        """intel_vgpu_write_pci_bar: a low half keeps its flag bits 3:0."""
        if low:
            value = (value & 0xFFFF_FFF0) | (self.get(offset, 4) & 0xF)
        self._put(offset, 4, value)

    def _bar_write(self, offset: int, value: int) -> None:
        """emulate_pci_bar_write: all ones = sizing (answer ~(size-1)), else move the BAR (re-trap)."""
        low = offset % 8 == 0
        bar = (offset - PCI_BASE_ADDRESS_0) // 8 * 2  # 0 for BAR0/1, 2 for BAR2/3, 4 for BAR4/5
        size = self.bar_size.get(bar)
        if value == 0xFFFF_FFFF:
            if size is None:
                self._write_bar(offset, 0, False)  # unimplemented BAR: size 0
                return
            mask = ~(size - 1) & 0xFFFF_FFFF_FFFF_FFFF
            self._write_bar(offset, (mask if low else mask >> 32) & 0xFFFF_FFFF, low)
            if bar == 0:
                self.trap_bar0(False)  # the guest has not configured a valid GPA yet
            return
        if bar == 0:
            self.trap_bar0(False)
            self._write_bar(offset, value, low)
            self.trap_bar0(self.memory_enabled)
        else:
            self._write_bar(offset, value, low)
            if bar == 2 and self.memory_enabled and self.on_memory_decode is not None:
                self.on_memory_decode(True)  # the aperture window moved: map it again
