"""``gvtsim``: one entry point for every service and tool.

Each subcommand is a module with ``main(argv) -> int``; this file only routes. ``gvtsim --help`` lists them.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module, one-line help). Subcommands grow with the project.
COMMANDS: dict[str, tuple[str, str]] = {
    "vhm": ("gvtsim.services.vhm.main", "run the hypervisor service module (VM table, guest memory, ioreq routing)"),
    "gvt": ("gvtsim.services.gvt.main", "run the GVT device model (vGPUs, MMIO/GGTT emulation, management API)"),
    "pgpu": ("gvtsim.services.pgpu.main", "run the physical GPU emulator (engines, command streamer, GGTT)"),
    "guest": ("gvtsim.services.guest.main", "run a guest process hosting one or many VMs"),
    "ctl": ("gvtsim.orchestration.ctl", "management API: types | create | destroy | list (sysfs create_gvt_instance)"),
    "health": ("gvtsim.orchestration.health", "probe a service endpoint; exit 0 when it is ready (the healthcheck)"),
    "demo": ("gvtsim.orchestration.demo", "bring the topology up natively, run verified workloads, print a summary"),
    "bench": ("gvtsim.orchestration.bench", "run benchmarks and print figures"),
    "up": ("gvtsim.orchestration.up", "bring the docker-compose.yml topology up as local processes (--stacks N)"),
    "down": ("gvtsim.orchestration.down", "stop every process `gvtsim up` started (no process left behind)"),
    "status": ("gvtsim.orchestration.status", "services, processes or containers, health, VMs, vGPUs [--json]"),
    "restart": ("gvtsim.orchestration.restart", "restart one service of the run: restart gvt | restart pgpu --stack 1"),
    "trace": ("gvtsim.orchestration.trace", "record the ioreq path into a Perfetto timeline: trace demo --vms 2"),
    "top": ("gvtsim.orchestration.top", "live view of every vGPU (busy %, ioreqs/s, latency): top [--once --json]"),
    "metrics": ("gvtsim.orchestration.metrics", "the run's Prometheus endpoints and a scrape config for them"),
    "chaos": ("gvtsim.orchestration.chaos", "fault injection: kill SERVICE [--restart-after S] | schedule"),
    "keys": ("gvtsim.orchestration.keys", "make the topology's CURVE keys in DIR (gvtsim up and compose do it)"),
    "fuzz": ("gvtsim.orchestration.fuzz", "send N schema-generated, mutated messages to a live service endpoint"),
    "load": ("gvtsim.orchestration.load", "run N concurrent VMs for S seconds and write a report (--report DIR)"),
    "swarm": ("gvtsim.orchestration.swarm", "host stacks on Docker Swarm: config | deploy | rm (docs/SWARM.md)"),
    "screen": ("gvtsim.orchestration.screen", "a VM's screen as a PNG (plane query + framebuffer read): VM [-o FILE]"),
    "web": ("gvtsim.orchestration.web", "serve a page with every VM's screen, live, and per-vGPU figures"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: gvtsim COMMAND [ARGS...]", "", "GVT-g mediated pass-through GPU virtualization, simulated.", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'gvtsim COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Route ``gvtsim COMMAND ARGS`` to the command's module."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"gvtsim: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
