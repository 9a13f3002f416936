"""Conformance: the vGPU's PCI configuration space (gvt/cfg_space.c)."""

from __future__ import annotations

from test_gvt_fixtures import BAR0_GPA, create, make_gvt, program_bar0

from gvtsim.hardware import pci
from gvtsim.services.gvt.effects import SetTrapArea
from gvtsim.services.gvt.types import PhysicalGpu
from gvtsim.services.gvt.errors import FailsafeReason

MB = 1 << 20


def traps(effects: list) -> list[SetTrapArea]:
    return [e for e in effects if isinstance(e, SetTrapArea)]


def test_ids_come_from_the_physical_gpu() -> None:
    gvt = make_gvt(gpu=PhysicalGpu(device=0x5912, revision=0x04))
    v = create(gvt, 1)
    r = lambda off, n: gvt.emulate_cfg_read(v, off, n)  # noqa: E731
    assert r(pci.PCI_VENDOR_ID, 2) == 0x8086
    assert r(pci.PCI_DEVICE_ID, 2) == 0x5912
    assert r(pci.PCI_REVISION_ID, 1) == 0x04
    assert r(pci.PCI_CLASS_DEVICE, 2) == 0x0300  # VGA display controller (primary)
    assert r(pci.PCI_COMMAND, 2) == 0  # IO/MEM/MASTER cleared
    assert r(pci.INTEL_GVT_PCI_GMCH_CONTROL, 2) >> 8 == 0  # no stolen memory


def test_header_ids_are_read_only_and_status_is_rw1c() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    gvt.emulate_cfg_write(v, pci.PCI_VENDOR_ID, 0xDEADBEEF, 4)
    assert gvt.emulate_cfg_read(v, pci.PCI_VENDOR_ID, 4) == 0x1912_8086
    v.cfg.data[pci.PCI_STATUS + 1] = 0xF9  # error bits latched by "hardware"
    gvt.emulate_cfg_write(v, pci.PCI_STATUS, 0x0800, 2)  # write 1 to clear bit 11 only
    assert gvt.emulate_cfg_read(v, pci.PCI_STATUS, 2) >> 8 == 0xF9 & ~0x08
    assert not v.failsafe


def test_bar_sizing_answers() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    answers = {}
    for off in (pci.PCI_BASE_ADDRESS_0, pci.PCI_BASE_ADDRESS_1, pci.PCI_BASE_ADDRESS_2, pci.PCI_BASE_ADDRESS_3,
                pci.PCI_BASE_ADDRESS_4, pci.PCI_ROM_ADDRESS):
        gvt.emulate_cfg_write(v, off, 0xFFFF_FFFF, 4)
        answers[off] = gvt.emulate_cfg_read(v, off, 4)
    assert answers[pci.PCI_BASE_ADDRESS_0] == 0xFF00_0004  # ~(16 MB - 1), 64-bit memory BAR
    assert answers[pci.PCI_BASE_ADDRESS_1] == 0xFFFF_FFFF
    # ~(aperture - 1), 64-bit prefetchable (1 GB aperture by default: 0xC000000C)
    assert answers[pci.PCI_BASE_ADDRESS_2] == (~(gvt.gpu.aperture_size - 1) & 0xFFFF_FFF0) | 0xC
    assert answers[pci.PCI_BASE_ADDRESS_3] == 0xFFFF_FFFF
    assert answers[pci.PCI_BASE_ADDRESS_4] == 0  # not emulated
    assert answers[pci.PCI_ROM_ADDRESS] == 0  # no ROM
    # the size decoded the PCI way
    lo, hi = answers[pci.PCI_BASE_ADDRESS_0], answers[pci.PCI_BASE_ADDRESS_1]
    assert (~((hi << 32) | (lo & ~0xF)) & (2**64 - 1)) + 1 == 16 * MB


def test_memory_enable_traps_and_untraps_bar0() -> None:
    gvt = make_gvt()
    v = create(gvt, 7)
    gvt.drain_effects()
    program_bar0(gvt, v, enable=False)
    assert traps(gvt.drain_effects()) == []
    gvt.emulate_cfg_write(v, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY, 2)
    assert traps(gvt.drain_effects()) == [SetTrapArea(7, BAR0_GPA, BAR0_GPA + 16 * MB - 1, True)]
    gvt.emulate_cfg_write(v, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY | pci.PCI_COMMAND_MASTER, 2)
    assert traps(gvt.drain_effects()) == []  # no toggle, no new trap
    gvt.emulate_cfg_write(v, pci.PCI_COMMAND, 0, 2)
    assert traps(gvt.drain_effects()) == [SetTrapArea(7, BAR0_GPA, BAR0_GPA + 16 * MB - 1, False)]


def test_moving_bar0_while_enabled_retraps_and_sizing_untraps() -> None:
    gvt = make_gvt()
    v = create(gvt, 2)
    program_bar0(gvt, v)
    gvt.drain_effects()
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_0, 0xD000_0000, 4)
    assert traps(gvt.drain_effects()) == [SetTrapArea(2, BAR0_GPA, BAR0_GPA + 16 * MB - 1, False),
                                          SetTrapArea(2, 0xD000_0000, 0xD000_0000 + 16 * MB - 1, True)]
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_0, 0xFFFF_FFFF, 4)
    assert traps(gvt.drain_effects()) == [SetTrapArea(2, 0xD000_0000, 0xD000_0000 + 16 * MB - 1, False)]


def test_msi_capability_is_32bit_single_message() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    chain = {cap_id: off for off, cap_id in v.cfg.capabilities()}
    cap = chain[pci.PCI_CAP_ID_MSI]
    assert cap == 0xAC  # SKL msi_cap, in the host's chain
    assert gvt.emulate_cfg_read(v, cap, 1) == pci.PCI_CAP_ID_MSI
    assert gvt.emulate_cfg_read(v, cap + 2, 2) == 0  # disabled, 32-bit, one message
    gvt.emulate_cfg_write(v, cap + 4, 0xFEE0_1000, 4)
    gvt.emulate_cfg_write(v, cap + 8, 0x41, 2)
    gvt.emulate_cfg_write(v, cap + 2, 1, 2)
    assert v.cfg.msi() == (1, 0xFEE0_1000, 0x41)


def test_bad_config_accesses_put_only_that_vgpu_in_failsafe() -> None:
    gvt = make_gvt()
    a, b = create(gvt, 1), create(gvt, 2, "GVTg_V5_8")
    assert gvt.emulate_cfg_read(a, 0x10, 8) == 2**64 - 1  # more than 4 bytes: refused, all ones
    assert a.failsafe and a.failsafe_reason == FailsafeReason.GUEST_ERR
    assert not b.failsafe
    c = create(gvt, 3, "GVTg_V5_8")
    gvt.emulate_cfg_write(c, pci.CFG_SPACE_SIZE - 2, 0, 4)  # past the end
    gvt.emulate_cfg_write(create(gvt, 4, "GVTg_V5_8"), pci.PCI_BASE_ADDRESS_0 + 2, 0, 2)  # unaligned BAR
    assert gvt.counters["cfg_write_errors"] == 2 and not b.failsafe


def test_capabilities_area_is_stored_verbatim() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    gvt.emulate_cfg_write(v, pci.INTEL_GVT_PCI_OPREGION, 0xDFFF_D000, 4)  # AcrnGT's OpRegion GPA
    assert gvt.emulate_cfg_read(v, pci.INTEL_GVT_PCI_OPREGION, 4) == 0xDFFF_D000
