"""Guest boot: PCI enumeration through 0xCF8/0xCFC (CONF1), BAR sizing and programming, MSI.

The order is the firmware/kernel one: find the device by vendor/class, size each BAR by writing all ones
and reading back ~(size-1) (PCI spec; GVT cfg_space.c answers it), program the BARs, turn on memory decode
and bus mastering in COMMAND (GVT traps BAR0 from then on), then program and enable the MSI capability
(32-bit, single message: the only format GVT supports, gvt/cfg_space.c and 9).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...hardware.pci import (
    CONF1_ENABLE,
    PCI_CAP_ID_MSI,
    PCI_CAPABILITY_LIST,
    PCI_COMMAND,
    PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
    PCI_STATUS_CAP_LIST,
    PCI_VENDOR_ID,
)
from ...hardware.pci import MSI_CAP_EN as MSI_FLAGS_ENABLE
from ...hardware.pci import PCI_BASE_ADDRESS_0 as PCI_BAR0
from ...hardware.pci import PCI_BASE_ADDRESS_2 as PCI_BAR2
from ...hardware.pci import PCI_CONFIG_ADDRESS as CONF_ADDR
from ...hardware.pci import PCI_CONFIG_DATA as CONF_DATA
from ...hardware.pci import PCI_REVISION_ID as PCI_CLASS_REVISION  # the dword at 0x08: revision, then class
from .cpu import GuestMachine
from .runtime import Gen


#: Where this guest's firmware places the GPU's BARs (32-bit MMIO hole below 4 GiB).
BAR0_GPA = 0xF000_0000  # 16 MB GTTMMADR: MMIO at +0, GGTT at +8 MB
BAR2_GPA = 0x8000_0000  # aperture (GMADR), up to 1 GiB below BAR0
#: MSI address: the LAPIC window, destination APIC id in bits 19:12 (gvt/hypercall.h, ACRN gvt/acrngt.c).
MSI_ADDR_BASE = 0xFEE0_0000


@dataclass
class PciDevice:
    """What enumeration found and programmed."""

    bus: int
    dev: int
    func: int
    vendor: int
    device: int
    revision: int
    class_code: int
    bar0: int = 0
    bar0_size: int = 0
    bar2: int = 0
    bar2_size: int = 0
    msi_cap: int = 0
    msi_vector: int = 0


def conf_addr(bus: int, dev: int, func: int, reg: int) -> int:
    """The CONF1 address latched in 0xCF8."""
    return CONF1_ENABLE | bus << 16 | dev << 11 | func << 8 | (reg & 0xFC)


class PciConfig:
    """Config-space accessors over port I/O, as a guest kernel's pci_conf1_read/write."""

    def __init__(self, machine: GuestMachine, vcpu: int = 0) -> None:
        self.machine = machine
        self.vcpu = vcpu

    def read(self, bus: int, dev: int, func: int, reg: int, size: int = 4) -> Gen[int]:
        yield from self.machine.outl(CONF_ADDR, conf_addr(bus, dev, func, reg), 4, self.vcpu)
        return (yield from self.machine.inl(CONF_DATA + (reg & 3), size, self.vcpu))

    def write(self, bus: int, dev: int, func: int, reg: int, value: int, size: int = 4) -> Gen[None]:
        yield from self.machine.outl(CONF_ADDR, conf_addr(bus, dev, func, reg), 4, self.vcpu)
        yield from self.machine.outl(CONF_DATA + (reg & 3), value, size, self.vcpu)


def size_bar(cfg: PciConfig, bdf: tuple[int, int, int], reg: int) -> Gen[int]:
    """Size a 64-bit memory BAR: write all ones to both halves, read back, restore. Returns the size."""
    lo0 = yield from cfg.read(*bdf, reg)
    hi0 = yield from cfg.read(*bdf, reg + 4)
    yield from cfg.write(*bdf, reg, 0xFFFF_FFFF)
    yield from cfg.write(*bdf, reg + 4, 0xFFFF_FFFF)
    lo = yield from cfg.read(*bdf, reg)
    hi = yield from cfg.read(*bdf, reg + 4)
    yield from cfg.write(*bdf, reg, lo0)
    yield from cfg.write(*bdf, reg + 4, hi0)
    mask = (hi << 32 | (lo & ~0xF)) & (2**64 - 1)
    return ((~mask) + 1) & (2**64 - 1) if mask else 0


def find_display(cfg: PciConfig, bus: int = 0) -> Gen[PciDevice | None]:
    """Scan bus 0 for an Intel display controller (class 0x03), the way i915's PCI probe would match it."""
    for dev in range(32):
        vid = yield from cfg.read(bus, dev, 0, PCI_VENDOR_ID)
        if vid & 0xFFFF == 0xFFFF:  # nothing there: the fallback answers all ones
            continue
        cls_rev = yield from cfg.read(bus, dev, 0, PCI_CLASS_REVISION)
        if vid & 0xFFFF == 0x8086 and cls_rev >> 24 == 0x03:
            return PciDevice(bus, dev, 0, vid & 0xFFFF, vid >> 16, cls_rev & 0xFF, cls_rev >> 8)
    return None


def probe_gpu(machine: GuestMachine, msi_vector: int = 0x40, dest_apic: int = 0) -> Gen[PciDevice]:
    """Enumerate, size and program the vGPU's BARs, enable decode, and program MSI. Raises RuntimeError."""
    cfg = PciConfig(machine)
    gpu = yield from find_display(cfg)
    if gpu is None:
        raise RuntimeError("no Intel display device on bus 0")
    bdf = (gpu.bus, gpu.dev, gpu.func)
    gpu.bar0_size = yield from size_bar(cfg, bdf, PCI_BAR0)
    gpu.bar2_size = yield from size_bar(cfg, bdf, PCI_BAR2)
    if gpu.bar0_size != 16 << 20:
        raise RuntimeError(f"unexpected BAR0 size {gpu.bar0_size:#x}")
    yield from cfg.write(*bdf, PCI_BAR0, BAR0_GPA)
    yield from cfg.write(*bdf, PCI_BAR0 + 4, 0)
    yield from cfg.write(*bdf, PCI_BAR2, BAR2_GPA)
    yield from cfg.write(*bdf, PCI_BAR2 + 4, 0)
    gpu.bar0, gpu.bar2 = BAR0_GPA, BAR2_GPA
    cmd = yield from cfg.read(*bdf, PCI_COMMAND, 2)
    yield from cfg.write(*bdf, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, 2)
    # walk the capability list for MSI
    status = yield from cfg.read(*bdf, PCI_COMMAND + 2, 2)
    if status & PCI_STATUS_CAP_LIST:
        pos = (yield from cfg.read(*bdf, PCI_CAPABILITY_LIST, 1)) & 0xFC
        for _ in range(48):
            if not pos:
                break
            header = yield from cfg.read(*bdf, pos, 2)
            if header & 0xFF == PCI_CAP_ID_MSI:
                gpu.msi_cap = pos
                break
            pos = (header >> 8) & 0xFC
    if not gpu.msi_cap:
        raise RuntimeError("vGPU has no MSI capability")
    yield from cfg.write(*bdf, gpu.msi_cap + 4, MSI_ADDR_BASE | (dest_apic << 12))
    yield from cfg.write(*bdf, gpu.msi_cap + 8, msi_vector, 2)
    ctrl = yield from cfg.read(*bdf, gpu.msi_cap + 2, 2)
    yield from cfg.write(*bdf, gpu.msi_cap + 2, (ctrl & ~0x70) | MSI_FLAGS_ENABLE, 2)  # one message, enabled
    gpu.msi_vector = msi_vector
    return gpu
