"""The guest process's figures: each VM's record across its incarnations, and the process totals that the
``vm_done``, ``done`` and ``stats`` events carry (the demo, the load reports and the tests read them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...protocol import IoreqType
from ..common.histo import Histogram
from .cpu import GuestMachine
from .display import GuestDisplay
from .i915 import VgpuDriver
from .runtime import Thread
from .workloads import Tally, WorkloadRunner


@dataclass
class GuestVm(Tally):
    """A VM hosted by this process: its current incarnation (machine, driver) and its figures."""

    name: str = ""
    vm_id: int = 0
    machine: GuestMachine | None = None
    driver: VgpuDriver | None = None
    vgpu_type: str = ""
    state: str = "new"
    runner: WorkloadRunner | None = None
    reset_started: float | None = None
    run_s: float = 0.0  # seconds spent running workloads (for per-VM rates)
    recoveries: int = 0
    # figures of earlier incarnations of this VM (before a reset), folded in at teardown
    past_ioreqs: Counter[str] = field(default_factory=Counter)
    past_rtt: dict[str, Histogram] = field(default_factory=dict)
    past_msis: int = 0
    past_missed_irqs: int = 0
    past_unexpected_completions: int = 0
    resets: int = 0
    display: GuestDisplay | None = None  # the VM's screen (--display)
    display_thread: Thread | None = None
    index: int = 0

    def ioreqs(self) -> Counter[str]:
        """ioreqs by kind, over every incarnation."""
        out = Counter(self.past_ioreqs)
        if self.machine is not None:
            out.update(self.machine.ioreqs)
        return out

    def rtt(self) -> dict[str, Histogram]:
        """Round-trip histograms by ioreq kind, over every incarnation."""
        out = {k: Histogram().add(v) for k, v in self.past_rtt.items()}
        if self.machine is not None:
            for kind, hist in self.machine.rtt.hists.items():
                if hist.count:
                    out.setdefault(IoreqType(kind).name, Histogram()).add(hist)
        return out

    def msis(self) -> int:
        """MSIs its driver handled, over every incarnation."""
        return self.past_msis + (self.driver.msis if self.driver is not None else 0)

    def missed_irqs(self) -> int:
        """Interrupts its driver's hangcheck found pending with no MSI, over every incarnation."""
        return self.past_missed_irqs + (self.driver.missed_irqs if self.driver is not None else 0)

    def unexpected_completions(self) -> int:
        """Completions its driver saw with no request waiting (twice, or after a hang), every incarnation."""
        return self.past_unexpected_completions + (self.driver.unexpected_completions
                                                   if self.driver is not None else 0)

    def fold(self) -> None:
        """Keep this incarnation's figures before the machine and driver are dropped."""
        if self.machine is not None:
            self.past_ioreqs.update(self.machine.ioreqs)
            for kind, hist in self.machine.rtt.hists.items():
                if hist.count:
                    self.past_rtt.setdefault(IoreqType(kind).name, Histogram()).add(hist)
        if self.driver is not None:
            self.past_msis += self.driver.msis
            self.past_missed_irqs += self.driver.missed_irqs
            self.past_unexpected_completions += self.driver.unexpected_completions


def vm_summary(vm: GuestVm) -> dict[str, Any]:
    """One VM's figures (the ``vm_done`` event, ``per_vm`` of ``done``)."""
    out: dict[str, Any] = {"vm": vm.vm_id, "name": vm.name, "state": vm.state, "vgpu_type": vm.vgpu_type,
                           "submitted": vm.submitted, "verified": vm.verified, "failed": vm.failed,
                           "by_kind": dict(vm.by_kind), "failures": vm.failures[:5], "resets": vm.resets,
                           "recoveries": vm.recoveries, "ioreqs": dict(vm.ioreqs()), "msis": vm.msis(),
                           "missed_irqs": vm.missed_irqs(), "unexpected_completions": vm.unexpected_completions(),
                           "workloads_per_s": round(vm.verified / vm.run_s, 1) if vm.run_s else 0.0}
    if vm.driver is not None:
        out["submission_traps"] = {str(k): v for k, v in sorted(vm.driver.submission_traps.items())}
        res = vm.driver.pv_result
        out["pv"] = {"status": res.status, "enabled": res.enabled, "reason": res.reason} if res else None
        out["user_irqs"] = {e.name: e.user_irqs for e in vm.driver.engines.values()}
        out["completions"] = {e.name: e.completions for e in vm.driver.engines.values()}
    if vm.runner is not None:
        out["user_irqs_asked"] = dict(vm.runner.asked_user_irq)
    if vm.display is not None:
        out["display"] = vm.display.summary()
    return out


