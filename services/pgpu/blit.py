"""The 2D blitter: XY_COLOR_BLT (fill) and XY_SRC_COPY_BLT (copy) on linear surfaces.

Field layout (gen8, i915 intel_gpu_commands.h and the BLT command reference):
* BR13: bits 15:0 destination pitch in bytes (signed), bits 23:16 raster operation, bits 25:24 colour depth
  (0 = 8 bpp, 1 = 16 bpp 565, 2 = 16 bpp 1555, 3 = 32 bpp);
* BR22 / BR23: destination top-left / bottom-right (exclusive) as ``y << 16 | x`` in pixels;
* header bits 21:20 (32 bpp): BLT_WRITE_A (2 << 20) and BLT_WRITE_RGB (1 << 20) byte-write enables;
  header bit 11: destination tiled, bit 15: source tiled (XY_DST_TILED / XY_SRC_TILED): the surface is X-tiled
  (4 KiB tiles of 512 bytes x 8 rows, no bit-6 swizzle on gen9) and its pitch field counts dwords.
Addresses are graphics addresses, translated page by page through the context's address space.
"""

from __future__ import annotations

from collections.abc import Callable

from ...hardware.display import TILE_SIZE, TILE_X_HEIGHT, TILE_X_WIDTH
from ...hardware.opcodes import (
    BLT_BPP,
    BLT_WRITE_A,
    BLT_WRITE_RGB,
    ROP_BLACKNESS,
    ROP_COPY,
    ROP_PATCOPY,
    ROP_WHITENESS,
    XY_DST_TILED,
    XY_SRC_TILED,
)
from .dma import Dma


class BlitError(ValueError):
    """A blit the emulator refuses (tiling, unsupported ROP)."""


def _signed16(v: int) -> int:
    v &= 0xFFFF
    return v - 0x10000 if v & 0x8000 else v


def _rect(tl: int, br: int) -> tuple[int, int, int, int]:
    return tl & 0xFFFF, tl >> 16 & 0xFFFF, br & 0xFFFF, br >> 16 & 0xFFFF


def _mask_bytes(hdr: int, bpp: int) -> list[int] | None:
    """Byte lanes (0..3) written per 32-bit pixel, or None when every byte is written."""
    if bpp != 4:
        return None
    lanes = ([0, 1, 2] if hdr & BLT_WRITE_RGB else []) + ([3] if hdr & BLT_WRITE_A else [])
    return None if len(lanes) == 4 else lanes


def _put_row(dma: Dma, gma: int, row: bytes, lanes: list[int] | None) -> None:
    if lanes is None:
        dma.write(gma, row)
        return
    if not lanes:
        return
    cur = bytearray(dma.read(gma, len(row)))
    for lane in lanes:
        cur[lane::4] = row[lane::4]
    dma.write(gma, cur)


#: colour-fill ROPs: (colour bytes of one pixel) -> pixel bytes
FILL_ROPS: dict[int, Callable[[bytes], bytes]] = {
    ROP_PATCOPY: lambda color: color,
    ROP_BLACKNESS: lambda color: bytes(len(color)),
    ROP_WHITENESS: lambda color: b"\xff" * len(color),
}
#: copy ROPs: (source row) -> destination row
COPY_ROPS: dict[int, Callable[[bytes], bytes]] = {
    ROP_COPY: lambda src: src,
    ROP_BLACKNESS: lambda src: bytes(len(src)),
    ROP_WHITENESS: lambda src: b"\xff" * len(src),
}


