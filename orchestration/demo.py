"""``gvtsim demo`` (what ``make demo`` runs): the whole topology as local processes, verified workloads.

Starts vhm, pgpu and gvt on loopback with a private machine-memory file, waits until gvt reports both of its
peers connected, then one guest process with ``--vms`` VMs (vGPU types cycled from ``--types``), each running
``--workloads`` workloads that the GPU really executes and the guest verifies in its own RAM. Prints a
summary (``--json``: one JSON object), tears everything down, and exits 0 only if every workload verified.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .hoststack import HostStack


def run_demo(vms: int, workloads: int, types: str, vcpus: int = 2, ram_mb: int = 16,
             heartbeat: float = 0.5, pv: str = "off", mix: str = "", web: str = "", hold: float = 0.0,
             announce: Any = None) -> dict[str, Any]:
    """Bring the topology up, run the guests to completion, tear down. Returns the summary.

    ``pv``: ``off`` (trap path), ``on`` (every VM asks for the PV shared page) or ``mixed`` (two guest
    processes side by side, half the VMs on each path). ``web``: give the VMs screens and serve the wall of
    screens (``gvtsim web``) on this tcp://HOST:PORT while the demo runs; ``announce(url)`` is told where;
    ``hold``: keep the topology (and the screens) up this many seconds after the workloads are done."""
    stack = HostStack(mem_size_mb=1024, heartbeat=heartbeat, prefix="gvtsim-demo-")
    t0 = time.monotonic()
    try:
        stack.start()
        groups = [(vms, pv == "on")] if pv != "mixed" else [(vms - vms // 2, True), (vms // 2, False)]
        guests = []
        for n, (count, use_pv) in enumerate(g for g in groups if g[0]):
            guests.append(stack.guest("--vms", str(count), "--vcpus", str(vcpus), "--ram-mb", str(ram_mb),
                                      "--vgpu-types", types, "--workloads", str(workloads),
                                      "--name-prefix", f"{'pv' if use_pv else 'vm'}{n}-",
                                      *(["--pv"] if use_pv else []), *(["--mix", mix] if mix else []),
                                      *(["--display"] if web else []), name=f"guest{n}"))
        if web:
            page = stack._start(["web", "--gvt", stack.gvt.endpoint, "--vhm", stack.vhm.endpoint, "--listen", web],
                                "web")
            if announce is not None:
                announce(page.endpoint)
        dones = [g.wait_event("done", timeout=60 + workloads * vms * 0.5) for g in guests]
        if hold > 0:  # the screens stay up (the guests keep drawing) for whoever is watching the page
            time.sleep(hold)
        gvt_status = stack.gvt_status()
        summary = merge([{k: v for k, v in d.items() if k not in ("event", "t", "_t")} for d in dones])
        info = gvt_status.info if gvt_status else {}
        summary["traps_by_vm"] = info.get("traps_by_vm", {})
        summary["gvt"] = {k: v for k, v in (gvt_status.counters if gvt_status else {}).items()
                          if k.startswith(("workloads_", "irq_msi", "csb", "aperture", "gpu_events", "pv_"))}
        summary["startup_s"] = round(guests[0].ready["_t"] - t0, 3)
        return summary
    finally:
        stack.stop(graceful=True)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary from several guest processes' ``done`` events."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {"per_vm": [vm for p in parts for vm in p["per_vm"]]}
    for key in ("vms", "workloads_submitted", "workloads_verified", "workloads_failed", "msis", "resets",
                "recoveries"):
        out[key] = sum(p.get(key, 0) for p in parts)
    ioreqs: dict[str, int] = {}
    for p in parts:
        for k, v in p["ioreqs_by_type"].items():
            ioreqs[k] = ioreqs.get(k, 0) + v
    out["ioreqs_by_type"] = ioreqs
    out["seconds"] = max(p["seconds"] for p in parts)
    out["workloads_per_s"] = round(sum(p["workloads_per_s"] for p in parts), 1)
    out["mmio_rtt_us"] = {k: max(p["mmio_rtt_us"][k] for p in parts) for k in ("p50", "p99", "mean")}
    out["by_process"] = [{k: p[k] for k in ("vms", "workloads_verified", "workloads_per_s", "mmio_rtt_us")}
                         for p in parts]
    return out


def render(summary: dict[str, Any]) -> str:
    """A readable summary."""
    lines = [f"gvtsim demo: {summary['vms']} VMs, {summary['workloads_verified']}/{summary['workloads_submitted']} "
             f"workloads verified, {summary['workloads_failed']} failed, in {summary['seconds']} s "
             f"({summary['workloads_per_s']} workloads/s)",
             f"  ioreqs by type: {summary['ioreqs_by_type']}   MSIs: {summary['msis']}",
             f"  MMIO round trip: p50 {summary['mmio_rtt_us']['p50']} us, p99 {summary['mmio_rtt_us']['p99']} us"]
    for vm in summary.get("per_vm", []):
        lines.append(f"  vm {vm['vm']} ({vm['name']}, {vm['vgpu_type']}): {vm['state']}, {vm['verified']}/"
                     f"{vm['submitted']} verified {dict(vm.get('by_kind', {}))}"
                     + (f" pv={vm['pv']['status']}" if vm.get("pv") else "")
                     + f" traps/submission={vm.get('submission_traps')} {vm.get('workloads_per_s', '')}/s"
                     + (f" failures: {vm['failures']}" if vm.get("failures") else ""))
        d = vm.get("display")
        if d:
            lines.append(f"    screen {d['mode']} {d['tiling']}: {d['frames_verified']}/{d['frames_drawn']} frames "
                         f"verified, {d['flips']} flips (flip done after p50 {d['flip_wait_ms_p50']} ms)"
                         + (f" failures: {d['failures']}" if d.get("failures") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim demo", description=__doc__)
    p.add_argument("--vms", type=int, default=4)
    p.add_argument("--workloads", type=int, default=50, help="verified workloads per VM")
    p.add_argument("--types", default="GVTg_V5_8,GVTg_V5_4", help="vGPU types, cycled over the VMs")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--pv", nargs="?", const="on", default="off", choices=["off", "on", "mixed"],
                   help="the paravirtualized path: every VM (--pv), or half of them side by side (--pv mixed)")
    p.add_argument("--mix", default="", help="workload kinds (default: the guest's default mix)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    p.add_argument("--web", nargs="?", const="tcp://127.0.0.1:8080", default="", metavar="tcp://HOST:PORT",
                   help="give every VM a screen and serve the live wall of screens (gvtsim web) while the demo "
                        "runs (default tcp://127.0.0.1:8080)")
    p.add_argument("--hold", type=float, default=0.0,
                   help="keep the topology up this many seconds after the workloads (to watch the page)")
    args = p.parse_args(argv)

    def announce(url: str) -> None:
        print(f"gvtsim demo: every VM's screen, live, at {url} (while the demo runs)",
              file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        summary = run_demo(args.vms, args.workloads, args.types, vcpus=args.vcpus, pv=args.pv, mix=args.mix,
                           web=args.web, hold=args.hold, announce=announce)
    except (RuntimeError, TimeoutError) as err:
        print(f"gvtsim demo failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else render(summary))
    ok = summary["workloads_failed"] == 0 and summary["workloads_verified"] == summary["workloads_submitted"] \
        == args.vms * args.workloads
    ok = ok and all(not (vm.get("display") or {}).get("frames_failed") for vm in summary.get("per_vm", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
