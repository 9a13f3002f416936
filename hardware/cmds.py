"""GPU command encoders, as i915 emits them on gen8/gen9 (intel_gpu_commands.h): the driver side.

``MI_INSTR(op, flags) = op << 23 | flags``; the low bits of multi-dword commands hold the dword count - 2.
Blitter commands are client 2 (bits 31:29 = 2) with the opcode in bits 28:22; BLT_WRITE_RGBA = 3 << 20.
This is the one encoder of the project (the values are opcodes.py): the guest driver builds its rings and batches
with it, and pgpu's test toolkit (services/pgpu/builder.py) feeds the emulator with it, so the emulator's decoder
(services/pgpu/commands.py, written separately) is checked against it (tests/unit/test_hw_encoder_decoder.py).
"""

from __future__ import annotations

from .opcodes import (
    BLT_DEPTH_32,
    BLT_WRITE_RGBA,
    GFX_OP_PIPE_CONTROL,
    MI_BATCH_BUFFER_END,
    MI_BATCH_BUFFER_START,
    MI_BATCH_PPGTT,
    MI_BATCH_SECOND_LEVEL,
    MI_FLUSH_DW,
    MI_FLUSH_DW_NOTIFY,
    MI_FLUSH_DW_OP_STOREDW,
    MI_FLUSH_DW_USE_GTT,
    MI_INSTR,
    MI_LOAD_REGISTER_IMM,
    MI_NOOP,
    MI_STORE_DATA_IMM,
    MI_STORE_QWORD,
    MI_USE_GGTT,
    MI_USER_INTERRUPT,
    PIPE_CONTROL_GLOBAL_GTT_IVB,
    PIPE_CONTROL_NOTIFY,
    PIPE_CONTROL_QW_WRITE,
    ROP_COPY,
    ROP_PATCOPY,
    XY_COLOR_BLT_CMD,
    XY_SRC_COPY_BLT_CMD,
)

# the encoder's users reach the single-dword commands and the blit defaults through this module
__all__ = [
    "BLT_DEPTH_32", "BLT_WRITE_RGBA", "MI_BATCH_BUFFER_END", "MI_INSTR", "MI_NOOP", "MI_USER_INTERRUPT",
    "ROP_COPY", "ROP_PATCOPY", "batch_buffer_start", "color_blt", "flush_dw", "load_register_imm",
    "pipe_control", "src_copy_blt", "store_dword", "store_qword", "to_bytes", "xy_color_blt", "xy_src_copy_blt",
]


def _lo_hi(addr: int) -> list[int]:
    return [addr & 0xFFFF_FFFF, (addr >> 32) & 0xFFFF]


def batch_buffer_start(addr: int, ppgtt: bool = False, second_level: bool = False) -> list[int]:
    """MI_BATCH_BUFFER_START gen8: 3 dwords; bit 8 selects the PPGTT address space, bit 22 second level."""
    hdr = MI_BATCH_BUFFER_START | 1 | (MI_BATCH_PPGTT if ppgtt else 0)
    return [hdr | (MI_BATCH_SECOND_LEVEL if second_level else 0), *_lo_hi(addr)]


def store_dword(addr: int, value: int, ggtt: bool = True) -> list[int]:
    """MI_STORE_DWORD_IMM_GEN4 (4 dwords) with MI_USE_GGTT."""
    return [MI_STORE_DATA_IMM | 2 | (MI_USE_GGTT if ggtt else 0), *_lo_hi(addr), value & 0xFFFF_FFFF]


def store_qword(addr: int, value: int, ggtt: bool = True) -> list[int]:
    """MI_STORE_QWORD_IMM_GEN8 (MI_INSTR(0x20, 3) | bit 21): 5 dwords."""
    return [MI_STORE_DATA_IMM | 3 | MI_STORE_QWORD | (MI_USE_GGTT if ggtt else 0), *_lo_hi(addr),
            value & 0xFFFF_FFFF, (value >> 32) & 0xFFFF_FFFF]


