"""Display virtualization in the GVT core: vblank timers on a fake clock, EDID over GMBUS and DP AUX, page
flips and the plane query, X-tiled decode (display.c, edid.c, fb_decoder.c, dmabuf.c)."""

from __future__ import annotations

import random

import pytest
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.services.gvt import display as dpy
from gvtsim.services.gvt import edid
from gvtsim.services.gvt import fb_decoder as fb
from gvtsim.services.gvt import interrupt as irq
from gvtsim.protocol.errors import Refusal
from gvtsim.hardware import display as hwd

PIPE_A_IIR = irq.GROUP_BY_NAME["DE_PIPE_A"].base + irq.IIR
PIPE_A_IMR = irq.GROUP_BY_NAME["DE_PIPE_A"].base + irq.IMR
PIPE_A_IER = irq.GROUP_BY_NAME["DE_PIPE_A"].base + irq.IER

# VESA DMT 1024x768@60: 65 MHz, htotal 1344, vtotal 806 -> 60.004 Hz
MODE = dict(hactive=1024, htotal=1344, vactive=768, vtotal=806, clock_khz=65000)


def setup(vm: int = 3):  # type: ignore[no-untyped-def]
    gvt = make_gvt()
    v = create(gvt, vm)
    program_bar0(gvt, v)
    gvt.drain_effects()
    return gvt, v


def program_mode(gvt, v, pipe: int = 0, mode: dict = MODE) -> None:  # type: ignore[no-untyped-def]
    """The guest's modeset of the transcoder (timings, link M/N for the pixel clock), then TRANSCONF."""
    r = lambda base: dpy.pipe_reg(base, pipe)  # noqa: E731
    wr(gvt, v, r(dpy.HTOTAL_BASE), (mode["htotal"] - 1) << 16 | (mode["hactive"] - 1))
    wr(gvt, v, r(dpy.VTOTAL_BASE), (mode["vtotal"] - 1) << 16 | (mode["vactive"] - 1))
    link_n = 0x80000
    wr(gvt, v, r(dpy.PIPE_LINK_M1_BASE), round(mode["clock_khz"] * link_n / dpy.DP_LINK_SYMBOL_KHZ))
    wr(gvt, v, r(dpy.PIPE_LINK_N1_BASE), link_n)


def enable_pipe(gvt, v, pipe: int = 0, now: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    gvt.scheduler.now = now
    wr(gvt, v, dpy.pipe_reg(dpy.TRANSCONF_BASE, pipe), dpy.TRANSCONF_ENABLE)


# ------------------------------------------------------------------------------------------- vblank
def test_no_pipe_enabled_no_timer() -> None:
    gvt, v = setup()
    assert gvt.next_deadline() is None
    program_mode(gvt, v)
    assert gvt.next_deadline() is None  # timings alone do not start anything


@pytest.mark.parametrize("mode", [MODE, dict(hactive=640, htotal=800, vactive=480, vtotal=525, clock_khz=25175)])
def test_vblank_rate_is_the_mode_refresh_within_2_percent_over_5s(mode: dict) -> None:
    gvt, v = setup()
    program_mode(gvt, v, mode=mode)
    wr(gvt, v, PIPE_A_IER, 1)  # vblank unmasked and enabled
    wr(gvt, v, PIPE_A_IMR, ~1 & 0xFFFF_FFFF)
    enable_pipe(gvt, v, now=100.0)
    expected_hz = mode["clock_khz"] * 1000 / (mode["htotal"] * mode["vtotal"])
    frm = dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0)
    start = rd(gvt, v, frm)
    # the shell's loop: sleep to the core's deadline, call on_timer (a little late each time, as a real loop)
    clock = 100.0
    interrupts = 0
    jitter = random.Random(7)
    while True:
        deadline = gvt.next_deadline()
        assert deadline is not None and deadline > clock
        clock = deadline + jitter.uniform(0, 0.002)
        if clock > 105.0:
            break
        gvt.on_timer(clock)
        if rd(gvt, v, PIPE_A_IIR) & 1:
            interrupts += 1
            wr(gvt, v, PIPE_A_IIR, 1)  # the guest acks
    frames = rd(gvt, v, frm) - start
    rate = frames / 5.0
    assert abs(rate - expected_hz) / expected_hz < 0.02, (rate, expected_hz)
    assert interrupts == frames  # one vblank interrupt per frame when the loop keeps up
    assert v.display.info()["pipes"]["A"]["refresh_hz"] == pytest.approx(expected_hz, rel=0.001)


