"""The GEN9 (SKL/KBL) command set as data: every row of the GVT command scanner's ``cmd_info[]``.

Source: Linux 5.14, drivers/gpu/drm/i915/gvt/cmd_parser.c, ``static const struct cmd_info cmd_info[]`` (the
rows whose device mask includes D_SKL / D_KBL: all 225 rows; per ring RCS 158, VCS 70, BCS 57,
VECS 33; 20 with a handler), with the opcode decode of ``get_opcode`` / ``ring_decode_info[][]`` and the
length rule of ``get_cmd_length``. Transcribed facts only: name, opcode (as cmd_parser.c keys it: the header
shifted right by 32 - op_len, so the command type bits 31:29 are part of it), length flags, rings, the
dwords that carry graphics addresses (``ADDR_FIX_n``), the width of the length field (or the constant
length), the handler's name (``cmd_handler_<name>``) and the valid length of F_LEN_VAR_FIXED rows.

Both gvt's command scanner (services/gvt/cmd_parser.py) and pgpu's command streamer decode with this table,
so a command one of them knows the other knows too. Sans-I/O data: no service state here.
"""

from __future__ import annotations

from typing import NamedTuple

# cmd_info.flag
F_LEN_VAR = 0
F_LEN_CONST = 1
F_LEN_MASK = 3
F_LEN_VAR_FIXED = 1 << 1  # the length field is variable but its value is fixed (valid_len)
F_IP_ADVANCE_CUSTOM = 1 << 2  # the command moves the instruction pointer itself (batch start / end)

# cmd_info.rings (R_*), with gvtsim's engine names
R_RCS = frozenset({"rcs"})
R_BCS = frozenset({"bcs"})
R_VCS1 = frozenset({"vcs"})
R_VCS2 = frozenset({"vcs2"})
R_VCS = R_VCS1 | R_VCS2
R_VECS = frozenset({"vecs"})
R_ALL = R_RCS | R_BCS | R_VCS | R_VECS

#: ring_decode_info[ring][CMD_TYPE]: the width of the opcode field (header bits 31 down) per command type;
#: type 0 MI (OP_LEN_MI 9) everywhere, type 2 2D (OP_LEN_2D 10) on BCS, type 3 3D/media (OP_LEN_3D_MEDIA 16)
#: on RCS, MFX/VC (OP_LEN_MFX_VC 16) on VCS, VEBOX (OP_LEN_VEBOX 16) on VECS.
OP_LEN: dict[str, dict[int, int]] = {
    "rcs": {0: 9, 3: 16},
    "bcs": {0: 9, 2: 10},
    "vcs": {0: 9, 3: 16},
    "vcs2": {0: 9, 3: 16},
    "vecs": {0: 9, 3: 16},
}

OP_LENGTH_BIAS = 2  # the length field holds dwords - 2


class CmdInfo(NamedTuple):
    """One row of ``cmd_info[]``."""

    name: str
    opcode: int
    flag: int
    rings: frozenset[str]
    addr_dwords: tuple[int, ...]  # the dwords that hold graphics addresses (ADDR_FIX_n)
    len: int  # F_LEN_CONST: the length in dwords; else the width of the length field in bits
    handler: str | None  # cmd_handler_<handler>; None: no handler (only the length rules apply)
    valid_len: int | None  # F_LEN_VAR_FIXED: the only valid length in dwords

    def length(self, hdr: int) -> int:
        """get_cmd_length: dwords of the command whose header is ``hdr``."""
        if self.flag & F_LEN_MASK == F_LEN_CONST:
            return self.len
        return (hdr & ((1 << self.len) - 1)) + OP_LENGTH_BIAS

    @property
    def var_fixed(self) -> bool:
        """(flag & F_LEN_MASK) == F_LEN_VAR_FIXED: the length must equal ``valid_len``."""
        return self.flag & F_LEN_MASK == F_LEN_VAR_FIXED


C = CmdInfo

