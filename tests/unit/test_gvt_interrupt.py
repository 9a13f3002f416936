"""Conformance: virtual interrupts, master IRQ, IIR semantics and MSI gating (gvt/interrupt.c, gvt/hypercall.h,
ACRN gvt/acrngt.c)."""

from __future__ import annotations

import pytest
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt.effects import InjectMsi

MASTER = irq.GEN8_MASTER_IRQ
GT0 = irq.GROUP_BY_NAME["GT0"].base
MSI_ADDR, MSI_DATA = 0xFEE0_0000, 0x4A


def test_register_layout() -> None:
    assert MASTER == 0x44200 and irq.GEN8_MASTER_IRQ_CONTROL == 1 << 31
    assert [irq.GROUP_BY_NAME[f"GT{n}"].base for n in range(4)] == [0x44300, 0x44310, 0x44320, 0x44330]
    assert (irq.ISR, irq.IMR, irq.IIR, irq.IER) == (0, 4, 8, 0xC)
    assert irq.EVENTS["RCS_MI_USER_INTERRUPT"] == ("GT0", 0)
    assert irq.EVENTS["RCS_AS_CONTEXT_SWITCH"] == ("GT0", 8)
    assert irq.EVENTS["BCS_MI_USER_INTERRUPT"] == ("GT0", 16)
    assert irq.EVENTS["VCS_MI_USER_INTERRUPT"] == ("GT1", 0)
    assert irq.EVENTS["VECS_AS_CONTEXT_SWITCH"] == ("GT3", 8)


def setup(msi: bool = True, master: bool = True):  # type: ignore[no-untyped-def]
    gvt = make_gvt()
    v = create(gvt, 5)
    program_bar0(gvt, v)
    cap = v.cfg.gpu.msi_cap
    gvt.emulate_cfg_write(v, cap + 4, MSI_ADDR, 4)
    gvt.emulate_cfg_write(v, cap + 8, MSI_DATA, 2)
    if msi:
        gvt.emulate_cfg_write(v, cap + 2, 1, 2)
    wr(gvt, v, GT0 + irq.IER, 0xFFFF_FFFF)
    wr(gvt, v, GT0 + irq.IMR, 0)
    if master:
        wr(gvt, v, MASTER, irq.GEN8_MASTER_IRQ_CONTROL)
    gvt.drain_effects()
    return gvt, v


def msis(gvt) -> list:  # type: ignore[no-untyped-def]
    return [e for e in gvt.drain_effects() if isinstance(e, InjectMsi)]


def test_event_sets_iir_summary_and_raises_msi() -> None:
    gvt, v = setup()
    assert gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    assert rd(gvt, v, GT0 + irq.IIR) == 1 << 0
    assert rd(gvt, v, MASTER) == irq.GEN8_MASTER_IRQ_CONTROL | 1 << 0  # GT0 low 16 -> master bit 0
    assert msis(gvt) == [InjectMsi(5, MSI_ADDR, MSI_DATA)]
    gvt.trigger_event(v, "BCS_MI_USER_INTERRUPT")
    assert rd(gvt, v, MASTER) & 0x3 == 0x3  # GT0 high 16 -> master bit 1


def test_masked_event_does_not_set_iir() -> None:
    gvt, v = setup()
    wr(gvt, v, GT0 + irq.IMR, 1 << 8)
    gvt.drain_effects()
    assert not gvt.trigger_event(v, "RCS_AS_CONTEXT_SWITCH")
    assert rd(gvt, v, GT0 + irq.IIR) == 0 and msis(gvt) == []


def test_iir_is_write_one_to_clear_and_clears_the_summary() -> None:
    gvt, v = setup()
    gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    gvt.trigger_event(v, "RCS_PIPE_CONTROL")
    wr(gvt, v, GT0 + irq.IIR, 1 << 0)
    assert rd(gvt, v, GT0 + irq.IIR) == 1 << 4
    assert rd(gvt, v, MASTER) & 1
    wr(gvt, v, GT0 + irq.IIR, 0xFFFF_FFFF)
    assert rd(gvt, v, GT0 + irq.IIR) == 0 and rd(gvt, v, MASTER) == irq.GEN8_MASTER_IRQ_CONTROL


def test_no_msi_when_msi_disabled_in_config_space() -> None:
    gvt, v = setup(msi=False)
    assert gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    assert rd(gvt, v, GT0 + irq.IIR) == 1  # the event is still latched
    assert msis(gvt) == [] and gvt.counters["irq_msi_suppressed_disabled"] == 1


def test_no_msi_while_master_is_off_then_one_when_enabled() -> None:
    gvt, v = setup(master=False)
    gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    assert msis(gvt) == []
    wr(gvt, v, MASTER, irq.GEN8_MASTER_IRQ_CONTROL)  # the i915 handler re-enables the master last
    assert msis(gvt) == [InjectMsi(5, MSI_ADDR, MSI_DATA)]


def test_only_bit31_of_master_is_guest_writable() -> None:
    gvt, v = setup(master=False)
    wr(gvt, v, MASTER, 0x7FFF_FFFF)
    assert rd(gvt, v, MASTER) == 0


def test_ier_gates_the_summary() -> None:
    gvt, v = setup()
    wr(gvt, v, GT0 + irq.IER, 0)
    gvt.drain_effects()
    gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    assert rd(gvt, v, GT0 + irq.IIR) == 1 and rd(gvt, v, MASTER) == irq.GEN8_MASTER_IRQ_CONTROL
    assert msis(gvt) == []
    wr(gvt, v, GT0 + irq.IER, 1)  # enabling it raises the pending interrupt
    assert msis(gvt) == [InjectMsi(5, MSI_ADDR, MSI_DATA)]


def test_multi_message_msi_format_is_refused() -> None:
    gvt, v = setup()
    gvt.emulate_cfg_write(v, v.cfg.gpu.msi_cap + 2, 0x11, 2)  # MME bits set
    gvt.trigger_event(v, "RCS_MI_USER_INTERRUPT")
    assert msis(gvt) == [] and gvt.counters["irq_msi_bad_format"] == 1


def test_unknown_event_is_counted_not_raised() -> None:
    gvt, v = setup()
    assert gvt.trigger_event(v, "NO_SUCH_EVENT") is False
    assert gvt.counters["irq_unknown_event"] == 1


@pytest.mark.parametrize("event", sorted(irq.EVENTS))
def test_every_event_reaches_its_master_bit(event: str) -> None:
    gvt, v = setup()
    group = irq.GROUP_BY_NAME[irq.EVENTS[event][0]]
    wr(gvt, v, group.base + irq.IER, 0xFFFF_FFFF)
    wr(gvt, v, group.base + irq.IMR, 0)
    gvt.drain_effects()
    gvt.trigger_event(v, event)
    bit = irq.EVENTS[event][1]
    master_bit = next(mb for mask, mb in group.upstream if mask & (1 << bit))
    assert rd(gvt, v, MASTER) & (1 << master_bit)
    assert len(msis(gvt)) == 1
