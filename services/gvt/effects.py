"""The core's outbox: what must leave the process, as small frozen records.

The core is sans-I/O: instead of calling the hypervisor (MPT) or the physical GPU, it appends an effect
to ``Gvt.effects``. The shell drains the list after every call and sends the effects IN ORDER, before it
answers the ioreq that caused them (one ZeroMQ connection keeps order, so vhm sees a new trap range
before the completion that follows it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SetTrapArea:
    """MPT set_trap_area: trap (``add``) or untrap the MMIO range [start, end] of the VM (AcrnGT: an
    ioreq range of type MMIO, ACRN gvt/acrngt.c)."""

    vm: int
    start: int
    end: int
    add: bool


@dataclass(frozen=True)
class InterceptBdf:
    """Claim (``add``) or release PCI config requests of bus:dev.func for the VM (AcrnGT: 00:02.0)."""

    vm: int
    bus: int
    dev: int
    func: int
    add: bool


@dataclass(frozen=True)
class AttachVgpu:
    """MPT attach_vgpu / detach_vgpu."""

    vm: int
    vgpu_id: int
    attach: bool


@dataclass(frozen=True)
class InjectMsi:
    """MPT inject_msi(addr, data): vhm delivers it to the guest (gvt/hypercall.h, ACRN gvt/acrngt.c)."""

    vm: int
    addr: int
    data: int


@dataclass(frozen=True)
class PageTrack:
    """MPT enable/disable_page_track of one guest frame (PPGTT shadowing: page_track.py)."""

    vm: int
    gfn: int
    enable: bool


@dataclass(frozen=True)
class PgpuGgttWrite:
    """Write physical GGTT entries ``(index, pte)``; the GGTT TLB is flushed after the batch."""

    entries: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class PgpuGgttFill:
    """Write ``count`` physical GGTT entries from ``index`` with the same ``pte`` (scratch fills of a
    vGPU's whole GM range at create, destroy and DMLR). The shell splits it into GGTT_WRITE batches."""

    index: int
    count: int
    pte: int


@dataclass(frozen=True)
class PgpuMmioWrite:
    """Write a physical MMIO register (e.g. a host fence register the vGPU owns)."""

    offset: int
    size: int
    value: int


@dataclass(frozen=True)
class PgpuSubmit:
    """Submit a shadow context to a physical engine's execlist port (ELSP_SUBMIT). ``tag`` names the
    workload in the GPU_EVENTs that follow."""

    engine: str
    descs: tuple[int, ...]
    tag: int


@dataclass(frozen=True)
class MapGfnToMfn:
    """MPT map_gfn_to_mfn: map (or unmap) guest frames onto machine frames in the VM's EPT, with no trap
    (the aperture pass-through, gvt/gtt.c, gvt/aperture_gm.c "CPU aperture access")."""

    vm: int
    gfn: int
    mfn: int
    nr: int
    map: bool


@dataclass(frozen=True)
class Uevent:
    """A host notification (i915 sends a uevent, e.g. ``GVT_DISPLAY_READY=1`` with ``VMID``): logged."""

    vm: int
    name: str
    value: int


Effect = (SetTrapArea | InterceptBdf | AttachVgpu | InjectMsi | PageTrack | PgpuGgttWrite | PgpuGgttFill
          | PgpuMmioWrite | PgpuSubmit | MapGfnToMfn | Uevent)
#: what changes the physical GPU's own state (its GGTT and registers), as opposed to vhm's routing
PGPU_STATE_EFFECTS = (PgpuGgttWrite, PgpuGgttFill, PgpuMmioWrite)
