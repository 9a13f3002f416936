"""Conformance: the PVINFO page, g2v notifications and the read-PVINFO-first rule (i915_pvinfo.h, i915_vgpu.c,
gvt/vgpu.c)."""

from __future__ import annotations

import pytest
from test_gvt_fixtures import create, make_gvt, masked, program_bar0, rd, wr

from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.services.gvt.effects import Uevent
from gvtsim.services.gvt.gtt import PPGTT_ROOT_L3, PPGTT_ROOT_L4
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.errors import FailsafeReason


def test_pvinfo_constants() -> None:
    assert (pv.VGT_PVINFO_PAGE, pv.VGT_PVINFO_SIZE) == (0x78000, 0x1000)
    assert pv.VGT_MAGIC == 0x4776544776544776
    assert pv.VGT_MAGIC.to_bytes(8, "little") == b"vGTvGTvG"
    assert (pv.VGT_VERSION_MAJOR, pv.VGT_VERSION_MINOR) == (1, 0)
    assert int(pv.CAPS) == 0x1C
    assert (pv.VgtCaps.FULL_PPGTT, pv.VgtCaps.HWSP_EMULATION, pv.VgtCaps.HUGE_GTT) == (1 << 2, 1 << 3, 1 << 4)


def test_pvinfo_field_offsets() -> None:
    assert {
        "magic": pv.MAGIC, "version_major": pv.VERSION_MAJOR, "version_minor": pv.VERSION_MINOR,
        "vgt_id": pv.VGT_ID, "vgt_caps": pv.VGT_CAPS, "mappable_base": pv.MAPPABLE_BASE,
        "mappable_size": pv.MAPPABLE_SIZE, "nonmappable_base": pv.NONMAPPABLE_BASE,
        "nonmappable_size": pv.NONMAPPABLE_SIZE, "fence_num": pv.FENCE_NUM, "display_ready": pv.DISPLAY_READY,
        "rsv5": pv.RSV5, "g2v_notify": pv.G2V_NOTIFY, "cursor_x_hot": pv.CURSOR_X_HOT,
        "cursor_y_hot": pv.CURSOR_Y_HOT, "pdp0_lo": pv.PDP0_LO, "ctx_desc_lo": pv.EXECLIST_CTX_DESC_LO,
        "ctx_desc_hi": pv.EXECLIST_CTX_DESC_HI,
    } == {
        "magic": 0x78000, "version_major": 0x78008, "version_minor": 0x7800A, "vgt_id": 0x7800C,
        "vgt_caps": 0x78010, "mappable_base": 0x78040, "mappable_size": 0x78044, "nonmappable_base": 0x78048,
        "nonmappable_size": 0x7804C, "fence_num": 0x78050, "display_ready": 0x78804, "rsv5": 0x78808,
        "g2v_notify": 0x78818, "cursor_x_hot": 0x78830, "cursor_y_hot": 0x78834, "pdp0_lo": 0x78838,
        "ctx_desc_lo": 0x78858, "ctx_desc_hi": 0x7885C,
    }


def test_g2v_enum_values() -> None:
    assert {g.name: int(g) for g in pv.G2vNotify} == {
        "PPGTT_L3_PAGE_TABLE_CREATE": 2, "PPGTT_L3_PAGE_TABLE_DESTROY": 3, "PPGTT_L4_PAGE_TABLE_CREATE": 4,
        "PPGTT_L4_PAGE_TABLE_DESTROY": 5, "EXECLIST_CONTEXT_CREATE": 6, "EXECLIST_CONTEXT_DESTROY": 7, "MAX": 8}


def test_populated_values_follow_the_vgpu() -> None:
    gvt = make_gvt()
    create(gvt, 1)
    v = create(gvt, 2, "GVTg_V5_8")
    program_bar0(gvt, v)
    res = v.resource
    assert rd(gvt, v, pv.MAGIC, 8) == pv.VGT_MAGIC
    assert rd(gvt, v, pv.VERSION_MAJOR, 2) == 1 and rd(gvt, v, pv.VERSION_MINOR, 2) == 0
    assert rd(gvt, v, pv.VGT_ID) == v.id == 2
    assert rd(gvt, v, pv.VGT_CAPS) == 0x1C
    assert [rd(gvt, v, o) for o in (pv.MAPPABLE_BASE, pv.MAPPABLE_SIZE, pv.NONMAPPABLE_BASE, pv.NONMAPPABLE_SIZE)] \
        == [res.low_base, 64 << 20, res.high_base, 384 << 20]
    assert rd(gvt, v, pv.FENCE_NUM) == 4
    assert rd(gvt, v, pv.CURSOR_X_HOT) == rd(gvt, v, pv.CURSOR_Y_HOT) == 0xFFFF_FFFF
    assert rd(gvt, v, pv.DISPLAY_READY) == 0


def test_any_pvinfo_read_sets_pv_notified() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    assert not v.pv_notified
    rd(gvt, v, 0x78100)  # outside the documented windows: logged as invalid, still served
    assert v.pv_notified and gvt.counters["pvinfo_invalid_read"] == 1


