"""Scripted peers of vhm for the service tests: a guest and an ioreq client speaking the real wire protocol.

* :class:`ScriptedGuest` (role guest): creates VMs, sends IOREQs and awaits IOREQ_DONE / ERROR by
  ``(vm, vcpu, seq)``, records MSIs and EPT_CHANGED per VM.
* :class:`ScriptedClient` (role gvt): registers an MMIO range per VM and answers every IOREQ_DISPATCH with
  ``value = addr ^ seq`` in one IOREQ_COMPLETE per batch, or holds the requests (``hold=True``).
  It also answers VGPU_CREATE (VGPU_CREATED while it has ``vgpu_space``, else ERROR no_space) and
  VGPU_DESTROY / VGPU_RESET (OK), recording them.
* Run as a program it is a scripted peer in its own process (so a test can SIGKILL it):

      python -m vhm_scripted client --connect ENDPOINT --vms 1,2 [--hold]
      python -m vhm_scripted guest --connect ENDPOINT --vms 3 [--ram-mb 4] [--vgpu-type GVTg_V5_4]

  It prints JSON lines on stdout: ``ready`` (client: after its ranges are registered; guest: after its VMs
  exist, with their ids) and, for the client, ``dispatched`` with the running count of requests received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter, defaultdict
from typing import Any

import structlog
import uvloop
import zmq.asyncio

from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.common.client import Connection
from gvtsim.services.common.liveness import HeartbeatConfig

BAR0 = 0xC000_0000
BAR0_SIZE = 16 << 20


class IoreqError(Exception):
    """vhm answered an ioreq with ERROR."""

    def __init__(self, err: m.Error) -> None:
        super().__init__(f"{err.code}: {err.reason}")
        self.code = err.code
        self.reason = err.reason
        self.error = err


def _log() -> Any:
    return structlog.get_logger().bind(role="test")


class Watched:
    """Something a test waits on: every received message notifies ``changed``; :meth:`until` waits for a
    predicate on the peer's state with a timeout (no polling sleeps)."""

    changed: asyncio.Condition

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def until(self, pred: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            async with self.changed:
                await self.changed.wait_for(pred)


class ScriptedGuest(Watched):
    """A guest connection that may own many VMs."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str, hb: HeartbeatConfig) -> None:
        self.conn = Connection(ctx, endpoint, role="guest", ident=name, epoch=os.getpid(), hb=hb, log=_log(),
                               on_message=self._on_message, name=name, server_role="vhm")
        self.waiters: dict[tuple[int, int, int], asyncio.Future[int]] = {}
        self.msis: dict[int, list[m.Msi]] = defaultdict(list)
        self.changed = asyncio.Condition()
        self.ept_changed: Counter[int] = Counter()
        self.stray: list[m.Message] = []
        self.done_batches: list[int] = []  # the size of each IOREQ_DONE_BATCH received
        self._seq = 0

    async def start(self, timeout: float = 5.0) -> "ScriptedGuest":
        self.conn.start()
        await self.conn.wait_up(timeout)
        return self

    async def close(self) -> None:
        await self.conn.close()

    async def _on_message(self, msg: m.Message) -> None:
        self._record(msg)
        await self._notify()

    def _record(self, msg: m.Message) -> None:
        if isinstance(msg, m.IoreqDoneBatch):
            self.done_batches.append(len(msg.dones))
            for d in msg.dones:
                fut = self.waiters.pop((d.vm, d.vcpu, d.seq), None)
                if fut is not None and not fut.done():
                    fut.set_result(d.value)
                else:
                    self.stray.append(m.IoreqDone(vm=d.vm, vcpu=d.vcpu, seq=d.seq, value=d.value))
            return
        if isinstance(msg, m.IoreqDone):
            fut = self.waiters.pop((msg.vm, msg.vcpu, msg.seq), None)
            if fut is not None and not fut.done():
                fut.set_result(msg.value)
                return
        elif isinstance(msg, m.Error) and msg.seq is not None:
            fut = self.waiters.pop((msg.vm or 0, msg.vcpu or 0, msg.seq), None)
            if fut is not None and not fut.done():
                fut.set_exception(IoreqError(msg))
                return
        elif isinstance(msg, m.Msi):
            self.msis[msg.vm].append(msg)
            return
        elif isinstance(msg, m.EptChanged):
            self.ept_changed[msg.vm] += 1
            return
        self.stray.append(msg)

    async def create_vm(self, name: str, vcpus: int = 2, ram_mb: int = 4, vgpu_type: str = "") -> m.VmCreated:
        reply = await self.conn.request(m.VmCreate, name=name, vcpus=vcpus, ram_mb=ram_mb, vgpu_type=vgpu_type,
                                        timeout=10)
        assert isinstance(reply, m.VmCreated)
        return reply

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def start_ioreq(self, vm: int, vcpu: int, kind: int, direction: int, addr: int, size: int = 4,
                          value: int = 0, seq: int | None = None) -> asyncio.Future[int]:
        """Send one IOREQ; the returned future ends with the value or raises :class:`IoreqError`."""
        seq = self.next_seq() if seq is None else seq
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiters[(vm, vcpu, seq)] = fut
        await self.conn.send(m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=kind, dir=direction, addr=addr, size=size,
                                     value=value))
        return fut

    async def start_ioreq_batch(self, entries: list[tuple[int, int, int, int, int]]) -> list[asyncio.Future[int]]:
        """Send one IOREQ_BATCH of ``(vm, vcpu, kind, direction, addr)`` reads; a future per entry."""
        loop = asyncio.get_running_loop()
        reqs, futs = [], []
        for vm, vcpu, kind, direction, addr in entries:
            seq = self.next_seq()
            fut: asyncio.Future[int] = loop.create_future()
            self.waiters[(vm, vcpu, seq)] = fut
            futs.append(fut)
            reqs.append(m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=kind, dir=direction, addr=addr, size=4))
        await self.conn.send(m.IoreqBatch(reqs=reqs))
        return futs

    async def ioreq(self, vm: int, vcpu: int, kind: int, direction: int, addr: int, size: int = 4,
                    value: int = 0, timeout: float = 5.0) -> int:
        fut = await self.start_ioreq(vm, vcpu, kind, direction, addr, size, value)
        async with asyncio.timeout(timeout):
            return await fut


class ScriptedClient(Watched):
    """An ioreq client (role gvt) emulating an MMIO BAR per VM: reads return ``addr ^ seq``."""

    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, name: str, hb: HeartbeatConfig,
                 hold: bool = False, on_dispatch: Any = None, vgpu_space: int = 0) -> None:
        self.conn = Connection(ctx, endpoint, role="gvt", ident=name, epoch=os.getpid(), hb=hb, log=_log(),
                               on_message=self._on_message, name=name, server_role="vhm")
        self.hold = hold
        self.held: list[m.Ioreq] = []
        self.batches: list[int] = []
        self.received = 0
        self.on_dispatch = on_dispatch
        self.stray: list[m.Message] = []
        self.changed = asyncio.Condition()
        self.vgpu_space = vgpu_space
        self.vgpus: dict[int, int] = {}  # vm -> vgpu id
        self.vgpu_calls: list[tuple[str, int]] = []
        self._next_vgpu = 1

    async def start(self, timeout: float = 5.0) -> "ScriptedClient":
        self.conn.start()
        await self.conn.wait_up(timeout)
        return self

    async def close(self) -> None:
        await self.conn.close()

    async def claim_bar0(self, vm: int) -> None:
        await self.conn.request(m.IoRange, vm=vm, kind=int(IoreqType.MMIO), start=BAR0, end=BAR0 + BAR0_SIZE - 1,
                                add=True, timeout=5)

    @staticmethod
    def value_for(req: m.Ioreq) -> int:
        return (req.addr ^ req.seq) & ((1 << (8 * req.size)) - 1) if req.dir == IoreqDir.READ else 0

    async def _on_vgpu(self, msg: m.VgpuCreate | m.VgpuDestroy | m.VgpuReset) -> None:
        self.vgpu_calls.append((type(msg).__struct_config__.tag, msg.vm))
        if isinstance(msg, m.VgpuCreate):
            if self.vgpu_space <= 0:
                await self.conn.send(m.Error(code="no_space", reason="no GM space left", req=msg.req))
                return
            self.vgpu_space -= 1
            self.vgpus[msg.vm] = self._next_vgpu
            self._next_vgpu += 1
            await self.conn.send(m.VgpuCreated(req=msg.req, vm=msg.vm, vgpu_id=self.vgpus[msg.vm]))
            return
        if isinstance(msg, m.VgpuDestroy) and self.vgpus.pop(msg.vm, None) is not None:
            self.vgpu_space += 1
        await self.conn.send(m.Ok(req=msg.req))

    async def _on_message(self, msg: m.Message) -> None:
        await self._handle(msg)
        await self._notify()

    async def _handle(self, msg: m.Message) -> None:
        if isinstance(msg, (m.VgpuCreate, m.VgpuDestroy, m.VgpuReset)):
            await self._on_vgpu(msg)
            return
        if not isinstance(msg, m.IoreqDispatch):
            self.stray.append(msg)
            return
        self.batches.append(len(msg.reqs))
        self.received += len(msg.reqs)
        if self.on_dispatch is not None:
            self.on_dispatch(self)
        if self.hold:
            self.held.extend(msg.reqs)
            return
        await self.conn.send(m.IoreqComplete(reqs=[m.IoreqResult(vm=r.vm, vcpu=r.vcpu, seq=r.seq,
                                                                 value=self.value_for(r)) for r in msg.reqs]))


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def _program(args: argparse.Namespace) -> int:
    ctx = zmq.asyncio.Context()
    hb = HeartbeatConfig(args.heartbeat_ivl, 3)
    peer: ScriptedClient | ScriptedGuest
    if args.mode == "client":
        peer = client = ScriptedClient(ctx, args.connect, args.id, hb, hold=args.hold,
                                       on_dispatch=lambda c: emit(event="dispatched", count=c.received))
        await client.start()
        for vm in [int(v) for v in args.vms.split(",") if v]:
            await client.claim_bar0(vm)
        emit(event="ready", vms=args.vms, hold=args.hold)
    else:
        peer = guest = ScriptedGuest(ctx, args.connect, args.id, hb)
        await guest.start()
        created = [await guest.create_vm(f"{args.id}-{i}", 2, args.ram_mb, args.vgpu_type)
                   for i in range(int(args.vms or 0))]
        emit(event="ready", vms=[c.vm for c in created], vgpu_ids=[c.vgpu_id for c in created])
    try:
        await asyncio.Event().wait()  # until killed
    finally:
        await peer.close()
        ctx.destroy(linger=0)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vhm_scripted")
    p.add_argument("mode", choices=["client", "guest"])
    p.add_argument("--connect", required=True)
    p.add_argument("--vms", default="", help="client: VM ids to claim BAR0 of; guest: how many VMs to create")
    p.add_argument("--hold", action="store_true", help="client: never complete, keep requests PROCESSING")
    p.add_argument("--ram-mb", type=int, default=4)
    p.add_argument("--vgpu-type", default="")
    p.add_argument("--id", default=f"scripted-{os.getpid()}")
    p.add_argument("--heartbeat-ivl", type=float, default=0.2)
    args = p.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    return uvloop.run(_program(args))


if __name__ == "__main__":
    sys.exit(main())
