"""``gvtsim trace``: record the ioreq path of a run into one timeline (Chrome trace-event / Perfetto JSON).

    gvtsim trace --out demo.trace.json demo --vms 2 --workloads 4     trace a whole demo
    gvtsim trace --out run.trace.json merge DIR                       merge what a traced run left in DIR

With a command (demo, load, ...), gvtsim runs it with tracing on in every service it starts
(GVTSIM_TRACE=DIR), then merges each process's events into OUT. To trace a `gvtsim up` run, start it with
GVTSIM_TRACE=DIR in the environment and merge DIR afterwards. Events: the guest's trapped access (its
round trip, per vCPU) and verified workloads, vhm's dispatch and completion of ioreq batches, gvt's
emulation of each batch, its MSI injections, workload submissions, GPU events and scheduler switches,
pgpu's ELSP submissions and the GPU events it raises. Open OUT in https://ui.perfetto.dev or
chrome://tracing. Tracing is off unless asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from ..services.common.trace import merge
from ..services.common.helptext import UserHelpFormatter


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim trace``."""
    p = argparse.ArgumentParser(prog="gvtsim trace", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--out", "-o", default="gvtsim.trace.json", help="the trace file to write [gvtsim.trace.json]")
    p.add_argument("--keep", metavar="DIR", default=None, help="record into DIR and keep it [a temporary folder]")
    p.add_argument("command", nargs=argparse.REMAINDER, help="`merge DIR`, or a gvtsim command to run traced")
    args = p.parse_args(argv)
    if not args.command:
        p.error("give a command to trace (e.g. demo --vms 2) or `merge DIR`")
    if args.command[0] == "merge":
        if len(args.command) != 2 or not os.path.isdir(args.command[1]):
            p.error("merge takes one folder that a traced run wrote (GVTSIM_TRACE=DIR)")
        return _write(merge(args.command[1]), args.out)
    directory = args.keep or tempfile.mkdtemp(prefix="gvtsim-trace-")
    os.makedirs(directory, exist_ok=True)
    code = subprocess.call([sys.executable, "-m", "gvtsim.orchestration", *args.command],
                           env={**os.environ, "GVTSIM_TRACE": os.path.abspath(directory)})
    _write(merge(directory), args.out)
    return code


def _write(doc: dict, out: str) -> int:
    kinds = sorted({e["args"]["labels"] for e in doc["traceEvents"] if e.get("name") == "process_labels"})
    with open(out, "w") as f:
        json.dump(doc, f)
    n = sum(1 for e in doc["traceEvents"] if e.get("ph") != "M")
    print(f"trace: {n} events from {len(kinds)} kinds of process ({', '.join(kinds) or 'none'}) in {out}; "
          "open it in https://ui.perfetto.dev", file=sys.stderr)
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
