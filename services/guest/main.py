"""``gvtsim guest``: a guest process hosting one or many VMs."""

from __future__ import annotations

import argparse
import sys

from ..common.service import common_args, env, mem_args, run_service
from .service import GuestService


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim guest", description=__doc__)
    common_args(p, "guest")
    mem_args(p)
    p.add_argument("--vhm", default=env("VHM_ENDPOINT", "tcp://127.0.0.1:5555"), help="[GVTSIM_VHM_ENDPOINT]")
    p.add_argument("--vms", type=int, default=int(env("VMS", "1")), help="VMs in this process [GVTSIM_VMS]")
    p.add_argument("--vcpus", type=int, default=int(env("VCPUS", "2")), help="vCPUs per VM [GVTSIM_VCPUS]")
    p.add_argument("--ram-mb", type=int, default=int(env("RAM_MB", "16")), help="RAM per VM [GVTSIM_RAM_MB]")
    p.add_argument("--vgpu-types", default=env("VGPU_TYPES", "GVTg_V5_8"),
                   help="comma-separated vGPU types, cycled over the VMs [GVTSIM_VGPU_TYPES]")
    p.add_argument("--workloads", type=int, default=int(env("WORKLOADS", "50")),
                   help="verified workloads per VM [GVTSIM_WORKLOADS]")
    p.add_argument("--name-prefix", default=env("NAME_PREFIX", "vm"), help="[GVTSIM_NAME_PREFIX]")
    p.add_argument("--ioreq-timeout", type=float, default=float(env("IOREQ_TIMEOUT", "10")),
                   help="seconds before a trapped access is declared hung [GVTSIM_IOREQ_TIMEOUT]")
    return run_service(GuestService, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
