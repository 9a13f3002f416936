"""``gvtsim keys DIR``: make the topology's CURVE keypairs (one per service and per client role).

    gvtsim keys DIR [--force] [--stay]
    gvtsim keys DIR --check        # exit 0 when every public key is there (the keygen healthcheck)

Writes ``DIR/public/NAME.key`` and ``DIR/private/NAME.key_secret`` (pyzmq ``zmq.auth`` certificates) for
vhm, gvt, pgpu, guest, ctl and probe; keys that exist are kept (so a restarted keygen does not lock the
running services out) unless ``--force``. ``gvtsim up`` runs this into its run directory; the compose
topology runs it in its ``keygen`` service, into the ``keys`` volume the services mount read-only: with
``--stay`` it then waits for SIGTERM, so the service stays up and healthy and the others depend on it with
``service_healthy`` (``docker compose up --wait`` treats a service that exited as a failure in some Compose
versions: docker/compose issue 10596).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

from ..services.common import curve
from ..services.common.helptext import UserHelpFormatter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim keys", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("dir", help="keys directory (created if missing)")
    p.add_argument("--force", action="store_true", help="replace existing keys (running services must restart)")
    p.add_argument("--stay", action="store_true", help="after writing, wait for SIGTERM (a compose service)")
    p.add_argument("--check", action="store_true", help="only check that every public key exists")
    args = p.parse_args(argv)
    if args.check:
        missing = [n for n in curve.KEY_NAMES if not os.path.exists(os.path.join(args.dir, "public", f"{n}.key"))]
        if missing:
            print(f"gvtsim keys: missing in {args.dir}/public: {', '.join(missing)}", file=sys.stderr)
        return 1 if missing else 0
    try:
        made = curve.generate(args.dir, overwrite=args.force)
    except OSError as err:
        print(f"gvtsim keys: cannot write {args.dir}: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "keys", "dir": args.dir, "created": made,
                      "kept": [n for n in curve.KEY_NAMES if n not in made]}), flush=True)
    if args.stay:  # blocked + sigwait: works as a container's pid 1 too (no default SIGTERM action there)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    return 0


if __name__ == "__main__":
    sys.exit(main())
