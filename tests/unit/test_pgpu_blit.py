"""Blits are byte-exact against a pixel-by-pixel reference computed here."""

from __future__ import annotations

import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.pgpu import builder as b
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore

BPP = {0: 1, 1: 2, 2: 2, 3: 4}
PAGES = 13  # each surface spans 13 GM pages whose machine frames are not contiguous


def _run(tmp_dir, prepare):
    """Fresh GPU; ``prepare(layout) -> (ctx-commands, check)``; runs them on BCS, returns what check returns."""
    with MachineMemory(os.path.join(tmp_dir, "m.mem"), 16 << 20, create=True) as mem:
        core = PgpuCore(mem, PgpuConfig(gm_mb=32, aperture_mb=8, time_scale=0))
        lay = b.Layout(mem, next_mfn=mem.frames)
        ctx = lay.context("bcs", 1)
        cmds, check = prepare(lay)
        lay.emit(ctx, cmds)
        core.ggtt_write(lay.take_pending())
        core.submit("bcs", [ctx.desc], 0, 0.0)
        events = []
        while not events:
            events = [e for e in core.advance(0.0, "bcs") if e.kind != "user_interrupt"]
        assert events[0].kind == "ctx_complete", events[0]
        return check(lay)


def ref_fill(surface: bytearray, pitch: int, bpp: int, rect, color: int, lanes) -> None:
    x1, y1, x2, y2 = rect
    pixel = color.to_bytes(4, "little")[:bpp]
    for y in range(y1, y2):
        for x in range(x1, x2):
            for i in range(bpp):
                if lanes is None or i in lanes:
                    surface[y * pitch + x * bpp + i] = pixel[i]


def ref_copy(dst: bytearray, dpitch: int, src: bytes, spitch: int, bpp: int, rect, sx: int, sy: int) -> None:
    x1, y1, x2, y2 = rect
    for dy in range(y2 - y1):
        for dx in range(x2 - x1):
            for i in range(bpp):
                dst[(y1 + dy) * dpitch + (x1 + dx) * bpp + i] = src[(sy + dy) * spitch + (sx + dx) * bpp + i]


rects = st.tuples(st.integers(0, 40), st.integers(0, 20), st.integers(0, 40), st.integers(0, 20))


@settings(max_examples=25, deadline=None)
@given(depth=st.sampled_from([0, 1, 3]), pitch_px=st.integers(48, 300), rect=rects,
       color=st.integers(0, 0xFFFF_FFFF), write=st.sampled_from([1, 2, 3]), seed=st.integers(0, 1 << 30))
def test_color_fill_matches_reference(tmp_path_factory, depth, pitch_px, rect, color, write, seed) -> None:
    bpp = BPP[depth]
    pitch = pitch_px * bpp
    x1, y1, dx, dy = rect
    r = (x1, y1, min(x1 + dx, pitch_px), y1 + dy)
    size = PAGES * 4096
    initial = random.Random(seed).randbytes(size)
    lanes = None if bpp != 4 or write == 3 else ([0, 1, 2] if write == 1 else [3])

    def prepare(lay):
        surf = lay.gm(PAGES)
        lay.write(surf, initial)
        return b.xy_color_blt(surf, pitch, *r, color, depth=depth, write=write), lambda lay: lay.read(surf, size)

    got = _run(str(tmp_path_factory.mktemp("fill")), prepare)
    want = bytearray(initial)
    ref_fill(want, pitch, bpp, r, color, lanes)
    assert got == bytes(want)


@settings(max_examples=25, deadline=None)
@given(depth=st.sampled_from([0, 1, 3]), dpitch_px=st.integers(48, 256), spitch_px=st.integers(48, 256),
       rect=rects, src_xy=st.tuples(st.integers(0, 8), st.integers(0, 8)), seed=st.integers(0, 1 << 30))
def test_src_copy_matches_reference(tmp_path_factory, depth, dpitch_px, spitch_px, rect, src_xy, seed) -> None:
    bpp = BPP[depth]
    dpitch, spitch = dpitch_px * bpp, spitch_px * bpp
    x1, y1, dx, dy = rect
    r = (x1, y1, min(x1 + dx, dpitch_px, spitch_px - src_xy[0] + x1), y1 + dy)
    size = PAGES * 4096
    rnd = random.Random(seed)
    src_bytes, dst_bytes = rnd.randbytes(size), rnd.randbytes(size)

    def prepare(lay):
        src, dst = lay.gm(PAGES), lay.gm(PAGES)
        lay.write(src, src_bytes)
        lay.write(dst, dst_bytes)
        cmd = b.xy_src_copy_blt(dst, dpitch, *r, src, spitch, *src_xy, depth=depth)
        return cmd, lambda lay: (lay.read(src, size), lay.read(dst, size))

    got_src, got_dst = _run(str(tmp_path_factory.mktemp("copy")), prepare)
    want = bytearray(dst_bytes)
    ref_copy(want, dpitch, src_bytes, spitch, bpp, r, *src_xy)
    assert got_dst == bytes(want)
    assert got_src == src_bytes


def test_overlapping_copy_scrolls_like_memmove(tmp_path) -> None:
    pitch, rows = 64 * 4, 40
    initial = bytes(range(256)) * (pitch * rows // 256)

    def prepare(lay):
        surf = lay.gm(3)
        lay.write(surf, initial)
        # scroll down by 3 rows inside one surface: source rows 0..36 -> destination rows 3..39
        return (b.xy_src_copy_blt(surf, pitch, 0, 3, 64, rows, surf, pitch, 0, 0),
                lambda lay: lay.read(surf, pitch * rows))

    got = _run(str(tmp_path), prepare)
    assert got == initial[:3 * pitch] + initial[:(rows - 3) * pitch]


def test_x_tiled_fill_and_copy_land_in_x_tile_layout() -> None:
    """A fill into an X-tiled destination and a copy from a linear source into it: every pixel lands where
    the X-tile layout (512-byte x 8-row tiles) puts it; the pitch of a tiled surface counts dwords."""
    from gvtsim.services.gvt.fb_decoder import detile_x
    from gvtsim.hardware import cmds
    from gvtsim.hardware.opcodes import XY_DST_TILED
    from gvtsim.services.pgpu import blit

    class FlatDma:
        def __init__(self) -> None:
            self.mem = bytearray(1 << 20)

        def read(self, gma: int, n: int) -> bytes:
            return bytes(self.mem[gma:gma + n])

        def write(self, gma: int, data: bytes) -> None:
            self.mem[gma:gma + len(data)] = data

    dma = FlatDma()
    w, h, pitch = 256, 24, 1024  # 2 tiles per row, 3 tile rows
    dst, src = 0x10000, 0x80000
    fill = cmds.xy_color_blt(dst, pitch // 4, 0, 0, w, h, 0x11223344)
    fill[0] |= XY_DST_TILED
    blit.color_blt(dma, fill)
    pattern = b"".join(((y << 16) | x).to_bytes(4, "little") for y in range(10) for x in range(100))
    dma.write(src, pattern)
    copy = cmds.xy_src_copy_blt(dst, pitch // 4, 150, 5, 250, 15, src, 400)
    copy[0] |= XY_DST_TILED
    blit.src_copy_blt(dma, copy)
    linear = detile_x(dma.read(dst, 3 * 2 * 4096), pitch, h)
    for y in range(h):
        for x in range(w):
            got = int.from_bytes(linear[y * pitch + 4 * x:y * pitch + 4 * x + 4], "little")
            inside = 150 <= x < 250 and 5 <= y < 15
            assert got == (((y - 5) << 16) | (x - 150) if inside else 0x11223344), (x, y)
