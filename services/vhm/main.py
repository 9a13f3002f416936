"""``gvtsim vhm``: run the hypervisor service module (VM table, guest memory, ioreq routing, MPT services).

    gvtsim vhm --bind tcp://127.0.0.1:5555 --mem-path /dev/shm/gvtsim-machine.mem --mem-size-mb 2048

vhm creates the machine memory file (every other process of the host stack maps it) and owns the host's
only frame allocator. Prints one JSON ready line with the bound ``endpoint``; logs go to stderr.
"""

from __future__ import annotations

import argparse

from ..common.service import common_args, env, mem_args, run_service
from .service import VhmService
from ..common.helptext import UserHelpFormatter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """vhm's flags: the common ones, machine memory, the bind endpoint and a few limits."""
    p = argparse.ArgumentParser(prog="gvtsim vhm", description=__doc__,
                                formatter_class=UserHelpFormatter)
    common_args(p, "vhm")
    mem_args(p)
    p.add_argument("--bind", default=env("VHM_BIND", "tcp://127.0.0.1:5555"),
                   help="ROUTER endpoint for guests, device models and probes [GVTSIM_VHM_BIND]")
    p.add_argument("--ram-max-run", type=int, default=int(env("VHM_RAM_MAX_RUN", "16")),
                   help="longest contiguous machine run in a VM's RAM map (non-identity, fragmented) "
                        "[GVTSIM_VHM_RAM_MAX_RUN]")
    p.add_argument("--ioreq-timeout", type=float, default=float(env("VHM_IOREQ_TIMEOUT", "30")),
                   help="seconds a request may stay PROCESSING at a live client before it fails with "
                        "ERROR timeout [GVTSIM_VHM_IOREQ_TIMEOUT]")
    p.add_argument("--create-rate", type=float, default=float(env("VHM_CREATE_RATE", "100")),
                   help="VM creations admitted per second after a burst (a boot storm is spread out so running "
                        "VMs keep their ioreq latency) [GVTSIM_VHM_CREATE_RATE]")
    p.add_argument("--create-burst", type=int, default=int(env("VHM_CREATE_BURST", "16")),
                   help="VM creations admitted at once before --create-rate applies [GVTSIM_VHM_CREATE_BURST]")
    p.add_argument("--create-inflight", type=int, default=int(env("VHM_CREATE_INFLIGHT", "8")),
                   help="vGPU creations waiting at the device model at most [GVTSIM_VHM_CREATE_INFLIGHT]")
    p.add_argument("--vgpu-timeout", type=float, default=float(env("VHM_VGPU_TIMEOUT", "5")),
                   help="seconds to wait for the device model to create/destroy/reset a vGPU "
                        "[GVTSIM_VHM_VGPU_TIMEOUT]")
    p.add_argument("--state-dir", default=env("VHM_STATE_DIR", ""),
                   help="where vhm keeps its state (VMs, memory maps, ioreq slots, clients) so that a vhm "
                        "killed and started again on the same machine memory carries every VM on "
                        "(docs/STATE.md); off: keep none (a restart then resets every VM) "
                        "[GVTSIM_VHM_STATE_DIR, default: <--mem-path>.vhm.state]")
    p.add_argument("--client-grace", type=float, default=float(env("VHM_CLIENT_GRACE", "15")),
                   help="seconds a device model whose connection ended keeps its state (ranges, frames, "
                        "waiting ioreqs) for a reconnect with the same epoch, and a restarted vhm waits for "
                        "the guests of the VMs it restored (a service restarted on a saturated host serves "
                        "again only after seconds); 0: lost at once "
                        "[GVTSIM_VHM_CLIENT_GRACE]")
    args = p.parse_args(argv)
    if args.client_grace < 0:
        p.error("--client-grace must be >= 0")
    if args.ram_max_run < 1:
        p.error("--ram-max-run must be >= 1")
    if args.create_rate <= 0 or args.create_burst < 1 or args.create_inflight < 1:
        p.error("--create-rate must be > 0, --create-burst and --create-inflight >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim vhm``."""
    return run_service(VhmService, parse_args(argv))
