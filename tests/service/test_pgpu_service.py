"""gvtsim pgpu as a real process: a gvt-role client maps GGTT pages, builds contexts in machine memory,
submits on two engines at once and checks the GPU_EVENTs and the bytes."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import pytest
import structlog
import zmq.asyncio

from gvtsim.protocol import messages as m
from gvtsim.services.common.client import Connection, RemoteError
from gvtsim.services.common.liveness import HeartbeatConfig
from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.pgpu import builder as b
from support.procs import ServiceProc

pytestmark = pytest.mark.service


def start_pgpu(*extra: str) -> tuple[ServiceProc, str]:
    path = f"/dev/shm/gvtsim-test-pgpu-{uuid.uuid4().hex[:12]}.mem"
    proc = ServiceProc(["pgpu", "--bind", "tcp://127.0.0.1:*", "--mem-path", path, "--create-mem",
                        "--mem-size-mb", "64", "--gm-mb", "256", "--aperture-mb", "64", "--heartbeat-ivl", "0.2",
                        *extra])
    proc.start()
    return proc, path


@pytest.fixture()
def pgpu():
    proc, path = start_pgpu("--time-scale", "1000")  # 1 simulated us = 1 ms: completions visibly later
    yield proc, path
    proc.stop()
    os.unlink(path)


async def connect(endpoint: str, events: asyncio.Queue | None = None,
                  ident: str = "") -> tuple[zmq.asyncio.Context, Connection]:
    async def on_message(msg: m.Message) -> None:
        if events is not None and isinstance(msg, m.GpuEvent):
            events.put_nowait(msg)

    ctx = zmq.asyncio.Context()
    conn = Connection(ctx, endpoint, role="gvt", ident=ident or f"test-gvt-{os.getpid()}", epoch=time.time_ns(),
                      hb=HeartbeatConfig(0.2, 5), log=structlog.get_logger(), on_message=on_message,
                      server_role="pgpu")
    conn.start()
    await conn.wait_up(5)
    return ctx, conn


async def next_events(q: asyncio.Queue, n: int, timeout: float = 10) -> list[m.GpuEvent]:
    async with asyncio.timeout(timeout):
        return [await q.get() for _ in range(n)]


async def test_two_engines_at_once(pgpu) -> None:
    proc, path = pgpu
    events: asyncio.Queue[m.GpuEvent] = asyncio.Queue()
    zctx, conn = await connect(proc.endpoint, events)
    mem = MachineMemory(path)
    try:
        lay = b.Layout(mem, next_mfn=mem.frames)
        # RCS: store a dword, then a PIPE_CONTROL write from a batch buffer, then a user interrupt (the XY
        # blits are blitter commands: cmd_parser.c cmd_info[] lists them for R_BCS only)
        rcs = lay.context("rcs", 0x1001)
        target = lay.gm(4)
        batch = lay.gm(1)
        lay.write_dwords(batch, b.pipe_control(target + 4096, 0xA1B2C3D4) + b.mi_bb_end())
        lay.emit(rcs, b.mi_store_dword(target, 0xFEEDBEEF) + b.mi_bb_start(batch) + b.mi_user_interrupt())
        # BCS: copy a 64x8 32 bpp rectangle between two surfaces with different pitches
        bcs = lay.context("bcs", 0x2002)
        src, dst = lay.gm(3), lay.gm(2)
        src_bytes = random.Random(7).randbytes(3 * 4096)
        lay.write(src, src_bytes)
        lay.emit(bcs, b.xy_src_copy_blt(dst, 512, 0, 0, 64, 8, src, 1024, 4, 1) + b.mi_flush_dw(dst + 8000, 0x5EED))
        entries = lay.take_pending()
        ok = await conn.request(m.GgttWrite, entries=entries)
        assert isinstance(ok, m.Ok) and ok.value == len(entries)
        back = await conn.request(m.GgttRead, index=entries[0][0], count=1)
        assert isinstance(back, m.GgttEntries) and back.ptes == [entries[0][1]]

        replies = await asyncio.gather(conn.request(m.ElspSubmit, engine="rcs", descs=[rcs.desc], tag=11),
                                       conn.request(m.ElspSubmit, engine="bcs", descs=[bcs.desc], tag=22))
        assert all(isinstance(r, m.Ok) for r in replies)
        got = await next_events(events, 3)
        by_engine = {e: [ev for ev in got if ev.engine == e] for e in ("rcs", "bcs")}
        assert [(ev.kind, ev.ctx_id, ev.tag) for ev in by_engine["rcs"]] == [
            ("user_interrupt", 0x1001, 11), ("ctx_complete", 0x1001, 11)]
        assert [(ev.kind, ev.ctx_id, ev.tag, ev.status) for ev in by_engine["bcs"]] == [("ctx_complete", 0x2002, 22, 0)]
        assert all(ev.busy_ns > 1000 for ev in got if ev.kind == "ctx_complete")

        assert int.from_bytes(lay.read(target, 4), "little") == 0xFEEDBEEF
        assert int.from_bytes(lay.read(target + 4096, 4), "little") == 0xA1B2C3D4
        for y in range(8):
            assert lay.read(dst + y * 512, 256) == src_bytes[(1 + y) * 1024 + 16:(1 + y) * 1024 + 16 + 256]
        assert int.from_bytes(lay.read(dst + 8000, 4), "little") == 0x5EED
        assert lay.ring_value(rcs, "ring_header") == rcs.tail

        status = await conn.request(m.StatusRequest)
        assert isinstance(status, m.StatusReply)
        assert set(status.info["gpu"]) == {"vendor", "device", "revision", "gm_mb", "aperture_mb", "msi_cap", "fences",
                                           "profile"}
        assert status.info["engines"]["bcs"]["contexts"] == 1 and status.info["events"]["ctx_complete"] == 2
    finally:
        await conn.close()
        zctx.destroy(linger=0)
        mem.close()


async def test_bad_requests_get_errors_and_the_service_stays_up(pgpu) -> None:
    proc, path = pgpu
    events: asyncio.Queue[m.GpuEvent] = asyncio.Queue()
    zctx, conn = await connect(proc.endpoint, events)
    mem = MachineMemory(path)
    try:
        with pytest.raises(RemoteError) as err:
            await conn.request(m.GgttWrite, entries=[(1, 0x1001), (1 << 20, 0x2001)])  # 256 MiB GM: 65536 entries
        assert err.value.code == "bad_address"
        assert (await conn.request(m.GgttRead, index=1, count=1)).ptes == [0]  # nothing written
        with pytest.raises(RemoteError) as err:
            await conn.request(m.ElspSubmit, engine="vcs", descs=[b.make_descriptor(0x40_0000, 1)])
        assert err.value.code == "bad_address"  # LRCA not mapped
        # an unknown opcode ends only that context, with an error event
        lay = b.Layout(mem, next_mfn=mem.frames)
        ctx = lay.context("vcs", 0xE)
        lay.emit(ctx, [0x0180_0000, 0])
        await conn.request(m.GgttWrite, entries=lay.take_pending())
        await conn.request(m.ElspSubmit, engine="vcs", descs=[ctx.desc], tag=5)
        (ev,) = await next_events(events, 1)
        assert (ev.kind, ev.status, ev.detail, ev.ctx_id) == ("error", 3, 0x0180_0000, 0xE)
        assert isinstance(await conn.request(m.EngineReset, engine="vcs"), m.Ok)
        assert (await conn.request(m.PgpuMmioRead, offset=0x941C, size=4)).value == 0
    finally:
        await conn.close()
        zctx.destroy(linger=0)
        mem.close()


async def test_a_gvt_that_reconnects_with_its_identity_gets_the_events_of_its_workloads() -> None:
    """The connection was reset, the GPU ran on: the completion goes to the submitter's new session."""
    proc, path = start_pgpu("--time-scale", "200000")  # 1.2 us of GPU time = 0.24 s
    mem = MachineMemory(path)
    try:
        zctx, conn = await connect(proc.endpoint, ident="gvt-reconnects")
        lay = b.Layout(mem, next_mfn=mem.frames)
        ctx = lay.context("rcs", 1)
        buf = lay.gm(1)
        lay.emit(ctx, b.mi_store_dword(buf, 42))
        await conn.request(m.GgttWrite, entries=lay.take_pending())
        await conn.request(m.ElspSubmit, engine="rcs", descs=[ctx.desc], tag=7)
        await conn.close()  # the old session is gone before the completion is due
        zctx.destroy(linger=0)
        q: asyncio.Queue = asyncio.Queue()
        zctx2, again = await connect(proc.endpoint, q, ident="gvt-reconnects")
        try:
            (ev,) = await next_events(q, 1)
            assert ev.kind == "ctx_complete" and ev.tag == 7 and ev.status == 0
        finally:
            await again.close()
            zctx2.destroy(linger=0)
        assert int.from_bytes(lay.read(buf, 4), "little") == 42
    finally:
        proc.stop()
        mem.close()