def rtt(vms: list[GuestVm]) -> dict[str, Histogram]:
    """Round-trip histograms by ioreq kind over the VMs."""
    out: dict[str, Histogram] = {}
    for vm in vms:
        for kind, hist in vm.rtt().items():
            out.setdefault(kind, Histogram()).add(hist)
    return out


def _ioreqs(vms: list[GuestVm]) -> Counter[str]:
    out: Counter[str] = Counter()
    for vm in vms:
        out.update(vm.ioreqs())
    return out


def summary(vms: list[GuestVm], elapsed: float) -> dict[str, Any]:
    """Totals across this process's VMs after ``elapsed`` seconds (the ``done`` event; the demo's JSON is
    built from these)."""
    hists = rtt(vms)
    verified = sum(v.verified for v in vms)
    mmio = hists.get("MMIO", Histogram()).summary()
    return {"vms": len(vms), "workloads_submitted": sum(v.submitted for v in vms),
            "workloads_verified": verified, "workloads_failed": sum(v.failed for v in vms),
            "ioreqs_by_type": dict(_ioreqs(vms)), "msis": sum(v.msis() for v in vms),
            "missed_irqs": sum(v.missed_irqs() for v in vms),
            "unexpected_completions": sum(v.unexpected_completions() for v in vms),
            "mmio_rtt_us": {"p50": mmio.get("p50", 0.0), "p99": mmio.get("p99", 0.0),
                            "mean": mmio.get("mean", 0.0)},
            "rtt_us_by_type": {k: v.summary() for k, v in hists.items()},
            # the histograms themselves: readers merge them exactly (percentiles cannot be averaged)
            "ioreq_hist": {k: v.encode() for k, v in hists.items()},
            "resets": sum(v.resets for v in vms), "recoveries": sum(v.recoveries for v in vms),
            "failures_by_reason": dict(sum((v.failure_reasons for v in vms), Counter())),
            "seconds": round(elapsed, 3), "workloads_per_s": round(verified / elapsed, 1) if elapsed else 0.0,
            "per_vm": [vm_summary(v) for v in vms]}


def stats(vms: list[GuestVm], elapsed: float) -> dict[str, Any]:
    """Cumulative counts plus this interval's workload latencies (the ``stats`` event; the load report
    plots these). Resets each VM's latency histogram."""
    lat = Histogram()
    for vm in vms:
        lat.add(vm.latencies)
        vm.latencies = Histogram()
    hists = rtt(vms)
    return {"elapsed_s": round(elapsed, 3), "vms": len(vms),
            "vms_running": sum(v.state == "running" for v in vms),
            "submitted": sum(v.submitted for v in vms), "verified": sum(v.verified for v in vms),
            "failed": sum(v.failed for v in vms), "resets": sum(v.resets for v in vms),
            "recoveries": sum(v.recoveries for v in vms), "ioreqs_by_type": dict(_ioreqs(vms)),
            "unexpected_completions": sum(v.unexpected_completions() for v in vms),
            "failures_by_reason": dict(sum((v.failure_reasons for v in vms), Counter())),
            "rtt_us_by_type": {k: v.summary() for k, v in hists.items()},
            "ioreq_hist": {k: v.encode() for k, v in hists.items()},
            "workload_latency_ms": lat.summary(scale=1000.0), "workload_hist": lat.encode(),
            # per-VM progress by name (names survive resets and restarts): a load run tells a VM that
            # came back after a fault from one that never did
            "verified_by_vm": {v.name: v.verified for v in vms}}
