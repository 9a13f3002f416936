"""``gvtsim bench e2e``: the guest MMIO round trip through the real topology against a raw relay baseline.

In one run, alternating, for several rounds:

* **relay**: a raw 2-hop pyzmq relay, the floor any ZeroMQ design pays: client DEALER -> C ``zmq.proxy``
  (ROUTER/DEALER, its own process) -> a worker that decodes the msgpack IOREQ and answers IOREQ_DONE, and back;
* **topology**: vhm, gvt and pgpu as real processes (one host stack), and raw clients written from
  docs/PROTOCOL.md: HELLO as a guest, VM_CREATE with a vGPU, BAR0 programmed through 0xCF8/0xCFC, then
  MMIO reads of the PVINFO magic (BAR0 + 0x78000): guest -> vhm -> gvt (IOREQ_DISPATCH) -> vhm
  (IOREQ_COMPLETE) -> guest (IOREQ_DONE). Every answer is checked (the magic must read right).

Each is measured with 1 vCPU synchronous (p50, p99 of single round trips) and with N VMs x M vCPUs (relay:
as many clients) each keeping one request outstanding (throughput, p50, p99). In the concurrent run the
topology's guests do what the guest service does: the vCPUs of one VM whose requests completed together send
their next ones as one IOREQ_BATCH, and vhm answers them with IOREQ_DONE_BATCH; the relay's clients send one
IOREQ each (its worker is the floor of one decode and one answer per request). The figures are medians over
the rounds, with the ratios topology/relay. Then the idle CPU of each service over 10 s (psutil).

The topology runs with CURVE on every socket, as it always does; ``--insecure`` measures it with CURVE off
(the relay baseline is plain ZeroMQ either way), so two runs give the cost of CURVE. ``gvtsim bench --only
e2e`` alternates the two in one run.

    gvtsim bench e2e [--rounds 3] [--vms 6 --vcpus 4] [--seconds 2] [--insecure] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import psutil
import zmq

from ..hardware.regs import PV_MAGIC as PVINFO_MAGIC_OFFSET  # i915_pvinfo.h: struct vgt_if at 0x78000
from ..hardware.pci import PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA
from ..hardware.regs import VGT_MAGIC
from ..protocol import WIRE_VERSION, decode, encode
from ..protocol import messages as m
from ..services.common import curve
from .hoststack import HostStack
from .loadstats import lost_sessions

BAR0_GPA = 0xF000_0000
MMIO, PIO, READ, WRITE = 1, 0, 0, 1


# ----------------------------------------------------------------------------------------------- relay
def relay_proxy(front: str, back: str) -> None:
    """The relay's middle hop: libzmq's own proxy loop in C (ROUTER in front, DEALER behind)."""
    ctx = zmq.Context()
    fe, be = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    fe.bind(front)
    be.bind(back)
    print("ready", flush=True)
    zmq.proxy(fe, be)


def relay_worker(back: str) -> None:
    """The relay's last hop: decode each IOREQ (msgpack), answer IOREQ_DONE; drains in batches."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(back)
    print("ready", flush=True)
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while True:
        poller.poll()
        try:
            for _ in range(256):
                frames = sock.recv_multipart(zmq.NOBLOCK)
                req = decode(frames[-1])
                assert isinstance(req, m.Ioreq)
                frames[-1] = encode(m.IoreqDone(vm=req.vm, vcpu=req.vcpu, seq=req.seq, value=VGT_MAGIC))
                sock.send_multipart(frames)
        except zmq.Again:
            pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """The relay's two processes, on tcp://127.0.0.1 like the topology (same transport, same kernel path)."""

    def __init__(self, run_dir: str) -> None:
        self.front = f"tcp://127.0.0.1:{_free_port()}"
        back = f"tcp://127.0.0.1:{_free_port()}"
        me = [sys.executable, "-m", "gvtsim.orchestration.bench_e2e"]
        self.procs = [subprocess.Popen([*me, "relay-proxy", self.front, back], stdout=subprocess.PIPE, text=True),
                      subprocess.Popen([*me, "relay-worker", back], stdout=subprocess.PIPE, text=True)]
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(5)