def test_disabling_the_pipe_stops_its_timer_and_late_wakeups_still_count_frames() -> None:
    gvt, v = setup()
    program_mode(gvt, v)
    enable_pipe(gvt, v, now=0.0)
    assert gvt.next_deadline() == pytest.approx(1 / 60.004, rel=1e-3)
    assert gvt.on_timer(1.0) == 60  # one second late: 60 frames counted at once
    assert rd(gvt, v, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0)) == 60
    wr(gvt, v, dpy.pipe_reg(dpy.TRANSCONF_BASE, 0), 0)
    assert gvt.next_deadline() is None
    assert rd(gvt, v, dpy.pipe_reg(dpy.TRANSCONF_BASE, 0)) & dpy.TRANSCONF_STATE_ENABLE == 0


def test_frame_counter_is_read_only() -> None:
    gvt, v = setup()
    wr(gvt, v, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0), 1234)
    assert rd(gvt, v, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0)) == 0


# --------------------------------------------------------------------------------------------- EDID
def gmbus_read_edid(gvt, v, pin: int = edid.GMBUS_PIN_DPD) -> tuple[bytes, int]:  # type: ignore[no-untyped-def]
    """i915 gmbus_xfer_read: select the pin pair, a read cycle of 128 bytes from 0x50, GMBUS3 x 32."""
    wr(gvt, v, edid.PCH_GMBUS0, pin)
    status = rd(gvt, v, edid.PCH_GMBUS2)
    wr(gvt, v, edid.PCH_GMBUS1, edid.GMBUS_SW_RDY | (edid.NIDX_STOP << 25) | (128 << 16)
       | (edid.EDID_ADDR << 1) | edid.GMBUS_SLAVE_READ)
    out = bytearray()
    for _ in range(32):
        out += rd(gvt, v, edid.PCH_GMBUS3).to_bytes(4, "little")
    wr(gvt, v, edid.PCH_GMBUS0, 0)
    return bytes(out), status


def aux(gvt, v, header: bytes, size: int) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    """One AUX transaction on DDI D: header in DATA1 (big-endian), CTL with SEND_BUSY, the reply back."""
    ctl = edid.aux_ctl(dpy.PORT_D)
    for i in range(0, len(header), 4):
        wr(gvt, v, ctl + 4 + i, int.from_bytes(header[i:i + 4].ljust(4, b"\0"), "big"))
    wr(gvt, v, ctl, hwd.DP_AUX_CH_CTL_SEND_BUSY | (size << hwd.DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT))
    status = rd(gvt, v, ctl)
    n = (status & hwd.DP_AUX_CH_CTL_MESSAGE_SIZE_MASK) >> hwd.DP_AUX_CH_CTL_MESSAGE_SIZE_SHIFT
    data = b"".join(rd(gvt, v, ctl + 4 + i).to_bytes(4, "big") for i in range(0, 20, 4))[:n]
    return status, data


def aux_read_edid(gvt, v) -> bytes:  # type: ignore[no-untyped-def]
    """drm_dp_i2c_xfer as i915 drives it: address-only start (MOT), then 1-byte I2C reads, then stop."""
    i2c_read_mot = hwd.DP_AUX_I2C_READ | hwd.DP_AUX_I2C_MOT
    status, reply = aux(gvt, v, bytes([i2c_read_mot << 4, 0, edid.EDID_ADDR]), 3)
    assert status & hwd.DP_AUX_CH_CTL_DONE and reply == b"\x00"
    out = bytearray()
    for _ in range(edid.EDID_SIZE):
        status, reply = aux(gvt, v, bytes([i2c_read_mot << 4, 0, edid.EDID_ADDR, 0]), 4)
        assert reply[0] == hwd.DP_AUX_NATIVE_REPLY_ACK and len(reply) == 2
        out.append(reply[1])
    aux(gvt, v, bytes([hwd.DP_AUX_I2C_READ << 4, 0, edid.EDID_ADDR]), 3)  # stop
    return bytes(out)


def test_edid_over_gmbus_is_the_monitors_edid_with_a_valid_checksum() -> None:
    gvt, v = setup()
    data, status = gmbus_read_edid(gvt, v)
    assert status & edid.GMBUS_HW_RDY and not status & edid.GMBUS_SATOER
    assert data == v.display.monitor.edid == edid.VIRTUAL_DP_MONITOR_EDID_1024_768
    assert data[:8] == bytes([0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0])
    assert edid.checksum_ok(data)
    # again: the state machine went back to idle and a second read gives the same bytes
    assert gmbus_read_edid(gvt, v)[0] == data


