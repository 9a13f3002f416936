"""``gvtsim load --vms N --duration S [--report DIR] [--json] [--chaos gvt:2,pgpu:2,guest:2]``.

Runs N concurrent VMs over several guest processes (``--vms-per-guest``) against the topology that
``gvtsim up`` brought up, shows progress on stderr while it runs, and writes a report (``--report DIR``):
summary.md with the verdict in words, report.json with every figure, and plots: the ioreq latency CDF per
kind, throughput per host stack and VMs up over time, workloads and failures by reason, recovery per kill,
and each kill's latency blip (the p50/p99 its stack's VMs saw during its recovery window).

    gvtsim load --vms 16 --duration 30 --report reports/load
    gvtsim load --vms 8 --duration 60 --chaos gvt:2,pgpu:1,guest:2 --report reports/chaos

Placement: VMs go to the stacks with free vGPU slots, as each gvt reports them in STATUS (the free
instances of the vGPU type, bounded by its free vGPU ids); each stack's type is ``--vgpu-type`` or its GPU
profile's default (docs/GPU_PROFILES.md: the real profile holds 7 vGPUs per stack, GVT_MAX_VGPU; the dense
one 512). ``--gpu-profile`` keeps the load on stacks of that profile. Natively the run is scaled out with
more host stacks of that profile (vhm + pgpu + gvt, no guests) when the free slots do not suffice (a host
stack is co-located; scaling out means more stacks). The added stacks stay up until ``gvtsim down``.

Boot: guest processes host many VMs each (one event loop, one connection to vhm) and ``--ramp`` of them boot
at the same time; vhm admits the VM creations at a bounded rate (``gvtsim vhm --create-rate``).

Each guest process runs the guest's workload mix (fill, copy, store, aperture_copy; each verified in guest
RAM) for ``--duration`` seconds.
With --chaos the kills are planned per host stack (a kill takes down one stack's service): dealt evenly over
the stacks the load uses, each stack recovering from one kill at a time, kills of different stacks side by
side (docs/ORCHESTRATION.md).
The verdict: without --chaos every VM boots and every workload verifies; with it, failures are allowed
when each names its reason, but every kill must be recovered from within --recovery-bound seconds and every
VM it took down must come back within that bound of its own outage; a workload completed twice fails it
either way. The summary explains it in words.
Exit status: 0 when the verdict passes, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from .chaos import ChaosError, KillRecord, NativeChaos, PlannedKill, parse_kills, plan_schedule, run_schedule
from .compose import load_topology, native_plan
from .launcher import LaunchError, ProcState, RunState, add_stacks, alive, default_run_dir, group_members, \
    read_events, signal_group, spawn, update_proc
from .loadstats import lost_sessions, LoadStats, attach_blips, attach_recovery, explain, verdict
from .report import write_report
from .status import free_vgpus
from .health import probe, status_dict
from .resources import ResourceSampler
from ..services.common.gpu_profiles import PROFILES, get_profile
from ..services.common.helptext import UserHelpFormatter

VGPUS_PER_STACK = 7  # GVT_MAX_VGPU 8 (ids 1..7) with the compose file's 1024 MB aperture
#: --vms-per-stack when not given: a profile's vGPU limit, and no more than this. One gvt runs one vGPU's
#: workloads at a time (GVT's time-slice scheduler, gvt/sched_policy.c), and a switch costs this simulation
#: milliseconds of messages where the hardware takes microseconds: past about a hundred busy vGPUs a stack's
#: round takes seconds, the time a guest's hangcheck allows.
VMS_PER_STACK_CAP = 128
#: auto --think: back to back up to this many vCPUs per core, else paced at this many workloads/s per core
BACK_TO_BACK_VCPUS = 64
PACED_WORKLOADS_PER_CORE = 10.0
#: auto --hang-timeout of a paced load (see auto_think): a workload may wait behind a boot storm's
PACED_HANG_TIMEOUT = 30.0


@dataclass(frozen=True)
class GuestPlan:
    """One guest process of the load: ``vms`` VMs on host stack ``stack``."""

    stack: int
    index: int
    vms: int
    vgpu_type: str = ""  # the stack's type (its GPU profile's default unless the load names one)


def place(n_vms: int, free: dict[int, int], per_guest: int, types: dict[int, str] | None = None,
          per_stack: int | None = None) -> list[GuestPlan]:
    """Spread ``n_vms`` evenly over the stacks (each gets as many as the others, within its free vGPU slots
    and ``per_stack``), ``per_guest`` VMs per guest process at most; ``types`` is each stack's vGPU type.
    Evenly, as a scheduler spreads pods: each gvt serves its vGPUs one at a time (GVT's time-slice
    scheduler), so a stack given twice the VMs makes each of them wait twice as long.

    Raises:
        ValueError: fewer free slots than VMs.
    """
    room = {k: max(0, f if per_stack is None else min(f, per_stack)) for k, f in free.items()}
    if n_vms > sum(room.values()):
        raise ValueError(f"{n_vms} VMs need {n_vms} vGPU slots; {sum(room.values())} are free"
                         + (f" at {per_stack} per stack" if per_stack is not None else ""))
    take = dict.fromkeys(room, 0)
    left = n_vms
    while left:  # water-filling: a level at a time over the stacks that still have room
        open_ = [k for k in sorted(room) if take[k] < room[k]]
        share = max(1, left // len(open_))
        for k in open_:
            n = min(share, room[k] - take[k], left)
            take[k] += n
            left -= n
            if not left:
                break
    plans: list[GuestPlan] = []
    for stack in sorted(take):
        n = take[stack]
        while n > 0:
            chunk = min(per_guest, n)
            plans.append(GuestPlan(stack, len(plans), chunk, (types or {}).get(stack, "")))
            n -= chunk
    return plans


def stacks_to_add(n_vms: int, free: dict[int, int], per_stack: int = VGPUS_PER_STACK,
                  cap: int | None = None) -> int:
    """Host stacks to add (each offering ``per_stack`` slots) so that ``n_vms`` VMs find vGPU slots, at
    most ``cap`` VMs on any stack."""
    if cap is not None:
        per_stack = min(per_stack, cap)
        free = {k: min(f, cap) for k, f in free.items()}
    return max(0, math.ceil((n_vms - sum(max(0, f) for f in free.values())) / per_stack))


def stacks_used(n_vms: int, free: dict[int, int], per_stack: int = VGPUS_PER_STACK, cap: int | None = None) -> int:
    """How many host stacks ``place`` will spread ``n_vms`` VMs over once ``stacks_to_add`` stacks are added:
    the kill plan of a chaos load is made per stack, and is checked before anything is started."""
    room = [min(f, cap) if cap is not None else f for f in free.values()]
    return max(1, min(n_vms, sum(r > 0 for r in room) + stacks_to_add(n_vms, free, per_stack, cap)))


def auto_think(vms: int, vcpus: int, cpus: int) -> float:
    """``--think`` when the load does not give it: none for a load a machine runs back to back (up to
    BACK_TO_BACK_VCPUS per core); past it, a pause that offers about PACED_WORKLOADS_PER_CORE workloads a
    second per core in all. A workload costs tens of milliseconds of CPU over the guest, vhm, gvt and pgpu
    processes, so hundreds of VMs back to back would only queue behind each other."""
    n = vms * vcpus
    if n <= BACK_TO_BACK_VCPUS * cpus:
        return 0.0
    return round(n / (PACED_WORKLOADS_PER_CORE * cpus), 1)


def guest_pacing(args: argparse.Namespace, flags: set[str], cpus: int) -> tuple[float, float, list[str]]:
    """(think seconds, hang timeout seconds or 0 for the guest's own, guest arguments) of a load: its
    pacing (:func:`auto_think`), the guests' hang timeout and their nice value (``--guest-nice``)."""
    think = args.think if args.think is not None else auto_think(args.vms, args.vcpus, cpus)
    # A paced load waits behind boot storms, a chaos load behind restarts: a restarted service on a
    # saturated host serves again after seconds, a time the guest driver's default hangcheck calls a hang.
    auto_hang = (think > 0 and args.think is None) or bool(args.chaos)
    hang = args.hang_timeout or (PACED_HANG_TIMEOUT if auto_hang else 0.0)
    out = ["--think", str(think)] if think > 0 and "--think" in flags else []
    out += ["--hang-timeout", str(hang)] if hang else []
    out += ["--nice", str(args.guest_nice)] if args.guest_nice and "--nice" in flags else []
    return think, hang, out


def guest_flags() -> set[str]:
    """The optional guest flags this checkout has (``--duration``, ``--recover``, ``--stats-interval``)."""
    out = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "guest", "--help"], capture_output=True,
                         text=True, timeout=30).stdout
    return {f for f in ("--duration", "--recover", "--stats-interval", "--think", "--nice", "SIGUSR1") if f in out}


