"""The command scanner (cmd_parser.py, gvt/cmd_parser.c) as a pure object: forbidden and unknown commands,
the register whitelist, the GGTT address audit, batch-buffer walking and shadow layout, user interrupts."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gvtsim.hardware import cmd_table as ct
from gvtsim.services.common.memory import PAGE_SIZE
from gvtsim.hardware import cmds
from gvtsim.services.gvt import cmd_parser as cp
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.types import GmResource

WHITELIST = cp.whitelist(Gvt().table)
LOW, LOW_SIZE = 0x0800_0000, 0x10_0000  # the vGPU's aperture slice
HIGH, HIGH_SIZE = 0x5000_0000, 0x10_0000  # its hidden slice
RES = GmResource(LOW, LOW_SIZE, HIGH, HIGH_SIZE, ())
BB = HIGH + 0x1000  # where test batches live


def MI(op: int, n: int = 1) -> int:  # noqa: N802 (i915 name)
    """An MI header of ``n`` dwords."""
    return op << 23 | (max(n, 2) - 2 if n > 1 else 0)


class Gm:
    """Guest graphics memory for the pure tests: dwords by address; unmapped reads fail like _gm_to_gpa."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.reads = 0

    def put(self, gm: int, dwords: list[int]) -> None:
        for i, d in enumerate(dwords):
            a = gm + 4 * i
            page = self.pages.setdefault(a & ~(PAGE_SIZE - 1), bytearray(PAGE_SIZE))
            page[a % PAGE_SIZE:a % PAGE_SIZE + 4] = (d & 0xFFFF_FFFF).to_bytes(4, "little")

    def read(self, gm: int, n: int) -> bytes:
        self.reads += 1
        page = self.pages.get(gm & ~(PAGE_SIZE - 1))
        if page is None or not RES.contains(gm, n):
            raise cp.ScanError(cp.Errno.EFAULT, f"{gm:#x} not mapped")
        return bytes(page[gm % PAGE_SIZE:gm % PAGE_SIZE + n])


def parser(engine: str = "rcs", ppgtt: bool = False, gm: Gm | None = None) -> cp.Parser:
    return cp.Parser(engine, RES.contains, WHITELIST, ppgtt, (gm or Gm()).read)


def scan(ring: list[int], engine: str = "rcs", ppgtt: bool = False, gm: Gm | None = None) -> cp.Parser:
    p = parser(engine, ppgtt, gm)
    p.scan(cmds.to_bytes(ring))
    return p


def refused(ring: list[int], errno: cp.Errno, **kw: object) -> str:
    with pytest.raises(cp.ScanError) as info:
        scan(ring, **kw)  # type: ignore[arg-type]
    assert info.value.errno is errno, info.value
    return info.value.reason


# ------------------------------------------------------------------------------- forbidden / unknown
FORBIDDEN_OPS = {"MI_SEMAPHORE_WAIT": 0x1C, "MI_STORE_DATA_INDEX": 0x21, "MI_UPDATE_GTT": 0x23, "MI_CLFLUSH": 0x27,
                 "MI_REPORT_PERF_COUNT": 0x28, "MI_OP_2E": 0x2E, "MI_CONDITIONAL_BATCH_BUFFER_END": 0x36}


def test_the_forbidden_list_is_the_facts_list() -> None:
    assert set(cp.FORBIDDEN) == set(FORBIDDEN_OPS)


@pytest.mark.parametrize("name", sorted(FORBIDDEN_OPS))
@pytest.mark.parametrize("engine", ["rcs", "bcs"])
def test_each_forbidden_command_is_refused_in_the_ring_and_in_a_batch(name: str, engine: str) -> None:
    row = ct.BY_NAME[name]
    hdr = ct.encode(row, row.valid_len or 4)  # its valid length: the length rule passes, the handler refuses
    assert hdr >> 23 == FORBIDDEN_OPS[name]
    bad = [hdr] + [0] * (row.length(hdr) - 1)
    assert name in refused([cmds.MI_NOOP, *bad], cp.Errno.EBADRQC, engine=engine)
    gm = Gm()
    gm.put(BB, [cmds.MI_NOOP, *bad, cmds.MI_BATCH_BUFFER_END])
    assert name in refused(cmds.batch_buffer_start(BB), cp.Errno.EBADRQC, engine=engine, gm=gm)


@pytest.mark.parametrize("hdr", [MI(0x3F), MI(0x30), MI(0x13), 1 << 29, 7 << 29, 3 << 29 | 0x7F00 << 16,
                                 2 << 29 | 0x7F << 22])
