"""Fault injection: ``gvtsim chaos kill SERVICE [--restart-after S]`` and ``gvtsim chaos schedule``.

    gvtsim chaos kill gvt --restart-after 1          SIGKILL stack 0's gvt, start it again 1 s later
    gvtsim chaos kill guest --stack 1                 SIGKILL a guest process of stack 1 (no restart)
    gvtsim chaos schedule --duration 60 --kill gvt:2,pgpu:1,guest:2

Any service may be SIGKILLed and restarted at any moment, and the topology serves again. A kill picks one
live process (or container) of SERVICE (vhm, gvt, pgpu, guest), SIGKILLs its process group, optionally
restarts it after S seconds, and measures the recovery: seconds from the restart to the new incarnation's
ready line and healthcheck (ready), and to the whole host stack answering healthy again (stack serving;
the bound is 5 s). A schedule spreads SERVICE:COUNT kills at seeded random times over a run, each in its
own window (restart delay + recovery budget), so recoveries never overlap. With --stacks (and always in
`gvtsim load`, which runs several host stacks) each kill names a host stack, the kills are dealt evenly over
the stacks, and the windows are per stack: a kill takes down the service of one stack only, so kills on
different stacks may overlap in time while each stack recovers from one kill at a time.
--plan prints the schedule without killing anything. --compose acts on a docker compose project's
containers (docker kill / docker start) instead of the native run; a compose project is one host stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .launcher import LaunchError, ProcState, RunState, alive, default_run_dir, group_members, healthy, signal_group, \
    spawn, update_proc, wait_ready
from .status import compose_cmd
from ..services.common.helptext import UserHelpFormatter

RECOVERY_BUDGET = 5.0  # seconds the topology has to serve again after a restart


class ChaosError(ValueError):
    """A schedule that cannot fit, an unknown service, nothing to kill."""


@dataclass(frozen=True)
class PlannedKill:
    """Kill one process of ``service`` at ``at`` seconds into the run; restart it ``restart_after`` later."""

    at: float
    service: str
    restart_after: float | None
    stack: int | None = None  # the host stack whose service is killed (None: any stack)


@dataclass
class KillRecord:
    """What one kill did and how long recovery took (seconds; None = did not happen)."""

    service: str
    target: str = ""
    at: float = 0.0  # seconds into the run
    old_pid: int | str = 0
    new_pid: int | str = 0
    restart_after: float | None = None
    ready_s: float | None = None  # restart -> restarted service ready and healthy
    serving_s: float | None = None  # restart -> every service of its stack healthy again
    recovered: bool = False
    error: str = ""
    vms_reset: int = 0  # filled by gvtsim load from guests' vm_reset / vm_recovered events
    vms_recovered_s: float | None = None
    stack: int | None = None  # the host stack of the killed process (None: not known)
    serving_at: float | None = None  # seconds into the run when its stack was serving again


def parse_kills(spec: str) -> dict[str, int]:
    """``"gvt:2,pgpu:2,guest"`` -> ``{"gvt": 2, "pgpu": 2, "guest": 1}``.

    Raises:
        ChaosError: a malformed item or a count below 1.
    """
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition(":")
        if not name or (count and not count.isdigit()) or int(count or 1) < 1:
            raise ChaosError(f"bad kill spec {item!r}: want SERVICE[:COUNT]")
        out[name] = out.get(name, 0) + int(count or 1)
    return out


def plan_schedule(duration: float, kills: dict[str, int], restart_after: float | None, seed: int,
                  recovery_budget: float = RECOVERY_BUDGET, margin: float = 2.0,
                  stacks: Sequence[int] | None = None) -> list[PlannedKill]:
    """Seeded random kill times, sorted by time.

    Without ``stacks`` the run (minus ``margin`` at each end) is cut into one window per kill, each at
    least restart delay + ``recovery_budget`` long, and each kill falls at a random point of its window
    that still leaves that much room, so recoveries never overlap.

    With ``stacks`` (the host stacks of the run) each kill names one of them: the kills, by service, are
    dealt round-robin over a seeded order of the stacks, so every stack gets as many kills as the others
    (one more at most) and each service's kills go to as many different stacks as they can. The windows
    are then cut per stack: a kill takes down the service of its own stack only (each stack has its own
    vhm, gvt and pgpu), so a stack recovers from one kill at a time while kills on different stacks may
    overlap in time.

    Raises:
        ChaosError: the kills do not fit in ``duration`` (the message says what fits).
    """
    rng = random.Random(seed)
    order = [name for name, n in sorted(kills.items()) for _ in range(n)]
    if not stacks:
        rng.shuffle(order)
    if not order:
        return []
    slot = (restart_after or 0.0) + recovery_budget
    span = duration - 2 * margin
    fit = max(0, int(span / slot + 1e-9))  # kills that fit one after another in one stack's windows
    need = f"{slot:g}s each plus {margin:g}s margins"
    none = f"no kill fits (one needs {slot + 2 * margin:.0f}s)"
    if not stacks:
        if len(order) > fit:
            raise ChaosError(f"{len(order)} kills need {len(order) * slot + 2 * margin:.0f}s ({need}); the run "
                             f"lasts {duration:.0f}s: {f'at most {fit} kills fit' if fit else none}, or give a "
                             f"--duration of at least {len(order) * slot + 2 * margin:.0f}s")
        window = span / len(order)
        return [PlannedKill(at=round(margin + i * window + rng.uniform(0, window - slot), 3), service=name,
                            restart_after=restart_after) for i, name in enumerate(order)]
    ids = sorted(set(stacks))
    rng.shuffle(ids)
    per_stack: dict[int, list[str]] = {k: [] for k in ids}
    for i, name in enumerate(order):
        per_stack[ids[i % len(ids)]].append(name)
    most = max(len(v) for v in per_stack.values())
    if most > fit:
        raise ChaosError(f"{len(order)} kills over {len(ids)} host stack(s) put {most} on one stack, and {most} "
                         f"kills need {most * slot + 2 * margin:.0f}s ({need}); the run lasts {duration:.0f}s: "
                         f"{f'at most {fit * len(ids)} kills fit ({fit} per stack)' if fit else none}, "
                         f"or give a --duration of at least {most * slot + 2 * margin:.0f}s")
    plan = []
    for stack in sorted(per_stack):
        names = per_stack[stack]
        rng.shuffle(names)
        window = span / len(names) if names else span
        plan += [PlannedKill(at=round(margin + i * window + rng.uniform(0, window - slot), 3), service=name,
                             restart_after=restart_after, stack=stack) for i, name in enumerate(names)]
    return sorted(plan, key=lambda k: (k.at, k.stack))


# ------------------------------------------------------------------------------------------------- native
class NativeChaos:
    """Kills and restarts processes of a native run (the launcher's state)."""

    def __init__(self, run_dir: str, seed: int = 0, owners: dict[str, str] | None = None,
                 stacks: set[int] | None = None, respawn: Callable[[ProcState], ProcState] | None = None) -> None:
        self.run_dir = run_dir
        self.rng = random.Random(seed)
        self.owners = owners or {}  # service -> the only owner ("up" / "load") whose processes may be killed
        self.stacks = stacks  # only these host stacks (None: any)
        self.respawn = respawn  # lets gvtsim load adjust a guest's argv (remaining duration) on restart

    def targets(self, service: str, stack: int | None = None) -> list[ProcState]:
        """Live processes of ``service`` (optionally of one stack and owner)."""
        state = RunState.load(self.run_dir)
        if state is None:
            raise ChaosError(f"nothing is up in {self.run_dir}")
        owner = self.owners.get(service)
        return [p for p in state.procs.values() if p.service == service and alive(p)
                and (stack is None or p.stack == stack) and (self.stacks is None or p.stack in self.stacks)
                and (owner is None or p.owner == owner)]

    async def kill(self, service: str, restart_after: float | None, stack: int | None = None,
                   t0: float | None = None) -> KillRecord:
        """SIGKILL one random live process of ``service``; restart it after ``restart_after`` seconds."""
        rec = KillRecord(service=service, restart_after=restart_after)
        procs = self.targets(service, stack)
        if not procs:
            state = RunState.load(self.run_dir)
            known = sorted({p.service for p in state.procs.values()}) if state else []
            if service not in known:
                raise ChaosError(f"no service {service!r} in this run; services: {', '.join(known)}")
            rec.error = f"no live {service} process to kill" + (f" in stack {stack}" if stack is not None else "")
            return rec
        proc = self.rng.choice(sorted(procs, key=lambda p: p.name))
        rec.target, rec.old_pid, rec.stack = proc.name, proc.pid, proc.stack
        rec.at = round(time.monotonic() - t0, 3) if t0 is not None else 0.0
        signal_group(proc, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while group_members(proc.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if restart_after is None:
            rec.recovered = True
            return rec
        await asyncio.sleep(restart_after)  # the fault's duration: the service stays down this long
        if self.respawn is not None:
            proc = self.respawn(proc)
        proc.restarts += 1
        spawn(proc)
        update_proc(self.run_dir, proc)
        rec.new_pid = proc.pid
        t_restart = time.monotonic()
        try:
            await wait_ready(proc, timeout=20.0)
            rec.ready_s = round(time.monotonic() - t_restart, 3)
            await self._stack_healthy(proc.stack, timeout=20.0)
            rec.serving_s = round(time.monotonic() - t_restart, 3)
            rec.serving_at = round(time.monotonic() - t0, 3) if t0 is not None else None
            rec.recovered = True
        except LaunchError as err:
            rec.error = str(err)
        except TimeoutError:
            rec.error = f"{proc.name} restarted, but stack {proc.stack} was not healthy again within 20 s " \
                        "(`gvtsim status` shows which service is not)"
        return rec

    async def _stack_healthy(self, stack: int, timeout: float) -> None:
        state = RunState.load(self.run_dir)
        procs = [p for p in (state.procs.values() if state else []) if p.stack == stack and p.endpoint]
        async with asyncio.timeout(timeout):
            while not all(await asyncio.gather(*(healthy(p) for p in procs))):
                await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------------------ compose
class ComposeChaos:
    """Kills and restarts containers of a compose project (``docker kill -s KILL`` / ``docker start``)."""

    def __init__(self, project: str | None, files: list[str], seed: int = 0) -> None:
        self.base = compose_cmd(project, files)
        self.rng = random.Random(seed)

    def _run(self, *args: str, timeout: float = 60.0) -> str:
        r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise ChaosError(f"{' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def _health(self, container: str) -> str:
        return self._run("docker", "inspect", "-f",
                         "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", container).strip()

    async def kill(self, service: str, restart_after: float | None, stack: int | None = None,
                   t0: float | None = None) -> KillRecord:
        """SIGKILL one random running container of ``service``; ``docker start`` it after ``restart_after``.
        A compose project is one host stack: ``stack`` may only be None or 0."""
        if stack not in (None, 0):
            raise ChaosError(f"a compose project is one host stack (0); there is no stack {stack}")
        rec = KillRecord(service=service, restart_after=restart_after, stack=0)
        ids = self._run(*self.base, "ps", "-q", service).split()
        if not ids:
            rec.error = f"no running {service} container to kill"
            return rec
        cid = self.rng.choice(sorted(ids))
        rec.target = rec.old_pid = cid[:12]
        rec.at = round(time.monotonic() - t0, 3) if t0 is not None else 0.0
        self._run("docker", "kill", "-s", "KILL", cid)
        if restart_after is None:
            rec.recovered = True
            return rec
        await asyncio.sleep(restart_after)
        self._run("docker", "start", cid)
        rec.new_pid = cid[:12]
        t_restart = time.monotonic()
        try:
            async with asyncio.timeout(30.0):
                while self._health(cid) not in ("running healthy", "running"):
                    await asyncio.sleep(0.2)
                rec.ready_s = round(time.monotonic() - t_restart, 3)
                while not all(self._health(c) in ("running healthy", "running")
                              for c in self._run(*self.base, "ps", "-q").split()):
                    await asyncio.sleep(0.2)
            rec.serving_s = round(time.monotonic() - t_restart, 3)
            rec.serving_at = round(time.monotonic() - t0, 3) if t0 is not None else None
            rec.recovered = True
        except (TimeoutError, ChaosError) as err:
            rec.error = f"{cid[:12]} not healthy again: {err or 'timeout'}"
        return rec


async def run_schedule(backend: NativeChaos | ComposeChaos, plan: list[PlannedKill], t0: float,
                       on_record: Callable[[KillRecord], None] | None = None) -> list[KillRecord]:
    """Carry out ``plan`` (times relative to ``t0``, a monotonic instant). Returns one record per kill, in
    the plan's order. The kills of one stack run one after another (a kill waits until the previous one on
    its stack has recovered, should that overrun its window); those of different stacks run concurrently,
    so they may overlap. ``on_record`` sees each record as its kill ends."""
    records: dict[int, KillRecord] = {}

    async def lane(kills: list[tuple[int, PlannedKill]]) -> None:
        for i, k in kills:
            await asyncio.sleep(max(0.0, t0 + k.at - time.monotonic()))
            rec = await backend.kill(k.service, k.restart_after, k.stack, t0=t0)
            records[i] = rec
            if on_record is not None:
                on_record(rec)

    lanes: dict[int | None, list[tuple[int, PlannedKill]]] = {}
    for i, k in enumerate(plan):
        lanes.setdefault(k.stack, []).append((i, k))
    tasks = [asyncio.ensure_future(lane(ks)) for ks in lanes.values()]
    try:
        await asyncio.gather(*tasks)
    finally:  # a lane that failed (or a cancel) ends the others too
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return [records[i] for i in sorted(records)]


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim chaos``."""
    p = argparse.ArgumentParser(prog="gvtsim chaos", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--compose", action="store_true", help="act on a docker compose project")
    p.add_argument("-p", "--project", default=None, help="compose project name [compose's default]")
    p.add_argument("-f", "--file", action="append", default=[], help="compose file(s) [docker-compose.yml]")
    p.add_argument("--seed", type=int, default=int(time.time()), help="which process and when [the time]")
    p.add_argument("--swarm", action="store_true", help="act on the host stacks of a Docker Swarm (kill only)")
    p.add_argument("--engine", action="append", default=[], metavar="NODE=URL",
                   help="swarm: the engine of a node, for the kill [its gvtsim.engine label]")
    p.add_argument("--json", action="store_true", help="one JSON document per kill")
    sub = p.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kill", help="SIGKILL one process/container of SERVICE (vhm, gvt, pgpu, guest)")
    k.add_argument("service", help="vhm, gvt, pgpu or guest")
    k.add_argument("--restart-after", type=float, default=None, metavar="SECONDS",
                   help="start it again after this long [never: `gvtsim restart SERVICE` later]")
    k.add_argument("--stack", default=None, help="only this host stack (native: its number; swarm: its name) [any]")
    s = sub.add_parser("schedule", help="random kills of named services over a run")
    s.add_argument("--duration", type=float, required=True, help="seconds the schedule covers")
    s.add_argument("--kill", required=True, metavar="SVC:N,...", help="e.g. gvt:2,pgpu:2,guest:2")
    s.add_argument("--restart-after", type=float, default=1.0, help="seconds each service stays down [1]")
    s.add_argument("--stacks", default=None, metavar="N|K,...",
                   help="plan per host stack over stacks 0..N-1 (or the ones listed): each kill names a stack, "
                        "kills are dealt evenly, and only kills of one stack never overlap [one window per kill "
                        "over the whole run, any stack]")
    s.add_argument("--plan", action="store_true", help="print the schedule (one line per kill) and kill nothing")
    args = p.parse_args(argv)
    if args.swarm:
        from .swarm import kill_main
        if args.cmd != "kill":
            p.error("--swarm supports kill only")
        return kill_main(args)
    if getattr(args, "stack", None) is not None:
        if not str(args.stack).isdigit():
            p.error(f"--stack {args.stack}: a native host stack is a number")
        args.stack = int(args.stack)
    stacks: list[int] | None = None
    if getattr(args, "stacks", None) is not None:
        items = [x.strip() for x in str(args.stacks).split(",") if x.strip()]
        if not items or not all(x.isdigit() for x in items) or (len(items) == 1 and int(items[0]) < 1):
            p.error(f"--stacks {args.stacks}: want a count of host stacks (N >= 1) or stack numbers K,...")
        stacks = list(range(int(items[0]))) if len(items) == 1 else sorted({int(x) for x in items})
        if args.compose and stacks != [0]:
            p.error("--stacks: a compose project is one host stack")
    if getattr(args, "plan", False):
        try:
            plan = plan_schedule(args.duration, parse_kills(args.kill), args.restart_after, args.seed,
                                 stacks=stacks)
        except ChaosError as err:
            print(f"gvtsim chaos: {err}", file=sys.stderr)
            return 2
        for pk in plan:
            print(f"t={pk.at}s kill {pk.service}" + (f" of stack {pk.stack}" if pk.stack is not None else "")
                  + (f", restart after {pk.restart_after:g} s" if pk.restart_after is not None else ""))
        print(f"{len(plan)} kills over {args.duration:g} s" + (f" on {len(stacks)} host stack(s): at most "
              f"{max(sum(pk.stack == n for pk in plan) for n in stacks)} per stack" if stacks else "")
              + f" (seed {args.seed}); nothing was killed")
        return 0
    backend: NativeChaos | ComposeChaos = ComposeChaos(args.project, args.file, args.seed) if args.compose \
        else NativeChaos(args.run_dir, args.seed)
    t0 = time.monotonic()
    try:
        if args.cmd == "kill":
            records = [asyncio.run(backend.kill(args.service, args.restart_after, args.stack, t0))]
        else:
            plan = plan_schedule(args.duration, parse_kills(args.kill), args.restart_after, args.seed,
                                 stacks=stacks)
            emit = (lambda r: print(json.dumps(asdict(r)), flush=True)) if args.json else \
                (lambda r: print(_line(r), flush=True))
            records = asyncio.run(run_schedule(backend, plan, t0, emit))
            rest = t0 + args.duration - time.monotonic()
            if rest > 0:
                time.sleep(rest)  # the schedule covers the whole run
    except ChaosError as err:
        print(f"gvtsim chaos: {err}", file=sys.stderr)
        return 2
    if args.cmd == "kill":
        print(json.dumps(asdict(records[0])) if args.json else _line(records[0]))
    elif not args.json:
        print(f"{sum(r.recovered for r in records)}/{len(records)} kills recovered")
    return 0 if records and all(r.recovered for r in records) else 1


def _line(r: KillRecord) -> str:
    if r.error:
        return f"kill {r.service} {r.target or ('of stack ' + str(r.stack) if r.stack is not None else '')}: " \
               f"FAILED: {r.error}"
    restart = f", restarted after {r.restart_after} s as pid {r.new_pid}: ready in {r.ready_s} s, stack serving " \
              f"in {r.serving_s} s" if r.restart_after is not None and r.serving_s is not None else \
        "" if r.restart_after is None else f", restarted after {r.restart_after} s as pid {r.new_pid}"
    return f"t={r.at}s kill {r.service} {r.target} (pid {r.old_pid}){restart}"


if __name__ == "__main__":
    sys.exit(main())
