"""The command scanner (i915/gvt cmd_parser.c; gvt-facts 5.3).

Before a workload reaches the physical GPU its ring bytes [head, tail) and every privileged batch buffer
they start are decoded command by command with a per-opcode table (``cmd_info[]``: name, opcode, length
rule, rings, handler), using the real gen8 encodings (the same fields pgpu decodes, pgpu/commands.py):

* forbidden commands and unknown opcodes => -EBADRQC ("Unexpected ... in command buffer");
* LRI / SRM / LRM / LRR registers (``cmd_reg_handler``): offset < 2 MB (else -EFAULT), the register must be
  F_CMD_ACCESS in gvt's register table (else -EBADRQC), SRM/LRM only GEN8_L3SQCREG4 0xB118 and 0x21F0
  (else -EPERM), LRR never on gen9 (-EPERM);
* GGTT address audit (``cmd_address_audit``): the GGTT addresses a command writes or reads must lie in the
  vGPU's aperture or hidden range (-EFAULT);
* MI_BATCH_BUFFER_START (``cmd_handler_mi_batch_buffer_start``): a second-level start from the ring or any
  start inside a second-level batch => -EFAULT; a PPGTT (non-privileged, bit 8) batch is not scanned, as
  upstream; a privileged batch is walked to its MI_BATCH_BUFFER_END (following chained and second-level
  starts), copied into a shadow batch buffer and the start command patched to the shadow's GGTT address,
  so the GPU runs exactly the bytes that were checked (no time-of-check / time-of-use window);
* MI_USER_INTERRUPT is recorded in the workload's pending events and replaced by MI_NOOP: gvt injects it
  after the guest context is written back (``workload->pending_events``).

Simulation note: pgpu runs a context whose PPGTT roots are all zero with its "PPGTT" accesses going through
the GGTT (docs/PGPU.md). In such a context a PPGTT-addressed store, blit or batch is really a GGTT access,
so the scanner audits and shadows it like a GGTT one; otherwise it would be a way round the audit.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .handlers import F, MmioTable, Reg
from .mmio import MMIO_SIZE

CLIENT_MI, CLIENT_BLT, CLIENT_3D = 0, 2, 3
#: client -> (opcode shift, opcode mask), as pgpu/commands.py (intel_gpu_commands.h INSTR_CLIENT_SHIFT 29)
OPCODE_FIELD: dict[int, tuple[int, int]] = {CLIENT_MI: (23, 0x3F), CLIENT_BLT: (22, 0x7F), CLIENT_3D: (16, 0x1FFF)}
MI_NOOP = 0
BB_PPGTT = 1 << 8  # MI_BATCH_PPGTT_HSW: address space = PPGTT (non-privileged batch)
BB_SECOND_LEVEL = 1 << 22
MI_USE_GGTT = 1 << 22  # MI_STORE_DATA_IMM / SRM / LRM: the address is in the GGTT
FLUSH_DW_USE_GTT = 1 << 2  # MI_FLUSH_DW: in the address dword
PIPE_CONTROL_GLOBAL_GTT = 1 << 24
PIPE_CONTROL_MMIO_WRITE = 1 << 23
REG_MASK = 0x7F_FFFC  # register offset bits 22:2 of LRI/SRM/LRM
#: SRM/LRM may only touch GEN8_L3SQCREG4 and 0x21F0 (cmd_reg_handler; INSTPM only on BDW)
SRM_LRM_REGS = frozenset({0xB118, 0x21F0})
#: shadow batch buffers: a window of the host's reserved high GM past the shadow contexts' first 2 MB
SHADOW_BB_GM_OFFSET = 16 << 20
SHADOW_BB_GM_PAGES = 4096
BLT_DST_TILED, BLT_SRC_TILED = 1 << 11, 1 << 15  # XY_* header: X-tiled destination / source
BLT_BPP = {0: 1, 1: 2, 2: 2, 3: 4}  # BR13 bits 25:24 colour depth -> bytes per pixel
#: scan budget per workload: a batch that never reaches MI_BATCH_BUFFER_END is refused, not walked forever
MAX_SCAN_DWORDS = 64 * 1024
R_ALL = frozenset({"rcs", "bcs", "vcs", "vecs"})
R_RCS, R_BCS = frozenset({"rcs"}), frozenset({"bcs"})


class Errno(str, enum.Enum):
    """The error a handler returns in cmd_parser.c."""

    EBADRQC = "EBADRQC"  # forbidden / unknown command, register not in the whitelist
    EFAULT = "EFAULT"  # address outside the vGPU's graphics memory or the MMIO range; bad batch nesting
    EPERM = "EPERM"  # SRM/LRM/LRR register not allowed


class ScanError(Exception):
    """A command buffer gvt refuses: the vGPU goes to failsafe and the workload fails."""

    def __init__(self, errno: Errno, reason: str) -> None:
        super().__init__(f"{errno.value}: {reason}")
        self.errno = errno
        self.reason = reason


class Stop(enum.Enum):
    """What a handler tells the walker after its command."""

    GO_ON = 0
    END = 1  # this buffer ends here (MI_BATCH_BUFFER_END, or a chained MI_BATCH_BUFFER_START)


@dataclass
class Segment:
    """A privileged batch (from ``gm`` to its end) copied for the shadow batch buffer."""

    gm: int
    level: int  # 1 first-level, 2 second-level
    data: list[int] = field(default_factory=list)
    offset: int = 0  # byte offset in the shadow image (set by layout)


@dataclass(frozen=True)
class Reloc:
    """A MI_BATCH_BUFFER_START at dword ``index`` of buffer ``buf`` (0 the ring, i + 1 segment i) that must
    point at segment ``target``'s shadow copy."""

    buf: int
    index: int
    target: int


