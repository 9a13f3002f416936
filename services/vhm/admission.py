"""What a guest may send as an ioreq, by type: a declarative table of admission checks.

A guest sends PIO, MMIO and WP; PCI requests only exist as VHM's rewrite of 0xCFC-0xCFF (ACRN
drivers/vhm/vhm_ioreq.c). A WP request is what the hypervisor raises for a write to a page whose EPT entry is
readable but not writable (ACRN hypervisor dm/io_req.c), so vhm accepts one only where that is true and a client
tracks the page. Each check raises :class:`VhmError` (bad_request) or returns None.
"""

from __future__ import annotations

from collections.abc import Callable

from ...protocol import ErrorCode, IoreqDir, IoreqType
from ...protocol import messages as m
from ..common.memory import PAGE_SHIFT
from .outcomes import VhmError
from .routing import PIO_LIMIT
from .vm import Vm


def _check_pio(vm: Vm, req: m.Ioreq) -> None:
    if req.addr + req.size - 1 > PIO_LIMIT:
        raise VhmError(ErrorCode.BAD_REQUEST, f"port {req.addr:#x}+{req.size} outside the 64 KiB port space",
                       vm=req.vm, vcpu=req.vcpu, seq=req.seq)


def _check_mmio(vm: Vm, req: m.Ioreq) -> None:
    """Any guest-physical address may be MMIO (the guest runtime traps whatever its EPT does not map)."""


def _check_pci(vm: Vm, req: m.Ioreq) -> None:
    # ACRN drivers/vhm/vhm_ioreq.c: PCI requests only exist as VHM's rewrite of 0xCFC-0xCFF; a guest uses the ports
    raise VhmError(ErrorCode.BAD_REQUEST, "guests do not send PCI requests: use PIO 0xCF8 / 0xCFC-0xCFF",
                   vm=req.vm, vcpu=req.vcpu, seq=req.seq)


def _check_wp(vm: Vm, req: m.Ioreq) -> None:
    # ACRN hypervisor dm/io_req.c: a WP exit is a write to a page whose EPT entry is readable but not writable
    gfn = req.addr >> PAGE_SHIFT
    why = None
    if req.dir != IoreqDir.WRITE:
        why = "a WP request is a write"
    elif (req.addr + req.size - 1) >> PAGE_SHIFT != gfn:
        why = "a WP write must not straddle a page"
    elif not vm.memory.is_ram(gfn) or not vm.memory.is_write_protected(gfn):
        why = f"gfn {gfn:#x} is not write-protected"
    elif vm.ranges.lookup(IoreqType.WP, req.addr, req.size) is None:
        why = f"no client tracks gfn {gfn:#x}"
    if why:
        raise VhmError(ErrorCode.BAD_REQUEST, why, vm=req.vm, vcpu=req.vcpu, seq=req.seq)


GUEST_KIND_CHECKS: dict[IoreqType, Callable[[Vm, m.Ioreq], None]] = {
    IoreqType.PIO: _check_pio,
    IoreqType.MMIO: _check_mmio,
    IoreqType.PCI: _check_pci,
    IoreqType.WP: _check_wp,
}


class CreateAdmission:
    """Admission of VM creations at a bounded rate: a token bucket (the GCRA form of it, as traffic policers
    use), sans-I/O with time passed in.

    A boot storm (hundreds of guests asking for VMs at once) is spread out at ``rate`` creations per second
    after a burst of ``burst``, so the device model creates vGPUs at a pace that leaves room for the ioreqs
    of the VMs already running. Each call reserves the next slot: the answer is how long that creation
    waits before it starts (0: now).
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.interval = 1.0 / rate
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next creation
        self.admitted = 0
        self.delayed = 0

    def reserve(self, now: float) -> float:
        """Reserve a creation slot; returns the seconds to wait before starting it."""
        start = max(now, self._tat - self.tolerance)
        self._tat = max(self._tat, start) + self.interval
        self.admitted += 1
        if start > now:
            self.delayed += 1
        return start - now

    def next_deadline(self) -> float:
        """When the bucket is full again (nothing waits past it)."""
        return self._tat
