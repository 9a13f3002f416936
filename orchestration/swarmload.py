"""``gvtsim load --swarm``: one load over every host stack of a Docker Swarm, one report with a row per node.

The stacks are found through the Docker API (:func:`.swarm.discover`: services labelled ``gvtsim.stack``,
their tasks and nodes). Each stack's free vGPU slots come from its gvt's STATUS, asked by a one-off task on
its node (the stack's network is the only place its service names resolve). VMs are spread evenly over the
stacks (a host stack holds at most 7 vGPUs), in guest processes of ``--vms-per-guest`` VMs; each guest
process is a one-replica service cloned from its stack's ``guest`` service (same image, environment,
network, node and node-local machine memory), so it runs on the stack's node, next to its vhm. Its
stdout events come back through the manager (``service logs``) and feed the same figures as a native load
(:class:`.loadstats.LoadStats`), once over the whole run and once per node and per stack.

A guest's event times are its own monotonic clock, which on another machine means nothing here: each
guest's times are shifted by the offset seen at its ready line, so they keep their spacing and line up with
this process's clock.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .loadstats import LoadStats, verdict
from .report import write_report
from .status import free_vgpus
from .swarm import WAIT_SEPARATOR, SwarmError, SwarmStack, client, clone_task, discover, probe_stack, \
    service_lines, task_of


@dataclass(frozen=True)
class SwarmGuest:
    """One guest process of the load: ``vms`` VMs on host stack ``stack``."""

    stack: str
    index: int
    vms: int

    @property
    def source(self) -> str:
        return f"{self.stack}/load-guest.{self.index}"


def spread(n_vms: int, free: dict[str, int], per_guest: int) -> list[SwarmGuest]:
    """``n_vms`` VMs spread evenly over the stacks' free vGPU slots (one at a time, round robin), then cut
    into guest processes of at most ``per_guest`` VMs.

    Raises:
        ValueError: fewer free slots than VMs.
    """
    slots = {k: max(0, v) for k, v in free.items()}
    if n_vms > sum(slots.values()):
        raise ValueError(f"{n_vms} VMs need {n_vms} vGPU slots; the host stacks have {sum(slots.values())} free "
                         f"({', '.join(f'{k}: {v}' for k, v in sorted(slots.items()))}): deploy more stacks")
    take = dict.fromkeys(slots, 0)
    left = n_vms
    while left:
        for k in sorted(slots):
            if left and take[k] < slots[k]:
                take[k] += 1
                left -= 1
    out: list[SwarmGuest] = []
    for k in sorted(take):
        n = take[k]
        while n > 0:
            chunk = min(per_guest, n)
            out.append(SwarmGuest(k, len(out), chunk))
            n -= chunk
    return out


class ClockAlign:
    """Shifts each source's event times (its own monotonic clock) onto ours, by the offset at its ready."""

    def __init__(self) -> None:
        self.offset: dict[str, float] = {}

    def event(self, source: str, ev: dict[str, Any], now: float) -> dict[str, Any]:
        t = ev.get("t")
        if not isinstance(t, (int, float)):
            return ev
        if ev.get("event") == "ready" or source not in self.offset:
            self.offset[source] = now - float(t)
        return {**ev, "t": float(t) + self.offset[source]}


