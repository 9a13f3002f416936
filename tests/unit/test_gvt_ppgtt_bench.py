"""Benchmarks of PPGTT shadowing (figures, never timed assertions). Print them with:

    .venv/bin/python -m pytest tests/unit/test_gvt_ppgtt_bench.py --benchmark-enable --benchmark-columns=mean,ops
"""

from __future__ import annotations

import itertools
from typing import Any

from test_gvt_ppgtt_fixtures import Host

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.guest.ppgtt import GuestPpgtt, encode


def test_bench_pte_wp_trap(benchmark: Any) -> None:
    """One trapped 8-byte PTE write (a remap), applied and shadowed: what a guest page-table edit costs
    in the core."""
    host = Host()
    try:
        g = host.add_vm(1)

        def setup() -> tuple[int, list[int]]:
            ppgtt = GuestPpgtt(g.machine, g.alloc_page, 3)
            yield from ppgtt.create()
            pages = [g.alloc_page() for _ in range(2)]
            yield from ppgtt.map(0x1000, pages[0])
            host.notify(g, ppgtt)
            return ((yield from ppgtt._pt_of(0x1000)) or 0) + 8, pages

        pte, pages = host.run(setup())
        seq = itertools.count(1)
        flip = itertools.cycle(pages)

        def trap() -> int:
            req = m.Ioreq(vm=1, vcpu=0, seq=next(seq), kind=int(IoreqType.WP), dir=int(IoreqDir.WRITE), addr=pte,
                          size=8, value=encode(next(flip)))
            return host.gvt.handle_ioreq(req, 0.0)

        assert benchmark(trap) == 0
        assert not g.vgpu.failsafe and host.gvt.counters["ppgtt_wp_traps"] > 0
    finally:
        host.close()


def test_bench_shadow_a_full_page_table(benchmark: Any) -> None:
    """g2v CREATE of a 4-level PPGTT with one full PT (512 PTEs: 4 SPTs populated, 4 pages tracked),
    then DESTROY."""
    host = Host()
    try:
        g = host.add_vm(1)

        def setup() -> GuestPpgtt:
            ppgtt = GuestPpgtt(g.machine, g.alloc_page, 4)
            yield from ppgtt.create()
            page = g.alloc_page()
            for i in range(512):
                yield from ppgtt.map(i << 12, page)
            return ppgtt

        ppgtt = host.run(setup())
        v = g.vgpu

        def cycle() -> int:
            mm = v.ppgtt.get("L4", ppgtt.roots)
            n = len(v.ppgtt.spts) if mm.shadowed else 0
            v.ppgtt.put("L4", ppgtt.roots)
            host.gvt.drain_effects()
            return n

        assert benchmark(cycle) == 4
    finally:
        host.close()
