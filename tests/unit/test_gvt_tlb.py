"""TLB invalidation on a vGPU switch (Linux gvt/handlers.c gvt_reg_tlb_control_handler; gvt/mmio_context.c
handle_tlb_pending_event, switch_mmio; submission.tlb_handle_pending): a guest's write to its engine's TLB
invalidation register completes at once in the vreg and marks the engine pending; the physical invalidation
is done when the engine is next switched to that vGPU, before its workload runs."""

from __future__ import annotations


from test_gvt_cmd_parser_fixtures import Rig
from test_gvt_fixtures import rd, wr

from gvtsim.hardware import cmds
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt.mmio_context import TLB_MMIO_OFFSET

RCS_TLB = 0x4260


def _tlb_writes(rig: Rig) -> list[int]:
    """Indexes in the effect log of gvt's writes of 1 to the physical RCS TLB invalidation register."""
    return [i for i, e in enumerate(rig.effects)
            if isinstance(e, fx.PgpuMmioWrite) and e.offset == RCS_TLB and e.value == 1]


def test_the_register_table_and_the_switch_list_agree_with_gen8_tlb_mmio_offset_list() -> None:
    assert TLB_MMIO_OFFSET == {"rcs": 0x4260, "vcs": 0x4264, "vcs2": 0x4268, "bcs": 0x426C, "vecs": 0x4270}


def test_a_tlb_invalidation_the_guest_asked_for_is_done_at_the_next_switch_to_it(rig: Rig) -> None:
    a, b = rig.boot(1), rig.boot(2)
    da, db = a.bo(4096), b.bo(4096)
    pgpu = rig.pgpu
    assert pgpu is not None
    # the guest asks: the vreg reads back 0 at once, the engine is pending, nothing physical yet
    wr(rig.gvt, a.vgpu, RCS_TLB, 1)
    assert rd(rig.gvt, a.vgpu, RCS_TLB) == 0 and a.vgpu.submission.tlb_handle_pending == {"rcs"}
    rig.pump()
    assert _tlb_writes(rig) == [] and pgpu.mmio.tlb_invalidations["rcs"] == 0
    # a's workload switches rcs from the host to a: the invalidation goes first, then the submission
    a.submit("rcs", cmds.store_dword(da.gm, 1))
    rig.pump()
    (inv,) = _tlb_writes(rig)
    first_submit = next(i for i, e in enumerate(rig.effects) if isinstance(e, fx.PgpuSubmit))
    assert inv < first_submit and pgpu.mmio.tlb_invalidations["rcs"] == 1
    assert a.vgpu.submission.tlb_handle_pending == set() and rig.gvt.counters["tlb_invalidations"] == 1
    # asked again while a still owns rcs: no switch, so it waits (switch_mmio is where it is handled)
    wr(rig.gvt, a.vgpu, RCS_TLB, 1)
    a.submit("rcs", cmds.store_dword(da.gm + 4, 2))
    rig.pump()
    assert len(_tlb_writes(rig)) == 1 and a.vgpu.submission.tlb_handle_pending == {"rcs"}
    # b takes rcs: b asked for nothing, so its switch invalidates nothing
    b.submit("rcs", cmds.store_dword(db.gm, 3))
    rig.pump()
    assert len(_tlb_writes(rig)) == 1 and pgpu.mmio.tlb_invalidations["rcs"] == 1
    # back to a: its pending invalidation is done now, before its workload
    a.submit("rcs", cmds.store_dword(da.gm + 8, 4))
    rig.pump()
    assert len(_tlb_writes(rig)) == 2 and pgpu.mmio.tlb_invalidations["rcs"] == 2
    assert a.vgpu.submission.tlb_handle_pending == set()
    assert (a.u32(da.gpa), a.u32(da.gpa + 4), b.u32(db.gpa), a.u32(da.gpa + 8)) == (1, 2, 3, 4)
    assert rig.gvt.counters["mmio_switches"] == 3


def test_each_engine_has_its_own_pending_bit(rig: Rig) -> None:
    a = rig.boot(1)
    wr(rig.gvt, a.vgpu, 0x426C, 1)  # BCS
    assert a.vgpu.submission.tlb_handle_pending == {"bcs"}
    d = a.bo(4096)
    a.submit("rcs", cmds.store_dword(d.gm, 1))
    rig.pump()
    assert _tlb_writes(rig) == [] and a.vgpu.submission.tlb_handle_pending == {"bcs"}
    a.submit("bcs", cmds.store_dword(d.gm + 4, 2))
    rig.pump()
    assert rig.pgpu is not None and rig.pgpu.mmio.tlb_invalidations == {"bcs": 1}
    assert a.vgpu.submission.tlb_handle_pending == set()
