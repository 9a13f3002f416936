"""GPU profiles: the real one stays the hardware's (4 types, 7 vGPUs); the simulated dense profile offers
512 small fenceless vGPUs, and everything a destroyed vGPU held comes back."""

from __future__ import annotations

import pytest
from test_gvt_fixtures import create, make_gvt, program_bar0, rd

from gvtsim.protocol.errors import ErrorCode
from gvtsim.services.common.gpu_profiles import DENSE, PROFILES, REAL, get_profile
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.engines import PHYSICAL_ENGINES
from gvtsim.services.gvt.shadow import SHADOW_BB_GM_OFFSET, SHADOW_BB_GM_PAGES, shadow_context_gm
from gvtsim.services.gvt.service import SHADOW_POOL_FRAMES, PPGTT_POOL_FRAMES, pool_frames
from gvtsim.services.gvt.types import HOST_HIGH_GM_SIZE, TYPES, PhysicalGpu

MB = 1 << 20


def test_the_default_profile_is_the_real_gpu() -> None:
    gvt = Gvt()
    assert gvt.profile is REAL and not REAL.simulated and REAL.stack_env() == {"GVTSIM_GPU_PROFILE": "real"}
    assert [t.name for t in gvt.type_table] == ["GVTg_V5_8", "GVTg_V5_4", "GVTg_V5_2", "GVTg_V5_1"]
    assert gvt.max_vgpu == 7
    assert pool_frames(gvt.max_vgpu) == SHADOW_POOL_FRAMES + PPGTT_POOL_FRAMES  # unchanged for the real GPU
    assert gvt.status_info()["profile"] == {"name": "real", "max_vgpu": 7, "default_type": "GVTg_V5_8",
                                            "simulated": False, "departures": []}
    r = gvt.create_vgpu(1, "AcrnGT_dense_1_2", now=0.0)  # the dense type does not exist on real hardware
    assert isinstance(r, Refusal) and r.code == ErrorCode.BAD_REQUEST


def test_every_simulated_profile_names_its_departures() -> None:
    assert set(PROFILES) == {"real", "dense"}
    for p in PROFILES.values():
        assert p.simulated == (p is not REAL)
        assert p.default_type in {t.name for t in TYPES} | {x.name for x in p.extra_types}
    assert DENSE.stack_env()["GVTSIM_GPU_PROFILE"] == "dense"
    with pytest.raises(ValueError, match="known: real, dense"):
        get_profile("huge")


def test_pgpu_info_carries_the_profile_and_gvt_follows_it() -> None:
    info = {"device": 0x1912, "gm_mb": 4096, "aperture_mb": 1024, "fences": 32, "msi_cap": 0xAC, "profile": "dense"}
    gpu = PhysicalGpu.from_info(info)
    assert gpu.profile == "dense" and gpu.gpu_profile is DENSE
    with pytest.raises(ValueError, match="profile"):
        PhysicalGpu.from_info({**info, "profile": "huge"})
    gvt = Gvt()
    assert gvt.set_physical_gpu(gpu) and gvt.max_vgpu == 512 and gvt.profile is DENSE
    assert PhysicalGpu.from_info({k: v for k, v in info.items() if k != "profile"}).profile == "real"


def test_dense_profile_holds_512_fenceless_vgpus_and_gives_everything_back() -> None:
    gvt = make_gvt(gpu=PhysicalGpu(aperture_mb=1024, profile="dense"))  # the compose file's aperture
    avail0 = {s.type.name: s.avail for s in gvt.types()}
    assert avail0["AcrnGT_dense_1_2"] == 512  # (1024 - 128) MB of aperture, 1 MB each: the 512 ids bind
    gm0 = gvt.gm.avail()
    vgpus = [create(gvt, vm, "AcrnGT_dense_1_2") for vm in range(1, 513)]
    assert sorted(v.id for v in vgpus) == list(range(1, 513))
    assert all(v.resource.fences == () for v in vgpus)
    r = gvt.create_vgpu(600, "AcrnGT_dense_1_2", now=0.0)
    assert isinstance(r, Refusal) and r.code == ErrorCode.NO_SPACE
    assert {s.type.name: s.avail for s in gvt.types()}["GVTg_V5_8"] == 0  # no id left for any type
    program_bar0(gvt, vgpus[-1])
    assert rd(gvt, vgpus[-1], pv.FENCE_NUM) == 0 and rd(gvt, vgpus[-1], pv.VGT_ID) == 512
    assert rd(gvt, vgpus[-1], pv.MAPPABLE_SIZE) == 1 * MB and rd(gvt, vgpus[-1], pv.NONMAPPABLE_SIZE) == 2 * MB
    for vm in range(1, 513):
        assert gvt.destroy_vgpu(vm) is None
    assert gvt.gm.empty and gvt.gm.avail() == gm0 and not gvt.vgpus and not gvt.by_vm
    assert {s.type.name: s.avail for s in gvt.types()} == avail0


def test_shadow_contexts_of_every_dense_vgpu_fit_the_host_reserve_without_overlap() -> None:
    aperture = 1024 * MB
    windows = sorted(shadow_context_gm(aperture, vid, e) for vid in range(1, DENSE.max_vgpu + 1)
                     for e in range(len(PHYSICAL_ENGINES)))
    assert all(b - a >= 64 << 10 for a, b in zip(windows, windows[1:]))  # 64 KiB each, disjoint
    bb = (aperture + SHADOW_BB_GM_OFFSET, aperture + SHADOW_BB_GM_OFFSET + (SHADOW_BB_GM_PAGES << 12))
    assert not [w for w in windows if w + (64 << 10) > bb[0] and w < bb[1]]  # clear of the batch window
    assert windows[-1] + (64 << 10) <= aperture + HOST_HIGH_GM_SIZE  # inside the host's 384 MB
    # the real profile's ids keep their old place (the aperture end + 64 KiB per slot)
    assert shadow_context_gm(aperture, 7, 3) == aperture + (7 * 4 + 3) * (64 << 10)
