"""Shared helpers for the GVT core tests (no tests here): a fake MPT, a device with a scratch page,
and the few guest-side steps every test needs (program BAR0, MMIO through BAR0)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gvtsim.hardware import pci
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.vgpu import Vgpu

SCRATCH_MFN = 0x5A5
BAR0_GPA = 0xE000_0000


@dataclass
class FakeMpt:
    """gfn -> mfn from a dict: the VM's RAM as the hypervisor would report it."""

    frames: dict[int, int] = field(default_factory=dict)

    def is_valid_gfn(self, gfn: int) -> bool:
        return gfn in self.frames

    def gfn_to_mfn(self, gfn: int) -> int | None:
        return self.frames.get(gfn)

    def dma_map_guest_page(self, gfn: int) -> int | None:
        return self.frames.get(gfn)

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        return None

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        return False


def make_gvt(mpts: dict[int, FakeMpt] | None = None, **kw: object) -> Gvt:
    """A device whose VMs get the FakeMpt in ``mpts`` (by vm id) when created with ept_root != 0."""
    mpts = mpts or {}
    return Gvt(mpt_factory=lambda vm, root, ram: mpts.setdefault(vm, FakeMpt()), scratch_mfn=SCRATCH_MFN, **kw)


def create(gvt: Gvt, vm: int, spec: str = "GVTg_V5_4", mpt: bool = True) -> Vgpu:
    v = gvt.create_vgpu(vm, spec, ept_root=1 if mpt else 0, ram_mb=64, now=0.0)
    assert not isinstance(v, Refusal), v
    return v


def program_bar0(gvt: Gvt, v: Vgpu, base: int = BAR0_GPA, enable: bool = True) -> None:
    """The guest's PCI probe: size BAR0, place it, enable memory decode."""
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_0, 0xFFFF_FFFF, 4)
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_0, base & 0xFFFF_FFFF, 4)
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_1, base >> 32, 4)
    if enable:
        gvt.emulate_cfg_write(v, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER, 2)


def rd(gvt: Gvt, v: Vgpu, offset: int, size: int = 4) -> int:
    """MMIO read at BAR0 + offset."""
    return gvt.emulate_mmio_read(v, v.cfg.bar0_base() + offset, size)


def wr(gvt: Gvt, v: Vgpu, offset: int, data: int, size: int = 4) -> None:
    """MMIO write at BAR0 + offset."""
    gvt.emulate_mmio_write(v, v.cfg.bar0_base() + offset, data, size)


def masked(bits: int, enable: bool = True) -> int:
    """_MASKED_BIT_ENABLE / _MASKED_BIT_DISABLE."""
    return (bits << 16) | (bits if enable else 0)
