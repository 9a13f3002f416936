"""ACRN's PVMMIO: the enable_pvmmio negotiation, the shared page at BAR0 + 2 MB, PVMMIO_ELSP_SUBMIT and the
pv_mmio read redirect (ACRN kernel drivers/gpu/drm/i915/gvt/handlers.c pvinfo_mmio_write / set_pvmmio /
elsp_mmio_write / pvinfo_mmio_read; acrngt.c acrngt_set_pvmmio; include/drm/i915_pvinfo.h)."""

from __future__ import annotations


from test_gvt_cmd_parser_fixtures import POOL_FRAMES, Rig
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.services.common.memory import PAGE_SHIFT
from gvtsim.hardware import cmds
from gvtsim.hardware import regs as r
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.services.gvt import pvmmio
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.engines import BY_NAME
from gvtsim.services.gvt.pvmmio import PvmmioLevel

SHARED = pvmmio.SHARED_PAGE_OFFSET


def _maps(effects: list[fx.Effect]) -> list[tuple[int, int, bool]]:
    return [(e.gfn, e.mfn, e.map) for e in effects if isinstance(e, fx.MapGfnToMfn)]


def _net(maps: list[tuple[int, int, bool]]) -> dict[int, int]:
    """What the guest's EPT holds after these map / unmap effects, in order (an unmap of a gfn that is not
    mapped is a bug)."""
    out: dict[int, int] = {}
    for gfn, mfn, mapped in maps:
        if mapped:
            assert gfn not in out
            out[gfn] = mfn
        else:
            assert out.pop(gfn, mfn) == mfn
    return out


def test_levels_and_layout_are_acrns() -> None:
    """enum pvmmio_levels and struct gvt_shared_page (i915_pvinfo.h); the page is the first after the 2 MB
    MMIO range; enable_pvmmio / pv_mmio at PVINFO + 0x860 / + 0x864."""
    assert {lv.name: int(lv) for lv in PvmmioLevel} == {
        "ELSP_SUBMIT": 1, "PLANE_UPDATE": 2, "PLANE_WM_UPDATE": 4, "MASTER_IRQ": 8, "PPGTT_UPDATE": 0x10,
        "GGTT_UPDATE": 0x20}
    assert (SHARED, pvmmio.ELSP_DATA, pvmmio.REG_ADDR, pvmmio.PV_PLANE) == (0x200000, 0, 0x10, 0x14)
    assert (pv.ENABLE_PVMMIO, pv.PV_MMIO) == (0x78860, 0x78864)
    assert pvmmio.host_levels(0x3F) == PvmmioLevel.ELSP_SUBMIT  # only what gvtsim implements can be offered


def test_the_grant_is_what_the_guest_asked_and_the_host_offers_and_maps_the_shared_page(rig: Rig) -> None:
    """pvinfo_mmio_write(enable_pvmmio): vreg = data & i915.enable_pvmmio, then set_pvmmio(map): the shared
    page (a zeroed frame) is mapped read-write at BAR0 + 2 MB."""
    g = rig.boot(1)
    v, bar0 = g.vgpu, g.vgpu.cfg.bar0_base()
    rig.gvt.drain_effects()
    rig.mem.write((rig.gvt.shadow.frame_pool[-1]) << PAGE_SHIFT, b"\xAA" * 16)  # a stale frame
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, 0x3F)  # a guest asking for every level
    assert rd(rig.gvt, v, pv.ENABLE_PVMMIO) == int(PvmmioLevel.ELSP_SUBMIT)
    mfn = v.pvmmio.mfn
    assert mfn is not None and _maps(rig.gvt.drain_effects()) == [((bar0 + SHARED) >> PAGE_SHIFT, mfn, True)]
    assert rig.mem.read(mfn << PAGE_SHIFT, 16) == bytes(16)  # handed over zeroed
    assert len(rig.gvt.shadow.frame_pool) < POOL_FRAMES
    assert rig.gvt.counters["pvmmio_granted"] == 1
    # asking for nothing unmaps the page and gives the frame back
    pool = len(rig.gvt.shadow.frame_pool)
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, 0)
    assert rd(rig.gvt, v, pv.ENABLE_PVMMIO) == 0 and v.pvmmio.mfn is None
    assert _maps(rig.gvt.drain_effects()) == [((bar0 + SHARED) >> PAGE_SHIFT, mfn, False)]
    assert len(rig.gvt.shadow.frame_pool) == pool + 1


def test_a_host_with_pvmmio_off_grants_nothing(tmp_path: object) -> None:
    """i915.enable_pvmmio=0 on the host: the vreg is always 0, nothing is mapped."""
    rg = Rig(f"{tmp_path}/machine.mem")
    try:
        rg.gvt.enable_pvmmio = pvmmio.host_levels(0)
        g = rg.boot(1)
        rg.gvt.drain_effects()
        wr(rg.gvt, g.vgpu, pv.ENABLE_PVMMIO, 1)
        assert rd(rg.gvt, g.vgpu, pv.ENABLE_PVMMIO) == 0
        assert _maps(rg.gvt.drain_effects()) == [] and g.vgpu.pvmmio.mfn is None
    finally:
        rg.close()


