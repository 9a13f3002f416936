"""The command table decodes the real GEN encodings (literal values from i915 intel_gpu_commands.h)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.services.pgpu import builder as b
from gvtsim.services.pgpu.commands import COMMANDS, decode, decode_header, lookup

# (header dword as i915 emits it, engine, expected name, expected dword count)
REAL_ENCODINGS = [
    (0x0000_0000, "rcs", "MI_NOOP", 1),  # MI_NOOP
    (0x0100_0000, "bcs", "MI_USER_INTERRUPT", 1),  # MI_INSTR(0x02, 0)
    (0x0500_0000, "vcs", "MI_BATCH_BUFFER_END", 1),  # MI_INSTR(0x0a, 0)
    (0x1880_0001, "rcs", "MI_BATCH_BUFFER_START", 3),  # MI_BATCH_BUFFER_START_GEN8
    (0x1880_0101, "rcs", "MI_BATCH_BUFFER_START", 3),  # | MI_BATCH_PPGTT_HSW
    (0x18C0_0001, "rcs", "MI_BATCH_BUFFER_START", 3),  # | MI_BATCH_SECOND_LEVEL
    (0x1040_0002, "vecs", "MI_STORE_DATA_IMM", 4),  # MI_STORE_DWORD_IMM_GEN4 | MI_USE_GGTT
    (0x1020_0003, "rcs", "MI_STORE_DATA_IMM", 5),  # MI_STORE_QWORD_IMM_GEN8
    (0x1100_0001, "rcs", "MI_LOAD_REGISTER_IMM", 3),  # MI_LOAD_REGISTER_IMM(1)
    (0x1100_1005, "rcs", "MI_LOAD_REGISTER_IMM", 7),  # MI_LOAD_REGISTER_IMM(3) | MI_LRI_FORCE_POSTED
    (0x1300_4002, "bcs", "MI_FLUSH_DW", 4),  # (MI_FLUSH_DW + 1) | MI_FLUSH_DW_OP_STOREDW
    (0x1240_0002, "rcs", "MI_STORE_REGISTER_MEM", 4),  # MI_STORE_REGISTER_MEM_GEN8 | MI_SRM_LRM_GLOBAL_GTT
    (0x7A00_0004, "rcs", "PIPE_CONTROL", 6),  # GFX_OP_PIPE_CONTROL(6)
    (0x5430_0005, "bcs", "XY_COLOR_BLT", 7),  # XY_COLOR_BLT_CMD | BLT_WRITE_RGBA | 5
    (0x54F0_0008, "bcs", "XY_SRC_COPY_BLT", 10),  # XY_SRC_COPY_BLT_CMD | BLT_WRITE_RGBA | 8
]


@pytest.mark.parametrize(("hdr", "engine", "name", "length"), REAL_ENCODINGS)
def test_real_encodings_decode(hdr: int, engine: str, name: str, length: int) -> None:
    spec = lookup(engine, hdr)
    assert spec is not None and spec.name == name
    assert spec.length(hdr) == length


def test_every_table_command_has_a_real_encoding_test() -> None:
    tested = {name for _, _, name, _ in REAL_ENCODINGS}
    assert tested >= {c.name for c in COMMANDS} - {"MI_ARB_CHECK", "MI_ARB_ON_OFF"}


def test_builder_emits_the_i915_values() -> None:
    assert b.mi_store_dword(0x1000, 5)[0] == 0x1040_0002
    assert b.mi_store_dword(0x1000, 5, ggtt=False)[0] == 0x1000_0002
    assert b.mi_store_qword(0x1000, 5, ggtt=False)[0] == 0x1020_0003
    assert b.mi_bb_start(0x1_2345_6000) == [0x1880_0001, 0x2345_6000, 0x1]
    assert b.mi_bb_start(0x1000, ppgtt=True, second_level=True)[0] == 0x18C0_0101
    assert b.mi_flush_dw(0x2000, 7) == [0x1300_4002, 0x2004, 0, 7]  # USE_GTT in the address dword
    assert b.mi_lri([(0x2098, 1), (0x20C0, 2)])[0] == 0x1100_0003
    assert b.pipe_control(0x3000, 9, notify=True)[:2] == [0x7A00_0004, (1 << 24) | (1 << 14) | (1 << 8)]
    assert b.xy_color_blt(0, 256, 0, 0, 1, 1, 0)[:2] == [0x5430_0005, 0x03F0_0100]
    assert b.xy_src_copy_blt(0, 256, 0, 0, 1, 1, 0, 512, 0, 0)[:2] == [0x54F0_0008, 0x03CC_0100]


def test_unknown_and_wrong_engine() -> None:
    assert lookup("rcs", 0x0180_0000) is None  # MI_WAIT_FOR_EVENT: a real command, not executed
    assert decode("rcs", 0x0180_0000).name == "MI_WAIT_FOR_EVENT"  # type: ignore[union-attr]
    assert lookup("rcs", 0x2000_0000) is None and decode("rcs", 0x2000_0000) is None  # client 1: reserved
    assert lookup("bcs", 0x7A00_0004) is None and decode("bcs", 0x7A00_0004) is None  # PIPE_CONTROL: render
    assert lookup("rcs", 0x5500_0000) is None  # a 2D command on the render ring: not decoded there


@given(st.integers(0, 0xFFFF_FFFF))
def test_decode_header_fields(hdr: int) -> None:
    client, opcode = decode_header(hdr)  # as the render ring decodes: MI (9-bit opcode) and 3D (16-bit)
    assert client == hdr >> 29
    if client == 0:
        assert opcode == hdr >> 23
    elif client == 3:
        assert opcode == hdr >> 16
    else:
        assert opcode is None
    spec = lookup("rcs", hdr)
    if spec is not None and spec.info.flag & 3 != 1:  # not F_LEN_CONST
        assert spec.length(hdr) == (hdr & ((1 << spec.info.len) - 1)) + 2
