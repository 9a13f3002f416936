"""The thin shell every gvtsim service shares: flags and environment, uvloop, signals, readiness.

A service is a class with ``start()`` (bind/connect, return readiness info), ``stop()`` and ``status()``;
:func:`run_service` does the rest:

* configuration from command-line flags whose defaults come from environment variables (compose sets them);
* one ``zmq.asyncio`` context on uvloop;
* SIGTERM / SIGINT end the process cleanly: ``stop()`` is given 1.5 s, sockets close with LINGER 0,
  the context is destroyed, so the process exits well within 2 s;
* readiness: one JSON line ``{"event": "ready", ...}`` on stdout once serving (logs go to stderr);
  health probes (``gvtsim health ENDPOINT``) ask the service for STATUS over its own socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import uvloop
import zmq
import zmq.asyncio

from ...protocol import messages as m
from ...protocol.session import new_epoch
from . import curve
from . import log as logmod
from .liveness import DEFAULT_INTERVAL, DEFAULT_LIVENESS, HeartbeatConfig


def env(name: str, default: str) -> str:
    """The value of environment variable ``GVTSIM_<name>``, else ``default``."""
    return os.environ.get(f"GVTSIM_{name}", default)


def common_args(parser: argparse.ArgumentParser, role: str) -> argparse.ArgumentParser:
    """Flags every service has. Each defaults to an environment variable (shown in --help)."""
    g = parser.add_argument_group("common")
    # host name and pid: unique across containers too (every container's first process is pid 1)
    g.add_argument("--id", default=env("ID", f"{role}-{socket.gethostname()[:32]}-{os.getpid()}"),
                   help="peer id announced in HELLO [GVTSIM_ID]")
    g.add_argument("--heartbeat-ivl", type=float, default=float(env("HEARTBEAT_IVL", str(DEFAULT_INTERVAL))),
                   help="application heartbeat interval, seconds [GVTSIM_HEARTBEAT_IVL]")
    g.add_argument("--liveness", type=int, default=int(env("LIVENESS", str(DEFAULT_LIVENESS))),
                   help="silent intervals before a peer is declared lost: a backstop for a hung process, a "
                        "dead peer is found by the transport at once [GVTSIM_LIVENESS]")
    g.add_argument("--log-level", default=env("LOG_LEVEL", "info"), help="[GVTSIM_LOG_LEVEL]")
    g.add_argument("--metrics", default=env("METRICS", ""), metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics; port 0 picks one [GVTSIM_METRICS, off]")
    g.add_argument("--trace", default=env("TRACE", ""), metavar="FILE",
                   help="record ioreq-path trace events (Chrome trace-event JSON lines) into FILE [GVTSIM_TRACE, off]")
    g.add_argument("--keys", default=None, help="the topology's CURVE keys directory (made by `gvtsim keys`) "
                   "[GVTSIM_KEYS, else GVTSIM_RUN_DIR/keys or .gvtsim/run/keys]")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="CURVE off: no authentication, no encryption (debugging only) [GVTSIM_INSECURE=1]")
    return parser


def mem_args(parser: argparse.ArgumentParser) -> None:
    """Flags of services that map the machine memory."""
    parser.add_argument("--mem-path", default=env("MEM_PATH", "/dev/shm/gvtsim-machine.mem"),
                        help="machine memory file, shared by the host stack [GVTSIM_MEM_PATH]")
    parser.add_argument("--mem-size-mb", type=int, default=int(env("MEM_SIZE_MB", "2048")),
                        help="machine memory size (sparse) [GVTSIM_MEM_SIZE_MB]")


class BaseService:
    """Common state of a service: role, id, epoch, heartbeat config, counters, logger."""

    role: m.Role = "probe"  # the HELLO role this service says (each service sets its own)

    def __init__(self, ctx: zmq.asyncio.Context, args: argparse.Namespace) -> None:
        self.ctx = ctx
        self.args = args
        self.ident: str = args.id
        self.epoch = new_epoch()
        self.hb = HeartbeatConfig(args.heartbeat_ivl, args.liveness)
        self.counters: Counter[str] = Counter()
        self.log = logmod.configure(self.role, self.ident, args.log_level)
        curve.configure(getattr(args, "keys", None), getattr(args, "insecure", None), log=self.log)
        self.started = time.monotonic()

    async def start(self) -> dict[str, Any]:
        """Bind/connect and start tasks. Returns extra readiness info (endpoints...)."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop tasks and close sockets."""

    def status(self) -> tuple[bool, dict[str, Any]]:
        """(ready, info) for STATUS replies."""
        return True, {}


async def _start_observability(svc: BaseService, args: argparse.Namespace, info: dict[str, Any]) -> Any:
    """The metrics endpoint and the trace file, when asked for (both off by default). Adds the metrics URL to
    the readiness info. A metrics address that cannot be bound is logged; the service serves on without it."""
    from . import trace
    from .metrics import MetricsServer, parse_address

    if getattr(args, "trace", ""):
        trace.enable(args.trace, svc.role, svc.ident)
    address = parse_address(getattr(args, "metrics", "") or "")
    if address is None:
        return None
    server = MetricsServer(svc, address)
    try:
        info["metrics"] = server.start()
    except OSError as err:
        svc.counters["metrics_unavailable"] += 1
        svc.log.error("metrics_unavailable", address=address, error=str(err))
        return None
    return server


def run_service(factory: Callable[[zmq.asyncio.Context, argparse.Namespace], BaseService],
                args: argparse.Namespace) -> int:
    """Run a service until SIGTERM/SIGINT. Returns the process exit code."""
    return uvloop.run(_main(factory, args))


async def _main(factory: Callable[[zmq.asyncio.Context, argparse.Namespace], BaseService],
                args: argparse.Namespace) -> int:
    ctx = zmq.asyncio.Context()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    svc = factory(ctx, args)
    code = 0
    metrics = None
    try:
        info = await svc.start()
        metrics = await _start_observability(svc, args, info)
        ready = {"event": "ready", "role": svc.role, "id": svc.ident, "epoch": svc.epoch, "pid": os.getpid(), **info}
        print(json.dumps(ready), flush=True)
        svc.log.info("ready", **info)
        await stop.wait()
        svc.log.info("stopping")
    except Exception:
        svc.log.exception("service_failed")
        code = 1
    finally:
        try:
            await asyncio.wait_for(svc.stop(), 1.5)
        except Exception:
            svc.log.warning("stop_timeout")
        ctx.destroy(linger=0)
        if metrics is not None:
            metrics.stop()
    svc.log.info("stopped", code=code)
    sys.stdout.flush()
    return code
