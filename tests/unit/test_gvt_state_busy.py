"""gvt's saved state for a busy vGPU (docs/STATE.md), no sockets: a vGPU whose display pipes run, whose
execlists hold contexts and whose workloads are queued or on the GPU is captured, folded and restored into a
new Gvt (a restarted gvt), which carries it on: the vblank timers tick again, a workload the GPU completed
while gvt was down completes once toward the guest, one the GPU never saw is submitted again, none twice."""

from __future__ import annotations

import pytest
from test_gvt_cmd_parser_fixtures import SCRATCH_MFN, Rig
from test_gvt_display import enable_pipe, program_mode
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.hardware import cmds
from gvtsim.hardware.regs import CSB_CTX_COMPLETE
from gvtsim.services.gvt import display as dpy
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.engines import BY_NAME
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore
from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt import state as gs

EPOCH = 4242
PIPE_A_IIR = irq.GROUP_BY_NAME["DE_PIPE_A"].base + irq.IIR


def test_a_running_display_pipe_is_carried_on_and_its_vblank_timer_rearmed(tmp_path) -> None:
    gvt = make_gvt()
    v = create(gvt, 3)
    program_bar0(gvt, v)
    program_mode(gvt, v, pipe=0)
    enable_pipe(gvt, v, pipe=0, now=10.0)
    assert gvt.on_timer(10.0 + 2.5 / 60.004) == 2  # two frames counted before the kill
    frames = rd(gvt, v, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0))
    deadline = gvt.next_deadline()
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 64)
    store.commit(gvt, [v.id], EPOCH)
    store.close()

    g2 = make_gvt()
    s2 = gs.StateStore(str(tmp_path))
    got = s2.restore(g2, g2.mpt_factory)
    assert [x.id for x in got.vgpus] == [v.id] and got.refused == []
    w = g2.by_vm[3]
    assert g2.display_active == {w.id: w}  # the index the deadline is computed from is right at once
    assert g2.next_deadline() == pytest.approx(deadline)
    assert w.display.timers[0].vrefresh_k == v.display.timers[0].vrefresh_k
    assert rd(g2, w, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0)) == frames
    # a second of outage: the timer catches up as after any late wake-up, frames counted, one vblank event
    assert g2.on_timer(deadline + 1.0) == 61
    assert rd(g2, w, dpy.pipe_reg(dpy.PIPE_FRMCOUNT_BASE, 0)) == frames + 61
    assert rd(g2, w, PIPE_A_IIR) & 1  # PIPE_A_VBLANK latched
    # and it stops as it would have: the pipe goes off, the index empties
    wr(g2, w, dpy.pipe_reg(dpy.TRANSCONF_BASE, 0), 0)
    assert g2.display_active == {} and g2.next_deadline() is None
    s2.close()


# ------------------------------------------------------------------------------- workloads in flight
def _deliver_submits(rig: Rig, drop: set[str] = frozenset()) -> list[fx.PgpuSubmit]:  # type: ignore[assignment]
    """gvt's pending effects to pgpu (GGTT writes, submissions) without running the GPU; a submission on an
    engine of ``drop`` is lost on the way (gvt died before pgpu got it)."""
    out = []
    assert rig.pgpu is not None
    for e in rig.gvt.drain_effects():
        if isinstance(e, fx.PgpuGgttWrite):
            rig.pgpu.ggtt_write(e.entries)
        elif isinstance(e, fx.PgpuSubmit):
            out.append(e)
            if e.engine not in drop:
                assert rig.pgpu.submit(e.engine, list(e.descs), e.tag, rig.now) is None
    return out


def _completes(v, engine: str) -> int:  # type: ignore[no-untyped-def]
    """How many context-complete entries the vGPU's CSB of ``engine`` holds (the rig writes fewer than 6)."""
    base = BY_NAME[engine].base
    return sum(1 for i in range(6) if v.mmio.read32(base + eng.RING_CSB + 8 * i) & CSB_CTX_COMPLETE)


def _restarted(rig: Rig, directory: str) -> tuple[Gvt, gs.Restored]:
    """A new gvt process on the same machine memory re-opening the saved state (the rig's pgpu stays)."""
    g2 = Gvt(mpt_factory=rig.gvt.mpt_factory, scratch_mfn=SCRATCH_MFN)
    g2.shadow.init(rig.mem)
    store = gs.StateStore(directory)
    got = store.restore(g2, g2.mpt_factory)
    store.close()
    return g2, got


