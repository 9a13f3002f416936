"""``gvtsim ctl``: the management API of the GVT device model (the sysfs ``create_gvt_instance`` and
``vmN/vgpu_id`` equivalent).

    gvtsim ctl [--endpoint EP] [--json] types
    gvtsim ctl [--endpoint EP] [--json] list
    gvtsim ctl [--endpoint EP] [--json] create SPEC [--vm N]   # SPEC: GVTg_V5_4 | vmid,low_MB,high_MB,fence
    gvtsim ctl [--endpoint EP] [--json] destroy VMID
    gvtsim ctl [--endpoint EP] [--json] reset VMID             # device-model-level reset

Speaks the wire protocol like any peer, through the session layer: HELLO (role ``ctl``), one request, BYE. Prints a table, or one
JSON document with ``--json``; exits 1 with the error code and reason when gvt answers ERROR, 2 on usage
errors, 3 when gvt cannot be reached.
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
from .health import one_call

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


class CtlError(Exception):
    """gvt answered ERROR."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


async def call(endpoint: str, msg: m.Message, timeout: float = 3.0) -> m.Message:
    """A session (HELLO as role ``ctl``), ``msg`` as a call (a fresh ``req``), its answer, BYE.

    Raises:
        CtlError: the answer was ERROR.
        TimeoutError: no answer in time.
    """
    fields = {k: v for k, v in msgspec.structs.asdict(msg).items() if k != "req"}
    try:
        return await one_call(endpoint, "ctl", type(msg), timeout=timeout, server="gvt", **fields)
    except RemoteError as err:
        raise CtlError(err.code, err.error.reason) from None


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
    p = argparse.ArgumentParser(prog="gvtsim ctl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=os.environ.get("GVTSIM_GVT_ENDPOINT", DEFAULT_ENDPOINT),
                   help="gvt management endpoint [GVTSIM_GVT_ENDPOINT]")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--timeout", type=float, default=3.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("types", help="vGPU types with available instances")
    sub.add_parser("list", help="vGPUs: VM id -> vGPU id")
    c = sub.add_parser("create", help="create a vGPU: a type name or 'vmid,low_gm_MB,high_gm_MB,fence'")
    c.add_argument("spec")
    c.add_argument("--vm", type=int, help="the VM (required with a type name)")
    d = sub.add_parser("destroy", help="destroy the VM's vGPU")
    d.add_argument("vm", type=int)
    r = sub.add_parser("reset", help="device-model-level reset of the VM's vGPU")
    r.add_argument("vm", type=int)
    return p


def _request(args: argparse.Namespace) -> m.Message:
    if args.cmd == "types":
        return m.MgmtTypes(req=1)
    if args.cmd == "list":
        return m.MgmtList(req=1)
    if args.cmd == "create":
        vm = args.vm if args.vm is not None else _parse_spec_vm(args.spec)
        if vm is None:
            raise ValueError("create needs --vm N unless SPEC is 'vmid,low_gm_MB,high_gm_MB,fence'")
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
            f"vm {reply.vm}: vgpu {reply.vgpu_id}"
    return json.dumps({"ok": True, "command": args.cmd, "vm": args.vm}) if args.json else "ok"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim ctl``."""
    p = build_parser()
    args = p.parse_args(argv)
    try:
        msg = _request(args)
    except (ValueError, msgspec.ValidationError) as err:
        p.print_usage(sys.stderr)
        print(f"gvtsim ctl: {err}", file=sys.stderr)
        return 2
    try:
        reply = asyncio.run(call(args.endpoint, msg, args.timeout))
    except CtlError as err:
        if args.json:
            print(json.dumps({"error": err.code, "reason": err.reason}))
        print(f"gvtsim ctl: {err.code}: {err.reason}", file=sys.stderr)
        return 1
    except (TimeoutError, OSError, zmq.ZMQError) as err:
        print(f"gvtsim ctl: gvt at {args.endpoint} did not answer ({type(err).__name__} {err})", file=sys.stderr)
        return 3
    print(_render(args, reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
