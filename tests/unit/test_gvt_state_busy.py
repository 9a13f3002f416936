"""gvt's saved state for a busy vGPU (docs/STATE.md), no sockets: a vGPU whose display pipes run, whose
execlists hold contexts and whose workloads are queued or on the GPU is captured, folded and restored into a
new Gvt (a restarted gvt), which carries it on: the vblank timers tick again, a workload the GPU completed
while gvt was down completes once toward the guest, one the GPU never saw is submitted again, none twice."""

from __future__ import annotations

import pytest
from test_gvt_display import enable_pipe, program_mode
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.services.gvt import display as dpy
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
