"""``gvtsim top``: a live view of every host stack's vGPUs, refreshed in place (as intel_gpu_top / nvidia-smi).

    gvtsim top                              live, every second; keys: s sort by the next column, r reverse, q quit
    gvtsim top --sort mmio_p99 --stack 1    one stack, the slowest MMIO round trips first
    gvtsim top --once --json                one sample (two STATUS reads --interval apart) as JSON, for scripts

One row per vGPU: host stack, VM and its name, vGPU type, state (active, failsafe, inactive, VM state),
engine busy % per engine (GPU time its workloads took in the interval), workloads/s, ioreqs/s by kind
(PIO, MMIO, PCI, WP), MMIO round trip p50/p99 (vhm's dispatch-to-completion histogram of the VM, since it
booted), its scheduler share in the interval against the share its weight asks for, the failsafe reason and
PV on/off. Everything comes from what gvt and vhm report in STATUS; top only takes differences over time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import sys
import time
from typing import Any

from ..hardware.engines import GPU_ENGINES
from .health import probe, status_dict
from .launcher import RunState, default_run_dir
from ..services.common.helptext import UserHelpFormatter

KINDS = ("PIO", "MMIO", "PCI", "WP")
COLUMNS = ["stack", "vm", "name", "type", "state", *(f"busy_{e}" for e in GPU_ENGINES), "workloads_s",
           *(f"ioreqs_{k}_s" for k in KINDS), "mmio_p50_us", "mmio_p99_us", "share", "weight_share", "failsafe",
           "pv"]
HEADERS = {"stack": "STK", "vm": "VM", "name": "NAME", "type": "TYPE", "state": "STATE", "workloads_s": "WL/s",
           "mmio_p50_us": "MMIO p50µs", "mmio_p99_us": "MMIO p99µs", "share": "SHARE", "weight_share": "WEIGHT",
           "failsafe": "FAILSAFE", "pv": "PV", **{f"busy_{e}": f"{e.upper()}%" for e in GPU_ENGINES},
           **{f"ioreqs_{k}_s": f"{k}/s" for k in KINDS}}


async def sample(state: RunState, stacks: list[int], timeout: float = 2.0) -> dict[int, dict[str, Any]]:
    """One STATUS of every stack's vhm and gvt: {stack: {"t", "vhm", "gvt"}} (None for one that did not answer)."""
    async def one(ep: str | None) -> dict[str, Any] | None:
        if not ep:
            return None
        try:
            return status_dict(await probe(ep, timeout))
        except Exception:
            return None

    eps = [(k, state.endpoint(k, "vhm"), state.endpoint(k, "gvt")) for k in stacks]
    replies = await asyncio.gather(*(one(ep) for _, v, g in eps for ep in (v, g)))
    t = time.monotonic()
    return {k: {"t": t, "vhm": replies[2 * i], "gvt": replies[2 * i + 1]} for i, (k, _, _) in enumerate(eps)}


