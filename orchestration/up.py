"""``gvtsim up``: the docker-compose.yml topology as local processes, no containers needed.

    gvtsim up                          one host stack (vhm, pgpu, gvt) and its guests
    gvtsim up --stacks 2 --no-guests   two host stacks, each with its own ports and machine memory
    GVTSIM_TRACE=/tmp/tr gvtsim up     every service records trace events (see gvtsim trace)

Services start in compose's order (a service waits until the ones it depends on are healthy), each in its
own process group, with logs in RUN_DIR/logs. gvtsim status, ctl, top, metrics, restart, chaos and load find
the run there; gvtsim down stops it all (SIGTERM, then SIGKILL) and removes its memory files. Every service
serves Prometheus metrics on a free loopback port (gvtsim metrics lists them). Exit status: 0 up and
healthy, 1 a service did not start (the reason is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from ..services.common.gpu_profiles import PROFILES
from .compose import ComposeError
from ..services.common import curve
from .launcher import DEFAULT_COMPOSE, LaunchError, default_run_dir, up
from ..services.common.helptext import UserHelpFormatter


def main(argv: list[str] | None = None) -> int:
    """``gvtsim up``: bring the compose topology up as local processes."""
    p = argparse.ArgumentParser(prog="gvtsim up", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("-f", "--file", default=DEFAULT_COMPOSE, help="compose file [docker-compose.yml]")
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"state and logs [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--stacks", type=int, default=int(os.environ.get("GVTSIM_STACKS", "1")),
                   help="host stacks (vhm+pgpu+gvt+guests each, own ports and memory) [GVTSIM_STACKS or 1]")
    p.add_argument("--port-offset", default="auto", help="added to the compose ports; auto: 0 if free [auto]")
    p.add_argument("--scale", action="append", default=[], metavar="SERVICE=N", help="override replicas")
    p.add_argument("--gpu-profile", default=os.environ.get("GVTSIM_GPU_PROFILE", "real"), choices=sorted(PROFILES),
                   help="GPU profile of every stack: real (the hardware's: 4 types, 7 vGPUs) or dense "
                        "(simulated: 512 small vGPUs; docs/GPU_PROFILES.md) [GVTSIM_GPU_PROFILE or real]")
    p.add_argument("--no-guests", action="store_true", help="start vhm, pgpu and gvt only")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for each service to become healthy")
    p.add_argument("--insecure", action="store_true", default=curve.insecure_from_env(),
                   help="CURVE off on every socket: debugging only, every service logs a loud warning "
                        "[GVTSIM_INSECURE]")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        replicas = {k: int(v) for k, _, v in (s.partition("=") for s in args.scale)}
    except ValueError:
        p.error("--scale takes SERVICE=N")
    t0 = time.monotonic()
    try:
        state = up(args.file, args.run_dir, args.stacks, args.port_offset, not args.no_guests, replicas, args.timeout,
                   gpu_profile=args.gpu_profile, insecure=args.insecure)
    except (LaunchError, ComposeError) as err:
        print(f"gvtsim up: {err}", file=sys.stderr)
        return 1
    summary = {"run_dir": state.run_dir, "stacks": state.stacks, "gpu_profile": args.gpu_profile,
               "seconds": round(time.monotonic() - t0, 2),
               "procs": {n: {"pid": pr.pid, "endpoint": pr.endpoint} for n, pr in state.procs.items()}}
    if args.json:
        print(json.dumps(summary))
    else:
        for n, pr in state.procs.items():
            print(f"{n:<16} pid {pr.pid:<7} {pr.endpoint or ''}")
        print("CURVE: OFF (--insecure): any local process can connect and claim any role" if args.insecure else
              f"CURVE: on, keys in {state.curve_env().get(curve.ENV_KEYS, '?')}")
        print(f"up: {len(state.stacks)} stack(s) of GPU profile {args.gpu_profile}, {len(state.procs)} processes in "
              f"{summary['seconds']} s "
              f"(state in {state.run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
