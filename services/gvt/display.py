"""Per-vGPU display: pipes, the vblank timer, planes and page flips, the virtual DP monitor and its hotplug
(Linux drivers/gpu/drm/i915/gvt/display.c, the display handlers of handlers.c).

* One virtual DP monitor on port D (display.c setup_virtual_dp_monitor for SKL: PORT_D, GVT_EDID_1024_768),
  announced the way emulate_monitor_status_change does: SDEISR port D hotplug, SFUSE_STRAP DDI D detected,
  DDI_BUF_CTL D enabled, DPLL0 at the 1.62 GHz link rate. Its EDID and DPCD are served by edid.py.
* Pipes A, B, C: TRANSCONF (PIPECONF) bit 31 enables a pipe; bit 30 (state) follows it. Enabling a pipe
  computes its refresh from the mode the guest programmed (handlers.c vgpu_update_refresh_rate: pixel clock
  = link M/N x dp_br, which skl_vgpu_get_dp_bitrate gives as 162000 * 2 kHz for DPLL0's 1620 link rate;
  refresh = pixel clock / (HTOTAL x VTOTAL)) and turns on the vGPU's vblank timer
  (vgpu_update_vblank_emulation).
* The vblank timer is a deadline of the core, one per enabled pipe: :func:`next_deadline` is the earliest,
  :func:`run_timers` emulates every vblank that fell due (emulate_vblank_on_pipe): pending flip-done events
  first, then PIPE_FRMCOUNT + 1 and PIPE_x_VBLANK. No pipe enabled, no deadline.
* A PLANE_SURF write is a page flip (pri_surf_mmio_write): SURFLIVE follows, PIPE_FLIPCOUNT + 1, and the
  flip-done event is raised at the next vblank (at once for an async flip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# transcoder timings and pipe registers, by their pipe A offsets (the *_BASE names this module uses)
from ...hardware.display import HBLANK_A as HBLANK_BASE
from ...hardware.display import HSYNC_A as HSYNC_BASE
from ...hardware.display import HTOTAL_A as HTOTAL_BASE
from ...hardware.display import PIPE_DATA_M1_A as PIPE_DATA_M1_BASE
from ...hardware.display import PIPE_DATA_N1_A as PIPE_DATA_N1_BASE
from ...hardware.display import PIPE_FLIPCOUNT_A as PIPE_FLIPCOUNT_BASE
from ...hardware.display import PIPE_FRMCOUNT_A as PIPE_FRMCOUNT_BASE
from ...hardware.display import PIPE_LINK_M1_A as PIPE_LINK_M1_BASE
from ...hardware.display import PIPE_LINK_N1_A as PIPE_LINK_N1_BASE
from ...hardware.display import PIPESRC_A as PIPESRC_BASE
from ...hardware.display import TRANSCONF_A as TRANSCONF_BASE
from ...hardware.display import VBLANK_A as VBLANK_BASE
from ...hardware.display import VSYNC_A as VSYNC_BASE
from ...hardware.display import VTOTAL_A as VTOTAL_BASE
from ...hardware.display import (
    DDI_BUF_CTL_D,
    DDI_BUF_CTL_ENABLE,
    DDI_BUF_IS_IDLE,
    DP_LINK_SYMBOL_KHZ,
    PIPE_REG_STRIDE,
    SDE_PORTD_HOTPLUG_CPT,
    SDEISR,
    SFUSE_STRAP,
    SFUSE_STRAP_DDID_DETECTED,
    TRANS_DDI_FUNC_CTL_A,
    TRANS_DDI_FUNC_CTL_DP_D,
    TRANSCONF_ENABLE,
    TRANSCONF_STATE_ENABLE,
)
from . import fb_decoder as fb
from ...hardware.display import DP_AUX_CH_CTL_INTERRUPT
from .edid import PCH_GMBUS0, PCH_GMBUS5, EdidChannel, Monitor, aux_ctl
from .handlers import F, Reg
from .interrupt import trigger_event

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

PIPES = (0, 1, 2)
PIPE_NAMES = "ABC"
PORT_D = 3

# transcoder timings and pipe registers (i915_reg.h; transcoder X = pipe X for A..C)

# the monitor's port and PCH bits (i915_reg.h)
PCH_PORT_HOTPLUG = 0xC4030
PORTD_HOTPLUG_ENABLE = 1 << 20
PORTD_HOTPLUG_STATUS_MASK = 0x3 << 16
DPLL_CTRL1 = 0x6C058
DPLL_CTRL1_DPLL0_1620 = (1 << 0) | (3 << 1)  # DPLL_CTRL1_OVERRIDE(DPLL0) | LINK_RATE(1620, DPLL0)
DPLL_STATUS = 0x6C060
DPLL_LOCK_DPLL0 = 1 << 0
GVT_DEFAULT_REFRESH_RATE = 60  # display.c: port->vrefresh_k = GVT_DEFAULT_REFRESH_RATE * MSEC_PER_SEC
#: the refresh rates a pipe may run at (mHz): 1 Hz .. 240 Hz, the span of real panels
MIN_REFRESH_MHZ, MAX_REFRESH_MHZ = 1_000, 240_000


def pipe_reg(base: int, pipe: int) -> int:
    return base + PIPE_REG_STRIDE * pipe


@dataclass
class PipeTimer:
    """An enabled pipe's vblank timer (struct intel_vgpu_vblank_timer): period and next expiry."""

    vrefresh_k: int  # refresh in mHz
    period: float  # seconds
    next: float


