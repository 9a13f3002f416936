"""Execlist ports, timing, events, resets and the MMIO registers gvt relies on (core driven directly)."""

from __future__ import annotations

import pytest

from gvtsim.protocol.errors import ErrorCode
from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.pgpu import builder as b
from gvtsim.hardware.engines import BY_NAME
from gvtsim.hardware.regs import EXECLIST_STATUS, FENCE_REG_GEN6_LO as FENCE_BASE, GEN6_GDRST as GDRST, RING_TAIL
from gvtsim.services.pgpu.context import make_descriptor
from gvtsim.protocol.errors import Refusal
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore
from gvtsim.services.pgpu.events import EngineEvent

SCALE = 1000.0  # clock seconds per simulated second: 1 simulated us = 1 ms on the test clock


@pytest.fixture()
def gpu(tmp_path):
    mem = MachineMemory(str(tmp_path / "m.mem"), 32 << 20, create=True)
    core = PgpuCore(mem, PgpuConfig(gm_mb=64, aperture_mb=16, time_scale=SCALE))
    yield core, b.Layout(mem, next_mfn=mem.frames)
    mem.close()


def workload(lay: b.Layout, engine: str, ctx_id: int, stores: int = 1) -> tuple[b.Context, int]:
    ctx = lay.context(engine, ctx_id)
    buf = lay.gm(1)
    for i in range(stores):
        lay.emit(ctx, b.mi_store_dword(buf + 4 * i, ctx_id))
    return ctx, buf


def drain(core: PgpuCore, until: float, step: float = 1e-4) -> list[tuple[float, EngineEvent]]:
    """Advance the core's clock to ``until`` in small steps; (delivery time, event) pairs."""
    out, now = [], 0.0
    while now <= until:
        while any(core.runnable(e, now) for e in core.engines):
            out += [(now, ev) for ev in core.advance(now)]
        now += step
    return out


def test_completion_is_due_after_the_simulated_cost(gpu) -> None:
    core, lay = gpu
    ctx, _ = workload(lay, "rcs", 1, stores=10)
    core.ggtt_write(lay.take_pending())
    core.submit("rcs", [ctx.desc], 7, 0.0)
    assert core.advance(0.0) == []  # executed, but not due yet
    deadline = core.next_deadline("rcs")
    assert deadline is not None and deadline > 0
    (ev,) = core.advance(deadline)
    assert ev.kind == "ctx_complete" and ev.due == pytest.approx(ev.busy_ns * 1e-9 * SCALE)
    assert ev.busy_ns == pytest.approx(1000 + 10 * 20, abs=1)  # context switch + 10 stores


def test_gpu_speed_divides_the_cost(tmp_path) -> None:
    costs = []
    for speed in (1.0, 4.0):
        with MachineMemory(str(tmp_path / f"m{speed}.mem"), 16 << 20, create=True) as mem:
            core = PgpuCore(mem, PgpuConfig(gm_mb=32, aperture_mb=8, time_scale=0, gpu_speed=speed))
            lay = b.Layout(mem, next_mfn=mem.frames)
            ctx, _ = workload(lay, "bcs", 1, stores=50)
            core.ggtt_write(lay.take_pending())
            core.submit("bcs", [ctx.desc], 0, 0.0)
            (ev,) = core.advance(0.0)
            costs.append(ev.busy_ns)
    assert costs[0] == pytest.approx(4 * costs[1], rel=0.01)


def test_two_elements_run_in_order_and_two_engines_overlap(gpu) -> None:
    core, lay = gpu
    a, buf_a = workload(lay, "rcs", 0xA, stores=20)
    a2, _ = workload(lay, "rcs", 0xA2, stores=20)
    c, _ = workload(lay, "bcs", 0xC, stores=20)
    core.ggtt_write(lay.take_pending())
    core.submit("rcs", [a.desc, a2.desc], 1, 0.0)
    core.submit("bcs", [c.desc], 2, 0.0)
    got = drain(core, 0.01)
    done = {ev.ctx_id: (t, ev) for t, ev in got if ev.kind == "ctx_complete"}
    assert set(done) == {0xA, 0xA2, 0xC}
    t_a, ev_a = done[0xA]
    t_a2, ev_a2 = done[0xA2]
    t_c, _ = done[0xC]
    assert t_a < t_a2 and ev_a2.due == pytest.approx(ev_a.due + ev_a2.busy_ns * 1e-9 * SCALE)
    assert t_c < t_a2  # BCS ran alongside RCS, not after it
    assert [ev.seq for _, ev in got if ev.engine == "rcs"] == [1, 2]


