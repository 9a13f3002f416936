"""gvt's saved state for a vGPU with PPGTT address spaces (docs/STATE.md), no sockets: the mms (roots and
references) are recorded, a restarted gvt rebuilds their shadows from the guest's page tables (in guest RAM)
and registers their page tracking again (vhm kept the write protection: the same request is idempotent
there); the old shadows' frames come back to the pool. The guest's edits of its tables while the shadow is
being rebuilt are not lost."""

from __future__ import annotations

import pytest
from test_gvt_ppgtt_fixtures import Host

from gvtsim.services.guest.ppgtt import GuestPpgtt
from gvtsim.services.gvt import state as gs
from gvtsim.services.gvt.core import Gvt

VAS = [0x0000_0000, 0x0000_1000, 0x0020_0000, 0x4000_0000]


def _walks_match(host: Host, g, ppgtt: GuestPpgtt, levels: int) -> None:  # type: ignore[no-untyped-def]
    shadow = host.prepare(g, ppgtt)
    for va in VAS:
        assert host.shadow_walk(levels, shadow, va + 0x123) == host.guest_walk(g, ppgtt, va + 0x123), hex(va)


@pytest.mark.parametrize("levels", [3, 4])
def test_ppgtt_shadows_are_rebuilt_from_the_guest_tables_after_a_restart(tmp_path, levels: int) -> None:
    host = Host()
    try:
        g = host.add_vm(1, ram_mb=1)
        data = [g.alloc_page() for _ in range(4)]
        ppgtt = GuestPpgtt(g.machine, g.alloc_page, levels)

        def before() -> object:
            yield from ppgtt.create()
            yield from ppgtt.map(VAS[0], data[0])
            host.notify(g, ppgtt)  # g2v CREATE: shadowed, its tables write-protected
            yield from ppgtt.map(VAS[1], data[1])  # a WP trap: the shadow follows
            _walks_match(host, g, ppgtt, levels)

        host.run(before())
        v = g.vgpu
        old_frames = v.ppgtt.frames()
        tracked = {gfn for gfn, p in v.page_track.pages.items() if p.tracked}
        assert old_frames and tracked and v.ppgtt.mms[0].shadowed
        store = gs.StateStore(str(tmp_path))
        store.mpt_args[v.id] = (g.ept_root, g.ram_mb)
        store.commit(host.gvt, [v.id], 7)
        store.close()
        pool_before = len(host.gvt.shadow.frame_pool)

        # gvt is killed and starts again: the vGPU comes back with its mm, not shadowed yet
        g2 = Gvt(mpt_factory=host.gvt.mpt_factory)
        g2.shadow.init(host.mem)
        s2 = gs.StateStore(str(tmp_path))
        got = s2.restore(g2, g2.mpt_factory)
        s2.close()
        assert got.refused == [] and [x.id for x in got.vgpus] == [v.id]
        w = g2.by_vm[1]
        (mm,) = w.ppgtt.mms
        assert (mm.root, mm.pdps, mm.refcount, mm.shadowed) == (v.ppgtt.mms[0].root, v.ppgtt.mms[0].pdps, 1, False)
        # nothing was on the GPU: the old shadows' frames are free again at once
        assert set(old_frames) <= set(g2.shadow.frame_pool)
        assert len(g2.shadow.frame_pool) == pool_before + len(old_frames)
        host.gvt, g.vgpu = g2, w

        def after() -> object:
            # the guest edits a table before the shadow is rebuilt: vhm still write-protects it, the trap
            # reaches a gvt with no handler for it yet, which writes it through
            yield from ppgtt.map(VAS[2], data[2])
            assert g2.counters["wp_untracked"] >= 1
            _walks_match(host, g, ppgtt, levels)  # rebuilt from the guest's tables at the dispatch
            assert mm.shadowed and tracked <= {gfn for gfn, p in w.page_track.pages.items() if p.tracked}
            yield from ppgtt.map(VAS[3], data[3])  # tracked again: the shadow follows the edit
            yield from ppgtt.unmap(VAS[0])
            _walks_match(host, g, ppgtt, levels)
            host.notify(g, ppgtt, create=False)  # g2v DESTROY: the recorded reference is the guest's
            assert w.ppgtt.mms == []

        host.run(after())
        assert not w.failsafe and g2.counters["internal_errors"] == 0
    finally:
        host.close()
