"""The guest driver's PPGTT context against the real GVT core (i915 gen8_ppgtt.c gen8_ppgtt_notify_vgt, gvt/gtt.c,
gvt/page_track.c): gen8_ppgtt_notify_vgt through PVINFO, the context image's PDPs, the descriptor's addressing mode,
and the teardown."""

from __future__ import annotations


import pytest
from test_gvt_ppgtt_fixtures import BAR0, Host

from gvtsim.services.common.memory import PAGE_SHIFT
from gvtsim.hardware import regs as r
from gvtsim.services.guest.i915 import VgpuDriver
from gvtsim.services.guest.pci import PciDevice
from gvtsim.services.gvt.gtt import PPGTT_ROOT_L3, PPGTT_ROOT_L4


@pytest.mark.parametrize("levels", [3, 4])
def test_ppgtt_context_is_announced_imaged_and_destroyed(levels: int) -> None:
    host = Host()
    try:
        g = host.add_vm(1, ram_mb=4)
        gpu = PciDevice(0, 2, 0, 0x8086, 0x1912, 6, 0x30000, bar0=BAR0, bar0_size=16 << 20,
                        bar2_size=host.gvt.gpu.aperture_size)
        drv = VgpuDriver(g.machine, gpu, engines=("rcs",))

        def scenario() -> None:
            yield from drv.init()
            host.apply_effects()
            ctx = yield from drv.create_ppgtt_context("rcs", levels)
            host.apply_effects()
            (mm,) = g.vgpu.ppgtt.mms
            assert mm.root == (PPGTT_ROOT_L3 if levels == 3 else PPGTT_ROOT_L4) and mm.refcount == 1
            assert mm.pdps[0] == ctx.ppgtt.top[0] and mm.shadowed
            state = ctx.context.gpa + 4096
            for n, (udw, ldw) in r.CTX_PDP_VAL.items():
                root = ctx.ppgtt.roots[n]
                assert (g.machine.read_u32(state + udw), g.machine.read_u32(state + ldw)) == (root >> 32,
                                                                                          root & 0xFFFF_FFFF)
            desc = drv.descriptor(drv.engines["rcs"], ppgtt=True)
            assert (desc >> 3) & 3 == (1 if levels == 3 else 3) and desc >> 32 == ctx.ctx_id
            assert (drv.descriptor(drv.engines["rcs"]) >> 3) & 3 == 1  # the default context is unchanged
            tables = [gfn << PAGE_SHIFT for gfn in g.vgpu.ppgtt.spts]
            assert tables and all(not g.ept.translate(gpa >> PAGE_SHIFT)[1] for gpa in tables)  # type: ignore[index]
            yield from drv.destroy_ppgtt_contexts()
            host.apply_effects()
            assert g.vgpu.ppgtt.mms == [] and drv.engines["rcs"].ppgtt_ctx is None
            assert all(g.ept.translate(gpa >> PAGE_SHIFT)[1] for gpa in tables)  # type: ignore[index]

        host.run(scenario())
        assert host.gvt.counters["g2v_ppgtt_create"] == 1 and host.gvt.counters["g2v_ppgtt_destroy"] == 1
        assert not g.vgpu.failsafe
    finally:
        host.close()
