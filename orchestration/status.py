"""``gvtsim status``: the services of a run, their processes or containers, health, and one row per VM and
vGPU of every host stack.

    gvtsim status                      the run `gvtsim up` started here
    gvtsim status --stack 1 --json     one host stack, as JSON
    gvtsim status --compose            a docker compose project

Natively it reads the run directory's state.json and asks every service for STATUS (the healthcheck's
probe); with --compose it asks `docker compose ps` and probes from inside the containers. VMs come from each
vhm, vGPUs and free vGPU slots from each gvt. A VM that runs without a vGPU (gvt restarted and has not got
it back) makes the run unhealthy. Exit status: 0 all healthy, 1 something is not (the reasons are printed),
3 nothing is up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

from .health import probe_service, status_dict
from .launcher import RunState, alive, default_run_dir
from ..services.common.helptext import UserHelpFormatter

STATUS_TIMEOUT = 2.0


def free_vgpus(gvt_info: dict[str, Any], vgpu_type: str = "GVTg_V5_8") -> int:
    """Free slots of ``vgpu_type`` in a gvt STATUS ``info`` (its ``types`` table, as ``gvtsim ctl types``)."""
    for t in gvt_info.get("types", []):
        if t.get("name") == vgpu_type:
            return int(t.get("avail", 0))
    return 0


def stack_summary(vhm: dict[str, Any] | None, gvt: dict[str, Any] | None) -> dict[str, Any]:
    """VMs and vGPUs of one host stack from its vhm's and gvt's STATUS dicts (None: unreachable).

    ``rows`` joins them: one row per VM vhm knows and per vGPU gvt holds, by VM id; ``problems`` says in
    words what is wrong (a running VM without a vGPU, a vGPU whose VM vhm does not know, an unreachable
    service)."""
    vms = (vhm or {}).get("info", {}).get("vms", {})
    gvt_info = (gvt or {}).get("info", {})
    vgpus = gvt_info.get("vgpus", [])
    vm_list = vms.get("list", []) if isinstance(vms, dict) else vms
    traps, pv = gvt_info.get("traps_by_vm", {}), gvt_info.get("pv_by_vm", {})
    failsafe = gvt_info.get("failsafe", {})
    by_vm = {int(v["vm"]): v for v in vm_list}
    by_vgpu_vm = {int(v["vm"]): v for v in vgpus}
    rows, problems = [], []
    for vm_id in sorted(set(by_vm) | set(by_vgpu_vm)):
        vm, vg = by_vm.get(vm_id), by_vgpu_vm.get(vm_id)
        state = vm.get("state", "") if vm else "unknown to vhm"
        rows.append({"vm": vm_id, "name": (vm or {}).get("name", ""), "state": state,
                     "guest": (vm or {}).get("owner", ""), "vcpus": (vm or {}).get("vcpus", ""),
                     "vgpu_id": vg["vgpu_id"] if vg else None, "type": vg["type"] if vg else "",
                     "active": bool(vg and vg.get("active")), "failsafe": failsafe.get(str(vm_id), "") if vg and
                     vg.get("failsafe") else "", "pv": "on" if int((pv.get(str(vm_id)) or {}).get("enabled", 0))
                     else "off", "traps": sum(int(n) for n in (traps.get(str(vm_id)) or {}).values())})
        if gvt is not None and vm is not None and vg is None and state == "running":
            owner = str(vm.get("owner") or "")
            proc = owner.replace("-", "/", 1) if owner[:1] == "s" and owner.split("-", 1)[0][1:].isdigit() else ""
            problems.append(f"vm {vm_id} ({vm.get('name') or 'unnamed'}) runs without a vGPU: gvt does not "
                            "hold one for it (restarted?); restart its guest"
                            + (f" (`gvtsim restart {proc}`)" if proc else ""))
        if vhm is not None and vg is not None and vm is None:
            problems.append(f"vGPU {vg['vgpu_id']} belongs to vm {vm_id}, which vhm does not know; "
                            f"`gvtsim ctl destroy {vm_id}` frees it")
    if vhm is None:
        problems.append("vhm did not answer: its VMs are unknown")
    if gvt is None:
        problems.append("gvt did not answer: its vGPUs are unknown")
    return {"vms": vms.get("count", len(vm_list)) if isinstance(vms, dict) else len(vm_list),
            "vgpus": len(vgpus),
            "vgpu_slots_free": free_vgpus(gvt_info, (gvt_info.get("profile") or {}).get("default_type", "GVTg_V5_8"))
            if gvt else None,
            "vm_list": vm_list, "vgpu_list": vgpus, "rows": rows, "problems": problems,
            # per-VM trapped accesses by kind (mmio_read/mmio_write/ggtt/wp/pci_cfg/g2v_notify) and PV state
            "traps_by_vm": traps, "pv_by_vm": pv}


#: seconds before the second look at a stack whose first look found its VM and vGPU tables disagreeing
CONFIRM_AFTER = 0.5


def confirmed(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """``first`` (a :func:`stack_summary`) with only the problems that ``second``, a later look, still shows.
    vhm's and gvt's STATUS are two snapshots taken apart (``docker exec`` takes a second each), so a VM created
    or destroyed between them looks like a vGPU without its VM, or a VM without its vGPU, once: a problem is a
    disagreement that lasts."""
    return {**first, "problems": [p for p in first["problems"] if p in second["problems"]]}


async def _probe(endpoint: str | None, service: str) -> dict[str, Any] | None:
    """The service's STATUS as a dict (None: no answer)."""
    if not endpoint:
        return None
    try:
        return status_dict(await probe_service(endpoint, service, STATUS_TIMEOUT))
    except Exception:
        return None