def _x_tiled(base: int, pitch: int, x_bytes: int, y: int) -> int:
    """Graphics address of byte (x_bytes, y) of an X-tiled surface with ``pitch`` bytes per row."""
    return base + ((y // TILE_X_HEIGHT) * (pitch // TILE_X_WIDTH) + x_bytes // TILE_X_WIDTH) * TILE_SIZE \
        + (y % TILE_X_HEIGHT) * TILE_X_WIDTH + x_bytes % TILE_X_WIDTH


def _spans(base: int, pitch: int, tiled: bool, x_bytes: int, y: int, n: int) -> list[tuple[int, int, int]]:
    """(graphics address, offset in the row piece, length) runs covering ``n`` bytes of row ``y`` from
    ``x_bytes``: one run when linear, one per 512-byte tile column when X-tiled."""
    if not tiled:
        return [(base + y * pitch + x_bytes, 0, n)]
    out, done = [], 0
    while done < n:
        xb = x_bytes + done
        k = min(n - done, TILE_X_WIDTH - xb % TILE_X_WIDTH)
        out.append((_x_tiled(base, pitch, xb, y), done, k))
        done += k
    return out


def _tiled_pitch(raw: int, tiled: bool) -> int:
    pitch = _signed16(raw)
    if tiled:
        pitch *= 4  # the pitch of a tiled surface is in dwords
        if pitch <= 0 or pitch % TILE_X_WIDTH:
            raise BlitError(f"X-tiled pitch {pitch} is not a positive multiple of 512 bytes")
    return pitch


def color_blt(dma: Dma, dws: list[int]) -> int:
    """XY_COLOR_BLT (7 dwords): fill the destination rectangle. Returns bytes written."""
    hdr, br13, br22, br23, dst_lo, dst_hi, color = dws[:7]
    tiled = bool(hdr & XY_DST_TILED)
    rop = br13 >> 16 & 0xFF
    if rop not in FILL_ROPS:
        raise BlitError(f"XY_COLOR_BLT raster operation {rop:#x} not supported")
    bpp = BLT_BPP[br13 >> 24 & 0x3]
    pitch = _tiled_pitch(br13, tiled)
    x1, y1, x2, y2 = _rect(br22, br23)
    if x2 <= x1 or y2 <= y1:
        return 0
    dst = (dst_hi & 0xFFFF) << 32 | dst_lo
    row = FILL_ROPS[rop](color.to_bytes(4, "little")[:bpp]) * (x2 - x1)
    lanes = _mask_bytes(hdr, bpp)
    for y in range(y1, y2):
        for gma, at, n in _spans(dst, pitch, tiled, x1 * bpp, y, len(row)):
            _put_row(dma, gma, row[at:at + n], lanes)
    return len(row) * (y2 - y1)


def src_copy_blt(dma: Dma, dws: list[int]) -> int:
    """XY_SRC_COPY_BLT (10 dwords): copy a rectangle. The whole source is read before the first write, so
    overlapping rectangles (scrolling) copy correctly. Returns bytes moved (read + written)."""
    hdr, br13, br22, br23, dst_lo, dst_hi, br26, br11, src_lo, src_hi = dws[:10]
    dst_tiled, src_tiled = bool(hdr & XY_DST_TILED), bool(hdr & XY_SRC_TILED)
    rop = br13 >> 16 & 0xFF
    if rop not in COPY_ROPS:
        raise BlitError(f"XY_SRC_COPY_BLT raster operation {rop:#x} not supported")
    bpp = BLT_BPP[br13 >> 24 & 0x3]
    dst_pitch, src_pitch = _tiled_pitch(br13, dst_tiled), _tiled_pitch(br11, src_tiled)
    x1, y1, x2, y2 = _rect(br22, br23)
    if x2 <= x1 or y2 <= y1:
        return 0
    sx, sy = br26 & 0xFFFF, br26 >> 16 & 0xFFFF
    dst = (dst_hi & 0xFFFF) << 32 | dst_lo
    src = (src_hi & 0xFFFF) << 32 | src_lo
    width = (x2 - x1) * bpp
    rows = [b"".join(dma.read(gma, n) for gma, _, n in _spans(src, src_pitch, src_tiled, sx * bpp, sy + i, width))
            for i in range(y2 - y1)]
    op = COPY_ROPS[rop]
    lanes = _mask_bytes(hdr, bpp)
    for i, row in enumerate(rows):
        out = op(row)
        for gma, at, n in _spans(dst, dst_pitch, dst_tiled, x1 * bpp, y1 + i, width):
            _put_row(dma, gma, out[at:at + n], lanes)
    return 2 * width * (y2 - y1)
