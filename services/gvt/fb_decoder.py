"""Decoding a vGPU's primary and cursor planes from its virtual registers (Linux
drivers/gpu/drm/i915/gvt/fb_decoder.c: intel_vgpu_decode_primary_plane, intel_vgpu_decode_cursor_plane),
and turning a framebuffer's bytes into pixels.

SKL universal plane 1 of pipe P (i915 skl_universal_plane_regs.h, base 0x70180 + 0x1000 P):
* PLANE_CTL +0x00: bit 31 enable; bits 27:24 source format; bit 20 RGBX order (XBGR); bits 12:10 tiling
  (0 linear, 1 X, 4 Y, 5 Yf); bit 9 async flip;
* PLANE_STRIDE +0x08: the stride in 64-byte units for linear, in tiles (512 bytes) for X-tiled;
* PLANE_POS +0x0C, PLANE_SIZE +0x10 (height - 1 << 16 | width - 1), PLANE_SURF +0x1C (4 KiB-aligned GGTT
  address), PLANE_OFFSET +0x24.
Cursor of pipe P (0x70080 + 0x1000 P): CURCNTR mode bits 5:0 (0x27/0x22/0x23: 64/128/256 square ARGB),
CURBASE, CURPOS (x bits 15:0 and y bits 31:16, sign-magnitude: bit 15 / bit 31 is the sign).

X tiles (i915 "X-tiling", no bit-6 swizzle on gen9): 4 KiB tiles of 512 bytes x 8 rows, tile rows laid
out left to right, row-major inside a tile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ...hardware.display import (
    PLANE_CTL_ENABLE,
    PLANE_CTL_FORMAT_SHIFT,
    PLANE_CTL_TILED_SHIFT,
    PLANE_OFFSET_OFF,  # noqa: F401 (display.py maps the plane registers through fb.)
    PLANE_POS_OFF,
    PLANE_SIZE_OFF,
    PLANE_STRIDE_OFF,
    PLANE_SURF_OFF,
    TILE_SIZE,
    TILE_X_HEIGHT,
    TILE_X_WIDTH,
)
from ...hardware.display import PLANE_CTL_1_A as PLANE_CTL_BASE

if TYPE_CHECKING:
    from .vgpu import Vgpu

PLANE_SURFLIVE_OFF = 0x2C
CURCNTR_BASE = 0x70080
CURBASE_OFF, CURPOS_OFF = 0x04, 0x08
PIPE_STRIDE = 0x1000

PLANE_CTL_FORMAT_MASK = 0xF << 24
PLANE_CTL_ORDER_RGBX = 1 << 20
PLANE_CTL_TILED_MASK = 0x7 << 10
PLANE_CTL_ASYNC_FLIP = 1 << 9
TILING_LINEAR, TILING_X, TILING_Y, TILING_YF = 0, 1, 4, 5
TILING_NAMES = {TILING_LINEAR: "linear", TILING_X: "x", TILING_Y: "y", TILING_YF: "yf"}
MAX_SURFACE = 64 << 20  # a 4K XRGB8888 surface is 32 MiB: anything larger is a guest's mistake

#: skl_pixel_formats of fb_decoder.c: (PLANE_CTL format, RGBX order) -> (DRM fourcc name, bytes per pixel)
FORMATS: dict[tuple[int, bool], tuple[str, int]] = {
    (0x4, False): ("XRGB8888", 4),  # PLANE_CTL_FORMAT_XRGB_8888
    (0x4, True): ("XBGR8888", 4),
    (0x2, False): ("XRGB2101010", 4),  # PLANE_CTL_FORMAT_XRGB_2101010
    (0x2, True): ("XBGR2101010", 4),
    (0xE, False): ("RGB565", 2),  # PLANE_CTL_FORMAT_RGB_565
}
FORMAT_CODES = {name: (code, rgbx) for (code, rgbx), (name, _) in FORMATS.items()}

#: cursor_format_tbl: CURCNTR mode -> (size, format)
CURSOR_MODES: dict[int, tuple[int, str]] = {0x27: (64, "ARGB8888"), 0x22: (128, "ARGB8888"), 0x23: (256, "ARGB8888")}
MCURSOR_MODE_MASK = 0x27


class DecodeError(ValueError):
    """The plane's registers describe something the decoder does not support (or nothing at all)."""


