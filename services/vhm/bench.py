"""Speed of the vhm core on this machine (no sockets): the ioreq path, CONF1 and fallback fast paths, VM
creation, read_gpa.

    python -m gvtsim.services.vhm.bench [-n 20000]

``run()`` returns the figures as a dict (``gvtsim bench`` can print them); nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ...protocol import IoreqDir, IoreqType
from ...protocol import messages as m
from ..common.memory import MachineMemory
from .core import VhmCore
from .outcomes import Completed, Dispatched, Teardown, VmPlan

BAR0 = 0xC000_0000


def _per_op(fn: Callable[[int], None], n: int, reps: int = 5) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn(n)
        times.append((time.perf_counter_ns() - t0) / n)
    med = statistics.median(times)
    return {"median_ns": round(med, 1), "min_ns": round(min(times), 1), "per_s": round(1e9 / med)}


def run(n: int = 20000, mem_mb: int = 512) -> dict[str, Any]:
    """Measure and return the figures."""
    fd, path = tempfile.mkstemp(prefix="gvtsim-vhm-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    mem = MachineMemory(path, mem_mb << 20, create=True)
    try:
        core = VhmCore(mem)
        plan = core.create_vm("guest", "bench", 16, 16)
        assert isinstance(plan, VmPlan)
        cid = core.add_client("gvt", "gvt")
        core.io_range(cid, plan.vm, IoreqType.MMIO, BAR0, BAR0 + (16 << 20) - 1, True)
        seq = [0]

        def mmio_roundtrip(k: int) -> None:
            """submit -> PROCESSING -> completion (batched per 16 vCPUs) -> resume."""
            for _ in range(k // 16):
                seq[0] += 1
                s = seq[0]
                for vcpu in range(16):
                    out = core.submit_ioreq("guest", m.Ioreq(vm=plan.vm, vcpu=vcpu, seq=s, kind=1, dir=0,
                                                             addr=BAR0 + 4 * vcpu, size=4), 0.0)
                    assert isinstance(out, Dispatched)
                results = [m.IoreqResult(vm=plan.vm, vcpu=v, seq=s, value=v) for v in range(16)]
                for done in core.complete(cid, results, 0.0):
                    assert isinstance(done, Completed)
                    core.resume(done.vm, done.vcpu, done.seq)

        def in_vhm(addr: int) -> Callable[[int], None]:
            def go(k: int) -> None:
                for _ in range(k):
                    seq[0] += 1
                    out = core.submit_ioreq("guest", m.Ioreq(vm=plan.vm, vcpu=0, seq=seq[0], kind=IoreqType.PIO,
                                                             dir=IoreqDir.READ, addr=addr, size=4), 0.0)
                    assert isinstance(out, Completed)
                    core.resume(plan.vm, 0, seq[0])
            return go

        def read_page(k: int) -> None:
            for i in range(k):
                core.read_gpa(cid, plan.vm, (i % 4096) << 12, 4096)

        figures: dict[str, Any] = {
            "ioreq_mmio_dispatch_complete": _per_op(mmio_roundtrip, max(16, n // 16 * 16)),
            "ioreq_cf8_latch_read": _per_op(in_vhm(0xCF8), n),
            "ioreq_fallback_pio": _per_op(in_vhm(0x3F8), n),
            "read_gpa_4k": _per_op(read_page, max(1, n // 10)),
        }
        figures.update(vm_lifecycle(core, mem))
        return figures
    finally:
        mem.close()
        os.unlink(path)


def vm_lifecycle(core: VhmCore, mem: MachineMemory, ram_mb: int = 256, reps: int = 7) -> dict[str, Any]:
    """VM create and destroy (VM_DESTROY + reap) of a ``ram_mb`` VM, median of ``reps`` runs, against the
    baseline of writing zeros over that much RAM (what creation cost when every frame was zeroed)."""
    create, destroy, zero, resident = [], [], [], []
    base = mem.resident_bytes()
    for _ in range(reps):
        t0 = time.perf_counter()
        plan = core.create_vm("guest", "big", 1, ram_mb)
        t1 = time.perf_counter()
        assert isinstance(plan, VmPlan)
        extents = len(plan.ram)
        resident.append(mem.resident_bytes() - base)
        for _, mfn, count in plan.ram[::64]:  # the guest touches some of its RAM
            mem.write(mfn << 12, b"\xa5" * (count << 12))
        t2 = time.perf_counter()
        td = core.destroy_vm("guest", plan.vm)
        assert isinstance(td, Teardown)
        core.reap_vm(td.vm, td.serial)
        destroy.append(time.perf_counter() - t2)
        create.append(t1 - t0)
    for _ in range(reps):
        runs = core.frames.alloc(ram_mb << 8, "bench-zero", max_run=core.ram_max_run, from_top=True)
        t0 = time.perf_counter()
        for run in runs:
            mem.zero_frames(run.mfn, run.count)
        zero.append(time.perf_counter() - t0)
        core.frames.free_owner("bench-zero")
    ms = lambda xs: round(statistics.median(xs) * 1e3, 2)  # noqa: E731
    return {f"vm_create_{ram_mb}mb_ms": ms(create), f"vm_destroy_{ram_mb}mb_ms": ms(destroy),
            f"zero_{ram_mb}mb_baseline_ms": ms(zero),
            "create_vs_zeroing_baseline": round(statistics.median(zero) / statistics.median(create), 1),
            f"vm_create_{ram_mb}mb_extents": extents,
            f"vm_create_{ram_mb}mb_resident_kb": round(statistics.median(resident) / 1024),
            "resident_kb_after_destroy": round((mem.resident_bytes() - base) / 1024), "runs": reps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gvtsim.services.vhm.bench", description=__doc__)
    p.add_argument("-n", type=int, default=20000, help="operations per repetition")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    figures = run(args.n)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