def test_gmbus_on_a_pin_without_a_monitor_times_out() -> None:
    gvt, v = setup()
    data, status = gmbus_read_edid(gvt, v, pin=5)
    assert status & edid.GMBUS_SATOER
    assert data == bytes(128)


def test_edid_over_dp_aux_equals_the_monitors_edid_and_dpcd_reads() -> None:
    gvt, v = setup()
    data = aux_read_edid(gvt, v)
    assert data == v.display.monitor.edid and edid.checksum_ok(data)
    status, reply = aux(gvt, v, bytes([hwd.DP_AUX_NATIVE_READ << 4, 0x00, 0x00, 0x0A]), 4)  # DPCD 0..10
    assert reply[0] == hwd.DP_AUX_NATIVE_REPLY_ACK and reply[1:] == edid.DPCD_FIX_DATA
    status, reply = aux(gvt, v, bytes([hwd.DP_AUX_NATIVE_READ << 4, 0x02, 0x00, 0x00]), 4)  # SINK_COUNT
    assert reply == b"\x00\x01"


def test_dp_aux_link_training_and_out_of_range_dpcd() -> None:
    gvt, v = setup()
    status, reply = aux(gvt, v, bytes([hwd.DP_AUX_NATIVE_WRITE << 4, 0x01, 0x02, 0x00, 0x21]), 5)
    assert reply == b"\x00"
    _, lanes = aux(gvt, v, bytes([hwd.DP_AUX_NATIVE_READ << 4, 0x02, 0x02, 0x01]), 4)
    assert lanes[1:] == b"\x77\x77"  # CR + EQ done on all lanes
    _, bad = aux(gvt, v, bytes([(hwd.DP_AUX_NATIVE_READ << 4) | 0xF, 0xFF, 0xF0, 0x0F]), 4)
    assert bad[0] >> 4 == hwd.DP_AUX_NATIVE_REPLY_NACK
    assert gvt.counters["dpcd_read_out_of_range"] == 1
    assert not v.failsafe


def test_monitor_is_announced_and_hotplug_raises_the_pch_event() -> None:
    gvt, v = setup()
    assert rd(gvt, v, dpy.SDEISR) & dpy.SDE_PORTD_HOTPLUG_CPT
    assert rd(gvt, v, dpy.SFUSE_STRAP) & dpy.SFUSE_STRAP_DDID_DETECTED
    v.display.hotplug(False)
    assert not rd(gvt, v, dpy.SDEISR) & dpy.SDE_PORTD_HOTPLUG_CPT
    assert rd(gvt, v, dpy.SDEISR + irq.IIR) & dpy.SDE_PORTD_HOTPLUG_CPT  # SDEIIR latched it
    assert gmbus_read_edid(gvt, v)[1] & edid.GMBUS_SATOER  # nobody answers any more
    v.display.hotplug(True)
    assert gmbus_read_edid(gvt, v)[0] == edid.VIRTUAL_DP_MONITOR_EDID_1024_768


# ----------------------------------------------------------------------------------- planes, flips
def enable_plane(gvt, v, surf: int, tiling: int = fb.TILING_LINEAR, fmt: int = 0x4, w: int = 1024,  # type: ignore[no-untyped-def]
                 h: int = 768, pipe: int = 0) -> None:
    stride = w * 4
    units = stride // (fb.TILE_X_WIDTH if tiling == fb.TILING_X else 64)
    wr(gvt, v, fb.plane_reg(pipe, fb.PLANE_STRIDE_OFF), units)
    wr(gvt, v, fb.plane_reg(pipe, fb.PLANE_SIZE_OFF), (h - 1) << 16 | (w - 1))
    wr(gvt, v, fb.plane_reg(pipe, 0), fb.PLANE_CTL_ENABLE | fmt << 24 | tiling << 10)
    wr(gvt, v, fb.plane_reg(pipe, fb.PLANE_SURF_OFF), surf)