def rows(prev: dict[int, dict[str, Any]], cur: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per vGPU from two samples (pure: rates are differences of what the services count)."""
    out = []
    for stack, now in sorted(cur.items()):
        before = prev.get(stack) or now
        dt = max(1e-6, now["t"] - before["t"])
        gvt, vhm = (now["gvt"] or {}).get("info", {}), (now["vhm"] or {}).get("info", {})
        g0, v0 = (before["gvt"] or {}).get("info", {}), (before["vhm"] or {}).get("info", {})
        vms_list = vhm.get("vms", {})
        vms = {str(v["vm"]): v for v in (vms_list.get("list", []) if isinstance(vms_list, dict) else vms_list)}
        policy = (gvt.get("scheduler") or {}).get("policy") or {}
        policy0 = (g0.get("scheduler") or {}).get("policy") or {}
        sched, sched0 = policy.get("vgpus", {}), policy0.get("vgpus", {})
        sched_delta = {vg: float(d.get("sched_ms", 0)) - float((sched0.get(vg) or {}).get("sched_ms", 0))
                       for vg, d in sched.items()}
        total_delta = sum(max(0.0, x) for x in sched_delta.values())
        total_weight = sum(float(v.get("weight", 0)) for v in gvt.get("vgpus", [])) or 1.0
        for vg in gvt.get("vgpus", []):
            vm, vid = str(vg["vm"]), str(vg["vgpu_id"])
            busy = (gvt.get("engines_by_vm") or {}).get(vm, {})
            busy0 = (g0.get("engines_by_vm") or {}).get(vm, {})
            wl = (gvt.get("workloads_by_vm") or {}).get(vm, {})
            wl0 = (g0.get("workloads_by_vm") or {}).get(vm, {})
            io = (vhm.get("ioreqs_by_vm") or {}).get(vm, {})
            io0 = (v0.get("ioreqs_by_vm") or {}).get(vm, {})
            mmio = ((vhm.get("ioreq_latency_us_by_vm") or {}).get(vm) or {}).get("MMIO", {})
            failsafe = (gvt.get("failsafe") or {}).get(vm, "")
            vm_info = vms.get(vm, {})
            state = "failsafe" if vg.get("failsafe") else ("active" if vg.get("active") else "inactive")
            if vm_info and vm_info.get("state") != "running":
                state = str(vm_info.get("state"))
            row: dict[str, Any] = {"stack": stack, "vm": int(vm), "vgpu_id": int(vid), "name": vm_info.get("name", ""),
                                   "type": vg.get("type", ""), "state": state}
            for e in GPU_ENGINES:
                key = next((k for k in busy if k.lower() == e), e)
                delta = float(busy.get(key, 0)) - float(busy0.get(key, 0))
                row[f"busy_{e}"] = round(max(0.0, delta) / 1e9 / dt * 100, 1)
            done = int(wl.get("completed", 0)) - int(wl0.get("completed", 0))
            row["workloads_s"] = round(max(0, done) / dt, 1)
            for k in KINDS:
                row[f"ioreqs_{k}_s"] = round(max(0, int(io.get(k, 0)) - int(io0.get(k, 0))) / dt, 1)
            row["mmio_p50_us"] = mmio.get("p50")
            row["mmio_p99_us"] = mmio.get("p99")
            row["share"] = round(max(0.0, sched_delta.get(vid, 0.0)) / total_delta, 3) if total_delta else 0.0
            row["weight_share"] = round(float(vg.get("weight", 0)) / total_weight, 3)
            row["failsafe"] = failsafe
            row["pv"] = "on" if int(((gvt.get("pv_by_vm") or {}).get(vm) or {}).get("enabled", 0)) else "off"
            out.append(row)
    return out


def sort_rows(rs: list[dict[str, Any]], key: str, reverse: bool) -> list[dict[str, Any]]:
    """Rows by ``key``; missing values last."""
    def k(r: dict[str, Any]) -> tuple[int, Any]:
        v = r.get(key)
        return (0, v) if v not in (None, "") else (1, 0)
    present = [r for r in rs if r.get(key) not in (None, "")]
    missing = [r for r in rs if r.get(key) in (None, "")]
    return sorted(present, key=k, reverse=reverse) + missing


def table(rs: list[dict[str, Any]], sort: str, reverse: bool, stacks: dict[int, dict[str, Any]]) -> Any:
    """The rich renderable of one refresh."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from rich import box

    t = Table(title=f"gvtsim top: {len(rs)} vGPUs on {len(stacks)} host stack(s), sorted by "
                    f"{HEADERS.get(sort, sort)}{' (descending)' if reverse else ''}", expand=False,
              box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left")
    for c in COLUMNS:
        t.add_column(HEADERS[c], justify="left" if c in ("name", "type", "state", "failsafe", "pv") else "right",
                     style="bold" if c == sort else None, no_wrap=True, min_width=len(HEADERS[c]))
    for r in rs:
        cells = {**r, "type": str(r.get("type", "")).replace("GVTg_", ""), "name": str(r.get("name", ""))[-22:]}
        t.add_row(*("-" if cells.get(c) in (None, "") else str(cells[c]) for c in COLUMNS),
                  style="red" if r["state"] == "failsafe" else None)
    down = [f"stack {k}: {svc} not answering" for k, s in stacks.items() for svc in ("vhm", "gvt") if s[svc] is None]
    hint = Text("keys: s sort by the next column, r reverse, q quit", style="dim")
    return Group(t, *(Text(d, style="yellow") for d in down), hint)


def _stacks(state: RunState, only: int | None) -> list[int]:
    if only is None:
        return list(state.stacks)
    if only not in state.stacks:
        raise ValueError(f"no host stack {only} (stacks: {', '.join(map(str, state.stacks))})")
    return [only]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim top``."""
    p = argparse.ArgumentParser(prog="gvtsim top", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    p.add_argument("--stack", type=int, default=None, help="only this host stack [all]")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes [1]")
    p.add_argument("--sort", default="vm", choices=COLUMNS, metavar="COLUMN",
                   help=f"sort by one of: {', '.join(COLUMNS)} [vm]")
    p.add_argument("--reverse", action="store_true", help="descending")
    p.add_argument("--once", action="store_true", help="one sample, printed once (no live view)")
    p.add_argument("--json", action="store_true", help="with --once: print JSON")
    p.add_argument("-n", "--count", type=int, default=0, help="stop after N refreshes [0: until q or Ctrl-C]")
    args = p.parse_args(argv)
    state = RunState.load(args.run_dir)
    if state is None:
        print(f"gvtsim top: nothing is up in {args.run_dir}: start it with `gvtsim up`", file=sys.stderr)
        return 3
    try:
        stacks = _stacks(state, args.stack)
    except ValueError as err:
        print(f"gvtsim top: {err}", file=sys.stderr)
        return 2
    if args.once:
        first = asyncio.run(sample(state, stacks))
        time.sleep(args.interval)  # the rates' interval (a measurement window, not a synchronisation)
        second = asyncio.run(sample(state, stacks))
        rs = sort_rows(rows(first, second), args.sort, args.reverse)
        if args.json:
            print(json.dumps({"interval_s": args.interval, "columns": COLUMNS, "vgpus": rs,
                              "stacks": {str(k): {svc: v[svc] is not None for svc in ("vhm", "gvt")}
                                         for k, v in second.items()}}))
        else:
            from rich.console import Console
            Console(width=max(200, os.get_terminal_size().columns if sys.stdout.isatty() else 200)).print(
                table(rs, args.sort, args.reverse, second))
        return 0
    return live(state, stacks, args)


def live(state: RunState, stacks: list[int], args: argparse.Namespace) -> int:
    """The refreshing view: rich.live redraws the table in place; keys are read without echo when stdin is a tty."""
    from rich.console import Console
    from rich.live import Live

    tty = sys.stdin.isatty()
    old = None
    if tty:
        import termios
        import tty as ttymod
        old = termios.tcgetattr(sys.stdin)
        ttymod.setcbreak(sys.stdin.fileno())
    sort, reverse = args.sort, args.reverse
    prev = asyncio.run(sample(state, stacks))
    console = Console()
    refreshes = 0
    try:
        with Live(table([], sort, reverse, prev), console=console, screen=False, auto_refresh=False) as view:
            while not args.count or refreshes < args.count:
                deadline = time.monotonic() + args.interval
                while True:  # wait out the interval, answering keys at once
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if not tty:
                        time.sleep(left)  # no keys to wait for: the refresh interval itself
                        break
                    if select.select([sys.stdin], [], [], left)[0]:
                        key = sys.stdin.read(1)
                        if key in ("q", "Q"):
                            return 0
                        if key == "s":
                            sort = COLUMNS[(COLUMNS.index(sort) + 1) % len(COLUMNS)]
                        elif key == "r":
                            reverse = not reverse
                        break
                cur = asyncio.run(sample(state, stacks))
                rs = sort_rows(rows(prev, cur), sort, reverse)
                if time.monotonic() >= deadline:
                    prev = cur
                    refreshes += 1
                view.update(table(rs, sort, reverse, cur), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        if old is not None:
            import termios
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, old)
    return 0


if __name__ == "__main__":
    sys.exit(main())