@dataclass(frozen=True)
class PlaneInfo:
    """intel_vgpu_primary_plane_format / intel_vgpu_cursor_plane_format, as the plane query returns it."""

    plane: str  # "primary" or "cursor"
    pipe: int
    enabled: bool
    format: str = ""
    bpp: int = 0  # bytes per pixel
    width: int = 0
    height: int = 0
    stride: int = 0  # bytes per row (for tiled surfaces: bytes per row of tiles / 8)
    tiling: str = "linear"
    ggtt_addr: int = 0
    x: int = 0
    y: int = 0
    size: int = 0  # bytes of graphics memory the surface spans
    generation: int = 0  # PIPE_FLIPCOUNT: moves on every PLANE_SURF write

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plane_reg(pipe: int, off: int) -> int:
    return PLANE_CTL_BASE + PIPE_STRIDE * pipe + off


def cursor_reg(pipe: int, off: int) -> int:
    return CURCNTR_BASE + PIPE_STRIDE * pipe + off


def decode_primary(vgpu: "Vgpu", pipe: int, generation: int = 0) -> PlaneInfo:
    """intel_vgpu_decode_primary_plane (gen9+). Raises DecodeError for an unsupported format or tiling."""
    rd = vgpu.mmio.read32
    ctl = rd(plane_reg(pipe, 0))
    if not ctl & PLANE_CTL_ENABLE:
        return PlaneInfo("primary", pipe, False, generation=generation)
    code = (ctl & PLANE_CTL_FORMAT_MASK) >> PLANE_CTL_FORMAT_SHIFT
    fmt = FORMATS.get((code, bool(ctl & PLANE_CTL_ORDER_RGBX)))
    if fmt is None:
        raise DecodeError(f"unsupported PLANE_CTL format {code:#x}")
    tiling = (ctl & PLANE_CTL_TILED_MASK) >> PLANE_CTL_TILED_SHIFT
    if tiling not in (TILING_LINEAR, TILING_X):
        raise DecodeError(f"unsupported tiling {TILING_NAMES.get(tiling, hex(tiling))}")
    stride_units = rd(plane_reg(pipe, PLANE_STRIDE_OFF)) & 0x3FF
    stride = stride_units * (TILE_X_WIDTH if tiling == TILING_X else 64)
    size = rd(plane_reg(pipe, PLANE_SIZE_OFF))
    width, height = (size & 0x1FFF) + 1, ((size >> 16) & 0xFFF) + 1
    pos = rd(plane_reg(pipe, PLANE_POS_OFF))
    surf = rd(plane_reg(pipe, PLANE_SURF_OFF)) & ~0xFFF
    rows = height if tiling == TILING_LINEAR else -(-height // TILE_X_HEIGHT) * TILE_X_HEIGHT
    if stride < width * fmt[1]:
        raise DecodeError(f"stride {stride} is shorter than a row of {width} pixels")
    if stride * rows > MAX_SURFACE:
        raise DecodeError(f"surface of {stride * rows} bytes is larger than {MAX_SURFACE >> 20} MiB")
    return PlaneInfo("primary", pipe, True, fmt[0], fmt[1], width, height, stride, TILING_NAMES[tiling], surf,
                     pos & 0xFFFF, pos >> 16, stride * rows, generation)


def _signed_pos(v: int) -> int:
    """CURPOS halves are sign-magnitude (CURSOR_POS_SIGN)."""
    return -(v & 0x7FFF) if v & 0x8000 else v & 0x7FFF


def decode_cursor(vgpu: "Vgpu", pipe: int, generation: int = 0) -> PlaneInfo:
    """intel_vgpu_decode_cursor_plane."""
    rd = vgpu.mmio.read32
    cntr = rd(cursor_reg(pipe, 0))
    mode = cntr & MCURSOR_MODE_MASK
    if mode == 0:
        return PlaneInfo("cursor", pipe, False, generation=generation)
    if mode not in CURSOR_MODES:
        raise DecodeError(f"unsupported cursor mode {mode:#x}")
    side, fmt = CURSOR_MODES[mode]
    pos = rd(cursor_reg(pipe, CURPOS_OFF))
    base = rd(cursor_reg(pipe, CURBASE_OFF)) & ~0xFFF
    return PlaneInfo("cursor", pipe, True, fmt, 4, side, side, side * 4, "linear", base,
                     _signed_pos(pos & 0xFFFF), _signed_pos(pos >> 16), side * side * 4, generation)


# ----------------------------------------------------------------------------------- pixels
def detile_x(data: bytes, stride: int, height: int) -> bytes:
    """X-tiled bytes -> linear rows of ``stride`` bytes (``stride`` a multiple of 512)."""
    tiles_per_row = stride // TILE_X_WIDTH
    out = bytearray(stride * height)
    for y in range(height):
        tile_row, in_y = divmod(y, TILE_X_HEIGHT)
        row_base = tile_row * tiles_per_row * TILE_SIZE + in_y * TILE_X_WIDTH
        dst = y * stride
        for t in range(tiles_per_row):
            src = row_base + t * TILE_SIZE
            out[dst + t * TILE_X_WIDTH:dst + (t + 1) * TILE_X_WIDTH] = data[src:src + TILE_X_WIDTH]
    return bytes(out)


def tile_x(linear: bytes, stride: int, height: int) -> bytes:
    """Linear rows -> X-tiled bytes (the inverse of :func:`detile_x`; rows padded to whole tiles)."""
    tiles_per_row = stride // TILE_X_WIDTH
    rows = -(-height // TILE_X_HEIGHT) * TILE_X_HEIGHT
    out = bytearray(stride * rows)
    for y in range(height):
        tile_row, in_y = divmod(y, TILE_X_HEIGHT)
        row_base = tile_row * tiles_per_row * TILE_SIZE + in_y * TILE_X_WIDTH
        for t in range(tiles_per_row):
            dst = row_base + t * TILE_SIZE
            out[dst:dst + TILE_X_WIDTH] = linear[y * stride + t * TILE_X_WIDTH:y * stride + (t + 1) * TILE_X_WIDTH]
    return bytes(out)


def x_tiled_offset(x_bytes: int, y: int, stride: int) -> int:
    """Byte offset of (x in bytes, y) in an X-tiled surface of ``stride`` bytes per row."""
    return ((y // TILE_X_HEIGHT) * (stride // TILE_X_WIDTH) + x_bytes // TILE_X_WIDTH) * TILE_SIZE \
        + (y % TILE_X_HEIGHT) * TILE_X_WIDTH + x_bytes % TILE_X_WIDTH


def to_rgb(data: bytes, info: PlaneInfo) -> bytes:
    """The surface's visible pixels as packed 8-bit RGB rows (width x height x 3), for a PNG."""
    linear = detile_x(data, info.stride, info.height) if info.tiling == "x" else data
    w, h, bpp = info.width, info.height, info.bpp
    rows = [linear[y * info.stride:y * info.stride + w * bpp] for y in range(h)]
    flat = b"".join(rows)
    if info.format in ("XRGB8888", "ARGB8888"):  # little-endian B, G, R, X
        out = bytearray(w * h * 3)
        out[0::3], out[1::3], out[2::3] = flat[2::4], flat[1::4], flat[0::4]
        return bytes(out)
    if info.format == "XBGR8888":  # R, G, B, X
        out = bytearray(w * h * 3)
        out[0::3], out[1::3], out[2::3] = flat[0::4], flat[1::4], flat[2::4]
        return bytes(out)
    out = bytearray(w * h * 3)
    if info.format == "RGB565":
        for i in range(w * h):
            v = flat[2 * i] | flat[2 * i + 1] << 8
            r, g, b = v >> 11, (v >> 5) & 0x3F, v & 0x1F
            out[3 * i:3 * i + 3] = bytes(((r << 3) | (r >> 2), (g << 2) | (g >> 4), (b << 3) | (b >> 2)))
        return bytes(out)
    if info.format in ("XRGB2101010", "XBGR2101010"):
        for i in range(w * h):
            v = int.from_bytes(flat[4 * i:4 * i + 4], "little")
            hi, mid, lo = (v >> 22) & 0xFF, (v >> 12) & 0xFF, (v >> 2) & 0xFF
            out[3 * i:3 * i + 3] = bytes((hi, mid, lo) if info.format == "XRGB2101010" else (lo, mid, hi))
        return bytes(out)
    raise DecodeError(f"no pixel conversion for {info.format}")
