"""What a run costs: memory (PSS, RSS) and CPU of every process of the topology, sampled over time.

PSS (proportional set size, /proc/PID/smaps_rollup through psutil) charges each shared page to its mappers
in equal parts, so the PSS of all processes adds up to what the run really holds, machine memory (a shared
tmpfs file every process of a stack maps) included, counted once. ``gvtsim load`` samples it during the run
and reports the totals, the cost per VM and each service's CPU.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import psutil

MB = 1 << 20


def service_of(name: str) -> str:
    """``s3/gvt`` -> ``gvt``, ``s0/load-guest.12`` -> ``guest``, ``s1/guest.2`` -> ``guest``."""
    base = name.split("/", 1)[-1].split(".", 1)[0]
    return "guest" if "guest" in base else base


@dataclass
class ResourceSampler:
    """Samples processes by name -> pid (the launcher's state). ``pss=False`` reads RSS only (cheaper)."""

    pss: bool = True
    samples: list[dict[str, Any]] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)
    _cpu0: dict[int, float] = field(default_factory=dict)
    _t0: float = field(default_factory=time.monotonic)

    def sample(self, procs: dict[str, int], vms: int, now: float | None = None) -> dict[str, Any]:
        """One sample of every process (the ones gone are skipped): per-service sums and the total."""
        now = time.monotonic() if now is None else now
        by_service: dict[str, dict[str, float]] = defaultdict(lambda: {"pss_mb": 0.0, "rss_mb": 0.0, "cpu_s": 0.0,
                                                                        "procs": 0})
        for name, pid in procs.items():
            p = self._procs.get(pid)
            try:
                if p is None:
                    p = self._procs[pid] = psutil.Process(pid)
                    t = p.cpu_times()
                    self._cpu0[pid] = t.user + t.system
                with p.oneshot():
                    mem = p.memory_full_info() if self.pss else p.memory_info()
                    t = p.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            s = by_service[service_of(name)]
            s["rss_mb"] += mem.rss / MB
            s["pss_mb"] += getattr(mem, "pss", mem.rss) / MB
            s["cpu_s"] += t.user + t.system - self._cpu0.get(pid, 0.0)
            s["procs"] += 1
        total_pss = sum(s["pss_mb"] for s in by_service.values())
        out = {"t": round(now - self._t0, 2), "vms": vms, "pss_mb": round(total_pss, 1),
               "by_service": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in by_service.items()}}
        self.samples.append(out)
        return out

    def summary(self, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
        """Peak memory, memory per VM (above ``baseline``, the topology before the load), CPU per service
        (percent of one core over the sampled span)."""
        if not self.samples:
            return {}
        peak = max(self.samples, key=lambda s: s["pss_mb"])
        full = max(self.samples, key=lambda s: (s["vms"], s["pss_mb"]))  # the most VMs running at once
        last = self.samples[-1]
        span = max(1e-9, last["t"] - self.samples[0]["t"])
        first = self.samples[0]["by_service"]
        cpu = {svc: round(100.0 * (v["cpu_s"] - first.get(svc, {}).get("cpu_s", 0.0)) / span, 1)
               for svc, v in last["by_service"].items()}
        base_pss = (baseline or {}).get("pss_mb", 0.0)
        vms = max(1, full["vms"])
        guests = full["by_service"].get("guest", {})
        return {"peak_pss_mb": peak["pss_mb"], "peak_at_s": peak["t"], "vms_at_peak": peak["vms"],
                "most_vms": full["vms"], "pss_at_most_vms_mb": full["pss_mb"],
                "pss_per_vm_kb": round((full["pss_mb"] - base_pss) * 1024 / vms, 1),
                "pss_by_service_mb": {k: v["pss_mb"] for k, v in full["by_service"].items()},
                "guest_rss_per_vm_kb": round(guests.get("rss_mb", 0.0) * 1024 / vms, 1),
                "cpu_percent_by_service": cpu, "baseline_pss_mb": base_pss, "samples": len(self.samples)}
