"""A pgpu that restarts while a workload runs on it: gvt submits the workload again to the new GPU, behind
the physical GGTT it rewrites first, and the guest sees one completion (sans-I/O: gvt's and pgpu's cores
driven by the test; the shells' part is tests/service/test_pgpu_restart.py)."""

from __future__ import annotations


from test_gvt_cmd_parser_fixtures import Rig

from gvtsim.services.gvt import effects as fx
from gvtsim.hardware import cmds
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore


def new_gpu(rig: Rig) -> None:
    """pgpu was killed and started again: a GPU with an empty GGTT, idle engines, no memory of the old one."""
    rig.pgpu = PgpuCore(rig.mem, PgpuConfig(time_scale=0))


def test_a_workload_on_a_gpu_that_restarted_runs_on_the_new_one_and_completes_once(rig: Rig) -> None:
    a = rig.boot(1)
    buf = a.bo(4096)
    a.submit("rcs", cmds.store_dword(buf.gm, 0x600D))
    (w,) = rig.gvt.scheduler.inflight.values()  # on the old GPU, which dies before running it
    rig.gvt.drain_effects()
    new_gpu(rig)
    sched = rig.gvt.scheduler
    sched.paused = True  # the shell pauses when pgpu goes away
    assert sched.requeue_inflight() == 1 and not sched.inflight
    sched.kick()
    assert not any(isinstance(e, fx.PgpuSubmit) for e in rig.gvt.effects)  # nothing while paused
    rig.gvt.resync_host_ggtt()  # the new GPU gets every vGPU's GGTT slice ...
    sched.paused = False
    sched.kick()  # ... before the workload goes to it again
    effects = rig.gvt.drain_effects()
    kinds = [type(e) for e in effects]
    assert fx.PgpuSubmit in kinds
    first_submit = kinds.index(fx.PgpuSubmit)
    assert any(k in (fx.PgpuGgttWrite, fx.PgpuGgttFill) for k in kinds[:first_submit])  # the GGTT goes first
    for e in effects:  # deliver what was drained, in order, as the shell would
        if isinstance(e, fx.PgpuGgttWrite):
            rig.pgpu.ggtt_write(e.entries)  # type: ignore[union-attr]
        elif isinstance(e, fx.PgpuGgttFill):
            rig.pgpu.ggtt_write((i, e.pte) for i in range(e.index, e.index + e.count))  # type: ignore[union-attr]
        elif isinstance(e, fx.PgpuSubmit):
            rig.pgpu.submit(e.engine, list(e.descs), e.tag, rig.now)  # type: ignore[union-attr]
            assert e.tag == w.id  # the same workload, not a new one
    rig.pump()
    assert a.u32(buf.gpa) == 0x600D
    assert w.status == "done" and w.resubmits == 1
    assert a.vgpu.workloads_ended["completed"] == 1 and not a.vgpu.workloads_ended.get("failed")
    assert rig.gvt.counters["workloads_resubmitted"] == 1 and not a.vgpu.failsafe


def test_only_the_submissions_that_never_reached_the_gpu_go_again_after_a_reconnect(rig: Rig) -> None:
    a = rig.boot(1)
    a.submit("rcs", cmds.store_dword(a.bo(4096).gm, 1))
    a.submit("bcs", [cmds.MI_NOOP])
    sched = rig.gvt.scheduler
    by_engine = {w.engine: w for w in sched.inflight.values()}
    assert set(by_engine) == {"rcs", "bcs"}
    assert sched.requeue_inflight({by_engine["bcs"].id}) == 1
    assert list(sched.inflight.values()) == [by_engine["rcs"]]  # still on the GPU: its event will come
    assert by_engine["bcs"].status == "requeued"
