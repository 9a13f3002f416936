"""A vGPU and its lifecycle (i915/gvt vgpu.c; gvt/vgpu.c).

A :class:`Vgpu` is composed of per-concern parts, each with init / reset / clean: config space
(cfg_space), virtual registers (mmio), GGTT (gtt), page tracking (page_track), PPGTT shadows (ppgtt),
submission state. The
device-global side (GM allocation, ids, the register table, the effects outbox) lives in core.Gvt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import pvinfo, pvmmio
from .aperture import Aperture
from .cfg_space import CfgSpace
from .display import VgpuDisplay
from .effects import AttachVgpu, Effect, InterceptBdf, PgpuMmioWrite
from .engines import ALL_ENGINES, ENGINES, mask_names
from .errors import FailsafeReason
from .execlist import VirtualExeclist
from .figures import VgpuFigures
from .gtt import Ggtt
from .handlers import FENCE_REG_GEN6_LO
from .mmio import MmioState
from .mpt import Mpt
from .opregion import Opregion
from .page_track import PageTrackTable
from . import pv
from .ppgtt import VgpuPpgtt
from .pv import PvState
from .types import GmResource, VgpuType

if TYPE_CHECKING:
    from .core import Gvt

GVT_BDF = (0, 2, 0)  # AcrnGT intercepts 00:02.0 (gvt/cfg_space.c)


@dataclass
class Submission:
    """Per-engine submission state (struct intel_vgpu_submission): the virtual execlists (execlist.py)."""

    execlist_enabled: set[str] = field(default_factory=set)
    resets: dict[str, int] = field(default_factory=dict)  # engine -> how many times it was reset
    execlists: dict[str, VirtualExeclist] = field(default_factory=dict)
    tlb_handle_pending: set[str] = field(default_factory=set)  # engines whose TLB the guest asked to invalidate

    def reset(self, engine_mask: int) -> None:
        """intel_vgpu_reset_submission: re-init the engines' virtual execlists (CSB wp 7, slots empty);
        the caller drops their queued workloads from the scheduler."""
        for name in mask_names(engine_mask):
            self.resets[name] = self.resets.get(name, 0) + 1
            if name in self.execlists:
                self.execlists[name].reset()

    def disable(self) -> None:
        """intel_vgpu_select_submission_ops(ALL, 0): execlists off until the guest re-enables them."""
        self.execlist_enabled.clear()


class Vgpu:
    """One vGPU. Created by :meth:`core.Gvt.create_vgpu`, never directly."""

    def __init__(self, gvt: "Gvt", vgpu_id: int, vm: int, vtype: VgpuType, resource: GmResource,
                 mpt: Mpt, now: float) -> None:
        self.gvt = gvt
        self.id = vgpu_id
        self.vm = vm
        self.type = vtype
        self.resource = resource
        self.mpt = mpt
        self.created_at = now
        self.owner = ""  # who asked for it: "vhm" (a VM's device model) or "ctl" (management)
        self.log = gvt.log
        self.active = False
        self.failsafe = False
        self.failsafe_reason: FailsafeReason | None = None
        self.pv_notified = False
        self.pv = PvState()  # the PV shared page, once the guest sets one up (pv.py)
        self.pvmmio = pvmmio.PvmmioState()  # ACRN's PVMMIO grant and shared page (pvmmio.py)
        self.traps: Counter[str] = Counter()  # trapped accesses of this VM by kind (STATUS, the PV figures)
        self.msis_injected = 0
        # figures `gvtsim top` shows (from STATUS): GPU time per engine and workloads ended, by how
        self.engine_busy_ns: Counter[str] = Counter()
        self.workloads_ended: Counter[str] = Counter()  # completed / failed
        self.cfg = CfgSpace(gvt.gpu, vm, self.emit)
        self.mmio = MmioState(gvt.mmio_snapshot)
        self.gtt = Ggtt(self)
        self.page_track = PageTrackTable(self)
        self.ppgtt = VgpuPpgtt(self)
        self.submission = Submission()
        self.submission.execlists = {e.name: VirtualExeclist(self, e) for e in ENGINES}
        self.aperture = Aperture(self)
        self.cfg.on_memory_decode = self.aperture.set_enabled
        self.cfg.on_bar0_trap = lambda trapped: pvmmio.follow_bar0(self, trapped)
        self.opregion = Opregion(self)
        self.cfg.on_swsci = lambda value: self.opregion.swsci(value, self.cfg.get(0xE8, 4))
        self.cfg.on_asls = self.opregion.base_write
        self.display = VgpuDisplay(self)  # pipes, planes, vblank timers, the virtual monitor (display.py)
        self.figures = VgpuFigures()

    # ------------------------------------------------------------------------------------ plumbing
    def emit(self, effect: Effect) -> None:
        """Queue an effect in the device's outbox."""
        self.gvt.effects.append(effect)

    def count(self, name: str, n: int = 1) -> None:
        self.gvt.counters[name] += n

    # ----------------------------------------------------------------------------------- lifecycle
    def create(self) -> None:
        """intel_gvt_create_vgpu after the resources are allocated: pvinfo, GGTT to scratch, fences
        cleared, then the MPT glue (AcrnGT: intercept BDF 00:02.0; attach)."""
        pvinfo.populate(self)
        self.display.init()
        self.gtt.init()
        self._clear_fences()
        bus, dev, func = GVT_BDF
        self.emit(InterceptBdf(self.vm, bus, dev, func, True))
        self.emit(AttachVgpu(self.vm, self.id, True))

    def destroy(self) -> None:
        """intel_gvt_destroy_vgpu: deactivate, untrap, GGTT slices to scratch, drop PPGTT mms, detach,
        release BDF, clear the fences (the GM itself is returned by the caller)."""
        self.deactivate()
        self.display.clean()
        self.aperture.clean()
        pvmmio.clean(self)
        self.cfg.clean()
        self.gtt.clean()
        self.ppgtt.clean()
        self.page_track.clean()
        self._clear_fences()
        bus, dev, func = GVT_BDF
        self.emit(AttachVgpu(self.vm, self.id, False))
        self.emit(InterceptBdf(self.vm, bus, dev, func, False))

    def frames_lost(self) -> None:
        """vhm restarted: the frames it gave are gone. The PVMMIO shared page was one: the grant goes and
        the guest reads ENABLE_PVMMIO 0 (it negotiates again)."""
        if pvmmio.frames_lost(self):
            self.mmio.write32(pvinfo.ENABLE_PVMMIO, 0)

    def activate(self) -> None:
        """intel_gvt_activate_vgpu: dispatch allowed."""
        self.active = True

    def deactivate(self) -> None:
        """intel_gvt_deactivate_vgpu: no more dispatch (no workload runs yet to wait for)."""
        self.active = False

    def release(self) -> None:
        """intel_gvt_release_vgpu (the VM let the device go): deactivate, d3_entered cleared."""
        self.deactivate()
        self.cfg.d3_entered = False

    def reset(self, dmlr: bool, engine_mask: int = ALL_ENGINES) -> None:
        """intel_gvt_reset_vgpu_locked (gvt/vgpu.c).

        * always: reset the submission of the engines being reset;
        * full GT reset (all engines) or DMLR: execlists off, PPGTT shadows invalidated, MMIO restored
          (DMLR: all of it; GT: [0, 0x44200)), PVINFO repopulated;
        * DMLR only: PPGTT mms destroyed, GGTT to scratch, fences cleared, config space reset (BAR0
          untrapped), failsafe cleared; after a D3hot entry (``d3_entered``, a resume from S3) the PPGTT
          is kept and d3_entered is cleared instead of pv_notified (vgpu.c).
        """
        resetting = ALL_ENGINES if dmlr else engine_mask
        self.count("vgpu_dmlr" if dmlr else "vgpu_gt_reset")
        self.log.info("vgpu_reset", vgpu=self.id, vm=self.vm, dmlr=dmlr, engines=mask_names(resetting))
        self.submission.reset(resetting)
        self.gvt.scheduler.reset_vgpu(self, mask_names(resetting))
        if engine_mask != ALL_ENGINES and not dmlr:
            return
        self.submission.disable()
        d3 = self.cfg.d3_entered
        if not dmlr or not d3:
            self.ppgtt.reset()  # a full GT reset, or a DMLR not resuming from D3, invalidates shadows
        if dmlr:
            pv.reset(self)
            pvmmio.reset(self)
            self.aperture.clean()
            if not d3:
                self.ppgtt.clean()
            self.opregion.reset()
            self.gtt.reset()
            self._clear_fences()
        self.mmio.reset(dmlr)
        pvinfo.populate(self)
        if dmlr:
            self.display.reset()  # the display vregs were restored too: timers off, monitor announced again
            self.cfg.reset()
            self.failsafe = False
            self.failsafe_reason = None
            if d3:
                self.cfg.d3_entered = False
            else:
                self.pv_notified = False

    def enter_failsafe(self, reason: FailsafeReason, why: str) -> None:
        """enter_failsafe_mode: MMIO and GGTT become plain memory for this vGPU only, until a DMLR."""
        if self.failsafe:
            return
        self.failsafe = True
        self.failsafe_reason = reason
        self.count(f"failsafe_{reason.name.lower()}")
        self.log.warning("vgpu_failsafe", vgpu=self.id, vm=self.vm, reason=reason.name, why=why)

    def resync_fences(self) -> None:
        """Program the host fences the vGPU owns from its fence vregs again (pgpu restarted: a new GPU's
        fence registers are zero; i915 restores fences after a GPU reset, i915_gem_restore_fences)."""
        for i, host in enumerate(self.resource.fences):
            self.emit(PgpuMmioWrite(FENCE_REG_GEN6_LO + 8 * host, 8, self.mmio.read(FENCE_REG_GEN6_LO + 8 * i, 8)))

    def _clear_fences(self) -> None:
        """_clear_vgpu_fence: zero the host fences the vGPU owns (and its fence vregs)."""
        for i, host in enumerate(self.resource.fences):
            self.mmio.write(FENCE_REG_GEN6_LO + 8 * i, 0, 8)
            self.emit(PgpuMmioWrite(FENCE_REG_GEN6_LO + 8 * host, 8, 0))

    # ------------------------------------------------------------------------------------- views
    def info(self) -> dict[str, Any]:
        """The management view (sysfs vmN/vgpu_id and the type's sizes)."""
        return {"vgpu_id": self.id, "vm": self.vm, "type": self.type.name, "low_gm_mb": self.type.low_gm_mb,
                "high_gm_mb": self.type.high_gm_mb, "fence": self.type.fence, "weight": self.type.weight,
                "active": self.active, "failsafe": self.failsafe}
