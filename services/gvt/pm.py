"""Power management, PLL and platform registers with behaviour (Linux drivers/gpu/drm/i915/gvt/handlers.c).

The handlers of the real table's rows that a guest i915 drives while it brings the GT and the display up:
the power wells it requests and waits for, the DBUF power, the LCPLLs, the pcode mailbox (memory latency,
CDCLK change), GuC status after a reset, the media boot fetch, FPGA_DBG's unclaimed-access bit, the
64K-page IPS setting, the CS chicken bits that would turn on preemption, and a few PCH ones. Each function
names the Linux handler it follows; the register offsets are i915_reg.h's for SKL/KBL. The rows are laid
over the real table (mmio_info.py) by core.Gvt with the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# HSW_PWR_WELL_CTL2: the driver's request register (skl_power_well_ctl_write)
from ...hardware.regs import (
    DBUF_CTL,
    DBUF_POWER_REQUEST,
    DBUF_POWER_STATE,
    GEN6_PCODE_DATA,
    GEN6_PCODE_MAILBOX,
    GEN6_PCODE_READY,
    GEN9_PCODE_READ_MEM_LATENCY,
    HSW_PWR_WELL_CTL2,
)
from . import engines as eng
from .effects import PgpuMmioWrite
from .errors import EmulationError, FailsafeReason
from .handlers import F, Reg

if TYPE_CHECKING:
    from .vgpu import Vgpu

# i915_reg.h offsets (SKL/KBL)
LCPLL1_CTL, LCPLL2_CTL = 0x46010, 0x46014
LCPLL_CTL = 0x130040  # the BDW-style LCPLL_CTL, still in the SKL table
LCPLL_PLL_DISABLE, LCPLL_PLL_LOCK = 1 << 31, 1 << 30
LCPLL_CD_SOURCE_FCLK, LCPLL_CD_SOURCE_FCLK_DONE = 1 << 21, 1 << 19
GEN6_PCODE_ERROR_MASK = 0xFF
GEN6_PCODE_READ_RC6VIDS = 0x5
SKL_PCODE_CDCLK_CONTROL = 0x7
SKL_CDCLK_READY_FOR_CHANGE = 0x1
#: mailbox_write: SKL/KBL memory latency values (the first read answers 0x1e1a1100, later ones 0x61514b3d)
SKL_MEM_LATENCY = (0x1E1A1100, 0x61514B3D)
FPGA_DBG = 0x42300
FPGA_DBG_RM_NOCLAIM = 1 << 31
GEN6_MBCTL = 0x907C
GEN6_MBCTL_ENABLE_BOOT_FETCH = 1 << 4
GEN8_GAMW_ECO_DEV_RW_IA = 0x4080
GAMW_ECO_ENABLE_64K_IPS_FIELD = 0xF
CSFE_CHICKEN1 = 0xD4  # engine base + 0xd4 (CSFE_CHICKEN1_REG)
SOUTH_CHICKEN2 = 0xC2004
FDI_MPHY_IOSFSB_RESET_CTL, FDI_MPHY_IOSFSB_RESET_STATUS = 1 << 12, 1 << 13
PCH_PP_STATUS, PCH_PP_CONTROL = 0xC7200, 0xC7204
PANEL_POWER_ON = 1 << 0
PP_ON = 1 << 31
PP_SEQUENCE_POWER_DOWN = 2 << 28
PP_CYCLE_DELAY_ACTIVE = 1 << 27
PP_SEQUENCE_STATE_ON_IDLE = 0x8
PCH_TRANSCONF = (0xF0008, 0xF1008)
TRANS_ENABLE, TRANS_STATE_ENABLE = 1 << 31, 1 << 30
FDI_RX_IIR = (0xF0014, 0xF1014, 0xF2014)
EDP_PSR_IMR, EDP_PSR_IIR = 0x64834, 0x64838
TRTTE, TRTT_CHICKEN = 0x4DF4, 0x4DFC
DMA_CTRL = 0xC314
START_DMA = 1 << 0


def _store(vgpu: "Vgpu", offset: int, value: int) -> None:
    vgpu.mmio.write32(offset, value & 0xFFFF_FFFF)


def skl_power_well_ctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """skl_power_well_ctl_write: only the SKL request bits (31, 29, 9, 7, 5, 3, 1) are kept, and each power
    well's state bit (the bit below its request) follows its request at once."""
    v = data & (1 << 31 | 1 << 29 | 1 << 9 | 1 << 7 | 1 << 5 | 1 << 3 | 1 << 1)
    _store(vgpu, offset, v | v >> 1)


