"""Display engine registers and the X-tile layout (Linux drivers/gpu/drm/i915/i915_reg.h, SKL; the offsets
gvt/display.c and gvt/fb_decoder.c emulate and decode).

Pipe and transcoder registers are given for pipe A; pipe n's are ``PIPE_REG_STRIDE * n`` further (transcoder
X = pipe X for A..C). The monitor sits on DDI D (port D): its presence is SFUSE_STRAP's DDI D bit, its hotplug
line SDEISR's port D bit. An X tile is 512 bytes x 8 rows (4 KiB), with no bit-6 swizzle on gen9.
"""

from __future__ import annotations

# transcoder timings and pipe registers
HTOTAL_A, HBLANK_A, HSYNC_A = 0x60000, 0x60004, 0x60008
VTOTAL_A, VBLANK_A, VSYNC_A = 0x6000C, 0x60010, 0x60014
PIPESRC_A = 0x6001C
PIPE_DATA_M1_A, PIPE_DATA_N1_A = 0x60030, 0x60034
PIPE_LINK_M1_A, PIPE_LINK_N1_A = 0x60040, 0x60044
TRANS_DDI_FUNC_CTL_A = 0x60400
TRANS_DDI_FUNC_CTL_DP_D = (1 << 31) | (3 << 28) | (2 << 24)  # enable | port D | DP SST (bpc 8 = 0)
TRANSCONF_A = 0x70008
TRANSCONF_ENABLE = 1 << 31
TRANSCONF_STATE_ENABLE = 1 << 30
PIPE_FRMCOUNT_A = 0x70040  # PIPE_FRMCOUNT_G4X
PIPE_FLIPCOUNT_A = 0x70044  # PIPE_FLIPCOUNT_G4X
PIPE_REG_STRIDE = 0x1000

# the monitor's port and the PCH
SFUSE_STRAP, SFUSE_STRAP_DDID_DETECTED = 0xC2014, 1 << 0
SDEISR, SDE_PORTD_HOTPLUG_CPT = 0xC4000, 1 << 23
DDI_BUF_CTL_D, DDI_BUF_CTL_ENABLE = 0x64300, 1 << 31
DDI_BUF_IS_IDLE = 1 << 7
#: the DP link rate GVT sets up in DPLL0 (1.62 GHz): link M/N are against this symbol clock
#: (gvt/display.c vgpu_update_refresh_rate: dp_br)
DP_LINK_SYMBOL_KHZ = 324_000

# universal plane 1 of pipe A
PLANE_CTL_1_A = 0x70180
PLANE_STRIDE_OFF, PLANE_POS_OFF, PLANE_SIZE_OFF, PLANE_SURF_OFF, PLANE_OFFSET_OFF = 0x08, 0x0C, 0x10, 0x1C, 0x24
PLANE_STRIDE_1_A = PLANE_CTL_1_A + PLANE_STRIDE_OFF
PLANE_POS_1_A = PLANE_CTL_1_A + PLANE_POS_OFF
PLANE_SIZE_1_A = PLANE_CTL_1_A + PLANE_SIZE_OFF
PLANE_SURF_1_A = PLANE_CTL_1_A + PLANE_SURF_OFF
PLANE_CTL_ENABLE = 1 << 31
PLANE_CTL_FORMAT_SHIFT = 24
PLANE_CTL_FORMAT_XRGB_8888 = 0x4 << PLANE_CTL_FORMAT_SHIFT
PLANE_CTL_TILED_SHIFT = 10
PLANE_CTL_TILED_X = 1 << PLANE_CTL_TILED_SHIFT

# the X-tile layout (blitter XY_*_TILED surfaces and display planes)
TILE_X_WIDTH, TILE_X_HEIGHT = 512, 8  # bytes x rows of one X tile
TILE_SIZE = TILE_X_WIDTH * TILE_X_HEIGHT

# DP AUX (i915_reg.h DP_AUX_CH_CTL(aux) = 0x64010 + 0x100 * aux; SKL: A..D)
DP_AUX_CH_CTL_BASE = 0x64010
DP_AUX_CH_CTL_SEND_BUSY = 1 << 31
DP_AUX_CH_CTL_DONE = 1 << 30
DP_AUX_CH_CTL_INTERRUPT = 1 << 29
DP_AUX_CH_CTL_TIME_OUT_ERROR = 1 << 28
DP_AUX_CH_CTL_RECEIVE_ERROR = 1 << 25
DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT = 20
DP_AUX_CH_CTL_MESSAGE_SIZE_MASK = 0x1F << 20
# AUX request commands (drm_dp.h)
DP_AUX_I2C_WRITE = 0x0
DP_AUX_I2C_READ = 0x1
DP_AUX_I2C_MOT = 0x4
DP_AUX_NATIVE_WRITE = 0x8
DP_AUX_NATIVE_READ = 0x9
DP_AUX_NATIVE_REPLY_ACK = 0x0
DP_AUX_NATIVE_REPLY_NACK = 0x1
