"""vGPU types, GM partitioning and fences (i915/gvt vgpu.c, aperture_gm.c; gvt/gtt.c, gvt/aperture_gm.c).

The physical GM (graphics memory) is split as on real hardware: the aperture (low GM, CPU-mappable)
is ``[0, aperture)``, the hidden range (high GM) is ``[aperture, total)``. The host keeps 128 MB of low GM
(the bottom of the aperture), 384 MB of high GM (the bottom of the hidden range) and 4 fences. vGPUs get
low GM bottom-up inside the aperture (PIN_MAPPABLE) and high GM top-down in the hidden range (PIN_HIGH).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ...protocol.errors import ErrorCode
from ..common.gpu_profiles import PROFILES, REAL_MAX_VGPU, GpuProfile, get_profile
from .errors import GvtError

MB = 1 << 20
GTT_PAGE_SIZE = 1 << 12

# gvt/aperture_gm.c, gvt/vgpu.c: host reserve and vGPU limits.
HOST_LOW_GM_SIZE = 128 * MB
HOST_HIGH_GM_SIZE = 384 * MB
HOST_FENCE = 4
GVT_MAX_VGPU = REAL_MAX_VGPU + 1  # idr range [1, 8): ids 1..7, id 0 is the idle vGPU (the real profile)
VGPU_MAX_WEIGHT = 16


@dataclass(frozen=True)
class PhysicalGpu:
    """What gvt knows of the physical GPU: identity and sizes (pgpu's STATUS ``info["gpu"]``).

    The defaults describe a SKL GT2 (0x1912 rev 6) with 4 GB GM, a 512 MB aperture, MSI capability at 0xAC
    (gvt/gtt.c, gvt/aperture_gm.c: the 2016 GVT hard-coded SKL 0xAC) and 32 fences.
    """

    vendor: int = 0x8086
    device: int = 0x1912
    revision: int = 0x06
    gm_mb: int = 4096
    aperture_mb: int = 1024
    msi_cap: int = 0xAC
    fences: int = 32
    aperture_base: int = 0xC000_0000  # host BAR2 physical address (the vGPU's BAR2 is preset to it)
    profile: str = "real"  # services/common/gpu_profiles.py: the vGPU limit and extra types

    @property
    def gpu_profile(self) -> GpuProfile:
        return get_profile(self.profile)

    @property
    def gm_size(self) -> int:
        return self.gm_mb * MB

    @property
    def aperture_size(self) -> int:
        return self.aperture_mb * MB

    @property
    def hidden_size(self) -> int:
        return (self.gm_mb - self.aperture_mb) * MB

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "PhysicalGpu":
        """Build from pgpu's ``info["gpu"]`` dict; unknown keys are ignored, bad values refused.

        Raises:
            ValueError: a value is missing its type or breaks the host-reserve arithmetic.
        """
        base = cls()
        vals: dict[str, int] = {}
        for name in ("vendor", "device", "revision", "gm_mb", "aperture_mb", "msi_cap", "fences", "aperture_base"):
            v = info.get(name, getattr(base, name))
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"gpu.{name} must be a non-negative integer, got {v!r}")
            vals[name] = v
        profile = info.get("profile", base.profile)
        if profile not in PROFILES:
            raise ValueError(f"gpu.profile {profile!r} is not one of {', '.join(PROFILES)}")
        gpu = cls(**vals, profile=profile)
        if gpu.aperture_mb & (gpu.aperture_mb - 1):
            # BAR2 decodes the aperture and a BAR's size is a power of two (PCI Local Bus spec 6.2.5.1):
            # the guest sizes BAR2 and takes that as its mappable end (i915_ggtt_init_hw)
            raise ValueError(f"aperture {gpu.aperture_mb} MB is not a power of two (BAR2 could not decode it)")
        if not (HOST_LOW_GM_SIZE < gpu.aperture_size < gpu.gm_size <= 1 << 32):
            raise ValueError(f"aperture {gpu.aperture_mb} MB / GM {gpu.gm_mb} MB do not fit the host reserve")
        if gpu.hidden_size <= HOST_HIGH_GM_SIZE or gpu.fences <= HOST_FENCE or gpu.fences > 32:
            raise ValueError("hidden GM or fences do not exceed the host reserve")
        if not (0x40 <= gpu.msi_cap <= 0xF4 and gpu.msi_cap % 4 == 0):
            raise ValueError(f"msi_cap {gpu.msi_cap:#x} outside the standard capability area")
        return gpu


@dataclass(frozen=True)
class VgpuType:
    """A vGPU type: GM sizes in MB, fences, scheduling weight. ``custom`` marks an AcrnGT spec."""

    name: str
    low_gm_mb: int
    high_gm_mb: int
    fence: int
    weight: int
    resolution: str = ""
    custom: bool = False

    @property
    def description(self) -> str:
        return (f"low_gm_size: {self.low_gm_mb}MB, high_gm_size: {self.high_gm_mb}MB, fence: {self.fence}, "
                f"weight: {self.weight}" + (f", resolution: {self.resolution}" if self.resolution else ""))


#: intel_vgpu_configs[] (gvt/gtt.c, gvt/aperture_gm.c): suffix, low GM MB, high GM MB, fences, weight (16/n),
#: EDID resolution.
VGPU_CONFIGS: tuple[tuple[str, int, int, int, int, str], ...] = (
    ("8", 64, 384, 4, 2, "1024x768"),
    ("4", 128, 512, 4, 4, "1920x1200"),
    ("2", 256, 1024, 4, 8, "1920x1200"),
    ("1", 512, 2048, 4, 16, "1920x1200"),
)


def type_table(graphics_ver: int = 9) -> tuple[VgpuType, ...]:
    """The type table: ``GVTg_V4_<n>`` on gen8 (BDW), ``GVTg_V5_<n>`` on gen9+."""
    v = 4 if graphics_ver == 8 else 5
    out = []
    for suffix, low, high, fence, weight, res in VGPU_CONFIGS:
        if not 1 <= weight <= VGPU_MAX_WEIGHT:
            raise ValueError(f"weight {weight} outside 1..{VGPU_MAX_WEIGHT}")
        out.append(VgpuType(f"GVTg_V{v}_{suffix}", low, high, fence, weight, res))
    return tuple(out)


TYPES: tuple[VgpuType, ...] = type_table()
TYPES_BY_NAME: dict[str, VgpuType] = {t.name: t for t in TYPES}


def profile_types(profile: GpuProfile) -> tuple[VgpuType, ...]:
    """The real types, then the profile's extra (custom, simulated) types."""
    base = TYPES[0]  # AcrnGT copies types[0] and overrides the sizes
    return TYPES + tuple(VgpuType(x.name, x.low_gm_mb, x.high_gm_mb, x.fence, x.weight, base.resolution, custom=True)
                         for x in profile.extra_types)

_INT = re.compile(r"-?[0-9]+")


def parse_spec(spec: str, vm: int | None = None,
               types: dict[str, VgpuType] | None = None) -> tuple[int | None, VgpuType]:
    """Resolve a create spec: a type name, or AcrnGT's ``"vmid,low_gm_MB,high_gm_MB,fence"`` (also
    ``"low_gm_MB,high_gm_MB,fence"`` when the VM is named elsewhere).

    AcrnGT (gvt/gtt.c, gvt/aperture_gm.c, acrngt_sysfs_instance_manage) copies ``types[0]`` (its weight) and
    overrides the sizes; it accepts ``vm_id > 0``, ``aperture > 0``, ``aperture <= aperture + high``, ``fence > 0``.
    ``types`` is the type table by name (the GPU profile's; the real four by default).
    Returns ``(vmid named by the spec or None, type)``.

    Raises:
        GvtError: bad_request for anything else, or a vmid that disagrees with ``vm``.
    """
    spec = spec.strip()
    by_name = TYPES_BY_NAME if types is None else types
    if spec in by_name:
        return None, by_name[spec]
    parts = spec.split(",")
    if len(parts) not in (3, 4) or not all(_INT.fullmatch(p.strip()) for p in parts):
        raise GvtError(ErrorCode.BAD_REQUEST, f"spec {spec!r} is neither a type name ({', '.join(by_name)}) "
                                              "nor 'vmid,low_gm_MB,high_gm_MB,fence'")
    nums = [int(p) for p in parts]
    spec_vm = nums.pop(0) if len(nums) == 4 else None
    low, high, fence = nums
    if spec_vm is not None:
        if spec_vm <= 0:
            raise GvtError(ErrorCode.BAD_REQUEST, f"vmid {spec_vm} must be > 0 (AcrnGT); destroy with VGPU_DESTROY")
        if vm is not None and vm != spec_vm:
            raise GvtError(ErrorCode.BAD_REQUEST, f"spec names vm {spec_vm} but the request is for vm {vm}")
    if low <= 0 or high < 0 or fence <= 0:
        raise GvtError(ErrorCode.BAD_REQUEST,
                       f"sizes must be low_gm > 0, high_gm >= 0, fence > 0 (got {low},{high},{fence})")
    if high == 0:  # i915_gem_gtt_insert of a 0-byte node is a BUG_ON in i915: refuse it cleanly
        raise GvtError(ErrorCode.BAD_REQUEST, "high_gm_MB must be > 0")
    if low > 4096 or high > 4096 or fence > 32:
        raise GvtError(ErrorCode.BAD_REQUEST, f"sizes beyond any GPU: {low} MB low, {high} MB high, {fence} fences")
    base = TYPES[0]
    t = VgpuType(f"acrngt_{low}_{high}_{fence}", low, high, fence, base.weight, base.resolution, custom=True)
    return spec_vm, t


@dataclass(frozen=True)
class GmResource:
    """What one vGPU holds: its aperture (low GM) and hidden (high GM) slices, byte addresses, and the
    host fence registers it owns (vGPU fence i -> host fence ``fences[i]``)."""

    low_base: int
    low_size: int
    high_base: int
    high_size: int
    fences: tuple[int, ...]

    def contains(self, gma: int, size: int = 1) -> bool:
        """gvt/gtt.c, gvt/aperture_gm.c: validation = address and address+size-1 inside the aperture or hidden slice."""
        last = gma + size - 1
        return ((self.low_base <= gma and last < self.low_base + self.low_size)
                or (self.high_base <= gma and last < self.high_base + self.high_size))

    def ggtt_ranges(self) -> tuple[tuple[int, int], ...]:
        """(first GGTT index, entry count) of both slices."""
        return ((self.low_base >> 12, self.low_size >> 12), (self.high_base >> 12, self.high_size >> 12))


def _find_gap(start: int, end: int, used: list[tuple[int, int]], size: int, top_down: bool) -> int | None:
    """First-fit gap of ``size`` bytes in [start, end) given sorted used (base, size) intervals."""
    if top_down:
        cursor = end
        for base, n in reversed(used):
            if cursor - (base + n) >= size:
                return cursor - size
            cursor = min(cursor, base)
        return cursor - size if cursor - start >= size else None
    cursor = start
    for base, n in used:
        if base - cursor >= size:
            return cursor
        cursor = max(cursor, base + n)
    return cursor if end - cursor >= size else None


@dataclass
class GmPartition:
    """The device-global GM and fence allocator (gvt->gm, gvt->fence)."""

    gpu: PhysicalGpu
    _low: list[tuple[int, int]] = field(default_factory=list)
    _high: list[tuple[int, int]] = field(default_factory=list)
    _fences_used: set[int] = field(default_factory=set)

    @property
    def low_region(self) -> tuple[int, int]:
        """Where vGPU low GM may go: the aperture above the host's 128 MB."""
        return HOST_LOW_GM_SIZE, self.gpu.aperture_size

    @property
    def high_region(self) -> tuple[int, int]:
        """Where vGPU high GM may go: the hidden range above the host's 384 MB."""
        return self.gpu.aperture_size + HOST_HIGH_GM_SIZE, self.gpu.gm_size

    def avail(self) -> tuple[int, int, int]:
        """(low GM bytes, high GM bytes, fences) available: total - host reserve - allocated."""
        low = self.gpu.aperture_size - HOST_LOW_GM_SIZE - sum(n for _, n in self._low)
        high = self.gpu.hidden_size - HOST_HIGH_GM_SIZE - sum(n for _, n in self._high)
        fences = self.gpu.fences - HOST_FENCE - len(self._fences_used)
        return low, high, fences

    def avail_instances(self, t: VgpuType) -> int:
        """intel_gvt_update_vgpu_types: min(low_avail/low_gm, high_avail/high_gm, fence_avail/fence)."""
        low, high, fences = self.avail()
        by_fence = fences // t.fence if t.fence else low  # a fenceless (dense profile) type needs none
        return max(0, min(low // (t.low_gm_mb * MB), high // (t.high_gm_mb * MB), by_fence))

    def registered(self, t: VgpuType) -> bool:
        """intel_gvt_init_vgpu_types registers a type only if (aperture - 128 MB) / low_gm >= 1."""
        return (self.gpu.aperture_size - HOST_LOW_GM_SIZE) // (t.low_gm_mb * MB) >= 1

    def alloc(self, t: VgpuType) -> GmResource:
        """alloc_resource + alloc_gm + alloc_vgpu_fence. Nothing is taken when it fails.

        Raises:
            GvtError: no_space naming the exhausted resource.
        """
        low_sz, high_sz = t.low_gm_mb * MB, t.high_gm_mb * MB
        low_av, high_av, fence_av = self.avail()
        for what, want, have, unit in (("low GM (aperture)", low_sz, low_av, MB), ("high GM", high_sz, high_av, MB),
                                       ("fences", t.fence, fence_av, 1)):
            if want > have:
                u = " MB" if unit == MB else ""
                raise GvtError(ErrorCode.NO_SPACE, f"not enough {what}: {want // unit}{u} requested, "
                                                   f"{max(have, 0) // unit}{u} available")
        low_base = _find_gap(*self.low_region, self._low, low_sz, top_down=False)
        high_base = _find_gap(*self.high_region, self._high, high_sz, top_down=True)
        if low_base is None or high_base is None:
            raise GvtError(ErrorCode.NO_SPACE, "GM is fragmented: no contiguous slice of the requested size")
        free_fences = [i for i in range(HOST_FENCE, self.gpu.fences) if i not in self._fences_used][:t.fence]
        self._low = sorted(self._low + [(low_base, low_sz)])
        self._high = sorted(self._high + [(high_base, high_sz)])
        self._fences_used.update(free_fences)
        return GmResource(low_base, low_sz, high_base, high_sz, tuple(free_fences))

    def claim(self, res: GmResource) -> bool:
        """Take exactly these slices and fences (a restarted gvt re-opening a vGPU's saved state,
        services/gvt/state.py). False, changing nothing, if they leave their region or overlap a holder."""
        def fits(base: int, size: int, region: tuple[int, int], used: list[tuple[int, int]]) -> bool:
            lo, hi = region
            return lo <= base and base + size <= hi and all(base + size <= b or b + n <= base for b, n in used)

        if not (fits(res.low_base, res.low_size, self.low_region, self._low)
                and fits(res.high_base, res.high_size, self.high_region, self._high)):
            return False
        if any(f in self._fences_used or not HOST_FENCE <= f < self.gpu.fences for f in res.fences):
            return False
        self._low = sorted(self._low + [(res.low_base, res.low_size)])
        self._high = sorted(self._high + [(res.high_base, res.high_size)])
        self._fences_used.update(res.fences)
        return True

    def free(self, res: GmResource) -> None:
        """free_resource: give the slices and fences back (idempotent)."""
        self._low = [iv for iv in self._low if iv != (res.low_base, res.low_size)]
        self._high = [iv for iv in self._high if iv != (res.high_base, res.high_size)]
        self._fences_used.difference_update(res.fences)

    @property
    def empty(self) -> bool:
        return not (self._low or self._high or self._fences_used)