def gen9_dbuf_ctl_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """gen9_dbuf_ctl_mmio_write: DBUF_POWER_STATE follows DBUF_POWER_REQUEST."""
    v = data & 0xFFFF_FFFF
    _store(vgpu, offset, v | DBUF_POWER_STATE if v & DBUF_POWER_REQUEST else v & ~DBUF_POWER_STATE)


def skl_lcpll_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """skl_lcpll_write: bits other than 31 (enable) and 30 (lock) are MBZ; lock follows enable."""
    v = data & (1 << 31 | 1 << 30)
    _store(vgpu, offset, v | 1 << 30 if v & 1 << 31 else v & ~(1 << 30))


def lcpll_ctl_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """lcpll_ctl_mmio_write: PLL lock is the inverse of PLL disable; CD source FCLK done follows FCLK."""
    v = data & 0xFFFF_FFFF
    v = v & ~LCPLL_PLL_LOCK if v & LCPLL_PLL_DISABLE else v | LCPLL_PLL_LOCK
    v = v | LCPLL_CD_SOURCE_FCLK_DONE if v & LCPLL_CD_SOURCE_FCLK else v & ~LCPLL_CD_SOURCE_FCLK_DONE
    _store(vgpu, offset, v)


def mailbox_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """mailbox_write: answer the pcode command in GEN6_PCODE_DATA as an SKL/KBL pcode does (memory
    latency: 0x1e1a1100 for the first set, 0x61514b3d for the second; CDCLK control: ready for change;
    RC6 VIDs: bit 0), then clear READY and the error bits: every command completes at once, successfully."""
    value = data & 0xFFFF_FFFF
    cmd = value & 0xFF
    data0 = vgpu.mmio.read32(GEN6_PCODE_DATA)
    if cmd == GEN9_PCODE_READ_MEM_LATENCY:
        data0 = SKL_MEM_LATENCY[0] if not data0 else SKL_MEM_LATENCY[1]
    elif cmd == SKL_PCODE_CDCLK_CONTROL:
        data0 = SKL_CDCLK_READY_FOR_CHANGE
    elif cmd == GEN6_PCODE_READ_RC6VIDS:
        data0 |= 0x1
    _store(vgpu, GEN6_PCODE_DATA, data0)
    vgpu.count("pcode_mailbox_commands")
    _store(vgpu, offset, value & ~(GEN6_PCODE_READY | GEN6_PCODE_ERROR_MASK))


def fpga_dbg_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """fpga_dbg_mmio_write: RM_NOCLAIM (write one to clear) never stays set: no unclaimed access is reported."""
    _store(vgpu, offset, data & ~FPGA_DBG_RM_NOCLAIM)


def mbctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """mbctl_write: the boot-fetch enable bit is dropped (the media boot fetch is the host's)."""
    _store(vgpu, offset, data & ~GEN6_MBCTL_ENABLE_BOOT_FETCH)


def gamw_echo_dev_rw_ia_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """gamw_echo_dev_rw_ia_write: 64K-page IPS must be enabled for all engines or none (0xF or 0): gvt
    does not know which engine a PPGTT will be bound to when it shadows it; anything else is -EINVAL."""
    ips = data & GAMW_ECO_ENABLE_64K_IPS_FIELD
    if ips not in (0, GAMW_ECO_ENABLE_64K_IPS_FIELD):
        vgpu.count("gamw_ips_refused")
        raise EmulationError(f"unsupported IPS setting {ips:#x}: cannot enable 64K GTT", failsafe=False)
    _store(vgpu, offset, data)


def csfe_chicken1_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """csfe_chicken1_mmio_write: the masked enables of bits 3 and 4 (preemption controls) are dropped from
    the value stored; a guest asking for either is not supported (failsafe UNSUPPORTED_GUEST)."""
    d = data & 0xFFFF_FFFF
    _store(vgpu, offset, d & ~(0x18 << 16 | 0x18))  # the table applies the mask half (F_MODE_MASK)
    if any((d >> 16) & bit and d & bit for bit in (0x10, 0x8)):
        vgpu.enter_failsafe(FailsafeReason.UNSUPPORTED_GUEST, f"CSFE_CHICKEN1 preemption bits {d:#x}")


def guc_status_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    """guc_status_read: return the vreg (MIA_IN_RESET set by a GuC reset request), then clear that bit."""
    value = vgpu.mmio.read(offset, size)
    vgpu.mmio.write32(offset, vgpu.mmio.read32(offset) & ~eng.GS_MIA_IN_RESET)
    return value


def south_chicken2_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """south_chicken2_mmio_write: the FDI mPHY IOSFSB reset status follows its reset control."""
    v = data & 0xFFFF_FFFF
    _store(vgpu, offset, v | FDI_MPHY_IOSFSB_RESET_STATUS if v & FDI_MPHY_IOSFSB_RESET_CTL
           else v & ~FDI_MPHY_IOSFSB_RESET_STATUS)


