"""The time-slice policy inside the gvt Scheduler, no sockets: one current vGPU owns every engine, a switch
waits for the running workloads, the run queue follows the vGPUs' state, weights come from the type."""

from __future__ import annotations


import pytest
from test_gvt_cmd_parser_fixtures import Rig

from gvtsim.hardware import cmds
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt.errors import FailsafeReason


def submits(rig: Rig) -> list[fx.PgpuSubmit]:
    """Deliver gvt's pending effects to pgpu without letting it run; return the new submissions."""
    before = len(rig.submits)
    assert rig.pgpu is not None
    for e in rig.gvt.drain_effects():
        if isinstance(e, fx.PgpuGgttWrite):
            rig.pgpu.ggtt_write(e.entries)
        elif isinstance(e, fx.PgpuSubmit):
            rig.submits.append(e)
            rig.pgpu.submit(e.engine, list(e.descs), e.tag, rig.now)
    return rig.submits[before:]


def test_one_current_vgpu_for_all_engines_switch_only_between_workloads(rig: Rig) -> None:
    a, b = rig.boot(1), rig.boot(2)
    da, db = a.bo(4096), b.bo(4096)
    sched = rig.gvt.scheduler
    a.submit("rcs", cmds.store_dword(da.gm, 1))
    (first,) = submits(rig)
    assert sched.policy.current == a.vgpu.id and first.engine == "rcs"
    b.submit("bcs", cmds.store_dword(db.gm, 2))  # bcs is idle, but it belongs to the current vGPU
    assert submits(rig) == [] and sched.policy.need_reschedule
    a.submit("bcs", cmds.store_dword(da.gm + 4, 3))  # a switch is pending: a may not start more work
    assert submits(rig) == []
    rig.pump()  # a's rcs workload completes: the switch to b happens, then back to a on a later pass
    assert [s.descs[0] >> 40 for s in rig.submits] == [a.vgpu.id, b.vgpu.id, a.vgpu.id]  # host ctx id: vgpu << 8
    assert (a.u32(da.gpa), b.u32(db.gpa), a.u32(da.gpa + 4)) == (1, 2, 3)
    assert sched.policy.switches >= 3 and not sched.inflight


def test_weights_come_from_the_vgpu_type_and_the_run_queue_follows_vgpu_state(tmp_path: object) -> None:
    rig = Rig(f"{tmp_path}/m.mem", pgpu=False)  # no GPU: only the policy's view is checked
    try:
        a, b = rig.boot(1, "GVTg_V5_8"), rig.boot(2, "GVTg_V5_1")
        sched = rig.gvt.scheduler
        sched.tick(0.001)
        assert {v: d.weight for v, d in sched.policy.data.items()} == {a.vgpu.id: 2, b.vgpu.id: 16}
        assert sched.policy.data[b.vgpu.id].allocated_ts == pytest.approx(0.1 * 16 / 18)
        b.vgpu.enter_failsafe(FailsafeReason.GUEST_ERR, "test")
        sched.tick(0.002)
        assert set(sched.policy.data) == {a.vgpu.id}
        rig.gvt.destroy_vgpu(1)
        sched.tick(0.003)
        assert sched.policy.data == {} and rig.gvt.status_info()["scheduler"]["policy"]["current"] is None
    finally:
        rig.close()


def test_a_vgpu_that_used_its_slice_waits_for_the_next_balance(rig: Rig) -> None:
    a, b = rig.boot(1), rig.boot(2)
    da = a.bo(4096)
    sched = rig.gvt.scheduler
    sched.tick(0.0)
    b_id = b.vgpu.id
    # b owned the GPU for its whole slice (50 ms of 100): it gets nothing until the next balance
    sched.policy.data[b_id].left_ts = 0.0
    sched.policy.data[b_id].pri_sched = False  # and its 2 s start-up priority is over
    b.submit("rcs", cmds.store_dword(b.bo(4096).gm, 9))
    assert submits(rig) == [] and sched.policy.current != b_id
    a.submit("rcs", cmds.store_dword(da.gm, 1))
    rig.pump()
    assert a.u32(da.gpa) == 1 and [s.descs[0] >> 40 for s in rig.submits] == [a.vgpu.id]
    sched.tick(0.1)  # stage 1: left_ts += allocated_ts
    rig.pump()
    assert [s.descs[0] >> 40 for s in rig.submits] == [a.vgpu.id, b_id]