def test_rsv5_write_is_failsafe_insufficient_resource_for_that_vgpu_only() -> None:
    gvt = make_gvt()
    a, b = create(gvt, 1), create(gvt, 2, "GVTg_V5_8")
    wr(gvt, a, pv.RSV5 + 4, 1)
    assert a.failsafe and a.failsafe_reason == FailsafeReason.INSUFFICIENT_RESOURCE
    assert not b.failsafe
    assert rd(gvt, a, pv.RSV5 + 4) == 0  # the offending write itself is not stored
    wr(gvt, a, pv.RSV5 + 4, 7)
    assert rd(gvt, a, pv.RSV5 + 4) == 7  # failsafe: plain memory from now on
    wr(gvt, b, pv.RSV5 + 4, 7)
    assert rd(gvt, b, pv.RSV5 + 4) == 0 and b.failsafe  # the same mistake, the same fate, for b alone


def test_invalid_pvinfo_write_is_dropped() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    wr(gvt, v, pv.VGT_CAPS, 0)
    wr(gvt, v, pv.MAGIC, 0, 8)
    assert rd(gvt, v, pv.VGT_CAPS) == 0x1C and rd(gvt, v, pv.MAGIC, 8) == pv.VGT_MAGIC
    assert gvt.counters["pvinfo_invalid_write"] == 2 and not v.failsafe


def test_display_ready_is_stored_and_notified() -> None:
    gvt = make_gvt()
    v = create(gvt, 4)
    gvt.drain_effects()
    wr(gvt, v, pv.DISPLAY_READY, pv.DisplayReady.READY)
    assert gvt.drain_effects() == [Uevent(4, "GVT_DISPLAY_READY", 1)]
    assert rd(gvt, v, pv.DISPLAY_READY) == 1


def _write_pdps(gvt, v, pdps: list[int]) -> None:  # type: ignore[no-untyped-def]
    for i, p in enumerate(pdps):
        wr(gvt, v, pv.PDP0_LO + 8 * i, p & 0xFFFF_FFFF)
        wr(gvt, v, pv.PDP0_LO + 8 * i + 4, p >> 32)


def test_g2v_l4_create_and_destroy_refcount_by_root() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    _write_pdps(gvt, v, [0x1_2345_6000])  # gen8_ppgtt_notify_vgt, 4-level: pdp[0] = PML4
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_CREATE)
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_CREATE)
    assert len(v.ppgtt.mms) == 1
    mm = v.ppgtt.mms[0]
    assert (mm.root, mm.pdps, mm.refcount) == (PPGTT_ROOT_L4, (0x1_2345_6000, 0, 0, 0), 2)
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_DESTROY)
    assert mm.refcount == 1
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_DESTROY)
    assert v.ppgtt.mms == []
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L4_PAGE_TABLE_DESTROY)  # unknown root: counted, ignored
    assert gvt.counters["g2v_ppgtt_destroy_unknown"] == 1 and not v.failsafe


def test_g2v_l3_uses_all_four_pdps_and_others_are_ignored() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    pdps = [0x1000, 0x2000, 0x3000, 0x4000]
    _write_pdps(gvt, v, pdps)
    wr(gvt, v, pv.G2V_NOTIFY, pv.G2vNotify.PPGTT_L3_PAGE_TABLE_CREATE)
    assert [(mm.root, mm.pdps) for mm in v.ppgtt.mms] == [(PPGTT_ROOT_L3, tuple(pdps))]
    for n in (pv.G2vNotify.EXECLIST_CONTEXT_CREATE, pv.G2vNotify.EXECLIST_CONTEXT_DESTROY, 1):
        wr(gvt, v, pv.G2V_NOTIFY, n)
    wr(gvt, v, pv.G2V_NOTIFY, 99)
    assert len(v.ppgtt.mms) == 1 and gvt.counters["g2v_invalid"] == 1


@pytest.mark.parametrize("bit", [eng.GFX_PPGTT_ENABLE, eng.GFX_RUN_LIST_ENABLE])
def test_enabling_ppgtt_or_execlists_before_pvinfo_is_failsafe(bit: int) -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    wr(gvt, v, eng.BY_NAME["rcs"].base + eng.RING_MODE, masked(bit))
    assert v.failsafe and v.failsafe_reason == FailsafeReason.UNSUPPORTED_GUEST


def test_enabling_execlists_after_pvinfo_selects_execlist_submission() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    rd(gvt, v, pv.MAGIC, 8)
    mode = eng.BY_NAME["bcs"].base + eng.RING_MODE
    wr(gvt, v, mode, masked(eng.GFX_RUN_LIST_ENABLE | eng.GFX_PPGTT_ENABLE))
    assert not v.failsafe and v.submission.execlist_enabled == {"bcs"}
    assert rd(gvt, v, mode) == eng.GFX_RUN_LIST_ENABLE | eng.GFX_PPGTT_ENABLE  # mask half not stored
    wr(gvt, v, mode, masked(eng.GFX_PPGTT_ENABLE, enable=False))
    assert rd(gvt, v, mode) == eng.GFX_RUN_LIST_ENABLE


def test_out_of_range_fence_before_pvinfo_is_unsupported_guest() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)  # 4 fences
    assert rd(gvt, v, FENCE_REG_GEN6_LO + 8 * 4) == 0xFFFF_FFFF
    assert v.failsafe_reason == FailsafeReason.UNSUPPORTED_GUEST


def test_out_of_range_fence_after_pvinfo_is_a_guest_error() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    assert rd(gvt, v, pv.FENCE_NUM) == 4
    wr(gvt, v, FENCE_REG_GEN6_LO + 8 * 4, 1)
    assert v.failsafe_reason == FailsafeReason.GUEST_ERR
