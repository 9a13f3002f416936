"""The command table pgpu executes: the real GEN9 command set (hardware/cmd_table.py, every row of
i915/gvt cmd_parser.c ``cmd_info[]``, the table gvt's scanner uses too) decoded as the hardware does, and
the subset this emulator executes, each with its handler.

Header fields (i915 gt/intel_gpu_commands.h: INSTR_CLIENT_SHIFT 29; MI_INSTR(op, flags) = op << 23 | flags):
* client (command type) bits 31:29: 0 MI, 2 2D/BLT, 3 render / media / video;
* the opcode is the header shifted right by 32 - op_len (9 bits for MI, 10 for 2D, 16 for type 3), per
  ring (cmd_parser.c get_opcode / ring_decode_info);
* the length rule of the row (a constant, or a length field of ``len`` bits holding dwords - 2).
A command that is not in the table for this engine ends the context with UNKNOWN_COMMAND (detail = the
header dword); a command the table knows but this emulator does not execute ends it with
UNSUPPORTED_COMMAND, naming the command: pgpu reports what it cannot execute, it never skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...hardware.opcodes import (
    MI_BATCH_PPGTT,
    MI_BATCH_SECOND_LEVEL,
    MI_FLUSH_DW_NOTIFY,
    MI_FLUSH_DW_OP_SHIFT,
    MI_FLUSH_DW_USE_GTT,
    MI_USE_GGTT,
    PIPE_CONTROL_GLOBAL_GTT_IVB,
    PIPE_CONTROL_NOTIFY,
    PIPE_CONTROL_POST_SYNC_SHIFT,
    POST_SYNC_IMM,
    POST_SYNC_NONE,
    POST_SYNC_TIMESTAMP,
)
from ...hardware.regs import MMIO_SIZE
from ...hardware import cmd_table as ct
from . import blit
from .dma import Dma

#: registers live in the first 2 MiB of BAR0: a register command naming an offset past it is refused
MMIO_LIMIT = MMIO_SIZE


class CommandError(Exception):
    """A known command with fields the emulator refuses; ends the context with ``status``."""

    def __init__(self, status: int, reason: str, detail: int = 0) -> None:
        self.status = status
        self.reason = reason
        self.detail = detail
        super().__init__(reason)


BAD_COMMAND = 4  # events.CtxStatus.BAD_COMMAND (kept numeric here: commands.py stays free of engine state)
BAD_REGISTER = 5


class Exec(Protocol):
    """What a handler may do to the engine running it (implemented by cmd_streamer.Streamer)."""

    engine: str

    def space(self, ggtt: bool) -> Dma: ...

    def batch_start(self, gma: int, ppgtt: bool, second_level: bool) -> None: ...

    def batch_end(self) -> None: ...

    def notify(self, why: str) -> None: ...

    def load_register(self, offset: int, value: int) -> None: ...

    def read_register(self, offset: int) -> int: ...

    def timestamp(self) -> int: ...

    def charge_regs(self, nregs: int) -> None: ...

    def charge_bytes(self, nbytes: int) -> None: ...


Handler = Callable[[Exec, list[int]], None]


@dataclass(frozen=True)
class CommandSpec:
    """A command this emulator executes: its row of the real table and its handler."""

    info: ct.CmdInfo
    handler: Handler

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def engines(self) -> frozenset[str]:
        return self.info.rings

    def length(self, hdr: int) -> int:
        """Dwords of the command whose header is ``hdr`` (the table's length rule)."""
        return self.info.length(hdr)


def _addr48(lo: int, hi: int, align: int) -> int:
    return ((hi & 0xFFFF) << 32 | lo) & ~(align - 1)


def _need(dws: list[int], allowed: tuple[int, ...], name: str) -> None:
    if len(dws) not in allowed:
        raise CommandError(BAD_COMMAND, f"{name} with {len(dws)} dwords (expected {' or '.join(map(str, allowed))})")


# ------------------------------------------------------------------------------------------- handlers
def _noop(ex: Exec, dws: list[int]) -> None:
    pass


def _user_interrupt(ex: Exec, dws: list[int]) -> None:
    ex.notify("MI_USER_INTERRUPT")


def _bb_end(ex: Exec, dws: list[int]) -> None:
    ex.batch_end()


def _bb_start(ex: Exec, dws: list[int]) -> None:
    _need(dws, (3,), "MI_BATCH_BUFFER_START")  # gen8: length 1 => 3 dwords, 48-bit address
    hdr = dws[0]
    ex.batch_start(_addr48(dws[1], dws[2], 4), bool(hdr & MI_BATCH_PPGTT), bool(hdr & MI_BATCH_SECOND_LEVEL))


def _store_data_imm(ex: Exec, dws: list[int]) -> None:
    _need(dws, (4, 5), "MI_STORE_DATA_IMM")  # gen8: address in 2 dwords; 5 dwords = qword store
    dma = ex.space(bool(dws[0] & MI_USE_GGTT))
    if len(dws) == 4:
        dma.write_u32(_addr48(dws[1], dws[2], 4), dws[3])
    else:
        dma.write_u64(_addr48(dws[1], dws[2], 8), dws[4] << 32 | dws[3])


def _load_register_imm(ex: Exec, dws: list[int]) -> None:
    if len(dws) < 3 or len(dws) % 2 == 0:
        raise CommandError(BAD_COMMAND, f"MI_LOAD_REGISTER_IMM with {len(dws)} dwords (need 1 + 2n)")
    pairs = [(dws[i] & 0x7F_FFFC, dws[i + 1]) for i in range(1, len(dws), 2)]
    for offset, _ in pairs:
        if offset >= MMIO_LIMIT:
            raise CommandError(BAD_REGISTER, f"MI_LOAD_REGISTER_IMM to {offset:#x}, outside the MMIO space")
    for offset, value in pairs:
        ex.load_register(offset, value)
    ex.charge_regs(len(pairs))


def _store_register_mem(ex: Exec, dws: list[int]) -> None:
    """MI_STORE_REGISTER_MEM (gen8: 4 dwords): the register's value to the address (bit 22: GGTT)."""
    _need(dws, (4,), "MI_STORE_REGISTER_MEM")
    offset = dws[1] & 0x7F_FFFC
    if offset >= MMIO_LIMIT:
        raise CommandError(BAD_REGISTER, f"MI_STORE_REGISTER_MEM of {offset:#x}, outside the MMIO space")
    ex.space(bool(dws[0] & MI_USE_GGTT)).write_u32(_addr48(dws[2], dws[3], 4), ex.read_register(offset))
    ex.charge_regs(1)


def _post_sync(ex: Exec, op: int, ggtt: bool, lo: int, hi: int, data: list[int], qword: bool) -> None:
    """The post-sync write of MI_FLUSH_DW / PIPE_CONTROL (bits 15:14: 1 immediate, 2 depth count, 3 timestamp)."""
    if op == POST_SYNC_NONE:
        return
    dma = ex.space(ggtt)
    if op == POST_SYNC_IMM:
        if qword:
            dma.write_u64(_addr48(lo, hi, 8), (data[1] << 32 | data[0]) if len(data) > 1 else data[0])
        else:
            dma.write_u32(_addr48(lo, hi, 4), data[0])
    elif op == POST_SYNC_TIMESTAMP:
        dma.write_u64(_addr48(lo, hi, 8), ex.timestamp())
    else:  # PS_DEPTH_COUNT: no depth pipeline is modelled; the count is 0
        dma.write_u64(_addr48(lo, hi, 8), 0)


def _flush_dw(ex: Exec, dws: list[int]) -> None:
    hdr = dws[0]
    op = hdr >> MI_FLUSH_DW_OP_SHIFT & 3
    if op != POST_SYNC_NONE:
        _need(dws, (4, 5), "MI_FLUSH_DW with post-sync write")
        _post_sync(ex, op, bool(dws[1] & MI_FLUSH_DW_USE_GTT), dws[1] & ~7, dws[2], dws[3:], len(dws) == 5)
    if hdr & MI_FLUSH_DW_NOTIFY:
        ex.notify("MI_FLUSH_DW notify")


def _pipe_control(ex: Exec, dws: list[int]) -> None:
    _need(dws, (6,), "PIPE_CONTROL")  # gen8: 6 dwords
    flags = dws[1]
    # gen8 post-sync write immediate is a QWord (i915: "we're using qword write")
    _post_sync(ex, flags >> PIPE_CONTROL_POST_SYNC_SHIFT & 3, bool(flags & PIPE_CONTROL_GLOBAL_GTT_IVB),
               dws[2] & ~7, dws[3], dws[4:6], True)
    if flags & PIPE_CONTROL_NOTIFY:
        ex.notify("PIPE_CONTROL notify")


def _blit(fn: Callable[[Dma, list[int]], int], dwords: int, name: str) -> Handler:
    def handler(ex: Exec, dws: list[int]) -> None:
        _need(dws, (dwords,), name)
        # Blit addresses go through the running context's address space: its PPGTT, or the GGTT for a
        # context whose PPGTT roots are all zero (aliasing PPGTT); see docs/PGPU.md.
        try:
            moved = fn(ex.space(False), dws)
        except blit.BlitError as err:
            raise CommandError(BAD_COMMAND, str(err)) from None
        ex.charge_bytes(moved)
    return handler


# --------------------------------------------------------------------------------------------- the table
#: what this emulator executes, by table name; every other row of the table is decoded and reported
EXECUTORS: dict[str, Handler] = {
    "MI_NOOP": _noop,
    "MI_USER_INTERRUPT": _user_interrupt,
    "MI_ARB_CHECK": _noop,  # a preemption point: nothing preempts here
    "MI_ARB_ON_OFF": _noop,
    "MI_BATCH_BUFFER_END": _bb_end,
    "MI_STORE_DATA_IMM": _store_data_imm,
    "MI_LOAD_REGISTER_IMM": _load_register_imm,
    "MI_STORE_REGISTER_MEM": _store_register_mem,
    "MI_FLUSH_DW": _flush_dw,
    "MI_BATCH_BUFFER_START": _bb_start,
    "PIPE_CONTROL": _pipe_control,
    "XY_COLOR_BLT": _blit(blit.color_blt, 7, "XY_COLOR_BLT"),
    "XY_SRC_COPY_BLT": _blit(blit.src_copy_blt, 10, "XY_SRC_COPY_BLT"),
}
COMMANDS: tuple[CommandSpec, ...] = tuple(CommandSpec(ct.BY_NAME[n], h) for n, h in EXECUTORS.items())
#: (engine, opcode) -> spec
TABLE: dict[tuple[str, int], CommandSpec] = {(e, c.info.opcode): c for c in COMMANDS for e in c.engines}


def decode_header(hdr: int) -> tuple[int, int | None]:
    """(client, opcode) of a command header as the render ring decodes it (opcode None for a command type
    the ring does not decode)."""
    return hdr >> 29 & 0x7, ct.get_opcode(hdr, "rcs")


def decode(engine: str, hdr: int) -> ct.CmdInfo | None:
    """The table row of ``hdr`` on ``engine`` (executed or not), or None: not a command of this ring."""
    return ct.lookup(engine, hdr)


def lookup(engine: str, hdr: int) -> CommandSpec | None:
    """The executable command ``hdr`` on ``engine``, or None (unknown, or known but not executed: see
    :func:`decode`)."""
    op = ct.get_opcode(hdr, engine)
    if op is None:
        return None
    return TABLE.get((engine, op))