def test_no_frame_for_the_shared_page_means_no_grant() -> None:
    """set_pvmmio failing (here: no machine memory, no frames) leaves the vreg at 0 (handlers.c)."""
    gvt: Gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    wr(gvt, v, pv.ENABLE_PVMMIO, 1)
    assert rd(gvt, v, pv.ENABLE_PVMMIO) == 0 and v.pvmmio.granted == 0
    assert gvt.counters["pvmmio_set_failed"] == 1


def _submit_pvmmio(rig: Rig, g: object, engine: str, commands: list[int]) -> int:
    """The ACRN guest's PVMMIO_ELSP_SUBMIT path: ring and tail in RAM, ELSP dwords 1..3 into the shared page
    (plain memory writes), dword 4 into ELSP (the one trapped write). Returns the trapped writes made."""
    from test_gvt_cmd_parser_fixtures import Guest

    assert isinstance(g, Guest)
    ctx, ring, tail = g.context(engine)
    data = commands + ([cmds.MI_NOOP] if len(commands) % 2 else [])
    g.write(ring.gpa + tail, data)
    tail += 4 * len(data)
    g.contexts[engine] = (ctx, ring, tail)
    g.write(ctx.gpa + 4096 + r.CTX_RING_TAIL_VAL, [tail])
    desc = (0x100 + list(BY_NAME).index(engine)) << 32 | r.DESC_VALID | r.DESC_ADDRESSING_LEGACY32 \
        | r.DESC_PRIVILEGE | ctx.gm
    mfn = g.vgpu.pvmmio.mfn
    assert mfn is not None
    rig.mem.write(mfn << PAGE_SHIFT, cmds.to_bytes([0, 0, desc >> 32]))  # elsp_data[0..2], no trap
    wr(rig.gvt, g.vgpu, BY_NAME[engine].base + r.ELSP, desc & 0xFFFF_FFFF)
    return 1


def test_elsp_submit_takes_three_dwords_from_the_shared_page_and_one_trapped_write(rig: Rig) -> None:
    """elsp_mmio_write with PVMMIO_ELSP_SUBMIT: data[3..1] = elsp_data[0..2], data[0] = the written value;
    the one ELSP write submits and the workload runs to completion."""
    g = rig.boot(1)
    wr(rig.gvt, g.vgpu, pv.ENABLE_PVMMIO, int(PvmmioLevel.ELSP_SUBMIT))
    dst = g.bo(4096)
    traps = _submit_pvmmio(rig, g, "rcs", cmds.store_dword(dst.gm, 0xC0FFEE) + [cmds.MI_USER_INTERRUPT])
    assert traps == 1 and len(rig.gvt.scheduler.inflight) == 1
    rig.pump()
    assert g.u32(dst.gpa) == 0xC0FFEE and rig.events[-1][0] == "ctx_complete"
    assert rig.gvt.counters["pvmmio_elsp_submits"] == 1 and not g.vgpu.failsafe
    # a second submission on the same path: the shared page is re-read every time
    traps = _submit_pvmmio(rig, g, "rcs", cmds.store_dword(dst.gm + 4, 0xBEEF))
    rig.pump()
    assert g.u32(dst.gpa + 4) == 0xBEEF and rig.gvt.counters["pvmmio_elsp_submits"] == 2


def test_without_the_grant_one_elsp_write_does_not_submit(rig: Rig) -> None:
    """No PVMMIO: the ELSP port still needs its 4 writes (a guest using the shared page without a grant
    gets nothing submitted)."""
    g = rig.boot(1)
    ctx, _, _ = g.context("rcs")
    wr(rig.gvt, g.vgpu, BY_NAME["rcs"].base + r.ELSP, ctx.gm | r.DESC_VALID)
    assert rig.gvt.scheduler.inflight == {} and rig.gvt.counters["pvmmio_elsp_submits"] == 0


def test_a_trapped_access_to_the_shared_page_is_served_from_the_same_frame(rig: Rig) -> None:
    """Before the hypervisor maps the page (or if it refuses), the guest's access traps: gvt reads and
    writes the very frame the mapping would show."""
    g = rig.boot(1)
    wr(rig.gvt, g.vgpu, pv.ENABLE_PVMMIO, 1)
    wr(rig.gvt, g.vgpu, SHARED + pvmmio.REG_ADDR, 0x1234)
    mfn = g.vgpu.pvmmio.mfn
    assert mfn is not None
    assert int.from_bytes(rig.mem.read((mfn << PAGE_SHIFT) + pvmmio.REG_ADDR, 4), "little") == 0x1234
    assert rd(rig.gvt, g.vgpu, SHARED + pvmmio.REG_ADDR) == 0x1234
    assert rig.gvt.counters["pvmmio_page_trapped"] == 1