# ---------------------------------------------------------------------------------------------- native
class NativeGuests:
    """The load's guest processes in a native run: recorded in the run's state (owner "load")."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.procs: dict[str, ProcState] = {}

    async def free_slots(self, vgpu_type: str | None, profile: str | None = None
                         ) -> tuple[dict[int, int], dict[int, str]]:
        """Free vGPU slots per stack and the type each stack gets, from every gvt's STATUS: its GPU profile
        (stacks of another profile than ``profile`` offer nothing), the type (``vgpu_type`` or the profile's
        default) and that type's free instances."""
        state = RunState.load(self.run_dir)
        if state is None:
            raise LaunchError(f"nothing is up in {self.run_dir}: run `gvtsim up` first")
        free, types = {}, {}
        for k in state.stacks:
            ep = state.endpoint(k, "gvt")
            free[k], types[k] = 0, vgpu_type or get_profile(profile or state.profile(k)).default_type
            try:
                info = status_dict(await probe(ep, 3.0)).get("info", {}) if ep else {}
            except Exception:
                continue  # an unreachable gvt offers nothing
            prof = (info.get("profile") or {}).get("name", state.profile(k))
            if profile is not None and prof != profile:
                continue
            types[k] = vgpu_type or (info.get("profile") or {}).get("default_type") or types[k]
            free[k] = free_vgpus(info, types[k])
        return free, types

    def spawn(self, plan: GuestPlan, guest_args: list[str]) -> str:
        """Start one guest process with its stack's guest service environment from the compose file."""
        state = RunState.load(self.run_dir)
        assert state is not None
        topo = load_topology(state.compose_file)
        base = next(s for s in native_plan(topo, [plan.stack], state.native_layout, replicas={"guest": 1})
                    if s.service == "guest")
        name = f"s{plan.stack}/load-guest.{plan.index}"
        ident = name.replace("/", "-")
        vtype = ["--vgpu-types", plan.vgpu_type] if plan.vgpu_type else []
        spec = replace(base, name=name, replica=plan.index,
                       argv=(*base.argv, "--vms", str(plan.vms), *vtype, *guest_args),
                       env={**base.env, **state.curve_env(), "GVTSIM_ID": ident, "GVTSIM_NAME_PREFIX": f"{ident}-vm"})
        proc = spawn(ProcState.from_spec(spec, self.run_dir, owner="load"))
        update_proc(self.run_dir, proc)
        self.procs[name] = proc
        return name

    def current(self, name: str) -> ProcState:
        state = RunState.load(self.run_dir)
        return state.procs.get(name, self.procs[name]) if state else self.procs[name]

    def stop_all(self) -> None:
        """SIGTERM every load guest (its VMs are destroyed), SIGKILL stragglers, drop them from the state."""
        procs = [self.current(n) for n in self.procs]
        for p in procs:
            signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(group_members(p.pid) for p in procs):
            time.sleep(0.05)
        for p in procs:
            if group_members(p.pid):
                signal_group(p, signal.SIGKILL)
            update_proc(self.run_dir, p, remove=True)


