"""Handlers of the real table's rows a guest i915 drives while it brings the GT and the display up, each
against the Linux handler it follows (drivers/gpu/drm/i915/gvt/handlers.c), and the count of handler rows
that have behaviour in gvtsim."""

from __future__ import annotations

import pytest
from test_gvt_fixtures import create, make_gvt, masked, program_bar0, rd, wr

from gvtsim.services.gvt import display as dsp
from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt import mmio_info
from gvtsim.services.gvt import pm
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.effects import PgpuMmioWrite
from gvtsim.services.gvt.errors import FailsafeReason
from gvtsim.services.gvt.vgpu import Vgpu


@pytest.fixture
def dev() -> tuple[Gvt, Vgpu]:
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    rd(gvt, v, 0x78000, 8)  # PVINFO read: a GVT-aware guest
    return gvt, v


def behaviour_rows(gvt: Gvt) -> tuple[int, int]:
    """(rows of the real table with a handler, those whose read or write handler gvtsim implements)."""
    rows = [m for m in mmio_info.MMIO_INFO if m.read or m.write]
    done = 0
    for m in rows:
        r = gvt.table.info.get(m.offset)
        done += r is not None and bool((m.read and r.read) or (m.write and r.write))
    return len(rows), done


def test_handler_rows_with_behaviour() -> None:
    """192 rows of the SKL/KBL table have a handler; 73 had behaviour here before this change, 119 now. The
    rest: mmio_read_from_hw (26: gvt cannot read pgpu's registers synchronously), the panel fitter (18), and
    display rows the display emulation does not model (reg50080, FDI training, dpy_reg reads, sprites)."""
    total, done = behaviour_rows(make_gvt())
    assert total == 192 and done >= 119


def test_skl_power_well_request_bits_and_their_state(dev: tuple[Gvt, Vgpu]) -> None:
    """skl_power_well_ctl_write: v &= request bits 31, 29, 9, 7, 5, 3, 1; v |= v >> 1."""
    gvt, v = dev
    wr(gvt, v, pm.HSW_PWR_WELL_CTL2, 1 << 29 | 1 << 1 | 1 << 12 | 1 << 30)  # PW1, misc IO; 12/30 not requests
    assert rd(gvt, v, pm.HSW_PWR_WELL_CTL2) == (1 << 29 | 1 << 28 | 1 << 1 | 1 << 0)
    wr(gvt, v, pm.HSW_PWR_WELL_CTL2, 1 << 31)
    assert rd(gvt, v, pm.HSW_PWR_WELL_CTL2) == 1 << 31 | 1 << 30


def test_dbuf_and_lcpll_states_follow_their_requests(dev: tuple[Gvt, Vgpu]) -> None:
    """gen9_dbuf_ctl_mmio_write, skl_lcpll_write (MBZ bits dropped), lcpll_ctl_mmio_write."""
    gvt, v = dev
    wr(gvt, v, pm.DBUF_CTL, pm.DBUF_POWER_REQUEST)
    assert rd(gvt, v, pm.DBUF_CTL) == pm.DBUF_POWER_REQUEST | pm.DBUF_POWER_STATE
    wr(gvt, v, pm.DBUF_CTL, 0)
    assert rd(gvt, v, pm.DBUF_CTL) == 0
    wr(gvt, v, pm.LCPLL2_CTL, 1 << 31 | 0x1234)
    assert rd(gvt, v, pm.LCPLL2_CTL) == 1 << 31 | 1 << 30
    wr(gvt, v, pm.LCPLL2_CTL, 1 << 30)
    assert rd(gvt, v, pm.LCPLL2_CTL) == 0
    wr(gvt, v, pm.LCPLL_CTL, pm.LCPLL_CD_SOURCE_FCLK)
    assert rd(gvt, v, pm.LCPLL_CTL) == pm.LCPLL_CD_SOURCE_FCLK | pm.LCPLL_CD_SOURCE_FCLK_DONE | pm.LCPLL_PLL_LOCK
    wr(gvt, v, pm.LCPLL_CTL, pm.LCPLL_PLL_DISABLE)
    assert rd(gvt, v, pm.LCPLL_CTL) == pm.LCPLL_PLL_DISABLE


