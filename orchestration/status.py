"""``gvtsim status [--json]``: the services of a run, their processes or containers, health, VMs and vGPUs.

Natively it reads the launcher's state (``RUN_DIR/state.json``) and probes every service with STATUS (the
same probe as the healthcheck); with ``--compose`` it asks ``docker compose ps`` and probes from inside the
containers (``docker compose exec -T SERVICE gvtsim health ... --json``). VMs come from each vhm's STATUS, vGPUs
and free vGPU slots from each gvt's. Exit status: 0 all healthy, 1 something is not, 3 nothing is up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from typing import Any

from .health import probe, status_dict
from .launcher import RunState, alive, default_run_dir

STATUS_TIMEOUT = 2.0


def free_vgpus(gvt_info: dict[str, Any], vgpu_type: str = "GVTg_V5_8") -> int:
    """Free slots of ``vgpu_type`` in a gvt STATUS ``info`` (its ``types`` table, as ``gvtsim ctl types``)."""
    for t in gvt_info.get("types", []):
        if t.get("name") == vgpu_type:
            return int(t.get("avail", 0))
    return 0


def stack_summary(vhm: dict[str, Any] | None, gvt: dict[str, Any] | None) -> dict[str, Any]:
    """VMs and vGPUs of one host stack from its vhm's and gvt's STATUS dicts (None: unreachable)."""
    vms = (vhm or {}).get("info", {}).get("vms", {})
    gvt_info = (gvt or {}).get("info", {})
    vgpus = gvt_info.get("vgpus", [])
    return {"vms": vms.get("count", len(vms.get("list", []))) if isinstance(vms, dict) else len(vms),
            "vgpus": len(vgpus),
            "vgpu_slots_free": free_vgpus(gvt_info, (gvt_info.get("profile") or {}).get("default_type", "GVTg_V5_8"))
            if gvt else None,
            "vm_list": vms.get("list", []) if isinstance(vms, dict) else vms, "vgpu_list": vgpus,
            # per-VM trapped accesses by kind (mmio_read/mmio_write/ggtt/wp/pci_cfg/g2v_notify) and PV state
            "traps_by_vm": gvt_info.get("traps_by_vm", {}), "pv_by_vm": gvt_info.get("pv_by_vm", {})}


async def _probe(endpoint: str | None) -> dict[str, Any] | None:
    if not endpoint:
        return None
    try:
        return status_dict(await probe(endpoint, STATUS_TIMEOUT))
    except Exception:
        return None


async def native_status(run_dir: str) -> dict[str, Any] | None:
    """Status of the native run in ``run_dir`` (None when nothing is up)."""
    state = RunState.load(run_dir)
    if state is None:
        return None
    names = list(state.procs)
    replies = await asyncio.gather(*(_probe(state.procs[n].endpoint if alive(state.procs[n]) else None)
                                     for n in names))
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
    healthy = all(s["health"] in ("healthy", "running") for s in services)
    return {"mode": "native", "run_dir": run_dir, "project": state.project, "healthy": healthy,
            "services": services, "stacks": stacks,
            "totals": {"vms": sum(s["vms"] for s in stacks.values()), "vgpus": sum(s["vgpus"] for s in stacks.values())}}


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
    replies: dict[str, Any] = {}
    for svc, port in ports.items():
        r = subprocess.run([*base, "exec", "-T", svc, "gvtsim", "health", f"tcp://127.0.0.1:{port}", "--json"],
                           capture_output=True, text=True, timeout=30)
        replies[svc] = json.loads(r.stdout) if r.returncode == 0 and r.stdout.strip() else None
    stack = stack_summary(replies["vhm"], replies["gvt"])
    healthy = all(s["running"] and s["health"] in ("healthy", "running") for s in services)
    return {"mode": "compose", "project": project, "healthy": healthy, "services": services, "stacks": {"0": stack},
            "totals": {"vms": stack["vms"], "vgpus": stack["vgpus"]}}


def render(st: dict[str, Any]) -> str:
    """A human-readable table of a status dict."""
    lines = [f"{'SERVICE':<18} {'PID/CONTAINER':<14} {'HEALTH':<10} {'RESTARTS':<8} ENDPOINT"]
    for s in st["services"]:
        ident = str(s.get("pid") or (s.get("container") or "")[:12])
        lines.append(f"{s['name']:<18} {ident:<14} {s['health']:<10} {s.get('restarts', ''):<8} {s.get('endpoint') or ''}")
    for k, stack in st["stacks"].items():
        lines.append(f"stack {k}: {stack['vms']} VMs, {stack['vgpus']} vGPUs, "
                     f"{stack['vgpu_slots_free']} GVTg_V5_8 slots free")
    lines.append(f"{'healthy' if st['healthy'] else 'NOT healthy'}: {st['totals']['vms']} VMs, "
                 f"{st['totals']['vgpus']} vGPUs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim status``."""
    p = argparse.ArgumentParser(prog="gvtsim status", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir())
    p.add_argument("--compose", action="store_true", help="a docker compose project instead of a native run")
    p.add_argument("-p", "--project", default=None, help="compose project name")
    p.add_argument("-f", "--file", action="append", default=[], help="compose file(s)")
    p.add_argument("--swarm", action="store_true", help="the host stacks on a Docker Swarm (DOCKER_HOST: a manager)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.swarm:
        from .swarm import status_main
        return status_main(args.json)
    st = compose_status(args.project, args.file) if args.compose else asyncio.run(native_status(args.run_dir))
    if st is None:
        print("nothing is up" if not args.json else json.dumps({"up": False}))
        return 3
    print(json.dumps(st) if args.json else render(st))
    return 0 if st["healthy"] else 1


if __name__ == "__main__":
    sys.exit(main())