def load_register_imm(pairs: list[tuple[int, int]]) -> list[int]:
    """MI_LOAD_REGISTER_IMM(n): n (offset, value) pairs."""
    out = [MI_LOAD_REGISTER_IMM | (2 * len(pairs) - 1)]
    for reg, val in pairs:
        out += [reg, val & 0xFFFF_FFFF]
    return out


def flush_dw(addr: int = 0, value: int | None = None, notify: bool = False, ggtt: bool = True) -> list[int]:
    """MI_FLUSH_DW gen8 (4 dwords), with a post-sync dword store when ``value`` is given, optionally raising
    the notify interrupt."""
    hdr = MI_FLUSH_DW | 2 | (MI_FLUSH_DW_NOTIFY if notify else 0)
    if value is None:
        return [hdr, 0, 0, 0]
    lo, hi = _lo_hi(addr)
    return [hdr | MI_FLUSH_DW_OP_STOREDW, lo | (MI_FLUSH_DW_USE_GTT if ggtt else 0), hi, value & 0xFFFF_FFFF]


def pipe_control(addr: int = 0, value: int | None = None, notify: bool = False, ggtt: bool = True) -> list[int]:
    """GFX_OP_PIPE_CONTROL(6) with an optional post-sync QW immediate write."""
    flags = PIPE_CONTROL_NOTIFY if notify else 0
    if value is not None:
        flags |= PIPE_CONTROL_QW_WRITE | (PIPE_CONTROL_GLOBAL_GTT_IVB if ggtt else 0)
    v = value or 0
    return [GFX_OP_PIPE_CONTROL | (6 - 2), flags, *_lo_hi(addr), v & 0xFFFF_FFFF, (v >> 32) & 0xFFFF_FFFF]


def xy_color_blt(dst: int, pitch: int, x1: int, y1: int, x2: int, y2: int, color: int, depth: int = BLT_DEPTH_32,
                 rop: int = ROP_PATCOPY, write: int = 3) -> list[int]:
    """XY_COLOR_BLT gen8 (7 dwords): BR13 (depth, ROP, pitch), BR22 (y1, x1), BR23 (y2, x2), dst (2), colour."""
    return [XY_COLOR_BLT_CMD | write << 20 | (7 - 2), depth << 24 | rop << 16 | (pitch & 0xFFFF),
            y1 << 16 | x1, y2 << 16 | x2, *_lo_hi(dst), color & 0xFFFF_FFFF]


def xy_src_copy_blt(dst: int, dst_pitch: int, x1: int, y1: int, x2: int, y2: int, src: int, src_pitch: int,
                    sx: int = 0, sy: int = 0, depth: int = BLT_DEPTH_32, rop: int = ROP_COPY,
                    write: int = 3) -> list[int]:
    """XY_SRC_COPY_BLT gen8 (10 dwords): BR13, dst top-left, dst bottom-right, dst (2), src top-left,
    src pitch, src (2)."""
    return [XY_SRC_COPY_BLT_CMD | write << 20 | (10 - 2), depth << 24 | rop << 16 | (dst_pitch & 0xFFFF),
            y1 << 16 | x1, y2 << 16 | x2, *_lo_hi(dst), sy << 16 | sx, src_pitch & 0xFFFF, *_lo_hi(src)]


def color_blt(dst: int, pitch: int, width_px: int, height: int, color: int) -> list[int]:
    """A 32 bpp fill of a width x height rectangle at dst."""
    return xy_color_blt(dst, pitch, 0, 0, width_px, height, color)


def src_copy_blt(dst: int, dst_pitch: int, src: int, src_pitch: int, width_px: int, height: int) -> list[int]:
    """A 32 bpp copy of a width x height rectangle from src to dst."""
    return xy_src_copy_blt(dst, dst_pitch, 0, 0, width_px, height, src, src_pitch)


def to_bytes(dwords: list[int]) -> bytes:
    return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dwords)
