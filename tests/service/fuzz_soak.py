"""The long fuzz: N messages (default 1,000,000) against one of vhm, gvt, pgpu, then a well-behaved VM.

    python tests/service/fuzz_soak.py vhm|gvt|pgpu [N]

The target is fuzzed while the fuzzer is its socket's only peer (vhm and pgpu before gvt starts; gvt's
management socket has no other peer), so the accounting is exact. Then the rest of the stack starts, a guest
runs verified workloads, and every service must answer STATUS. Prints one JSON line with the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from gvtsim.orchestration.fuzz import Fuzzer
from gvtsim.orchestration.health import probe_sync
from gvtsim.orchestration.procs import ServiceProc
from gvtsim.services.common import curve


def main() -> int:
    target = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    run = tempfile.mkdtemp(prefix=f"gvtsim-soak-{target}-", dir="/dev/shm")
    keys = os.path.join(run, "keys")
    curve.generate(keys)
    curve.configure(keys, insecure=False)
    env = {curve.ENV_KEYS: keys}
    common = ["--mem-path", os.path.join(run, "machine.mem"), "--log-level", "error", "--heartbeat-ivl", "2"]
    procs = []

    def start(argv: list[str], name: str) -> ServiceProc:
        p = ServiceProc(argv, env=env, name=name)
        procs.append(p)
        p.start(timeout=120)  # a shared, loaded machine: starting can be slow
        return p

    try:
        vhm = start(["vhm", "--bind", "tcp://127.0.0.1:*", "--mem-size-mb", "512", *common], "vhm")
        pgpu = start(["pgpu", "--bind", "tcp://127.0.0.1:*", *common], "pgpu")
        out: dict = {"target": target, "messages": n}
        gvt = None
        if target == "gvt":
            gvt = start(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", pgpu.endpoint,
                         *common], "gvt")
            while not probe_sync(gvt.endpoint, timeout=1.0):
                pass
        ep = {"vhm": vhm.endpoint, "pgpu": pgpu.endpoint, "gvt": gvt.endpoint if gvt else ""}[target]
        rep = Fuzzer(ep, target, sessions=8, seed=int(os.environ.get("SEED", "1")),
                     hang_timeout=float(os.environ.get("HANG_TIMEOUT", "60"))).run(n, progress=True)
        d = rep.to_dict()
        out["fuzz"] = {k: d[k] for k in ("ok", "messages", "frames", "seconds", "rate_per_s", "hangs", "barriers",
                                         "sessions_opened", "still_serving", "service_restarted", "accounting",
                                         "server_counters", "mutations", "replies")}
        print(json.dumps({"event": "fuzz_done", **out}), file=sys.stderr, flush=True)  # the figures, whatever follows
        if gvt is None:
            gvt = start(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", pgpu.endpoint,
                         *common], "gvt")
            deadline = time.monotonic() + 120
            while not probe_sync(gvt.endpoint, timeout=1.0) and time.monotonic() < deadline:
                pass
        guest = start(["guest", "--vhm", vhm.endpoint, "--vms", "1", "--vcpus", "2", "--ram-mb", "16",
                       "--vgpu-types", "GVTg_V5_4", "--workloads", "16", *common], "guest")
        done = guest.wait_event("done", timeout=600)
        out["vm_after"] = {k: done.get(k) for k in ("workloads_submitted", "workloads_verified", "workloads_failed")}
        out["status_after"] = {name: bool(probe_sync(p.endpoint, timeout=3.0, want_reply=True))
                               for name, p in (("vhm", vhm), ("pgpu", pgpu), ("gvt", gvt))}
        out["pass"] = (rep.ok and rep.hangs == 0 and out["fuzz"]["accounting"]["other_peers"] == 0
                       and done.get("workloads_failed") == 0 and all(out["status_after"].values()))
        print(json.dumps(out), flush=True)
        return 0 if out["pass"] else 1
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(run, ignore_errors=True)  # the machine memory and the saved states, on tmpfs


if __name__ == "__main__":
    sys.exit(main())
