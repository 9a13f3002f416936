"""The core driven like the i915 guest driver drives a vGPU, through ioreqs as vhm dispatches them
(i915_vgpu.c: detect, balloon, fences, GGTT, interrupts)."""

from __future__ import annotations

import itertools

from test_gvt_fixtures import FakeMpt, make_gvt

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.gvt import gtt
from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.effects import InjectMsi, PgpuGgttWrite, SetTrapArea

VM = 6
BAR0 = 0xF000_0000
GTT = 8 << 20


class I915Guest:
    """The guest side: every access is an ioreq, as a vCPU would trap it."""

    def __init__(self, gvt: Gvt) -> None:
        self.gvt = gvt
        self.seq = itertools.count(1)

    def _io(self, **kw: object) -> int:
        req = m.Ioreq(vm=VM, vcpu=0, seq=next(self.seq), **kw)  # type: ignore[arg-type]
        return self.gvt.handle_ioreq(req, now=0.0)

    def cfg_read(self, reg: int, size: int) -> int:
        return self._io(kind=IoreqType.PCI, dir=IoreqDir.READ, addr=0xCFC, size=size, bus=0, dev=2, func=0, reg=reg)

    def cfg_write(self, reg: int, value: int, size: int) -> None:
        self._io(kind=IoreqType.PCI, dir=IoreqDir.WRITE, addr=0xCFC, size=size, value=value, bus=0, dev=2, func=0,
                 reg=reg)

    def readl(self, off: int, size: int = 4) -> int:
        return self._io(kind=IoreqType.MMIO, dir=IoreqDir.READ, addr=BAR0 + off, size=size)

    def writel(self, off: int, value: int, size: int = 4) -> None:
        self._io(kind=IoreqType.MMIO, dir=IoreqDir.WRITE, addr=BAR0 + off, size=size, value=value)


def test_i915_sequence() -> None:
    mpt = FakeMpt({gfn: 0x8000 + gfn for gfn in range(0x100, 0x140)})
    gvt = make_gvt({VM: mpt})
    v = gvt.create_vgpu(VM, "GVTg_V5_4", ept_root=1, ram_mb=64, now=0.0)
    assert not hasattr(v, "code")
    gvt.drain_effects()
    g = I915Guest(gvt)

    # PCI probe: ids, BAR0 sizing and placement, memory decode on => vhm traps the 16 MB BAR0
    assert g.cfg_read(0x00, 4) == 0x1912_8086
    g.cfg_write(0x10, 0xFFFF_FFFF, 4)
    assert g.cfg_read(0x10, 4) == 0xFF00_0004
    g.cfg_write(0x10, BAR0, 4)
    g.cfg_write(0x14, 0, 4)
    g.cfg_write(0x04, 0x0006, 2)
    assert [e for e in gvt.drain_effects() if isinstance(e, SetTrapArea)] == \
        [SetTrapArea(VM, BAR0, BAR0 + (16 << 20) - 1, True)]

    # intel_vgpu_detect: magic (readq), version_major (readw), caps (readl)
    assert g.readl(pv.MAGIC, 8) == pv.VGT_MAGIC
    assert g.readl(pv.VERSION_MAJOR, 2) >= 1
    caps = g.readl(pv.VGT_CAPS)
    assert caps & pv.VgtCaps.FULL_PPGTT and caps & pv.VgtCaps.HWSP_EMULATION and caps & pv.VgtCaps.HUGE_GTT

    # intel_vgt_balloon: four reads, validated like the guest does
    mappable_base, mappable_size, unmappable_base, unmappable_size = (
        g.readl(o) for o in (pv.MAPPABLE_BASE, pv.MAPPABLE_SIZE, pv.NONMAPPABLE_BASE, pv.NONMAPPABLE_SIZE))
    ggtt_mappable_end, ggtt_total = gvt.gpu.aperture_size, gvt.gpu.gm_size
    assert mappable_base + mappable_size <= ggtt_mappable_end
    assert unmappable_base >= ggtt_mappable_end and unmappable_base + unmappable_size <= ggtt_total
    assert g.readl(pv.FENCE_NUM) == 4

    # the guest writes GGTT entries of its own slice (identity GM addresses): writeq, and two writel
    first = mappable_base >> 12
    g.writel(GTT + 8 * first, gtt.pte_encode(0x100 << 12), 8)
    g.writel(GTT + 8 * (first + 1), gtt.pte_encode(0x101 << 12) & 0xFFFF_FFFF)
    g.writel(GTT + 8 * (first + 1) + 4, 0)
    g.writel(GTT + 8 * (unmappable_base >> 12), gtt.pte_encode(0x13F << 12), 8)
    host = [en for e in gvt.drain_effects() if isinstance(e, PgpuGgttWrite) for en in e.entries]
    # the first writel points the host entry at scratch (not present) until the second arrives (gtt.c)
    assert host == [(first, (0x8100 << 12) | 1), (first + 1, gvt.scratch_mfn << 12),
                    (first + 1, (0x8101 << 12) | 1),
                    (unmappable_base >> 12, (0x813F << 12) | 1)]
    assert g.readl(GTT + 8 * first, 8) == gtt.pte_encode(0x100 << 12)

    # interrupts: MSI programmed and enabled, GT0 unmasked and enabled, master on
    cap = g.cfg_read(0x34, 1)  # walk the capability chain to MSI, as pci_find_capability does
    while g.cfg_read(cap, 1) != 0x05:
        cap = g.cfg_read(cap + 1, 1)
    g.cfg_write(cap + 4, 0xFEE0_0000, 4)
    g.cfg_write(cap + 8, 0x0031, 2)
    g.cfg_write(cap + 2, 0x0001, 2)
    gt0 = irq.GROUP_BY_NAME["GT0"].base
    g.writel(gt0 + irq.IMR, ~1 & 0xFFFF_FFFF)
    g.writel(gt0 + irq.IER, 1)
    g.writel(irq.GEN8_MASTER_IRQ, irq.GEN8_MASTER_IRQ_CONTROL)
    gvt.drain_effects()

    gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")  # the GPU completes a batch with MI_USER_INTERRUPT
    assert [e for e in gvt.drain_effects() if isinstance(e, InjectMsi)] == [InjectMsi(VM, 0xFEE0_0000, 0x31)]

    # the i915 interrupt handler: master off, read master, read/ack IIR, master on
    g.writel(irq.GEN8_MASTER_IRQ, 0)
    master = g.readl(irq.GEN8_MASTER_IRQ)
    assert master & 1  # GT0 summary
    iir = g.readl(gt0 + irq.IIR)
    assert iir == 1
    g.writel(gt0 + irq.IIR, iir)
    g.writel(irq.GEN8_MASTER_IRQ, irq.GEN8_MASTER_IRQ_CONTROL)
    assert g.readl(gt0 + irq.IIR) == 0
    assert [e for e in gvt.drain_effects() if isinstance(e, InjectMsi)] == []  # nothing pending: no MSI

    gvt.trigger_event(v, "RCS_AS_CONTEXT_SWITCH")  # masked by the guest's IMR
    assert g.readl(gt0 + irq.IIR) == 0 and not any(isinstance(e, InjectMsi) for e in gvt.drain_effects())

    # display_ready after modeset; the vGPU is healthy
    g.writel(pv.DISPLAY_READY, 1)
    assert not v.failsafe and v.pv_notified  # type: ignore[union-attr]
