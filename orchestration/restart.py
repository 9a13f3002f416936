"""``gvtsim restart SERVICE``: restart one service of the run that `gvtsim up` started.

    gvtsim restart gvt                 the gvt of host stack 0
    gvtsim restart pgpu --stack 1      the pgpu of host stack 1
    gvtsim restart s0/guest.1          one process by its name in `gvtsim status`

The process is stopped (SIGTERM, SIGKILL after a grace period) if it still runs, then started again with
the same command and environment, and waited for until it is ready and healthy. Use it after a process
died or after `gvtsim chaos kill SERVICE` without --restart-after. Exit status: 0 restarted and healthy,
1 it did not come back (the reason and its log are printed), 2 no such service, 3 nothing is up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from ..services.common.helptext import UserHelpFormatter
from .launcher import LaunchError, ProcState, RunState, alive, default_run_dir, group_members, signal_group, \
    spawn, update_proc, wait_ready


def find(state: RunState, name: str, stack: int | None) -> ProcState:
    """The recorded process named ``name`` (``s0/gvt``), or the one process of service ``name`` in ``stack``.

    Raises:
        LookupError: no such process, or several (the message lists them).
    """
    if name in state.procs:
        return state.procs[name]
    matches = [p for p in state.procs.values() if p.service == name and p.stack == (stack or 0)]
    if len(matches) == 1:
        return matches[0]
    services = sorted({p.service for p in state.procs.values()})
    if not matches:
        raise LookupError(f"no service {name!r} in stack {stack or 0}; services: {', '.join(services)}; "
                          f"processes: {', '.join(sorted(state.procs))}")
    raise LookupError(f"{name!r} has {len(matches)} processes in stack {stack or 0}: "
                      f"{', '.join(sorted(p.name for p in matches))}; name one of them")


async def restart(run_dir: str, proc: ProcState, grace: float = 3.0, timeout: float = 30.0) -> float:
    """Stop ``proc`` if it runs, start it again, wait until it is ready and healthy. Returns the seconds taken.

    Raises:
        LaunchError: it did not come back within ``timeout``.
    """
    t0 = time.monotonic()
    if alive(proc) or group_members(proc.pid):
        signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while group_members(proc.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if group_members(proc.pid):
            signal_group(proc, signal.SIGKILL)
    proc.restarts += 1
    spawn(proc)
    update_proc(run_dir, proc)
    await wait_ready(proc, timeout)
    return time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim restart``."""
    p = argparse.ArgumentParser(prog="gvtsim restart", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("service", help="a service (vhm, gvt, pgpu, guest) or a process name from `gvtsim status`")
    p.add_argument("--stack", type=int, default=None, help="host stack of SERVICE [0]")
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for it to become healthy [30]")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args(argv)
    state = RunState.load(args.run_dir)
    if state is None:
        print(f"gvtsim restart: nothing is up in {args.run_dir}: start it with `gvtsim up`", file=sys.stderr)
        return 3
    try:
        proc = find(state, args.service, args.stack)
    except LookupError as err:
        print(f"gvtsim restart: {err}", file=sys.stderr)
        return 2
    old = proc.pid
    try:
        seconds = asyncio.run(restart(args.run_dir, proc, timeout=args.timeout))
    except LaunchError as err:
        print(json.dumps({"restarted": proc.name, "ok": False, "error": str(err)}) if args.json else
              f"gvtsim restart: {err}", file=sys.stdout if args.json else sys.stderr)
        return 1
    result = {"restarted": proc.name, "ok": True, "old_pid": old, "pid": proc.pid, "seconds": round(seconds, 3)}
    print(json.dumps(result) if args.json else
          f"{proc.name} restarted: pid {old} -> {proc.pid}, healthy in {seconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
