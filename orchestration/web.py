"""``gvtsim web``: a page with every VM's screen, live, and its vGPU's figures beside it.

    gvtsim web [--gvt EP]... [--vhm EP]... [--listen tcp://127.0.0.1:8080] [--fps 2] [--run-dir DIR]

What it watches: the gvt management endpoints given with ``--gvt`` (one per host stack, with the matching
``--vhm`` for VM names), else every stack of the native run in ``--run-dir`` (``gvtsim up``), else
GVTSIM_GVT_ENDPOINT / tcp://127.0.0.1:5556. In the compose topology the ``web`` service runs it against the
stack's service names (``docker compose --profile web up``).

A poller asks each gvt for STATUS ``--fps`` times a second (vGPUs, their state, type and failsafe reason,
display and figures) and, for every vGPU whose primary plane's generation moved since the last capture,
captures the screen (plane query + framebuffer read through the vGPU's GGTT, as ``gvtsim screen``) and keeps
a half-size PNG. The page polls ``/api/screens`` and reloads a screen's image only when its generation moved.
Per vGPU it shows: state, type, engine busy (GPU time of its workloads over wall time), workloads/s, MMIO
emulation time p50/p99 in gvt, the failsafe reason, the mode and the flip count.

Prints one JSON ready line with the page's address on stdout, logs JSON on stderr, exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..services.common import log as slog
from .ctl import CtlError
from .health import probe, status_dict
from .screen import GvtSession
from ..services.common.helptext import UserHelpFormatter

DEFAULT_LISTEN = "tcp://127.0.0.1:8080"


@dataclass
class Tile:
    """One VM's screen and figures, as the page shows them."""

    stack: str
    vm: int
    name: str = ""
    generation: int = -1
    png: bytes = b""
    captured_at: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    last: tuple[float, int, int] | None = None  # (t, busy_ns, workloads) of the previous poll
    error: str = ""

    def view(self) -> dict[str, Any]:
        return {"key": f"{self.stack}/{self.vm}", "stack": self.stack, "vm": self.vm, "name": self.name,
                "generation": self.generation, "has_image": bool(self.png), "error": self.error, **self.figures}


@dataclass
class Stack:
    """One host stack the wall watches."""

    name: str
    gvt: str
    vhm: str = ""
    session: GvtSession | None = None
    up: bool = False


class Wall:
    """The poller and the state the page reads (plain objects; the aiohttp handlers only read them)."""

    def __init__(self, stacks: list[Stack], fps: float, log: Any) -> None:
        self.stacks = stacks
        self.period = 1.0 / fps if fps > 0 else 0.5
        self.log = log
        self.tiles: dict[str, Tile] = {}
        self.captures = 0
        self.polls = 0

    async def run(self) -> None:
        """Poll every stack each period until cancelled (a stack that does not answer is shown as down)."""
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            await asyncio.gather(*(self.poll(s) for s in self.stacks))
            self.polls += 1
            next_t += self.period
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            if next_t < loop.time():
                next_t = loop.time()

    async def poll(self, s: Stack) -> None:
        try:
            gvt = status_dict(await probe(s.gvt, 2.0))
        except Exception as err:  # down or restarting: keep the last images, say so
            if s.up:
                self.log.warning("stack_down", stack=s.name, gvt=s.gvt, error=f"{type(err).__name__}: {err}")
            s.up = False
            for t in self.tiles.values():
                if t.stack == s.name:
                    t.error = f"gvt at {s.gvt} does not answer"
            await self._drop_session(s)
            return
        s.up = True
        names: dict[int, str] = {}
        if s.vhm:
            try:
                vhm = status_dict(await probe(s.vhm, 2.0))
                for vm in vhm.get("info", {}).get("vms", {}).get("list", []):
                    names[int(vm["vm"])] = str(vm.get("name", ""))
            except Exception:
                pass
        info = gvt.get("info", {})
        now = time.monotonic()
        seen = set()
        for v in info.get("vgpus", []):
            vm = int(v["vm"])
            key = f"{s.name}/{vm}"
            seen.add(key)
            tile = self.tiles.setdefault(key, Tile(s.name, vm))
            tile.name = names.get(vm, tile.name) or f"vm {vm}"
            tile.error = ""
            self._figures(tile, v, info, now)
            display = info.get("display_by_vm", {}).get(str(vm), {})
            pipe = display.get("pipes", {}).get("A")
            if pipe and pipe.get("flips", -1) != tile.generation:
                await self._capture(s, tile)
        for key in [k for k, t in self.tiles.items() if t.stack == s.name and k not in seen]:
            del self.tiles[key]  # the VM and its vGPU are gone

    def _figures(self, tile: Tile, v: dict[str, Any], info: dict[str, Any], now: float) -> None:
        vm = str(tile.vm)
        fig = info.get("figures_by_vm", {}).get(vm, {})
        busy, done = int(fig.get("busy_ns", 0)), int(fig.get("workloads", 0))
        busy_pct = rate = 0.0
        if tile.last is not None and now > tile.last[0]:
            dt = now - tile.last[0]
            busy_pct = max(0.0, (busy - tile.last[1]) / (dt * 1e9) * 100)
            rate = max(0.0, (done - tile.last[2]) / dt)
        elif tile.figures:
            busy_pct, rate = tile.figures.get("engine_busy_pct", 0.0), tile.figures.get("workloads_per_s", 0.0)
        tile.last = (now, busy, done)
        failsafe = info.get("failsafe", {}).get(vm, "")
        state = "failsafe" if v.get("failsafe") else ("active" if v.get("active") else "inactive")
        display = info.get("display_by_vm", {}).get(vm, {})
        pipe = display.get("pipes", {}).get("A", {})
        plane = pipe.get("primary", {})
        mmio = fig.get("mmio_us", {})
        tile.figures = {"state": state, "type": v.get("type", ""), "engine_busy_pct": round(busy_pct, 2),
                        "workloads_per_s": round(rate, 1), "workloads": done,
                        "mmio_p50_us": mmio.get("p50", 0.0), "mmio_p99_us": mmio.get("p99", 0.0),
                        "failsafe_reason": failsafe or "-",
                        "mode": (f"{plane.get('width')}x{plane.get('height')}@{round(pipe.get('refresh_hz', 0))} "
                                 f"{plane.get('format')} {plane.get('tiling')}") if plane.get("width") else
                                "no screen", "flips": pipe.get("flips", 0)}

    async def _capture(self, s: Stack, tile: Tile) -> None:
        try:
            if s.session is None:
                s.session = await GvtSession(s.gvt, timeout=3.0).__aenter__()
            shot = await s.session.capture(tile.vm)
        except CtlError as err:
            tile.error = f"{err.code}: {err.reason}"
            return
        except Exception as err:
            tile.error = f"capture failed: {type(err).__name__}: {err}"
            await self._drop_session(s)
            return
        tile.png = await asyncio.to_thread(half_size_png, shot.plane.width, shot.plane.height, shot.rgb)
        tile.generation = shot.plane.generation
        tile.captured_at = time.time()
        self.captures += 1

    async def _drop_session(self, s: Stack) -> None:
        if s.session is not None:
            await s.session.__aexit__(None, None, None)
            s.session = None

    async def close(self) -> None:
        for s in self.stacks:
            await self._drop_session(s)