def test_a_flip_moves_the_generation_and_the_decoded_surface_and_flip_done_comes_on_vblank() -> None:
    gvt, v = setup()
    program_mode(gvt, v)
    wr(gvt, v, PIPE_A_IER, 1 << 3)  # PRIMARY_A_FLIP_DONE
    wr(gvt, v, PIPE_A_IMR, ~(1 << 3) & 0xFFFF_FFFF)
    enable_pipe(gvt, v, now=0.0)
    lo = v.resource.low_base
    enable_plane(gvt, v, lo + 0x10_0000)
    first = gvt.query_plane(3, "primary")
    assert not isinstance(first, Refusal)
    assert (first.enabled, first.format, first.width, first.height, first.stride, first.tiling) == \
        (True, "XRGB8888", 1024, 768, 4096, "linear")
    assert first.ggtt_addr == lo + 0x10_0000 and first.size == 4096 * 768
    gvt.on_timer(gvt.next_deadline())
    wr(gvt, v, PIPE_A_IIR, 0xFFFF_FFFF)
    wr(gvt, v, fb.plane_reg(0, fb.PLANE_SURF_OFF), lo + 0x40_0000)  # the flip
    second = gvt.query_plane(3, "primary")
    assert second.generation == first.generation + 1 and second.ggtt_addr == lo + 0x40_0000
    assert rd(gvt, v, PIPE_A_IIR) & (1 << 3) == 0  # not before the vblank
    gvt.on_timer(gvt.next_deadline())
    assert rd(gvt, v, PIPE_A_IIR) & (1 << 3)
    assert rd(gvt, v, fb.plane_reg(0, fb.PLANE_SURFLIVE_OFF)) == lo + 0x40_0000


def test_async_flip_completes_at_once_and_cursor_plane_decodes() -> None:
    gvt, v = setup()
    wr(gvt, v, PIPE_A_IER, 1 << 3)
    wr(gvt, v, PIPE_A_IMR, 0)
    wr(gvt, v, fb.plane_reg(0, 0), fb.PLANE_CTL_ENABLE | 0x4 << 24 | fb.PLANE_CTL_ASYNC_FLIP)
    wr(gvt, v, fb.plane_reg(0, fb.PLANE_SURF_OFF), v.resource.low_base)
    assert rd(gvt, v, PIPE_A_IIR) & (1 << 3)
    wr(gvt, v, fb.cursor_reg(0, fb.CURPOS_OFF), (0x8000 | 5) << 16 | 100)
    wr(gvt, v, fb.cursor_reg(0, fb.CURBASE_OFF), v.resource.low_base + 0x1000)
    wr(gvt, v, fb.cursor_reg(0, 0), 0x27)
    c = gvt.query_plane(3, "cursor")
    assert (c.enabled, c.width, c.height, c.x, c.y, c.ggtt_addr, c.generation) == \
        (True, 64, 64, 100, -5, v.resource.low_base + 0x1000, 1)


def test_unsupported_plane_format_is_refused_and_the_vgpu_stays_up() -> None:
    gvt, v = setup()
    wr(gvt, v, fb.plane_reg(0, 0), fb.PLANE_CTL_ENABLE | 0x0 << 24)  # YUV 4:2:2 packed
    r = gvt.query_plane(3, "primary")
    assert isinstance(r, Refusal) and "format" in r.reason
    assert isinstance(gvt.query_plane(99, "primary"), Refusal)
    assert not v.failsafe


def test_x_tiled_decode_of_a_known_pattern() -> None:
    """Each pixel holds its own (x, y): after detiling, pixel (x, y) must be at row y, column x; and the
    tiled byte layout is the X-tile one (512-byte x 8-row tiles, row-major)."""
    w, h = 256, 20  # 1024 bytes per row: 2 tiles per row, 3 rows of tiles (last one partial)
    stride = w * 4
    linear = b"".join(((y << 16) | x).to_bytes(4, "little") for y in range(h) for x in range(w))
    tiled = fb.tile_x(linear, stride, h)
    assert len(tiled) == 3 * 2 * fb.TILE_SIZE
    # pixel (130, 9): byte x 520 -> tile column 1, tile row 1, in-tile row 1, in-tile byte 8
    off = fb.x_tiled_offset(130 * 4, 9, stride)
    assert off == (1 * 2 + 1) * 4096 + 1 * 512 + 8
    assert int.from_bytes(tiled[off:off + 4], "little") == (9 << 16) | 130
    assert fb.detile_x(tiled, stride, h) == linear
    info = fb.PlaneInfo("primary", 0, True, "XRGB8888", 4, w, h, stride, "x", 0)
    rgb = fb.to_rgb(tiled, info)
    px = (9 * w + 130) * 3
    assert rgb[px:px + 3] == bytes([0x09, 0x00, 130])  # R = byte 2 (y low), G = byte 1, B = byte 0 (x)


