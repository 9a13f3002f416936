"""The virtual OpRegion and SWSCI (i915/gvt opregion.c, reg.h).

GVT builds an 8 KB OpRegion per vGPU (``intel_vgpu_init_opregion``): the signature "IntelGraphicsMem",
size 8 (KB), version 2.0, the VBT mailbox only, lid state forced to "open". The guest firmware writes the
OpRegion's guest-physical address to ASLS (config 0xFC); ``intel_vgpu_opregion_base_write_handler`` then
makes those two guest pages show GVT's OpRegion (Xen/ACRN map GVT's pages there; gvtsim copies them in with
write_gpa, which is what the guest sees either way). A write of SWSCI (config 0xE8) with SCI select and a
0->1 trigger is a software SCI (``intel_vgpu_emulate_opregion_request``): SCIC/PARM at OpRegion +0x200 /
+0x204 are read; only the capability queries (GetBIOSData / GetBIOSCallbacks, sub-function supported or
requested calls) succeed, answering SCIC = PARM = 0; any other function gets its exit status cleared
("failure, unsupported"). A request for SMI service (no SCI select) is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from .vgpu import Vgpu

INTEL_GVT_OPREGION_PAGES = 2
INTEL_GVT_OPREGION_SIZE = INTEL_GVT_OPREGION_PAGES * PAGE_SIZE
OPREGION_SIGNATURE = b"IntelGraphicsMem"
MBOX_VBT = 1 << 3
INTEL_GVT_OPREGION_CLID = 0x1AC
INTEL_GVT_OPREGION_SCIC = 0x200
INTEL_GVT_OPREGION_PARM = 0x204
OPREGION_SCIC_FUNC_MASK = 0x1E
OPREGION_SCIC_FUNC_SHIFT = 1
OPREGION_SCIC_SUBFUNC_MASK = 0xFF00
OPREGION_SCIC_SUBFUNC_SHIFT = 8
OPREGION_SCIC_EXIT_MASK = 0xE0
SCIC_F_GETBIOSDATA = 4
SCIC_F_GETBIOSCALLBACKS = 6
SCIC_SF_SUPPORTEDCALLS = 0
SCIC_SF_REQUESTEDCALLBACKS = 1
SWSCI_SCI_SELECT = 1 << 15
SWSCI_SCI_TRIGGER = 1


def _image() -> bytes:
    """intel_vgpu_init_opregion: the header fields gvt fills (struct opregion_header) and CLID."""
    buf = bytearray(INTEL_GVT_OPREGION_SIZE)
    buf[0:16] = OPREGION_SIGNATURE
    buf[0x10:0x14] = (0x8).to_bytes(4, "little")  # size in KB
    buf[0x14:0x18] = (0x0200_0000).to_bytes(4, "little")  # opregion_ver 2.0
    buf[0x58:0x5C] = MBOX_VBT.to_bytes(4, "little")  # mboxes
    buf[INTEL_GVT_OPREGION_CLID] = 0x3  # lid "open"
    return bytes(buf)


def querying_capabilities(scic: int) -> bool:
    """The only SCI functions GVT answers: GetBIOSData (supported / requested calls), GetBIOSCallbacks
    (supported calls)."""
    func = (scic & OPREGION_SCIC_FUNC_MASK) >> OPREGION_SCIC_FUNC_SHIFT
    sub = (scic & OPREGION_SCIC_SUBFUNC_MASK) >> OPREGION_SCIC_SUBFUNC_SHIFT
    return (func, sub) in ((SCIC_F_GETBIOSDATA, SCIC_SF_SUPPORTEDCALLS),
                           (SCIC_F_GETBIOSDATA, SCIC_SF_REQUESTEDCALLBACKS),
                           (SCIC_F_GETBIOSCALLBACKS, SCIC_SF_SUPPORTEDCALLS))


class Opregion:
    """One vGPU's OpRegion: where the guest put it and the SWSCI state."""

    def __init__(self, vgpu: "Vgpu") -> None:
        self.vgpu = vgpu
        self.gpa = 0  # 0: not placed yet (ASLS cleared at init)
        self.requests = 0

    def reset(self) -> None:
        """A DMLR clears ASLS with the rest of the config space: the guest places the OpRegion again."""
        self.gpa = 0

    def base_write(self, gpa: int) -> None:
        """ASLS written: show GVT's OpRegion in the two guest pages at ``gpa`` (page-aligned)."""
        gpa &= ~(PAGE_SIZE - 1) & 0xFFFF_FFFF
        mpt = self.vgpu.mpt
        if not all(mpt.is_valid_gfn((gpa >> PAGE_SHIFT) + i) for i in range(INTEL_GVT_OPREGION_PAGES)):
            self.vgpu.count("opregion_bad_gpa")
            self.gpa = 0
            return
        if not mpt.write_gpa(gpa, _image()):
            self.vgpu.count("opregion_bad_gpa")
            self.gpa = 0
            return
        self.gpa = gpa
        self.vgpu.count("opregion_mapped")

    def swsci(self, value: int, stored_swsci: int) -> None:
        """intel_vgpu_emulate_opregion_request for a SWSCI write of ``value`` (``stored_swsci``: SWSCI in
        the config space, whose trigger bit tells a 0->1 transition)."""
        if not value & SWSCI_SCI_SELECT:
            self.vgpu.count("swsci_smi_ignored")  # "requesting SMI service"
            return
        if stored_swsci & SWSCI_SCI_TRIGGER or not value & SWSCI_SCI_TRIGGER:
            return  # not a 0 -> 1 transition
        if not self.gpa:
            self.vgpu.count("swsci_without_opregion")
            return
        mpt = self.vgpu.mpt
        raw = mpt.read_gpa(self.gpa + INTEL_GVT_OPREGION_SCIC, 8)
        if raw is None:
            self.vgpu.count("swsci_read_failed")
            return
        scic, parm = int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")
        self.requests += 1
        if querying_capabilities(scic):
            scic = parm = 0
            self.vgpu.count("swsci_capability_queries")
        else:
            scic &= ~OPREGION_SCIC_EXIT_MASK  # exit status 0: failure, unsupported
            self.vgpu.count("swsci_unsupported")
        mpt.write_gpa(self.gpa + INTEL_GVT_OPREGION_SCIC, scic.to_bytes(4, "little") + parm.to_bytes(4, "little"))