class SwarmGuests:
    """The load's guest services: created from their stack's guest service, logs read in threads."""

    def __init__(self, c: Any, stacks: dict[str, SwarmStack], run_id: str) -> None:
        self.c = c
        self.stacks = stacks
        self.run_id = run_id
        self.ids: dict[str, str] = {}  # source -> service id
        self.lines: queue.Queue[tuple[str, str, float]] = queue.Queue()

    def start(self, g: SwarmGuest, guest_args: list[str]) -> None:
        stack = self.stacks[g.stack]
        spec = self.c.api.inspect_service(stack.services["guest"].id)["Spec"]["TaskTemplate"]["ContainerSpec"]
        base = list(spec.get("Args") or [])
        prefix = base[:base.index(WAIT_SEPARATOR) + 1] if WAIT_SEPARATOR in base else []  # wait for gvt
        ident = g.source.replace("/", "-")
        sid = clone_task(self.c, stack, "guest", [*prefix, "gvtsim", "guest", "--vms", str(g.vms), *guest_args],
                         name=f"{g.stack}_load-{self.run_id}-{g.index}", role="load",
                         env={"GVTSIM_ID": ident, "GVTSIM_NAME_PREFIX": f"{ident}-vm"})
        self.ids[g.source] = sid
        threading.Thread(target=self._read, args=(g.source, sid), daemon=True).start()

    def _read(self, source: str, sid: str) -> None:
        try:
            for line in service_lines(self.c, sid):
                self.lines.put((source, line, time.monotonic()))
        except Exception:  # the service was removed under the stream: the load is over
            pass

    def state(self, source: str) -> str:
        t = task_of(self.c, self.ids[source])
        return str((t or {}).get("Status", {}).get("State", "new"))

    def log_tails(self, lines: int = 15) -> dict[str, list[str]]:
        """The last stderr lines (JSON logs) of every load guest: what the report shows when a guest failed."""
        out = {}
        for source, sid in self.ids.items():
            try:
                raw = b"".join(self.c.api.service_logs(sid, stdout=False, stderr=True, follow=False, tail=lines))
                out[source] = raw.decode(errors="replace").splitlines()[-lines:]
            except Exception as err:  # the service or its node went away
                out[source] = [f"(no logs: {err})"]
        return out

    def stop_all(self, timeout: float = 30.0) -> None:
        """Remove every load guest service (SIGTERM: the guests destroy their VMs) and wait until their
        containers are gone, so that what follows sees the stacks' vGPU slots free again."""
        for sid in self.ids.values():
            try:
                self.c.api.remove_service(sid)
            except Exception:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                left = [t for t in self.c.api.tasks()
                        if t.get("ServiceID") in self.ids.values()
                        and (t.get("Status") or {}).get("State") in ("running", "starting", "preparing", "assigned")]
            except Exception:
                return
            if not left:
                return
            time.sleep(0.3)


def free_slots(c: Any, stacks: list[SwarmStack], vgpu_type: str | None) -> dict[str, tuple[str, int]]:
    """Each stack's vGPU type and its free slots of it (its gvt's STATUS, asked on its node, in parallel).

    The type is ``vgpu_type`` or, when None, the default type of the stack's GPU profile (as a native load
    picks it)."""
    def one(st: SwarmStack) -> tuple[str, int]:
        info = (probe_stack(c, st).get("gvt") or {}).get("info", {})
        kind = vgpu_type or (info.get("profile") or {}).get("default_type") or "GVTg_V5_8"
        return kind, free_vgpus(info, kind)

    with ThreadPoolExecutor(max_workers=max(1, len(stacks))) as pool:
        return dict(zip((s.name for s in stacks), pool.map(one, stacks)))