async def native_status(run_dir: str, stack: int | None = None) -> dict[str, Any] | None:
    """Status of the native run in ``run_dir`` (None when nothing is up); ``stack``: only that host stack."""
    state = RunState.load(run_dir)
    if state is None:
        return None
    if stack is not None:
        if stack not in state.stacks:
            raise ValueError(f"no host stack {stack} in {run_dir} (stacks: {', '.join(map(str, state.stacks))})")
        state.stacks = [stack]
        state.procs = {n: p for n, p in state.procs.items() if p.stack == stack}
    names = list(state.procs)
    replies = await asyncio.gather(*(_probe(state.procs[n].endpoint if alive(state.procs[n]) else None,
                                            state.procs[n].service) for n in names))
    by_name = dict(zip(names, replies))
    services = []
    for n in names:
        p, reply = state.procs[n], by_name[n]
        running = alive(p)
        health = ("healthy" if reply and reply["ready"] else "unhealthy") if p.endpoint and running else \
            ("running" if running else "exited")
        services.append({"name": n, "stack": p.stack, "service": p.service, "owner": p.owner, "pid": p.pid,
                         "running": running, "health": health, "endpoint": p.endpoint, "restarts": p.restarts,
                         "epoch": reply["epoch"] if reply else None})
    stacks = {str(k): stack_summary(by_name.get(f"s{k}/vhm"), by_name.get(f"s{k}/gvt")) for k in state.stacks}
    for k in [k for k, st in stacks.items() if st["problems"]]:
        await asyncio.sleep(CONFIRM_AFTER)
        vhm, gvt = (state.procs.get(f"s{k}/{svc}") for svc in ("vhm", "gvt"))
        again = await asyncio.gather(*(_probe(p.endpoint if p is not None and alive(p) else None, svc)
                                       for p, svc in ((vhm, "vhm"), (gvt, "gvt"))))
        stacks[k] = confirmed(stacks[k], stack_summary(*again))
    problems = [f"{s['name']} is {s['health']}" for s in services if s["health"] not in ("healthy", "running")]
    problems += [f"stack {k}: {why}" for k, st in stacks.items() for why in st["problems"]
                 if not any(p.startswith(f"s{k}/") for p in problems)]
    return {"mode": "native", "run_dir": run_dir, "project": state.project, "healthy": not problems,
            "problems": problems, "services": services, "stacks": stacks,
            "totals": {"vms": sum(s["vms"] for s in stacks.values()),
                       "vgpus": sum(s["vgpus"] for s in stacks.values())}}


def compose_cmd(project: str | None, files: list[str]) -> list[str]:
    """``docker compose [-p P] [-f F]...`` for the subprocess calls of the compose mode."""
    cmd = ["docker", "compose"]
    for f in files:
        cmd += ["-f", f]
    return cmd + (["-p", project] if project else [])


