"""The guest driver's display helpers: the EDID's preferred mode, its checksum, the X-tile layout it draws
into, and the font rows (services/guest/display.py)."""

from __future__ import annotations

import pytest

from gvtsim.services.guest import display as gd
from gvtsim.services.gvt import edid as host_edid
from gvtsim.services.gvt import fb_decoder as fb


def test_preferred_mode_of_gvts_edid_is_1024x768_at_60() -> None:
    mode = gd.parse_edid(host_edid.VIRTUAL_DP_MONITOR_EDID_1024_768)
    assert (mode.width, mode.height, mode.clock_khz, mode.htotal, mode.vtotal) == (1024, 768, 65000, 1344, 806)
    assert mode.refresh_hz == pytest.approx(60.004, abs=1e-3)


def test_a_detailed_timing_wins_over_established_ones() -> None:
    edid = bytearray(host_edid.VIRTUAL_DP_MONITOR_EDID_1024_768)
    # 1280x720@60 CEA: 74.25 MHz, h 1280+370 (sync 110+40), v 720+30 (sync 5+5)
    edid[54:72] = bytes([0x01, 0x1D, 0x00, 0x72, 0x51, 0xD0, 0x1E, 0x20, 0x6E, 0x28, 0x55, 0x00,
                         0, 0, 0, 0, 0, 0x1E])
    edid[127] = (-sum(edid[:127])) % 256
    mode = gd.parse_edid(bytes(edid))
    assert (mode.width, mode.height, mode.clock_khz, mode.htotal, mode.vtotal) == (1280, 720, 74250, 1650, 750)
    assert mode.hsync_start == 1390 and mode.vsync_start == 725


def test_bad_checksum_or_header_is_refused() -> None:
    edid = bytearray(host_edid.VIRTUAL_DP_MONITOR_EDID_1024_768)
    edid[20] ^= 1
    with pytest.raises(gd.DisplayError, match="checksum"):
        gd.parse_edid(bytes(edid))
    with pytest.raises(gd.DisplayError, match="header"):
        gd.parse_edid(bytes(128))


def test_guest_tiling_matches_the_host_decoder() -> None:
    """Written separately from the host's fb_decoder: both must agree on the X-tile layout."""
    stride, h = 2048, 16
    linear = bytes((i * 7 + i // 2048) & 0xFF for i in range(stride * h))
    tiled = gd.tile_x(linear, stride, h)
    assert tiled == fb.tile_x(linear, stride, h)
    assert gd.detile_x(tiled, stride, h) == linear == fb.detile_x(tiled, stride, h)


def test_text_rows_have_the_line_size_and_use_both_colours() -> None:
    rows = gd.render_text("VM0 12:34", 320, 0xFFFFFF, 0x000000)
    assert len(rows) == 320 * 4 * gd.LINE_H
    pixels = {rows[i:i + 4] for i in range(0, len(rows), 4)}
    assert pixels == {gd.px(0xFFFFFF), gd.px(0x000000)}
    assert set(gd.FONT) >= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:.- ")
