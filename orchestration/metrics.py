"""``gvtsim metrics``: where the run's Prometheus endpoints are, and a scrape configuration for them.

    gvtsim metrics                      one line per service: NAME  URL
    gvtsim metrics --scrape-config      a prometheus.yml that scrapes every service of the run
    gvtsim metrics --targets            file_sd targets (JSON) for a Prometheus file_sd_configs entry
    gvtsim metrics --get s0/gvt         print one service's metrics now

`gvtsim up` gives every service a metrics endpoint on a free loopback port (each says which in its ready
line; the run directory records it). Under docker compose every service serves http://SERVICE:9100/metrics
in the compose network; docs/metrics.md has the scrape configuration for that case. Exit status: 0, 3 when
nothing is up.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Any

from .launcher import RunState, alive, default_run_dir
from ..services.common.helptext import UserHelpFormatter


def targets(state: RunState) -> list[dict[str, Any]]:
    """Prometheus file_sd entries: one per live process with a metrics endpoint, labelled by stack/service."""
    out = []
    for p in state.procs.values():
        if p.metrics and alive(p):
            hostport = p.metrics.split("//", 1)[1].split("/", 1)[0]
            out.append({"targets": [hostport], "labels": {"job": "gvtsim", "stack": str(p.stack),
                                                          "service": p.service, "process": p.name}})
    return out


def scrape_config(state: RunState) -> str:
    """A prometheus.yml scraping every service of the run every 5 s."""
    lines = ["# gvtsim: every service of the run in " + state.run_dir, "global:", "  scrape_interval: 5s",
             "scrape_configs:", "  - job_name: gvtsim", "    static_configs:"]
    for t in targets(state):
        lines.append(f"      - targets: [{t['targets'][0]!r}]")
        lines.append("        labels: {" + ", ".join(f"{k}: {v!r}" for k, v in t["labels"].items() if k != "job")
                     + "}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim metrics``."""
    p = argparse.ArgumentParser(prog="gvtsim metrics", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--run-dir", default=default_run_dir(),
                   help=f"the run `gvtsim up` started [$GVTSIM_RUN_DIR or {default_run_dir()}]")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--scrape-config", action="store_true", help="print a prometheus.yml for the run")
    g.add_argument("--targets", action="store_true", help="print file_sd targets (JSON)")
    g.add_argument("--get", metavar="NAME", help="print the metrics of one process (e.g. s0/gvt)")
    args = p.parse_args(argv)
    state = RunState.load(args.run_dir)
    if state is None:
        print(f"gvtsim metrics: nothing is up in {args.run_dir}: start it with `gvtsim up`", file=sys.stderr)
        return 3
    if args.scrape_config:
        print(scrape_config(state), end="")
    elif args.targets:
        print(json.dumps(targets(state), indent=1))
    elif args.get:
        proc = state.procs.get(args.get)
        if proc is None or not proc.metrics:
            print(f"gvtsim metrics: no metrics endpoint for {args.get!r}; processes: "
                  f"{', '.join(n for n, q in state.procs.items() if q.metrics)}", file=sys.stderr)
            return 2
        with urllib.request.urlopen(proc.metrics, timeout=5) as r:
            sys.stdout.write(r.read().decode())
    else:
        for n, proc in state.procs.items():
            print(f"{n:<20} {proc.metrics if proc.metrics and alive(proc) else '(no metrics endpoint)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