def half_size_png(width: int, height: int, rgb: bytes) -> bytes:
    """The screen at half size as PNG (Pillow): four screens fit a page and stay cheap to send."""
    from PIL import Image

    img = Image.frombytes("RGB", (width, height), rgb).reduce(2)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gvtsim: every VM's screen</title>
<style>
body { background:#111; color:#ddd; font:14px/1.4 system-ui, sans-serif; margin:16px; }
h1 { font-size:18px; margin:0 0 12px; } #summary { color:#999; margin-bottom:12px; }
#wall { display:grid; grid-template-columns:repeat(auto-fill, minmax(690px, 1fr)); gap:14px; }
.tile { background:#1c1c1c; border:1px solid #333; border-radius:6px; padding:8px; display:flex; gap:10px; }
.tile img { width:400px; height:300px; background:#000; image-rendering:auto; flex:none; }
.tile table { border-collapse:collapse; font-size:13px; width:270px; } .tile td { padding:1px 6px; vertical-align:top; }
.tile td:first-child { color:#888; white-space:nowrap; } .name { font-weight:600; color:#fff; }
.failsafe { color:#ff6060; } .active { color:#70e070; } .err { color:#ffb040; }
</style></head><body>
<h1>gvtsim &mdash; every VM's screen, live</h1><div id="summary">connecting...</div><div id="wall"></div>
<script>
const tiles = new Map();
function row(k, v, cls) { return `<tr><td>${k}</td><td class="${cls || ""}">${v}</td></tr>`; }
function render(t, el) {
  el.querySelector("table").innerHTML =
    row("VM", `<span class="name">${t.name}</span> (vm ${t.vm}, stack ${t.stack})`) +
    row("state", t.state, t.state) + row("type", t.type) +
    row("engine busy", `${t.engine_busy_pct.toFixed(2)} %`) + row("workloads/s", t.workloads_per_s) +
    row("GPU workloads", t.workloads) + row("MMIO p50 / p99", `${t.mmio_p50_us} / ${t.mmio_p99_us} &micro;s`) +
    row("failsafe", t.failsafe_reason, t.failsafe_reason !== "-" ? "failsafe" : "") +
    row("screen", t.mode) + row("flips", t.flips) + (t.error ? row("note", t.error, "err") : "");
}
async function tick() {
  try {
    const r = await fetch("/api/screens", {cache: "no-store"});
    const data = await r.json();
    document.getElementById("summary").textContent =
      `${data.screens.length} VMs on ${data.stacks} host stack(s), ${data.captures} captures, ` +
      `refreshed ${new Date().toLocaleTimeString()}`;
    const wall = document.getElementById("wall"), keys = new Set();
    for (const t of data.screens) {
      keys.add(t.key);
      let el = tiles.get(t.key);
      if (!el) {
        el = document.createElement("div"); el.className = "tile"; el.dataset.key = t.key;
        el.innerHTML = `<img class="screen" alt="screen of ${t.name}"><table></table>`;
        wall.appendChild(el); tiles.set(t.key, el);
      }
      const img = el.querySelector("img");
      if (t.has_image && img.dataset.gen !== String(t.generation)) {
        img.src = `/screen/${t.key}.png?g=${t.generation}`; img.dataset.gen = String(t.generation);
      }
      render(t, el);
    }
    for (const [k, el] of tiles) if (!keys.has(k)) { el.remove(); tiles.delete(k); }
  } catch (e) { document.getElementById("summary").textContent = "gvtsim web is not answering"; }
  setTimeout(tick, POLL_MS);
}
const POLL_MS = __POLL_MS__;
tick();
</script></body></html>
"""


def make_app(wall: Wall, poll_ms: int) -> web.Application:
    """The aiohttp application: the page, the screens' JSON, each screen's latest PNG."""
    app = web.Application()
    page = PAGE.replace("__POLL_MS__", str(poll_ms))

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def screens(request: web.Request) -> web.Response:
        body = {"stacks": len(wall.stacks), "captures": wall.captures,
                "screens": [t.view() for _, t in sorted(wall.tiles.items(), key=lambda kv: (kv[1].stack, kv[1].vm))]}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def screen(request: web.Request) -> web.Response:
        tile = wall.tiles.get(f"{request.match_info['stack']}/{request.match_info['vm']}")
        if tile is None or not tile.png:
            raise web.HTTPNotFound(text="no such screen (yet)")
        return web.Response(body=tile.png, content_type="image/png", headers={"Cache-Control": "no-store"})

    app.router.add_get("/", index)
    app.router.add_get("/api/screens", screens)
    app.router.add_get(r"/screen/{stack}/{vm:\d+}.png", screen)
    return app


def discover(args: argparse.Namespace) -> list[Stack]:
    """The stacks to watch: --gvt/--vhm, else the native run's stacks, else the environment's gvt."""
    if args.gvt:
        return [Stack(str(i), g, args.vhm[i] if i < len(args.vhm) else "") for i, g in enumerate(args.gvt)]
    from .launcher import RunState, default_run_dir

    state = RunState.load(args.run_dir or default_run_dir())
    if state is not None:
        stacks = []
        for k in state.stacks:
            gvt, vhm = state.procs.get(f"s{k}/gvt"), state.procs.get(f"s{k}/vhm")
            if gvt is not None and gvt.endpoint:
                stacks.append(Stack(str(k), gvt.endpoint.replace("0.0.0.0", "127.0.0.1"),
                                    vhm.endpoint.replace("0.0.0.0", "127.0.0.1") if vhm and vhm.endpoint else ""))
        if stacks:
            return stacks
    return [Stack("0", os.environ.get("GVTSIM_GVT_ENDPOINT", "tcp://127.0.0.1:5556"),
                  os.environ.get("GVTSIM_VHM_ENDPOINT", ""))]


async def serve(args: argparse.Namespace) -> int:
    log = slog.configure("web", f"web-{os.getpid()}", os.environ.get("GVTSIM_LOG_LEVEL", "info"))
    mt = re.fullmatch(r"tcp://(?P<host>[^:]+):(?P<port>\d+)", args.listen)
    if mt is None:
        print(f"gvtsim web: --listen must be tcp://HOST:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    host, port = mt["host"], int(mt["port"])
    stacks = discover(args)
    wall = Wall(stacks, args.fps, log)
    runner = web.AppRunner(make_app(wall, max(100, int(500 / max(args.fps, 0.1)))), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:
        print(f"gvtsim web: cannot listen on {host}:{port} ({err.strerror}); choose another with --listen",
              file=sys.stderr)
        await runner.cleanup()
        return 1
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown}:{bound}/"
    print(json.dumps({"event": "ready", "role": "web", "endpoint": url, "url": url,
                      "stacks": [{"name": s.name, "gvt": s.gvt, "vhm": s.vhm} for s in stacks]}), flush=True)
    log.info("ready", url=url, stacks=[s.gvt for s in stacks])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    poller = asyncio.create_task(wall.run())
    await stop.wait()
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)
    await wall.close()
    await runner.cleanup()
    log.info("stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gvtsim web", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("--gvt", action="append", default=[], help="a gvt management endpoint (repeat per host stack)")
    p.add_argument("--vhm", action="append", default=[], help="the matching vhm endpoint (VM names)")
    p.add_argument("--listen", default=os.environ.get("GVTSIM_WEB_LISTEN", DEFAULT_LISTEN),
                   help="where the page is served, tcp://HOST:PORT (port 0: any free port) [GVTSIM_WEB_LISTEN]")
    p.add_argument("--fps", type=float, default=2.0, help="status polls (and at most captures) per second")
    p.add_argument("--run-dir", default="", help="the native run to watch (default: gvtsim up's)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim web``."""
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