def pch_pp_control_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """pch_pp_control_mmio_write: panel power on => PCH_PP_STATUS on and idle, no power-down sequence, no
    cycle delay; off => those bits cleared."""
    _store(vgpu, offset, data)
    status = vgpu.mmio.read32(PCH_PP_STATUS)
    if data & PANEL_POWER_ON:
        status = (status | PP_ON | PP_SEQUENCE_STATE_ON_IDLE) & ~(PP_SEQUENCE_POWER_DOWN | PP_CYCLE_DELAY_ACTIVE)
    else:
        status &= ~(PP_ON | PP_SEQUENCE_POWER_DOWN | PP_CYCLE_DELAY_ACTIVE)
    _store(vgpu, PCH_PP_STATUS, status)


def transconf_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """transconf_mmio_write: the PCH transcoder's state bit follows its enable."""
    v = data & 0xFFFF_FFFF
    _store(vgpu, offset, v | TRANS_STATE_ENABLE if v & TRANS_ENABLE else v & ~TRANS_STATE_ENABLE)


def fdi_rx_iir_mmio_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """fdi_rx_iir_mmio_write: write one to clear."""
    _store(vgpu, offset, vgpu.mmio.read32(offset) & ~data)


def edp_psr_imr_iir_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """edp_psr_imr_iir_write: PSR is not emulated, the register reads back 0 whatever is written."""
    _store(vgpu, offset, 0)


def gen9_trtte_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """gen9_trtte_write: TR-TT enabled with physical addressing (bit 0 without bit 1) is refused (-EINVAL);
    otherwise stored and written to the hardware (TRTTE is not per-context)."""
    if data & 1 and not data & 1 << 1:
        vgpu.count("trtt_physical_refused")
        raise EmulationError(f"TRTTE {data:#x}: TR-TT with physical addresses", failsafe=False)
    _store(vgpu, offset, data)
    vgpu.emit(PgpuMmioWrite(offset, 4, vgpu.mmio.read32(offset)))


def gen9_trtt_chicken_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """gen9_trtt_chicken_write: bit 0 (unblock the TR-TT logic) goes to the hardware too; stored."""
    if data & 1:
        vgpu.emit(PgpuMmioWrite(offset, 4, data & 0xFFFF_FFFF))
    _store(vgpu, offset, data)


def dma_ctrl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """dma_ctrl_write: stored; a masked START_DMA (a GuC firmware load) is not supported and is counted."""
    _store(vgpu, offset, data)
    if (data >> 16) & START_DMA and data & START_DMA:
        vgpu.count("guc_dma_start_ignored")
        vgpu.log.warning("guc_dma_start_ignored", vgpu=vgpu.id, note="GVT-g does not support GuC")


def pm_regs() -> list[Reg]:
    """The rows of this module (laid over the real table's rows of the same offsets)."""
    regs = [
        Reg(HSW_PWR_WELL_CTL2, write=skl_power_well_ctl_write),
        Reg(DBUF_CTL, write=gen9_dbuf_ctl_mmio_write),
        Reg(LCPLL1_CTL, write=skl_lcpll_write), Reg(LCPLL2_CTL, write=skl_lcpll_write),
        Reg(LCPLL_CTL, write=lcpll_ctl_mmio_write),
        Reg(GEN6_PCODE_MAILBOX, write=mailbox_write), Reg(GEN6_PCODE_DATA),
        Reg(FPGA_DBG, write=fpga_dbg_mmio_write),
        Reg(GEN6_MBCTL, write=mbctl_write),
        Reg(GEN8_GAMW_ECO_DEV_RW_IA, write=gamw_echo_dev_rw_ia_write),
        Reg(eng.GUC_STATUS, flags=F.RO, read=guc_status_read),
        Reg(SOUTH_CHICKEN2, write=south_chicken2_mmio_write),
        Reg(PCH_PP_CONTROL, write=pch_pp_control_mmio_write),
        Reg(EDP_PSR_IMR, write=edp_psr_imr_iir_write), Reg(EDP_PSR_IIR, write=edp_psr_imr_iir_write),
        Reg(TRTTE, write=gen9_trtte_write), Reg(TRTT_CHICKEN, write=gen9_trtt_chicken_write),
        Reg(DMA_CTRL, write=dma_ctrl_write),
    ]
    regs += [Reg(off, write=transconf_mmio_write) for off in PCH_TRANSCONF]
    regs += [Reg(off, write=fdi_rx_iir_mmio_write) for off in FDI_RX_IIR]
    regs += [Reg(e.base + CSFE_CHICKEN1, flags=F.MODE_MASK, write=csfe_chicken1_mmio_write) for e in eng.ENGINES]
    return regs
