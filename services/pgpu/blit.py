"""The 2D blitter: XY_COLOR_BLT (fill) and XY_SRC_COPY_BLT (copy) on linear surfaces.

Field layout (gen8, i915 intel_gpu_commands.h and the BLT command reference):
* BR13: bits 15:0 destination pitch in bytes (signed), bits 23:16 raster operation, bits 25:24 colour depth
  (0 = 8 bpp, 1 = 16 bpp 565, 2 = 16 bpp 1555, 3 = 32 bpp);
* BR22 / BR23: destination top-left / bottom-right (exclusive) as ``y << 16 | x`` in pixels;
* header bits 21:20 (32 bpp): BLT_WRITE_A (2 << 20) and BLT_WRITE_RGB (1 << 20) byte-write enables;
  header bit 11: destination tiled, bit 15: source tiled (tiling is not modelled: refused).
Addresses are graphics addresses, translated page by page through the context's address space.
"""

from __future__ import annotations

from collections.abc import Callable

from .dma import Dma

BPP_BY_DEPTH = {0: 1, 1: 2, 2: 2, 3: 4}
WRITE_RGB = 1 << 20
WRITE_A = 2 << 20
DST_TILED = 1 << 11
SRC_TILED = 1 << 15

ROP_PATCOPY = 0xF0
ROP_SRCCOPY = 0xCC
ROP_BLACKNESS = 0x00
ROP_WHITENESS = 0xFF


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
    lanes = ([0, 1, 2] if hdr & WRITE_RGB else []) + ([3] if hdr & WRITE_A else [])
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
    ROP_SRCCOPY: lambda src: src,
    ROP_BLACKNESS: lambda src: bytes(len(src)),
    ROP_WHITENESS: lambda src: b"\xff" * len(src),
}


def color_blt(dma: Dma, dws: list[int]) -> int:
    """XY_COLOR_BLT (7 dwords): fill the destination rectangle. Returns bytes written."""
    hdr, br13, br22, br23, dst_lo, dst_hi, color = dws[:7]
    if hdr & DST_TILED:
        raise BlitError("tiled destination not supported")
    rop = br13 >> 16 & 0xFF
    if rop not in FILL_ROPS:
        raise BlitError(f"XY_COLOR_BLT raster operation {rop:#x} not supported")
    bpp = BPP_BY_DEPTH[br13 >> 24 & 0x3]
    pitch = _signed16(br13)
    x1, y1, x2, y2 = _rect(br22, br23)
    if x2 <= x1 or y2 <= y1:
        return 0
    dst = (dst_hi & 0xFFFF) << 32 | dst_lo
    row = FILL_ROPS[rop](color.to_bytes(4, "little")[:bpp]) * (x2 - x1)
    lanes = _mask_bytes(hdr, bpp)
    for y in range(y1, y2):
        _put_row(dma, dst + y * pitch + x1 * bpp, row, lanes)
    return len(row) * (y2 - y1)


def src_copy_blt(dma: Dma, dws: list[int]) -> int:
    """XY_SRC_COPY_BLT (10 dwords): copy a rectangle. The whole source is read before the first write, so
    overlapping rectangles (scrolling) copy correctly. Returns bytes moved (read + written)."""
    hdr, br13, br22, br23, dst_lo, dst_hi, br26, br11, src_lo, src_hi = dws[:10]
    if hdr & (DST_TILED | SRC_TILED):
        raise BlitError("tiled surfaces not supported")
    rop = br13 >> 16 & 0xFF
    if rop not in COPY_ROPS:
        raise BlitError(f"XY_SRC_COPY_BLT raster operation {rop:#x} not supported")
    bpp = BPP_BY_DEPTH[br13 >> 24 & 0x3]
    dst_pitch, src_pitch = _signed16(br13), _signed16(br11)
    x1, y1, x2, y2 = _rect(br22, br23)
    if x2 <= x1 or y2 <= y1:
        return 0
    sx, sy = br26 & 0xFFFF, br26 >> 16 & 0xFFFF
    dst = (dst_hi & 0xFFFF) << 32 | dst_lo
    src = (src_hi & 0xFFFF) << 32 | src_lo
    width = (x2 - x1) * bpp
    rows = [dma.read(src + (sy + i) * src_pitch + sx * bpp, width) for i in range(y2 - y1)]
    op = COPY_ROPS[rop]
    lanes = _mask_bytes(hdr, bpp)
    for i, row in enumerate(rows):
        _put_row(dma, dst + (y1 + i) * dst_pitch + x1 * bpp, op(row), lanes)
    return 2 * width * (y2 - y1)