async def test_events_of_a_lost_session_are_dropped_and_counted() -> None:
    proc, path = start_pgpu("--time-scale", "200000")  # 1.2 us of GPU time = 0.24 s
    mem = MachineMemory(path)
    try:
        zctx, conn = await connect(proc.endpoint)
        lay = b.Layout(mem, next_mfn=mem.frames)
        ctx = lay.context("rcs", 1)
        buf = lay.gm(1)
        lay.emit(ctx, b.mi_store_dword(buf, 42))
        await conn.request(m.GgttWrite, entries=lay.take_pending())
        await conn.request(m.ElspSubmit, engine="rcs", descs=[ctx.desc])
        await conn.close()  # BYE: the session is gone before the completion is due
        zctx.destroy(linger=0)
        zctx2, probe = await connect(proc.endpoint, ident="another-gvt")  # not the submitter's identity
        try:
            async with asyncio.timeout(10):
                while True:
                    st = await probe.request(m.StatusRequest)
                    if st.counters.get("events_dropped_peer_lost"):
                        break
                    await asyncio.sleep(0.05)
        finally:
            await probe.close()
            zctx2.destroy(linger=0)
        assert int.from_bytes(lay.read(buf, 4), "little") == 42  # the context still ran
        t0 = time.monotonic()
        assert proc.terminate(timeout=5) == 0
        assert time.monotonic() - t0 < 2.0
    finally:
        proc.stop()
        mem.close()
        os.unlink(path)