def test_invalid_element_1_is_ignored_and_bad_descriptors_refused(gpu) -> None:
    core, lay = gpu
    ctx, _ = workload(lay, "vcs", 3)
    core.ggtt_write(lay.take_pending())
    core.submit("vcs", [ctx.desc, 0], 0, 0.0)
    assert core.status()["engines"]["vcs"]["queued"] == 1
    cases = [
        (ctx.desc & ~1, ErrorCode.BAD_REQUEST),  # not valid
        (make_descriptor(ctx.lrca, 3, mode=2), ErrorCode.BAD_REQUEST),  # addressing mode 2: not supported
        (make_descriptor(0x300_0000, 3), ErrorCode.BAD_ADDRESS),  # LRCA not mapped
    ]
    for desc, code in cases:
        err = core.submit("vcs", [desc], 0, 0.0)
        assert isinstance(err, Refusal) and err.code == code


def test_port_holds_two_submissions(gpu) -> None:
    core, lay = gpu
    ctx, _ = workload(lay, "vecs", 4)
    core.ggtt_write(lay.take_pending())
    core.submit("vecs", [ctx.desc], 0, 0.0)
    core.submit("vecs", [ctx.desc], 0, 0.0)
    err = core.submit("vecs", [ctx.desc], 0, 0.0)
    assert isinstance(err, Refusal) and err.code == ErrorCode.NO_SPACE


def test_engine_reset_drops_running_and_pending_without_events(gpu) -> None:
    core, lay = gpu
    a, buf = workload(lay, "rcs", 1)
    b2, _ = workload(lay, "rcs", 2)
    core.ggtt_write(lay.take_pending())
    core.submit("rcs", [a.desc], 0, 0.0)
    core.submit("rcs", [b2.desc], 0, 0.0)
    core.advance(0.0)  # a runs (its completion is due later)
    assert core.reset_engine("rcs", 0.0) == 2
    assert drain(core, 0.01) == []
    c, buf_c = workload(lay, "rcs", 3)
    core.ggtt_write(lay.take_pending())
    core.submit("rcs", [c.desc], 0, 0.02)
    assert [ev.kind for _, ev in drain(core, 0.05)] == ["ctx_complete"]


def test_gdrst_resets_by_domain(gpu) -> None:
    core, lay = gpu
    r, _ = workload(lay, "rcs", 1)
    c, _ = workload(lay, "bcs", 2)
    core.ggtt_write(lay.take_pending())
    core.submit("rcs", [r.desc], 0, 0.0)
    core.submit("bcs", [c.desc], 0, 0.0)
    core.mmio_write(GDRST, 4, 1 << 3, 0.0)  # GEN6_GRDOM_BLT
    assert core.mmio_read(GDRST, 4, 0.0) == 0
    kinds = {(ev.engine, ev.kind) for _, ev in drain(core, 0.01)}
    assert kinds == {("rcs", "ctx_complete")}


def test_ring_registers_mirror_the_running_context(gpu) -> None:
    core, lay = gpu
    ctx, _ = workload(lay, "bcs", 0x55)
    core.ggtt_write(lay.take_pending())
    core.submit("bcs", [ctx.desc], 0, 0.0)
    core.advance(0.0)
    base = BY_NAME["bcs"].base
    assert core.mmio_read(base + RING_TAIL, 4, 0.0) == ctx.tail
    assert core.mmio_read(base + EXECLIST_STATUS + 4, 4, 0.0) == 0x55


def test_forcewake_ack_and_fences(gpu) -> None:
    core, _ = gpu
    core.mmio_write(0xA278, 4, 0x0001_0001, 0.0)  # render forcewake: masked enable of bit 0
    assert core.mmio_read(0x0D84, 4, 0.0) == 1
    core.mmio_write(0xA278, 4, 0x0001_0000, 0.0)
    assert core.mmio_read(0x0D84, 4, 0.0) == 0
    core.mmio_write(FENCE_BASE + 8 * 31, 8, 0x1234_5678_9ABC_DEF0, 0.0)
    assert core.mmio_read(FENCE_BASE + 8 * 31, 8, 0.0) == 0x1234_5678_9ABC_DEF0
    assert isinstance(core.mmio_read(0x2001, 4, 0.0), Refusal)


def test_status_has_the_gpu_keys_gvt_relies_on(gpu) -> None:
    core, _ = gpu
    info = core.status()
    assert set(info["gpu"]) == {"vendor", "device", "revision", "gm_mb", "aperture_mb", "msi_cap", "fences", "profile"}
    assert info["gpu"]["profile"] == "real"
    assert (info["gpu"]["vendor"], info["gpu"]["device"], info["gpu"]["msi_cap"]) == (0x8086, 0x1912, 0xAC)
    assert set(info["engines"]) == {"rcs", "bcs", "vcs", "vecs"}


def test_ggtt_requests_refuse_out_of_range(gpu) -> None:
    core, _ = gpu
    err = core.ggtt_write([(0, 1), (16384, 1)])
    assert isinstance(err, Refusal) and err.code == ErrorCode.BAD_ADDRESS and core.ggtt_read(0, 1) == [0]
    assert isinstance(core.ggtt_read(16383, 2), Refusal)