@dataclass
class VgpuDisplay:
    """intel_vgpu_display: the monitor, the EDID channel, the pipes' timers, pending flip-done events."""

    vgpu: "Vgpu"
    monitor: Monitor | None = None
    edid: EdidChannel | None = None
    timers: dict[int, PipeTimer] = field(default_factory=dict)
    flip_done_pending: dict[int, set[str]] = field(default_factory=dict)
    vblanks: dict[int, int] = field(default_factory=dict)  # pipe -> vblanks emulated (figures)
    flips: int = 0
    cursor_generation: int = 0

    # ---------------------------------------------------------------------------------- lifecycle
    def init(self) -> None:
        """intel_vgpu_init_display: a DP monitor on port D, then the monitor status change."""
        self.monitor = Monitor()
        self.edid = EdidChannel(self.vgpu, self.monitor)
        self.edid.reset()
        self._monitor_status_change()

    def reset(self) -> None:
        """intel_vgpu_reset_display (after a DMLR restored the vregs): timers off, status change again."""
        self.timers.clear()
        self._timers_changed()
        self.flip_done_pending.clear()
        if self.edid is not None:
            self.edid.reset()
        self._monitor_status_change()

    def clean(self) -> None:
        """intel_vgpu_clean_display: the monitor goes, the vblank timer stops."""
        self.timers.clear()
        self._timers_changed()
        self.flip_done_pending.clear()
        self.monitor = None
        self.edid = None

    def _monitor_status_change(self) -> None:
        """emulate_monitor_status_change (SKL, port D): what the guest's output probe reads."""
        mmio = self.vgpu.mmio
        mmio.write32(SDEISR, mmio.read32(SDEISR) & ~SDE_PORTD_HOTPLUG_CPT)
        mmio.write32(DPLL_CTRL1, DPLL_CTRL1_DPLL0_1620)
        mmio.write32(DPLL_STATUS, DPLL_LOCK_DPLL0)
        if self.monitor is not None:
            mmio.write32(SFUSE_STRAP, mmio.read32(SFUSE_STRAP) | SFUSE_STRAP_DDID_DETECTED)
            mmio.write32(SDEISR, mmio.read32(SDEISR) | SDE_PORTD_HOTPLUG_CPT)
            mmio.write32(TRANS_DDI_FUNC_CTL_A, TRANS_DDI_FUNC_CTL_DP_D)
            mmio.write32(DDI_BUF_CTL_D, (mmio.read32(DDI_BUF_CTL_D) | DDI_BUF_CTL_ENABLE) & ~DDI_BUF_IS_IDLE)
        for pipe in PIPES:  # planes off
            mmio.write32(fb.plane_reg(pipe, 0), mmio.read32(fb.plane_reg(pipe, 0)) & ~fb.PLANE_CTL_ENABLE)
            mmio.write32(fb.cursor_reg(pipe, 0), mmio.read32(fb.cursor_reg(pipe, 0)) & ~fb.MCURSOR_MODE_MASK)

    # ------------------------------------------------------------------------------------ hotplug
    def hotplug(self, connected: bool) -> None:
        """intel_vgpu_emulate_hotplug (SKL): SFUSE_STRAP and SDEISR follow the link, SDEIIR and the
        hotplug status latch, DP_D_HOTPLUG is raised."""
        mmio = self.vgpu.mmio
        if connected:
            if self.monitor is None:
                self.monitor = Monitor()
                self.edid = EdidChannel(self.vgpu, self.monitor)
                self.edid.reset()
            mmio.write32(SFUSE_STRAP, mmio.read32(SFUSE_STRAP) | SFUSE_STRAP_DDID_DETECTED)
            mmio.write32(SDEISR, mmio.read32(SDEISR) | SDE_PORTD_HOTPLUG_CPT)
        else:
            self.monitor = None
            if self.edid is not None:
                self.edid.monitor = None
            mmio.write32(SFUSE_STRAP, mmio.read32(SFUSE_STRAP) & ~SFUSE_STRAP_DDID_DETECTED)
            mmio.write32(SDEISR, mmio.read32(SDEISR) & ~SDE_PORTD_HOTPLUG_CPT)
        mmio.write32(PCH_PORT_HOTPLUG, mmio.read32(PCH_PORT_HOTPLUG) | PORTD_HOTPLUG_STATUS_MASK)
        trigger_event(self.vgpu, "DP_D_HOTPLUG")

    # -------------------------------------------------------------------------------------- pipes
    def pipe_enabled(self, pipe: int) -> bool:
        """pipe_is_enabled."""
        return bool(self.vgpu.mmio.read32(pipe_reg(TRANSCONF_BASE, pipe)) & TRANSCONF_ENABLE)

    def refresh_mhz(self, pipe: int) -> int:
        """vgpu_update_refresh_rate: the mode's refresh in mHz from link M/N and the timings (60 Hz when
        the guest has not programmed them)."""
        rd = self.vgpu.mmio.read32
        link_m = rd(pipe_reg(PIPE_LINK_M1_BASE, pipe)) & 0xFFFFFF
        link_n = rd(pipe_reg(PIPE_LINK_N1_BASE, pipe)) & 0xFFFFFF
        htotal = ((rd(pipe_reg(HTOTAL_BASE, pipe)) >> 16) & 0x1FFF) + 1
        vtotal = ((rd(pipe_reg(VTOTAL_BASE, pipe)) >> 16) & 0x1FFF) + 1
        if not link_m or not link_n or htotal <= 1 or vtotal <= 1:
            return GVT_DEFAULT_REFRESH_RATE * 1000
        pixel_hz = link_m * DP_LINK_SYMBOL_KHZ * 1000 // link_n
        mhz = round(pixel_hz * 1000 / (htotal * vtotal))
        if not MIN_REFRESH_MHZ <= mhz <= MAX_REFRESH_MHZ:
            # a guest's nonsense timings must not turn the vblank timer into a busy loop of the device model
            self.vgpu.count("display_refresh_clamped")
            self.vgpu.log.warning("display_refresh_clamped", vgpu=self.vgpu.id, refresh_mhz=mhz)
            mhz = min(max(mhz, MIN_REFRESH_MHZ), MAX_REFRESH_MHZ)
        return mhz

    def update_vblank_emulation(self, pipe: int, turnon: bool, now: float) -> None:
        """vgpu_update_vblank_emulation: (re)start the pipe's timer one period from now if it is off or the
        refresh changed; stop it when the pipe goes off."""
        if not turnon:
            self.timers.pop(pipe, None)
            self.flip_done_pending.pop(pipe, None)
            self._timers_changed()
            return
        vrefresh_k = self.refresh_mhz(pipe)
        t = self.timers.get(pipe)
        if t is None or t.vrefresh_k != vrefresh_k:
            period = 1000.0 / vrefresh_k
            self.timers[pipe] = PipeTimer(vrefresh_k, period, now + period)
            self._timers_changed()

    def _timers_changed(self) -> None:
        """Keep the device's index of vGPUs with a pipe timer running (``Gvt.display_active``) in step, so
        that finding the next vblank costs what runs, not what exists (a dense GPU has hundreds of
        vGPUs and that deadline is asked after every batch of ioreqs)."""
        gvt = getattr(self.vgpu, "gvt", None)
        active = getattr(gvt, "display_active", None)
        if active is None:
            return
        vid = self.vgpu.id
        if self.timers:
            active[vid] = self.vgpu
        elif active.get(vid) is self.vgpu:
            del active[vid]

    def next_deadline(self) -> float | None:
        return min((t.next for t in self.timers.values()), default=None)

    def run_timers(self, now: float) -> int:
        """Emulate the vblanks due by ``now`` (emulate_vblank_on_pipe). Frames that a late wake-up missed
        are counted on the frame counter; their interrupts merge into one (IIR is a bit). Returns how many
        vblanks were emulated."""
        total = 0
        for pipe, t in sorted(self.timers.items()):
            if t.next > now:
                continue
            n = int((now - t.next) // t.period) + 1
            t.next += n * t.period
            total += n
            for event in sorted(self.flip_done_pending.pop(pipe, set())):
                trigger_event(self.vgpu, event)
            frm = pipe_reg(PIPE_FRMCOUNT_BASE, pipe)
            self.vgpu.mmio.write32(frm, (self.vgpu.mmio.read32(frm) + n) & 0xFFFF_FFFF)
            self.vblanks[pipe] = self.vblanks.get(pipe, 0) + n
            trigger_event(self.vgpu, f"PIPE_{PIPE_NAMES[pipe]}_VBLANK")
        return total

    # -------------------------------------------------------------------------------------- views
    def generation(self, pipe: int) -> int:
        return self.vgpu.mmio.read32(pipe_reg(PIPE_FLIPCOUNT_BASE, pipe))

    def primary(self, pipe: int = 0) -> fb.PlaneInfo:
        return fb.decode_primary(self.vgpu, pipe, self.generation(pipe))

    def cursor(self, pipe: int = 0) -> fb.PlaneInfo:
        return fb.decode_cursor(self.vgpu, pipe, self.cursor_generation)

    def info(self) -> dict[str, Any]:
        """The display part of a vGPU's STATUS figures."""
        pipes = {}
        for pipe in PIPES:
            if not self.pipe_enabled(pipe):
                continue
            try:
                plane: dict[str, Any] = self.primary(pipe).as_dict()
            except fb.DecodeError as err:
                plane = {"error": str(err)}
            t = self.timers.get(pipe)
            pipes[PIPE_NAMES[pipe]] = {"refresh_hz": round(t.vrefresh_k / 1000, 3) if t else 0.0,
                                       "frame_count": self.vgpu.mmio.read32(pipe_reg(PIPE_FRMCOUNT_BASE, pipe)),
                                       "flips": self.generation(pipe), "primary": plane}
        return {"monitor": self.monitor is not None, "pipes": pipes}


# --------------------------------------------------------------------------------- register handlers
def _now(vgpu: "Vgpu") -> float:
    """The device model's clock: the time the shell passed in with the ioreq being emulated."""
    return vgpu.gvt.scheduler.now


def transconf_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """pipeconf_mmio_write: the state bit follows enable; the vblank timer follows the pipe."""
    data &= 0xFFFF_FFFF
    data = data | TRANSCONF_STATE_ENABLE if data & TRANSCONF_ENABLE else data & ~TRANSCONF_STATE_ENABLE
    vgpu.mmio.write32(offset, data)
    pipe = (offset - TRANSCONF_BASE) // PIPE_REG_STRIDE
    vgpu.display.update_vblank_emulation(pipe, bool(data & TRANSCONF_ENABLE), _now(vgpu))


def plane_surf_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """pri_surf_mmio_write (skl_plane_surf_write): a page flip."""
    pipe = (offset - fb.PLANE_CTL_BASE) // PIPE_REG_STRIDE
    vgpu.mmio.write(offset, data, size)
    vgpu.mmio.write32(fb.plane_reg(pipe, fb.PLANE_SURFLIVE_OFF), vgpu.mmio.read32(offset))
    flipcount = pipe_reg(PIPE_FLIPCOUNT_BASE, pipe)
    vgpu.mmio.write32(flipcount, (vgpu.mmio.read32(flipcount) + 1) & 0xFFFF_FFFF)
    vgpu.display.flips += 1
    event = f"PRIMARY_{PIPE_NAMES[pipe]}_FLIP_DONE"
    if vgpu.mmio.read32(fb.plane_reg(pipe, 0)) & fb.PLANE_CTL_ASYNC_FLIP:
        trigger_event(vgpu, event)
    else:
        vgpu.display.flip_done_pending.setdefault(pipe, set()).add(event)


def cursor_base_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """CURBASE: a cursor update (the cursor plane's generation moves)."""
    vgpu.mmio.write(offset, data, size)
    vgpu.display.cursor_generation += 1


def gmbus_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    d = vgpu.display.edid
    return d.gmbus_read(offset, size) if d is not None else vgpu.mmio.read(offset, size)


def gmbus_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    d = vgpu.display.edid
    if d is None:
        vgpu.mmio.write(offset, data, size)
    else:
        d.gmbus_write(offset, data, size)


def dp_aux_ch_ctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """dp_aux_ch_ctl_mmio_write for DDI D; AUX_CHANNEL_D is raised when the guest asked for it."""
    d = vgpu.display.edid
    if d is None:
        vgpu.mmio.write(offset, data, size)
        return
    if d.aux_write(PORT_D, offset, data, size) and data & DP_AUX_CH_CTL_INTERRUPT:
        trigger_event(vgpu, "AUX_CHANNEL_D")


def display_regs() -> list[Reg]:
    """The display rows of the register table (handlers.c init_generic_mmio_info / init_skl_mmio_info)."""
    regs: list[Reg] = []
    for pipe in PIPES:
        regs += [Reg(pipe_reg(b, pipe)) for b in (HTOTAL_BASE, HBLANK_BASE, HSYNC_BASE, VTOTAL_BASE, VBLANK_BASE,
                                                  VSYNC_BASE, PIPESRC_BASE, PIPE_DATA_M1_BASE, PIPE_DATA_N1_BASE,
                                                  PIPE_LINK_M1_BASE, PIPE_LINK_N1_BASE)]
        regs += [Reg(pipe_reg(TRANSCONF_BASE, pipe), write=transconf_write),
                 Reg(pipe_reg(PIPE_FRMCOUNT_BASE, pipe), flags=F.RO),
                 Reg(pipe_reg(PIPE_FLIPCOUNT_BASE, pipe), flags=F.RO),
                 Reg(fb.plane_reg(pipe, 0)), Reg(fb.plane_reg(pipe, fb.PLANE_STRIDE_OFF)),
                 Reg(fb.plane_reg(pipe, fb.PLANE_POS_OFF)), Reg(fb.plane_reg(pipe, fb.PLANE_SIZE_OFF)),
                 Reg(fb.plane_reg(pipe, fb.PLANE_OFFSET_OFF)),
                 Reg(fb.plane_reg(pipe, fb.PLANE_SURF_OFF), write=plane_surf_write),
                 Reg(fb.plane_reg(pipe, fb.PLANE_SURFLIVE_OFF), flags=F.RO),
                 Reg(fb.cursor_reg(pipe, 0)), Reg(fb.cursor_reg(pipe, fb.CURPOS_OFF)),
                 Reg(fb.cursor_reg(pipe, fb.CURBASE_OFF), write=cursor_base_write)]
    regs.append(Reg(PCH_GMBUS0, size=PCH_GMBUS5 + 4 - PCH_GMBUS0, read=gmbus_read, write=gmbus_write))
    regs.append(Reg(aux_ctl(PORT_D), size=6 * 4, write=dp_aux_ch_ctl_write))
    regs += [Reg(SFUSE_STRAP, flags=F.RO), Reg(DPLL_CTRL1), Reg(DPLL_STATUS, flags=F.RO), Reg(PCH_PORT_HOTPLUG)]
    regs += [Reg(DDI_BUF_CTL_A + DDI_PORT_STRIDE * port, write=ddi_buf_ctl_write) for port in range(5)]
    regs += [Reg(DP_TP_CTL_A + DDI_PORT_STRIDE * port, write=dp_tp_ctl_write) for port in range(5)]
    regs += [Reg(DP_TP_STATUS_A + DDI_PORT_STRIDE * port, write=dp_tp_status_write) for port in range(4)]
    return regs


# DDI ports A..E (i915_reg.h): DDI_BUF_CTL, DP_TP_CTL, DP_TP_STATUS every 0x100 from 0x64000 / 0x64040 / 0x64044
DDI_BUF_CTL_A, DP_TP_CTL_A, DP_TP_STATUS_A, DDI_PORT_STRIDE = 0x64000, 0x64040, 0x64044, 0x100
DP_TP_STATUS_AUTOTRAIN_DONE = 1 << 12
DP_TP_STATUS_IDLE_DONE = 1 << 25
DP_TP_STATUS_STICKY = 0b11 << 26 | 1 << 24  # write-one-to-clear bits


def ddi_buf_ctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """ddi_buf_ctl_mmio_write (gvt/handlers.c): an enabled DDI buffer is not idle; a disabled one is, and
    disabling port E's clears its DP_TP_STATUS autotrain-done bit."""
    v = data & 0xFFFF_FFFF
    if v & DDI_BUF_CTL_ENABLE:
        vgpu.mmio.write32(offset, v & ~DDI_BUF_IS_IDLE)
        return
    vgpu.mmio.write32(offset, v | DDI_BUF_IS_IDLE)
    if offset == DDI_BUF_CTL_A + 4 * DDI_PORT_STRIDE:
        st = DP_TP_STATUS_A + 4 * DDI_PORT_STRIDE
        vgpu.mmio.write32(st, vgpu.mmio.read32(st) & ~DP_TP_STATUS_AUTOTRAIN_DONE)


def dp_tp_ctl_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """dp_tp_ctl_mmio_write: link training pattern idle (bits 10:8 = 2) sets the port's DP_TP_STATUS
    idle-done bit (25)."""
    vgpu.mmio.write32(offset, data & 0xFFFF_FFFF)
    if (data >> 8) & 0x7 == 0x2:
        st = offset + (DP_TP_STATUS_A - DP_TP_CTL_A)
        vgpu.mmio.write32(st, vgpu.mmio.read32(st) | DP_TP_STATUS_IDLE_DONE)


def dp_tp_status_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """dp_tp_status_mmio_write: bits 27:26 and 24 are sticky (write one to clear), the rest as written."""
    old = vgpu.mmio.read32(offset)
    v = (data & ~DP_TP_STATUS_STICKY) | (old & DP_TP_STATUS_STICKY)
    vgpu.mmio.write32(offset, v & ~(data & DP_TP_STATUS_STICKY) & 0xFFFF_FFFF)


# ------------------------------------------------------------------------------------- device level
def next_deadline(gvt: "Gvt") -> float | None:
    """The earliest vblank of any enabled pipe of any vGPU (None: no pipe enabled, no timer)."""
    return min((d for v in gvt.display_active.values() if (d := v.display.next_deadline()) is not None),
               default=None)


def run_timers(gvt: "Gvt", now: float) -> int:
    """Emulate every vblank due by ``now`` on every vGPU (intel_gvt_request_service EMULATE_VBLANK)."""
    total = 0
    for vgpu in sorted(gvt.display_active.values(), key=lambda v: v.id):
        if gvt.vgpus.get(vgpu.id) is not vgpu:  # destroyed without its display cleaned: never emulated
            del gvt.display_active[vgpu.id]
            continue
        if vgpu.failsafe or not vgpu.display.timers:
            continue
        total += vgpu.display.run_timers(now)
    return total
