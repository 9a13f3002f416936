"""``gvtsim bench``: measure and print figures (never pass/fail thresholds).

Sections: the wire codec, machine memory access, the frame allocator, the vhm core (ioreq path), and the
pgpu emulator (commands/s, blit MB/s), and e2e: ioreqs through real vhm and gvt processes, plain and with CURVE.
Each figure is the median of several repetitions; ``--json`` prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from ..protocol import decode, encode
from ..protocol import messages as m
from ..services.common.memory import FrameAllocator, MachineMemory
from ..services.common.helptext import UserHelpFormatter


def per_op(fn: Callable[[int], None], n: int, reps: int = 5) -> dict[str, float]:
    """Median and min nanoseconds per operation over ``reps`` runs of ``n`` operations."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn(n)
        times.append((time.perf_counter_ns() - t0) / n)
    return {"median_ns": round(statistics.median(times), 1), "min_ns": round(min(times), 1)}


def bench_codec(n: int) -> dict[str, Any]:
    req = m.Ioreq(vm=3, vcpu=1, seq=123456, kind=1, dir=1, addr=0xF0078818, size=4, value=0x2)
    wire = encode(req)
    batch = m.IoreqDispatch(reqs=[req] * 64)
    bwire = encode(batch)

    def enc(k: int) -> None:
        for _ in range(k):
            encode(req)

    def dec(k: int) -> None:
        for _ in range(k):
            decode(wire)

    def dec_batch(k: int) -> None:
        for _ in range(k):
            decode(bwire)

    return {"ioreq_bytes": len(wire), "encode_ioreq": per_op(enc, n), "decode_ioreq": per_op(dec, n),
            "decode_batch64": per_op(dec_batch, max(1, n // 64))}


def bench_memory(n: int) -> dict[str, Any]:
    path = os.path.join(tempfile.gettempdir(), f"gvtsim-bench-{os.getpid()}.mem")
    try:
        mem = MachineMemory(path, 64 << 20, create=True)

        def rw32(k: int) -> None:
            for i in range(k):
                mem.write_u32((i & 0xFFFF) * 4, i)
                mem.read_u32((i & 0xFFFF) * 4)

        def page_copy(k: int) -> None:
            page = bytes(4096)
            for i in range(k):
                mem.write((i & 0x3FFF) << 12, page)

        out = {"u32_write_read": per_op(rw32, n), "page_write_4k": per_op(page_copy, max(1, n // 10))}
        mem.close()
        return out
    finally:
        if os.path.exists(path):
            os.unlink(path)


def bench_allocator(n: int) -> dict[str, Any]:
    def cycle(k: int) -> None:
        a = FrameAllocator(1 << 20)
        for i in range(k):
            a.alloc(16, f"o{i % 8}", max_run=4)
            if i % 8 == 7:
                for j in range(8):
                    a.free_owner(f"o{j}")

    return {"alloc16_free": per_op(cycle, n)}


def bench_service(name: str) -> dict[str, Any]:
    """A service's own core benchmark (``gvtsim.services.<name>.bench.run()``)."""
    mod = importlib.import_module(f"gvtsim.services.{name}.bench")
    return mod.run()


def bench_e2e(n: int) -> dict[str, Any]:
    """The ioreq path through real vhm and gvt processes, plain and with CURVE (orchestration/e2ebench.py)."""
    from .e2ebench import run

    return run(n=max(200, n))


def bench_vhm_state(n: int) -> dict[str, Any]:
    """The ioreq path with vhm's saved state on against ``--state-dir off`` (orchestration/e2ebench.py)."""
    from .e2ebench import run_vhm_state

    return run_vhm_state(n=max(200, n))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["e2e"]:  # the end-to-end section starts a topology: only on request
        # imported under another name: a local ``bench_e2e`` would shadow the section function below for the
        # whole of main(), and the e2e section's lambda would fail with NameError
        from . import bench_e2e as e2e_cli
        return e2e_cli.main(argv[1:])
    p = argparse.ArgumentParser(prog="gvtsim bench", description=__doc__, formatter_class=UserHelpFormatter,
                                epilog="gvtsim bench e2e --help: the guest MMIO round trip through the real "
                                       "topology against a raw relay")
    p.add_argument("--json", action="store_true")
    p.add_argument("-n", type=int, default=20000, help="operations per repetition")
    p.add_argument("--only", choices=["codec", "memory", "allocator", "vhm", "pgpu", "e2e", "vhm-state"],
                   action="append")
    args = p.parse_args(argv)
    sections = {"codec": lambda: bench_codec(args.n), "memory": lambda: bench_memory(args.n),
                "allocator": lambda: bench_allocator(args.n // 10), "vhm": lambda: bench_service("vhm"),
                "pgpu": lambda: bench_service("pgpu"), "e2e": lambda: bench_e2e(args.n // 10),
                "vhm-state": lambda: bench_vhm_state(args.n // 10)}
    if not args.only:  # like e2e, the saved-state comparison starts two topologies: only on request
        sections.pop("vhm-state")
    results = {name: fn() for name, fn in sections.items() if not args.only or name in args.only}
    if args.json:
        print(json.dumps(results))
    else:
        for name, figures in results.items():
            print(f"[{name}]")
            for k, v in figures.items():
                print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
