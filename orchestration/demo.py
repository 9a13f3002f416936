"""``gvtsim demo``: bring the topology up natively and exercise it.

Until the end-to-end issue lands this runs the session layer only: an echo server and client as real
processes, HELLO, heartbeats, and a clean SIGTERM of both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], dict]:
    proc = subprocess.Popen([sys.executable, "-m", "gvtsim.services.common.echo", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim demo", description=__doc__)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    server, ready = _start(["server", "--bind", "tcp://127.0.0.1:*", "--heartbeat-ivl", "0.2"])
    client, _ = _start(["client", "--connect", ready["endpoint"], "--heartbeat-ivl", "0.2"])
    assert client.stdout is not None
    up = json.loads(client.stdout.readline())
    codes = []
    for proc in (client, server):
        os.killpg(proc.pid, signal.SIGTERM)
        codes.append(proc.wait(5))
    summary = {"stage": "foundation", "session_up": up.get("event") == "server_up", "exit_codes": codes,
               "seconds": round(time.monotonic() - t0, 3)}
    print(json.dumps(summary) if args.json else f"gvtsim demo (foundation): {summary}")
    return 0 if summary["session_up"] and codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