CMD_INFO: tuple[CmdInfo, ...] = (
    C('MI_NOOP', 0x0000, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_SET_PREDICATE', 0x0001, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_USER_INTERRUPT', 0x0002, F_LEN_CONST, R_ALL, (), 1, 'mi_user_interrupt', None),
    C('MI_WAIT_FOR_EVENT', 0x0003, F_LEN_CONST, R_RCS | R_BCS, (), 1, 'mi_wait_for_event', None),
    C('MI_FLUSH', 0x0004, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_ARB_CHECK', 0x0005, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_RS_CONTROL', 0x0006, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('MI_REPORT_HEAD', 0x0007, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_ARB_ON_OFF', 0x0008, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_URB_ATOMIC_ALLOC', 0x0009, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('MI_BATCH_BUFFER_END', 0x000a, F_IP_ADVANCE_CUSTOM | F_LEN_CONST, R_ALL, (), 1, 'mi_batch_buffer_end', None),
    C('MI_SUSPEND_FLUSH', 0x000b, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_PREDICATE', 0x000c, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('MI_TOPOLOGY_FILTER', 0x000d, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_SET_APPID', 0x000e, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MI_RS_CONTEXT', 0x000f, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('MI_DISPLAY_FLIP', 0x0014, F_LEN_VAR, R_RCS | R_BCS, (), 8, 'mi_display_flip', None),
    C('MI_SEMAPHORE_MBOX', 0x0016, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (), 8, None, 3),
    C('MI_MATH', 0x001a, F_LEN_VAR, R_ALL, (), 8, None, None),
    C('MI_URB_CLEAR', 0x0019, F_LEN_VAR | F_LEN_VAR_FIXED, R_RCS, (), 8, None, 2),
    C('MI_SEMAPHORE_SIGNAL', 0x001b, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (), 8, None, 2),
    C('MI_SEMAPHORE_WAIT', 0x001c, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (2,), 8, 'mi_semaphore_wait', 4),
    C('MI_STORE_DATA_IMM', 0x0020, F_LEN_VAR, R_ALL, (1,), 10, 'mi_store_data_imm', None),
    C('MI_STORE_DATA_INDEX', 0x0021, F_LEN_VAR, R_ALL, (), 8, 'mi_store_data_index', None),
    C('MI_LOAD_REGISTER_IMM', 0x0022, F_LEN_VAR, R_ALL, (), 8, 'lri', None),
    C('MI_UPDATE_GTT', 0x0023, F_LEN_VAR, R_ALL, (), 10, 'mi_update_gtt', None),
    C('MI_STORE_REGISTER_MEM', 0x0024, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (2,), 8, 'srm', 4),
    C('MI_FLUSH_DW', 0x0026, F_LEN_VAR, R_ALL, (), 6, 'mi_flush_dw', None),
    C('MI_CLFLUSH', 0x0027, F_LEN_VAR, R_ALL, (1,), 10, 'mi_clflush', None),
    C('MI_REPORT_PERF_COUNT', 0x0028, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (1,), 6, 'mi_report_perf_count', 4),
    C('MI_LOAD_REGISTER_MEM', 0x0029, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (2,), 8, 'lrm', 4),
    C('MI_LOAD_REGISTER_REG', 0x002a, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (), 8, 'lrr', 3),
    C('MI_RS_STORE_DATA_IMM', 0x002b, F_LEN_VAR | F_LEN_VAR_FIXED, R_RCS, (), 8, None, 4),
    C('MI_LOAD_URB_MEM', 0x002c, F_LEN_VAR | F_LEN_VAR_FIXED, R_RCS, (2,), 8, None, 4),
    C('MI_STORE_URM_MEM', 0x002d, F_LEN_VAR, R_RCS, (2,), 8, None, None),
    C('MI_OP_2E', 0x002e, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (1, 2), 8, 'mi_op_2e', 5),
    C('MI_OP_2F', 0x002f, F_LEN_VAR, R_ALL, (1,), 8, 'mi_op_2f', None),
    C('MI_BATCH_BUFFER_START', 0x0031, F_IP_ADVANCE_CUSTOM | F_LEN_VAR, R_ALL, (), 8, 'mi_batch_buffer_start', None),
    C('MI_CONDITIONAL_BATCH_BUFFER_END', 0x0036, F_LEN_VAR | F_LEN_VAR_FIXED, R_ALL, (2,), 8,
      'mi_conditional_batch_buffer_end', 4),
    C('MI_LOAD_SCAN_LINES_INCL', 0x0012, F_LEN_CONST, R_RCS | R_BCS, (), 2, None, None),
    C('XY_SETUP_BLT', 0x0101, F_LEN_VAR, R_BCS, (4, 7), 8, None, None),
    C('XY_SETUP_CLIP_BLT', 0x0103, F_LEN_VAR, R_BCS, (), 8, None, None),
    C('XY_SETUP_MONO_PATTERN_SL_BLT', 0x0111, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_PIXEL_BLT', 0x0124, F_LEN_VAR, R_BCS, (), 8, None, None),
    C('XY_SCANLINES_BLT', 0x0125, F_LEN_VAR, R_BCS, (), 8, None, None),
    C('XY_TEXT_BLT', 0x0126, F_LEN_VAR, R_BCS, (3,), 8, None, None),
    C('XY_TEXT_IMMEDIATE_BLT', 0x0131, F_LEN_VAR, R_BCS, (), 8, None, None),
    C('XY_COLOR_BLT', 0x0150, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_PAT_BLT', 0x0151, F_LEN_VAR, R_BCS, (4, 5), 8, None, None),
    C('XY_MONO_PAT_BLT', 0x0152, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_SRC_COPY_BLT', 0x0153, F_LEN_VAR, R_BCS, (4, 7), 8, None, None),
    C('XY_MONO_SRC_COPY_BLT', 0x0154, F_LEN_VAR, R_BCS, (4, 5), 8, None, None),
    C('XY_FULL_BLT', 0x0155, F_LEN_VAR, R_BCS, (), 8, None, None),
    C('XY_FULL_MONO_SRC_BLT', 0x0156, F_LEN_VAR, R_BCS, (4, 5, 8), 8, None, None),
    C('XY_FULL_MONO_PATTERN_BLT', 0x0157, F_LEN_VAR, R_BCS, (4, 7), 8, None, None),
    C('XY_FULL_MONO_PATTERN_MONO_SRC_BLT', 0x0158, F_LEN_VAR, R_BCS, (4, 5), 8, None, None),
    C('XY_MONO_PAT_FIXED_BLT', 0x0159, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_MONO_SRC_COPY_IMMEDIATE_BLT', 0x0171, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_PAT_BLT_IMMEDIATE', 0x0172, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('XY_SRC_COPY_CHROMA_BLT', 0x0173, F_LEN_VAR, R_BCS, (4, 7), 8, None, None),
    C('XY_FULL_IMMEDIATE_PATTERN_BLT', 0x0174, F_LEN_VAR, R_BCS, (4, 7), 8, None, None),
    C('XY_FULL_MONO_SRC_IMMEDIATE_PATTERN_BLT', 0x0175, F_LEN_VAR, R_BCS, (4, 5), 8, None, None),
    C('XY_PAT_CHROMA_BLT', 0x0176, F_LEN_VAR, R_BCS, (4, 5), 8, None, None),
    C('XY_PAT_CHROMA_BLT_IMMEDIATE', 0x0177, F_LEN_VAR, R_BCS, (4,), 8, None, None),
    C('3DSTATE_VIEWPORT_STATE_POINTERS_SF_CLIP', 0x7821, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_VIEWPORT_STATE_POINTERS_CC', 0x7823, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BLEND_STATE_POINTERS', 0x7824, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DEPTH_STENCIL_STATE_POINTERS', 0x7825, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POINTERS_VS', 0x7826, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POINTERS_HS', 0x7827, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POINTERS_DS', 0x7828, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POINTERS_GS', 0x7829, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POINTERS_PS', 0x782a, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_STATE_POINTERS_VS', 0x782b, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_STATE_POINTERS_HS', 0x782c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_STATE_POINTERS_DS', 0x782d, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_STATE_POINTERS_GS', 0x782e, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_STATE_POINTERS_PS', 0x782f, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_URB_VS', 0x7830, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_URB_HS', 0x7831, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_URB_DS', 0x7832, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_URB_GS', 0x7833, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GATHER_CONSTANT_VS', 0x7834, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GATHER_CONSTANT_GS', 0x7835, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GATHER_CONSTANT_HS', 0x7836, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GATHER_CONSTANT_DS', 0x7837, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GATHER_CONSTANT_PS', 0x7838, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_CONSTANTF_VS', 0x7839, F_LEN_VAR, R_RCS, (), 11, None, None),
    C('3DSTATE_DX9_CONSTANTF_PS', 0x783a, F_LEN_VAR, R_RCS, (), 11, None, None),
    C('3DSTATE_DX9_CONSTANTI_VS', 0x783b, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_CONSTANTI_PS', 0x783c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_CONSTANTB_VS', 0x783d, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_CONSTANTB_PS', 0x783e, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_LOCAL_VALID_VS', 0x783f, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_LOCAL_VALID_PS', 0x7840, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_GENERATE_ACTIVE_VS', 0x7841, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DX9_GENERATE_ACTIVE_PS', 0x7842, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_BINDING_TABLE_EDIT_VS', 0x7843, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_BINDING_TABLE_EDIT_GS', 0x7844, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_BINDING_TABLE_EDIT_HS', 0x7845, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_BINDING_TABLE_EDIT_DS', 0x7846, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_BINDING_TABLE_EDIT_PS', 0x7847, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_VF_INSTANCING', 0x7849, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_VF_SGVS', 0x784a, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_VF_TOPOLOGY', 0x784b, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_WM_CHROMAKEY', 0x784c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PS_BLEND', 0x784d, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_WM_DEPTH_STENCIL', 0x784e, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PS_EXTRA', 0x784f, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_RASTER', 0x7850, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SBE_SWIZ', 0x7851, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_WM_HZ_OP', 0x7852, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_VERTEX_BUFFERS', 0x7808, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_VERTEX_ELEMENTS', 0x7809, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_INDEX_BUFFER', 0x780a, F_LEN_VAR, R_RCS, (2,), 8, None, None),
    C('3DSTATE_VF_STATISTICS', 0x780b, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('3DSTATE_VF', 0x780c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CC_STATE_POINTERS', 0x780e, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SCISSOR_STATE_POINTERS', 0x780f, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GS', 0x7811, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CLIP', 0x7812, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_WM', 0x7814, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CONSTANT_GS', 0x7816, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CONSTANT_PS', 0x7817, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLE_MASK', 0x7818, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CONSTANT_HS', 0x7819, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CONSTANT_DS', 0x781a, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_HS', 0x781b, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_TE', 0x781c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DS', 0x781d, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_STREAMOUT', 0x781e, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SBE', 0x781f, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PS', 0x7820, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DRAWING_RECTANGLE', 0x7900, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_PALETTE_LOAD0', 0x7902, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CHROMA_KEY', 0x7904, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_DEPTH_BUFFER', 0x7805, F_LEN_VAR, R_RCS, (2,), 8, None, None),
    C('3DSTATE_POLY_STIPPLE_OFFSET', 0x7906, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_POLY_STIPPLE_PATTERN', 0x7907, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_LINE_STIPPLE', 0x7908, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_AA_LINE_PARAMS', 0x790a, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_GS_SVB_INDEX', 0x790b, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SAMPLER_PALETTE_LOAD1', 0x790c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_MULTISAMPLE', 0x780d, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_STENCIL_BUFFER', 0x7806, F_LEN_VAR, R_RCS, (2,), 8, None, None),
    C('3DSTATE_HIER_DEPTH_BUFFER', 0x7807, F_LEN_VAR, R_RCS, (2,), 8, None, None),
    C('3DSTATE_CLEAR_PARAMS', 0x7804, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PUSH_CONSTANT_ALLOC_VS', 0x7912, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PUSH_CONSTANT_ALLOC_HS', 0x7913, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PUSH_CONSTANT_ALLOC_DS', 0x7914, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PUSH_CONSTANT_ALLOC_GS', 0x7915, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_PUSH_CONSTANT_ALLOC_PS', 0x7916, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_MONOFILTER_SIZE', 0x7911, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SO_DECL_LIST', 0x7917, F_LEN_VAR, R_RCS, (), 9, None, None),
    C('3DSTATE_SO_BUFFER', 0x7918, F_LEN_VAR, R_RCS, (2, 4), 8, None, None),
    C('3DSTATE_BINDING_TABLE_POOL_ALLOC', 0x7919, F_LEN_VAR, R_RCS, (1,), 8, None, None),
    C('3DSTATE_GATHER_POOL_ALLOC', 0x791a, F_LEN_VAR, R_RCS, (1,), 8, None, None),
    C('3DSTATE_DX9_CONSTANT_BUFFER_POOL_ALLOC', 0x791b, F_LEN_VAR, R_RCS, (1,), 8, None, None),
    C('3DSTATE_SAMPLE_PATTERN', 0x791c, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('PIPE_CONTROL', 0x7a00, F_LEN_VAR, R_RCS, (2,), 8, 'pipe_control', None),
    C('3DPRIMITIVE', 0x7b00, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('PIPELINE_SELECT', 0x6904, F_LEN_CONST, R_RCS, (), 1, None, None),
    C('STATE_PREFETCH', 0x6003, F_LEN_VAR, R_RCS, (1,), 8, None, None),
    C('STATE_SIP', 0x6102, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('STATE_BASE_ADDRESS', 0x6101, F_LEN_VAR, R_RCS, (1, 3, 4, 5, 6), 8, None, None),
    C('OP_3D_MEDIA_0_1_4', 0x6104, F_LEN_VAR, R_RCS, (1,), 8, None, None),
    C('OP_SWTESS_BASE_ADDRESS', 0x6103, F_LEN_VAR, R_RCS, (1, 2), 3, None, None),
    C('3DSTATE_VS', 0x7810, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_SF', 0x7813, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_CONSTANT_VS', 0x7815, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('3DSTATE_COMPONENT_PACKING', 0x7855, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('MEDIA_INTERFACE_DESCRIPTOR_LOAD', 0x7002, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_GATEWAY_STATE', 0x7003, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_STATE_FLUSH', 0x7004, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_POOL_STATE', 0x7005, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_OBJECT', 0x7100, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_CURBE_LOAD', 0x7001, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_OBJECT_PRT', 0x7102, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('MEDIA_OBJECT_WALKER', 0x7103, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('GPGPU_WALKER', 0x7105, F_LEN_VAR, R_RCS, (), 8, None, None),
    C('MEDIA_VFE_STATE', 0x7000, F_LEN_VAR, R_RCS, (), 16, None, None),
    C('3DSTATE_VF_STATISTICS_GM45', 0x680b, F_LEN_CONST, R_ALL, (), 1, None, None),
    C('MFX_PIPE_MODE_SELECT', 0x7000, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_SURFACE_STATE', 0x7001, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_PIPE_BUF_ADDR_STATE', 0x7002, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_IND_OBJ_BASE_ADDR_STATE', 0x7003, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_BSP_BUF_BASE_ADDR_STATE', 0x7004, F_LEN_VAR, R_VCS, (1, 3, 5), 12, None, None),
    C('OP_2_0_0_5', 0x7005, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_STATE_POINTER', 0x7006, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_QM_STATE', 0x7007, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_FQM_STATE', 0x7008, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_PAK_INSERT_OBJECT', 0x7048, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_STITCH_OBJECT', 0x704a, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_IT_OBJECT', 0x7029, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_WAIT', 0x6800, F_LEN_VAR, R_VCS, (), 6, None, None),
    C('MFX_AVC_IMG_STATE', 0x7100, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_AVC_QM_STATE', 0x7101, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_AVC_DIRECTMODE_STATE', 0x7102, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_AVC_SLICE_STATE', 0x7103, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_AVC_REF_IDX_STATE', 0x7104, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_AVC_WEIGHTOFFSET_STATE', 0x7105, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_AVC_PICID_STATE', 0x7125, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_AVC_DPB_STATE', 0x7126, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_AVC_BSD_OBJECT', 0x7128, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_AVC_SLICEADDR', 0x7127, F_LEN_VAR, R_VCS, (2,), 12, None, None),
    C('MFC_AVC_PAK_OBJECT', 0x7149, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_VC1_PRED_PIPE_STATE', 0x7201, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_VC1_DIRECTMODE_STATE', 0x7202, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_VC1_SHORT_PIC_STATE', 0x7220, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_VC1_LONG_PIC_STATE', 0x7221, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_VC1_BSD_OBJECT', 0x7228, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFC_MPEG2_SLICEGROUP_STATE', 0x7343, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFC_MPEG2_PAK_OBJECT', 0x7349, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_MPEG2_PIC_STATE', 0x7300, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_MPEG2_QM_STATE', 0x7301, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_MPEG2_BSD_OBJECT', 0x7328, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_2_6_0_0', 0x7600, F_LEN_VAR, R_VCS, (), 16, None, None),
    C('MFX_2_6_0_9', 0x7609, F_LEN_VAR, R_VCS, (), 16, None, None),
    C('MFX_2_6_0_8', 0x7608, F_LEN_VAR, R_VCS, (), 16, None, None),
    C('MFX_JPEG_PIC_STATE', 0x7700, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFX_JPEG_HUFF_TABLE_STATE', 0x7702, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('MFD_JPEG_BSD_OBJECT', 0x7728, F_LEN_VAR, R_VCS, (), 12, None, None),
    C('VEBOX_STATE', 0x7402, F_LEN_VAR, R_VECS, (), 12, None, None),
    C('VEBOX_SURFACE_STATE', 0x7400, F_LEN_VAR, R_VECS, (), 12, None, None),
    C('VEB_DI_IECP', 0x7403, F_LEN_VAR, R_VECS, (), 12, None, None),
)

#: (engine, opcode) -> row, as find_cmd_entry matches opcode and ring
TABLE: dict[tuple[str, int], CmdInfo] = {(r, c.opcode): c for c in CMD_INFO for r in c.rings}
BY_NAME: dict[str, CmdInfo] = {c.name: c for c in CMD_INFO}


def get_opcode(hdr: int, engine: str) -> int | None:
    """get_opcode: the header's opcode for ``engine``, or None when the ring decodes no such command type."""
    op_len = OP_LEN.get(engine, {}).get(hdr >> 29 & 7)
    if op_len is None:
        return None
    return (hdr & 0xFFFF_FFFF) >> (32 - op_len)


def lookup(engine: str, hdr: int) -> CmdInfo | None:
    """get_cmd_info: the row of the command ``hdr`` on ``engine``, or None (unknown: -EBADRQC upstream)."""
    op = get_opcode(hdr, engine)
    if op is None:
        return None
    return TABLE.get((engine, op))


def op_len_of(info: CmdInfo) -> int:
    """The opcode width of a row: MI opcodes are below 0x40 (9 bits with the type), 2D ones 0x100-0x17F
    (10 bits), 3D / media / MFX / VEBOX ones carry type 3 in their top bits (16 bits)."""
    if info.opcode >> 13 == 3:
        return 16
    return 10 if info.opcode >> 7 == 2 else 9


def encode(info: CmdInfo, length: int | None = None) -> int:
    """A header dword of ``info`` of ``length`` dwords (default: its valid or smallest length)."""
    hdr = info.opcode << (32 - op_len_of(info))
    if info.flag & F_LEN_MASK != F_LEN_CONST:
        n = length if length is not None else (info.valid_len if info.valid_len is not None else OP_LENGTH_BIAS)
        hdr |= (n - OP_LENGTH_BIAS) & ((1 << info.len) - 1)
    return hdr