def test_unknown_opcodes_are_refused(hdr: int) -> None:
    assert "unknown command" in refused([hdr], cp.Errno.EBADRQC)


@pytest.mark.parametrize("wrong,right,commands", [
    ("bcs", "rcs", cmds.pipe_control(HIGH, 1)),  # render only
    ("bcs", "rcs", [0x06 << 23]),  # MI_RS_CONTROL: render only
    ("rcs", "bcs", cmds.color_blt(HIGH, 256, 4, 4, 0)),  # blitter only
])
def test_a_command_of_another_ring_is_unknown_on_this_one(wrong: str, right: str, commands: list[int]) -> None:
    refused(commands, cp.Errno.EBADRQC, engine=wrong)
    scan(commands, engine=right)


# -------------------------------------------------------------------------------------- registers
def test_lri_whitelist_and_mmio_range() -> None:
    # CTX_SR_CTL, RING_MODE: F_CMD_ACCESS in handlers.c; RING_TAIL is not (MMIO_RING_DFH(RING_TAIL, D_ALL, 0))
    scan(cmds.load_register_imm([(0x2244, 1), (0x229C, 0xFFFF_0000)]))
    assert "non-render register 0x2030" in refused(cmds.load_register_imm([(0x2030, 1)]), cp.Errno.EBADRQC)
    assert "non-render register 0x44200" in refused(cmds.load_register_imm([(0x2244, 1), (0x44200, 0)]),
                                                    cp.Errno.EBADRQC)
    assert "0x78000" in refused(cmds.load_register_imm([(0x78000, 0)]), cp.Errno.EBADRQC)  # PVINFO
    assert "outside of the MMIO range" in refused(cmds.load_register_imm([(0x200000, 0)]), cp.Errno.EFAULT)


@pytest.mark.parametrize("op,cmd", [(0x24, "srm"), (0x29, "lrm")])
def test_srm_lrm_only_l3sqcreg4_and_21f0(op: int, cmd: str) -> None:
    for reg in (0xB118, 0x21F0):
        scan([MI(op, 4) | cp.MI_USE_GGTT, reg, HIGH, 0])
    assert cmd in refused([MI(op, 4) | cp.MI_USE_GGTT, 0x2244, HIGH, 0], cp.Errno.EPERM)  # whitelisted, not SRM
    refused([MI(op, 4) | cp.MI_USE_GGTT, 0x44200, HIGH, 0], cp.Errno.EBADRQC)
    refused([MI(op, 4) | cp.MI_USE_GGTT, 0xB118, HIGH - 4, 0], cp.Errno.EFAULT)  # its memory operand audited


def test_lrr_is_refused() -> None:
    refused([MI(0x2A, 3), 0xB118, 0x21F0], cp.Errno.EPERM)


# ------------------------------------------------------------------------------------------- audit
@pytest.mark.parametrize("addr,ok", [(HIGH, True), (LOW + LOW_SIZE - 4, True), (HIGH + HIGH_SIZE, False),
                                     (HIGH - 4, False), (0, False), (0x1_0000_0000 + HIGH, False)])
def test_store_dword_ggtt_address_audit(addr: int, ok: bool) -> None:
    ring = cmds.store_dword(addr, 7)
    if ok:
        scan(ring)
    else:
        refused(ring, cp.Errno.EFAULT)


def test_qword_store_straddling_the_range_end_is_refused() -> None:
    qword = MI(0x20, 5) | cp.MI_USE_GGTT | (1 << 21)  # 5 dwords need the qword bit (valid_len 5)
    refused([qword, HIGH + HIGH_SIZE - 4, 0, 1, 2], cp.Errno.EFAULT)
    scan([qword, HIGH + HIGH_SIZE - 8, 0, 1, 2])
    assert "len is not valid" in refused([qword & ~(1 << 21), HIGH, 0, 1, 2], cp.Errno.EFAULT)


def test_ppgtt_accesses_are_audited_only_without_a_ppgtt() -> None:
    """pgpu sends a no-PPGTT context's PPGTT accesses to the GGTT: then they are GGTT accesses."""
    ring = cmds.store_dword(0x1234_5000, 7, ggtt=False)
    scan(ring, ppgtt=True)
    refused(ring, cp.Errno.EFAULT, ppgtt=False)


@pytest.mark.parametrize("engine,make", [("rcs", cmds.pipe_control), ("bcs", cmds.flush_dw)])
def test_post_sync_writes_are_audited(engine: str, make: object) -> None:
    scan(make(HIGH + 8, 1, notify=True), engine=engine)  # type: ignore[operator]
    refused(make(HIGH + HIGH_SIZE, 1), cp.Errno.EFAULT, engine=engine)  # type: ignore[operator]


