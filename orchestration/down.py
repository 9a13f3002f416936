"""``gvtsim down``: stop every process of the native run (the machinery is in :mod:`.launcher`)."""

from __future__ import annotations

import argparse
import json
import sys

from .launcher import default_run_dir, down
from ..services.common.helptext import UserHelpFormatter


def main(argv: list[str] | None = None) -> int:
    """``gvtsim down``: stop every process of the native run."""
    p = argparse.ArgumentParser(prog="gvtsim down", description="stop every process `gvtsim up` started",
                                formatter_class=UserHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir())
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = down(args.run_dir)
    print(json.dumps(result) if args.json else
          f"down: {len(result['stopped'])} stopped, {len(result['killed'])} killed, {len(result['left'])} left")
    return 0 if not result["left"] else 1


if __name__ == "__main__":
    sys.exit(main())
