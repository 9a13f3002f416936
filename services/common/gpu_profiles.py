"""GPU profiles: the physical GPU a host stack simulates, and how many vGPUs of which types it offers.

``real`` is the default and is what the hardware and the Linux GVT-g code allow: a SKL/KBL-class GPU
(device 0x1912, 4 GiB of GM), the four vGPU types of ``intel_vgpu_configs[]`` (GVTg_V5_8/4/2/1,
drivers/gpu/drm/i915/gvt/vgpu.c) and at most 7 vGPUs (``GVT_MAX_VGPU`` 8 in gvt.h, ids 1..7 from
``idr_alloc(&gvt->vgpu_idr, vgpu, IDLE_VGPU_IDR + 1, GVT_MAX_VGPU)``).

Every other profile is a *simulation* departure, for control-plane scale tests, and lists what it changes
(``departures``; docs/GPU_PROFILES.md says the same for users). A profile is chosen per host stack: pgpu and
gvt both take ``--gpu-profile`` (``GVTSIM_GPU_PROFILE``); pgpu reports it in STATUS ``info["gpu"]["profile"]``
and gvt follows what the GPU it drives reports.

Both pgpu and gvt read this table (it describes the hardware they share), so it lives in services/common.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: GVT_MAX_VGPU in drivers/gpu/drm/i915/gvt/gvt.h: ids 1..7 (id 0 is the idle vGPU)
REAL_MAX_VGPU = 7


@dataclass(frozen=True)
class ExtraType:
    """A vGPU type a simulated profile adds to the four real ones (GM sizes in MB, like AcrnGT's
    ``"vmid,low_gm_MB,high_gm_MB,fence"`` create spec)."""

    name: str
    low_gm_mb: int
    high_gm_mb: int
    fence: int
    weight: int = 2  # AcrnGT copies types[0] (GVTg_V5_8, weight 2) and overrides the sizes


@dataclass(frozen=True)
class GpuProfile:
    """A simulated GPU: its sizes (pgpu), its vGPU limit and extra types (gvt), and what departs from
    hardware.

    The GPU's sizes stay pgpu's (``--gm-mb``, ``--aperture-mb``): the dense type fits the compose file's
    1024 MB aperture 512 times (896 MB after the 128 MB the host keeps; the id limit binds).

    Args:
        max_vgpu: vGPU ids 1..max_vgpu.
        default_type: the type a load puts on this profile unless told otherwise.
        mem_size_mb: machine memory a native host stack of this profile is given (sparse: costs what is
            touched), enough for ``max_vgpu`` VMs of the guest's default 16 MB of RAM and gvt's pools.
    """

    name: str
    summary: str
    max_vgpu: int
    default_type: str
    mem_size_mb: int | None = None
    extra_types: tuple[ExtraType, ...] = ()
    departures: tuple[str, ...] = field(default_factory=tuple)

    @property
    def simulated(self) -> bool:
        """True when the profile departs from what the hardware allows."""
        return bool(self.departures)

    def stack_env(self) -> dict[str, str]:
        """Environment a native host stack of this profile runs with (added over the compose file's)."""
        env = {"GVTSIM_GPU_PROFILE": self.name}
        if self.mem_size_mb:
            env["GVTSIM_MEM_SIZE_MB"] = str(self.mem_size_mb)
        return env

    def info(self) -> dict[str, object]:
        """What STATUS and ``gvtsim ctl`` show about the profile."""
        return {"name": self.name, "max_vgpu": self.max_vgpu, "default_type": self.default_type,
                "simulated": self.simulated, "departures": list(self.departures)}


REAL = GpuProfile(
    name="real", summary="SKL/KBL-class GPU as the hardware and Linux GVT-g allow: 4 real types, at most 7 vGPUs",
    max_vgpu=REAL_MAX_VGPU, default_type="GVTg_V5_8")

#: The dense type: 1 MB of aperture and 2 MB of hidden GM. The guest driver's objects (4 rings of 16 KiB,
#: 4 contexts of 8 KiB, a few 4 KiB surfaces and batches per engine) need well under 1 MB of each.
DENSE_TYPE = ExtraType("AcrnGT_dense_1_2", low_gm_mb=1, high_gm_mb=2, fence=0)

DENSE = GpuProfile(
    name="dense",
    summary="simulated: 512 small vGPUs (AcrnGT_dense_1_2: 1 MB aperture, 2 MB hidden GM, no fence) per host",
    max_vgpu=512, default_type=DENSE_TYPE.name, mem_size_mb=16384,
    extra_types=(DENSE_TYPE,),
    departures=(
        "vGPU limit 512 instead of GVT_MAX_VGPU's 7 (ids 1..512)",
        "an extra vGPU type AcrnGT_dense_1_2 (low_gm 1 MB, high_gm 2 MB): an AcrnGT-style custom spec with "
        "sizes far below the smallest real type (GVTg_V5_8: 64 MB + 384 MB)",
        "that type has no fence register (AcrnGT refuses fence 0; a GPU has 32 fences, 4 kept by the host, "
        "so hundreds of vGPUs cannot each own one): PVINFO reports fence_num 0",
        "gvt's shadow contexts of vGPU ids above 63 sit in the host's hidden GM above the shadow batch "
        "window (the real layout only has room for 63 vGPUs' shadow contexts below it)",
        "gvt's shadow frame pool is sized for 512 vGPUs",
    ))

PROFILES: dict[str, GpuProfile] = {p.name: p for p in (REAL, DENSE)}


def get_profile(name: str) -> GpuProfile:
    """The profile called ``name``.

    Raises:
        ValueError: no such profile (the message lists the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown GPU profile {name!r}; known: {', '.join(PROFILES)}") from None
