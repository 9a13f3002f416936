"""``gvtsim screen VM [-o FILE.png]``: a guest's screen as the host sees it.

    gvtsim screen [--endpoint EP] [--plane primary|cursor] [--pipe 0] [--json] VM [-o FILE.png]

Asks gvt for the VM's plane (PLANE_QUERY: format, size, stride, tiling, GGTT address, generation, decoded
from the vGPU's registers as Linux gvt/fb_decoder.c does), reads the surface through the vGPU's GGTT from
machine memory (FB_READ, in pieces), converts it to RGB (XRGB8888, XBGR8888, XRGB2101010, XBGR2101010,
RGB565; linear or X-tiled) and writes a PNG. If the guest flipped while the surface was being read (the
generation moved), it reads again. Exit status: 0 written, 1 gvt refused (no such VM, plane disabled), 3 gvt
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import zmq

from ..protocol import messages as m
from ..protocol.constants import MAX_BLOB
from ..services.common.client import Connection, RemoteError
from ..services.common.liveness import HeartbeatConfig
from ..protocol.session import new_epoch
from ..services.gvt import fb_decoder as fb
from .ctl import DEFAULT_ENDPOINT, CtlError
from .health import _quiet
from ..services.common.helptext import UserHelpFormatter

CHUNK = MAX_BLOB  # bytes per FB_READ (the largest payload a message may carry)
RETRIES = 4


@dataclass
class Screen:
    """A captured plane: its description and its pixels as packed RGB rows."""

    plane: m.PlaneInfo
    rgb: bytes
    raw: bytes

    def png(self) -> bytes:
        """The screen as PNG bytes (Pillow's zlib-based encoder)."""
        from PIL import Image

        img = Image.frombytes("RGB", (self.plane.width, self.plane.height), self.rgb)
        out = io.BytesIO()
        img.save(out, format="PNG", compress_level=1)
        return out.getvalue()

    def info(self) -> dict[str, Any]:
        p = self.plane
        return {"vm": p.vm, "plane": p.plane, "pipe": p.pipe, "format": p.format, "width": p.width,
                "height": p.height, "stride": p.stride, "tiling": p.tiling, "ggtt_addr": p.ggtt_addr,
                "generation": p.generation}


class GvtSession:
    """One management session to gvt through the session layer every peer uses (services/common/client.py):
    HELLO once as role ``ctl``, any number of requests, BYE."""

    def __init__(self, endpoint: str, timeout: float = 3.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.ctx = zmq.Context()
        self.conn = Connection(self.ctx, endpoint, role="ctl", ident=f"screen-{os.getpid()}", epoch=new_epoch(),
                               hb=HeartbeatConfig(), log=_quiet, server_role="gvt")

    async def __aenter__(self) -> "GvtSession":
        self.conn.start()
        try:
            await self.conn.wait_up(self.timeout)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.conn.close()
        finally:
            self.ctx.destroy(linger=0)

    async def call(self, cls: type[m.Message], **fields: Any) -> m.Message:
        """Send a request, return its answer. Raises CtlError (ERROR), TimeoutError, or PeerLost."""
        try:
            return await self.conn.request(cls, timeout=self.timeout, **fields)
        except RemoteError as err:
            raise CtlError(err.code, err.error.reason) from None

    async def query(self, vm: int, plane: str = "primary", pipe: int = 0) -> m.PlaneInfo:
        reply = await self.call(m.PlaneQuery, vm=vm, plane=plane, pipe=pipe)
        assert isinstance(reply, m.PlaneInfo)
        return reply

    async def read(self, vm: int, ggtt_addr: int, size: int) -> bytes:
        out = bytearray()
        for off in range(0, size, CHUNK):
            reply = await self.call(m.FbRead, vm=vm, ggtt_addr=ggtt_addr, offset=off, length=min(CHUNK, size - off))
            assert isinstance(reply, m.Data)
            out += reply.data
        return bytes(out)

    async def capture(self, vm: int, plane: str = "primary", pipe: int = 0) -> Screen:
        """Query, read, query again: the surface is consistent when the generation did not move. Raises
        CtlError (refusals, a disabled plane) or TimeoutError."""
        for _ in range(RETRIES):
            p = await self.query(vm, plane, pipe)
            if not p.enabled:
                raise CtlError("bad_request", f"vm {vm} has no enabled {plane} plane on pipe {'ABC'[pipe]}")
            raw = await self.read(vm, p.ggtt_addr, p.size)
            again = await self.query(vm, plane, pipe)
            if again.generation == p.generation and again.ggtt_addr == p.ggtt_addr:
                break
        info = fb.PlaneInfo(p.plane, p.pipe, True, p.format, p.bpp, p.width, p.height, p.stride, p.tiling,
                            p.ggtt_addr, size=p.size, generation=p.generation)
        try:
            rgb = fb.to_rgb(raw, info)
        except fb.DecodeError as err:
            raise CtlError("bad_request", str(err)) from None
        return Screen(p, rgb, raw)


async def capture(endpoint: str, vm: int, plane: str = "primary", pipe: int = 0, timeout: float = 5.0) -> Screen:
    """One capture over a fresh connection."""
    async with GvtSession(endpoint, timeout) as s:
        return await s.capture(vm, plane, pipe)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gvtsim screen``."""
    p = argparse.ArgumentParser(prog="gvtsim screen", description=__doc__,
                                formatter_class=UserHelpFormatter)
    p.add_argument("vm", type=int, help="the VM id (as `gvtsim ctl list` shows it)")
    p.add_argument("-o", "--output", default="", help="PNG file to write (default: screen-vmN.png)")
    p.add_argument("--endpoint", default=os.environ.get("GVTSIM_GVT_ENDPOINT", DEFAULT_ENDPOINT),
                   help="gvt management endpoint [GVTSIM_GVT_ENDPOINT]")
    p.add_argument("--plane", default="primary", choices=["primary", "cursor"])
    p.add_argument("--pipe", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--json", action="store_true", help="print what was captured as one JSON object")
    args = p.parse_args(argv)
    out = args.output or f"screen-vm{args.vm}.png"
    try:
        shot = asyncio.run(capture(args.endpoint, args.vm, args.plane, args.pipe, args.timeout))
    except CtlError as err:
        print(f"gvtsim screen: {err.code}: {err.reason}", file=sys.stderr)
        return 1
    except (TimeoutError, OSError, zmq.ZMQError) as err:
        print(f"gvtsim screen: gvt at {args.endpoint} did not answer ({type(err).__name__} {err}); is the "
              f"topology up (gvtsim up / gvtsim demo)?", file=sys.stderr)
        return 3
    with open(out, "wb") as f:
        f.write(shot.png())
    info = {**shot.info(), "file": out}
    print(json.dumps(info) if args.json else
          f"vm {args.vm}: {shot.plane.width}x{shot.plane.height} {shot.plane.format} {shot.plane.tiling}, "
          f"generation {shot.plane.generation} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