def test_blits_in_a_context_without_ppgtt_are_audited_whole_rectangle() -> None:
    pitch = 256
    scan(cmds.color_blt(HIGH, pitch, 64, 16, 0), engine="bcs")
    # the last row ends past the hidden slice
    refused(cmds.color_blt(HIGH + HIGH_SIZE - 15 * pitch, pitch, 64, 16, 0), cp.Errno.EFAULT, engine="bcs")
    refused(cmds.src_copy_blt(HIGH, pitch, 0x4000_0000, pitch, 64, 16), cp.Errno.EFAULT, engine="bcs")
    scan(cmds.src_copy_blt(HIGH, pitch, LOW, pitch, 64, 16), engine="bcs")
    scan(cmds.src_copy_blt(HIGH, pitch, 0x4000_0000, pitch, 64, 16), engine="bcs", ppgtt=True)  # its PPGTT's


# ------------------------------------------------------------------------------------------ batches
def test_privileged_batch_is_copied_and_the_start_patched_to_the_shadow() -> None:
    gm = Gm()
    body = cmds.store_dword(HIGH + 0x100, 0xAB) + [cmds.MI_USER_INTERRUPT, cmds.MI_BATCH_BUFFER_END]
    gm.put(BB, body)
    ring = cmds.batch_buffer_start(BB) + cmds.store_dword(HIGH, 1) + [cmds.MI_USER_INTERRUPT]
    p = scan(ring, gm=gm)
    assert [s.gm for s in p.segments] == [BB] and p.shadow_size() == 4 * len(body)
    shadow = 0x4100_0000
    out_ring, image = p.layout(shadow)
    words = [int.from_bytes(out_ring[i:i + 4], "little") for i in range(0, len(out_ring), 4)]
    assert words[:3] == cmds.batch_buffer_start(shadow)  # the GPU runs the checked copy
    assert words[3:7] == cmds.store_dword(HIGH, 1) and words[7] == cmds.MI_NOOP
    assert image[:4 * len(body)] == cmds.to_bytes(body[:4] + [cmds.MI_NOOP, cmds.MI_BATCH_BUFFER_END])
    assert p.events == ["RCS_MI_USER_INTERRUPT", "RCS_MI_USER_INTERRUPT"]


def test_second_level_and_chained_batches_get_their_own_shadows() -> None:
    gm = Gm()
    first, second, chained = BB, BB + 0x2000, BB + 0x3000
    gm.put(first, cmds.batch_buffer_start(second, second_level=True) + cmds.store_dword(HIGH, 1)
           + cmds.batch_buffer_start(chained))
    gm.put(second, cmds.store_dword(HIGH + 4, 2) + [cmds.MI_BATCH_BUFFER_END])
    gm.put(chained, cmds.store_dword(HIGH + 8, 3) + [cmds.MI_BATCH_BUFFER_END])
    p = scan(cmds.batch_buffer_start(first), gm=gm)
    assert [(s.gm, s.level) for s in p.segments] == [(first, 1), (second, 2), (chained, 1)]
    base = 0x4100_0000
    _, image = p.layout(base)
    seg = p.segments
    words = [int.from_bytes(image[i:i + 4], "little") for i in range(0, len(image), 4)]
    assert words[:3] == cmds.batch_buffer_start(base + seg[1].offset, second_level=True)
    assert words[7:10] == cmds.batch_buffer_start(base + seg[2].offset)
    assert all(s.offset % 8 == 0 for s in seg)


def test_batch_nesting_rules() -> None:
    gm = Gm()
    gm.put(BB, cmds.batch_buffer_start(BB + 0x1000, second_level=True) + [cmds.MI_BATCH_BUFFER_END])
    gm.put(BB + 0x1000, cmds.batch_buffer_start(BB + 0x2000) + [cmds.MI_BATCH_BUFFER_END])
    assert "second-level" in refused(cmds.batch_buffer_start(BB, second_level=True), cp.Errno.EFAULT, gm=gm)
    assert "in a second-level batch" in refused(cmds.batch_buffer_start(BB), cp.Errno.EFAULT, gm=gm)
    refused([cmds.MI_BATCH_BUFFER_END], cp.Errno.EBADRQC)  # no batch to end in the ring


