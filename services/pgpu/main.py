"""``gvtsim pgpu``: run the physical GPU emulator.

    gvtsim pgpu --bind tcp://127.0.0.1:5557 --mem-path /dev/shm/gvtsim-machine.mem --create-mem
"""

from __future__ import annotations

import argparse
import sys

from ..common.gpu_profiles import PROFILES
from ..common.helptext import UserHelpFormatter
from ..common.service import common_args, env, mem_args, run_service
from .service import PgpuService


def parser() -> argparse.ArgumentParser:
    """The command-line flags (each defaults to a GVTSIM_* environment variable)."""
    p = argparse.ArgumentParser(prog="gvtsim pgpu", description="physical GPU emulator (engines, GGTT, MMIO)",
                                formatter_class=UserHelpFormatter)
    common_args(p, "pgpu")
    mem_args(p)
    p.add_argument("--bind", default=env("PGPU_BIND", "tcp://127.0.0.1:5557"),
                   help="ROUTER endpoint [GVTSIM_PGPU_BIND]")
    p.add_argument("--create-mem", action="store_true", help="create the machine memory file if missing")
    p.add_argument("--mem-wait", type=float, default=float(env("PGPU_MEM_WAIT", "10")),
                   help="seconds to wait for vhm to create the machine memory [GVTSIM_PGPU_MEM_WAIT]")
    p.add_argument("--gm-mb", type=int, default=int(env("PGPU_GM_MB", "4096")),
                   help="graphics memory size; the GGTT has gm >> 12 entries [GVTSIM_PGPU_GM_MB]")
    p.add_argument("--aperture-mb", type=int, default=int(env("PGPU_APERTURE_MB", "1024")),
                   help="mappable (aperture) part of the GM [GVTSIM_PGPU_APERTURE_MB]")
    p.add_argument("--gpu-profile", default=env("GPU_PROFILE", "real"), choices=sorted(PROFILES),
                   help="GPU profile this GPU reports to gvt (docs/GPU_PROFILES.md: real is the hardware's, "
                        "dense a simulated one with 512 small vGPUs) [GVTSIM_GPU_PROFILE]")
    p.add_argument("--time-scale", type=float, default=float(env("PGPU_TIME_SCALE", "1.0")),
                   help="wall seconds per simulated GPU second; 0 = as fast as possible [GVTSIM_PGPU_TIME_SCALE]")
    p.add_argument("--gpu-speed", type=float, default=float(env("PGPU_GPU_SPEED", "1.0")),
                   help="GPU speed multiplier (costs are divided by it) [GVTSIM_PGPU_GPU_SPEED]")
    p.add_argument("--watchdog-ms", type=float, default=float(env("PGPU_WATCHDOG_MS", "100")),
                   help="simulated time a context may run before it is declared hung [GVTSIM_PGPU_WATCHDOG_MS]")
    p.add_argument("--watchdog-cmds", type=int, default=int(env("PGPU_WATCHDOG_CMDS", "200000")),
                   help="commands a context may execute before it is declared hung [GVTSIM_PGPU_WATCHDOG_CMDS]")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim pgpu``."""
    args = parser().parse_args(argv)
    if args.aperture_mb > 0 and args.aperture_mb & (args.aperture_mb - 1):
        print(f"gvtsim pgpu: --aperture-mb {args.aperture_mb} is not a power of two: the aperture is BAR2, and a "
              "PCI BAR sizes to a power of two (use 256, 512 or 1024)", file=sys.stderr)
        return 2
    if args.gm_mb <= 0 or not 0 < args.aperture_mb <= args.gm_mb or args.gpu_speed <= 0 or args.time_scale < 0:
        print("gvtsim pgpu: need 0 < aperture-mb <= gm-mb, gpu-speed > 0, time-scale >= 0", file=sys.stderr)
        return 2
    return run_service(PgpuService, args)


if __name__ == "__main__":
    sys.exit(main())
