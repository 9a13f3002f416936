"""GPU command encodings on gen8/gen9 (Linux drivers/gpu/drm/i915/gt/intel_gpu_commands.h).

``MI_INSTR(op, flags) = op << 23 | flags``: memory-interface commands are client 0 (bits 31:29) with the opcode
in bits 28:23 and, for multi-dword commands, the dword count - 2 in the low bits. Blitter commands are client 2
with the opcode in bits 28:22 (``XY_*``); pipe control is client 3 (GFX_OP_PIPE_CONTROL). These are the values
only: the encoder is cmds.py, the decoders are gvt's scanner and pgpu's command streamer.
"""

from __future__ import annotations


def MI_INSTR(op: int, flags: int = 0) -> int:  # noqa: N802 (i915 name)
    """An MI command header: opcode ``op`` in bits 28:23 and ``flags`` (length, options) below."""
    return op << 23 | flags


# command clients, header bits 31:29 (INSTR_CLIENT_SHIFT 29: INSTR_MI_CLIENT, INSTR_BC_CLIENT, INSTR_RC_CLIENT)
CLIENT_MI, CLIENT_BLT, CLIENT_3D = 0, 2, 3

# MI opcodes (header values with no flags)
MI_NOOP = MI_INSTR(0x00)
MI_USER_INTERRUPT = MI_INSTR(0x02)
MI_ARB_CHECK = MI_INSTR(0x05)
MI_ARB_ON_OFF = MI_INSTR(0x08)
MI_BATCH_BUFFER_END = MI_INSTR(0x0A)
MI_STORE_DATA_IMM = MI_INSTR(0x20)
MI_LOAD_REGISTER_IMM = MI_INSTR(0x22)
MI_STORE_REGISTER_MEM = MI_INSTR(0x24)
MI_FLUSH_DW = MI_INSTR(0x26)
MI_BATCH_BUFFER_START = MI_INSTR(0x31)

# MI option bits
MI_USE_GGTT = 1 << 22  # MI_STORE_DATA_IMM / SRM / LRM: the address is in the GGTT (MI_GLOBAL_GTT)
MI_LRI_FORCE_POSTED = 1 << 12  # MI_LOAD_REGISTER_IMM: posted register writes
MI_STORE_QWORD = 1 << 21  # MI_STORE_DATA_IMM: MI_STORE_QWORD_IMM_GEN8 writes a qword
MI_BATCH_PPGTT = 1 << 8  # MI_BATCH_PPGTT_HSW: the batch is in the PPGTT (non-privileged)
MI_BATCH_SECOND_LEVEL = 1 << 22  # MI_BATCH_BUFFER_START: a second-level batch (returns to the first level)
MI_FLUSH_DW_NOTIFY = 1 << 8
MI_FLUSH_DW_OP_SHIFT = 14  # bits 15:14 post-sync operation: 1 = MI_FLUSH_DW_OP_STOREDW, 3 = timestamp
MI_FLUSH_DW_OP_STOREDW = 1 << MI_FLUSH_DW_OP_SHIFT
MI_FLUSH_DW_USE_GTT = 1 << 2  # in the address dword
MI_FLUSH_DW_STORE_INDEX = 1 << 21  # the address is an offset in the HWSP
#: MI_STORE_REGISTER_MEM_GEN8 (4 dwords) with MI_USE_GGTT
MI_STORE_REGISTER_MEM_GGTT = MI_STORE_REGISTER_MEM | 2 | MI_USE_GGTT
#: MI_BATCH_BUFFER_START_GEN8 (3 dwords), GGTT batch: the header i915's combine_wa_ctx appends
MI_BATCH_BUFFER_START_GEN8 = MI_BATCH_BUFFER_START | 1

# PIPE_CONTROL (GFX_OP_PIPE_CONTROL(len) = 0x7A000000 | (len - 2))
GFX_OP_PIPE_CONTROL = (0x3 << 29) | (0x3 << 27) | (0x2 << 24)
PIPE_CONTROL_NOTIFY = 1 << 8
PIPE_CONTROL_POST_SYNC_SHIFT = 14  # bits 15:14: 1 = write immediate (QW), 2 = depth count, 3 = timestamp
PIPE_CONTROL_QW_WRITE = 1 << PIPE_CONTROL_POST_SYNC_SHIFT
PIPE_CONTROL_STORE_DATA_INDEX = 1 << 21  # the address is an offset in the HWSP
PIPE_CONTROL_MMIO_WRITE = 1 << 23
PIPE_CONTROL_GLOBAL_GTT_IVB = 1 << 24
POST_SYNC_NONE, POST_SYNC_IMM, POST_SYNC_DEPTH, POST_SYNC_TIMESTAMP = 0, 1, 2, 3

# blitter (XY_* commands, gen8 BLT command reference)
XY_COLOR_BLT_CMD = CLIENT_BLT << 29 | 0x50 << 22
XY_SRC_COPY_BLT_CMD = CLIENT_BLT << 29 | 0x53 << 22
BLT_WRITE_RGB = 1 << 20  # header bits 21:20 (32 bpp): byte-write enables
BLT_WRITE_A = 2 << 20
BLT_WRITE_RGBA = BLT_WRITE_RGB | BLT_WRITE_A
XY_DST_TILED = 1 << 11  # header: the destination is X-tiled (its pitch counts dwords)
XY_SRC_TILED = 1 << 15  # header: the source is X-tiled
BLT_DEPTH_32 = 3  # BR13 bits 25:24 colour depth: 0 = 8 bpp, 1 = 565, 2 = 1555, 3 = 32 bpp
BLT_BPP: dict[int, int] = {0: 1, 1: 2, 2: 2, 3: 4}  # colour depth -> bytes per pixel
# BR13 bits 23:16 raster operations
ROP_BLACKNESS = 0x00
ROP_COPY = 0xCC  # SRCCOPY
ROP_PATCOPY = 0xF0
ROP_WHITENESS = 0xFF
