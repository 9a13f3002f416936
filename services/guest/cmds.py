"""GPU command encoders, as i915 emits them on gen8/gen9 (intel_gpu_commands.h).

``MI_INSTR(op, flags) = op << 23 | flags``; the low bits of multi-dword commands hold the dword count - 2.
Blitter commands are client 2 (bits 31:29 = 2) with the opcode in bits 28:22; BLT_WRITE_RGBA = 3 << 20.
"""

from __future__ import annotations


def MI_INSTR(op: int, flags: int = 0) -> int:  # noqa: N802 (i915 name)
    return op << 23 | flags


MI_NOOP = 0
MI_USER_INTERRUPT = MI_INSTR(0x02)
MI_BATCH_BUFFER_END = MI_INSTR(0x0A)
MI_USE_GGTT = 1 << 22
BLT_WRITE_RGBA = 3 << 20
BLT_DEPTH_32 = 3 << 24
ROP_COPY = 0xCC
ROP_PATCOPY = 0xF0
MI_FLUSH_DW_NOTIFY = 1 << 8
MI_FLUSH_DW_OP_STOREDW = 1 << 14
MI_FLUSH_DW_USE_GTT = 1 << 2
PIPE_CONTROL_NOTIFY = 1 << 8
PIPE_CONTROL_QW_WRITE = 1 << 14
PIPE_CONTROL_GLOBAL_GTT_IVB = 1 << 24


def _lo_hi(addr: int) -> list[int]:
    return [addr & 0xFFFF_FFFF, (addr >> 32) & 0xFFFF]


def batch_buffer_start(addr: int, ppgtt: bool = False, second_level: bool = False) -> list[int]:
    """MI_BATCH_BUFFER_START gen8: 3 dwords; bit 8 selects the PPGTT address space, bit 22 second level."""
    return [MI_INSTR(0x31, 1) | (1 << 8 if ppgtt else 0) | (1 << 22 if second_level else 0), *_lo_hi(addr)]


def store_dword(addr: int, value: int, ggtt: bool = True) -> list[int]:
    """MI_STORE_DWORD_IMM_GEN4 (4 dwords) with MI_USE_GGTT."""
    return [MI_INSTR(0x20, 2) | (MI_USE_GGTT if ggtt else 0), *_lo_hi(addr), value & 0xFFFF_FFFF]


def load_register_imm(pairs: list[tuple[int, int]]) -> list[int]:
    """MI_LOAD_REGISTER_IMM(n): n (offset, value) pairs."""
    out = [MI_INSTR(0x22, 2 * len(pairs) - 1)]
    for reg, val in pairs:
        out += [reg, val & 0xFFFF_FFFF]
    return out


def flush_dw(addr: int, value: int, notify: bool = False) -> list[int]:
    """MI_FLUSH_DW gen8 with a post-sync dword write (4 dwords), optionally raising the notify interrupt."""
    flags = MI_FLUSH_DW_OP_STOREDW | (MI_FLUSH_DW_NOTIFY if notify else 0)
    return [MI_INSTR(0x26, 2) | flags, (addr & 0xFFFF_FFF8) | MI_FLUSH_DW_USE_GTT, (addr >> 32) & 0xFFFF, value]


def pipe_control(addr: int, value: int, notify: bool = False) -> list[int]:
    """GFX_OP_PIPE_CONTROL(6) with a post-sync immediate write to a GGTT address."""
    flags = PIPE_CONTROL_QW_WRITE | PIPE_CONTROL_GLOBAL_GTT_IVB | (PIPE_CONTROL_NOTIFY if notify else 0)
    return [0x7A000000 | (6 - 2), flags, *_lo_hi(addr), value & 0xFFFF_FFFF, 0]


def color_blt(dst: int, pitch: int, width_px: int, height: int, color: int) -> list[int]:
    """XY_COLOR_BLT gen8 (7 dwords), 32 bpp fill of a width x height rectangle at dst."""
    return [2 << 29 | 0x50 << 22 | BLT_WRITE_RGBA | (7 - 2),
            BLT_DEPTH_32 | ROP_PATCOPY << 16 | pitch,
            0, height << 16 | width_px,
            *_lo_hi(dst), color & 0xFFFF_FFFF]


def src_copy_blt(dst: int, dst_pitch: int, src: int, src_pitch: int, width_px: int, height: int) -> list[int]:
    """XY_SRC_COPY_BLT gen8 (10 dwords), 32 bpp copy of a width x height rectangle."""
    return [2 << 29 | 0x53 << 22 | BLT_WRITE_RGBA | (10 - 2),
            BLT_DEPTH_32 | ROP_COPY << 16 | dst_pitch,
            0, height << 16 | width_px,
            *_lo_hi(dst),
            0, src_pitch & 0xFFFF,
            *_lo_hi(src)]


def to_bytes(dwords: list[int]) -> bytes:
    return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dwords)
