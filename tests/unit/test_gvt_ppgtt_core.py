"""PPGTT shadowing around the edges: a hostile PTE, the mm and SPT lifecycle, sharing, failsafe, resets,
running out of frames (gvt/gtt.c, gvt/page_track.c, gvt/vgpu.c). Real memory, EPTs and guests
(test_gvt_ppgtt_fixtures)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_gvt_ppgtt_fixtures import GuestVm, Host

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.common.memory import PAGE_SHIFT, PAGE_SIZE
from gvtsim.services.guest.ppgtt import GuestPpgtt
from gvtsim.services.gvt.errors import FailsafeReason
from gvtsim.services.gvt.ppgtt import PpgttError, pdps_from_context, pdps_to_context
from gvtsim.services.pgpu.dma import Dma
from gvtsim.services.pgpu.ppgtt import Ppgtt


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    yield h
    h.close()


def run(coro):  # type: ignore[no-untyped-def]
    return host.run(coro)


def _space(host: Host, g: GuestVm, levels: int = 3) -> GuestPpgtt:
    ppgtt = GuestPpgtt(g.machine, g.alloc_page, levels)
    yield from ppgtt.create()
    host.notify(g, ppgtt)
    return ppgtt


def _writable(g: GuestVm, gpa: int) -> bool:
    t = g.ept.translate(gpa >> PAGE_SHIFT)
    assert t is not None
    return t[1]


def test_context_pdp_order_round_trips() -> None:
    pdps = (0x1_2345_6000, 0x2000, 0xFFFF_FFFF_F000, 0)
    values = pdps_to_context(pdps)
    assert values[6:] == (0x1, 0x2345_6000)  # pdp0_UDW, pdp0_LDW come last (gvt/handlers.c, gvt/execlist.c)
    assert pdps_from_context(values) == pdps


def test_pte_naming_another_vms_frame_reaches_only_the_scratch_page(host: Host) -> None:
    a, b = host.add_vm(1), host.add_vm(2)

    def scenario() -> tuple[int, int, GuestPpgtt, GuestPpgtt]:
        victim_gpa = a.alloc_page()
        a.machine.mem.write(a.vgpu.mpt.gfn_to_mfn(victim_gpa >> PAGE_SHIFT) << PAGE_SHIFT, b"A" * PAGE_SIZE)
        pa = yield from _space(host, a)
        yield from pa.map(0x1000, victim_gpa)  # A's own, legitimate mapping
        pb = yield from _space(host, b)
        victim_mfn = a.vgpu.mpt.gfn_to_mfn(victim_gpa >> PAGE_SHIFT)
        yield from pb.map(0x1000, victim_mfn << PAGE_SHIFT)  # B names A's machine frame as if it were its gfn
        yield from pb.map(0x2000, 256 << PAGE_SHIFT)  # the first frame past B's 1 MiB of RAM
        yield from pb.map(0x3000, 0x4000_0000)  # far beyond any RAM
        return victim_mfn, victim_gpa, pa, pb

    victim_mfn, victim_gpa, pa, pb = host.run(scenario())
    scratch = host.gvt.scratch_mfn << PAGE_SHIFT
    shadow_b = host.prepare(b, pb)
    for va in (0x1000, 0x2000, 0x3000):
        assert host.shadow_walk(3, shadow_b, va) == scratch
    assert host.gvt.counters["ppgtt_invalid_gfn"] >= 3
    assert victim_mfn >= 256  # a frame number B has no page at
    # the GPU writing through B's PPGTT lands in the scratch page; A's page is untouched
    dma = Dma(host.mem, Ppgtt(host.mem, 3, shadow_b), "PPGTT")
    for va in (0x1000, 0x2000, 0x3000):
        dma.write(va, b"B" * PAGE_SIZE)
    assert host.mem.read(victim_mfn << PAGE_SHIFT, PAGE_SIZE) == b"A" * PAGE_SIZE
    assert host.mem.read(scratch, PAGE_SIZE) == b"B" * PAGE_SIZE
    # A's own mapping still reaches its page; B is not in failsafe (a bad PTE is not an error)
    assert host.shadow_walk(3, host.prepare(a, pa), 0x1000) == victim_mfn << PAGE_SHIFT
    assert not b.vgpu.failsafe and not a.vgpu.failsafe


def test_g2v_create_tracks_every_table_and_destroy_releases_them(host: Host) -> None:
    g = host.add_vm(1)
    pool = len(host.gvt.shadow.frame_pool)

    def scenario() -> GuestPpgtt:
        ppgtt = yield from _space(host, g, levels=4)
        yield from ppgtt.map(0x80_0020_3000, g.alloc_page())
        return ppgtt

    ppgtt = host.run(scenario())
    tables = {gfn << PAGE_SHIFT for gfn in g.vgpu.ppgtt.spts}
    assert len(tables) == 4  # PML4 -> PDP -> PD -> PT
    assert all(not _writable(g, gpa) for gpa in tables)
    assert host.gvt.counters["ppgtt_wp_traps"] >= 3  # the PDP, PD and PT links and the PTE after shadowing
    assert len(host.gvt.shadow.frame_pool) == pool - 3 - 4  # scratch PT/PD/PDP + 4 SPTs
    host.notify(g, ppgtt, create=False)
    assert g.vgpu.ppgtt.mms == [] and g.vgpu.ppgtt.spts == {} and g.vgpu.page_track.pages == {}
    assert all(_writable(g, gpa) for gpa in tables)
    assert len(host.gvt.shadow.frame_pool) == pool - 3


def test_a_pt_named_by_two_pdes_is_one_refcounted_spt(host: Host) -> None:
    g = host.add_vm(1)

    def scenario() -> GuestPpgtt:
        ppgtt = yield from _space(host, g)
        yield from ppgtt.map(0x5000, g.alloc_page())
        yield from ppgtt.share_table(0x5000, 0x4020_0000)  # another PDP, another PD, the same PT
        return ppgtt

    ppgtt = host.run(scenario())
    pt_gfn = (host.run(ppgtt._pt_of(0x5000)) or 0) >> PAGE_SHIFT
    assert g.vgpu.ppgtt.spts[pt_gfn].refcount == 2
    shadow = host.prepare(g, ppgtt)
    assert host.shadow_walk(3, shadow, 0x4020_5000) == host.shadow_walk(3, shadow, 0x5000) is not None
    host.run(ppgtt.unlink_table(0x5000))
    assert g.vgpu.ppgtt.spts[pt_gfn].refcount == 1 and not _writable(g, pt_gfn << PAGE_SHIFT)
    host.run(ppgtt.unlink_table(0x4020_0000))
    assert pt_gfn not in g.vgpu.ppgtt.spts and _writable(g, pt_gfn << PAGE_SHIFT)


def test_failsafe_vgpu_wp_write_just_unprotects_and_lands(host: Host) -> None:
    g = host.add_vm(1)
    ppgtt = host.run(_space(host, g))
    pd = ppgtt.top[0]
    g.vgpu.enter_failsafe(FailsafeReason.GUEST_ERR, "test")
    host.run(g.machine.write_u64(pd + 8, 0x1234_5003))
    assert _writable(g, pd) and g.machine.read_u64(pd + 8) == 0x1234_5003
    assert host.gvt.counters["wp_failsafe"] == 1


def test_a_malformed_page_table_write_fails_only_that_vgpu(host: Host) -> None:
    a, b = host.add_vm(1), host.add_vm(2)
    pa, pb = host.run(_space(host, a)), host.run(_space(host, b))
    req = m.Ioreq(vm=1, vcpu=0, seq=1, kind=int(IoreqType.WP), dir=int(IoreqDir.WRITE), addr=pa.top[0] + 2,
                  size=2, value=0xFFFF)
    host.gvt.handle_ioreq(req, 0.0)  # 2 bytes: ppgtt_write_protection_handler accepts only 4 or 8 (-EINVAL)
    assert a.vgpu.failsafe and host.gvt.counters["wp_errors"] == 1
    host.run(pb.map(0x1000, 0x3000))
    assert not b.vgpu.failsafe
    assert host.shadow_walk(3, host.prepare(b, pb), 0x1000) == host.guest_walk(b, pb, 0x1000)


def test_half_entry_writes_wait_for_the_flush(host: Host) -> None:
    g = host.add_vm(1)

    def scenario() -> tuple[GuestPpgtt, int, int]:
        ppgtt = yield from _space(host, g)
        old, new = g.alloc_page(), g.alloc_page()
        yield from ppgtt.map(0x1000, old)
        return ppgtt, old, new

    ppgtt, old, new = host.run(scenario())
    spt = next(s for s in g.vgpu.ppgtt.spts.values() if s.level == 1)
    shadow = host.prepare(g, ppgtt)
    pt = host.run(ppgtt._pt_of(0x1000)) or 0
    host.run(g.machine.write_u32(pt + 8, new | 3))  # the low half only
    assert spt.post_shadow == {1} and host.shadow_walk(3, shadow, 0x1000) is None  # scratch until flushed
    shadow = host.prepare(g, ppgtt)
    assert spt.post_shadow == set() and host.shadow_walk(3, shadow, 0x1000) == host.guest_walk(g, ppgtt, 0x1000)
    assert host.guest_walk(g, ppgtt, 0x1000) == g.vgpu.mpt.gfn_to_mfn(new >> PAGE_SHIFT) << PAGE_SHIFT
    assert old != new


def test_lazy_mm_lives_while_its_workload_runs(host: Host) -> None:
    g = host.add_vm(1)

    def scenario() -> GuestPpgtt:  # no g2v CREATE: the context's roots are all GVT sees
        ppgtt = GuestPpgtt(g.machine, g.alloc_page, 4)
        yield from ppgtt.create()
        yield from ppgtt.map(0x7000, g.alloc_page())
        return ppgtt

    ppgtt = host.run(scenario())
    sched = host.gvt.scheduler
    shadow = host.prepare(g, ppgtt, workload_id=7)
    sched.inflight[7] = object()  # type: ignore[assignment]  # on the GPU
    assert host.shadow_walk(4, shadow, 0x7000) == host.guest_walk(g, ppgtt, 0x7000)
    (mm,) = g.vgpu.ppgtt.mms
    assert mm.refcount == 0 and mm.shadowed
    g.vgpu.ppgtt.reap()
    assert g.vgpu.ppgtt.mms == [mm]  # still walked by workload 7
    del sched.inflight[7]
    g.vgpu.ppgtt.reap()
    assert g.vgpu.ppgtt.mms == [] and g.vgpu.ppgtt.spts == {}


def test_frames_freed_under_a_running_workload_are_not_reused_until_it_ends(host: Host) -> None:
    g = host.add_vm(1)
    ppgtt = host.run(_space(host, g))
    host.run(ppgtt.map(0x1000, 0x3000))
    sched = host.gvt.scheduler
    sched.inflight[1] = object()  # type: ignore[assignment]
    pt = host.run(ppgtt._pt_of(0x1000)) or 0
    freed = g.vgpu.ppgtt.spts[pt >> PAGE_SHIFT].mfn
    host.run(ppgtt.unlink_table(0x1000))
    assert freed not in host.gvt.shadow.frame_pool
    del sched.inflight[1]
    host.gvt.ppgtt.reap()
    assert freed in host.gvt.shadow.frame_pool


def test_resets_gt_invalidates_dmlr_destroys(host: Host) -> None:
    g = host.add_vm(1)
    ppgtt = host.run(_space(host, g))
    host.run(ppgtt.map(0x1000, 0x3000))
    assert host.gvt.reset_vgpu(1, dmlr=False) is None  # full GT reset
    host.apply_effects()
    (mm,) = g.vgpu.ppgtt.mms
    assert not mm.shadowed and g.vgpu.ppgtt.spts == {} and _writable(g, ppgtt.top[0])
    shadow = host.prepare(g, ppgtt)  # re-shadowed when next used
    assert host.shadow_walk(3, shadow, 0x1000) == host.guest_walk(g, ppgtt, 0x1000) is not None
    assert host.gvt.reset_vgpu(1, dmlr=True) is None
    host.apply_effects()
    assert g.vgpu.ppgtt.mms == [] and g.vgpu.page_track.pages == {} and _writable(g, ppgtt.top[0])


def test_no_frames_fails_the_workload_not_the_vgpu(host: Host) -> None:
    g = host.add_vm(1)
    ppgtt = GuestPpgtt(g.machine, g.alloc_page, 3)
    host.run(ppgtt.create())
    host.run(ppgtt.map(0x1000, 0x3000))
    pool = host.gvt.shadow
    saved, pool.frame_pool = pool.frame_pool, pool.frame_pool[:4]  # scratch tables + one PD: not enough
    host.notify(g, ppgtt)  # shadowing is deferred, not an error
    with pytest.raises(PpgttError):
        host.prepare(g, ppgtt)
    assert not g.vgpu.failsafe and g.vgpu.ppgtt.spts == {} and host.gvt.counters["ppgtt_no_frames"] >= 1
    pool.frame_pool = pool.frame_pool + saved
    shadow = host.prepare(g, ppgtt)
    assert host.shadow_walk(3, shadow, 0x1000) == host.guest_walk(g, ppgtt, 0x1000) is not None


def test_vgpu_destroy_releases_every_tracked_page(host: Host) -> None:
    g = host.add_vm(1)
    ppgtt = host.run(_space(host, g))
    host.run(ppgtt.map(0x1000, 0x3000))
    tables = [gfn << PAGE_SHIFT for gfn in g.vgpu.ppgtt.spts]
    assert host.gvt.destroy_vgpu(1) is None
    host.apply_effects()
    assert all(_writable(g, gpa) for gpa in tables)


def test_unsupported_addressing_mode_is_a_workload_error(host: Host) -> None:
    g = host.add_vm(1)
    with pytest.raises(PpgttError):
        g.vgpu.ppgtt.prepare_workload(1 | (2 << 3), (0, 0, 0, 0, 0, 0, 0, 0x1000), 1)
    assert not g.vgpu.failsafe

