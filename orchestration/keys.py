"""``gvtsim keys DIR``: make the topology's CURVE keypairs (one per service and per client role).

    gvtsim keys DIR [--force]

Writes ``DIR/public/NAME.key`` and ``DIR/private/NAME.key_secret`` (pyzmq ``zmq.auth`` certificates) for
vhm, gvt, pgpu, guest, ctl and probe; keys that exist are kept (so a restarted keygen does not lock the
running services out) unless ``--force``. ``gvtsim up`` runs this into its run directory; the compose
topology runs it in its one-shot ``keygen`` service, into the ``keys`` volume the services mount read-only.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..services.common import curve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gvtsim keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="keys directory (created if missing)")
    p.add_argument("--force", action="store_true", help="replace existing keys (running services must restart)")
    args = p.parse_args(argv)
    try:
        made = curve.generate(args.dir, overwrite=args.force)
    except OSError as err:
        print(f"gvtsim keys: cannot write {args.dir}: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"event": "keys", "dir": args.dir, "created": made,
                      "kept": [n for n in curve.KEY_NAMES if n not in made]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