def compose_status(project: str | None, files: list[str]) -> dict[str, Any] | None:
    """Status of a compose project: containers from ``ps --format json``, STATUS probes run inside them."""
    base = compose_cmd(project, files)
    ps = subprocess.run([*base, "ps", "-a", "--format", "json"], capture_output=True, text=True, timeout=30)
    if ps.returncode != 0:
        return None
    text = ps.stdout.strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    if not rows:
        return None
    services = [{"name": r.get("Name"), "service": r.get("Service"), "container": r.get("ID"),
                 "running": r.get("State") == "running", "health": r.get("Health") or r.get("State"),
                 "state": r.get("Status")} for r in rows]
    ports = {"vhm": 5555, "gvt": 5556, "pgpu": 5557}

    def look() -> dict[str, Any]:
        replies: dict[str, Any] = {}
        for svc, port in ports.items():
            r = subprocess.run([*base, "exec", "-T", svc, "gvtsim", "health", f"tcp://127.0.0.1:{port}", "--json"],
                               capture_output=True, text=True, timeout=30)
            replies[svc] = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
        return stack_summary(replies["vhm"], replies["gvt"])

    stack = look()
    if stack["problems"]:
        time.sleep(CONFIRM_AFTER)
        stack = confirmed(stack, look())
    problems = [f"{s['name']} is {s['health'] or 'down'}" for s in services
                if not (s["running"] and s["health"] in ("healthy", "running"))] + stack["problems"]
    return {"mode": "compose", "project": project, "healthy": not problems, "problems": problems,
            "services": services, "stacks": {"0": stack},
            "totals": {"vms": stack["vms"], "vgpus": stack["vgpus"]}}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def render(st: dict[str, Any]) -> str:
    """A human-readable table of a status dict: services, then each stack's VMs and vGPUs, then the verdict."""
    lines = [f"{'SERVICE':<18} {'PID/CONTAINER':<14} {'HEALTH':<10} {'RESTARTS':<8} ENDPOINT"]
    for s in st["services"]:
        ident = str(s.get("pid") or (s.get("container") or "")[:12])
        restarts = s.get("restarts")
        lines.append(f"{s['name']:<18} {ident:<14} {s['health'] or '':<10} {'' if restarts is None else restarts:<8} "
                     f"{s.get('endpoint') or ''}")
    for k, stack in st["stacks"].items():
        free = stack["vgpu_slots_free"]
        lines.append(f"stack {k}: {_plural(stack['vms'], 'VM')}, {_plural(stack['vgpus'], 'vGPU')}, "
                     + (f"{free} GVTg_V5_8 slots free" if free is not None else "free vGPU slots unknown (gvt down)"))
        if stack.get("rows"):
            lines.append(f"  {'VM':<4} {'NAME':<22} {'STATE':<15} {'GUEST':<18} {'VGPU':<5} {'TYPE':<10} "
                         f"{'ACTIVE':<7} {'PV':<4} {'TRAPS':<8} FAILSAFE")
            for r in stack["rows"]:
                vgpu = "-" if r["vgpu_id"] is None else str(r["vgpu_id"])
                lines.append(f"  {r['vm']:<4} {r['name'][:22]:<22} {r['state']:<15} {str(r['guest'])[:18]:<18} "
                             f"{vgpu:<5} {r['type'] or '-':<10} {'yes' if r['active'] else 'no':<7} {r['pv']:<4} "
                             f"{r['traps']:<8} {r['failsafe'] or '-'}")
    totals = f"{_plural(st['totals']['vms'], 'VM')}, {_plural(st['totals']['vgpus'], 'vGPU')}"
    if st["healthy"]:
        lines.append(f"healthy: {totals}")
    else:
        lines.append(f"NOT healthy: {totals}")
        lines += [f"  - {p}" for p in st.get("problems", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim status``."""
    p = argparse.ArgumentParser(prog="gvtsim status", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--stack", type=int, default=None, help="only this host stack [all]")
    p.add_argument("--compose", action="store_true", help="a docker compose project instead of a native run")
    p.add_argument("-p", "--project", default=None, help="compose project name [compose's default]")
    p.add_argument("-f", "--file", action="append", default=[], help="compose file(s) [docker-compose.yml]")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--swarm", action="store_true", help="the host stacks on a Docker Swarm (DOCKER_HOST: a manager)")
    args = p.parse_args(argv)
    if args.swarm:
        from .swarm import status_main
        return status_main(args.json)
    try:
        st = compose_status(args.project, args.file) if args.compose else \
            asyncio.run(native_status(args.run_dir, args.stack))
    except ValueError as err:
        print(f"gvtsim status: {err}", file=sys.stderr)
        return 2
    if st is None:
        where = "in the compose project" if args.compose else f"in {args.run_dir}"
        print(json.dumps({"up": False}) if args.json else f"nothing is up {where}: start it with `gvtsim up`")
        return 3
    print(json.dumps(st) if args.json else render(st))
    return 0 if st["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
