"""The guest driver's display: the i915 modeset order on the vGPU's virtual DP monitor, frames drawn with
the GPU's blitter, page flips on vblank, every frame verified in guest RAM (i915 intel_dp.c detect and
link training, intel_display.c modeset, skl_universal_plane.c plane programming, the flip-done wait).

Order (as i915 brings up a DP output and its first framebuffer):
1. output probe: SFUSE_STRAP says DDI D is there, SDEISR its hotplug line is up;
2. intel_dp_detect: the DPCD receiver capabilities over DP AUX (native read), then the EDID over DDC-on-AUX
   (I2C-over-AUX reads at 0x50, one byte each, as GVT's AUX emulation answers) and its checksum;
3. the preferred mode: the first detailed timing when it has a clock, else the largest established timing
   (drm_edid.c; this monitor's EDID lists 640x480, 800x600, 1024x768 at 60 Hz);
4. two framebuffer objects in the GGTT (linear or X-tiled), drawn before they are shown;
5. link training over AUX (TRAINING_PATTERN_SET 1, lane status, pattern off), transcoder timings, link M/N
   for the pixel clock, TRANS_DDI_FUNC_CTL, TRANSCONF enable; then the plane: stride, position, size,
   PLANE_CTL, and PLANE_SURF last (the write that arms it);
6. the driver writes ``display_ready`` in PVINFO after this (VgpuDriver.init), as i915 does after modeset.

Frames: the first is a test pattern, then an animated frame per VM (its name, verified workload count, a
clock and a moving marker). Text comes from a 5x7 bitmap font rendered by the CPU into a staging buffer; the
GPU draws everything (XY_COLOR_BLT fills, XY_SRC_COPY_BLT of the staging rows) into the back buffer, then
the driver flips (PLANE_SURF) and waits for the flip-done interrupt, which GVT raises at the next vblank.
After each frame the driver reads the framebuffer back from its own RAM (detiling an X-tiled one) and
compares it with the image it computed itself: that is its copy of what it drew.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ...hardware import cmds
from ...hardware.display import (
    DDI_BUF_CTL_D,
    DDI_BUF_CTL_ENABLE,
    DP_LINK_SYMBOL_KHZ,
    HBLANK_A,
    HSYNC_A,
    HTOTAL_A,
    PIPE_LINK_M1_A,
    PIPE_LINK_N1_A,
    PIPESRC_A,
    PLANE_CTL_1_A,
    PLANE_CTL_ENABLE,
    PLANE_CTL_FORMAT_XRGB_8888,
    PLANE_CTL_TILED_X,
    PLANE_POS_1_A,
    PLANE_SIZE_1_A,
    PLANE_STRIDE_1_A,
    PLANE_SURF_1_A,
    SDE_PORTD_HOTPLUG_CPT,
    SDEISR,
    SFUSE_STRAP,
    SFUSE_STRAP_DDID_DETECTED,
    TILE_SIZE,
    TRANS_DDI_FUNC_CTL_A,
    TRANSCONF_A,
    TRANSCONF_ENABLE,
    VBLANK_A,
    VSYNC_A,
    VTOTAL_A,
)
from ...hardware.display import TILE_X_HEIGHT as TILE_H
from ...hardware.display import TILE_X_WIDTH as TILE_W
from ...hardware.display import TRANS_DDI_FUNC_CTL_DP_D as TRANS_DDI_DP_D_SST
from ...hardware.opcodes import XY_DST_TILED
from .gem import Bo
from .runtime import Gen, Signal, sleep_until, wait_until
from ...hardware.display import (
    DP_AUX_CH_CTL_BASE,
    DP_AUX_CH_CTL_DONE,
    DP_AUX_CH_CTL_MESSAGE_SIZE_MASK,
    DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT,
    DP_AUX_CH_CTL_SEND_BUSY,
    DP_AUX_CH_CTL_TIME_OUT_ERROR,
    DP_AUX_I2C_MOT,
    DP_AUX_I2C_READ,
    DP_AUX_NATIVE_READ,
    DP_AUX_NATIVE_WRITE,
)

if TYPE_CHECKING:
    from .i915 import VgpuDriver

# registers (i915_reg.h, SKL; the same offsets GVT emulates)
DP_AUX_CH_CTL_D = DP_AUX_CH_CTL_BASE + 0x100 * 3  # DDI D's channel
DDC_ADDR = 0x50
DE_PIPE_A_IMR, DE_PIPE_A_IIR, DE_PIPE_A_IER = 0x44404, 0x44408, 0x4440C
PIPE_A_FLIP_DONE = 1 << 3  # GEN9_PIPE_PLANE1_FLIP_DONE
LINK_N = 0x80000

#: VESA DMT timings of the EDID established-timing bits (bytes 35-36): bit -> (w, h, clock kHz, htotal,
#: hsync start, hsync end, vtotal, vsync start, vsync end)
ESTABLISHED = {
    (35, 5): (640, 480, 25175, 800, 656, 752, 525, 490, 492),
    (35, 0): (800, 600, 40000, 1056, 840, 968, 628, 601, 605),
    (36, 3): (1024, 768, 65000, 1344, 1048, 1184, 806, 771, 777),
}


class DisplayError(RuntimeError):
    """The display did not come up (no monitor, a bad EDID, a flip that never completed)."""


@dataclass(frozen=True)
class Mode:
    """A display mode (drm_display_mode): active size, pixel clock and totals."""

    width: int
    height: int
    clock_khz: int
    htotal: int
    hsync_start: int
    hsync_end: int
    vtotal: int
    vsync_start: int
    vsync_end: int

    @property
    def refresh_hz(self) -> float:
        return self.clock_khz * 1000 / (self.htotal * self.vtotal)


def parse_edid(edid: bytes) -> Mode:
    """The preferred mode of an EDID block: the first detailed timing with a pixel clock, else the largest
    established timing. Raises DisplayError for a bad header or checksum."""
    if len(edid) != 128 or edid[:8] != bytes([0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0]):
        raise DisplayError("EDID header missing")
    if sum(edid) % 256:
        raise DisplayError(f"EDID checksum wrong (sum {sum(edid) % 256:#x})")
    d = edid[54:72]
    clock = (d[0] | d[1] << 8) * 10
    if clock:
        ha, hb = d[2] | (d[4] >> 4) << 8, d[3] | (d[4] & 0xF) << 8
        va, vb = d[5] | (d[7] >> 4) << 8, d[6] | (d[7] & 0xF) << 8
        hso, hsw = d[8] | (d[11] >> 6) << 8, d[9] | ((d[11] >> 4) & 3) << 8
        vso, vsw = d[10] >> 4 | ((d[11] >> 2) & 3) << 4, d[10] & 0xF | (d[11] & 3) << 4
        return Mode(ha, va, clock, ha + hb, ha + hso, ha + hso + hsw, va + vb, va + vso, va + vso + vsw)
    modes = [Mode(*t) for (byte, bit), t in ESTABLISHED.items() if edid[byte] & (1 << bit)]
    if not modes:
        raise DisplayError("EDID lists no mode this driver knows")
    return max(modes, key=lambda mo: mo.width * mo.height)


# ------------------------------------------------------------------------------------------ pixels
#: 5x7 font, columns left to right, bit 0 = top row (the classic HD44780-style table), ASCII 0x20..0x5A
_FONT_HEX = (
    "0000000000 00005f0000 0007000700 147f147f14 242a7f2a12 2313086462 3649552250 0005030000 001c224100 "
    "0041221c00 082a1c2a08 08083e0808 0050300000 0808080808 0060600000 2010080402 3e5149453e 00427f4000 "
    "4261514946 2141454b31 1814127f10 2745454539 3c4a494930 0171090503 3649494936 064949291e 0036360000 "
    "0056360000 0008142241 1414141414 4122140800 0201510906 324979413e 7e1111117e 7f49494936 3e41414122 "
    "7f4141221c 7f49494941 7f09090101 3e41415132 7f0808087f 00417f4100 2040413f01 7f08142241 7f40404040 "
    "7f0204027f 7f0408107f 3e4141413e 7f09090906 3e4151215e 7f09192946 4649494931 01017f0101 3f4040403f "
    "1f2040201f 7f2018207f 6314081463 0304780403 6151494543")
FONT: dict[str, bytes] = {chr(0x20 + i): bytes.fromhex(h) for i, h in enumerate(_FONT_HEX.split())}
SCALE = 4
GLYPH_W, GLYPH_H = 6 * SCALE, 7 * SCALE  # 5 columns + 1 of spacing
LINE_H = GLYPH_H + SCALE


def px(color: int) -> bytes:
    """One XRGB8888 pixel as it sits in memory (little-endian B, G, R, X)."""
    return (color & 0xFFFF_FFFF).to_bytes(4, "little")


def render_text(text: str, width_px: int, fg: int, bg: int) -> bytes:
    """One line of text as ``LINE_H`` rows of ``width_px`` pixels (XRGB8888), glyphs scaled by SCALE."""
    f, b = px(fg) * SCALE, px(bg) * SCALE
    cols = [FONT.get(ch, FONT["?"]) for ch in text.upper()[:width_px // GLYPH_W]]
    rows = []
    for r in range(7):
        row = b"".join(b"".join(f if c[k] >> r & 1 else b for k in range(5)) + b for c in cols)
        row += px(bg) * (width_px - len(row) // 4)
        rows += [row] * SCALE
    rows += [px(bg) * width_px] * (LINE_H - GLYPH_H)
    return b"".join(rows)


def tile_x(linear: bytes, stride: int, height: int) -> bytes:
    """Linear rows -> the X-tiled layout (512-byte x 8-row tiles, row-major in a tile, no swizzle)."""
    per_row = stride // TILE_W
    out = bytearray(len(linear))
    for y in range(height):
        base = (y // TILE_H) * per_row * TILE_SIZE + (y % TILE_H) * TILE_W
        for t in range(per_row):
            out[base + t * TILE_SIZE:base + t * TILE_SIZE + TILE_W] = linear[y * stride + t * TILE_W:
                                                                              y * stride + (t + 1) * TILE_W]
    return bytes(out)


def detile_x(tiled: bytes, stride: int, height: int) -> bytes:
    """The X-tiled layout -> linear rows."""
    per_row = stride // TILE_W
    out = bytearray(len(tiled))
    for y in range(height):
        base = (y // TILE_H) * per_row * TILE_SIZE + (y % TILE_H) * TILE_W
        for t in range(per_row):
            out[y * stride + t * TILE_W:y * stride + (t + 1) * TILE_W] = tiled[base + t * TILE_SIZE:
                                                                                base + t * TILE_SIZE + TILE_W]
    return bytes(out)


# ------------------------------------------------------------------------------------------- frames
Op = tuple[Any, ...]  # ("fill", x1, y1, x2, y2, color) | ("copy", x1, y1, x2, y2, staging_row)


def pattern_frame(w: int, h: int, name: str) -> tuple[list[Op], list[tuple[str, int, int]]]:
    """Colour bars over a grey ramp, with a caption: (ops, text lines (text, fg, bg))."""
    bars = [0xFFFFFF, 0xFFFF00, 0x00FFFF, 0x00FF00, 0xFF00FF, 0xFF0000, 0x0000FF, 0x000000]
    ops: list[Op] = [("fill", 0, 0, w, h, 0x202020)]
    top = h * 2 // 3
    for i, c in enumerate(bars):
        ops.append(("fill", i * w // 8, 0, (i + 1) * w // 8, top, c))
    for i in range(8):
        g = i * 255 // 7
        ops.append(("fill", i * w // 8, top, (i + 1) * w // 8, h - LINE_H * 2, g << 16 | g << 8 | g))
    ops.append(("copy", 0, h - LINE_H * 2, w, h - LINE_H, 0))
    ops.append(("copy", 0, h - LINE_H, w, h, 1))
    return ops, [("GVTSIM TEST PATTERN", 0xFFFFFF, 0x202020), (name, 0xFFFF00, 0x202020)]


def vm_colour(name: str) -> int:
    """A dark background hue per VM, so the wall tells them apart."""
    hue = sum(name.encode()) * 37 % 6
    return [0x18306A, 0x146A3A, 0x6A2418, 0x5A186A, 0x186A66, 0x6A5A18][hue]


def animated_frame(w: int, h: int, name: str, workloads: int, frame: int, now: float
                   ) -> tuple[list[Op], list[tuple[str, int, int]]]:
    """The per-VM frame: name, verified workload count, clock, and a marker that moves every frame."""
    bg = vm_colour(name)
    ops: list[Op] = [("fill", 0, 0, w, h, bg), ("fill", 0, 0, w, LINE_H + 16, 0x101010)]
    ops.append(("copy", 0, 8, w, 8 + LINE_H, 0))
    for i in range(3):
        y = 120 + i * (LINE_H + 24)
        ops.append(("copy", 0, y, w, y + LINE_H, 1 + i))
    span = w - 96
    pos = (frame * 24) % (2 * span)
    x = pos if pos < span else 2 * span - pos
    ops.append(("fill", 0, h - 120, w, h - 40, 0x000000))
    ops.append(("fill", x, h - 112, x + 96, h - 48, 0xFFD000))
    sec = int(now) % 60
    ops.append(("fill", 0, h - 32, w * (sec + 1) // 60, h - 16, 0x40FF40))
    clock = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 10) % 10}"
    return ops, [(f"GVTSIM  {name}", 0xFFFFFF, 0x101010), (f"WORKLOADS {workloads}", 0xFFFFFF, bg),
                 (f"CLOCK {clock}", 0xFFFFFF, bg), (f"FRAME {frame}", 0xC0C0C0, bg)]


@dataclass
class Framebuffer:
    """A framebuffer object: its BO and layout."""

    bo: Bo
    stride: int
    tiled: bool


@dataclass
class DisplayState:
    """What the display has done so far (reported in the VM's summary)."""

    mode: Mode | None = None
    edid: bytes = b""
    frames_drawn: int = 0
    frames_verified: int = 0
    frames_failed: int = 0
    flips: int = 0
    flip_wait_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    shown: int = 0  # index of the framebuffer on screen
    expected: bytes = b""  # the linear XRGB8888 image of the framebuffer on screen (the guest's own copy)


class GuestDisplay:
    """Pipe A + the primary plane of one VM's vGPU, driven by the guest driver."""

    ENGINE = "bcs"  # the blitter engine runs XY_* blits

    def __init__(self, drv: "VgpuDriver", name: str, tiling: str = "linear", vcpu: int = 0) -> None:
        self.drv = drv
        self.name = name
        self.tiled = tiling == "x"
        self.vcpu = vcpu
        self.st = DisplayState()
        self.fbs: list[Framebuffer] = []
        self.staging: Bo | None = None
        self.batch: Bo | None = None
        self.flip_pending = False  # PLANE_SURF written, its flip-done interrupt not yet seen
        self.flip_done = Signal()
        self.pipe_irqs = 0
        self.pending_expected = b""  # the image of the framebuffer just drawn, shown once its flip is done

    def rd(self, off: int) -> Gen[int]:
        return (yield from self.drv.rd(off, vcpu=self.vcpu))

    def wr(self, off: int, value: int) -> Gen[None]:
        yield from self.drv.wr(off, value, vcpu=self.vcpu)

    # --------------------------------------------------------------------------------------- AUX
    def aux(self, header: bytes, size: int) -> Gen[bytes]:
        """One AUX transaction: request bytes into DATA1.., CTL with SEND_BUSY and the size, the reply back
        (intel_dp_aux_xfer). Raises DisplayError on a timeout."""
        for i in range(0, len(header), 4):
            yield from self.wr(DP_AUX_CH_CTL_D + 4 + i, int.from_bytes(header[i:i + 4].ljust(4, b"\0"), "big"))
        yield from self.wr(DP_AUX_CH_CTL_D, DP_AUX_CH_CTL_SEND_BUSY | size << DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT)
        status = yield from self.rd(DP_AUX_CH_CTL_D)
        if status & DP_AUX_CH_CTL_TIME_OUT_ERROR or not status & DP_AUX_CH_CTL_DONE:
            raise DisplayError(f"DP AUX timed out (status {status:#x})")
        n = (status & DP_AUX_CH_CTL_MESSAGE_SIZE_MASK) >> DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT
        out = b""
        for i in range(0, n, 4):
            out += ((yield from self.rd(DP_AUX_CH_CTL_D + 4 + i))).to_bytes(4, "big")
        yield from self.wr(DP_AUX_CH_CTL_D, status)  # clear the sticky done bit
        return out[:n]

    def dpcd_read(self, addr: int, n: int) -> Gen[bytes]:
        header = bytes([DP_AUX_NATIVE_READ << 4 | addr >> 16, addr >> 8 & 0xFF, addr & 0xFF, n - 1])
        reply = yield from self.aux(header, 4)
        if not reply or reply[0] & 0xF0:
            raise DisplayError(f"DPCD read at {addr:#x} not acknowledged")
        return reply[1:]

    def dpcd_write(self, addr: int, data: bytes) -> Gen[None]:
        header = bytes([DP_AUX_NATIVE_WRITE << 4 | addr >> 16, addr >> 8 & 0xFF, addr & 0xFF, len(data) - 1]) + data
        reply = yield from self.aux(header, len(header))
        if not reply or reply[0] & 0xF0:
            raise DisplayError(f"DPCD write at {addr:#x} not acknowledged")

    def read_edid(self) -> Gen[bytes]:
        """drm_do_get_edid over the DDC-on-AUX adapter: start at 0x50 with MOT, 128 one-byte reads, stop."""
        mot = (DP_AUX_I2C_READ | DP_AUX_I2C_MOT) << 4
        yield from self.aux(bytes([mot, 0, DDC_ADDR]), 3)
        out = bytearray()
        for _ in range(128):
            reply = yield from self.aux(bytes([mot, 0, DDC_ADDR, 0]), 4)
            if len(reply) < 2 or reply[0] & 0xF0:
                raise DisplayError("EDID read over AUX not acknowledged")
            out.append(reply[1])
        yield from self.aux(bytes([DP_AUX_I2C_READ << 4, 0, DDC_ADDR]), 3)
        return bytes(out)

    # ------------------------------------------------------------------------------------- modeset
    def modeset(self) -> Gen[None]:
        """The i915 order (module docstring, steps 1-5). Raises DisplayError."""
        if not (yield from self.rd(SFUSE_STRAP)) & SFUSE_STRAP_DDID_DETECTED or \
                not (yield from self.rd(SDEISR)) & SDE_PORTD_HOTPLUG_CPT:
            raise DisplayError("no monitor on DDI D")
        caps = yield from self.dpcd_read(0x000, 15)
        lanes = caps[2] & 0x1F
        self.st.edid = yield from self.read_edid()
        mode = parse_edid(self.st.edid)
        self.st.mode = mode
        gem = self.drv.gem
        assert gem is not None
        stride = mode.width * 4
        if self.tiled:
            stride = -(-stride // TILE_W) * TILE_W
        rows = -(-mode.height // TILE_H) * TILE_H if self.tiled else mode.height
        self.fbs = []
        for _ in range(2):
            self.fbs.append(Framebuffer((yield from gem.create(stride * rows)), stride, self.tiled))
        self.staging = yield from gem.create(mode.width * 4 * LINE_H * 4)
        self.batch = yield from gem.create(4096)
        # link training (intel_dp_start_link_train): link rate / lane count, pattern 1, status, pattern off
        yield from self.dpcd_write(0x100, bytes([0x06, 0x80 | lanes]))
        yield from self.dpcd_write(0x102, bytes([0x21]))
        status = yield from self.dpcd_read(0x202, 3)
        if status[0] & 0x11 != 0x11:
            raise DisplayError(f"link training failed: lane status {status.hex()}")
        yield from self.dpcd_write(0x102, bytes([0x00]))
        # draw the first frame before it is shown
        yield from self.draw(0, *pattern_frame(mode.width, mode.height, self.name))
        # the pipe: DDI buffer, transcoder timings, link M/N, DDI function, TRANSCONF
        yield from self.wr(DDI_BUF_CTL_D, DDI_BUF_CTL_ENABLE)
        yield from self.wr(HTOTAL_A, (mode.htotal - 1) << 16 | (mode.width - 1))
        yield from self.wr(HBLANK_A, (mode.htotal - 1) << 16 | (mode.width - 1))
        yield from self.wr(HSYNC_A, (mode.hsync_end - 1) << 16 | (mode.hsync_start - 1))
        yield from self.wr(VTOTAL_A, (mode.vtotal - 1) << 16 | (mode.height - 1))
        yield from self.wr(VBLANK_A, (mode.vtotal - 1) << 16 | (mode.height - 1))
        yield from self.wr(VSYNC_A, (mode.vsync_end - 1) << 16 | (mode.vsync_start - 1))
        yield from self.wr(PIPESRC_A, (mode.width - 1) << 16 | (mode.height - 1))
        yield from self.wr(PIPE_LINK_M1_A, round(mode.clock_khz * LINK_N / DP_LINK_SYMBOL_KHZ))
        yield from self.wr(PIPE_LINK_N1_A, LINK_N)
        yield from self.wr(TRANS_DDI_FUNC_CTL_A, TRANS_DDI_DP_D_SST)
        yield from self.wr(TRANSCONF_A, TRANSCONF_ENABLE)
        # flip-done interrupts of pipe A (vblank stays masked: nobody waits for it)
        yield from self.wr(DE_PIPE_A_IIR, 0xFFFF_FFFF)
        yield from self.wr(DE_PIPE_A_IER, PIPE_A_FLIP_DONE)
        yield from self.wr(DE_PIPE_A_IMR, 0xFFFF_FFFF & ~PIPE_A_FLIP_DONE)
        # the plane: stride (64-byte units linear, tiles X), position, size, control, then the surface
        fb0 = self.fbs[0]
        yield from self.wr(PLANE_STRIDE_1_A, fb0.stride // (TILE_W if self.tiled else 64))
        yield from self.wr(PLANE_POS_1_A, 0)
        yield from self.wr(PLANE_SIZE_1_A, (mode.height - 1) << 16 | (mode.width - 1))
        yield from self.wr(PLANE_CTL_1_A, PLANE_CTL_ENABLE | PLANE_CTL_FORMAT_XRGB_8888
                           | (PLANE_CTL_TILED_X if self.tiled else 0))
        yield from self.flip(0)

    # ------------------------------------------------------------------------------------- drawing
    def draw(self, index: int, ops: list[Op], lines: list[tuple[str, int, int]]) -> Gen[None]:
        """Draw ``ops`` into framebuffer ``index`` with the blitter, then verify it in guest RAM against the
        image computed here. Raises DriverError (a GPU hang) or counts a verification failure."""
        assert self.st.mode is not None and self.staging is not None and self.batch is not None
        w, h = self.st.mode.width, self.st.mode.height
        m = self.drv.machine
        fbo = self.fbs[index]
        staging_rows = [render_text(t, w, fg, bg) for t, fg, bg in lines]
        yield from m.write_mem(self.staging.gpa, b"".join(staging_rows), self.vcpu)
        pitch_field = fbo.stride // 4 if fbo.tiled else fbo.stride
        body: list[int] = []
        expected = bytearray(fbo.stride * h)
        for op in ops:
            kind, x1, y1, x2, y2, arg = op
            if kind == "fill":
                cmd = cmds.xy_color_blt(fbo.bo.gm, pitch_field, x1, y1, x2, y2, arg)
                row = px(arg) * (x2 - x1)
                for y in range(y1, y2):
                    expected[y * fbo.stride + 4 * x1:y * fbo.stride + 4 * x2] = row
            else:
                src = self.staging.gm + arg * w * 4 * LINE_H
                cmd = cmds.xy_src_copy_blt(fbo.bo.gm, pitch_field, x1, y1, x2, y2, src, w * 4)
                text = staging_rows[arg]
                for i, y in enumerate(range(y1, y2)):
                    row = y * fbo.stride
                    expected[row + 4 * x1:row + 4 * x2] = text[i * w * 4:i * w * 4 + 4 * (x2 - x1)]
            if fbo.tiled:
                cmd[0] |= XY_DST_TILED
            body += cmd
        yield from m.write_mem(self.batch.gpa, cmds.to_bytes(body + [cmds.MI_BATCH_BUFFER_END]), self.vcpu)
        yield from self.drv.submit(self.ENGINE, cmds.batch_buffer_start(self.batch.gm) + [cmds.MI_USER_INTERRUPT],
                                   vcpu=self.vcpu, wait_user_irq=True)
        self.st.frames_drawn += 1
        got = m.read_mem(fbo.bo.gpa, fbo.bo.size)[:fbo.stride * (-(-h // TILE_H) * TILE_H if fbo.tiled else h)]
        if fbo.tiled:
            got = detile_x(got, fbo.stride, -(-h // TILE_H) * TILE_H)
        got = got[:fbo.stride * h]
        if got != bytes(expected):
            bad = next(i for i in range(len(expected)) if got[i] != expected[i])
            reason = f"frame {self.st.frames_drawn} wrong at pixel ({bad % fbo.stride // 4}, {bad // fbo.stride})"
            self.st.frames_failed += 1
            if len(self.st.failures) < 20:
                self.st.failures.append(reason)
        else:
            self.st.frames_verified += 1
        self.pending_expected = bytes(expected)

    def flip(self, index: int, timeout: float = 2.0) -> Gen[None]:
        """Write PLANE_SURF and wait for the flip-done interrupt (raised by the host at the next vblank)."""
        rt = self.drv.machine.rt
        self.flip_pending = True  # before the write: the flip-done interrupt may come in before it returns
        t0 = rt.now
        yield from self.wr(PLANE_SURF_1_A, self.fbs[index].bo.gm)
        try:
            if not (yield from wait_until(self.flip_done, lambda: not self.flip_pending, rt.now + timeout)):
                raise DisplayError(f"flip to framebuffer {index} not done in {timeout}s")
        finally:
            self.flip_pending = False
        self.st.flip_wait_ms.append((rt.now - t0) * 1000)
        del self.st.flip_wait_ms[:-256]
        self.st.flips += 1
        self.st.shown = index
        self.st.expected = self.pending_expected

    def on_pipe_irq(self) -> Gen[None]:
        """Called by the driver's MSI handler when the master register shows DE pipe A: ack its IIR and
        complete a waiting flip."""
        iir = yield from self.rd(DE_PIPE_A_IIR)
        if not iir:
            return
        yield from self.wr(DE_PIPE_A_IIR, iir)
        self.pipe_irqs += 1
        if iir & PIPE_A_FLIP_DONE and self.flip_pending:
            self.flip_pending = False
            self.flip_done.fire()

    # ---------------------------------------------------------------------------------------- loop
    def run(self, workloads: Callable[[], int], fps: float = 4.0, frames: int = 0) -> Gen[None]:
        """Draw and flip animated frames at ``fps`` (the first one after the test pattern), ``frames`` of
        them (0: until cancelled). Pacing is a frame timer, not a synchronisation: each flip itself waits
        for its flip-done interrupt."""
        assert self.st.mode is not None
        w, h = self.st.mode.width, self.st.mode.height
        period = 1.0 / fps if fps > 0 else 0.0
        n = 0
        rt = self.drv.machine.rt
        next_t = rt.now
        while frames == 0 or n < frames:
            n += 1
            back = 1 - self.st.shown
            yield from self.draw(back, *animated_frame(w, h, self.name, workloads(), n, rt.now + rt.wall_offset))
            yield from self.flip(back)
            next_t += period
            if next_t > rt.now:
                yield from sleep_until(next_t)
            else:
                next_t = rt.now

    def summary(self) -> dict[str, Any]:
        st = self.st
        waits = sorted(st.flip_wait_ms)
        return {"mode": f"{st.mode.width}x{st.mode.height}@{st.mode.refresh_hz:.2f}" if st.mode else "",
                "tiling": "x" if self.tiled else "linear", "frames_drawn": st.frames_drawn,
                "frames_verified": st.frames_verified, "frames_failed": st.frames_failed, "flips": st.flips,
                "flip_wait_ms_p50": round(waits[len(waits) // 2], 2) if waits else 0.0,
                "failures": st.failures[:5]}