def run_swarm_load(args: argparse.Namespace) -> dict[str, Any]:
    """Place, start, watch and stop the load over the swarm; returns the report data."""
    c = client()
    only = set(filter(None, (args.swarm_stacks or "").split(","))) or None
    found = discover(c, only)
    stacks = [s for s in found if s.healthy and "guest" in s.services]
    if not stacks:
        raise SwarmError("no healthy host stack on the swarm" + (f" among {', '.join(sorted(only))}" if only else "")
                         + ": run `gvtsim swarm deploy --wait 120` and `gvtsim status --swarm`")
    progress(f"{len(stacks)} host stacks on {len({s.node for s in stacks})} nodes: "
             + ", ".join(f"{s.name}@{s.node}" for s in stacks))
    kinds = free_slots(c, stacks, args.vgpu_type)
    plans = spread(args.vms, {k: free for k, (_, free) in kinds.items()}, args.vms_per_guest)
    node_of = {s.name: s.node for s in stacks}
    hang = ["--hang-timeout", str(args.hang_timeout)] if args.hang_timeout else []
    guest_args = {k: ["--vgpu-types", kind, "--vcpus", str(args.vcpus), "--recover", "--stats-interval", "1", *hang]
                  for k, (kind, _) in kinds.items()}
    t0 = time.monotonic()
    stats = LoadStats(t0, args.vms)
    by_node = {n: LoadStats(t0, sum(p.vms for p in plans if node_of[p.stack] == n)) for n in set(node_of.values())}
    by_stack = {s: LoadStats(t0, sum(p.vms for p in plans if p.stack == s)) for s in {p.stack for p in plans}}
    guests = SwarmGuests(c, {s.name: s for s in stacks}, uuid.uuid4().hex[:6])
    align = ClockAlign()
    stack_of = {p.source: p.stack for p in plans}

    def drain() -> None:
        while True:
            try:
                source, line, seen = guests.lines.get_nowait()
            except queue.Empty:
                return
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            ev = align.event(source, ev, seen)
            for s in (stats, by_node[node_of[stack_of[source]]], by_stack[stack_of[source]]):
                s.feed(source, ev, seen)

    progress(f"starting {len(plans)} guest processes for {args.vms} VMs: "
             + ", ".join(f"{k} {sum(p.vms for p in plans if p.stack == k)} VMs" for k in sorted(by_stack)))
    t_load = 0.0
    try:
        ramp_up(guests, plans, guest_args, stats, drain, args)
        t_load = time.monotonic()
        deadline = t_load + args.duration + args.grace
        last = 0.0
        while True:
            drain()
            now = time.monotonic()
            stats.sample(now)
            for s in (*by_node.values(), *by_stack.values()):
                s.sample(now)
            if now - last >= 1.0:
                last = now
                progress(stats.progress_line(now, args.vms))
            done = all(stats.current.get(p.source) is not None and stats.current[p.source].done for p in plans)
            if done or now > deadline:
                break
            time.sleep(0.2)
    finally:
        drain()
        tails = guests.log_tails()
        guests.stop_all()
        time.sleep(0.5)
        drain()
        for p in plans:
            for s in (stats, by_node[node_of[p.stack]], by_stack[p.stack]):
                s.ended(p.source, "terminated")
    now = time.monotonic()
    fig = stats.figures(now)
    fig["ramp_s"] = round(t_load - t0, 3) if t_load else None
    problems = verdict(fig, False, [])
    nodes = [row(n, by_node[n].figures(now), sorted(k for k, v in node_of.items() if v == n and k in by_stack))
             for n in sorted(by_node)]
    stack_rows = [{"stack": k, **row(node_of[k], by_stack[k].figures(now), [k])} for k in sorted(by_stack)]
    for r in stack_rows:  # every stack must have done its part, not only the sum
        if r["vms_booted"] < r["vms_requested"]:
            problems.append(f"stack {r['stack']} on {r['node']}: only {r['vms_booted']} of {r['vms_requested']} "
                            "VMs booted")
        if r["workloads_verified"] == 0:
            problems.append(f"stack {r['stack']} on {r['node']}: no workload verified")
    if problems:  # what the guests said last, to tell why
        stack_rows_bad = {r["stack"] for r in stack_rows if r["vms_booted"] < r["vms_requested"]
                          or r["workloads_failed"] or not r["workloads_verified"]}
        bad = [p.source for p in plans if p.stack in stack_rows_bad] or [p.source for p in plans]
        guest_logs = {src: tails.get(src, []) for src in bad}
    else:
        guest_logs = {}
    command = {k: v for k, v in vars(args).items()}
    return {"command": command, "mode": "swarm", "stacks_added": 0, "figures": fig, "kills": [],
            "problems": problems, "nodes": nodes, "stacks": stack_rows,
            "placement": [{"stack": p.stack, "node": node_of[p.stack], "guest": p.source, "vms": p.vms}
                          for p in plans], "guest_logs": guest_logs}


def row(node: str, fig: dict[str, Any], stacks: list[str]) -> dict[str, Any]:
    """The per-node (or per-stack) line of the report."""
    lat = fig["latency_us"].get("MMIO", {})
    return {"node": node, "stacks": stacks, "vms_requested": fig["vms_requested"], "vms_booted": fig["vms_booted"],
            "workloads_submitted": fig["workloads_submitted"], "workloads_verified": fig["workloads_verified"],
            "workloads_failed": fig["workloads_failed"], "workloads_per_s": fig["workloads_per_s"],
            "mmio_p50_us": lat.get("p50"), "mmio_p99_us": lat.get("p99"),
            "failures_by_reason": fig["failures_by_reason"]}


