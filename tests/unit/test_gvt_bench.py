"""Benchmarks of the GVT core (figures, never timed assertions). They run once as plain tests under the
project's default ``--benchmark-disable``; print the figures with:

    .venv/bin/python -m pytest tests/unit/test_gvt_bench.py --benchmark-enable --benchmark-columns=mean,ops
"""

from __future__ import annotations

from typing import Any

from test_gvt_fixtures import BAR0_GPA, FakeMpt, create, make_gvt, program_bar0

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.gvt import gtt
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.service import effects_to_messages


def _setup() -> Any:
    gvt = make_gvt({1: FakeMpt({gfn: gfn + 0x1000 for gfn in range(256)})})
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.drain_effects()
    return gvt, v


def test_bench_mmio_register_read_ioreq(benchmark: Any) -> None:
    gvt, _ = _setup()
    req = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=IoreqDir.READ, addr=BAR0_GPA + 0x44308, size=4)
    assert benchmark(gvt.handle_ioreq, req, 0.0) == 0


def test_bench_pvinfo_read_ioreq(benchmark: Any) -> None:
    gvt, _ = _setup()
    req = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=IoreqDir.READ, addr=BAR0_GPA + 0x78000, size=8)
    assert benchmark(gvt.handle_ioreq, req, 0.0) == 0x4776544776544776


def test_bench_ggtt_write_ioreq(benchmark: Any) -> None:
    gvt, v = _setup()
    index = v.resource.low_base >> 12
    req = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=IoreqDir.WRITE,
                  addr=BAR0_GPA + (8 << 20) + 8 * index, size=8, value=gtt.pte_encode(0x42 << 12))

    def one() -> int:
        value = gvt.handle_ioreq(req, 0.0)
        gvt.effects.clear()
        return value

    assert benchmark(one) == 0


def test_bench_create_destroy_v5_8_with_wire_messages(benchmark: Any) -> None:
    gvt = make_gvt()

    def cycle() -> int:
        v = gvt.create_vgpu(1, "GVTg_V5_8", now=0.0)
        assert not isinstance(v, Refusal)
        gvt.destroy_vgpu(1)
        return len(effects_to_messages(gvt.drain_effects()))

    assert benchmark(cycle) > 0