def test_pcode_mailbox_answers_as_skl_pcode_and_completes_at_once(dev: tuple[Gvt, Vgpu]) -> None:
    """mailbox_write: READ_MEM_LATENCY 0x1e1a1100 then 0x61514b3d; CDCLK_CONTROL ready; RC6VIDS bit 0; READY
    and the error byte cleared."""
    gvt, v = dev
    wr(gvt, v, pm.GEN6_PCODE_DATA, 0)
    wr(gvt, v, pm.GEN6_PCODE_MAILBOX, pm.GEN6_PCODE_READY | pm.GEN9_PCODE_READ_MEM_LATENCY)
    assert rd(gvt, v, pm.GEN6_PCODE_MAILBOX) == 0 and rd(gvt, v, pm.GEN6_PCODE_DATA) == 0x1E1A1100
    wr(gvt, v, pm.GEN6_PCODE_DATA, 1)  # the second set
    wr(gvt, v, pm.GEN6_PCODE_MAILBOX, pm.GEN6_PCODE_READY | pm.GEN9_PCODE_READ_MEM_LATENCY)
    assert rd(gvt, v, pm.GEN6_PCODE_DATA) == 0x61514B3D
    wr(gvt, v, pm.GEN6_PCODE_MAILBOX, pm.GEN6_PCODE_READY | pm.SKL_PCODE_CDCLK_CONTROL)
    assert rd(gvt, v, pm.GEN6_PCODE_DATA) == pm.SKL_CDCLK_READY_FOR_CHANGE
    wr(gvt, v, pm.GEN6_PCODE_DATA, 0x10)
    wr(gvt, v, pm.GEN6_PCODE_MAILBOX, pm.GEN6_PCODE_READY | pm.GEN6_PCODE_READ_RC6VIDS | 0x100)
    assert rd(gvt, v, pm.GEN6_PCODE_DATA) == 0x11 and rd(gvt, v, pm.GEN6_PCODE_MAILBOX) == 0x100
    assert gvt.counters["pcode_mailbox_commands"] == 4


def test_guc_status_keeps_mia_in_reset_for_one_read(dev: tuple[Gvt, Vgpu]) -> None:
    """gdrst_mmio_write with the GuC domain sets GS_MIA_IN_RESET; guc_status_read returns it, then clears it."""
    gvt, v = dev
    wr(gvt, v, eng.GDRST, eng.GDRST_GUC)
    assert rd(gvt, v, eng.GUC_STATUS) & eng.GS_MIA_IN_RESET
    assert not rd(gvt, v, eng.GUC_STATUS) & eng.GS_MIA_IN_RESET


def test_small_platform_handlers(dev: tuple[Gvt, Vgpu]) -> None:
    """fpga_dbg_mmio_write, mbctl_write, south_chicken2_mmio_write, pch_pp_control_mmio_write,
    transconf_mmio_write, fdi_rx_iir_mmio_write, edp_psr_imr_iir_write."""
    gvt, v = dev
    wr(gvt, v, pm.FPGA_DBG, pm.FPGA_DBG_RM_NOCLAIM | 0x5)
    assert rd(gvt, v, pm.FPGA_DBG) == 0x5
    wr(gvt, v, pm.GEN6_MBCTL, 0xFF)
    assert rd(gvt, v, pm.GEN6_MBCTL) == 0xFF & ~pm.GEN6_MBCTL_ENABLE_BOOT_FETCH
    wr(gvt, v, pm.SOUTH_CHICKEN2, pm.FDI_MPHY_IOSFSB_RESET_CTL)
    assert rd(gvt, v, pm.SOUTH_CHICKEN2) == pm.FDI_MPHY_IOSFSB_RESET_CTL | pm.FDI_MPHY_IOSFSB_RESET_STATUS
    wr(gvt, v, pm.PCH_PP_STATUS, pm.PP_SEQUENCE_POWER_DOWN | pm.PP_CYCLE_DELAY_ACTIVE)
    wr(gvt, v, pm.PCH_PP_CONTROL, pm.PANEL_POWER_ON)
    assert rd(gvt, v, pm.PCH_PP_STATUS) == pm.PP_ON | pm.PP_SEQUENCE_STATE_ON_IDLE
    wr(gvt, v, pm.PCH_PP_CONTROL, 0)
    assert rd(gvt, v, pm.PCH_PP_STATUS) == pm.PP_SEQUENCE_STATE_ON_IDLE
    wr(gvt, v, pm.PCH_TRANSCONF[1], pm.TRANS_ENABLE)
    assert rd(gvt, v, pm.PCH_TRANSCONF[1]) == pm.TRANS_ENABLE | pm.TRANS_STATE_ENABLE
    v.mmio.write32(pm.FDI_RX_IIR[0], 0b1011)
    wr(gvt, v, pm.FDI_RX_IIR[0], 0b0011)
    assert rd(gvt, v, pm.FDI_RX_IIR[0]) == 0b1000
    wr(gvt, v, pm.EDP_PSR_IIR, 0xFFFF)
    assert rd(gvt, v, pm.EDP_PSR_IIR) == 0