# ---------------------------------------------------------------------------------------------- clients
class Vcpu:
    """One vCPU of a raw client: its socket, VM id, vCPU index and the next sequence number."""

    def __init__(self, sock: zmq.Socket, vm: int, vcpu: int) -> None:
        self.sock, self.vm, self.vcpu, self.seq = sock, vm, vcpu, 0
        self.t0 = 0.0

    def ioreq(self) -> m.Ioreq:
        """The next MMIO read of the PVINFO magic."""
        self.seq += 1
        return m.Ioreq(vm=self.vm, vcpu=self.vcpu, seq=self.seq, kind=MMIO, dir=READ,
                       addr=BAR0_GPA + PVINFO_MAGIC_OFFSET, size=8)

    def request(self) -> bytes:
        return encode(self.ioreq())


def _send_all(sock: zmq.Socket, vcpus: list[Vcpu], batch: bool) -> None:
    """The next request of each of ``vcpus`` (all on ``sock``): one IOREQ_BATCH, or one IOREQ each."""
    if batch and len(vcpus) > 1:
        sock.send(encode(m.IoreqBatch(reqs=[v.ioreq() for v in vcpus])))
    else:
        for v in vcpus:
            sock.send(v.request())


def _check(raw: bytes) -> m.IoreqDone:
    msg = decode(raw)
    if not isinstance(msg, m.IoreqDone) or msg.value != VGT_MAGIC:
        raise RuntimeError(f"bad answer to an MMIO read of the PVINFO magic: {msg}")
    return msg


def _dones(msg: m.Message) -> list[m.IoreqDone] | list[m.IoreqResult]:
    """The completions an answer carries (IOREQ_DONE or IOREQ_DONE_BATCH), each checked: the magic must
    read right."""
    got = [msg] if isinstance(msg, m.IoreqDone) else msg.dones if isinstance(msg, m.IoreqDoneBatch) else None
    if not got or any(d.value != VGT_MAGIC for d in got):
        raise RuntimeError(f"bad answer to an MMIO read of the PVINFO magic: {msg}")
    return got


