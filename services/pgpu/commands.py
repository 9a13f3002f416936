"""The command table: GEN command encodings, keyed by (client, opcode), with length rule and handler.

Header fields (i915 gt/intel_gpu_commands.h: INSTR_CLIENT_SHIFT 29; MI_INSTR(op, flags) = op << 23 | flags):
* client bits 31:29: 0 MI, 2 2D/BLT, 3 render (3D);
* MI opcode bits 28:23, length bits 5:0 (LRI: 7:0, i915 MI_LRI_LEN) = dword count - 2;
* BLT opcode bits 28:22, length bits 7:0;
* 3D: sub-type 28:27, opcode 26:24, sub-opcode 23:16 (the key is bits 28:16), length bits 7:0.
Like gvt's ``cmd_info[]`` (gvt-facts 5.3) each row names the engines it is valid on; a command that is not in
the table for this engine ends the context with UNKNOWN_COMMAND, detail = the header dword.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import blit
from .dma import Dma

CLIENT_MI, CLIENT_BLT, CLIENT_3D = 0, 2, 3
#: client -> (opcode shift, opcode mask)
OPCODE_FIELD: dict[int, tuple[int, int]] = {CLIENT_MI: (23, 0x3F), CLIENT_BLT: (22, 0x7F), CLIENT_3D: (16, 0x1FFF)}
ALL_ENGINES = frozenset({"rcs", "bcs", "vcs", "vecs"})

# i915 definitions used (gt/intel_gpu_commands.h)
MI_NOOP = 0
MI_USER_INTERRUPT = 0x02 << 23
MI_ARB_CHECK = 0x05 << 23
MI_ARB_ON_OFF = 0x08 << 23
MI_BATCH_BUFFER_END = 0x0A << 23
MI_STORE_DATA_IMM = 0x20 << 23
MI_LOAD_REGISTER_IMM = 0x22 << 23
MI_FLUSH_DW = 0x26 << 23
MI_BATCH_BUFFER_START = 0x31 << 23
MI_USE_GGTT = 1 << 22  # MI_STORE_DATA_IMM: address in the GGTT (MI_GLOBAL_GTT)
MI_BATCH_PPGTT = 1 << 8  # MI_BATCH_PPGTT_HSW: batch in the PPGTT (non-privileged)
MI_BATCH_SECOND_LEVEL = 1 << 22
MI_FLUSH_DW_NOTIFY = 1 << 8
MI_FLUSH_DW_OP_SHIFT = 14  # bits 15:14; 1 = MI_FLUSH_DW_OP_STOREDW, 3 = timestamp
MI_FLUSH_DW_USE_GTT = 1 << 2  # in the address dword
PIPE_CONTROL = (0x3 << 29) | (0x3 << 27) | (0x2 << 24)  # GFX_OP_PIPE_CONTROL(len) = 0x7A000000 | (len - 2)
PIPE_CONTROL_NOTIFY = 1 << 8
PIPE_CONTROL_POST_SYNC_SHIFT = 14  # bits 15:14; 1 = write immediate (QW), 3 = timestamp
PIPE_CONTROL_GLOBAL_GTT_IVB = 1 << 24
XY_COLOR_BLT = (2 << 29) | (0x50 << 22)
XY_SRC_COPY_BLT = (2 << 29) | (0x53 << 22)
MMIO_LIMIT = 0x200000  # registers live in the first 2 MiB of BAR0 (gvt-facts 3)

POST_SYNC_NONE, POST_SYNC_IMM, POST_SYNC_DEPTH, POST_SYNC_TIMESTAMP = 0, 1, 2, 3


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

    def timestamp(self) -> int: ...

    def charge_regs(self, nregs: int) -> None: ...

    def charge_bytes(self, nbytes: int) -> None: ...


Handler = Callable[[Exec, list[int]], None]


@dataclass(frozen=True)
class CommandSpec:
    """One row of the table: the fixed length (``const``) or the width of the length field (``len_bits``)."""

    name: str
    client: int
    opcode: int
    handler: Handler
    const: int = 0
    len_bits: int = 0
    engines: frozenset[str] = ALL_ENGINES

    def length(self, hdr: int) -> int:
        """Dwords of the command whose header is ``hdr``."""
        return self.const or (hdr & ((1 << self.len_bits) - 1)) + 2


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
COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("MI_NOOP", CLIENT_MI, 0x00, _noop, const=1),
    CommandSpec("MI_USER_INTERRUPT", CLIENT_MI, 0x02, _user_interrupt, const=1),
    CommandSpec("MI_ARB_CHECK", CLIENT_MI, 0x05, _noop, const=1),
    CommandSpec("MI_ARB_ON_OFF", CLIENT_MI, 0x08, _noop, const=1),
    CommandSpec("MI_BATCH_BUFFER_END", CLIENT_MI, 0x0A, _bb_end, const=1),
    CommandSpec("MI_STORE_DATA_IMM", CLIENT_MI, 0x20, _store_data_imm, len_bits=6),
    CommandSpec("MI_LOAD_REGISTER_IMM", CLIENT_MI, 0x22, _load_register_imm, len_bits=8),
    CommandSpec("MI_FLUSH_DW", CLIENT_MI, 0x26, _flush_dw, len_bits=6),
    CommandSpec("MI_BATCH_BUFFER_START", CLIENT_MI, 0x31, _bb_start, len_bits=6),
    CommandSpec("PIPE_CONTROL", CLIENT_3D, 0x1A00, _pipe_control, len_bits=8, engines=frozenset({"rcs"})),
    CommandSpec("XY_COLOR_BLT", CLIENT_BLT, 0x50, _blit(blit.color_blt, 7, "XY_COLOR_BLT"), len_bits=8),
    CommandSpec("XY_SRC_COPY_BLT", CLIENT_BLT, 0x53, _blit(blit.src_copy_blt, 10, "XY_SRC_COPY_BLT"), len_bits=8),
)

#: (engine, client, opcode) -> spec
TABLE: dict[tuple[str, int, int], CommandSpec] = {
    (engine, c.client, c.opcode): c for c in COMMANDS for engine in c.engines
}


def decode_header(hdr: int) -> tuple[int, int | None]:
    """(client, opcode) of a command header; opcode None for a client with no commands (client 1, 4-7)."""
    client = hdr >> 29 & 0x7
    field = OPCODE_FIELD.get(client)
    if field is None:
        return client, None
    shift, mask = field
    return client, hdr >> shift & mask


def lookup(engine: str, hdr: int) -> CommandSpec | None:
    """The table row for ``hdr`` on ``engine``, or None (unknown command)."""
    client, opcode = decode_header(hdr)
    if opcode is None:
        return None
    return TABLE.get((engine, client, opcode))
