"""The one command encoder (gvtsim.hardware.cmds) against pgpu's own decoder (services/pgpu/commands.py).

pgpu decodes command headers through its table, independently of the encoder; every command the encoder can
emit, with any of its options, must decode on the engines that run it as the command the encoder meant, with
the length the encoder wrote. A wrong opcode, option bit or length field in either side fails here.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.hardware import cmds
from gvtsim.hardware.engines import GPU_ENGINES
from gvtsim.services.pgpu.commands import lookup

addr = st.integers(0, (1 << 48) - 1).map(lambda a: a & ~7)
u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)
coord = st.integers(0, 0x7FFF)
pitch = st.integers(1, 0x7FFF)


def _check(engine: str, name: str, dwords: list[int]) -> None:
    spec = lookup(engine, dwords[0])
    assert spec is not None, f"pgpu does not decode {name} (header {dwords[0]:#010x}) on {engine}"
    assert spec.name == name
    assert spec.length(dwords[0]) == len(dwords), f"{name}: header says {spec.length(dwords[0])} dwords"


@pytest.mark.parametrize("engine", GPU_ENGINES)
@pytest.mark.parametrize(("name", "dwords"), [
    ("MI_NOOP", [cmds.MI_NOOP]),
    ("MI_USER_INTERRUPT", [cmds.MI_USER_INTERRUPT]),
    ("MI_BATCH_BUFFER_END", [cmds.MI_BATCH_BUFFER_END]),
])
def test_single_dword_commands(engine: str, name: str, dwords: list[int]) -> None:
    _check(engine, name, dwords)


@given(engine=st.sampled_from(GPU_ENGINES), a=addr, ppgtt=st.booleans(), second=st.booleans())
def test_batch_buffer_start(engine: str, a: int, ppgtt: bool, second: bool) -> None:
    _check(engine, "MI_BATCH_BUFFER_START", cmds.batch_buffer_start(a, ppgtt=ppgtt, second_level=second))


@given(engine=st.sampled_from(GPU_ENGINES), a=addr, v=u64, ggtt=st.booleans(), qword=st.booleans())
def test_store_data_imm(engine: str, a: int, v: int, ggtt: bool, qword: bool) -> None:
    dws = cmds.store_qword(a, v, ggtt=ggtt) if qword else cmds.store_dword(a, v & 0xFFFF_FFFF, ggtt=ggtt)
    _check(engine, "MI_STORE_DATA_IMM", dws)


@given(engine=st.sampled_from(GPU_ENGINES), pairs=st.lists(st.tuples(st.integers(0, 0x1FFFFF).map(lambda r: r & ~3),
                                                                  u32), min_size=1, max_size=20))
def test_load_register_imm(engine: str, pairs: list[tuple[int, int]]) -> None:
    _check(engine, "MI_LOAD_REGISTER_IMM", cmds.load_register_imm(pairs))


@given(engine=st.sampled_from(("bcs", "vcs", "vecs")), a=addr, v=st.none() | u32, notify=st.booleans(),
       ggtt=st.booleans())
def test_flush_dw(engine: str, a: int, v: int | None, notify: bool, ggtt: bool) -> None:
    _check(engine, "MI_FLUSH_DW", cmds.flush_dw(a, v, notify=notify, ggtt=ggtt))


@given(a=addr, v=st.none() | u64, notify=st.booleans(), ggtt=st.booleans())
def test_pipe_control(a: int, v: int | None, notify: bool, ggtt: bool) -> None:
    _check("rcs", "PIPE_CONTROL", cmds.pipe_control(a, v, notify=notify, ggtt=ggtt))


BLITS: list[tuple[str, Callable[..., list[int]]]] = [
    ("XY_COLOR_BLT", lambda d, p, x, y, s: cmds.xy_color_blt(d, p, x, y, x + 1, y + 1, 0x1234)),
    ("XY_SRC_COPY_BLT", lambda d, p, x, y, s: cmds.xy_src_copy_blt(d, p, x, y, x + 1, y + 1, s, p)),
    ("XY_COLOR_BLT", lambda d, p, x, y, s: cmds.color_blt(d, p, x + 1, y + 1, 0)),
    ("XY_SRC_COPY_BLT", lambda d, p, x, y, s: cmds.src_copy_blt(d, p, s, p, x + 1, y + 1)),
]


@pytest.mark.parametrize(("name", "make"), BLITS)
@given(d=addr, p=pitch, x=coord, y=coord, s=addr)
def test_blits_on_the_blitter(name: str, make: Callable[..., list[int]], d: int, p: int, x: int, y: int,
                              s: int) -> None:
    _check("bcs", name, make(d, p, x, y, s))


@pytest.mark.parametrize("engine", ["rcs", "vcs", "vecs"])
def test_blits_are_not_commands_of_other_engines(engine: str) -> None:
    assert lookup(engine, cmds.color_blt(0, 256, 1, 1, 0)[0]) is None
    assert lookup(engine, cmds.src_copy_blt(0, 256, 0, 256, 1, 1)[0]) is None