def ramp_up(guests: SwarmGuests, plans: list[SwarmGuest], guest_args: dict[str, list[str]], stats: LoadStats,
            drain: Any, args: argparse.Namespace, boot_timeout: float = 120.0) -> None:
    """Start the guest services, at most ``--ramp`` booting at a time on each stack (booting VMs all at
    once starves a small node's services); each runs ``--duration`` plus the ramp-up still ahead of it
    (estimated from the boot times so far), so that all VMs run together about ``--duration`` seconds."""
    pending = list(plans)
    booting: dict[str, tuple[SwarmGuest, float]] = {}
    boot_times = [10.0]  # a first guess, on the safe side: a late guess makes the first guests end early
    booted = 0
    while pending or booting:
        for g in list(pending):
            if sum(1 for b, _ in booting.values() if b.stack == g.stack) >= args.ramp:
                continue
            pending.remove(g)
            ahead = sum(boot_times) / len(boot_times) * \
                (sum(1 for p in pending if p.stack == g.stack) + 1) / args.ramp
            guests.start(g, [*guest_args[g.stack], "--duration", str(round(args.duration + ahead, 1))])
            booting[g.source] = (g, time.monotonic())
        time.sleep(0.2)
        drain()
        now = time.monotonic()
        for source, (g, started) in list(booting.items()):
            inc = stats.current.get(source)
            if (inc is not None and (len(inc.vms_ready) >= g.vms or inc.ended)) or now - started > boot_timeout \
                    or guests.state(source) in ("failed", "rejected", "complete"):
                del booting[source]
                booted += 1
                boot_times.append(now - started)
                progress(f"ramp-up: {booted}/{len(plans)} guest processes booted ({g.stack}), "
                         f"{len(set().union(*(i.vms_ready for i in stats.incarnations)))} VMs ready")


def summary_nodes(data: dict[str, Any]) -> str:
    """The per-node and per-stack tables added to summary.md."""
    lines = ["", "## Per node", "", "| node | stacks | VMs booted | verified | failed | verified/s | MMIO p50 µs | "
             "MMIO p99 µs |", "|---|---|---|---|---|---|---|---|"]
    for r in data["nodes"]:
        lines.append(f"| {r['node']} | {', '.join(r['stacks'])} | {r['vms_booted']}/{r['vms_requested']} | "
                     f"{r['workloads_verified']} | {r['workloads_failed']} | {r['workloads_per_s']} | "
                     f"{r['mmio_p50_us']} | {r['mmio_p99_us']} |")
    lines += ["", "## Per host stack", "", "| stack | node | VMs booted | verified | failed |", "|---|---|---|---|---|"]
    for r in data["stacks"]:
        lines.append(f"| {r['stack']} | {r['node']} | {r['vms_booted']}/{r['vms_requested']} | "
                     f"{r['workloads_verified']} | {r['workloads_failed']} |")
    return "\n".join(lines) + "\n"


def progress(text: str) -> None:
    print(f"load: {text}", file=sys.stderr, flush=True)


def main_swarm(args: argparse.Namespace) -> int:
    """``gvtsim load --swarm``, from load's parsed arguments. Exit 0 pass, 1 fail, 2 cannot run."""
    if args.chaos:
        print("gvtsim load: --chaos is not supported with --swarm; use `gvtsim chaos --swarm kill SERVICE` "
              "alongside the load", file=sys.stderr)
        return 2
    try:
        data = run_swarm_load(args)
    except (SwarmError, ValueError) as err:
        print(f"gvtsim load: {err}", file=sys.stderr)
        return 2
    if args.report:
        data["files"] = write_report(args.report, data)
        with open(os.path.join(args.report, "summary.md"), "a") as f:
            f.write(summary_nodes(data))
    fig = data["figures"]
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print(f"{fig['vms_booted']}/{fig['vms_requested']} VMs on {len(data['nodes'])} nodes, "
              f"{fig['workloads_verified']} workloads verified, {fig['workloads_failed']} failed, "
              f"{fig['workloads_per_s']}/s" + (f"; report in {os.path.abspath(args.report)}" if args.report else ""))
        for r in data["nodes"]:
            print(f"  node {r['node']} ({', '.join(r['stacks'])}): {r['vms_booted']}/{r['vms_requested']} VMs, "
                  f"{r['workloads_verified']} verified, {r['workloads_failed']} failed, {r['workloads_per_s']}/s")
        for problem in data["problems"]:
            print(f"  problem: {problem}")
    return 0 if not data["problems"] else 1
