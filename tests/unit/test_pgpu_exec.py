"""Command execution through the core: every command's effect in memory, batches, faults, the watchdog."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.pgpu import builder as b
from gvtsim.hardware.regs import MODE_LEGACY_32
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore
from gvtsim.services.pgpu.events import CtxStatus, EngineEvent

TERMINAL = {"ctx_complete", "page_fault", "hang", "error"}


@dataclass
class Rig:
    mem: MachineMemory
    core: PgpuCore
    lay: b.Layout

    def run(self, ctx: b.Context, tag: int = 1) -> list[EngineEvent]:
        """Map what the layout allocated, submit ``ctx`` and run it to its terminal event."""
        pending = self.lay.take_pending()
        if pending:
            self.core.ggtt_write(pending)
        self.core.submit(ctx.engine, [ctx.desc], tag, 0.0)
        events: list[EngineEvent] = []
        for _ in range(10_000):
            events += self.core.advance(0.0, ctx.engine)
            if any(e.kind in TERMINAL for e in events):
                return events
        raise AssertionError("context never ended")

    def u32(self, gma: int) -> int:
        return int.from_bytes(self.lay.read(gma, 4), "little")


@pytest.fixture()
def rig(tmp_path):
    mem = MachineMemory(str(tmp_path / "machine.mem"), 32 << 20, create=True)
    core = PgpuCore(mem, PgpuConfig(gm_mb=64, aperture_mb=16, time_scale=0, watchdog_cmds=5000))
    yield Rig(mem, core, b.Layout(mem, next_mfn=mem.frames))
    mem.close()


def terminal(events: list[EngineEvent]) -> EngineEvent:
    ends = [e for e in events if e.kind in TERMINAL]
    assert len(ends) == 1
    return ends[0]


def test_store_dword_and_qword_and_context_write_back(rig: Rig) -> None:
    ctx = rig.lay.context("vcs", ctx_id=0x77)
    buf = rig.lay.gm(1)
    rig.lay.emit(ctx, b.mi_store_dword(buf + 8, 0xCAFEF00D) + b.mi_store_qword(buf + 16, 0x1122334455667788))
    end = terminal(rig.run(ctx, tag=42))
    assert (end.kind, end.status, end.ctx_id, end.tag) == ("ctx_complete", 0, 0x77, 42)
    assert rig.u32(buf + 8) == 0xCAFEF00D
    assert rig.lay.read(buf + 16, 8) == (0x1122334455667788).to_bytes(8, "little")
    assert rig.lay.ring_value(ctx, "ring_header") == ctx.tail  # head := tail on save
    assert rig.lay.ring_value(ctx, "ctx_timestamp") > 0
    assert end.busy_ns > 0 and rig.core.status()["engines"]["vcs"]["busy_ns"] == end.busy_ns


def test_ppgtt_store_through_l3_tables(rig: Rig) -> None:
    pt = b.PpgttBuilder(rig.lay, levels=3)
    (target,) = pt.map_new(0x4000_0000 + 0x3000, 1)  # PDP1
    ctx = rig.lay.context("rcs", 1, mode=MODE_LEGACY_32, pdps=pt.roots)
    rig.lay.emit(ctx, b.mi_store_dword(0x4000_3010, 0x5A5A5A5A, ggtt=False))
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert rig.mem.read_u32(target + 0x10) == 0x5A5A5A5A


def test_lri_lands_in_the_register_file(rig: Rig) -> None:
    ctx = rig.lay.context("rcs", 1)
    rig.lay.emit(ctx, b.mi_lri([(0x20C0, 0xABCD), (0x7004, 0x1234)]))
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert rig.core.mmio_read(0x20C0, 4, 0.0) == 0xABCD and rig.core.mmio_read(0x7004, 4, 0.0) == 0x1234


def test_lri_outside_mmio_is_bad_register(rig: Rig) -> None:
    ctx = rig.lay.context("rcs", 1)
    rig.lay.emit(ctx, b.mi_lri([(0x300000, 1)]))
    end = terminal(rig.run(ctx))
    assert (end.kind, end.status) == ("error", CtxStatus.BAD_REGISTER)


def test_flush_dw_post_sync_and_notify_before_completion(rig: Rig) -> None:
    ctx = rig.lay.context("bcs", 9)
    buf = rig.lay.gm(1)
    rig.lay.emit(ctx, b.mi_flush_dw(buf + 0x40, 0x600D, notify=True) + b.mi_noop())
    events = rig.run(ctx)
    assert [e.kind for e in events] == ["user_interrupt", "ctx_complete"]
    assert events[0].reason == "MI_FLUSH_DW notify" and events[0].seq < events[1].seq
    assert rig.u32(buf + 0x40) == 0x600D


def test_pipe_control_qword_post_sync_and_notify(rig: Rig) -> None:
    ctx = rig.lay.context("rcs", 3)
    buf = rig.lay.gm(1)
    rig.mem.write_u64(rig.lay.maddr(buf + 0x80), 0xFFFF_FFFF_FFFF_FFFF)
    rig.lay.emit(ctx, b.pipe_control(buf + 0x80, 0x1234_5678, notify=True) + b.mi_user_interrupt())
    events = rig.run(ctx)
    assert [e.kind for e in events] == ["user_interrupt", "user_interrupt", "ctx_complete"]
    assert rig.lay.read(buf + 0x80, 8) == (0x1234_5678).to_bytes(8, "little")  # QW write clears the high half


def test_batches_first_level_chained_second_level(rig: Rig) -> None:
    ctx = rig.lay.context("rcs", 1)
    buf = rig.lay.gm(1)
    bb1, bb2, bb_chain = rig.lay.gm(1), rig.lay.gm(1), rig.lay.gm(1)
    rig.lay.write_dwords(bb1, b.mi_store_dword(buf, 1) + b.mi_bb_start(bb2, second_level=True)
                         + b.mi_store_dword(buf + 4, 3) + b.mi_bb_start(bb_chain))
    rig.lay.write_dwords(bb2, b.mi_store_dword(buf + 8, 2) + b.mi_bb_end())
    rig.lay.write_dwords(bb_chain, b.mi_store_dword(buf + 12, 4) + b.mi_bb_end())
    rig.lay.emit(ctx, b.mi_bb_start(bb1) + b.mi_store_dword(buf + 16, 5))
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert [rig.u32(buf + 4 * i) for i in range(5)] == [1, 3, 2, 4, 5]


def test_ppgtt_batch(rig: Rig) -> None:
    pt = b.PpgttBuilder(rig.lay, levels=4)
    (bb,) = pt.map_new(0x7_0000_0000, 1)
    (data,) = pt.map_new(0x7_0000_1000, 1)
    rig.mem.write(bb, b"".join(d.to_bytes(4, "little") for d in
                               b.mi_store_dword(0x7_0000_1004, 0xB0B, ggtt=False) + b.mi_bb_end()))
    ctx = rig.lay.context("vecs", 2, pdps=pt.roots)
    rig.lay.emit(ctx, b.mi_bb_start(0x7_0000_0000, ppgtt=True))
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert rig.mem.read_u32(data + 4) == 0xB0B


@pytest.mark.parametrize(("cmds", "status"), [
    ([0x0180_0000], CtxStatus.UNSUPPORTED_COMMAND),  # MI_WAIT_FOR_EVENT: decoded, not executed
    ([0x0980_0000], CtxStatus.UNKNOWN_COMMAND),  # MI opcode 0x13: no such command
    (b.mi_bb_end(), CtxStatus.BAD_COMMAND),  # BB_END in the ring
    (b.mi_bb_start(0x1000, second_level=True), CtxStatus.BAD_COMMAND),  # second level from the ring
    ([0x1040_0005, 0, 0, 0, 0, 0, 0], CtxStatus.BAD_COMMAND),  # MI_STORE_DATA_IMM of 7 dwords
])
def test_bad_commands_end_the_context_and_the_engine_runs_on(rig: Rig, cmds: list[int], status: CtxStatus) -> None:
    bad = rig.lay.context("rcs", 0xBAD)
    rig.lay.emit(bad, cmds)
    end = terminal(rig.run(bad))
    assert (end.kind, end.status, end.ctx_id) == ("error", status, 0xBAD)
    if status == CtxStatus.UNKNOWN_COMMAND:
        assert end.detail == cmds[0]
    good = rig.lay.context("rcs", 0x600D)
    buf = rig.lay.gm(1)
    rig.lay.emit(good, b.mi_store_dword(buf, 7))
    assert terminal(rig.run(good)).status == CtxStatus.OK and rig.u32(buf) == 7


@pytest.mark.parametrize("where", ["ggtt_absent", "ppgtt_absent", "beyond_gm", "batch_absent"])
def test_page_fault_status(rig: Rig, where: str) -> None:
    pt = b.PpgttBuilder(rig.lay, levels=4)
    pt.map_new(0x10_0000, 1)
    ctx = rig.lay.context("bcs", 5, pdps=pt.roots)
    bad = {"ggtt_absent": 0x3F0_0000, "ppgtt_absent": 0x20_0000, "beyond_gm": 64 << 20, "batch_absent": 0x3E0_0000}
    cmd = {"ggtt_absent": b.mi_store_dword(bad[where], 1), "ppgtt_absent": b.mi_store_dword(bad[where], 1, ggtt=False),
           "beyond_gm": b.mi_store_dword(bad[where], 1), "batch_absent": b.mi_bb_start(bad[where])}[where]
    rig.lay.emit(ctx, cmd)
    events = rig.run(ctx)
    end = terminal(events)
    assert (end.kind, end.status, end.detail) == ("page_fault", CtxStatus.PAGE_FAULT, bad[where])
    assert not any(e.kind == "ctx_complete" for e in events)


def test_blit_fault_writes_nothing(rig: Rig) -> None:
    ctx = rig.lay.context("bcs", 5)
    dst = rig.lay.gm(1)  # the next page is not mapped: a 2-page fill must fault before writing anything
    rig.lay.emit(ctx, b.xy_color_blt(dst, 8192, 0, 0, 2048, 1, 0xFFFFFFFF))
    assert terminal(rig.run(ctx)).kind == "page_fault"
    assert rig.lay.read(dst, 4096) == bytes(4096)


def test_endless_batch_loop_is_caught_and_engine_reset(rig: Rig) -> None:
    ctx = rig.lay.context("rcs", 0x100)
    loop = rig.lay.gm(1)
    rig.lay.write_dwords(loop, b.mi_noop() + b.mi_bb_start(loop))  # chains to itself forever
    rig.lay.emit(ctx, b.mi_bb_start(loop))
    end = terminal(rig.run(ctx))
    assert (end.kind, end.status, end.ctx_id) == ("hang", CtxStatus.HANG, 0x100)
    assert end.detail == rig.core.config.watchdog_cmds
    assert rig.core.status()["engines"]["rcs"]["resets"] == 1
    after = rig.lay.context("rcs", 0x101)
    buf = rig.lay.gm(1)
    rig.lay.emit(after, b.mi_store_dword(buf, 0x1))
    assert terminal(rig.run(after)).kind == "ctx_complete" and rig.u32(buf) == 1


def test_watchdog_simulated_time_limit(tmp_path) -> None:
    with MachineMemory(str(tmp_path / "m.mem"), 32 << 20, create=True) as mem:
        core = PgpuCore(mem, PgpuConfig(gm_mb=64, aperture_mb=16, time_scale=0, watchdog_ms=0.01))
        rig = Rig(mem, core, b.Layout(mem, next_mfn=mem.frames))
        ctx = rig.lay.context("bcs", 1)
        buf = rig.lay.gm(64)
        rig.lay.emit(ctx, b.xy_color_blt(buf, 4096, 0, 0, 1024, 64, 0) * 2)  # 2 x 256 KiB: > 10 us at 10 GB/s
        end = terminal(rig.run(ctx))
        assert end.kind == "hang" and end.busy_ns > 10_000


def test_ring_wraps(rig: Rig) -> None:
    ctx = rig.lay.context("vcs", 1)
    buf = rig.lay.gm(1)
    ctx.tail = 4096 - 8  # the next commands straddle the end of the 4 KiB ring
    rig.mem.write_u32(rig.lay.maddr(ctx.lrca + 4096) + 0x14, ctx.tail)  # head = tail: ring empty so far
    rig.lay.emit(ctx, b.mi_store_dword(buf, 0x11) + b.mi_store_dword(buf + 4, 0x22))
    assert ctx.tail == 24  # wrapped: 8 bytes before the end + 32 bytes of commands
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert (rig.u32(buf), rig.u32(buf + 4)) == (0x11, 0x22)


def test_privileged_commands_in_a_ppgtt_batch_are_nooped_and_counted(rig: Rig) -> None:
    """A PPGTT batch of a context with a PPGTT is non-privileged: its GGTT stores, register loads and a GGTT
    batch start are no-op'd (the start goes through the PPGTT), its PPGTT stores land; the ring is privileged."""
    pt = b.PpgttBuilder(rig.lay, levels=4)
    (bb,) = pt.map_new(0x7_0000_0000, 1)
    (data,) = pt.map_new(0x7_0000_1000, 1)
    ggtt_buf, ggtt_bb = rig.lay.gm(1), rig.lay.gm(1)
    (chained,) = pt.map_new(ggtt_bb, 1)  # the GGTT batch's address, in the PPGTT: what the start really reads
    words = (b.mi_store_dword(ggtt_buf, 0xBAD) + b.mi_lri([(0x20C0, 0xABCD)])
             + b.mi_store_dword(0x7_0000_1004, 0xB0B, ggtt=False) + b.mi_bb_start(ggtt_bb))
    rig.mem.write(bb, b"".join(d.to_bytes(4, "little") for d in words))
    rig.lay.write_dwords(ggtt_bb, b.mi_store_dword(ggtt_buf + 4, 0xBAD) + b.mi_bb_end())  # never runs
    rig.mem.write(chained, b"".join(d.to_bytes(4, "little") for d in
                                    b.mi_store_dword(0x7_0000_1008, 0xC0C, ggtt=False) + b.mi_bb_end()))
    ctx = rig.lay.context("rcs", 2, pdps=pt.roots)
    rig.lay.emit(ctx, b.mi_bb_start(0x7_0000_0000, ppgtt=True) + b.mi_store_dword(ggtt_buf + 8, 0x600D))
    assert terminal(rig.run(ctx)).status == CtxStatus.OK
    assert rig.u32(ggtt_buf) == 0 and rig.u32(ggtt_buf + 4) == 0 and rig.core.mmio_read(0x20C0, 4, 0.0) != 0xABCD
    assert rig.mem.read_u32(data + 4) == 0xB0B and rig.mem.read_u32(data + 8) == 0xC0C
    assert rig.u32(ggtt_buf + 8) == 0x600D  # back in the (privileged) ring
    c = rig.core.counters
    assert (c["nonpriv_ggtt_access"], c["nonpriv_register_load"], c["nonpriv_ggtt_batch_start"]) == (1, 1, 1)
