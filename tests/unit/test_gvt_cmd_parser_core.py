"""The scanner inside the gvt core, with no sockets: a guest submits through ELSP MMIO writes, gvt scans
and shadows, the pgpu core executes what gvt submitted, and the results land in guest RAM."""

from __future__ import annotations


import pytest
from test_gvt_cmd_parser_fixtures import POOL_FRAMES, Rig

from gvtsim.services.common.memory import PAGE_SHIFT
from gvtsim.hardware import cmds
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt.shadow import SHADOW_BB_GM_OFFSET

RCS_USER = 1 << 0  # GT0 bit of RCS_MI_USER_INTERRUPT (gvt/interrupt.c)


def test_privileged_batch_runs_from_its_shadow_and_the_user_interrupt_is_injected_by_gvt(rig: Rig) -> None:
    g = rig.boot(1)
    batch, dst = g.bo(4096), g.bo(4096)
    g.write(batch.gpa, cmds.store_dword(dst.gm, 0x1111) + cmds.store_dword(dst.gm + 4, 0x2222)
            + [cmds.MI_BATCH_BUFFER_END])
    g.submit("rcs", cmds.batch_buffer_start(batch.gm) + [cmds.MI_USER_INTERRUPT])
    (w,) = rig.gvt.scheduler.inflight.values()
    bb = rig.gvt.shadow.batches[w.id]
    assert bb.gm >= rig.gvt.gpu.aperture_size + SHADOW_BB_GM_OFFSET and not g.vgpu.resource.contains(bb.gm)
    assert w.ring[:12] == cmds.to_bytes(cmds.batch_buffer_start(bb.gm))  # patched to the shadow
    assert w.pending_events == ["RCS_MI_USER_INTERRUPT"]
    # the guest rewrites its batch after ELSP: the GPU still runs the copy that was checked
    g.write(batch.gpa, cmds.store_dword(dst.gm, 0xBAD) + [cmds.MI_BATCH_BUFFER_END])
    rig.pump()
    assert (g.u32(dst.gpa), g.u32(dst.gpa + 4)) == (0x1111, 0x2222)
    assert [k for k, _, _ in rig.events] == ["ctx_complete"]  # the NOOPed interrupt never reached pgpu
    assert g.iir() & RCS_USER  # gvt injected it after the write-back
    assert not g.vgpu.failsafe
    assert rig.gvt.shadow.batches == {}  # reclaimed once the workload ended
    assert len(rig.gvt.shadow.frame_pool) == POOL_FRAMES - 10  # only the shadow context's pages stay out


def test_chained_and_second_level_batches_execute_through_their_shadows(rig: Rig) -> None:
    g = rig.boot(1)
    first, second, chained, dst = g.bo(4096), g.bo(4096), g.bo(4096), g.bo(4096)
    g.write(first.gpa, cmds.batch_buffer_start(second.gm, second_level=True) + cmds.store_dword(dst.gm + 4, 2)
            + cmds.batch_buffer_start(chained.gm))
    g.write(second.gpa, cmds.store_dword(dst.gm, 1) + [cmds.MI_USER_INTERRUPT, cmds.MI_BATCH_BUFFER_END])
    g.write(chained.gpa, cmds.store_dword(dst.gm + 8, 3) + [cmds.MI_BATCH_BUFFER_END])
    g.submit("bcs", cmds.batch_buffer_start(first.gm))
    rig.pump()
    assert [g.u32(dst.gpa + 4 * i) for i in range(3)] == [1, 2, 3]
    assert rig.events[-1][0] == "ctx_complete" and g.iir() & (1 << 16)  # BCS_MI_USER_INTERRUPT
    assert rig.gvt.counters["workloads_scanned"] == 1 and rig.gvt.counters["shadow_bb_bytes"] > 0


@pytest.mark.parametrize("name,ring", [
    ("lri_off_whitelist", cmds.load_register_imm([(0x44200, 0)])),
    ("mi_update_gtt", [0x23 << 23 | 2, 0, 0, 0]),
    ("store_outside_gm", cmds.store_dword(0x1000, 0xBAD)),
])
def test_a_violation_puts_that_vgpu_alone_in_failsafe(rig: Rig, name: str, ring: list[int]) -> None:
    good, bad = rig.boot(1), rig.boot(2)
    dst = good.bo(4096)
    bad.submit("rcs", ring + [cmds.MI_USER_INTERRUPT])
    assert bad.vgpu.failsafe and bad.vgpu.failsafe_reason is not None
    assert rig.gvt.counters["cmd_scan_errors"] == 1
    assert not any(isinstance(e, fx.PgpuSubmit) for e in rig.gvt.effects)  # nothing reached the GPU
    rig.pump()
    assert bad.iir() == 0  # no completion, no interrupt: its guest sees a hang
    for i in range(3):  # the other VM goes on
        good.submit("rcs", cmds.store_dword(dst.gm + 4 * i, 100 + i) + [cmds.MI_USER_INTERRUPT])
        rig.pump()
    assert [good.u32(dst.gpa + 4 * i) for i in range(3)] == [100, 101, 102]
    assert not good.vgpu.failsafe and good.iir() & RCS_USER
    assert rig.gvt.status_info()["failsafe"] == {"2": "GUEST_ERR"}
    # the scratch page (the write target of a hostile store, had it run) is untouched
    assert rig.mem.read(0x10 << PAGE_SHIFT, 4096) == bytes(4096)


def test_notify_of_an_unscanned_batch_still_reaches_the_guest(rig: Rig) -> None:
    """A PIPE_CONTROL notify is not rewritten: pgpu reports it and gvt raises RCS_PIPE_CONTROL."""
    g = rig.boot(1)
    dst = g.bo(4096)
    g.submit("rcs", cmds.pipe_control(dst.gm, 5, notify=True))
    rig.pump()
    assert [k for k, _, _ in rig.events] == ["user_interrupt", "ctx_complete"]
    assert g.iir() & (1 << 4) and not g.iir() & RCS_USER and g.u32(dst.gpa) == 5
