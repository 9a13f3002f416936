"""The command scanner (i915/gvt cmd_parser.c).

Before a workload reaches the physical GPU its ring bytes [head, tail) and every privileged batch buffer
they start are decoded command by command with the real ``cmd_info[]`` table (hardware/cmd_table.py:
all 225 gen9 rows, the same table pgpu decodes with) and the real scanner's rules (``cmd_parser_exec``):

* an opcode with no row for this ring => -EBADRQC; an F_LEN_VAR_FIXED row whose length is not its
  ``valid_len`` => -EFAULT; a row without a handler is accepted as it is (as upstream);
* the handlers of the 20 rows that have one: the "unexpected" commands (MI_SEMAPHORE_WAIT,
  MI_STORE_DATA_INDEX, MI_UPDATE_GTT, MI_CLFLUSH, MI_REPORT_PERF_COUNT, MI_OP_2E,
  MI_CONDITIONAL_BATCH_BUFFER_END) => -EBADRQC;
* LRI / SRM / LRM / LRR / PIPE_CONTROL registers (``cmd_reg_handler``): offset < 2 MB (else -EFAULT), the
  register must be F_CMD_ACCESS in gvt's register table (else -EBADRQC), SRM/LRM only GEN8_L3SQCREG4
  0xB118 and 0x21F0 (else -EPERM), LRR never on gen9 (-EPERM); for LRI also the write patches: DERRMR and
  FORCEWAKE_MT have their offset patched to the PVINFO page (the write is discarded), a load of the PDP0
  register pair gets the shadow PML4, an F_CMD_WRITE_PATCH register has its value replaced by what the
  register's MMIO handler makes of it, MOCS registers and (in a restore-inhibit context) F_SR_IN_CTX ones
  update the vregs;
* PIPE_CONTROL post-sync (``cmd_handler_pipe_control``): an MMIO write checks its register; operation 2
  (depth count) checks PS_DEPTH_COUNT 0x2350, operation 3 (timestamp) checks the timestamp 0x2358, and a
  GGTT write immediate is audited; MI_FLUSH_DW likewise (length 4 or 5). Index mode (bit 21, "store data
  index") needs an offset below 4 KB and is patched to the engine's HWS page (``hws_pga``) + offset;
* GGTT address audit (``cmd_address_audit``): the GGTT addresses a command writes or reads must lie in the
  vGPU's aperture or hidden range (-EFAULT);
* MI_BATCH_BUFFER_START (``cmd_handler_mi_batch_buffer_start``): a second-level start from the ring or any
  start inside a second-level batch => -EFAULT; a PPGTT (non-privileged, bit 8) batch is not scanned, as
  upstream; a privileged batch is walked to its MI_BATCH_BUFFER_END (following chained and second-level
  starts), copied into a shadow batch buffer and the start command patched to the shadow's GGTT address,
  so the GPU runs exactly the bytes that were checked (no time-of-check / time-of-use window);
* MI_USER_INTERRUPT is recorded in the workload's pending events and replaced by MI_NOOP: gvt injects it
  after the guest context is written back (``workload->pending_events``); MI_WAIT_FOR_EVENT on a flip and
  MI_DISPLAY_FLIP are replaced by MI_NOOPs (the flip's plane update belongs to the display emulation).

Simulation note: pgpu runs a context whose PPGTT roots are all zero with its "PPGTT" accesses going through
the GGTT (docs/PGPU.md). In such a context a PPGTT-addressed store, blit or batch is really a GGTT access,
so the scanner audits and shadows it like a GGTT one; otherwise it would be a way round the audit. For the
same reason the XY blits, which upstream does not audit (no handler), have their rectangles audited.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ...hardware.engines import BY_NAME
from ...hardware.opcodes import BLT_BPP, MI_NOOP, MI_USE_GGTT, PIPE_CONTROL_MMIO_WRITE
from ...hardware.opcodes import MI_BATCH_PPGTT as BB_PPGTT
from ...hardware.opcodes import MI_BATCH_SECOND_LEVEL as BB_SECOND_LEVEL
from ...hardware.opcodes import MI_FLUSH_DW_USE_GTT as FLUSH_DW_USE_GTT
from ...hardware.opcodes import MI_FLUSH_DW_STORE_INDEX as STORE_INDEX  # bit 21, also PIPE_CONTROL's
from ...hardware.opcodes import PIPE_CONTROL_GLOBAL_GTT_IVB as PIPE_CONTROL_GLOBAL_GTT
from ...hardware.opcodes import XY_DST_TILED as BLT_DST_TILED
from ...hardware.opcodes import XY_SRC_TILED as BLT_SRC_TILED
from ...hardware.regs import DERRMR, FORCEWAKE_MT
from ...hardware.regs import PVINFO as VGT_PVINFO_PAGE
from ...hardware import cmd_table as ct
from ..common.memory import PAGE_SIZE
from .handlers import F, MmioTable, Reg
from .mmio import MMIO_SIZE

PS_DEPTH_COUNT = 0x2350  # post-sync operation 2 writes it
RING_TIMESTAMP_RCS = 0x2358  # post-sync operation 3 writes it
MI_WAIT_FLIP_PENDING = (1 << 15) | (1 << 9) | (1 << 1) | (1 << 20) | (1 << 10) | (1 << 2)  # planes / sprites A-C
REG_MASK = 0x7F_FFFC  # register offset bits 22:2 of LRI/SRM/LRM
#: SRM/LRM may only touch GEN8_L3SQCREG4 and 0x21F0 (cmd_reg_handler; INSTPM only on BDW)
SRM_LRM_REGS = frozenset({0xB118, 0x21F0})
#: scan budget per workload: a batch that never reaches MI_BATCH_BUFFER_END is refused, not walked forever
MAX_SCAN_DWORDS = 64 * 1024


class Errno(str, enum.Enum):
    """The error a handler returns in cmd_parser.c."""

    EBADRQC = "EBADRQC"  # forbidden / unknown command, register not in the whitelist
    EFAULT = "EFAULT"  # address outside the vGPU's graphics memory or the MMIO range; bad batch nesting
    EPERM = "EPERM"  # SRM/LRM/LRR register not allowed
    EINVAL = "EINVAL"  # a PDP load naming no known PPGTT


#: vgpu_is_vm_unhealthy (gvt.h): the scan errors that put the vGPU in failsafe; -EPERM only fails the workload
VM_UNHEALTHY = frozenset({Errno.EBADRQC, Errno.EFAULT})


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


@dataclass
class ScanHooks:
    """What the LRI / index-mode rules need of the vGPU (cmd_reg_handler, cmd_pdp_mmio_update_handler):

    * ``hws_pga``: the engine's HWS page GGTT address (vgpu->hws_pga[ring], set by hws_pga_write);
    * ``shadow_pml4(guest_pml4)``: the shadow PML4 of a known 4-level PPGTT, or None;
    * ``write_patch(offset, value)``: the value an F_CMD_WRITE_PATCH register's MMIO handler makes of
      ``value`` (its vreg restored afterwards), or None when the register is not one;
    * ``set_vreg(offset, value)``: store a value into the vreg (MOCS; F_SR_IN_CTX in an inhibit context);
    * ``sr_in_ctx(offset)``: whether the register is F_SR_IN_CTX; ``restore_inhibit``: the context has
      CTX_CTRL_ENGINE_CTX_RESTORE_INHIBIT set (ctx_sr_ctl bit 0).
    """

    hws_pga: int = 0
    shadow_pml4: Callable[[int], int | None] = lambda pml4: None
    write_patch: Callable[[int, int], int | None] = lambda offset, value: None
    set_vreg: Callable[[int, int], None] = lambda offset, value: None
    sr_in_ctx: Callable[[int], bool] = lambda offset: False
    restore_inhibit: bool = False


# ------------------------------------------------------------------------------------------ the state
class Parser:
    """parser_exec_state for one workload: the checks' inputs, and what the scan produced.

    Args:
        engine: the physical engine (selects the table rows, as upstream's ring masks do).
        audit: ``(gma, size) -> bool``, the vGPU's aperture/hidden range check (vgpu.resource.contains).
        cmd_accessible: ``offset -> bool``, the F_CMD_ACCESS whitelist of gvt's register table.
        has_ppgtt: whether the context has PPGTT roots (else its PPGTT accesses go through the GGTT).
        read_gm: reads guest graphics memory through the vGPU's GGTT; raises ScanError when unmapped.
        hooks: the vGPU side of the LRI write patches and index mode (None: a pure scan with no vGPU).
    """

    def __init__(self, engine: str, audit: Callable[[int, int], bool], cmd_accessible: Callable[[int], bool],
                 has_ppgtt: bool, read_gm: Callable[[int, int], bytes], hooks: "ScanHooks | None" = None) -> None:
        self.engine = engine
        self._audit = audit
        self._cmd_accessible = cmd_accessible
        self.has_ppgtt = has_ppgtt
        self._read_gm = read_gm
        self.hooks = hooks or ScanHooks()
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
            info = ct.lookup(self.engine, hdr)
            if info is None:
                raise ScanError(Errno.EBADRQC, f"unknown command {hdr:#010x} on {self.engine}")
            n = info.length(hdr)
            self.budget -= n
            if self.budget < 0:
                raise ScanError(Errno.EFAULT, f"more than {MAX_SCAN_DWORDS} dwords of commands (no batch end?)")
            if end is not None and pos + 4 * n > end:
                raise ScanError(Errno.EBADRQC, f"{info.name} runs past the ring tail")
            if info.var_fixed and n != info.valid_len:  # gvt_check_valid_cmd_length
                raise ScanError(Errno.EFAULT, f"{info.name}: len is not valid: len={n} valid_len={info.valid_len}")
            dws = fetch(pos, n)
            self.counts[info.name] = self.counts.get(info.name, 0) + 1
            handler = HANDLERS[info.handler] if info.handler else EXTRA_AUDITS.get(info.name, _ok)
            stop = handler(self, dws, level, (buf, len(out)))
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
    def guest_bytes(self) -> list[tuple[int, bytes]]:
        """The guest's bytes of every scanned batch as they were read for the scan: (graphics address,
        bytes), the original dwords before any patch."""
        out = []
        for seg in self.segments:
            gm, n, data = seg.gm, 4 * len(seg.data), bytearray()
            while n:
                page = gm & ~(PAGE_SIZE - 1)
                k = min(n, PAGE_SIZE - (gm - page))
                data += self._pages[page][gm - page:gm - page + k]
                gm, n = gm + k, n - k
            out.append((seg.gm, bytes(data)))
        return out

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


def _to_bytes(dws: list[int]) -> bytes:
    return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)


def _addr48(lo: int, hi: int, align: int) -> int:
    return ((hi & 0xFFFF) << 32 | lo) & ~(align - 1)


# ------------------------------------------------------------------------------------------ handlers
Where = tuple[int, int]  # (buffer, dword index of the command in it)
Handler = Callable[[Parser, list[int], int, Where], "Stop | None"]


def _need(dws: list[int], allowed: tuple[int, ...], name: str) -> None:
    """gvt_check_valid_cmd_length: -EFAULT for a length the command does not allow."""
    if len(dws) not in allowed:
        raise ScanError(Errno.EFAULT, f"{name}: len is not valid: len={len(dws)} valid_len={allowed}")


def _ok(p: Parser, dws: list[int], level: int, at: Where) -> None:
    return None


def _user_interrupt(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """Recorded for injection after the guest context is written back, and NOOPed (gvt/cmd_parser.c)."""
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
    """cmd_handler_mi_store_data_imm: a GGTT store (bit 22) must be 4 dwords (5 for a qword, bit 21);
    the address (core id in bit 0 of dword 1 picks the second slot) is audited for the data it writes."""
    if not p.ggtt(bool(dws[0] & MI_USE_GGTT)):
        return
    _need(dws, (5,) if dws[0] & (1 << 21) else (4,), "MI_STORE_DATA_IMM")
    size = 4 * (len(dws) - 3)
    core = dws[1] & 1
    p.audit(_addr48(dws[1], dws[2], 4) + size * core, size, "MI_STORE_DATA_IMM")


def _unexpected(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """unexpected_cmd: "Unexpected %s in command buffer!" => -EBADRQC."""
    info = ct.lookup(p.engine, dws[0])
    raise ScanError(Errno.EBADRQC, f"Unexpected {info.name if info else hex(dws[0])} in command buffer")


def _lri(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_lri: every (register, value) pair through cmd_reg_handler's LRI rules."""
    if len(dws) < 3 or len(dws) % 2 == 0:
        raise ScanError(Errno.EFAULT, f"MI_LOAD_REGISTER_IMM with {len(dws)} dwords")
    for i in range(1, len(dws), 2):
        offset = dws[i] & REG_MASK
        p.check_reg(offset, "lri")
        _lri_patch(p, dws, i, offset)