# ------------------------------------------------------------------------------------------ the state
class Parser:
    """parser_exec_state for one workload: the checks' inputs, and what the scan produced.

    Args:
        engine: the physical engine (selects the table rows, as upstream's ring masks do).
        audit: ``(gma, size) -> bool``, the vGPU's aperture/hidden range check (vgpu.resource.contains).
        cmd_accessible: ``offset -> bool``, the F_CMD_ACCESS whitelist of gvt's register table.
        has_ppgtt: whether the context has PPGTT roots (else its PPGTT accesses go through the GGTT).
        read_gm: reads guest graphics memory through the vGPU's GGTT; raises ScanError when unmapped.
    """

    def __init__(self, engine: str, audit: Callable[[int, int], bool], cmd_accessible: Callable[[int], bool],
                 has_ppgtt: bool, read_gm: Callable[[int, int], bytes]) -> None:
        self.engine = engine
        self._audit = audit
        self._cmd_accessible = cmd_accessible
        self.has_ppgtt = has_ppgtt
        self._read_gm = read_gm
        self._pages: dict[int, bytes] = {}
        self.segments: list[Segment] = []
        self._by_key: dict[tuple[int, int], int] = {}
        self.relocs: list[Reloc] = []
        self.events: list[str] = []
        self.ring: list[int] = []
        self.budget = MAX_SCAN_DWORDS
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------------------- checks
    def check_reg(self, offset: int, cmd: str) -> None:
        """cmd_reg_handler: MMIO range, F_CMD_ACCESS whitelist, the SRM/LRM/LRR restrictions."""
        if offset + 4 > MMIO_SIZE:
            raise ScanError(Errno.EFAULT, f"{cmd} access to {offset:#x} outside of the MMIO range")
        if not self._cmd_accessible(offset):
            raise ScanError(Errno.EBADRQC, f"{cmd} access to non-render register {offset:#x}")
        if cmd in ("srm", "lrm") and offset not in SRM_LRM_REGS:
            raise ScanError(Errno.EPERM, f"{cmd} access to register {offset:#x}")
        if cmd == "lrr":
            raise ScanError(Errno.EPERM, f"lrr access to register {offset:#x}")

    def audit(self, gma: int, size: int, cmd: str) -> None:
        """cmd_address_audit: [gma, gma + size) inside the vGPU's aperture or hidden range."""
        if size > 0 and not self._audit(gma, size):
            raise ScanError(Errno.EFAULT, f"{cmd}: graphics address {gma:#x}+{size:#x} outside the vGPU's GM")

    def ggtt(self, explicit_ggtt: bool) -> bool:
        """Whether an access goes through the GGTT: asked for, or the context has no PPGTT."""
        return explicit_ggtt or not self.has_ppgtt

    # ------------------------------------------------------------------------------- walking
    def _batch_dwords(self, gm: int, n: int) -> list[int]:
        out = []
        for a in range(gm, gm + 4 * n, 4):
            page = a & ~(PAGE_SIZE - 1)
            data = self._pages.get(page)
            if data is None:
                data = self._pages[page] = self._read_gm(page, PAGE_SIZE)
            out.append(int.from_bytes(data[a - page:a - page + 4], "little"))
        return out

    def segment(self, gm: int, level: int) -> int:
        """The index of the shadow segment for the batch at ``gm`` (scanned once, even if started twice)."""
        key = (gm, level)
        if key not in self._by_key:
            self._by_key[key] = len(self.segments)
            self.segments.append(Segment(gm, level))
        return self._by_key[key]

    def walk(self, fetch: Callable[[int, int], list[int]], start: int, end: int | None, level: int,
             buf: int) -> list[int]:
        """Decode commands from ``start`` until ``end`` (the ring tail) or a handler ends the buffer.
        Returns the (patched) dwords to copy into the shadow."""
        out: list[int] = []
        pos = start
        while end is None or pos < end:
            hdr = fetch(pos, 1)[0]
            info = lookup(self.engine, hdr)
            if info is None:
                raise ScanError(Errno.EBADRQC, f"unknown command {hdr:#010x} on {self.engine}")
            if info.handler is None:
                raise ScanError(Errno.EBADRQC, f"Unexpected {info.name} in command buffer")
            n = info.length(hdr)
            self.budget -= n
            if self.budget < 0:
                raise ScanError(Errno.EFAULT, f"more than {MAX_SCAN_DWORDS} dwords of commands (no batch end?)")
            if end is not None and pos + 4 * n > end:
                raise ScanError(Errno.EBADRQC, f"{info.name} runs past the ring tail")
            dws = fetch(pos, n)
            self.counts[info.name] = self.counts.get(info.name, 0) + 1
            stop = info.handler(self, dws, level, (buf, len(out)))
            out.extend(dws)
            pos += 4 * n
            if stop is Stop.END:
                break
        return out  # a batch ends only by its handler: one without an end runs into the budget or unmapped GM

    def scan(self, ring: bytes) -> None:
        """Scan the ring bytes and, breadth first, every privileged batch they start."""
        words = [int.from_bytes(ring[i:i + 4], "little") for i in range(0, len(ring) - len(ring) % 4, 4)]
        self.ring = self.walk(lambda pos, n: words[pos // 4:pos // 4 + n], 0, 4 * len(words), 0, 0)
        done = 0
        while done < len(self.segments):  # segments are appended while earlier ones are walked
            seg = self.segments[done]
            seg.data = self.walk(self._batch_dwords, seg.gm, None, seg.level, done + 1)
            done += 1

    # ------------------------------------------------------------------------------- output
    def shadow_size(self) -> int:
        """Bytes of the shadow batch image (each segment 8-byte aligned)."""
        return sum((4 * len(s.data) + 7) & ~7 for s in self.segments)

    def layout(self, base_gm: int) -> tuple[bytes, bytes]:
        """Place the segments at ``base_gm`` in the host GGTT, patch every start to its shadow copy.
        Returns (the patched ring bytes, the shadow batch image)."""
        off = 0
        for s in self.segments:
            s.offset = off
            off += (4 * len(s.data) + 7) & ~7
        bufs = [self.ring] + [s.data for s in self.segments]
        for r in self.relocs:
            gma = base_gm + self.segments[r.target].offset
            b = bufs[r.buf]
            b[r.index] &= ~BB_PPGTT  # the shadow lives in the GGTT
            b[r.index + 1] = gma & 0xFFFF_FFFC
            b[r.index + 2] = (b[r.index + 2] & ~0xFFFF) | (gma >> 32 & 0xFFFF)
        image = bytearray(off)
        for s in self.segments:
            image[s.offset:s.offset + 4 * len(s.data)] = _to_bytes(s.data)
        return _to_bytes(self.ring), bytes(image)


def whitelist(table: MmioTable) -> Callable[[int], bool]:
    """intel_gvt_mmio_is_cmd_accessible over gvt's register table."""
    def accessible(offset: int) -> bool:
        r = table.info.get(offset)
        return r is not None and bool(r.flags & F.CMD_ACCESS)
    return accessible


def cmd_access_regs() -> list[Reg]:
    """Register-table rows the scanner needs: the two SRM/LRM targets are F_CMD_ACCESS in handlers.c."""
    return [Reg(off, flags=F.CMD_ACCESS) for off in sorted(SRM_LRM_REGS)]


@dataclass(frozen=True)
class ShadowBb:
    """A workload's shadow batch buffers: ``mfns`` mapped at ``gm`` (page ``first`` of the window)."""

    gm: int
    first: int
    mfns: list[int]


class ShadowBbWindow:
    """First-fit page runs in the host-GM window for shadow batch buffers."""

    def __init__(self, pages: int = SHADOW_BB_GM_PAGES) -> None:
        self.used = bytearray(pages)

    def alloc(self, n: int) -> int | None:
        """The first page of a free run of ``n`` pages (marked used), or None."""
        i = self.used.find(bytes(n))
        if i < 0 or n <= 0:
            return None
        self.used[i:i + n] = b"\1" * n
        return i

    def free(self, first: int, n: int) -> None:
        self.used[first:first + n] = bytes(n)

    @staticmethod
    def gm(aperture_size: int, first: int) -> int:
        """The graphics address of window page ``first`` (host high GM starts at the aperture end)."""
        return aperture_size + SHADOW_BB_GM_OFFSET + (first << PAGE_SHIFT)


def _to_bytes(dws: list[int]) -> bytes:
    return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)


def _addr48(lo: int, hi: int, align: int) -> int:
    return ((hi & 0xFFFF) << 32 | lo) & ~(align - 1)


# ------------------------------------------------------------------------------------------ handlers
Where = tuple[int, int]  # (buffer, dword index of the command in it)
Handler = Callable[[Parser, list[int], int, Where], "Stop | None"]


def _need(dws: list[int], allowed: tuple[int, ...], name: str) -> None:
    if len(dws) not in allowed:
        raise ScanError(Errno.EBADRQC, f"{name} with {len(dws)} dwords")


def _ok(p: Parser, dws: list[int], level: int, at: Where) -> None:
    return None


def _user_interrupt(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """Recorded for injection after the guest context is written back, and NOOPed (gvt-facts 5.3)."""
    p.events.append(f"{p.engine.upper()}_MI_USER_INTERRUPT")
    dws[0] = MI_NOOP


def _bb_end(p: Parser, dws: list[int], level: int, at: Where) -> Stop:
    if level == 0:
        raise ScanError(Errno.EBADRQC, "MI_BATCH_BUFFER_END in the ring")
    return Stop.END


def _bb_start(p: Parser, dws: list[int], level: int, at: Where) -> Stop | None:
    """cmd_handler_mi_batch_buffer_start: nesting rules, then shadow the batch unless it is PPGTT."""
    _need(dws, (3,), "MI_BATCH_BUFFER_START")  # gen8: 48-bit address, 3 dwords
    if level == 2:
        raise ScanError(Errno.EFAULT, "MI_BATCH_BUFFER_START in a second-level batch")
    second = bool(dws[0] & BB_SECOND_LEVEL)
    if second and level == 0:
        raise ScanError(Errno.EFAULT, "jumping to a second-level batch from the ring is not allowed")
    chained = level == 1 and not second  # a jump: no return to this buffer
    if not p.ggtt(not dws[0] & BB_PPGTT):
        return Stop.END if chained else None  # non-privileged batch: not scanned (upstream default)
    gma = _addr48(dws[1], dws[2], 4)
    target = p.segment(gma, 2 if second else 1)
    p.relocs.append(Reloc(at[0], at[1], target))
    return Stop.END if chained else None


def _store_data_imm(p: Parser, dws: list[int], level: int, at: Where) -> None:
    _need(dws, (4, 5), "MI_STORE_DATA_IMM")
    if p.ggtt(bool(dws[0] & MI_USE_GGTT)):
        p.audit(_addr48(dws[1], dws[2], 4), 4 * (len(dws) - 3), "MI_STORE_DATA_IMM")


def _lri(p: Parser, dws: list[int], level: int, at: Where) -> None:
    if len(dws) < 3 or len(dws) % 2 == 0:
        raise ScanError(Errno.EBADRQC, f"MI_LOAD_REGISTER_IMM with {len(dws)} dwords")
    for i in range(1, len(dws), 2):
        p.check_reg(dws[i] & REG_MASK, "lri")


def _reg_mem(cmd: str) -> Handler:
    """MI_STORE_REGISTER_MEM / MI_LOAD_REGISTER_MEM: the register, then the memory address."""
    def handler(p: Parser, dws: list[int], level: int, at: Where) -> None:
        _need(dws, (4,), cmd.upper())
        p.check_reg(dws[1] & REG_MASK, cmd)
        if p.ggtt(bool(dws[0] & MI_USE_GGTT)):
            p.audit(_addr48(dws[2], dws[3], 4), 4, cmd.upper())
    return handler


def _lrr(p: Parser, dws: list[int], level: int, at: Where) -> None:
    _need(dws, (3,), "MI_LOAD_REGISTER_REG")
    p.check_reg(dws[1] & REG_MASK, "lrr")


def _flush_dw(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_mi_flush_dw: audit the post-sync write (bits 15:14) when it targets the GGTT."""
    op = dws[0] >> 14 & 3
    if op:
        _need(dws, (4, 5), "MI_FLUSH_DW with post-sync write")
        if p.ggtt(bool(dws[1] & FLUSH_DW_USE_GTT)):
            size = 8 if op == 3 or len(dws) == 5 else 4
            p.audit(_addr48(dws[1], dws[2], 8 if size == 8 else 4), size, "MI_FLUSH_DW")


def _pipe_control(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_pipe_control: the post-sync MMIO write register, or the GGTT post-sync address."""
    _need(dws, (6,), "PIPE_CONTROL")
    flags = dws[1]
    if flags & PIPE_CONTROL_MMIO_WRITE:
        p.check_reg(dws[2] & REG_MASK, "pipe_ctrl")
    elif flags >> 14 & 3 and p.ggtt(bool(flags & PIPE_CONTROL_GLOBAL_GTT)):
        p.audit(_addr48(dws[2], dws[3], 8), 8, "PIPE_CONTROL")


def _rect_span(base: int, pitch: int, x1: int, y1: int, x2: int, y2: int, bpp: int) -> tuple[int, int]:
    """[first, last + 1) bytes a linear blit rectangle touches (pitch is signed 16 bits, as pgpu/blit.py)."""
    pitch = (pitch & 0xFFFF) - 0x10000 if pitch & 0x8000 else pitch & 0xFFFF
    if x2 <= x1 or y2 <= y1:
        return base, base
    rows = (base + y1 * pitch, base + (y2 - 1) * pitch)
    return min(rows) + x1 * bpp, max(rows) + x2 * bpp


def _tiled_span(base: int, pitch_dw: int, y1: int, y2: int) -> tuple[int, int]:
    """[first, last + 1) bytes an X-tiled blit touches: whole rows of 4 KiB tiles (512 bytes x 8 rows), the
    pitch field counting dwords (pgpu/blit.py)."""
    pitch = 4 * (pitch_dw & 0x7FFF)
    if y2 <= y1:
        return base, base
    return base + (y1 // 8) * 8 * pitch, base + -(-y2 // 8) * 8 * pitch


def _blit(name: str, dwords: int, src: bool) -> Handler:
    """XY blits go through the context's PPGTT, or the GGTT when it has none (docs/PGPU.md): audit then
    the destination rectangle (BR22/BR23 in pixels, BR13 pitch) and the source one (BR26, BR11)."""
    def handler(p: Parser, dws: list[int], level: int, at: Where) -> None:
        _need(dws, (dwords,), name)
        if not p.ggtt(False):
            return
        bpp = BLT_BPP[dws[1] >> 24 & 3]
        x1, y1, x2, y2 = dws[2] & 0xFFFF, dws[2] >> 16 & 0xFFFF, dws[3] & 0xFFFF, dws[3] >> 16 & 0xFFFF
        dst = _addr48(dws[4], dws[5], 1)
        lo, hi = (_tiled_span(dst, dws[1], y1, y2) if dws[0] & BLT_DST_TILED else
                  _rect_span(dst, dws[1], x1, y1, x2, y2, bpp))
        p.audit(lo, hi - lo, f"{name} destination")
        if src:
            sx, sy = dws[6] & 0xFFFF, dws[6] >> 16 & 0xFFFF
            sa = _addr48(dws[8], dws[9], 1)
            lo, hi = (_tiled_span(sa, dws[7], sy, sy + y2 - y1) if dws[0] & BLT_SRC_TILED else
                      _rect_span(sa, dws[7], sx, sy, sx + x2 - x1, sy + y2 - y1, bpp))
            p.audit(lo, hi - lo, f"{name} source")
    return handler


# --------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class CmdInfo:
    """One row of cmd_info[]: the fixed length (``const``) or the width of the length field; ``handler``
    None marks a forbidden command."""

    name: str
    client: int
    opcode: int
    handler: Handler | None
    const: int = 0
    len_bits: int = 6
    rings: frozenset[str] = R_ALL

    def length(self, hdr: int) -> int:
        """Dwords of the command whose header is ``hdr``."""
        return self.const or (hdr & ((1 << self.len_bits) - 1)) + 2


CMD_INFO: tuple[CmdInfo, ...] = (
    CmdInfo("MI_NOOP", CLIENT_MI, 0x00, _ok, const=1),
    CmdInfo("MI_USER_INTERRUPT", CLIENT_MI, 0x02, _user_interrupt, const=1),
    CmdInfo("MI_ARB_CHECK", CLIENT_MI, 0x05, _ok, const=1),
    CmdInfo("MI_ARB_ON_OFF", CLIENT_MI, 0x08, _ok, const=1),
    CmdInfo("MI_BATCH_BUFFER_END", CLIENT_MI, 0x0A, _bb_end, const=1),
    CmdInfo("MI_STORE_DATA_IMM", CLIENT_MI, 0x20, _store_data_imm),
    CmdInfo("MI_LOAD_REGISTER_IMM", CLIENT_MI, 0x22, _lri, len_bits=8),
    CmdInfo("MI_STORE_REGISTER_MEM", CLIENT_MI, 0x24, _reg_mem("srm")),
    CmdInfo("MI_FLUSH_DW", CLIENT_MI, 0x26, _flush_dw, rings=R_ALL - R_RCS),
    CmdInfo("MI_LOAD_REGISTER_MEM", CLIENT_MI, 0x29, _reg_mem("lrm")),
    CmdInfo("MI_LOAD_REGISTER_REG", CLIENT_MI, 0x2A, _lrr),
    CmdInfo("MI_BATCH_BUFFER_START", CLIENT_MI, 0x31, _bb_start),
    CmdInfo("PIPE_CONTROL", CLIENT_3D, 0x1A00, _pipe_control, len_bits=8, rings=R_RCS),
    CmdInfo("XY_COLOR_BLT", CLIENT_BLT, 0x50, _blit("XY_COLOR_BLT", 7, False), len_bits=8, rings=R_BCS),
    CmdInfo("XY_SRC_COPY_BLT", CLIENT_BLT, 0x53, _blit("XY_SRC_COPY_BLT", 10, True), len_bits=8, rings=R_BCS),
    # forbidden (gvt-facts 5.3: -EBADRQC "Unexpected ... in command buffer")
    CmdInfo("MI_SEMAPHORE_WAIT", CLIENT_MI, 0x1C, None),
    CmdInfo("MI_STORE_DATA_INDEX", CLIENT_MI, 0x21, None),
    CmdInfo("MI_UPDATE_GTT", CLIENT_MI, 0x23, None),
    CmdInfo("MI_CLFLUSH", CLIENT_MI, 0x27, None),
    CmdInfo("MI_REPORT_PERF_COUNT", CLIENT_MI, 0x28, None),
    CmdInfo("MI_OP_2E", CLIENT_MI, 0x2E, None),
    CmdInfo("MI_CONDITIONAL_BATCH_BUFFER_END", CLIENT_MI, 0x36, None),
)

#: (engine, client, opcode) -> row
TABLE: dict[tuple[str, int, int], CmdInfo] = {(r, c.client, c.opcode): c for c in CMD_INFO for r in c.rings}
FORBIDDEN: tuple[str, ...] = tuple(c.name for c in CMD_INFO if c.handler is None)


def lookup(engine: str, hdr: int) -> CmdInfo | None:
    """get_cmd_info: the row for ``hdr`` on ``engine``, or None (an unknown opcode for this ring)."""
    client = hdr >> 29 & 7
    f = OPCODE_FIELD.get(client)
    if f is None:
        return None
    return TABLE.get((engine, client, hdr >> f[0] & f[1]))