def test_workloads_in_flight_end_once_across_a_restart(rig: Rig, tmp_path) -> None:
    g = rig.boot(1, "GVTg_V5_8")
    v = g.vgpu
    d = g.bo(4096)
    g.submit("rcs", cmds.store_dword(d.gm, 0xA))  # A: the GPU completes it while gvt is down
    g.submit("bcs", cmds.store_dword(d.gm + 4, 0xB))  # B: its submission is lost with the dying gvt
    subs = _deliver_submits(rig, drop={"bcs"})
    g.submit("rcs", cmds.store_dword(d.gm + 8, 0xC))  # C: queued behind A
    assert _deliver_submits(rig) == []
    tags = {s.engine: s.tag for s in subs}
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 2)
    store.commit(rig.gvt, [v.id], EPOCH)
    store.close()
    rcs_before = _completes(v, "rcs")
    # gvt is killed; pgpu runs A, its completion goes nowhere
    events = rig.pgpu.advance(rig.now)
    assert [(e.kind, e.tag) for e in events] == [("ctx_complete", tags["rcs"])]
    assert g.u32(d.gpa) == 0xA and g.u32(d.gpa + 4) == 0

    g2, got = _restarted(rig, str(tmp_path))
    assert got.refused == [] and [x.id for x in got.vgpus] == [v.id]
    w = g2.by_vm[1]
    sched = g2.scheduler
    assert sched.reconciling == set(tags.values()) and set(sched.inflight) == set(tags.values())
    assert [x.ring for x in sched.queues[(w.id, "rcs")]] and sched.paused  # nothing leaves before pgpu's word
    assert w.submission.execlists["rcs"].running is not None  # A's context is scheduled in
    assert sched._next_id > max(tags.values()) + 1000  # no tag of the dead gvt is given again
    # the shell asks pgpu (WORKLOAD_QUERY) what became of them
    active, ended = rig.pgpu.workload_status(sorted(sched.reconciling))
    assert active == [] and [e.tag for e in ended] == [tags["rcs"]]
    done, again = sched.reconcile_restored(
        active, [(e.engine, e.kind, e.tag, e.status, e.busy_ns, e.reason) for e in ended], now=1.0)
    assert (done, again) == (1, 1)
    # A completed toward the guest once (C continues its context: a lite restore, no CSB entry yet)
    assert w.workloads_ended["completed"] == 1 and g2.counters["workloads_completed"] == 1
    # the same answer again (or A's event arriving late) does not complete it twice
    assert sched.reconcile_restored(active, [(e.engine, e.kind, e.tag, e.status, e.busy_ns, e.reason)
                                             for e in ended], now=1.0) == (0, 0)
    sched.on_gpu_event("rcs", "ctx_complete", tags["rcs"], now=1.0)
    assert g2.counters["gpu_event_unknown_tag"] == 1 and w.workloads_ended["completed"] == 1
    # the session is set up: B goes again, C after A, each runs once
    rig.gvt = g2
    sched.paused = False
    sched.kick()
    submitted_before = rig.pgpu.counters["submits"]
    rig.pump()
    assert (g.u32(d.gpa), g.u32(d.gpa + 4), g.u32(d.gpa + 8)) == (0xA, 0xB, 0xC)
    assert rig.pgpu.counters["submits"] - submitted_before == 2  # B and C; A never again
    assert w.workloads_ended["completed"] == 3 and not sched.inflight and not any(sched.queues.values())
    assert _completes(w, "rcs") == rcs_before + 1 and _completes(w, "bcs") == 1  # C ends the rcs context
    assert [s.tag for s in rig.submits if s.engine == "bcs"] == [tags["bcs"]]  # B kept its tag


def test_a_workload_still_running_at_the_restart_completes_through_its_event(rig: Rig, tmp_path) -> None:
    g = rig.boot(1, "GVTg_V5_8")
    v = g.vgpu
    d = g.bo(4096)
    g.submit("rcs", cmds.store_dword(d.gm, 7))
    (sub,) = _deliver_submits(rig)
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 2)
    store.commit(rig.gvt, [v.id], EPOCH)
    store.close()
    g2, _ = _restarted(rig, str(tmp_path))
    active, ended = rig.pgpu.workload_status([sub.tag])
    assert active == [sub.tag] and ended == []  # still on the GPU: its event will come to the new session
    assert g2.scheduler.reconcile_restored(active, [], now=0.5) == (0, 0)
    assert sub.tag in g2.scheduler.inflight
    rig.gvt = g2
    g2.scheduler.paused = False
    rig.pump()
    assert g.u32(d.gpa) == 7 and g2.by_vm[1].workloads_ended["completed"] == 1 and not g2.scheduler.inflight


def test_pgpu_answers_only_for_the_same_gvt_identity() -> None:
    from gvtsim.services.common.memory import MachineMemory

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        mem = MachineMemory(f"{tmp}/m", size=8 << 20, create=True)
        try:
            gpu = PgpuCore(mem, PgpuConfig(time_scale=0))
            gpu.ended[5] = []  # remembered, with no event of this owner
            active, ended = gpu.workload_status([5, 6], mine=lambda owner: owner == "gvt-a")
            assert (active, ended) == ([], [])
        finally:
            mem.close()


def test_a_frame_taken_in_the_batch_the_kill_cut_is_never_handed_out_twice(rig: Rig, tmp_path) -> None:
    """The vGPU record (written first) has a workload's shadow batch; the device record (the kill came
    before it) still has its frames in the free pool: the restore keeps them out of the pool."""
    g = rig.boot(1, "GVTg_V5_8")
    v = g.vgpu
    d = g.bo(4096)
    batch = g.bo(4096)
    g.write(batch.gpa, cmds.store_dword(d.gm, 5) + [cmds.MI_BATCH_BUFFER_END, cmds.MI_NOOP])
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 2)
    store.commit(rig.gvt, [v.id], EPOCH)  # the device record, before the batch
    pool_before = list(rig.gvt.shadow.frame_pool)
    g.submit("rcs", cmds.batch_buffer_start(batch.gm))  # a privileged batch: shadowed from the pool
    (w,) = [x for x in rig.gvt.scheduler.inflight.values()]
    bb = rig.gvt.shadow.batches[w.id]
    assert set(bb.mfns) <= set(pool_before)
    store.files.append(f"vgpu-{v.id}", store.recorders[v.id].delta())  # the vGPU's record, then the kill
    store.close()
    g2, got = _restarted(rig, str(tmp_path))
    assert got.refused == [] and g2.shadow.batches[w.id].mfns == bb.mfns
    assert not set(bb.mfns) & set(g2.shadow.frame_pool) and g2.counters["state_pool_frames_in_use"] == len(bb.mfns)
