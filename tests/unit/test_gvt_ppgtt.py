"""PPGTT shadowing, driven by a real guest's page-table edits (gvt/gtt.c, gvt/page_track.c).

The property: for random sequences of guest page-table edits (map, unmap, remap, half-entry writes, page
tables unlinked, re-used and shared between two directory entries), after the pre-submission flush every
GPU virtual address translates the same through the guest's tables (gfn -> mfn) and through the shadow
tables pgpu walks; with OOS on and off the translations are identical and OOS takes no more WP traps.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gvt_ppgtt_fixtures import DESC_VALID, Host

from gvtsim.services.common.memory import PAGE_SHIFT
from gvtsim.services.guest.ppgtt import GuestPpgtt, encode
from gvtsim.services.gvt.ppgtt import pdps_to_context

# GPU virtual pages the edits touch: different PTEs of one PT, different PDEs, different PDPs (and for the
# 4-level tables a different PML4 slot), so edits share tables in every way the walk can
VA_L3 = [0x0000_0000, 0x0000_1000, 0x0000_7000, 0x001F_F000, 0x0020_0000, 0x0020_3000,
         0x3FE0_0000, 0x4000_0000, 0x4000_5000, 0xC000_0000, 0xFFFF_F000]
VA_L4 = [0x0000_0000, 0x0000_1000, 0x0020_0000, 0x4000_0000, 0x4000_3000, 0x80_0000_0000,
         0x80_0020_0000, 0xFFFF_FFFF_F000]
DATA_PAGES = 12  # guest pages the PTEs point at
FOREIGN_GFN = 0x9_0000  # far outside a 1 MiB VM: another VM's frame number, or nothing

op = st.one_of(
    st.tuples(st.just("map"), st.integers(0, 15), st.integers(0, DATA_PAGES - 1)),
    st.tuples(st.just("unmap"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("half"), st.integers(0, 15), st.integers(0, DATA_PAGES - 1)),
    st.tuples(st.just("unlink"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("share"), st.integers(0, 15), st.integers(0, 15)),
    st.tuples(st.just("foreign"), st.integers(0, 15), st.just(0)),
    st.tuples(st.just("submit"), st.just(0), st.just(0)),
)


def _run(host: Host, levels: int, ops: list[tuple[str, int, int]]) -> list[dict[int, int | None]]:
    """Apply the edits as the guest would; after every "submit" (and at the end) compare the two walks.
    Returns the translations seen at each check (for the OOS on/off comparison)."""
    g = host.add_vm(1)
    vas = VA_L3 if levels == 3 else VA_L4
    data = [g.alloc_page() for _ in range(DATA_PAGES)]
    ppgtt = GuestPpgtt(g.machine, g.alloc_page, levels)
    yield from ppgtt.create()
    yield from ppgtt.map(vas[0], data[0])  # something mapped before GVT learns of the tables
    host.notify(g, ppgtt)  # g2v CREATE: shadowed and write-protected from now on
    seen: list[dict[int, int | None]] = []

    def check() -> None:
        shadow = host.prepare(g, ppgtt)
        got = {}
        for va in vas:
            for off in (0, 0x123):
                want = host.guest_walk(g, ppgtt, va + off)
                assert host.shadow_walk(levels, shadow, va + off) == want, (hex(va + off), ops)
                got[va + off] = want
        seen.append(got)

    for kind, a, b in ops:
        va = vas[a % len(vas)]
        if kind == "map":
            yield from ppgtt.map(va, data[b])
        elif kind == "unmap":
            yield from ppgtt.unmap(va)
        elif kind == "half":  # a 4-byte PTE update (the low half): deferred to the post-shadow flush
            pt = yield from ppgtt._pt_of(va)
            if pt is not None:
                yield from g.machine.write_u32(pt + 8 * ((va >> 12) & 0x1FF), encode(data[b]) & 0xFFFF_FFFF)
        elif kind == "unlink":
            yield from ppgtt.unlink_table(va)
        elif kind == "share":
            yield from ppgtt.share_table(va, vas[b % len(vas)])
        elif kind == "foreign":
            yield from ppgtt.map(va, FOREIGN_GFN << PAGE_SHIFT)
        else:
            check()
    check()
    return seen


def _traps(host: Host) -> int:
    return host.gvt.counters["ppgtt_wp_traps"]


TOTALS: Counter[str] = Counter()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(levels=st.sampled_from([3, 4]), ops=st.lists(op, min_size=1, max_size=30))
def test_shadow_translates_like_the_guest_with_and_without_oos(levels: int, ops: list) -> None:
    results, traps = {}, {}
    for oos in (False, True):
        host = Host(oos=oos)
        try:
            results[oos] = host.run(_run(host, levels, ops))
            traps[oos] = _traps(host)
            assert host.gvt.counters["internal_errors"] == 0
            assert not host.vms[1].vgpu.failsafe
        finally:
            host.close()
    assert results[True] == results[False]  # OOS changes when the shadow catches up, never the result
    assert traps[True] <= traps[False]
    TOTALS["wp_traps_oos_off"] += traps[False]
    TOTALS["wp_traps_oos_on"] += traps[True]


def test_wp_trap_totals_of_the_property_run() -> None:
    """Runs after the property test (file order): print the WP trap totals of all its examples."""
    if not TOTALS:
        pytest.skip("property test not run")
    print(f"\nWP traps over the property examples: OOS off {TOTALS['wp_traps_oos_off']}, "
          f"OOS on {TOTALS['wp_traps_oos_on']}")
    assert TOTALS["wp_traps_oos_on"] <= TOTALS["wp_traps_oos_off"]


def _remap_heavy(host: Host, rounds: int = 6, pages: int = 32) -> tuple[dict[int, int | None], int]:
    """A guest that remaps a whole PT's worth of pages between submissions (the case OOS is for)."""
    g = host.add_vm(1)
    data = [g.alloc_page() for _ in range(pages)]
    ppgtt = GuestPpgtt(g.machine, g.alloc_page, 3)
    yield from ppgtt.create()
    host.notify(g, ppgtt)
    vas = [i << 12 for i in range(pages)]
    for r in range(rounds):
        for i, va in enumerate(vas):
            yield from ppgtt.map(va, data[(i + r) % pages])
        if r % 2:
            yield from ppgtt.unmap(vas[r])
        shadow = host.prepare(g, ppgtt, workload_id=r + 1)
        for va in vas:
            assert host.shadow_walk(3, shadow, va) == host.guest_walk(g, ppgtt, va)
    return {va: host.guest_walk(g, ppgtt, va) for va in vas}, _traps(host)


