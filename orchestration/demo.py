"""``gvtsim demo`` (what ``make demo`` runs): the whole topology as local processes, verified workloads.

Starts vhm, pgpu and gvt on loopback with a private machine-memory file, waits until gvt reports both of its
peers connected, then one guest process with ``--vms`` VMs (vGPU types cycled from ``--types``), each running
``--workloads`` workloads that the GPU really executes and the guest verifies in its own RAM. Prints a
summary (``--json``: one JSON object), tears everything down, and exits 0 only if every workload verified.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from .health import probe_sync
from .procs import ServiceProc


def run_demo(vms: int, workloads: int, types: str, vcpus: int = 2, ram_mb: int = 16,
             heartbeat: float = 0.5, extra_guest_args: list[str] | None = None) -> dict[str, Any]:
    """Bring the topology up, run the guests to completion, tear down. Returns the summary."""
    run_dir = tempfile.mkdtemp(prefix="gvtsim-demo-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    mem = os.path.join(run_dir, "machine.mem")
    common = ["--heartbeat-ivl", str(heartbeat), "--mem-path", mem]
    procs: list[ServiceProc] = []
    t0 = time.monotonic()
    try:
        vhm = ServiceProc(["vhm", "--bind", "tcp://127.0.0.1:*", "--mem-size-mb", "1024", *common], name="vhm")
        procs.append(vhm)
        vhm.start()
        pgpu = ServiceProc(["pgpu", "--bind", "tcp://127.0.0.1:*", *common], name="pgpu")
        procs.append(pgpu)
        pgpu.start()
        gvt = ServiceProc(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", pgpu.endpoint,
                           *common], name="gvt")
        procs.append(gvt)
        gvt.start()
        deadline = time.monotonic() + 20
        while not probe_sync(gvt.endpoint, timeout=1.0):  # ready = both peers connected and set up
            if time.monotonic() > deadline:
                raise RuntimeError(f"gvt not ready: {gvt.tail()}")
        guest = ServiceProc(["guest", "--vhm", vhm.endpoint, "--vms", str(vms), "--vcpus", str(vcpus),
                             "--ram-mb", str(ram_mb), "--vgpu-types", types, "--workloads", str(workloads),
                             *common, *(extra_guest_args or [])], name="guest")
        procs.append(guest)
        guest.start()
        done = guest.wait_event("done", timeout=60 + workloads * vms * 0.5)
        gvt_status = probe_sync(gvt.endpoint, timeout=2.0, want_reply=True)
        summary = {k: v for k, v in done.items() if k not in ("event", "t", "_t")}
        summary["gvt"] = {k: v for k, v in (gvt_status.counters if gvt_status else {}).items()
                          if k.startswith(("workloads_", "irq_msi", "csb", "aperture", "gpu_events"))}
        summary["startup_s"] = round(guest.ready["_t"] - t0, 3)
        return summary
    finally:
        for p in reversed(procs):
            p.terminate(timeout=3)
        try:
            os.unlink(mem)
            os.rmdir(run_dir)
        except OSError:
            pass


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
                     + (f" failures: {vm['failures']}" if vm.get("failures") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim demo", description=__doc__)
    p.add_argument("--vms", type=int, default=4)
    p.add_argument("--workloads", type=int, default=50, help="verified workloads per VM")
    p.add_argument("--types", default="GVTg_V5_8,GVTg_V5_4", help="vGPU types, cycled over the VMs")
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    args = p.parse_args(argv)
    try:
        summary = run_demo(args.vms, args.workloads, args.types, vcpus=args.vcpus)
    except (RuntimeError, TimeoutError) as err:
        print(f"gvtsim demo failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(summary) if args.json else render(summary))
    ok = summary["workloads_failed"] == 0 and summary["workloads_verified"] == summary["workloads_submitted"] \
        == args.vms * args.workloads
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
