"""vGPU lifecycle: create, destroy, activate, deactivate, DMLR (gvt/vgpu.c) and the MPT glue."""

from __future__ import annotations

from test_gvt_fixtures import BAR0_GPA, create, make_gvt, program_bar0, rd, wr

from gvtsim.protocol.errors import ErrorCode
from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.effects import AttachVgpu, InterceptBdf, PgpuMmioWrite, SetTrapArea
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.errors import FailsafeReason

MB = 1 << 20


def test_create_intercepts_bdf_attaches_and_activates() -> None:
    gvt = make_gvt()
    v = create(gvt, 9)
    out = gvt.drain_effects()
    assert InterceptBdf(9, 0, 2, 0, True) in out and AttachVgpu(9, v.id, True) in out
    assert out.index(InterceptBdf(9, 0, 2, 0, True)) < out.index(AttachVgpu(9, v.id, True))
    host_fences = [e for e in out if isinstance(e, PgpuMmioWrite)]
    assert host_fences == [PgpuMmioWrite(FENCE_REG_GEN6_LO + 8 * f, 8, 0) for f in v.resource.fences]
    assert v.active and gvt.vgpu_for_vm(9) is v


def test_repeated_create_for_the_same_vm() -> None:
    gvt = make_gvt()
    v = create(gvt, 9)
    assert gvt.create_vgpu(9, "GVTg_V5_4", now=0.0) is v  # a retried request
    r = gvt.create_vgpu(9, "GVTg_V5_8", now=0.0)
    assert isinstance(r, Refusal) and r.code == ErrorCode.BAD_REQUEST


def test_destroy_untraps_detaches_and_frees() -> None:
    gvt = make_gvt()
    v = create(gvt, 9)
    program_bar0(gvt, v)
    gvt.drain_effects()
    assert gvt.destroy_vgpu(9) is None
    out = gvt.drain_effects()
    assert SetTrapArea(9, BAR0_GPA, BAR0_GPA + 16 * MB - 1, False) in out
    assert out[-2:] == [AttachVgpu(9, v.id, False), InterceptBdf(9, 0, 2, 0, False)]
    assert gvt.vgpus == {} and gvt.gm.empty and not v.active
    r = gvt.destroy_vgpu(9)
    assert isinstance(r, Refusal) and r.code == ErrorCode.NO_SUCH_VM


def test_activate_and_deactivate() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    assert gvt.activate_vgpu(1, False) is None and not v.active
    assert gvt.activate_vgpu(1, True) is None and v.active
    assert isinstance(gvt.activate_vgpu(2), Refusal)


def test_dmlr_resets_everything_the_facts_list() -> None:
    gvt = make_gvt()
    v = create(gvt, 3)
    program_bar0(gvt, v)
    rd(gvt, v, pv.MAGIC, 8)
    wr(gvt, v, pv.DISPLAY_READY, 1)
    wr(gvt, v, pv.PDP0_LO, 0x5000)
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_CREATE)
    wr(gvt, v, FENCE_REG_GEN6_LO, 0x77)
    wr(gvt, v, 0x44308 + 4, 0xFF)  # GT0 IER (>= 0x44200: survives GT resets, not a DMLR)
    wr(gvt, v, pv.RSV5, 1)  # failsafe
    assert v.failsafe and v.ppgtt.mms
    gvt.drain_effects()
    assert gvt.reset_vgpu(3) is None
    out = gvt.drain_effects()
    assert not v.failsafe and v.failsafe_reason is None and not v.pv_notified
    assert v.ppgtt.mms == []
    assert SetTrapArea(3, BAR0_GPA, BAR0_GPA + 16 * MB - 1, False) in out  # cfg space reset untraps
    assert v.cfg.bar0_base() == 0 and not v.cfg.memory_enabled
    assert PgpuMmioWrite(FENCE_REG_GEN6_LO + 8 * v.resource.fences[0], 8, 0) in out  # fences cleared
    assert v.mmio.read32(0x4430C) == 0 and v.mmio.read32(FENCE_REG_GEN6_LO) == 0
    assert v.mmio.read(pv.MAGIC, 8) == pv.VGT_MAGIC and v.mmio.read32(pv.DISPLAY_READY) == 0
    assert v.submission.resets == {e.name: 1 for e in eng.ENGINES}


def test_failsafe_is_cleared_only_by_dmlr() -> None:
    gvt = make_gvt()
    v = create(gvt, 3)
    program_bar0(gvt, v)
    v.enter_failsafe(FailsafeReason.GUEST_ERR, "test")
    wr(gvt, v, eng.GDRST, 1)  # plain memory now: not even a GT reset runs
    assert v.failsafe and v.submission.resets == {}
    gvt.reset_vgpu(3, dmlr=False)
    assert v.failsafe
    gvt.reset_vgpu(3)
    assert not v.failsafe


def test_status_info_lists_vgpus_and_types() -> None:
    gvt = make_gvt()
    create(gvt, 4, "GVTg_V5_8")
    info = gvt.status_info()
    assert [(x["vm"], x["vgpu_id"], x["type"]) for x in info["vgpus"]] == [(4, 1, "GVTg_V5_8")]
    assert [t["name"] for t in info["types"]] == ["GVTg_V5_8", "GVTg_V5_4", "GVTg_V5_2", "GVTg_V5_1"]
