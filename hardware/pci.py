"""PCI configuration space: the standard header, capability ids and the CONF1 ports (Linux
include/uapi/linux/pci_regs.h), and the IGD's own config registers (i915/gvt cfg_space.c, i915_drv.h).

CONF1 (x86): the address port 0xCF8 latches bus/device/function/register with bit 31 set to enable config
cycles; the data ports 0xCFC..0xCFF then read or write that dword.
"""

from __future__ import annotations

# CONF1 access ports (ACRN drivers/vhm/vhm_ioreq.c handles them in the VHM kernel)
PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
CONF1_ENABLE = 1 << 31  # bit 31 of the latched address: config cycles enabled

CFG_SPACE_SIZE = 4096  # PCI_CFG_SPACE_EXP_SIZE (gvt device info cfg_space_size)

PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CLASS_DEVICE = 0x0A
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_BASE_ADDRESS_1 = 0x14
PCI_BASE_ADDRESS_2 = 0x18
PCI_BASE_ADDRESS_3 = 0x1C
PCI_BASE_ADDRESS_4 = 0x20
PCI_BASE_ADDRESS_5 = 0x24
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D
INTEL_GVT_PCI_GMCH_CONTROL = 0x50
INTEL_GVT_PCI_SWSCI = 0xE8
INTEL_GVT_PCI_OPREGION = 0xFC

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_STATUS_CAP_LIST = 0x10
PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8
PCI_ROM_ADDRESS_MASK = 0xFFFF_F800
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_PM = 0x01
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_EXP = 0x10
PCI_PM_CTRL = 4  # PMCSR, from the PM capability
PCI_PM_CTRL_STATE_MASK = 0x3
PCI_D3HOT = 3
MSI_CAP_EN = 0x1  # PCI_MSI_FLAGS_ENABLE
