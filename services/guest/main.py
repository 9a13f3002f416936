"""``gvtsim guest``: a guest process hosting one or many VMs."""

from __future__ import annotations

import argparse
import os
import sys

from ..common.service import common_args, env, mem_args, run_service
from .hostile import ATTACKS
from .service import GuestService
from ..common.helptext import UserHelpFormatter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim guest", description=__doc__, formatter_class=UserHelpFormatter)
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
    p.add_argument("--mix", default=env("MIX", "store,fill,copy,aperture_copy"),
                   help="workload kinds, cycled per vCPU (each runs on the engines that support it): store, fill, "
                        "copy, aperture_copy, ppgtt_store, ppgtt_fill, ppgtt_remap [GVTSIM_MIX]")
    p.add_argument("--duration", type=float, default=float(env("DURATION", "0")),
                   help="run workloads for this many seconds instead of --workloads per VM; SIGUSR1 ends the "
                        "run early (each VM finishes its workload and reports done) [GVTSIM_DURATION]")
    p.add_argument("--think", type=float, default=float(env("THINK", "0")),
                   help="seconds each vCPU pauses between two workloads, on average (0: back to back; a load of "
                        "hundreds of VMs on a small machine paces them so) [GVTSIM_THINK]")
    p.add_argument("--hostile", default=env("HOSTILE", ""), choices=["", *sorted(ATTACKS)],
                   help="after boot, try one attack on GVT (hostile.py) and report it as a 'hostile' event "
                        "[GVTSIM_HOSTILE]")
    p.add_argument("--hostile-target", default=env("HOSTILE_TARGET", ""),
                   help="what the attack aims at, as JSON: another VM's canary_gm, canary_mfn, ctx_gm, ring_gm "
                        "(the victim's integrity_before targets); default: addresses outside its own slices "
                        "[GVTSIM_HOSTILE_TARGET]")
    p.add_argument("--integrity", action="store_true", default=env("INTEGRITY", "") in ("1", "true", "yes"),
                   help="keep canary pages and checksum their RAM, GGTT and PPGTT views before and after the "
                        "workloads (events integrity_before / integrity_after) [GVTSIM_INTEGRITY]")
    p.add_argument("--recover", action="store_true", default=env("RECOVER", "") in ("1", "true", "yes"),
                   help="on a GPU reset (hang, device model or GPU gone) re-create the VM and go on [GVTSIM_RECOVER]")
    p.add_argument("--stats-interval", type=float, default=float(env("STATS_INTERVAL", "0")),
                   help="emit a 'stats' JSON event every this many seconds (0: never) [GVTSIM_STATS_INTERVAL]")
    p.add_argument("--pv", action="store_true", default=env("PV", "") in ("1", "true", "yes"),
                   help="use the paravirtualized path when the host accepts the shared page [GVTSIM_PV]")
    p.add_argument("--pv-version", type=int, default=int(env("PV_VERSION", "1")),
                   help="shared-page format version this guest speaks (a newer one than the host's falls back)")
    p.add_argument("--pvmmio", type=lambda v: int(v, 0), default=env("PVMMIO", "0"),
                   help="ACRN's i915.enable_pvmmio in the guest: the PVMMIO levels to ask gvt for (1 = "
                        "PVMMIO_ELSP_SUBMIT: one trapped ELSP write per submission; 0 = do not ask; docs/PV.md) "
                        "[GVTSIM_PVMMIO]")
    p.add_argument("--pv-corrupt", action="store_true", help="write a corrupt shared-page header (tests)")
    p.add_argument("--hang-timeout", type=float, default=float(env("HANG_TIMEOUT", "3")),
                   help="seconds without a completion before a request is declared hung [GVTSIM_HANG_TIMEOUT]")
    p.add_argument("--vhm-grace", type=float, default=float(env("VHM_GRACE", "10")),
                   help="seconds the VMs wait for vhm to come back (the same vhm, restarted with its state: "
                        "their trapped accesses are sent again) before they take a GPU reset "
                        "[GVTSIM_VHM_GRACE]")
    p.add_argument("--ioreq-timeout", type=float, default=float(env("IOREQ_TIMEOUT", "20")),
                   help="seconds before a trapped access is declared hung (longer than vhm's --client-grace, "
                        "for which vhm holds an access to a device model that is restarting) "
                        "[GVTSIM_IOREQ_TIMEOUT]")
    p.add_argument("--display", action="store_true", default=env("DISPLAY_ON", "") in ("1", "true", "yes"),
                   help="give every VM a screen: modeset on the virtual monitor, animated frames drawn by the GPU "
                        "and page-flipped on vblank [GVTSIM_DISPLAY_ON]")
    p.add_argument("--display-tiling", default=env("DISPLAY_TILING", "alternate"),
                   choices=["linear", "x", "alternate"],
                   help="framebuffer layout (alternate: even VMs linear, odd VMs X-tiled) [GVTSIM_DISPLAY_TILING]")
    p.add_argument("--display-fps", type=float, default=float(env("DISPLAY_FPS", "4")),
                   help="animated frames per second [GVTSIM_DISPLAY_FPS]")
    p.add_argument("--display-frames", type=int, default=int(env("DISPLAY_FRAMES", "0")),
                   help="stop after this many animated frames, leaving the last one on screen (0: never)")
    p.add_argument("--display-dump", default="",
                   help="after the last frame, write the guest's own copy of the screen (XRGB8888 rows) to "
                        "DIR/NAME.xrgb")
    p.add_argument("--nice", type=int, default=int(env("NICE", "0")),
                   help="lower this process's CPU priority by this much (os.nice, 0..19): a load generator's "
                        "guests at 10 leave the CPU to the host services they load when both want it "
                        "[GVTSIM_NICE]")
    args = p.parse_args(argv)
    if args.nice:
        os.nice(max(0, min(19, args.nice)))  # before the event loop: every thread libzmq starts inherits it
    return run_service(GuestService, args)


if __name__ == "__main__":
    sys.exit(main())
