"""``gvtsim gvt``: run the GVT device model (vGPUs, MMIO/GGTT emulation, management API)."""

from __future__ import annotations

import argparse
import sys

from ..common.gpu_profiles import PROFILES
from ..common.service import common_args, env, mem_args, run_service
from .service import GvtService
from ..common.helptext import UserHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """Flags; every default comes from a GVTSIM_* environment variable."""
    p = argparse.ArgumentParser(prog="gvtsim gvt", description=__doc__, formatter_class=UserHelpFormatter)
    common_args(p, "gvt")
    mem_args(p)
    p.add_argument("--bind", default=env("GVT_BIND", "tcp://127.0.0.1:5556"),
                   help="management endpoint (gvtsim ctl, health probes) [GVTSIM_GVT_BIND]")
    p.add_argument("--vhm", default=env("VHM_ENDPOINT", "tcp://127.0.0.1:5555"),
                   help="vhm endpoint [GVTSIM_VHM_ENDPOINT]")
    p.add_argument("--pgpu", default=env("PGPU_ENDPOINT", "tcp://127.0.0.1:5557"),
                   help="pgpu endpoint [GVTSIM_PGPU_ENDPOINT]")
    p.add_argument("--gpu-profile", default=env("GPU_PROFILE", "real"), choices=sorted(PROFILES),
                   help="GPU profile assumed until pgpu reports its own (docs/GPU_PROFILES.md: real is the "
                        "hardware's, dense a simulated one with 512 small vGPUs) [GVTSIM_GPU_PROFILE]")
    p.add_argument("--enable-oos", action="store_true", default=env("ENABLE_OOS", "") in ("1", "true", "yes"),
                   help="PPGTT out-of-sync pages: PTE tables written twice lose write protection until the "
                        "next submission (off by default, as upstream) [GVTSIM_ENABLE_OOS]")
    p.add_argument("--enable-pvmmio", type=lambda v: int(v, 0), default=env("ENABLE_PVMMIO", "1"),
                   help="ACRN's i915.enable_pvmmio on the host: the PVMMIO levels a guest may be granted "
                        "(1 = PVMMIO_ELSP_SUBMIT, the only one gvtsim implements; 0 = none; docs/PV.md) "
                        "[GVTSIM_ENABLE_PVMMIO]")
    p.add_argument("--state-dir", default=env("GVT_STATE_DIR", ""),
                   help="where each vGPU's state is kept so that a restarted gvt with the same --id carries its "
                        "vGPUs on (docs/STATE.md); 'off' keeps none (a restart resets every guest's GPU) "
                        "[GVTSIM_GVT_STATE_DIR, default: beside --mem-path, in the machine memory]")
    p.add_argument("--pgpu-grace", type=float, default=float(env("PGPU_GRACE", "10")),
                   help="seconds the workloads on the GPU wait for pgpu to come back after its connection is lost "
                        "(a restarted pgpu gets them again; a reconnected one finishes them) before their guests "
                        "see a hang [GVTSIM_PGPU_GRACE]")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim gvt``."""
    return run_service(GvtService, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