def _recv_ioreq_reply(sock: zmq.Socket, timeout_ms: int = 5000,
                      keepalive: Callable[[], None] = lambda: None) -> m.IoreqDone:
    """The answer to the one outstanding request; ``keepalive`` runs while waiting (a vCPU waiting for a
    slow answer still heartbeats, as the session rules ask of an idle client)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        if not sock.poll(100):
            keepalive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no IOREQ_DONE within {timeout_ms / 1000:g} s")
            continue
        raw = sock.recv()
        msg = decode(raw)
        if isinstance(msg, (m.Heartbeat, m.Msi, m.EptChanged)):
            continue
        return _check(raw)


def run_sync(v: Vcpu, n: int, keepalive: Callable[[], None] = lambda: None) -> dict[str, float]:
    """``n`` synchronous round trips of one vCPU: p50 and p99 in microseconds."""
    lat = []
    for i in range(n):
        if i % 64 == 0:
            keepalive()
        t0 = time.perf_counter()
        v.sock.send(v.request())
        _recv_ioreq_reply(v.sock, 30_000, keepalive)
        lat.append(time.perf_counter() - t0)
    return _figures(lat, None)


def run_concurrent(vcpus: list[Vcpu], seconds: float, keepalive: Callable[[], None] = lambda: None,
                   batch: bool = False) -> dict[str, float]:
    """Every vCPU keeps one request outstanding for ``seconds``: throughput, p50, p99. ``batch``: the vCPUs
    of one socket whose requests completed together send their next ones together, as one IOREQ_BATCH
    (the guest's runtime does the same with the vCPUs that trapped in one turn)."""
    by_key = {(v.sock, v.vm, v.vcpu): v for v in vcpus}
    by_sock: dict[zmq.Socket, list[Vcpu]] = {}
    for v in vcpus:
        by_sock.setdefault(v.sock, []).append(v)
    poller = zmq.Poller()
    for s in by_sock:
        poller.register(s, zmq.POLLIN)
    lat: list[float] = []
    for s, group in by_sock.items():
        for v in group:
            v.t0 = time.perf_counter()
        _send_all(s, group, batch)
    t_start = time.perf_counter()
    t_end = t_start + seconds
    done = 0
    outstanding = len(vcpus)
    while outstanding:
        keepalive()
        for s, _ in poller.poll(5000):
            again: list[Vcpu] = []
            while True:
                try:
                    raw = s.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msg = decode(raw)
                if isinstance(msg, (m.Heartbeat, m.Msi, m.EptChanged)):
                    continue
                now = time.perf_counter()
                for d in _dones(msg):
                    v = by_key[(s, d.vm, d.vcpu)]
                    lat.append(now - v.t0)
                    done += 1
                    if now < t_end:
                        v.t0 = now
                        again.append(v)
                    else:
                        outstanding -= 1
            if again:
                _send_all(s, again, batch)
        if time.perf_counter() > t_end + 10:
            raise TimeoutError("requests outstanding 10 s after the end")
    elapsed = time.perf_counter() - t_start
    return _figures(lat, done / elapsed)


def _figures(lat: list[float], rate: float | None) -> dict[str, float]:
    lat.sort()
    out = {"p50_us": lat[len(lat) // 2] * 1e6, "p99_us": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
           "n": len(lat)}
    if rate is not None:
        out["per_s"] = rate
    return out


class TopologyClient:
    """Raw guest clients (one DEALER per VM) speaking the protocol straight from docs/PROTOCOL.md."""

    def __init__(self, ctx: zmq.Context, vhm: str) -> None:
        self.ctx, self.vhm = ctx, vhm
        self.socks: list[zmq.Socket] = []
        self.heartbeat_s = 1.0
        self._next_hb = 0.0

    def vm(self, name: str, vcpus: int, vgpu_type: str) -> list[Vcpu]:
        """A session, a VM with a vGPU, BAR0 at BAR0_GPA with memory decode on; its vCPUs."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        curve.secure_client(sock, "guest", "vhm")
        sock.connect(self.vhm)
        self.socks.append(sock)
        sock.send(encode(m.Hello(role="guest", id=f"bench-{name}-{os.getpid()}", epoch=time.time_ns() // 1000,
                                 wire=WIRE_VERSION)))
        ack = self._answer(sock, lambda x: isinstance(x, m.HelloAck))
        self.heartbeat_s = ack.heartbeat_ms / 1000 if ack.heartbeat_ms else 1.0
        sock.send(encode(m.VmCreate(req=1, name=name, vcpus=vcpus, ram_mb=64, vgpu_type=vgpu_type)))
        created = self._answer(sock, lambda x: getattr(x, "req", None) == 1)
        if not isinstance(created, m.VmCreated):
            raise RuntimeError(f"VM_CREATE failed: {created}")
        v = Vcpu(sock, created.vm, 0)

        def pio(port: int, size: m.AccessSize, value: int = 0, write: bool = False) -> int:
            v.seq += 1
            sock.send(encode(m.Ioreq(vm=v.vm, vcpu=0, seq=v.seq, kind=PIO, dir=WRITE if write else READ,
                                     addr=port, size=size, value=value)))
            done = self._answer(sock, lambda x: isinstance(x, (m.IoreqDone, m.Error)))
            if not isinstance(done, m.IoreqDone):
                raise RuntimeError(f"config access failed: {done}")
            return done.value

        def cfg_write(reg: int, size: m.AccessSize, value: int) -> None:  # bus 0, device 2, function 0
            pio(PCI_CONFIG_ADDRESS, 4, 0x8000_0000 | 2 << 11 | (reg & 0xFC), write=True)
            pio(PCI_CONFIG_DATA + (reg & 3), size, value, write=True)

        cfg_write(0x10, 4, BAR0_GPA)  # BAR0 low (64-bit memory BAR)
        cfg_write(0x14, 4, 0)
        cfg_write(0x04, 2, 0x6)  # COMMAND: memory space + bus master: gvt traps BAR0 from now on
        out = [Vcpu(sock, v.vm, i) for i in range(vcpus)]
        out[0].seq = v.seq
        return out

    def _answer(self, sock: zmq.Socket, want: Callable[[m.Message], bool]) -> Any:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if time.monotonic() >= self._next_hb:  # the other VMs' sessions stay alive meanwhile
                self.heartbeat()
            if sock.poll(250):
                msg = decode(sock.recv())
                if want(msg):
                    return msg
        raise TimeoutError("no answer from vhm in 30 s")

    def keepalive(self) -> None:
        """:meth:`heartbeat` when half an interval has passed since the last one (cheap to call often)."""
        if time.monotonic() >= self._next_hb:
            self.heartbeat()

    def heartbeat(self) -> None:
        """What a client must send when idle (HELLO_ACK's heartbeat_ms)."""
        self._next_hb = time.monotonic() + self.heartbeat_s / 2
        for s in self.socks:
            s.send(encode(m.Heartbeat(epoch=1)))

    def close(self) -> None:
        for s in self.socks:
            try:
                s.send(encode(m.Bye(reason="bench done")), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            s.close(linger=2000)


def idle_cpu(procs: dict[str, int], seconds: float, keepalive: Callable[[], None], every: float) -> dict[str, float]:
    """Percent of one core each process used over ``seconds`` (psutil cpu_times), clients only heartbeating."""
    ps = {name: psutil.Process(pid) for name, pid in procs.items()}
    t0 = {name: sum(p.cpu_times()[:2]) for name, p in ps.items()}
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        keepalive()
        time.sleep(min(every, seconds - (time.monotonic() - start)) if seconds > time.monotonic() - start else 0)
    wall = time.monotonic() - start
    return {name: round(100 * (sum(p.cpu_times()[:2]) - t0[name]) / wall, 2) for name, p in ps.items()}


# ------------------------------------------------------------------------------------------------- main
def run(rounds: int, vms: int, vcpus: int, seconds: float, sync_n: int, idle_s: float,
        say: Callable[[str], None]) -> dict[str, Any]:
    ctx = zmq.Context()
    stack = HostStack(heartbeat=1.0)
    stack.start()
    relay = Relay(stack.run_dir)
    topo = TopologyClient(ctx, stack.vhm.endpoint)
    try:
        say(f"topology: vhm {stack.vhm.endpoint}, gvt, pgpu; {vms} VMs x {vcpus} vCPUs; relay via C zmq.proxy")
        sync_vm = topo.vm("bench-sync", 1, "GVTg_V5_8")[0]
        conc = [v for i in range(vms) for v in topo.vm(f"bench{i}", vcpus, "GVTg_V5_8")]
        n = len(conc)
        rsocks = []
        for _ in range(n + 1):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(relay.front)
            rsocks.append(s)
        relay_sync = Vcpu(rsocks[0], 0, 0)
        relay_conc = [Vcpu(s, i // vcpus, i % vcpus) for i, s in enumerate(rsocks[1:])]
        run_sync(relay_sync, 200, topo.keepalive)  # warm both paths up
        run_sync(sync_vm, 200, topo.keepalive)
        per: dict[str, list[dict[str, float]]] = {"relay_sync": [], "topo_sync": [], "relay_conc": [], "topo_conc": []}
        for r in range(rounds):
            order = [("relay", relay_sync, relay_conc), ("topo", sync_vm, conc)]
            if r % 2:
                order.reverse()
            for name, one, many in order:
                per[f"{name}_sync"].append(run_sync(one, sync_n, topo.keepalive))
                # the topology's guests batch (IOREQ_BATCH); the relay's worker answers one IOREQ at a time
                per[f"{name}_conc"].append(run_concurrent(many, seconds, topo.keepalive, batch=name == "topo"))
            rs, ts, rc, tc = (per[k][-1] for k in ("relay_sync", "topo_sync", "relay_conc", "topo_conc"))
            say(f"round {r + 1}: sync p50 relay {rs['p50_us']:.0f} us, topology {ts['p50_us']:.0f} us "
                f"({ts['p50_us'] / rs['p50_us']:.2f}x); {n} concurrent: relay {rc['per_s']:.0f}/s, "
                f"topology {tc['per_s']:.0f}/s ({tc['per_s'] / rc['per_s']:.2f}x)")
        med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in per.items()}
        result: dict[str, Any] = {
            "rounds": rounds, "concurrent_vcpus": n, "median": med, "curve": curve.enabled(),
            "ratio_sync_p50": med["topo_sync"]["p50_us"] / med["relay_sync"]["p50_us"],
            "ratio_sync_p99": med["topo_sync"]["p99_us"] / med["relay_sync"]["p99_us"],
            "ratio_conc_throughput": med["topo_conc"]["per_s"] / med["relay_conc"]["per_s"],
            "ratio_conc_p50": med["topo_conc"]["p50_us"] / med["relay_conc"]["p50_us"],
        }
        if idle_s > 0:
            say(f"idle CPU over {idle_s:g} s ...")
            procs = {}
            for name, svc in (("vhm", stack.vhm), ("gvt", stack.gvt), ("pgpu", stack.pgpu)):
                assert svc.proc is not None, f"{name} is not running"
                procs[name] = svc.proc.pid
            result["idle_cpu_percent"] = idle_cpu(procs, idle_s, topo.heartbeat, topo.heartbeat_s)
        return result
    finally:
        topo.close()
        relay.stop()
        stack.stop()
        ctx.destroy(0)


def report(res: dict[str, Any]) -> str:
    med = res["median"]
    on = "CURVE on" if res.get("curve", True) else "CURVE off (--insecure)"
    lines = [f"medians of {res['rounds']} alternating rounds, topology with {on}, relay plain", "",
             f"{'':26}{'p50 us':>10}{'p99 us':>10}{'per s':>10}"]
    for key, label in (("relay_sync", "relay, 1 client sync"), ("topo_sync", "topology, 1 vCPU sync"),
                       ("relay_conc", f"relay, {res['concurrent_vcpus']} clients"),
                       ("topo_conc", f"topology, {res['concurrent_vcpus']} vCPUs")):
        f = med[key]
        rate = f"{f['per_s']:10.0f}" if "per_s" in f else f"{'':>10}"
        lines.append(f"{label:26}{f['p50_us']:10.0f}{f['p99_us']:10.0f}{rate}")
    lines += ["", f"sync MMIO p50 / relay p50: {res['ratio_sync_p50']:.2f}x (target <= 1.5x)",
              f"concurrent throughput / relay: {res['ratio_conc_throughput']:.2f}x (target >= 1.0x)"]
    if "idle_cpu_percent" in res:
        lines.append("idle CPU (% of one core): " + ", ".join(f"{k} {v:.2f}%" for k, v in
                                                             res["idle_cpu_percent"].items()) + " (target < 1%)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["relay-proxy"]:
        relay_proxy(argv[1], argv[2])
        return 0
    if argv[:1] == ["relay-worker"]:
        relay_worker(argv[1])
        return 0
    if argv[:1] == ["flooder"]:
        print(json.dumps(_flooder(argv[1], int(argv[2]), float(argv[3]), *argv[4:5])), flush=True)
        return 0
    if argv[:1] == ["boot-storm"]:
        ctx = zmq.Context()
        print(json.dumps(boot_storm(ctx, argv[1], int(argv[2]), int(argv[3]))), flush=True)
        ctx.term()  # waits for the BYEs to leave (LINGER): the sessions end on purpose, not by disconnect
        return 0
    p = argparse.ArgumentParser(prog="gvtsim bench e2e", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--vms", type=int, default=6, help="VMs for the concurrent run (at most 6 with the sync VM)")
    p.add_argument("--vcpus", type=int, default=4, help="vCPUs per VM for the concurrent run")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each concurrent run")
    p.add_argument("--sync-n", type=int, default=2000, help="round trips per synchronous run")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU measurement (0: skip)")
    p.add_argument("--flood", action="store_true",
                   help="instead: a well-behaved VM's MMIO p50/p99 before and during a flood (20k messages in "
                        "10 s at each service, 64 VMs booting at once)")
    p.add_argument("--insecure", action="store_true",
                   help="run the topology with CURVE off (to measure what CURVE costs against a run without)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.insecure:  # the stack's processes and this one's clients, both (hoststack.py reads the variable)
        os.environ[curve.ENV_INSECURE] = "1"
        curve.configure(insecure=True)
    if args.flood:
        return _flood_main(args)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    try:
        res = run(args.rounds, args.vms, args.vcpus, args.seconds, args.sync_n, args.idle, say)
    except (RuntimeError, TimeoutError) as err:
        print(f"bench e2e failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(res) if args.json else report(res))
    return 0


# ------------------------------------------------------------------------------------------------ flood
def _flooder(endpoint: str, n: int, seconds: float, server: str = "probe") -> dict[str, int]:
    """Send ``n`` messages in ``seconds`` to ``endpoint`` without a session: valid STATUS and garbage,
    alternating; replies are read and thrown away (a flooder that never reads is only pushed back by HWM)."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 1000)
    curve.secure_client(sock, "probe", server)  # CURVE on: the flooder holds a key (the probe's), as a guest would
    sock.connect(endpoint)
    status = encode(m.StatusRequest(req=1))
    garbage = [b"\xc1\xff garbage", msgspec.msgpack.encode({"type": "IOREQ", "vm": -1}), b"\x00" * 64]
    sent = answered = dropped = 0
    t0 = time.monotonic()
    try:
        for i in range(n):
            due = t0 + seconds * i / n
            while True:
                try:
                    while True:
                        sock.recv(zmq.NOBLOCK)
                        answered += 1
                except zmq.Again:
                    pass
                left = due - time.monotonic()
                if left <= 0:
                    break
                sock.poll(int(left * 1000) + 1)
            try:
                sock.send(status if i % 2 == 0 else garbage[i % 3], zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                dropped += 1
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            if sock.poll(100):
                sock.recv()
                answered += 1
    finally:
        sock.close(0)
    return {"sent": sent, "answered": answered, "pushed_back": dropped}


def mmio_probe(v: Vcpu, until: Callable[[], bool], keepalive: Callable[[], None]) -> list[float]:
    """A well-behaved VM: synchronous PVINFO reads (each checked) until ``until()``; the latencies."""
    lat = []
    while not until():
        t0 = time.perf_counter()
        v.sock.send(v.request())
        _recv_ioreq_reply(v.sock, 30_000, keepalive)  # a guard only: the latency is the figure
        lat.append(time.perf_counter() - t0)
    return lat


def boot_storm(ctx: zmq.Context, vhm: str, vms: int, vgpus: int) -> dict[str, Any]:
    """``vms`` VMs created at once (``vgpus`` of them with a vGPU), each then probing its PCI bus."""
    socks = []
    for i in range(vms):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        curve.secure_client(s, "guest", "vhm")
        s.connect(vhm)
        s.send(encode(m.Hello(role="guest", id=f"storm{i}-{os.getpid()}", epoch=i + 1, wire=WIRE_VERSION)))
        socks.append(s)
    for i, s in enumerate(socks):
        s.send(encode(m.VmCreate(req=1, name=f"storm{i}", vcpus=1, ram_mb=4,
                                 vgpu_type="GVTg_V5_8" if i < vgpus else "")))
    created = failed = probed = 0
    errors: dict[str, int] = {}
    answered: dict[int, int] = {}
    vm_ids: dict[int, int] = {}
    t0 = time.monotonic()
    deadline = t0 + 60
    poller = zmq.Poller()
    for s in socks:
        poller.register(s, zmq.POLLIN)
    index = {s: i for i, s in enumerate(socks)}
    seqs = dict.fromkeys(range(vms), 0)
    hb, next_hb = encode(m.Heartbeat(epoch=1)), time.monotonic() + 0.25
    while (created + failed < vms or probed < len(vm_ids) * 8) and time.monotonic() < deadline:
        if time.monotonic() >= next_hb:  # the session rule: a HEARTBEAT in every idle interval
            next_hb = time.monotonic() + 0.25
            for s in socks:
                s.send(hb)
        for s, _ in poller.poll(250):
            i = index[s]
            msg = decode(s.recv())
            if isinstance(msg, m.VmCreated):
                created += 1
                vm_ids[i] = msg.vm
            elif isinstance(msg, m.Error) and msg.req == 1:
                failed += 1
                continue
            elif isinstance(msg, m.Error):  # an ioreq refused: its VM probes no further (said in the result)
                why = f"{msg.code.value}: {msg.reason}"[:120]
                errors[why] = errors.get(why, 0) + 1
                continue
            elif isinstance(msg, m.IoreqDone):
                probed += 1
                answered[i] = answered.get(i, 0) + 1
            else:
                continue
            if i in vm_ids and seqs[i] < 8:  # config reads of 00:02.0 (vendor/device, class...)
                seqs[i] += 1
                reg = (seqs[i] - 1) * 4
                port = PCI_CONFIG_ADDRESS if seqs[i] % 2 else PCI_CONFIG_DATA
                s.send(encode(m.Ioreq(vm=vm_ids[i], vcpu=0, seq=seqs[i], kind=PIO, dir=WRITE if port == 0xCF8 else READ,
                                      addr=port, size=4, value=0x8000_0000 | 2 << 11 | reg)))
    for s in socks:  # end each session on purpose (BYE delivered before the socket closes)
        try:
            s.send(encode(m.Bye(reason="storm done")), zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        s.close(linger=2000)
    out: dict[str, Any] = {"created": created, "refused": failed, "ioreqs_done": probed,
                           "seconds": round(time.monotonic() - t0, 1)}
    if created + failed < vms:
        out["unanswered"] = [i for i in range(vms) if i not in vm_ids][:10]
    if errors:
        out["ioreq_errors"] = errors
    unfinished = {i: answered.get(i, 0) for i in vm_ids if answered.get(i, 0) < 8}
    if unfinished:  # storm VM -> probes answered, when the deadline ended the storm before all 8
        out["probes_unfinished"] = dict(list(unfinished.items())[:10])
    return out


def flood(stack: HostStack, per_service: int = 20_000, seconds: float = 10.0, storm_vms: int = 64,
          say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """A well-behaved VM's MMIO round trips before and during a flood of ``per_service`` messages in
    ``seconds`` at every service's socket (vhm, gvt, pgpu) plus ``storm_vms`` VMs booting at once."""
    ctx = zmq.Context()
    topo = TopologyClient(ctx, stack.vhm.endpoint)
    try:
        v = topo.vm("calm", 1, "GVTg_V5_8")[0]
        run_sync(v, 200)
        t_end = time.monotonic() + seconds / 2
        before = mmio_probe(v, lambda: time.monotonic() > t_end, topo.keepalive)
        # flooders and the boot storm are separate processes: in this one they would share the probe's GIL
        me = [sys.executable, "-m", "gvtsim.orchestration.bench_e2e"]
        targets = {"vhm": stack.vhm.endpoint, "gvt": stack.gvt.endpoint, "pgpu": stack.pgpu.endpoint}
        env = {**os.environ, **stack.env}  # the stack's CURVE keys (or --insecure)
        procs = {k: subprocess.Popen([*me, "flooder", ep, str(per_service), str(seconds), k], stdout=subprocess.PIPE,
                                     text=True, env=env) for k, ep in targets.items()}
        procs["boot_storm"] = subprocess.Popen([*me, "boot-storm", stack.vhm.endpoint, str(storm_vms), "6"],
                                               stdout=subprocess.PIPE, text=True, env=env)
        say(f"flood: {per_service} messages in {seconds:g} s at each of {', '.join(targets)}; "
            f"{storm_vms} VMs booting at once")
        t_flood_end = time.monotonic() + seconds
        during = mmio_probe(v, lambda: time.monotonic() > t_flood_end, topo.keepalive)
        results: dict[str, Any] = {}
        for k, proc in procs.items():
            while proc.poll() is None:  # keep the well-behaved VM's session alive meanwhile (HEARTBEAT)
                topo.heartbeat()
                time.sleep(min(0.2, topo.heartbeat_s))
            out, _ = proc.communicate(timeout=120)
            results[k] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": proc.returncode}
        b, d = _figures(before, None), _figures(during, None)
        return {"before": b, "during": d, "p99_ratio": d["p99_us"] / b["p99_us"],
                "p50_ratio": d["p50_us"] / b["p50_us"], **results}
    finally:
        topo.close()
        ctx.destroy(0)


def _flood_main(args: argparse.Namespace) -> int:
    ratios = []
    for r in range(args.rounds):
        with HostStack(heartbeat=1.0) as stack:
            res = flood(stack, say=lambda s: print(s, file=sys.stderr, flush=True))
            lost = {name: _lost(st) for name, st in (("vhm", stack.vhm), ("gvt", stack.gvt), ("pgpu", stack.pgpu))}
        ratios.append(res["p99_ratio"])
        for name, st in (("vhm", stack.vhm), ("gvt", stack.gvt), ("pgpu", stack.pgpu)):
            for ev in lost_sessions(st.stderr_path):
                print(f"  {name} declared lost: {ev.get('peer_id') or ev.get('peer')}: {ev.get('reason')}",
                      file=sys.stderr)
        line = (f"round {r + 1}: MMIO p50 {res['before']['p50_us']:.0f} -> {res['during']['p50_us']:.0f} us, "
                f"p99 {res['before']['p99_us']:.0f} -> {res['during']['p99_us']:.0f} us "
                f"({res['p99_ratio']:.2f}x); sessions lost: {lost}; boot storm: {res.get('boot_storm')}")
        print(json.dumps({**res, "sessions_lost": lost}) if args.json else line, flush=True)
    if not args.json:
        print(f"median p99 during/before: {statistics.median(ratios):.2f}x (target <= 2x)")
    return 0


def _lost(proc: Any) -> int:
    return len(lost_sessions(proc.stderr_path))


if __name__ == "__main__":
    sys.exit(main())