def test_oos_takes_fewer_wp_traps_for_the_same_translations() -> None:
    out = {}
    for oos in (False, True):
        host = Host(oos=oos)
        try:
            out[oos] = host.run(_remap_heavy(host))
            if oos:
                assert host.gvt.counters["ppgtt_oos_syncs"] > 0 and host.gvt.counters["ppgtt_oos_pages"] > 0
        finally:
            host.close()
    (plain, plain_traps), (oos, oos_traps) = out[False], out[True]
    print(f"\nremap-heavy guest, 6 rounds x 32 PTEs: WP traps OOS off {plain_traps}, OOS on {oos_traps}")
    assert plain == oos
    assert oos_traps < plain_traps


def _other_space_edited_while_one_is_dispatched(host: Host) -> None:
    g = host.add_vm(1)
    data = [g.alloc_page() for _ in range(40)]
    a = GuestPpgtt(g.machine, g.alloc_page, 3)  # the address space of the workload being dispatched
    b = GuestPpgtt(g.machine, g.alloc_page, 3)  # another vCPU's, which it is editing at the same time
    for p in (a, b):
        yield from p.create()
        yield from p.map(0, data[0])
        host.notify(g, p)
    for i in range(32):  # b's PT takes enough WP faults to go out of sync (writable again)
        yield from b.map(i << 12, data[i])
    spt = g.vgpu.ppgtt.spt
    assert [s for s in spt.oos_list if s.out_of_sync], "b's PT should be out of sync by now"
    desc = DESC_VALID | (1 << 3)
    # a's workload is prepared; the write protection it queues is not at vhm yet when the other vCPU writes
    g.vgpu.ppgtt.prepare_workload(desc, pdps_to_context(a.roots), 1)
    yield from b.map(5 << 12, data[39])  # lands directly (b's PT is not write-protected): no trap
    host.apply_effects()
    shadow = host.prepare(g, b, workload_id=2)
    for i in range(32):
        assert host.shadow_walk(3, shadow, i << 12) == host.guest_walk(g, b, i << 12), hex(i << 12)


def test_oos_page_of_another_address_space_is_not_synced_under_its_writer() -> None:
    """The sync before a dispatch covers the dispatched address space only: a page another vCPU is editing
    keeps out of sync (its writes land without a trap) until its own workload is dispatched, so none of
    them is missed between gvt's read of the page and vhm write-protecting it again."""
    host = Host(oos=True)
    try:
        host.run(_other_space_edited_while_one_is_dispatched(host))
    finally:
        host.close()
