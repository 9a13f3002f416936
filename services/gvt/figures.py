"""Per-vGPU figures for the live views (``gvtsim web``): GPU time, completed workloads and the time GVT
spends emulating each trapped MMIO access, as recent samples (p50 / p99).

These are measurements, not emulation state: nothing here changes what a guest sees.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 1024  # recent MMIO emulation times kept per vGPU


@dataclass
class VgpuFigures:
    """Counters and recent samples of one vGPU."""

    busy_ns: int = 0  # GPU time of this vGPU's completed or failed workloads (pgpu's busy_ns)
    workloads: int = 0  # workloads that ran to an end on the GPU
    mmio_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def workload_done(self, busy_ns: int) -> None:
        self.busy_ns += busy_ns
        self.workloads += 1

    def mmio(self, seconds: float) -> None:
        self.mmio_s.append(seconds)

    def info(self) -> dict[str, Any]:
        s = sorted(self.mmio_s)

        def at(p: float) -> float:
            return round(s[min(len(s) - 1, int(p * len(s)))] * 1e6, 1) if s else 0.0

        return {"busy_ns": self.busy_ns, "workloads": self.workloads,
                "mmio_us": {"n": len(s), "p50": at(0.5), "p99": at(0.99)}}