def test_batch_outside_the_vgpu_or_without_end_is_refused() -> None:
    refused(cmds.batch_buffer_start(0x1000), cp.Errno.EFAULT)
    gm = Gm()
    gm.put(BB, [cmds.MI_NOOP] * 1024)  # runs off its page into unmapped GM
    refused(cmds.batch_buffer_start(BB), cp.Errno.EFAULT, gm=gm)


def test_a_batch_longer_than_the_scan_budget_is_refused() -> None:
    gm = Gm()
    gm.put(BB, [cmds.MI_NOOP] * (cp.MAX_SCAN_DWORDS + 8))  # mapped all along, but no end in sight
    assert "no batch end" in refused(cmds.batch_buffer_start(BB), cp.Errno.EFAULT, gm=gm)


def test_a_batch_chained_to_itself_is_scanned_once() -> None:
    gm = Gm()
    gm.put(BB, cmds.store_dword(HIGH, 1) + cmds.batch_buffer_start(BB))
    p = scan(cmds.batch_buffer_start(BB), gm=gm)
    assert len(p.segments) == 1
    _, image = p.layout(0x4100_0000)
    assert image[16:28] == cmds.to_bytes(cmds.batch_buffer_start(0x4100_0000))  # the loop, in the shadow


def test_ppgtt_batches_are_not_scanned_unless_the_context_has_no_ppgtt() -> None:
    gm = Gm()
    gm.put(BB, [MI(0x23, 4), 0, 0, 0, cmds.MI_BATCH_BUFFER_END])  # MI_UPDATE_GTT inside
    ring = cmds.batch_buffer_start(BB, ppgtt=True)
    p = scan(ring, ppgtt=True, gm=gm)
    assert p.segments == [] and gm.reads == 0
    assert p.layout(0)[0] == cmds.to_bytes(ring)
    refused(ring, cp.Errno.EBADRQC, ppgtt=False, gm=gm)  # through the GGTT after all: scanned


def test_a_command_running_past_the_ring_tail() -> None:
    refused(cmds.store_dword(HIGH, 1)[:3], cp.Errno.EBADRQC)


# ------------------------------------------------------------------------------------------ properties
SAFE = st.one_of(
    st.just([cmds.MI_NOOP]), st.just([cmds.MI_USER_INTERRUPT]),
    st.builds(lambda o, v: cmds.store_dword(HIGH + 4 * o, v), st.integers(0, HIGH_SIZE // 4 - 1),
              st.integers(0, 2**32 - 1)),
    st.builds(lambda v: cmds.load_register_imm([(0x2244, v)]), st.integers(0, 2**32 - 1)),
    st.builds(lambda o: cmds.pipe_control(HIGH + 8 * o, 1, notify=True), st.integers(0, HIGH_SIZE // 8 - 1)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ring=st.lists(SAFE, max_size=20), batch=st.lists(SAFE, max_size=20), base=st.integers(1, 2**20))
def test_allowed_commands_pass_and_only_starts_and_interrupts_change(ring: list[list[int]],
                                                                     batch: list[list[int]], base: int) -> None:
    gm = Gm()
    gm.put(BB, [d for c in batch for d in c] + [cmds.MI_BATCH_BUFFER_END])
    flat = [d for c in ring for d in c] + cmds.batch_buffer_start(BB)
    p = scan(flat, gm=gm)
    out, image = p.layout(base << 12)
    interrupts = sum(c == [cmds.MI_USER_INTERRUPT] for c in ring + batch)
    assert len(p.events) == interrupts and len(out) == 4 * len(flat)
    noop = [cmds.MI_NOOP]
    unint = lambda cs: [d for c in cs for d in (noop if c == [cmds.MI_USER_INTERRUPT] else c)]  # noqa: E731
    assert out == cmds.to_bytes(unint(ring) + cmds.batch_buffer_start(base << 12))
    body = cmds.to_bytes(unint(batch) + [cmds.MI_BATCH_BUFFER_END])
    assert image[:len(body)] == body and len(image) == (len(body) + 7) & ~7


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.integers(0, 2**32 - 1), max_size=40), engine=st.sampled_from(["rcs", "bcs", "vcs", "vecs"]),
       ppgtt=st.booleans())
def test_arbitrary_bytes_raise_nothing_but_scan_error(words: list[int], engine: str, ppgtt: bool) -> None:
    gm = Gm()
    gm.put(BB, words)
    try:
        p = scan(words, engine=engine, ppgtt=ppgtt, gm=gm)
    except cp.ScanError as err:
        assert err.errno in cp.Errno
        return
    out, _ = p.layout(0x4100_0000)
    assert len(out) == 4 * len(words)