def kill_progress(r: KillRecord) -> str:
    """The progress line of one kill of the load's chaos schedule: recovered with its times, recovered
    without a restart, or not recovered with the reason."""
    if r.recovered and r.serving_s is not None:
        outcome = f"recovered (ready in {r.ready_s} s, stack serving in {r.serving_s} s)"
    elif r.recovered:
        outcome = "recovered (not restarted)"
    else:
        outcome = f"NOT recovered: {r.error or 'no reason given'}"
    return f"kill {r.service} {r.target} at {r.at} s: {outcome}"


def _respawn_with_remaining(deadline: float) -> Any:
    """Chaos restarts a load guest with the run's remaining duration, not the whole one."""
    def respawn(proc: ProcState) -> ProcState:
        if "--duration" in proc.argv:
            i = proc.argv.index("--duration")
            proc.argv[i + 1] = str(round(max(1.0, deadline - time.monotonic()), 1))
        return proc
    return respawn


# ------------------------------------------------------------------------------------------------- run
async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    """Place, start, watch and stop the load; returns the report data (figures, kills, problems)."""
    guests = NativeGuests(args.run_dir)
    await check_vgpu_type(args.run_dir, args.vgpu_type)
    if args.chaos:  # a bad spec is refused now (an impossible plan below, once the stacks are known)
        kills_wanted = parse_kills(args.chaos)
        state = RunState.load(args.run_dir)
        known = sorted({p.service for p in state.procs.values()}) if state else []
        unknown = sorted(set(kills_wanted) - set(known) - {"guest"})
        if unknown:
            raise ChaosError(f"--chaos names {', '.join(unknown)}: not a service of this run; "
                             f"services: {', '.join(sorted(set(known) | {'guest'}))}")
    free, types = await guests.free_slots(args.vgpu_type, args.gpu_profile)
    scale_profile = get_profile(args.gpu_profile or "real")
    per_stack = scale_profile.max_vgpu if args.vgpu_type in (None, scale_profile.default_type) else VGPUS_PER_STACK
    cap = args.vms_per_stack or VMS_PER_STACK_CAP

    def room(f: dict[int, int]) -> int:
        return sum(min(max(0, n), cap) for n in f.values())

    if args.chaos:  # an impossible plan is refused before stacks are added and guests started
        plan_schedule(args.duration, parse_kills(args.chaos), args.restart_after, args.seed,
                      stacks=range(stacks_used(args.vms, free, per_stack, cap)))

    added = 0
    for _ in range(3):  # a stack may offer fewer slots of a big type than its vGPU limit: ask again
        more = stacks_to_add(args.vms, free, per_stack, cap)
        if not more:
            break
        if args.no_scale_out:
            raise LaunchError(f"{args.vms} VMs need {more} more host stack(s); --no-scale-out was given")
        progress(f"scaling out: +{more} host stack(s) of GPU profile {scale_profile.name} for {args.vms} VMs "
                 f"({sum(free.values())} vGPU slots free)")
        await add_stacks(args.run_dir, more, gpu_profile=scale_profile.name)
        added += more
        new_free, types = await guests.free_slots(args.vgpu_type, args.gpu_profile)
        per_stack = max(1, min(per_stack, (room(new_free) - room(free)) // more))
        free = new_free
    per_guest = args.vms_per_guest or max(4, min(64, math.ceil(args.vms / 8)))
    plans = place(args.vms, free, per_guest, types, per_stack=cap)
    flags = guest_flags()
    duration_mode = "--duration" in flags
    think, hang, pacing_args = guest_pacing(args, flags, os.cpu_count() or 1)
    guest_args = ["--vcpus", str(args.vcpus), *pacing_args]
    guest_args += [] if duration_mode else ["--workloads", str(args.workloads)]
    guest_args += ["--recover"] if "--recover" in flags else []  # a GPU reset re-creates the VM (chaos runs)
    guest_args += ["--stats-interval", "1"] if "--stats-interval" in flags else []
    progress(f"starting {len(plans)} guest processes for {args.vms} VMs on stacks "
             f"{sorted({p.stack for p in plans})} ({'duration' if duration_mode else 'workload-count'} mode)")
    if think > 0:
        progress(f"pacing: each vCPU pauses {think:g} s between workloads on average"
                 + (f" (automatic for {args.vms * args.vcpus} vCPUs; --think 0 runs them back to back)"
                    if args.think is None else "") + (f", hang timeout {hang:g} s" if hang else ""))
    elif hang and not args.hang_timeout:
        progress(f"chaos: guests wait {hang:g} s for a workload before they declare a GPU hang (--hang-timeout)")
    t0 = time.monotonic()
    wall_t0, wall_end = time.time(), None  # the window in which a lost session is a problem (service logs)
    stats = LoadStats(t0, args.vms)
    chaos_task = None
    kills_done: list[KillRecord] = []  # as each kill ends (a schedule cut short keeps those)
    kill_plan: list[PlannedKill] = []
    t_load = 0.0
    offsets: dict[str, int] = {}
    sampler = ResourceSampler()
    baseline = await asyncio.to_thread(sampler.sample, run_pids(args.run_dir), 0)  # the topology before the load
    sampler.samples.clear()
    sampling = asyncio.create_task(sample_resources(sampler, args.run_dir, stats, args.sample_every))
    try:
        # With SIGUSR1 support the guests run until told (their --duration is only a backstop), so every VM
        # runs for the whole measured window however long the boot took; else they end by their --duration.
        told = duration_mode and "SIGUSR1" in flags
        run_for = args.duration + 120.0 + 10.0 * len(plans) if told else args.duration
        await ramp_up(guests, plans, guest_args, stats, offsets, args.ramp, run_for if duration_mode else None)
        t_load = time.monotonic()  # every VM is up: the measured run begins
        deadline = t_load + args.duration + args.grace
        finish_at = t_load + args.duration if told else None
        if args.chaos:
            # per host stack: a kill takes down one stack's service, so stacks recover side by side
            kill_plan = plan_schedule(args.duration, parse_kills(args.chaos), args.restart_after, args.seed,
                                      stacks=sorted({p.stack for p in plans}))
            backend = NativeChaos(args.run_dir, args.seed, owners={"guest": "load"}, stacks={p.stack for p in plans},
                                  respawn=_respawn_with_remaining(t_load + args.duration))
            kill_plan = [replace(k, at=k.at + (t_load - t0)) for k in kill_plan]  # times count from the ramp's end
            lanes = {k.stack for k in kill_plan}
            progress(f"chaos: {len(kill_plan)} kills on {len(lanes)} host stack(s), at most "
                     f"{max((sum(k.stack == s for k in kill_plan) for s in lanes), default=0)} per stack "
                     "(kills of different stacks may overlap)")

            def on_kill(r: KillRecord) -> None:
                kills_done.append(r)
                progress(kill_progress(r))
            chaos_task = asyncio.create_task(run_schedule(backend, kill_plan, t0, on_kill))
        last_progress = 0.0
        while True:
            now = time.monotonic()
            drain(guests, offsets, stats, now)
            stats.sample(now)
            if now - last_progress >= 1.0:
                last_progress = now
                progress(stats.progress_line(now, args.vms))
            if finish_at is not None and now >= finish_at:  # the window is over: every guest ends its run now
                finish_at = None
                wall_end = time.time()
                progress(f"{args.duration:g} s since the ramp-up ended: ending the guests' runs (SIGUSR1)")
                for n in guests.procs:
                    signal_group(guests.current(n), signal.SIGUSR1)
            all_done = all(stats.current.get(n) is not None and stats.current[n].done for n in guests.procs)
            if (all_done and (chaos_task is None or chaos_task.done())) or now > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        if chaos_task is not None and not chaos_task.done():
            chaos_task.cancel()  # the schedule overran the run: its unfinished kills are reported as such
            await asyncio.gather(chaos_task, return_exceptions=True)  # done now (cancelled() or its outcome)
        for name in guests.procs:
            if not alive(guests.current(name)):
                stats.ended(name, "exited")
        drain(guests, offsets, stats, time.monotonic())
        guests.stop_all()
        drain(guests, offsets, stats, time.monotonic())
        for name in guests.procs:
            stats.ended(name, "terminated")
    finished = chaos_task is not None and not chaos_task.cancelled() and chaos_task.exception() is None
    kills = [asdict(r) for r in (chaos_task.result() if finished and chaos_task is not None
                                 else sorted(kills_done, key=lambda r: r.at))]
    kills.sort(key=lambda k: float(k.get("at", 0.0)))  # as they happened (stacks' kills run side by side)
    if chaos_task is not None and not finished:
        kills.append({"service": "?", "target": "", "recovered": False, "at": 0.0,
                      "error": f"chaos schedule did not finish within the run ({len(kills_done)} of "
                               f"{len(kill_plan)} kills ended)"})
    attach_recovery(kills, stats, args.recovery_bound)
    attach_blips(kills, stats, args.restart_after, since=t_load - t0 if t_load else 0.0)
    fig = stats.figures(time.monotonic())
    fig["sessions_lost"] = services_lost_sessions(args.run_dir, wall_t0, wall_end or time.time())
    problems = verdict(fig, bool(args.chaos), kills, args.recovery_bound)
    fig["ramp_s"] = round(t_load - t0, 3) if t_load else None
    return {"command": {k: v for k, v in vars(args).items()}, "mode": "duration" if duration_mode else "workloads",
            "stacks_added": added, "figures": fig, "kills": kills, "problems": problems,
            "placement": {"stacks": sorted({p.stack for p in plans}), "guest_processes": len(plans),
                          "vms_per_guest": per_guest, "types": sorted({p.vgpu_type for p in plans}),
                          "vms_per_stack": {str(k): sum(p.vms for p in plans if p.stack == k)
                                            for k in sorted({p.stack for p in plans})}},
            "pacing": {"think_s": think, "hang_timeout_s": hang or None, "guest_nice": args.guest_nice},
            "resources": {**sampler.summary(baseline), "baseline": baseline, "series": sampler.samples},
            "boot": boot_curve(stats.timeline, args.vms),
            "verdict": explain(fig, bool(args.chaos), kills, problems)}


def boot_curve(timeline: list[dict[str, Any]], vms: int) -> dict[str, Any]:
    """When 10/25/50/75/90/100 % of the VMs were running (seconds from the start), from the run's timeline
    of ``vms_running``; None for a level never reached."""
    reached: dict[str, float | None] = {}
    for pct in (10, 25, 50, 75, 90, 100):
        want = math.ceil(vms * pct / 100)
        reached[f"{pct}%"] = next((p["t"] for p in timeline if p["vms_running"] >= want), None)
    peak = max((p["vms_running"] for p in timeline), default=0)
    return {"seconds_to": reached, "peak_running": peak,
            "curve": [(p["t"], p["vms_running"]) for p in timeline[::max(1, len(timeline) // 200)]]}


def services_lost_sessions(run_dir: str, since: float, until: float) -> list[dict[str, Any]]:
    """Every session a service of the run declared lost in [since, until] (loadstats.lost_sessions), as
    {service, peer, reason, at}."""
    state = RunState.load(run_dir)
    out = []
    for name, p in sorted(state.procs.items() if state else ()):
        if p.service not in ("vhm", "gvt", "pgpu"):
            continue
        for ev in lost_sessions(p.err, since, until):
            out.append({"service": name, "peer": ev.get("peer_id") or ev.get("peer"), "reason": ev.get("reason"),
                        "at": ev.get("timestamp")})
    return out


def run_pids(run_dir: str) -> dict[str, int]:
    """Every process of the run (services and load guests) by name."""
    state = RunState.load(run_dir)
    return {n: p.pid for n, p in (state.procs.items() if state else ()) if p.pid}


async def sample_resources(sampler: ResourceSampler, run_dir: str, stats: LoadStats, every: float) -> None:
    """PSS/RSS/CPU of every process every ``every`` seconds (psutil runs in a thread: smaps reads take ms)."""
    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(sampler.sample, run_pids(run_dir), stats.vms_running())

async def check_vgpu_type(run_dir: str, vgpu_type: str | None) -> None:
    """Refuse a vGPU type no gvt of the run knows, before anything is started (None: each stack's GPU
    profile default, nothing to check).

    Raises:
        LaunchError: nothing is up, or no gvt answers.
        ValueError: an unknown type (the message lists the known ones).
    """
    state = RunState.load(run_dir)
    if state is None:
        raise LaunchError(f"nothing is up in {run_dir}: run `gvtsim up` first")
    if vgpu_type is None:
        return
    names: list[str] = []  # stacks of different GPU profiles offer different types
    answered = False
    for k in state.stacks:
        ep = state.endpoint(k, "gvt")
        try:
            info = status_dict(await probe(ep, 3.0)).get("info", {}) if ep else None
        except Exception:
            continue
        if info is None:
            continue
        answered = True
        names += [str(t.get("name")) for t in info.get("types", []) if str(t.get("name")) not in names]
        if vgpu_type in names:
            return
    if answered:
        raise ValueError(f"unknown vGPU type {vgpu_type!r}; gvt offers {', '.join(names)}")
    raise LaunchError(f"no gvt of the run in {run_dir} answers; `gvtsim status` shows why")


async def ramp_up(guests: NativeGuests, plans: list[GuestPlan], guest_args: list[str], stats: LoadStats,
                  offsets: dict[str, int], ramp: int, duration: float | None, boot_timeout: float = 60.0) -> None:
    """Start the guest processes at most ``ramp`` booting at a time: a guest has booted when all its VMs
    sent vm_ready (or it gave up, or ``boot_timeout`` passed). Booting VMs all at once on a small machine
    starves the services' heartbeats (each VM creation writes its whole GGTT range), so the load ramps up.

    With ``duration``, each guest runs that long plus the ramp-up still ahead of it (estimated from the
    boot times so far), so that all VMs run together for about ``duration`` seconds."""
    pending = list(plans)
    booting: dict[str, tuple[GuestPlan, float]] = {}
    booted, boot_times = 0, [1.5]
    while pending or booting:
        while pending and len(booting) < ramp:
            plan = pending.pop(0)
            extra = []
            if duration is not None:
                ahead = sum(boot_times) / len(boot_times) * (len(pending) + 1) / ramp
                extra = ["--duration", str(round(duration + ahead, 1))]
            booting[guests.spawn(plan, [*guest_args, *extra])] = (plan, time.monotonic())
        await asyncio.sleep(0.1)
        now = time.monotonic()
        drain(guests, offsets, stats, now)
        stats.sample(now)  # the boot curve (VMs running over time) starts here
        for name, (plan, started) in list(booting.items()):
            inc = stats.current.get(name)
            if (inc is not None and (len(inc.vms_ready) >= plan.vms or inc.ended)) or not alive(guests.procs[name]) \
                    or now - started > boot_timeout:
                del booting[name]
                booted += 1
                boot_times.append(now - started)
                progress(f"ramp-up: {booted}/{len(plans)} guest processes booted, "
                         f"{len(set().union(*(i.vms_ready for i in stats.incarnations)))} VMs ready")


def drain(guests: NativeGuests, offsets: dict[str, int], stats: LoadStats, now: float) -> None:
    """Feed every new complete event line of every load guest's stdout to ``stats``."""
    for name, proc in guests.procs.items():
        events, offsets[name] = read_events(proc.out, offsets.get(name, proc.out_offset))
        for ev in events:
            stats.feed(name, ev, now)


def progress(text: str) -> None:
    """A progress line on stderr (stdout carries the result)."""
    print(f"load: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim load``."""
    p = argparse.ArgumentParser(prog="gvtsim load", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--vms", type=int, required=True, help="concurrent VMs")
    p.add_argument("--duration", type=float, required=True, help="seconds of load once every VM is up")
    p.add_argument("--report", default=None, metavar="DIR", help="write report.json, summary.md and PNG plots")
    p.add_argument("--json", action="store_true", help="print the report data as JSON on stdout")
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--vms-per-guest", type=int, default=0,
                   help="VMs per guest process (one event loop, one connection each) [auto: vms/8, 4..64]")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs per VM [2]")
    p.add_argument("--vgpu-type", default=None, help="vGPU type of every VM [each stack's GPU profile default]")
    p.add_argument("--gpu-profile", default=None, choices=sorted(PROFILES),
                   help="place VMs on stacks of this GPU profile only, and scale out with it [any; scale-out: real]")
    p.add_argument("--workloads", type=int, default=20, help="per VM, when the guest has no --duration [20]")
    p.add_argument("--hang-timeout", type=float, default=0.0,
                   help="seconds a guest driver waits for a workload before it declares a GPU hang (on a small "
                        f"machine hundreds of VMs share a core, so a workload takes seconds) [the guest's default; "
                        f"{PACED_HANG_TIMEOUT:g} when --think is automatic and paces the load, or with --chaos]")
    p.add_argument("--guest-nice", type=int, default=10,
                   help="the guest processes' nice value: the load generator yields the CPU to the host "
                        "services it loads (a restarted service must not wait for CPU behind the guests) [10; "
                        "0 runs them at the services' priority]")
    p.add_argument("--think", type=float, default=None,
                   help="seconds each vCPU pauses between workloads, on average [auto: back to back up to "
                        f"{BACK_TO_BACK_VCPUS} vCPUs per core, else paced at {PACED_WORKLOADS_PER_CORE:g} "
                        "workloads/s per core in all]")
    p.add_argument("--vms-per-stack", type=int, default=0,
                   help="at most this many VMs on one host stack; VMs are spread evenly and stacks added when "
                        f"needed [auto: the GPU profile's vGPU limit, at most {VMS_PER_STACK_CAP}: one gvt runs "
                        "its vGPUs one at a time, so hundreds on one stack wait seconds each]")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between memory/CPU samples of every process (PSS, psutil) [5]")
    p.add_argument("--ramp", type=int, default=4, help="guest processes booting at the same time [4]")
    p.add_argument("--grace", type=float, default=30.0,
                   help="seconds past --duration (after the ramp-up) before guests are stopped [30]")
    p.add_argument("--no-scale-out", action="store_true", help="fail instead of adding host stacks")
    p.add_argument("--chaos", default="", metavar="SVC:N,...",
                   help="kill services during the run, e.g. gvt:2,guest:2 [no kills]")
    p.add_argument("--restart-after", type=float, default=1.0, help="chaos: seconds a killed service stays down [1]")
    p.add_argument("--recovery-bound", type=float, default=10.0,
                   help="chaos: seconds a stack and each VM it took down have to come back (a service "
                        "restarted on a host the load saturates serves again after 4-8 s on 2 cores) [10]")
    p.add_argument("--seed", type=int, default=1, help="chaos: which process is killed and when [1]")
    p.add_argument("--swarm", action="store_true",
                   help="over every host stack of a Docker Swarm (DOCKER_HOST: a manager; docs/SWARM.md)")
    p.add_argument("--swarm-stacks", default="", metavar="NAME,...", help="swarm: only these host stacks [all]")
    args = p.parse_args(argv)
    if args.vms < 1 or args.duration <= 0 or args.vms_per_guest < 0 or args.ramp < 1 or args.vms_per_stack < 0 \
            or (args.think is not None and args.think < 0):
        p.error("--vms, --duration, --ramp, --vms-per-guest and --vms-per-stack must be positive, --think >= 0")
    if args.swarm:
        from .swarmload import main_swarm
        args.vms_per_guest = args.vms_per_guest or 4  # auto (0) means a few VMs per guest container
        return main_swarm(args)
    try:
        data = asyncio.run(run_load(args))
    except (LaunchError, ChaosError, ValueError) as err:
        print(f"gvtsim load: {err}", file=sys.stderr)
        return 2
    if args.report:
        data["files"] = write_report(args.report, data)
    fig = data["figures"]
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(f"{fig['vms_booted']}/{fig['vms_requested']} VMs, {fig['workloads_verified']} workloads verified, "
              f"{fig['workloads_failed']} failed, {fig['workloads_per_s']}/s"
              + (f"; report in {os.path.abspath(args.report)}" if args.report else ""))
        boot = data.get("boot") or {}
        print(f"  boot: {boot.get('peak_running', 0)} VMs running at peak; all {fig['vms_requested']} up after "
              f"{boot.get('seconds_to', {}).get('100%')} s" if boot.get("seconds_to", {}).get("100%") is not None
              else f"  boot: {boot.get('peak_running', 0)} of {fig['vms_requested']} VMs running at peak")
        res = data.get("resources") or {}
        if res.get("samples"):
            print(f"  memory: {res['pss_at_most_vms_mb']} MB PSS with {res['most_vms']} VMs running, "
                  f"{res['pss_per_vm_kb']} KB per VM above the idle topology; CPU % of a core: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(res["cpu_percent_by_service"].items())))
        for line in data["verdict"]:
            print(f"  {line}")
        for problem in data["problems"]:
            print(f"  problem: {problem}")
    return 0 if not data["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