def _lri_patch(p: Parser, dws: list[int], i: int, offset: int) -> None:
    """The LRI part of cmd_reg_handler, after the whitelist: PDP load, discarded writes, MOCS, write patch,
    restore-inhibit vregs."""
    h = p.hooks
    base = _engine_base(p.engine)
    if offset == base + 0x274:  # GEN8_RING_PDP_UDW(base, 0): the guest loads its PML4 with LRI
        if len(dws) < i + 4 or dws[i + 2] & REG_MASK != base + 0x270:
            raise ScanError(Errno.EINVAL, "PDP0 load without its lower half")
        shadow = h.shadow_pml4((dws[i + 1] << 32) | dws[i + 3])
        if shadow is None:
            raise ScanError(Errno.EINVAL, "failed to get the 4-level shadow vm")
        dws[i + 1], dws[i + 3] = shadow >> 32, shadow & 0xFFFF_FFFF
        p.counts["pdp_patched"] = p.counts.get("pdp_patched", 0) + 1
    if offset in (DERRMR, FORCEWAKE_MT):
        dws[i] = VGT_PVINFO_PAGE  # the hardware write lands in the PVINFO page: discarded
    value = dws[i + 1]
    if 0xC800 <= offset <= 0xCFF8 or 0xB020 <= offset <= 0xB0A0:  # is_mocs_mmio
        h.set_vreg(offset, value)
    patched = h.write_patch(offset, value)
    if patched is not None and patched != value:
        dws[i + 1] = patched & 0xFFFF_FFFF
    if h.restore_inhibit and h.sr_in_ctx(offset):
        h.set_vreg(offset, value)


