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

from ..services.common.histo import merge as merge_hists
from .hoststack import HostStack
from ..services.common.helptext import UserHelpFormatter


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
            page = stack.web(web)
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
    # percentiles of the processes' histograms added together (never the max or mean of their percentiles)
    hists = {typ: merge_hists([p["ioreq_hist"][typ] for p in parts if typ in p.get("ioreq_hist", {})])
             for typ in {t for p in parts for t in p.get("ioreq_hist", {})}}
    out["ioreq_hist"] = {typ: h.encode() for typ, h in hists.items()}
    out["rtt_us_by_type"] = {typ: h.summary() for typ, h in sorted(hists.items())}
    mmio = out["rtt_us_by_type"].get("MMIO", {})
    out["mmio_rtt_us"] = {k: mmio.get(k, 0.0) for k in ("p50", "p99", "mean")}
    out["failures_by_reason"] = {}
    for p in parts:
        for reason, n in (p.get("failures_by_reason") or {}).items():
            out["failures_by_reason"][reason] = out["failures_by_reason"].get(reason, 0) + n
    out["by_process"] = [{k: p[k] for k in ("vms", "workloads_verified", "workloads_per_s", "mmio_rtt_us")}
                         for p in parts]
    return out


def verdict(summary: dict[str, Any], vms: int, workloads: int) -> list[str]:
    """What keeps the demo from passing, in words (empty: every VM ran every workload, all verified)."""
    problems = []
    per_vm = summary.get("per_vm", [])
    bad = [v for v in per_vm if v.get("state") != "done"]
    if bad:
        reasons = sorted({(v.get("failures") or ["no reason given"])[-1] for v in bad})
        problems.append(f"{len(bad)} of {vms} VMs did not finish ({', '.join(sorted({v['state'] for v in bad}))}): "
                        + "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else ""))
    if len(per_vm) < vms:
        problems.append(f"only {len(per_vm)} of {vms} VMs were started")
    asked = vms * workloads
    if summary["workloads_verified"] < asked:
        problems.append(f"{summary['workloads_verified']} of the {asked} workloads asked for were verified "
                        f"({summary['workloads_failed']} failed, "
                        f"{asked - summary['workloads_submitted']} never ran)")
    return problems


def render(summary: dict[str, Any]) -> str:
    """A readable summary: the verdict first (what failed, in words), then the figures."""
    problems = summary.get("problems", [])
    done = sum(1 for v in summary.get("per_vm", []) if v.get("state") == "done")
    head = "PASS" if not problems else "FAIL"
    lines = [f"gvtsim demo: {head}: {done} of {summary.get('vms_asked', summary['vms'])} VMs ran to the end, "
             f"{summary['workloads_verified']} of {summary.get('workloads_asked', summary['workloads_submitted'])} "
             f"workloads verified, {summary['workloads_failed']} failed, in {summary['seconds']} s "
             f"({summary['workloads_per_s']} workloads/s)"]
    lines += [f"  problem: {p}" for p in problems]
    lines += [
             f"  ioreqs by type: {summary['ioreqs_by_type']}   MSIs: {summary['msis']}",
             f"  MMIO round trip: p50 {summary['mmio_rtt_us']['p50']} us, p99 {summary['mmio_rtt_us']['p99']} us"]
    for vm in summary.get("per_vm", []):
        ident = f"vm {vm['vm']}" if vm.get("vm") else "vm (never created)"
        kinds = ", ".join(f"{k} {n}" for k, n in dict(vm.get("by_kind", {})).items())
        traps = vm.get("submission_traps")
        lines.append(f"  {ident} ({vm['name']}, {vm['vgpu_type']}): {vm['state']}, {vm['verified']}/"
                     f"{vm['submitted']} verified" + (f" ({kinds})" if kinds else "")
                     + (f" pv={vm['pv']['status']}" if vm.get("pv") else "")
                     + (f" traps/submission={traps}" if traps else "")
                     + (f" {vm['workloads_per_s']}/s" if vm.get("workloads_per_s") else "")
                     + (f" failures: {'; '.join(vm['failures'][:3])}" if vm.get("failures") else ""))
        d = vm.get("display")
        if d:
            lines.append(f"    screen {d['mode']} {d['tiling']}: {d['frames_verified']}/{d['frames_drawn']} frames "
                         f"verified, {d['flips']} flips (flip done after p50 {d['flip_wait_ms_p50']} ms)"
                         + (f" failures: {d['failures']}" if d.get("failures") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim demo``."""
    p = argparse.ArgumentParser(prog="gvtsim demo", description=__doc__, formatter_class=UserHelpFormatter)
    p.add_argument("--vms", type=int, default=4, help="VMs (at most 7 fit one host stack) [4]")
    p.add_argument("--workloads", type=int, default=50, help="verified workloads per VM [50]")
    p.add_argument("--types", default="GVTg_V5_8,GVTg_V5_4", help="vGPU types, cycled over the VMs "
                   "[GVTg_V5_8,GVTg_V5_4]")
    p.add_argument("--vcpus", type=int, default=2, help="vCPUs per VM [2]")
    p.add_argument("--pv", nargs="?", const="on", default="off", choices=["off", "on", "mixed"],
                   help="the paravirtualized path: every VM (--pv), or half of them side by side (--pv mixed) [off]")
    p.add_argument("--mix", default="", help="workload kinds, e.g. fill,copy [fill,copy,store,aperture_copy]")
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
    summary["vms_asked"], summary["workloads_asked"] = args.vms, args.vms * args.workloads
    summary["problems"] = verdict(summary, args.vms, args.workloads)
    print(json.dumps(summary) if args.json else render(summary))
    frames_ok = all(not (vm.get("display") or {}).get("frames_failed") for vm in summary.get("per_vm", []))
    return 0 if not summary["problems"] and frames_ok else 1


if __name__ == "__main__":
    sys.exit(main())
