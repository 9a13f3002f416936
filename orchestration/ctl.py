"""``gvtsim ctl``: the management API of the GVT device model (the sysfs ``create_gvt_instance`` and
``vmN/vgpu_id`` equivalent).

    gvtsim ctl types [--json]                        vGPU types and how many more of each fit
    gvtsim ctl list [--json]                         vGPUs: VM -> vGPU id, type, state
    gvtsim ctl create GVTg_V5_4 --vm N               a vGPU of that type for VM N
    gvtsim ctl create N,LOW_MB,HIGH_MB,FENCES        a vGPU with explicit sizes (the AcrnGT spec)
    gvtsim ctl destroy N [--force]                   remove VM N's vGPU
    gvtsim ctl reset N                               device-model-level reset of VM N's vGPU

ctl finds gvt in the run that `gvtsim up` started (--run-dir, host stack --stack, default 0); --endpoint
talks to any gvt instead. It speaks the wire protocol like any peer, through the session layer: HELLO (role
``ctl``), one request, BYE. Exit status: 0 done, 1 gvt refused (the reason is printed), 2 usage error,
3 gvt could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import msgspec
import zmq

from ..protocol import messages as m
from ..services.common.client import RemoteError
from ..services.common.helptext import UserHelpFormatter
from .health import one_call
from .launcher import RunState, default_run_dir

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"  # docker-compose.yml's gvt port


class CtlError(Exception):
    """gvt answered ERROR, or ctl refuses a request that would not do what it says."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class Unreachable(Exception):
    """The endpoint is malformed or the service did not answer (the message says what to do)."""


async def call(endpoint: str, msg: m.Message, timeout: float = 3.0) -> m.Message:
    """A session (HELLO as role ``ctl``), ``msg`` as a call (a fresh ``req``), its answer, BYE.

    Raises:
        CtlError: the answer was ERROR.
        Unreachable: a malformed endpoint, or no answer within ``timeout``.
    """
    fields = {k: v for k, v in msgspec.structs.asdict(msg).items() if k != "req"}
    try:
        return await one_call(endpoint, "ctl", type(msg), timeout=timeout, server="gvt", **fields)
    except RemoteError as err:
        raise CtlError(err.code, err.error.reason) from None
    except zmq.ZMQError as err:
        raise Unreachable(f"{endpoint!r} is not a valid endpoint ({err.strerror}); "
                          "use tcp://HOST:PORT or ipc://PATH") from None
    except TimeoutError:
        raise Unreachable(f"no answer from {endpoint} within {timeout:g} s; is it up? (`gvtsim status`)") from None


async def vhm_vms(endpoint: str, timeout: float) -> dict[int, dict[str, Any]]:
    """The VMs vhm knows (its STATUS), by id."""
    from .health import probe  # late: health imports nothing of ctl, but keeps the import graph flat

    try:
        reply = await probe(endpoint, timeout)
    except Exception as err:
        raise Unreachable(f"vhm at {endpoint} did not answer ({_why(err)})") from None
    vms = (reply.info or {}).get("vms", {})
    return {int(v["vm"]): v for v in (vms.get("list", []) if isinstance(vms, dict) else vms)}


def _why(err: BaseException) -> str:
    return str(err) or {"TimeoutError": "timed out"}.get(type(err).__name__, type(err).__name__)


