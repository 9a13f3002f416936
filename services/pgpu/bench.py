"""Speed of the emulator on this machine (wall clock, time_scale 0): commands/s and blit MB/s.

    python -m gvtsim.services.pgpu.bench

``run()`` returns the figures as a dict (``gvtsim bench`` prints them); nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from ..common.memory import MachineMemory
from . import builder as b
from .core import PgpuConfig, PgpuCore


def _run_ctx(core: PgpuCore, ctx: b.Context) -> tuple[float, int, int]:
    """Submit and run to the terminal event; (wall seconds, simulated ns, commands)."""
    before = core.engines[ctx.engine].stats["commands"]
    t0 = time.perf_counter()
    core.submit(ctx.engine, [ctx.desc], 0, 0.0)
    while True:
        ends = [e for e in core.advance(0.0, ctx.engine) if e.kind != "user_interrupt"]
        if ends:
            break
    wall = time.perf_counter() - t0
    if ends[0].kind != "ctx_complete":
        raise RuntimeError(f"benchmark context failed: {ends[0]}")
    return wall, ends[0].busy_ns, core.engines[ctx.engine].stats["commands"] - before


def run(stores: int = 50_000, blit_px: int = 1024, blits: int = 4) -> dict[str, Any]:
    """Measure: MI_STORE_DATA_IMM commands/s from a batch buffer, XY_SRC_COPY_BLT and XY_COLOR_BLT MB/s
    (32 bpp ``blit_px`` x ``blit_px`` surfaces)."""
    fd, path = tempfile.mkstemp(prefix="gvtsim-pgpu-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.close(fd)
    try:
        with MachineMemory(path, 128 << 20, create=True) as mem:
            core = PgpuCore(mem, PgpuConfig(gm_mb=512, aperture_mb=64, time_scale=0, watchdog_cmds=10**9,
                                            watchdog_ms=1e9))
            lay = b.Layout(mem, next_mfn=mem.frames)
            # --- command throughput: one batch of stores into a 4 KiB buffer
            buf = lay.gm(1)
            words = []
            for i in range(stores):
                words += b.mi_store_dword(buf + (i & 0x3FF) * 4, i)
            words += b.mi_bb_end()
            batch = lay.gm((len(words) * 4 + 4095) // 4096)
            lay.write_dwords(batch, words)
            rcs = lay.context("rcs", 1)
            lay.emit(rcs, b.mi_bb_start(batch))
            # --- blits
            pitch = blit_px * 4
            pages = pitch * blit_px // 4096
            src, dst = lay.gm(pages), lay.gm(pages)
            lay.write(src, os.urandom(pitch * blit_px))
            copy = lay.context("bcs", 2)
            lay.emit(copy, b.xy_src_copy_blt(dst, pitch, 0, 0, blit_px, blit_px, src, pitch, 0, 0) * blits)
            fill = lay.context("bcs", 3)
            lay.emit(fill, b.xy_color_blt(dst, pitch, 0, 0, blit_px, blit_px, 0x55AA55AA) * blits)
            core.ggtt_write(lay.take_pending())

            cmd_wall, cmd_sim, ncmds = _run_ctx(core, rcs)
            copy_wall, copy_sim, _ = _run_ctx(core, copy)
            fill_wall, fill_sim, _ = _run_ctx(core, fill)
            if lay.read(dst, 64) != (0x55AA55AA).to_bytes(4, "little") * 16:
                raise RuntimeError("fill benchmark produced wrong bytes")
            mb = pitch * blit_px * blits / 1e6
            return {
                "pgpu_commands_per_s": round(ncmds / cmd_wall),
                "pgpu_commands": ncmds,
                "pgpu_cmd_sim_ns_per_cmd": round(cmd_sim / ncmds, 1),
                "pgpu_copy_blit_mb_per_s": round(mb / copy_wall, 1),
                "pgpu_fill_blit_mb_per_s": round(mb / fill_wall, 1),
                "pgpu_blit_mb": mb,
                "pgpu_copy_sim_gb_per_s": round(2 * mb * 1e6 / copy_sim, 2),  # the timing model's figure
            }
    finally:
        os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    """Print the figures as one JSON object."""
    print(json.dumps(run()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