def test_pv_mmio_reads_the_register_named_in_the_shared_page_through_its_handler(rig: Rig) -> None:
    """pvinfo_mmio_read(pv_mmio): reg = shared_page->reg_addr, served by that register's read handler
    (EXECLIST_STATUS here, computed by its handler, never a plain vreg). A redirect into PVINFO itself or
    past the MMIO range is refused and counted."""
    g = rig.boot(1)
    v = g.vgpu
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, 1)
    wr(rig.gvt, v, SHARED + pvmmio.REG_ADDR, pv.VGT_CAPS)
    assert rd(rig.gvt, v, pv.PV_MMIO) == int(pv.CAPS) == rd(rig.gvt, v, pv.VGT_CAPS)
    status = BY_NAME["rcs"].base + 0x234
    wr(rig.gvt, v, SHARED + pvmmio.REG_ADDR, status + 4)
    assert rd(rig.gvt, v, pv.PV_MMIO) == rd(rig.gvt, v, status + 4)
    for bad in (pv.PV_MMIO, pvmmio.SHARED_PAGE_OFFSET, 0x1FFFFE):
        wr(rig.gvt, v, SHARED + pvmmio.REG_ADDR, bad)
        assert rd(rig.gvt, v, pv.PV_MMIO) == 0
    assert rig.gvt.counters["pvmmio_bad_reg_addr"] == 3 and not v.failsafe


def test_the_shared_page_follows_bar0_and_a_dmlr_drops_the_grant(rig: Rig) -> None:
    """Memory decode off unmaps the page, a moved BAR0 maps it at the new base + 2 MB; a DMLR restores
    PVINFO (enable_pvmmio 0) and gives the page back; a GT reset keeps the grant."""
    g = rig.boot(1)
    v = g.vgpu
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, 1)
    mfn = v.pvmmio.mfn
    assert mfn is not None
    old = v.cfg.bar0_base()
    rig.gvt.drain_effects()
    program_bar0(rig.gvt, v, base=0xD000_0000)  # sizing untraps BAR0, each half written re-traps it
    maps = _maps(rig.gvt.drain_effects())
    assert maps[0] == ((old + SHARED) >> PAGE_SHIFT, mfn, False)
    assert _net(maps) == {(0xD000_0000 + SHARED) >> PAGE_SHIFT: mfn}
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, 1)  # asking again while granted keeps the one mapping, no effect
    assert _maps(rig.gvt.drain_effects()) == []
    rig.gvt.emulate_cfg_write(v, 0x04, 0, 2)  # memory decode off: BAR0 untrapped, the page unmapped
    assert _net(maps + _maps(rig.gvt.drain_effects())) == {}
    rig.gvt.emulate_cfg_write(v, 0x04, 0x6, 2)
    assert _net(_maps(rig.gvt.drain_effects())) == {(0xD000_0000 + SHARED) >> PAGE_SHIFT: mfn}
    v.reset(dmlr=False)  # a full GT reset: PVINFO is outside [0, 0x44200), the grant stays
    assert rd(rig.gvt, v, pv.ENABLE_PVMMIO) == 1 and v.pvmmio.mfn == mfn
    pool = len(rig.gvt.shadow.frame_pool)
    v.reset(dmlr=True)
    assert v.pvmmio.mfn is None and v.pvmmio.granted == 0 and len(rig.gvt.shadow.frame_pool) == pool + 1
    assert ((0xD000_0000 + SHARED) >> PAGE_SHIFT, mfn, False) in _maps(rig.gvt.drain_effects())


def test_destroy_gives_the_shared_page_back(rig: Rig) -> None:
    g = rig.boot(1)
    wr(rig.gvt, g.vgpu, pv.ENABLE_PVMMIO, 1)
    pool = len(rig.gvt.shadow.frame_pool)
    rig.gvt.destroy_vgpu(1)
    assert len(rig.gvt.shadow.frame_pool) >= pool + 1
    assert any(not mp for _, _, mp in _maps(rig.gvt.drain_effects()))


def test_a_vhm_restart_drops_the_grant_without_touching_the_lost_frame(rig: Rig) -> None:
    """The shared page was a frame of the old vhm: after frames_lost no grant stands, the guest reads
    ENABLE_PVMMIO 0, nothing is unmapped (the new vhm never mapped it) and the frame is not reused."""
    g = rig.boot(1)
    v = g.vgpu
    wr(rig.gvt, v, pv.ENABLE_PVMMIO, int(PvmmioLevel.ELSP_SUBMIT))
    mfn = v.pvmmio.mfn
    assert mfn is not None
    rig.gvt.drain_effects()
    rig.gvt.scheduler.frames_lost()
    assert v.pvmmio.mfn is None and v.pvmmio.granted == 0 and rd(rig.gvt, v, pv.ENABLE_PVMMIO) == 0
    assert _maps(rig.gvt.drain_effects()) == [] and mfn not in rig.gvt.shadow.frame_pool
