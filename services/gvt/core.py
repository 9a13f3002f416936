"""The GVT device model core: device-global state and the intel_gvt_ops-like entry points.

Sans-I/O and synchronous: the shell calls an entry point, then drains :attr:`Gvt.effects` and sends
them in order, and drains :attr:`Gvt.log` (events.py) and logs what it holds. No entry point lets an
exception escape: a management request that cannot be met returns a :class:`Refusal`; a bad guest
access is counted, logged, completed (reads of a refused access return all ones, as an access nobody
claims does under ACRN) and puts that vGPU alone in failsafe (ACRN gvt/acrngt.c: AcrnGT enters
failsafe on any emulation error).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...protocol import messages as m
from ...protocol.constants import IoreqDir, IoreqType
from ...protocol.errors import ErrorCode, Refusal
from . import display, dmabuf, interrupt, mmio, pm, pvinfo, pvmmio
from .effects import PGPU_STATE_EFFECTS, AttachVgpu, Effect, InterceptBdf, PageTrack, SetTrapArea
from .engines import ALL_ENGINES
from .errors import EmulationError, FailsafeReason, GvtError
from .events import EventLog
from ...hardware import cmd_table
from .cmd_parser import cmd_access_regs
from .execlist import execlist_regs
from .handlers import MmioTable, default_blocks, default_regs, real_regs
from .scheduler import Scheduler
from .shadow import ShadowResources
from .mpt import Mpt, NullMpt
from .ppgtt import PpgttGlobal
from .types import GmPartition, PhysicalGpu, VgpuType, parse_spec, profile_types
from .vgpu import GVT_BDF, Vgpu

MptFactory = Callable[[int, int, int], Mpt]  # (vm, ept_root, ram_mb) -> Mpt


@dataclass(frozen=True)
class TypeStatus:
    """A vGPU type with its available instances. ``registered`` is i915's rule for listing the type
    at all ((aperture - 128 MB) / low_gm >= 1)."""

    type: VgpuType
    avail: int
    registered: bool


def _null_mpt(vm: int, ept_root: int, ram_mb: int) -> Mpt:
    return NullMpt()


def _trap_kind(kind: int, read: bool, offset: int) -> str:
    """The kind of a trapped access (``offset``: into BAR0, for MMIO), for the per-VM trap counters:
    pci_cfg, wp, g2v_notify, ggtt, mmio_read, mmio_write."""
    if kind == _PCI:
        return "pci_cfg"
    if kind == _WP:
        return "wp"
    if offset >= mmio.GTT_START:
        return "ggtt"
    if read:
        return "mmio_read"
    return "g2v_notify" if offset == pvinfo.G2V_NOTIFY else "mmio_write"


#: ioreq kinds and the read direction as ints: the trap path compares them per request (no Enum __eq__)
_PCI, _WP, _MMIO, _READ = int(IoreqType.PCI), int(IoreqType.WP), int(IoreqType.MMIO), int(IoreqDir.READ)


class Gvt:
    """The device (struct intel_gvt): vGPUs, GM partition, register table, effects outbox.

    Args:
        gpu: the physical GPU's identity and sizes (pgpu STATUS; defaults until it answers).
        mpt_factory: builds the MPT adapter of a VM from VGPU_CREATE's ept_root and ram_mb.
        scratch_mfn: machine frame of the scratch page (the shell gets one from vhm).
        enable_out_of_sync: PPGTT out-of-sync pages (gvt/gtt.c, gvt/page_track.c; off by default, as upstream).
        enable_pvmmio: the host's i915.enable_pvmmio: the PVMMIO levels a guest may be granted (pvmmio.py;
            limited to those gvtsim implements, ACRN's default PVMMIO_ELSP_SUBMIT).
    """

    def __init__(self, gpu: PhysicalGpu | None = None, *, mpt_factory: MptFactory | None = None,
                 counters: Counter[str] | None = None, scratch_mfn: int = 0,
                 enable_out_of_sync: bool = False,
                 enable_pvmmio: int = int(pvmmio.DEFAULT_HOST_LEVELS)) -> None:
        self.gpu = gpu or PhysicalGpu()
        self.enable_pvmmio = pvmmio.host_levels(enable_pvmmio)
        self.mpt_factory = mpt_factory or _null_mpt
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.log = EventLog()  # events.py: what the core has to say, drained and logged by the shell
        self.scratch_mfn = scratch_mfn
        self.effects: list[Effect] = []
        # the real SKL/KBL table, with gvtsim's rows with behaviour laid over it (handlers.py), the display's
        # rows (pipes, planes, DP AUX, GMBUS: display.py) among them
        self.table = MmioTable(real_regs())
        self.table.overlay(default_regs() + execlist_regs() + cmd_access_regs() + display.display_regs()
                           + pm.pm_regs(), default_blocks())
        self.shadow = ShadowResources(self)  # shadow.py: the frames gvt owns, its host-GM mappings
        self.scheduler = Scheduler(self)
        self.ppgtt = PpgttGlobal(self, enable_out_of_sync)
        self.mmio_snapshot = self.table.snapshot(mmio.MMIO_SIZE)
        self.gm = GmPartition(self.gpu)
        self._set_profile()
        self.vgpus: dict[int, Vgpu] = {}  # vgpu id -> vgpu
        #: the vGPUs with a pipe's vblank timer running (display.py keeps it in step with their timers)
        self.display_active: dict[int, Vgpu] = {}
        self.by_vm: dict[int, Vgpu] = {}
        # (vm, vcpu) -> (request, value) of the last ioreq completed: vhm sends a request again after a
        # reconnect when it cannot know whether the completion arrived; answering the very same request
        # (same vm, vcpu, seq and fields: a guest never reuses a seq) from here keeps it exactly-once
        self.last_done: dict[tuple[int, int], tuple[m.Ioreq, int]] = {}
        # vGPUs an ioreq may have changed since the shell last took them (for its state journal). A
        # read that changes nothing (mmio.read_is_pure) is left out: emulated again after a restart it
        # returns the same value, so it need not be recorded before it is answered.
        self.touched: set[int] = set()

    @property
    def ggtt_mmio_size(self) -> int:
        return mmio.ggtt_mmio_size(self.gpu.gm_size)

    # --------------------------------------------------------------------------- device-global
    def drain_effects(self) -> list[Effect]:
        """Take every queued effect (in order)."""
        out, self.effects = self.effects, []
        return out

    def set_physical_gpu(self, gpu: PhysicalGpu) -> bool:
        """Adopt pgpu's identity and sizes. Only while no vGPU exists (their slices were carved from the
        old sizes); returns whether it was adopted."""
        if gpu == self.gpu:
            return True
        if self.vgpus:
            self.counters["pgpu_info_ignored"] += 1
            self.log.warning("pgpu_info_ignored", reason="vGPUs exist", gpu=gpu.__dict__)
            return False
        if gpu.profile != self.gpu.profile:
            self.log.warning("gpu_profile_changed", old=self.gpu.profile, new=gpu.profile)
        self.gpu = gpu
        self.gm = GmPartition(gpu)
        self._set_profile()
        return True

    def _set_profile(self) -> None:
        """The vGPU limit and type table of the GPU's profile (services/common/gpu_profiles.py)."""
        self.profile = self.gpu.gpu_profile
        self.max_vgpu = self.profile.max_vgpu
        self.type_table = profile_types(self.profile)
        self.types_by_name = {t.name: t for t in self.type_table}

    def set_scratch_mfn(self, mfn: int) -> None:
        """Use a new scratch page and rewrite every vGPU's host GGTT against it."""
        if mfn == self.scratch_mfn:
            return
        self.scratch_mfn = mfn
        self.resync_host_ggtt()

    def resync_host_ggtt(self) -> None:
        """Queue the physical GGTT content and fences of every vGPU again (pgpu restarted or scratch changed)."""
        self.shadow.resync_host_ggtt()
        for v in sorted(self.vgpus.values(), key=lambda v: v.id):
            try:
                v.gtt.resync_host()
                v.resync_fences()
            except Exception as err:
                self._internal("ggtt_resync", err, vgpu=v.id)

    # ---------------------------------------------------------------------------- management
    def types(self) -> list[TypeStatus]:
        """The type table with available instances (intel_gvt_update_vgpu_types)."""
        free_ids = self.max_vgpu - len(self.vgpus)  # instances are bounded by free vGPU ids as well
        return [TypeStatus(t, min(free_ids, self.gm.avail_instances(t)), self.gm.registered(t))
                for t in self.type_table]

    def vgpu_for_vm(self, vm: int) -> Vgpu | None:
        return self.by_vm.get(vm)

    def create_vgpu(self, vm: int, spec: str, *, ept_root: int = 0, ram_mb: int = 0, owner: str = "",
                    now: float) -> Vgpu | Refusal:
        """Create and activate the VM's vGPU from a type name or an AcrnGT spec (gvt/gtt.c, gvt/aperture_gm.c,
        gvt/vgpu.c).

        ``owner`` says who asked ("vhm" or "ctl"). The same VM asking again for the same type gets its
        existing vGPU (a retried request).
        """
        try:
            spec_vm, vtype = parse_spec(spec, vm, self.types_by_name)
            existing = self.by_vm.get(vm)
            if existing is not None:
                if existing.type == vtype:
                    self.counters["vgpu_create_repeat"] += 1
                    return existing
                raise GvtError(ErrorCode.BAD_REQUEST, f"vm {vm} already has vGPU {existing.id} ({existing.type.name})")
            vgpu_id = next((i for i in range(1, self.max_vgpu + 1) if i not in self.vgpus), None)
            if vgpu_id is None:
                raise GvtError(ErrorCode.NO_SPACE, f"all {self.max_vgpu} vGPU ids are in use "
                                                   f"(GPU profile {self.profile.name})")
            resource = self.gm.alloc(vtype)
            try:
                mpt = self.mpt_factory(vm, ept_root, ram_mb) if ept_root else NullMpt()
            except Exception as err:  # guest memory not reachable: the vGPU still works, every gfn is scratch
                self.counters["mpt_unavailable"] += 1
                self.log.warning("mpt_unavailable", vm=vm, error=f"{type(err).__name__}: {err}")
                mpt = NullMpt()
            vgpu = Vgpu(self, vgpu_id, vm, vtype, resource, mpt, now)
            vgpu.owner = owner
            self.vgpus[vgpu_id] = vgpu
            self.by_vm[vm] = vgpu
            vgpu.create()
            vgpu.activate()
        except GvtError as err:
            return self._refuse("vgpu_create", err.code, err.reason, vm=vm, spec=spec)
        except Exception as err:
            return self._internal("vgpu_create", err, vm=vm)
        self.counters["vgpus_created"] += 1
        self.log.info("vgpu_created", vm=vm, vgpu=vgpu.id, type=vtype.name, low_gm=hex(resource.low_base),
                      high_gm=hex(resource.high_base), fences=list(resource.fences))
        return vgpu

    def destroy_vgpu(self, vm: int) -> None | Refusal:
        """Destroy the VM's vGPU and give its resources back (types' avail_instance recomputed)."""
        vgpu = self.by_vm.get(vm)
        if vgpu is None:
            return self._refuse("vgpu_destroy", ErrorCode.NO_SUCH_VM, f"vm {vm} has no vGPU", vm=vm)
        try:
            vgpu.destroy()
            self.scheduler.clean_vgpu(vgpu)
        except Exception as err:
            self._internal("vgpu_destroy", err, vm=vm)
        finally:
            self.gm.free(vgpu.resource)
            self.vgpus.pop(vgpu.id, None)
            self.by_vm.pop(vm, None)
            for key in [k for k in self.last_done if k[0] == vm]:
                del self.last_done[key]
        self.counters["vgpus_destroyed"] += 1
        self.log.info("vgpu_destroyed", vm=vm, vgpu=vgpu.id)
        return None

    def reset_vgpu(self, vm: int, dmlr: bool = True, engine_mask: int = ALL_ENGINES) -> None | Refusal:
        """Device-model-level reset (VM reset / FLR) or a GT reset of some engines."""
        vgpu = self.by_vm.get(vm)
        if vgpu is None:
            return self._refuse("vgpu_reset", ErrorCode.NO_SUCH_VM, f"vm {vm} has no vGPU", vm=vm)
        try:
            vgpu.reset(dmlr, engine_mask)
        except Exception as err:
            return self._internal("vgpu_reset", err, vm=vm)
        return None

    def activate_vgpu(self, vm: int, active: bool = True) -> None | Refusal:
        """Activate (dispatch allowed) or deactivate the VM's vGPU."""
        vgpu = self.by_vm.get(vm)
        if vgpu is None:
            return self._refuse("vgpu_activate", ErrorCode.NO_SUCH_VM, f"vm {vm} has no vGPU", vm=vm)
        vgpu.activate() if active else vgpu.deactivate()
        return None

    # ------------------------------------------------------------------------------ reconciliation
    def vhm_vgpus(self) -> list[tuple[int, int]]:
        """VGPU_SYNC's list: (vm, vgpu id) of every vGPU vhm asked for (ctl-created ones are not vhm's)."""
        return sorted((v.vm, v.id) for v in self.vgpus.values() if v.owner == "vhm")

    def reconcile(self, keep: list[int], destroy: list[int]) -> list[int]:
        """vhm's answer to VGPU_SYNC: destroy the vGPUs of ``destroy`` (their VM is gone at vhm) and register
        again, for each VM of ``keep``, everything vhm routes to this vGPU: the BAR0 trap area, the BDF, the
        attachment and the tracked pages (all idempotent at vhm: a resumed session changes nothing). A vGPU
        in neither list (created after the list was sent) is left alone. Returns the VMs destroyed."""
        destroyed = []
        for vm in destroy:
            vgpu = self.by_vm.get(vm)
            if vgpu is None or vgpu.owner != "vhm":
                continue
            if self.destroy_vgpu(vm) is None:
                destroyed.append(vm)
        for vm in keep:
            vgpu = self.by_vm.get(vm)
            if vgpu is None:
                continue
            if vgpu.cfg.trapped is not None:
                start, end = vgpu.cfg.trapped
                vgpu.emit(SetTrapArea(vm, start, end, True))
            bus, dev, func = GVT_BDF
            vgpu.emit(InterceptBdf(vm, bus, dev, func, True))
            vgpu.emit(AttachVgpu(vm, vgpu.id, True))
            for gfn in sorted(g for g, p in vgpu.page_track.pages.items() if p.tracked):
                vgpu.emit(PageTrack(vm, gfn, True))
        self.counters["reconcile_destroyed"] += len(destroyed)
        self.counters["reconcile_kept"] += len(keep)
        if destroyed:
            self.log.warning("reconcile_destroyed", vms=destroyed)
        return destroyed

    def vhm_restarted(self) -> list[int]:
        """vhm restarted and lost its VMs: the vGPUs created through it go with them (those made with
        ``gvtsim ctl`` stay), and the frames the old vhm gave are not gvt's any more. The new vhm never knew
        those VMs: what waits in the outbox for the old one is void, and of the destroys only the physical
        GPU's clean-up goes out (GGTT slices to scratch, registers). Returns the VMs whose vGPUs went."""
        gone = [v.vm for v in self.vgpus.values() if v.owner == "vhm"]
        for vm in gone:
            self.destroy_vgpu(vm)
        self.effects = [e for e in self.effects if isinstance(e, PGPU_STATE_EFFECTS)]
        self.scheduler.frames_lost()
        return gone

    def _refuse(self, what: str, code: ErrorCode, reason: str, **kw: Any) -> Refusal:
        self.counters[f"{what}_refused_{code.value}"] += 1
        self.log.info(f"{what}_refused", code=code.value, reason=reason, **kw)
        return Refusal(code, reason)

    def _internal(self, what: str, err: Exception, **kw: Any) -> Refusal:
        self.counters["internal_errors"] += 1
        self.log.error(f"{what}_failed", error=f"{type(err).__name__}: {err}", exc_info=True, **kw)
        return Refusal(ErrorCode.INTERNAL, f"{type(err).__name__}: {err}")

    # ----------------------------------------------------------------------------- emulation
    def _guard(self, vgpu: Vgpu, what: str, fn: Callable[[], int], offset: int, size: int) -> int:
        """Run one emulation; a refused access is counted and puts only this vGPU in failsafe."""
        try:
            return fn()
        except EmulationError as err:
            self.counters[f"{what}_errors"] += 1
            self.log.warning(f"{what}_error", vgpu=vgpu.id, vm=vgpu.vm, offset=hex(offset), size=size, why=str(err))
            if err.failsafe:
                vgpu.enter_failsafe(FailsafeReason.GUEST_ERR, str(err))
        except Exception as err:
            self.counters["internal_errors"] += 1
            self.log.error(f"{what}_failed", vgpu=vgpu.id, offset=hex(offset), error=repr(err), exc_info=True)
            vgpu.enter_failsafe(FailsafeReason.GUEST_ERR, f"internal error: {err!r}")
        return (1 << (8 * max(1, min(size, 8)))) - 1

    def emulate_cfg_read(self, vgpu: Vgpu, offset: int, size: int) -> int:
        """intel_gvt_ops.emulate_cfg_read: the value read (all ones if refused)."""
        return self._guard(vgpu, "cfg_read", lambda: vgpu.cfg.read(offset, size), offset, size)

    def emulate_cfg_write(self, vgpu: Vgpu, offset: int, data: int, size: int) -> None:
        """intel_gvt_ops.emulate_cfg_write."""
        def write() -> int:
            vgpu.cfg.write(offset, data, size)
            return 0

        self._guard(vgpu, "cfg_write", write, offset, size)

    def emulate_mmio_read(self, vgpu: Vgpu, gpa: int, size: int) -> int:
        """intel_gvt_ops.emulate_mmio_read of guest-physical ``gpa`` in BAR0."""
        return self._mmio_read_at(vgpu, gpa - vgpu.cfg.bar0_base(), gpa, size)

    def _mmio_read_at(self, vgpu: Vgpu, offset: int, gpa: int, size: int) -> int:
        """:meth:`emulate_mmio_read` with the offset into BAR0 already known (the trap path reads it once)."""
        return self._guard(vgpu, "mmio_read", lambda: mmio.read_at(vgpu, offset, size), gpa, size)

    def emulate_mmio_write(self, vgpu: Vgpu, gpa: int, data: int, size: int) -> None:
        """intel_gvt_ops.emulate_mmio_write of guest-physical ``gpa`` in BAR0."""
        def write() -> int:
            mmio.emulate_mmio_write(vgpu, gpa, data, size)
            return 0

        self._guard(vgpu, "mmio_write", write, gpa, size)

    def write_protect_handler(self, vgpu: Vgpu, gpa: int, data: int, size: int) -> bool:
        """intel_gvt_ops.write_protect_handler: the page-track handler of the written gfn (page_track.py)
        applies the guest's write and updates the shadow. True if claimed; a refused write is claimed,
        counted, and puts this vGPU alone in failsafe."""
        return bool(self._guard(vgpu, "wp", lambda: int(vgpu.page_track.handle(gpa, data, size)), gpa, size))

    def trigger_event(self, vgpu: Vgpu, event: str) -> bool:
        """Raise a named virtual interrupt event (interrupt.EVENTS). Returns whether IIR was set."""
        try:
            return interrupt.trigger_event(vgpu, event)
        except KeyError:
            self.counters["irq_unknown_event"] += 1
            self.log.warning("irq_unknown_event", vgpu=vgpu.id, irq_event=event)
        except Exception as err:
            self._internal("trigger_event", err, vgpu=vgpu.id)
        return False

    def handle_ioreq(self, req: m.Ioreq, now: float) -> int:
        """One ioreq as AcrnGT's emulation thread handles it (ACRN gvt/acrngt.c). Returns the value to
        complete it with (the read result, 0 for writes); always completes."""
        if now > self.scheduler.now:
            self.scheduler.now = now  # the scheduling policy's clock (ELSP writes)
        vgpu = self.by_vm.get(req.vm)
        if vgpu is None:
            self.counters["ioreq_no_vgpu"] += 1
            return (1 << (8 * req.size)) - 1 if req.dir == _READ else 0
        key = (req.vm, req.vcpu)
        last = self.last_done.get(key)
        if last is not None and last[0] == req:  # sent again after a reconnect: already emulated
            self.counters["ioreq_replayed"] += 1
            return last[1]
        failsafe = vgpu.failsafe
        # an MMIO access's offset into BAR0, read once (trap kind, purity and emulation all need it)
        offset = req.addr - vgpu.cfg.bar0_base() if req.kind == _MMIO else 0
        pure = req.dir == _READ and req.kind == _MMIO and mmio.read_is_pure_at(vgpu, offset, req.size)
        value = self._emulate_ioreq(vgpu, req, offset)
        self.last_done[key] = (req, value)
        if not pure or vgpu.failsafe != failsafe:  # a read that put the vGPU in failsafe changed it
            self.touched.add(vgpu.id)
        return value

    def _emulate_ioreq(self, vgpu: Vgpu, req: m.Ioreq, offset: int) -> int:
        full = (1 << (8 * req.size)) - 1
        self.counters["ioreqs"] += 1
        read = req.dir == _READ
        kind = req.kind
        vgpu.traps[_trap_kind(kind, read, offset)] += 1
        if kind == _PCI:
            if (req.bus, req.dev, req.func) != (0, 2, 0):
                self.counters["ioreq_foreign_bdf"] += 1
                return full if read else 0
            if read:
                return self.emulate_cfg_read(vgpu, req.reg, req.size) & full
            self.emulate_cfg_write(vgpu, req.reg, req.value & full, req.size)
            return 0
        if kind == _MMIO or kind == _WP:
            t0 = time.perf_counter()  # a measurement for the figures (figures.py), not emulation input
            try:
                if read:
                    if kind == _MMIO:
                        return self._mmio_read_at(vgpu, offset, req.addr, req.size) & full
                    return self.emulate_mmio_read(vgpu, req.addr, req.size) & full
                if not (kind == _WP and
                        self.write_protect_handler(vgpu, req.addr, req.value & full, req.size)):
                    self.emulate_mmio_write(vgpu, req.addr, req.value & full, req.size)
                return 0
            finally:
                vgpu.figures.mmio(time.perf_counter() - t0)
        self.counters["ioreq_unexpected_kind"] += 1
        return full if read else 0

    # ------------------------------------------------------------------------------- display
    def next_deadline(self) -> float | None:
        """When the core wants :meth:`on_timer` called: the earliest vblank of an enabled pipe (None while
        no vGPU has a pipe enabled: no timer at all)."""
        return display.next_deadline(self)

    def on_timer(self, now: float) -> int:
        """Emulate the vblanks due by ``now`` (display.py). Returns how many were emulated."""
        self.scheduler.now = max(self.scheduler.now, now)
        try:
            return display.run_timers(self, now)
        except Exception as err:
            self._internal("vblank", err)
            return 0

    def query_plane(self, vm: int, plane: str, pipe: int = 0) -> Any:
        """The VFIO_DEVICE_QUERY_GFX_PLANE analogue (dmabuf.py): a fb_decoder.PlaneInfo, or a Refusal."""
        vgpu = self.by_vm.get(vm)
        if vgpu is None:
            return self._refuse("plane_query", ErrorCode.NO_SUCH_VM, f"vm {vm} has no vGPU", vm=vm)
        try:
            return dmabuf.query_plane(vgpu, plane, pipe)
        except ValueError as err:
            return self._refuse("plane_query", ErrorCode.BAD_REQUEST, str(err), vm=vm)

    def read_framebuffer(self, vm: int, mem: Any, ggtt_addr: int, offset: int, length: int) -> bytes | Refusal:
        """Bytes of a vGPU's framebuffer through its GGTT from machine memory (dmabuf.py), or a Refusal."""
        vgpu = self.by_vm.get(vm)
        if vgpu is None:
            return self._refuse("fb_read", ErrorCode.NO_SUCH_VM, f"vm {vm} has no vGPU", vm=vm)
        if mem is None:
            return self._refuse("fb_read", ErrorCode.INTERNAL, "machine memory is not mapped yet", vm=vm)
        try:
            return dmabuf.read_surface(vgpu, mem, ggtt_addr, offset, length)
        except ValueError as err:
            return self._refuse("fb_read", ErrorCode.BAD_ADDRESS, str(err), vm=vm)

    # ------------------------------------------------------------------------------------ views
    def status_info(self) -> dict[str, Any]:
        """What STATUS reports: vGPUs, types with availability, the GPU."""
        return {"vgpus": [v.info() for v in sorted(self.vgpus.values(), key=lambda v: v.id)],
                "types": [{"name": s.type.name, "avail": s.avail, "registered": s.registered} for s in self.types()],
                "gpu": dict(self.gpu.__dict__), "scratch_mfn": self.scratch_mfn,
                "tracked_mmio": self.table.tracked_mmio, "cmd_table_size": len(cmd_table.CMD_INFO),
                "profile": self.profile.info(), "vgpu_ids_free": self.max_vgpu - len(self.vgpus),
                "gm_free_mb": dict(zip(("low", "high", "fences"),
                                       (self.gm.avail()[0] >> 20, self.gm.avail()[1] >> 20, self.gm.avail()[2]))),
                "msis_by_vm": {str(v.vm): v.msis_injected for v in self.vgpus.values()},
                "traps_by_vm": {str(v.vm): dict(v.traps) for v in self.vgpus.values()},
                "pv_by_vm": {str(v.vm): {"enabled": int(v.pv.enabled), "version": v.pv.version}
                             for v in self.vgpus.values() if v.pv.active},
                "scheduler": {"queued": sum(len(q) for q in self.scheduler.queues.values()),
                              "running": {e: (w.id if w else None) for e, w in self.scheduler.current.items()},
                              "frame_pool": len(self.shadow.frame_pool),
                              "shadow_bbs": len(self.shadow.batches),
                              "policy": self.scheduler.policy.info()},
                "display_by_vm": {str(v.vm): v.display.info() for v in self.vgpus.values()},
                "figures_by_vm": {str(v.vm): v.figures.info() for v in self.vgpus.values()},
                # per VM: time each engine held its workloads (ns, dispatch to completion) and workloads
                # ended, cumulative (rates: `gvtsim top`)
                "engines_by_vm": {str(v.vm): dict(v.engine_busy_ns) for v in self.vgpus.values()},
                "workloads_by_vm": {str(v.vm): dict(v.workloads_ended) for v in self.vgpus.values()},
                "failsafe": {str(v.vm): v.failsafe_reason.name for v in self.vgpus.values()
                             if v.failsafe and v.failsafe_reason is not None},
                "ppgtt": {"enable_out_of_sync": self.ppgtt.enable_out_of_sync,
                          "by_vm": {str(v.vm): v.ppgtt.info() for v in self.vgpus.values()}}}
