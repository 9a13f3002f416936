"""gvt as a real process: the management API through `gvtsim ctl`, and the wire behaviour towards a
scripted vhm and pgpu (ROUTER sockets in the test)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from collections import Counter

from gvtsim.services.common import curve
import zmq
import zmq.asyncio
from support.procs import ServiceProc

from gvtsim.protocol import WIRE_VERSION, decode, encode
from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.orchestration.health import probe

pytestmark = pytest.mark.service

UNUSED = "tcp://127.0.0.1:1"  # nothing listens: gvt must still start and serve management


def ctl(endpoint: str, *args: str) -> tuple[int, Any, str]:
    """Run `gvtsim ctl --json ...` as a subprocess: (exit code, parsed stdout, stderr)."""
    p = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "ctl", "--endpoint", endpoint, "--json", *args],
                       capture_output=True, text=True, timeout=20)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else None, p.stderr


@pytest.fixture
def gvt() -> Iterator[ServiceProc]:
    proc = ServiceProc(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", UNUSED, "--pgpu", UNUSED], name="gvt")
    proc.start()
    yield proc
    proc.stop()


def test_ctl_types_create_list_destroy(gvt: ServiceProc) -> None:
    ep = gvt.endpoint
    code, out, _ = ctl(ep, "types")
    assert code == 0
    types = {t["name"]: t for t in out["types"]}
    assert list(types) == ["GVTg_V5_8", "GVTg_V5_4", "GVTg_V5_2", "GVTg_V5_1"]
    assert [(t["low_gm_mb"], t["high_gm_mb"], t["fence"], t["weight"]) for t in types.values()] == \
        [(64, 384, 4, 2), (128, 512, 4, 4), (256, 1024, 4, 8), (512, 2048, 4, 16)]
    before = {n: t["avail"] for n, t in types.items()}
    assert before["GVTg_V5_2"] >= 1

    code, out, _ = ctl(ep, "create", "GVTg_V5_2", "--vm", "5")
    assert (code, out) == (0, {"vm": 5, "vgpu_id": 1})
    code, out, _ = ctl(ep, "create", "7,64,448,8")  # AcrnGT's create_gvt_instance string
    assert (code, out) == (0, {"vm": 7, "vgpu_id": 2})
    after = {t["name"]: t["avail"] for t in ctl(ep, "types")[1]["types"]}
    assert after["GVTg_V5_2"] == before["GVTg_V5_2"] - 1 and after["GVTg_V5_8"] < before["GVTg_V5_8"]

    extra = []  # fill the aperture: exactly the advertised instances fit, the next is no_space
    for vm in range(20, 40):
        code, out, err = ctl(ep, "create", "GVTg_V5_2", "--vm", str(vm))
        if code != 0:
            break
        extra.append(vm)
    assert len(extra) == after["GVTg_V5_2"]
    assert code == 1 and out["error"] == "no_space" and "not enough" in err
    for vm in extra:
        assert ctl(ep, "destroy", str(vm))[0] == 0

    code, out, _ = ctl(ep, "list")
    assert code == 0
    assert [(v["vm"], v["vgpu_id"], v["type"], v["active"]) for v in out["vgpus"]] == \
        [(5, 1, "GVTg_V5_2", True), (7, 2, "acrngt_64_448_8", True)]

    assert ctl(ep, "reset", "5") == (0, {"ok": True, "command": "reset", "vm": 5}, "")
    assert ctl(ep, "destroy", "5")[0] == 0
    assert ctl(ep, "destroy", "7")[0] == 0
    assert {t["name"]: t["avail"] for t in ctl(ep, "types")[1]["types"]} == before
    code, out, _ = ctl(ep, "destroy", "5")
    assert code == 1 and out["error"] == "no_such_vm"
    assert ctl(ep, "list")[1] == {"vgpus": []}


def test_ctl_usage_and_unreachable_errors(gvt: ServiceProc) -> None:
    assert ctl(gvt.endpoint, "create", "GVTg_V5_8")[0] == 2  # a type name needs --vm
    code, out, _ = ctl(gvt.endpoint, "create", "3,64,448,8", "--vm", "4")
    assert code == 1 and out["error"] == "bad_request"
    p = subprocess.run([sys.executable, "-m", "gvtsim.orchestration", "ctl", "--endpoint", "tcp://127.0.0.1:9",
                        "--timeout", "0.5", "list"], capture_output=True, text=True, timeout=20)
    assert p.returncode == 3 and "no answer from tcp://127.0.0.1:9 within 0.5 s" in p.stderr


def test_sigterm_exits_cleanly_within_2s(gvt: ServiceProc) -> None:
    assert gvt.terminate(timeout=2.0) == 0


# ------------------------------------------------------------------ scripted vhm and pgpu peers
class FakePeer:
    """A ROUTER that plays vhm or pgpu for one gvt. A background pump answers HELLO, heartbeats and the
    requests named in ``auto``; every other message is queued for the test, in arrival order."""

    def __init__(self, ctx: zmq.asyncio.Context, role: str, auto: dict[type, Any], epoch: int = 1) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        curve.secure_server(self.sock, role, Counter())  # gvt connects with CURVE: play the server's part
        self.sock.bind("tcp://127.0.0.1:*")
        self.epoch = epoch
        self.silent = False  # True: play dead (no heartbeats) until the client re-HELLOs
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.role = role
        self.auto = auto
        self.ident: bytes | None = None
        self.queue: asyncio.Queue[m.Message] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def send(self, msg: m.Message) -> None:
        assert self.ident is not None
        await self.sock.send_multipart([self.ident, encode(msg)])

    async def _pump(self) -> None:
        while True:
            ident, raw = await self.sock.recv_multipart()
            msg = decode(raw)
            if isinstance(msg, m.Hello):
                self.silent = False
                self.ident = ident
                await self.send(m.HelloAck(role=self.role, id=f"fake-{self.role}", epoch=self.epoch, wire=WIRE_VERSION))
            elif isinstance(msg, m.Heartbeat):
                if not self.silent:
                    await self.send(m.Heartbeat(epoch=self.epoch))
            else:
                if type(msg) in self.auto:
                    await self.send(self.auto[type(msg)](msg))
                await self.queue.put(msg)

    async def next(self) -> m.Message:
        return await self.queue.get()

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.sock.close(linger=0)
        curve.release_server(self.sock)


async def wait_status(endpoint: str, pred: Any, timeout: float = 10.0) -> dict[str, Any]:
    """Probe gvt's STATUS until ``pred(info)`` holds (gvt adopts pgpu's answer in a background task)."""
    async with asyncio.timeout(timeout):
        while True:
            info = (await probe(endpoint)).info
            if pred(info):
                return info
            await asyncio.sleep(0.05)


def ok(msg: m.Message) -> m.Message:
    return m.Ok(req=msg.req)  # type: ignore[attr-defined]


@pytest.fixture
async def peers() -> AsyncIterator[tuple[FakePeer, FakePeer, ServiceProc]]:
    ctx = zmq.asyncio.Context()
    vhm = FakePeer(ctx, "vhm", {m.Dom0Ready: ok, m.InterceptBdf: ok, m.AttachVgpu: ok, m.IoRange: ok})
    pgpu = FakePeer(ctx, "pgpu", {m.GgttWrite: ok, m.GgttFill: ok, m.PgpuMmioWrite: ok})
    proc = ServiceProc(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", pgpu.endpoint,
                        "--mem-path", f"/tmp/gvtsim-test-absent-{os.getpid()}.mem"], name="gvt")
    proc.start()
    yield vhm, pgpu, proc
    proc.stop()
    await vhm.close()
    await pgpu.close()
    ctx.destroy(linger=0)


async def next_of(peer: FakePeer, *types: type) -> m.Message:
    """The next message of one of ``types`` (others, e.g. more GGTT batches, are skipped)."""
    while True:
        msg = await peer.next()
        if isinstance(msg, types):
            return msg


async def test_gvt_speaks_to_vhm_and_pgpu(peers: tuple[FakePeer, FakePeer, ServiceProc]) -> None:
    vhm, pgpu, proc = peers
    async with asyncio.timeout(15):
        # setup: gvt reconciles (no vGPU yet), asks vhm for its scratch frame, then says dom0_ready; it asks
        # pgpu for the GPU's identity
        sync = await vhm.next()
        assert isinstance(sync, m.VgpuSync) and sync.vgpus == []
        await vhm.send(m.VgpuSyncReply(req=sync.req, resumed=False))
        alloc = await vhm.next()
        assert isinstance(alloc, m.AllocFrames) and alloc.count == 1
        await vhm.send(m.FramesReply(req=alloc.req, runs=[m.Run(mfn=0x777, count=1)]))
        pool = await vhm.next()  # then frames for shadow contexts and rings
        assert isinstance(pool, m.AllocFrames) and pool.count >= 10
        await vhm.send(m.FramesReply(req=pool.req, runs=[m.Run(mfn=0x1000, count=pool.count)]))
        assert isinstance(await vhm.next(), m.Dom0Ready)
        status = await pgpu.next()
        assert isinstance(status, m.StatusRequest)
        gpu = {"vendor": 0x8086, "device": 0x5912, "revision": 2, "gm_mb": 4096, "aperture_mb": 1024,
               "msi_cap": 0xAC, "fences": 32}
        await pgpu.send(m.StatusReply(req=status.req, role="pgpu", id="fake-pgpu", epoch=1, ready=True,
                                      info={"gpu": gpu}))
        info = await wait_status(proc.endpoint, lambda i: i["gpu"]["aperture_mb"] == 1024 and i["scratch_mfn"])
        assert info["connected"] == {"vhm": True, "pgpu": True} and info["gpu"]["device"] == 0x5912
        assert (await probe(proc.endpoint)).ready

        # vhm creates a VM's vGPU: BDF intercept and attach go out before the answer
        await vhm.send(m.VgpuCreate(req=900, vm=3, spec="GVTg_V5_1"))  # registered: the aperture is 1 GB now
        got = [await vhm.next() for _ in range(3)]
        assert [type(x) for x in got] == [m.InterceptBdf, m.AttachVgpu, m.VgpuCreated]
        assert got[0].vm == 3 and (got[0].bus, got[0].dev, got[0].func) == (0, 2, 0) and got[0].add
        assert got[2].req == 900 and got[2].vgpu_id == 1

        # the scratch fill of the vGPU's slices reaches pgpu, pointing at vhm's frame
        fill = await next_of(pgpu, m.GgttFill)
        assert isinstance(fill, m.GgttFill) and fill.pte == (0x777 << 12) | 1 and fill.count > 0

        # ioreqs: the guest probes the vGPU and enables memory decode; the trap range precedes the completion
        bar0 = 0xE000_0000
        pci = dict(vm=3, vcpu=0, kind=int(IoreqType.PCI), addr=0xCFC, bus=0, dev=2, func=0)
        await vhm.send(m.IoreqDispatch(reqs=[
            m.Ioreq(seq=1, dir=int(IoreqDir.READ), size=4, reg=0, **pci),
            m.Ioreq(seq=2, dir=int(IoreqDir.WRITE), size=4, reg=0x10, value=bar0, **pci),
            m.Ioreq(seq=3, dir=int(IoreqDir.WRITE), size=2, reg=0x04, value=0x2, **pci),
        ]))
        trap = await vhm.next()
        assert isinstance(trap, m.IoRange) and (trap.vm, trap.start, trap.end, trap.add, trap.kind) == \
            (3, bar0, bar0 + (16 << 20) - 1, True, int(IoreqType.MMIO))
        done = await vhm.next()
        assert isinstance(done, m.IoreqComplete)
        assert [(r.seq, r.value) for r in done.reqs] == [(1, 0x5912_8086), (2, 0), (3, 0)]

        await vhm.send(m.IoreqDispatch(reqs=[m.Ioreq(vm=3, vcpu=1, seq=9, kind=int(IoreqType.MMIO),
                                                     dir=int(IoreqDir.READ), addr=bar0 + 0x78000, size=8)]))
        done = await vhm.next()
        assert isinstance(done, m.IoreqComplete) and done.reqs[0].value == 0x4776544776544776

        # a bad access: completed with all ones, the vGPU goes failsafe, gvt stays up
        await vhm.send(m.IoreqDispatch(reqs=[m.Ioreq(vm=3, vcpu=1, seq=10, kind=int(IoreqType.MMIO),
                                                     dir=int(IoreqDir.READ), addr=bar0 + 0x1001, size=4)]))
        done = await vhm.next()
        assert isinstance(done, m.IoreqComplete) and done.reqs[0].value == 0xFFFF_FFFF
        code, out, _ = await asyncio.to_thread(ctl, proc.endpoint, "list")
        assert out["vgpus"][0]["failsafe"] is True

        await vhm.send(m.VgpuDestroy(req=901, vm=3))
        got = [await vhm.next() for _ in range(4)]
        assert [type(x) for x in got] == [m.IoRange, m.AttachVgpu, m.InterceptBdf, m.Ok]
        assert got[0].add is False and got[3].req == 901
    code, out, _ = await asyncio.to_thread(ctl, proc.endpoint, "list")
    assert (code, out) == (0, {"vgpus": []})


def frames(msg: m.Message) -> m.Message:
    return m.FramesReply(req=msg.req, runs=[m.Run(mfn=0x999, count=1)])  # type: ignore[attr-defined]


def new_vhm_sync(msg: m.Message) -> m.Message:
    """A vhm that knows none of the VMs (just started): every listed vGPU is to be destroyed."""
    return m.VgpuSyncReply(req=msg.req, resumed=False, destroy=[e.vm for e in msg.vgpus])  # type: ignore[attr-defined]


async def test_vhm_restart_drops_the_vgpus_of_its_vms() -> None:
    ctx = zmq.asyncio.Context()
    vhm_auto = {m.AllocFrames: frames, m.Dom0Ready: ok, m.InterceptBdf: ok, m.AttachVgpu: ok, m.IoRange: ok,
                m.VgpuSync: new_vhm_sync}
    vhm = FakePeer(ctx, "vhm", vhm_auto, epoch=1)
    proc = ServiceProc(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", UNUSED,
                        "--heartbeat-ivl", "0.2"], name="gvt")
    proc.start()
    try:
        async with asyncio.timeout(15):
            await next_of(vhm, m.Dom0Ready)
            await vhm.send(m.VgpuCreate(req=1, vm=3, spec="GVTg_V5_8"))
            assert isinstance(await next_of(vhm, m.VgpuCreated, m.Error), m.VgpuCreated)
            code, _, _ = await asyncio.to_thread(ctl, proc.endpoint, "create", "GVTg_V5_8", "--vm", "4")
            assert code == 0
            # vhm goes silent and comes back as a new incarnation: gvt declares it lost, re-HELLOs, sees the
            # new epoch
            vhm.epoch, vhm.silent = 2, True
            await next_of(vhm, m.Dom0Ready)  # the setup ran again, after the vGPUs of vhm's VMs were dropped
            # (under CPU load a spurious same-epoch reconnect may have queued an earlier DOM0_READY: wait for
            # the state rather than trusting which setup that one was)
            info = await wait_status(proc.endpoint, lambda i: len(i["vgpus"]) == 1)
            assert [(v["vm"], v["vgpu_id"]) for v in info["vgpus"]] == [(4, 2)]  # the ctl-created one stays
    finally:
        proc.stop()
        await vhm.close()
        ctx.destroy(linger=0)


async def test_same_epoch_reconnect_reconciles_without_asking_for_frames_again() -> None:
    """vhm (same epoch) goes silent: gvt re-HELLOs, lists its vGPUs, keeps and re-registers what vhm keeps,
    destroys what vhm does not have, and, its state resumed, asks for no new scratch page or pool."""
    ctx = zmq.asyncio.Context()
    answer: dict[str, Any] = {"resumed": False, "keep": [], "destroy": []}

    def sync(msg: Any) -> m.Message:
        return m.VgpuSyncReply(req=msg.req, **answer)

    vhm_auto = {m.AllocFrames: frames, m.Dom0Ready: ok, m.InterceptBdf: ok, m.AttachVgpu: ok, m.IoRange: ok,
                m.VgpuSync: sync}
    vhm = FakePeer(ctx, "vhm", vhm_auto, epoch=1)
    proc = ServiceProc(["gvt", "--bind", "tcp://127.0.0.1:*", "--vhm", vhm.endpoint, "--pgpu", UNUSED,
                        "--heartbeat-ivl", "0.2"], name="gvt")
    proc.start()
    try:
        async with asyncio.timeout(15):
            await next_of(vhm, m.Dom0Ready)
            for req, vm in ((1, 3), (2, 5)):
                await vhm.send(m.VgpuCreate(req=req, vm=vm, spec="GVTg_V5_8"))
                assert isinstance(await next_of(vhm, m.VgpuCreated, m.Error), m.VgpuCreated)
            answer.update(resumed=True, keep=[3], destroy=[5])
            vhm.silent = True  # same epoch: a dropped connection, not a restart
            sync_msg = await next_of(vhm, m.VgpuSync)
            assert [(e.vm, e.vgpu_id) for e in sync_msg.vgpus] == [(3, 1), (5, 2)]
            seen = []
            while not isinstance(seen[-1:] and seen[-1], m.Dom0Ready):
                seen.append(await vhm.next())
            assert not any(isinstance(x, m.AllocFrames) for x in seen)  # resumed: frames kept
            assert any(isinstance(x, m.AttachVgpu) and x.vm == 3 and x.attach for x in seen)  # re-registered
            assert any(isinstance(x, m.InterceptBdf) and x.vm == 3 and x.add for x in seen)
            assert any(isinstance(x, m.AttachVgpu) and x.vm == 5 and not x.attach for x in seen)  # destroyed
            info = (await probe(proc.endpoint)).info
            assert [(v["vm"], v["vgpu_id"]) for v in info["vgpus"]] == [(3, 1)]
            assert (await probe(proc.endpoint)).counters["reconcile_destroyed"] == 1
    finally:
        proc.stop()
        await vhm.close()
        ctx.destroy(linger=0)