def test_gamw_ips_all_or_none(dev: tuple[Gvt, Vgpu]) -> None:
    """gamw_echo_dev_rw_ia_write: IPS 0xF or 0, anything else -EINVAL (the write is refused, not failsafe)."""
    gvt, v = dev
    wr(gvt, v, pm.GEN8_GAMW_ECO_DEV_RW_IA, 0xF)
    assert rd(gvt, v, pm.GEN8_GAMW_ECO_DEV_RW_IA) == 0xF
    wr(gvt, v, pm.GEN8_GAMW_ECO_DEV_RW_IA, 0x3)
    assert rd(gvt, v, pm.GEN8_GAMW_ECO_DEV_RW_IA) == 0xF and not v.failsafe
    assert gvt.counters["gamw_ips_refused"] == 1 and gvt.counters["mmio_write_errors"] == 1


def test_csfe_chicken1_preemption_bits_mean_an_unsupported_guest(dev: tuple[Gvt, Vgpu]) -> None:
    """csfe_chicken1_mmio_write: the masked enables of 0x18 are dropped from the stored value; asking for
    0x10 or 0x8 => failsafe UNSUPPORTED_GUEST."""
    gvt, v = dev
    off = eng.BY_NAME["rcs"].base + pm.CSFE_CHICKEN1
    wr(gvt, v, off, masked(0x1))
    assert rd(gvt, v, off) & 0xFFFF == 0x1 and not v.failsafe
    wr(gvt, v, off, masked(0x10))
    assert rd(gvt, v, off) & 0x18 == 0
    assert v.failsafe and v.failsafe_reason == FailsafeReason.UNSUPPORTED_GUEST


def test_trtt_physical_addressing_is_refused_and_the_rest_reaches_the_hardware(dev: tuple[Gvt, Vgpu]) -> None:
    """gen9_trtte_write: enable without virtual addressing -EINVAL; else stored and written to the hardware.
    gen9_trtt_chicken_write: bit 0 goes to the hardware."""
    gvt, v = dev
    gvt.drain_effects()
    wr(gvt, v, pm.TRTTE, 0x1)
    assert rd(gvt, v, pm.TRTTE) == 0 and gvt.counters["trtt_physical_refused"] == 1
    wr(gvt, v, pm.TRTTE, 0x3)
    wr(gvt, v, pm.TRTT_CHICKEN, 0x1)
    assert [e for e in gvt.drain_effects() if isinstance(e, PgpuMmioWrite)] == [
        PgpuMmioWrite(pm.TRTTE, 4, 0x3), PgpuMmioWrite(pm.TRTT_CHICKEN, 4, 0x1)]


def test_ring_imr_checks_pending_interrupts(dev: tuple[Gvt, Vgpu]) -> None:
    """intel_vgpu_reg_imr_handler on RING_IMR: stored, then check_pending (no MSI with nothing pending)."""
    gvt, v = dev
    wr(gvt, v, eng.BY_NAME["bcs"].base + 0xA8, 0xFFFF_FFFE)
    assert rd(gvt, v, eng.BY_NAME["bcs"].base + 0xA8) == 0xFFFF_FFFE
    assert gvt.table.info[eng.BY_NAME["bcs"].base + 0xA8].write is irq.imr_write


def test_ddi_ports(dev: tuple[Gvt, Vgpu]) -> None:
    """ddi_buf_ctl_mmio_write (idle bit), dp_tp_ctl_mmio_write (pattern idle => status bit 25),
    dp_tp_status_mmio_write (sticky bits 27:26, 24 write-one-to-clear)."""
    gvt, v = dev
    b = dsp.DDI_BUF_CTL_A + dsp.DDI_PORT_STRIDE  # port B
    wr(gvt, v, b, dsp.DDI_BUF_CTL_ENABLE | dsp.DDI_BUF_IS_IDLE)
    assert rd(gvt, v, b) == dsp.DDI_BUF_CTL_ENABLE
    wr(gvt, v, b, 0)
    assert rd(gvt, v, b) == dsp.DDI_BUF_IS_IDLE
    e_st = dsp.DP_TP_STATUS_A + 4 * dsp.DDI_PORT_STRIDE
    v.mmio.write32(e_st, dsp.DP_TP_STATUS_AUTOTRAIN_DONE)
    wr(gvt, v, dsp.DDI_BUF_CTL_A + 4 * dsp.DDI_PORT_STRIDE, 0)  # port E disabled: autotrain done cleared
    assert v.mmio.read32(e_st) == 0
    ctl, st = dsp.DP_TP_CTL_A + dsp.DDI_PORT_STRIDE, dsp.DP_TP_STATUS_A + dsp.DDI_PORT_STRIDE
    wr(gvt, v, ctl, 0x2 << 8)
    assert rd(gvt, v, st) & dsp.DP_TP_STATUS_IDLE_DONE
    v.mmio.write32(st, 1 << 27 | 1 << 26 | 1 << 24)
    wr(gvt, v, st, 1 << 26 | 0x3)  # clears sticky 26 only; low bits as written
    assert rd(gvt, v, st) == 1 << 27 | 1 << 24 | 0x3