def test_pixel_formats_convert_to_rgb() -> None:
    info = fb.PlaneInfo("primary", 0, True, "RGB565", 2, 2, 1, 64, "linear", 0)
    assert fb.to_rgb((0xF800).to_bytes(2, "little") + (0x07E0).to_bytes(2, "little") + bytes(60), info) == \
        bytes([255, 0, 0, 0, 255, 0])
    info = fb.PlaneInfo("primary", 0, True, "XBGR8888", 4, 1, 1, 64, "linear", 0)
    assert fb.to_rgb(bytes([1, 2, 3, 0]) + bytes(60), info) == bytes([1, 2, 3])
    info = fb.PlaneInfo("primary", 0, True, "XRGB2101010", 4, 1, 1, 64, "linear", 0)
    assert fb.to_rgb((0x3FF << 20).to_bytes(4, "little") + bytes(60), info) == bytes([255, 0, 0])


def test_framebuffer_read_goes_through_the_ggtt_to_machine_memory() -> None:
    class Mem:  # machine memory: frame n holds byte n & 0xFF
        def read(self, maddr: int, n: int) -> bytes:
            return bytes([(maddr >> 12) & 0xFF]) * n

    from test_gvt_fixtures import FakeMpt

    mpt = FakeMpt({0x100 + i: 0x700 + i for i in range(4)})
    gvt = make_gvt({3: mpt})
    v = create(gvt, 3)
    program_bar0(gvt, v)
    lo = v.resource.low_base
    for i in range(4):
        wr(gvt, v, 0x800000 + ((lo >> 12) + i) * 8, ((0x100 + i) << 12) | 1, 8)
    data = gvt.read_framebuffer(3, Mem(), lo, 0x800, 4096 * 2)
    assert data == bytes([0x00]) * 0x800 + bytes([0x01]) * 0x1000 + bytes([0x02]) * 0x800
    assert gvt.read_framebuffer(3, Mem(), lo + (16 << 12), 0, 4096) == bytes(4096)  # unbound: zeros
    outside = gvt.read_framebuffer(3, Mem(), 0, 0, 4096)  # the host's reserved GM, not this vGPU's
    assert isinstance(outside, Refusal) and outside.code.value == "bad_address"


def test_nonsense_timings_are_clamped_so_the_timer_cannot_spin() -> None:
    gvt, v = setup()
    wr(gvt, v, dpy.pipe_reg(dpy.HTOTAL_BASE, 0), 1 << 16)  # htotal 2
    wr(gvt, v, dpy.pipe_reg(dpy.VTOTAL_BASE, 0), 1 << 16)  # vtotal 2
    wr(gvt, v, dpy.pipe_reg(dpy.PIPE_LINK_M1_BASE, 0), 0xFFFFFF)
    wr(gvt, v, dpy.pipe_reg(dpy.PIPE_LINK_N1_BASE, 0), 1)
    enable_pipe(gvt, v, now=0.0)
    assert gvt.next_deadline() == pytest.approx(1 / 240)
    assert gvt.counters["display_refresh_clamped"] == 1
    assert gvt.on_timer(1.0) == 240


def test_oversized_or_short_stride_surfaces_are_refused() -> None:
    gvt, v = setup()
    wr(gvt, v, fb.plane_reg(0, fb.PLANE_STRIDE_OFF), 0x3FF)  # 1023 tiles of 512 bytes per row
    wr(gvt, v, fb.plane_reg(0, fb.PLANE_SIZE_OFF), 4095 << 16 | 8191)
    wr(gvt, v, fb.plane_reg(0, 0), fb.PLANE_CTL_ENABLE | 0x4 << 24 | fb.TILING_X << 10)
    r = gvt.query_plane(3, "primary")
    assert isinstance(r, Refusal) and "larger than" in r.reason
    wr(gvt, v, fb.plane_reg(0, fb.PLANE_STRIDE_OFF), 1)  # 64 bytes for 8192 pixels
    wr(gvt, v, fb.plane_reg(0, 0), fb.PLANE_CTL_ENABLE | 0x4 << 24)
    r = gvt.query_plane(3, "primary")
    assert isinstance(r, Refusal) and "stride" in r.reason