def resolve(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(gvt endpoint, vhm endpoint or None, where they came from) for ``--endpoint`` / ``--run-dir --stack``.

    Raises:
        Unreachable: no run in the run directory, or no such host stack, and no --endpoint.
    """
    if args.endpoint:
        return args.endpoint, args.vhm_endpoint, f"gvt at {args.endpoint}"
    state = RunState.load(args.run_dir)
    if state is None:
        raise Unreachable(f"nothing is up in {args.run_dir}: start it with `gvtsim up`, pass --run-dir DIR, "
                          f"or --endpoint (compose: {DEFAULT_ENDPOINT})")
    if args.stack not in state.stacks:
        raise Unreachable(f"no host stack {args.stack} in {args.run_dir} (stacks: "
                          f"{', '.join(map(str, state.stacks))})")
    gvt = state.endpoint(args.stack, "gvt")
    if not gvt:
        raise Unreachable(f"stack {args.stack} in {args.run_dir} has no gvt")
    return gvt, args.vhm_endpoint or state.endpoint(args.stack, "vhm"), f"gvt of stack {args.stack} at {gvt}"


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _parse_spec_vm(spec: str) -> int | None:
    parts = spec.split(",")
    if len(parts) == 4 and parts[0].strip().lstrip("-").isdigit():
        return int(parts[0])
    return None


def build_parser() -> argparse.ArgumentParser:
    # the common options are accepted before or after the subcommand (`ctl --json types`, `ctl types --json`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", default=argparse.SUPPRESS,
                        help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    common.add_argument("--stack", type=int, default=argparse.SUPPRESS, help="host stack number [0]")
    common.add_argument("--endpoint", default=argparse.SUPPRESS,
                        help="talk to this gvt instead of the run's, e.g. tcp://127.0.0.1:5556 [$GVTSIM_GVT_ENDPOINT]")
    common.add_argument("--vhm-endpoint", default=argparse.SUPPRESS,
                        help="the vhm beside that gvt, to check that VMs exist (with --endpoint)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for gvt [3]")
    p = argparse.ArgumentParser(prog="gvtsim ctl", description=__doc__, parents=[common],
                                formatter_class=UserHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{types,list,create,destroy,reset}")
    sub.add_parser("types", parents=[common], help="vGPU types and how many more of each fit")
    sub.add_parser("list", parents=[common], help="vGPUs: VM id -> vGPU id, type, state")
    c = sub.add_parser("create", parents=[common],
                       help="create a vGPU: a type name with --vm N, or 'vmid,low_gm_MB,high_gm_MB,fence'")
    c.add_argument("spec", help="GVTg_V5_8 | GVTg_V5_4 | GVTg_V5_2 | GVTg_V5_1, or vmid,low_MB,high_MB,fences")
    c.add_argument("--vm", type=int, help="the VM (required with a type name)")
    d = sub.add_parser("destroy", parents=[common], help="destroy the VM's vGPU")
    d.add_argument("vm", type=int)
    d.add_argument("--force", action="store_true",
                   help="also when a guest is running on it (the guest sees its GPU vanish)")
    r = sub.add_parser("reset", parents=[common], help="device-model-level reset of the VM's vGPU")
    r.add_argument("vm", type=int)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse, then fill the common options' defaults (they may appear before or after the subcommand)."""
    args = build_parser().parse_args(argv)
    defaults = {"run_dir": default_run_dir(), "stack": 0, "endpoint": os.environ.get("GVTSIM_GVT_ENDPOINT", ""),
                "vhm_endpoint": None, "json": False, "timeout": 3.0}
    for k, v in defaults.items():
        if not hasattr(args, k):
            setattr(args, k, v)
    return args


def _request(args: argparse.Namespace) -> m.Message:
    if args.cmd == "types":
        return m.MgmtTypes(req=1)
    if args.cmd == "list":
        return m.MgmtList(req=1)
    if args.cmd == "create":
        vm = args.vm if args.vm is not None else _parse_spec_vm(args.spec)
        if vm is None:
            raise ValueError("create needs --vm N with a type name (or SPEC 'vmid,low_gm_MB,high_gm_MB,fence')")
        return m.VgpuCreate(req=1, vm=vm, spec=args.spec)
    if args.cmd == "destroy":
        return m.VgpuDestroy(req=1, vm=args.vm)
    return m.VgpuReset(req=1, vm=args.vm)


def _render(args: argparse.Namespace, reply: m.Message) -> str:
    if isinstance(reply, m.MgmtTypesReply):
        rows = [msgspec.to_builtins(t) for t in reply.types]
        if args.json:
            return json.dumps({"types": rows})
        return _table(rows, ["name", "low_gm_mb", "high_gm_mb", "fence", "weight", "avail"])
    if isinstance(reply, m.MgmtListReply):
        rows = [msgspec.to_builtins(v) for v in reply.vgpus]
        if args.json:
            return json.dumps({"vgpus": rows})
        if not rows:
            return "no vGPUs"
        return _table(rows, ["vm", "vgpu_id", "type", "low_gm_mb", "high_gm_mb", "fence", "weight", "active",
                             "failsafe"])
    if isinstance(reply, m.VgpuCreated):
        return json.dumps({"vm": reply.vm, "vgpu_id": reply.vgpu_id}) if args.json else \
            f"vm {reply.vm}: vGPU {reply.vgpu_id} created"
    done = {"destroy": "destroyed", "reset": "reset"}.get(args.cmd, "done")
    return json.dumps({"ok": True, "command": args.cmd, "vm": args.vm}) if args.json else \
        f"vm {args.vm}: vGPU {done}"


async def run(args: argparse.Namespace, msg: m.Message) -> m.Message:
    """Check what ctl can check first (the VM exists, has no vGPU yet, is not in use), then call gvt."""
    gvt, vhm, where = resolve(args)
    if isinstance(msg, (m.VgpuCreate, m.VgpuDestroy, m.VgpuReset)):
        listed = await call(gvt, m.MgmtList(req=1), args.timeout)
        vgpus = {v.vm: v for v in listed.vgpus} if isinstance(listed, m.MgmtListReply) else {}
        vms = await vhm_vms(vhm, args.timeout) if vhm else None
        if isinstance(msg, m.VgpuCreate):
            if msg.vm in vgpus:
                v = vgpus[msg.vm]
                raise CtlError("exists", f"vm {msg.vm} already has vGPU {v.vgpu_id} ({v.type}); "
                                         f"`gvtsim ctl destroy {msg.vm}` first")
            if vms is not None and msg.vm not in vms:
                known = ", ".join(map(str, sorted(vms))) or "none"
                raise CtlError("no_such_vm", f"vm {msg.vm} does not exist on this host stack (VMs: {known}); "
                                             "start a guest first")
        elif msg.vm not in vgpus:
            raise CtlError("no_such_vm", f"vm {msg.vm} has no vGPU (`gvtsim ctl list` shows them)")
        elif isinstance(msg, m.VgpuDestroy) and not args.force and vms is not None and msg.vm in vms \
                and vms[msg.vm].get("state") in ("running", "creating"):
            owner = vms[msg.vm].get("owner") or "a guest"
            raise CtlError("in_use", f"vm {msg.vm} ({vms[msg.vm].get('name') or 'unnamed'}) is running on "
                                     f"{owner} and uses vGPU {vgpus[msg.vm].vgpu_id}; pass --force to remove it "
                                     "anyway (the guest loses its GPU)")
    return await call(gvt, msg, args.timeout)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim ctl``."""
    args = parse_args(argv)
    try:
        msg = _request(args)
    except (ValueError, msgspec.ValidationError) as err:
        print(f"gvtsim ctl: {err}", file=sys.stderr)
        return 2
    try:
        reply = asyncio.run(run(args, msg))
    except CtlError as err:
        if args.json:
            print(json.dumps({"error": err.code, "reason": err.reason}))
        print(f"gvtsim ctl: {err.reason}", file=sys.stderr)
        return 1
    except Unreachable as err:
        if args.json:
            print(json.dumps({"error": "unreachable", "reason": str(err)}))
        print(f"gvtsim ctl: {err}", file=sys.stderr)
        return 3
    print(_render(args, reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