def _engine_base(engine: str) -> int:
    return BY_NAME[engine].base


def _reg_mem(cmd: str) -> Handler:
    """cmd_handler_srm / cmd_handler_lrm: the register, then (bit 22) the GGTT address of its dword."""
    def handler(p: Parser, dws: list[int], level: int, at: Where) -> None:
        for i in range(1, len(dws) - 2, 3):
            p.check_reg(dws[i] & REG_MASK, cmd)
            if p.ggtt(bool(dws[0] & MI_USE_GGTT)):
                p.audit(_addr48(dws[i + 1], dws[i + 2], 4), 4, cmd.upper())
    return handler


def _lrr(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_lrr: source and destination registers; on gen9 neither is allowed (-EPERM)."""
    p.check_reg(dws[1] & REG_MASK, "lrr")


def _post_sync_gma(p: Parser, dws: list[int], addr: int, index_mode: bool, name: str) -> None:
    """The GGTT post-sync address of MI_FLUSH_DW / PIPE_CONTROL at dword ``addr`` (8 bytes): audited, or in
    index mode an offset in the HWS page (below 4 KB), patched to hws_pga + offset with the bit cleared."""
    gma = _addr48(dws[addr], dws[addr + 1], 8)
    if index_mode:
        if gma >= PAGE_SIZE:
            raise ScanError(Errno.EFAULT, f"{name}: store-index offset {gma:#x} beyond the HWS page")
        dws[addr] = (p.hooks.hws_pga + gma) & 0xFFFF_FFFF
        return
    p.audit(gma, 8, name)


def _flush_dw(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_mi_flush_dw: 4 or 5 dwords; a post-sync write to the GGTT (bit 2 of the address) audited
    or, with store index (bit 21), placed in the HWS page."""
    _need(dws, (4, 5), "MI_FLUSH_DW")
    if dws[0] >> 14 & 3 and p.ggtt(bool(dws[1] & FLUSH_DW_USE_GTT)):
        index = bool(dws[0] & STORE_INDEX)
        _post_sync_gma(p, dws, 1, index, "MI_FLUSH_DW")
        if index:
            dws[0] &= ~STORE_INDEX


def _pipe_control(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_pipe_control: an MMIO write checks its register; post-sync 2 / 3 check the registers they
    write (PS_DEPTH_COUNT 0x2350, the timestamp 0x2358); post-sync 1 to the GGTT is audited (or index)."""
    _need(dws, (6,), "PIPE_CONTROL")  # gen8+: 6 dwords (the handler's addresses assume it)
    flags = dws[1]
    op = flags >> 14 & 3
    if flags & PIPE_CONTROL_MMIO_WRITE:
        p.check_reg(dws[2] & REG_MASK, "pipe_ctrl")
    elif op == 2:
        p.check_reg(PS_DEPTH_COUNT, "pipe_ctrl")
    elif op == 3:
        p.check_reg(RING_TIMESTAMP_RCS, "pipe_ctrl")
    elif op == 1 and p.ggtt(bool(flags & PIPE_CONTROL_GLOBAL_GTT)):
        index = bool(flags & STORE_INDEX)
        _post_sync_gma(p, dws, 2, index, "PIPE_CONTROL")
        if index:
            dws[1] &= ~STORE_INDEX


def _op_2f(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_mi_op_2f (MI_ATOMIC): a GGTT operand (bit 22) is 3 dwords, 11 with inline data (bit 18);
    its 1 << (bits 20:19) dwords at the address are audited."""
    if not p.ggtt(bool(dws[0] & MI_USE_GGTT)):
        return
    _need(dws, (11,) if dws[0] & (1 << 18) else (3,), "MI_OP_2F")
    p.audit(_addr48(dws[1], dws[2], 4), 4 * (1 << (dws[0] >> 19 & 3)), "MI_OP_2F")


def _display_flip(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_mi_display_flip: 3 dwords (4 for a stereo flip), then every dword NOOPed; the plane
    registers the flip would update belong to the display emulation."""
    _need(dws, (4,) if len(dws) > 2 and dws[2] & 3 == 2 else (3,), "MI_DISPLAY_FLIP")
    dws[:] = [MI_NOOP] * len(dws)
    p.counts["display_flips"] = p.counts.get("display_flips", 0) + 1


def _wait_for_event(p: Parser, dws: list[int], level: int, at: Where) -> None:
    """cmd_handler_mi_wait_for_event: a wait for a flip is NOOPed (the flip itself was NOOPed)."""
    if dws[0] & MI_WAIT_FLIP_PENDING:
        dws[0] = MI_NOOP


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
#: cmd_info[].handler -> its implementation (every handler name the table uses)
HANDLERS: dict[str, Handler] = {
    "mi_user_interrupt": _user_interrupt,
    "mi_wait_for_event": _wait_for_event,
    "mi_batch_buffer_end": _bb_end,
    "mi_display_flip": _display_flip,
    "mi_semaphore_wait": _unexpected,
    "mi_store_data_imm": _store_data_imm,
    "mi_store_data_index": _unexpected,
    "lri": _lri,
    "mi_update_gtt": _unexpected,
    "srm": _reg_mem("srm"),
    "mi_flush_dw": _flush_dw,
    "mi_clflush": _unexpected,
    "mi_report_perf_count": _unexpected,
    "lrm": _reg_mem("lrm"),
    "lrr": _lrr,
    "mi_op_2e": _unexpected,
    "mi_op_2f": _op_2f,
    "mi_batch_buffer_start": _bb_start,
    "mi_conditional_batch_buffer_end": _unexpected,
    "pipe_control": _pipe_control,
}
#: gvtsim's audits of rows upstream leaves without a handler (see the simulation note above)
EXTRA_AUDITS: dict[str, Handler] = {
    "XY_COLOR_BLT": _blit("XY_COLOR_BLT", 7, False),
    "XY_SRC_COPY_BLT": _blit("XY_SRC_COPY_BLT", 10, True),
}
#: the rows whose handler refuses them outright
FORBIDDEN: tuple[str, ...] = tuple(c.name for c in ct.CMD_INFO if c.handler and HANDLERS[c.handler] is _unexpected)


def lookup(engine: str, hdr: int) -> ct.CmdInfo | None:
    """get_cmd_info: the row for ``hdr`` on ``engine``, or None (an unknown opcode for this ring)."""
    return ct.lookup(engine, hdr)
