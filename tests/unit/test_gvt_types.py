"""Conformance: vGPU types, GM partitioning with the host reserve, available instances (gvt/gtt.c,
gvt/aperture_gm.c)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.protocol.errors import ErrorCode
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.errors import GvtError
from gvtsim.services.gvt.types import (
    HOST_FENCE, HOST_HIGH_GM_SIZE, HOST_LOW_GM_SIZE, MB, TYPES, TYPES_BY_NAME, GmPartition, PhysicalGpu,
    parse_spec, type_table,
)


def test_type_table_is_intel_vgpu_configs() -> None:
    rows = {t.name: (t.low_gm_mb, t.high_gm_mb, t.fence, t.weight) for t in TYPES}
    assert rows == {
        "GVTg_V5_8": (64, 384, 4, 2),
        "GVTg_V5_4": (128, 512, 4, 4),
        "GVTg_V5_2": (256, 1024, 4, 8),
        "GVTg_V5_1": (512, 2048, 4, 16),
    }
    assert all(t.weight == 16 // int(t.name[-1]) for t in TYPES)  # weight = 16 / n
    assert [t.name for t in type_table(8)] == ["GVTg_V4_8", "GVTg_V4_4", "GVTg_V4_2", "GVTg_V4_1"]


def test_host_reserve_constants() -> None:
    assert (HOST_LOW_GM_SIZE, HOST_HIGH_GM_SIZE, HOST_FENCE) == (128 * MB, 384 * MB, 4)


def test_available_instances_on_default_gpu() -> None:
    # SKL with 4 GB GM, a 512 MB aperture, 32 fences -> low 384 MB, high 3200 MB, fences 28 available
    gm = GmPartition(PhysicalGpu(aperture_mb=512))
    assert gm.avail() == (384 * MB, 3200 * MB, 28)
    got = {t.name: gm.avail_instances(t) for t in TYPES}
    assert got == {"GVTg_V5_8": min(384 // 64, 3200 // 384, 28 // 4),  # 6
                   "GVTg_V5_4": min(384 // 128, 3200 // 512, 28 // 4),  # 3
                   "GVTg_V5_2": min(384 // 256, 3200 // 1024, 28 // 4),  # 1
                   "GVTg_V5_1": 0}
    assert got["GVTg_V5_8"] == 6 and got["GVTg_V5_2"] == 1


def test_type_registration_rule_depends_on_aperture() -> None:
    small = GmPartition(PhysicalGpu(aperture_mb=256))
    assert [t.name for t in TYPES if small.registered(t)] == ["GVTg_V5_8", "GVTg_V5_4"]
    big = GmPartition(PhysicalGpu(aperture_mb=1024))
    assert all(big.registered(t) for t in TYPES)


def test_low_gm_bottom_up_in_aperture_high_gm_top_down() -> None:
    gpu = PhysicalGpu()
    gm = GmPartition(gpu)
    a = gm.alloc(TYPES_BY_NAME["GVTg_V5_8"])
    b = gm.alloc(TYPES_BY_NAME["GVTg_V5_8"])
    assert a.low_base == HOST_LOW_GM_SIZE and b.low_base == HOST_LOW_GM_SIZE + 64 * MB
    assert a.high_base + a.high_size == gpu.gm_size  # PIN_HIGH: from the top
    assert b.high_base + b.high_size == a.high_base
    assert a.fences == (4, 5, 6, 7) and b.fences == (8, 9, 10, 11)  # host keeps fences 0..3
    gm.free(a)
    c = gm.alloc(TYPES_BY_NAME["GVTg_V5_8"])
    assert c.low_base == a.low_base and c.high_base == a.high_base  # the hole is reused


def test_creating_beyond_capacity_is_no_space_and_takes_nothing() -> None:
    gm = GmPartition(PhysicalGpu(aperture_mb=512))  # room for one GVTg_V5_2
    t = TYPES_BY_NAME["GVTg_V5_2"]
    gm.alloc(t)
    before = gm.avail()
    with pytest.raises(GvtError) as err:
        gm.alloc(t)
    assert err.value.code == ErrorCode.NO_SPACE and "low GM" in err.value.reason
    assert gm.avail() == before


def test_vgpu_ids_are_1_to_7_and_the_eighth_is_no_space() -> None:
    gvt = Gvt()
    ids = []
    for vm in range(1, 8):
        v = gvt.create_vgpu(vm, f"{vm},8,8,1", now=0.0)
        assert not isinstance(v, Refusal)
        ids.append(v.id)
    assert ids == list(range(1, 8))
    r = gvt.create_vgpu(8, "8,8,8,1", now=0.0)
    assert isinstance(r, Refusal) and r.code == ErrorCode.NO_SPACE
    assert gvt.destroy_vgpu(3) is None
    v = gvt.create_vgpu(9, "9,8,8,1", now=0.0)
    assert not isinstance(v, Refusal) and v.id == 3  # lowest free id, as idr_alloc


def test_types_avail_drop_on_create_and_return_on_destroy() -> None:
    gvt = Gvt(PhysicalGpu(aperture_mb=512))
    before = {s.type.name: s.avail for s in gvt.types()}
    assert not isinstance(gvt.create_vgpu(1, "GVTg_V5_4", now=0.0), Refusal)
    during = {s.type.name: s.avail for s in gvt.types()}
    assert during["GVTg_V5_4"] == before["GVTg_V5_4"] - 1
    # 256 MB low GM, 2688 MB high GM, 24 fences left
    assert during["GVTg_V5_8"] == min(256 // 64, 2688 // 384, 24 // 4) == 4
    assert during["GVTg_V5_2"] == 1
    gvt.destroy_vgpu(1)
    assert {s.type.name: s.avail for s in gvt.types()} == before


@pytest.mark.parametrize("spec,vm,expect", [
    ("GVTg_V5_8", 3, (None, 64, 384, 4, 2)),
    ("3,64,448,8", 3, (3, 64, 448, 8, 2)),  # acrn-dm's defaults; weight copied from types[0]
    ("3,64,448,8", None, (3, 64, 448, 8, 2)),
    ("128,512,4", 5, (None, 128, 512, 4, 2)),
])
def test_parse_spec_accepts_types_and_acrngt_specs(spec: str, vm: int | None, expect: tuple) -> None:
    spec_vm, t = parse_spec(spec, vm)
    assert (spec_vm, t.low_gm_mb, t.high_gm_mb, t.fence, t.weight) == expect
    assert t.custom == ("," in spec)


@pytest.mark.parametrize("spec,vm", [
    ("GVTg_V5_3", 1), ("0,64,448,8", None), ("-3", None), ("3,0,448,8", 3), ("3,64,448,0", 3),
    ("4,64,448,8", 3), ("3,64,0,8", 3), ("a,b,c,d", 1), ("", 1), ("1,2", 1), ("3,99999,1,1", 3),
])
def test_parse_spec_refuses_bad_specs(spec: str, vm: int | None) -> None:
    with pytest.raises(GvtError) as err:
        parse_spec(spec, vm)
    assert err.value.code == ErrorCode.BAD_REQUEST


def test_physical_gpu_from_pgpu_info() -> None:
    gpu = PhysicalGpu.from_info({"vendor": 0x8086, "device": 0x5912, "revision": 4, "gm_mb": 4096,
                                 "aperture_mb": 1024, "msi_cap": 0xAC, "fences": 32, "extra": "ignored"})
    assert (gpu.device, gpu.aperture_mb) == (0x5912, 1024)
    for bad in ({"aperture_mb": 64}, {"fences": 4}, {"gm_mb": "4096"}, {"msi_cap": 0x30}):
        with pytest.raises(ValueError):
            PhysicalGpu.from_info(bad)


@settings(max_examples=60, deadline=None)
@given(aperture=st.sampled_from([256, 512, 1024]), fences=st.integers(8, 32),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=25))
def test_partition_invariants(aperture: int, fences: int, ops: list[tuple[bool, int]]) -> None:
    """Any create/free sequence: slices stay in their regions, never overlap, and avail always equals
    total - host reserve - allocated (the facts' arithmetic)."""
    gpu = PhysicalGpu(aperture_mb=aperture, fences=fences)
    gm = GmPartition(gpu)
    held = []
    for create, which in ops:
        if create:
            t = TYPES[which]
            expect_ok = gm.avail_instances(t) >= 1
            try:
                held.append(gm.alloc(t))
                assert expect_ok
            except GvtError as err:
                # the facts' arithmetic counts free GM, drm_mm needs a contiguous hole: after frees the
                # count may allow an instance that fragmentation refuses (real GVT fails the same way)
                assert err.code == ErrorCode.NO_SPACE and (not expect_ok or "fragmented" in err.reason)
        elif held:
            gm.free(held.pop(which % len(held)))
        lows = sorted((r.low_base, r.low_base + r.low_size) for r in held)
        highs = sorted((r.high_base, r.high_base + r.high_size) for r in held)
        for (_, a1), (b0, _) in zip(lows, lows[1:]):
            assert a1 <= b0
        for (_, a1), (b0, _) in zip(highs, highs[1:]):
            assert a1 <= b0
        assert all(HOST_LOW_GM_SIZE <= s and e <= gpu.aperture_size for s, e in lows)
        assert all(gpu.aperture_size + HOST_HIGH_GM_SIZE <= s and e <= gpu.gm_size for s, e in highs)
        fences_held = [f for r in held for f in r.fences]
        assert len(fences_held) == len(set(fences_held)) and all(HOST_FENCE <= f < fences for f in fences_held)
        assert gm.avail() == (gpu.aperture_size - HOST_LOW_GM_SIZE - sum(r.low_size for r in held),
                              gpu.hidden_size - HOST_HIGH_GM_SIZE - sum(r.high_size for r in held),
                              fences - HOST_FENCE - len(fences_held))
