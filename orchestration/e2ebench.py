"""``gvtsim bench --only e2e``: the whole ioreq path with and without CURVE, in the same run.

One host stack per mode (vhm, pgpu, gvt as real processes on loopback); a raw guest session creates a VM
with a vGPU, programs its BAR0 through 0xCF8/0xCFC, then times MMIO reads of the PVINFO magic (guest -> vhm
-> gvt -> vhm -> guest), one at a time (the latency) and 16 vCPUs' worth in flight (the throughput). The two
modes alternate over several repetitions; figures are medians, and the CURVE/plain ratio is computed from
the same run.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import zmq

from ..hardware.regs import PV_MAGIC as PVINFO_MAGIC  # the PVINFO magic, at BAR0 + 0x78000
from ..hardware.regs import VGT_MAGIC
from ..protocol import WIRE_VERSION, decode, encode
from ..protocol import messages as m
from ..services.common import curve
from .hoststack import HostStack

BAR0 = 0xF000_0000  # where the guest driver and bench e2e put it
PIO, MMIO = 0, 1
READ, WRITE = 0, 1


class _Guest:
    def __init__(self, endpoint: str, secure: bool) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if secure:
            curve.secure_client(self.sock, "guest", "vhm")
        self.sock.connect(endpoint)
        self.seq = 0

    def call(self, msg: m.Message) -> m.Message:
        self.sock.send(encode(msg))
        while True:
            if not self.sock.poll(10_000):
                raise TimeoutError("vhm did not answer")
            reply = decode(self.sock.recv())
            if not isinstance(reply, m.Heartbeat):
                return reply

    def io(self, vm: int, vcpu: int, kind: int, d: int, addr: int, value: int = 0, size: m.AccessSize = 4) -> int:
        self.seq += 1
        reply = self.call(m.Ioreq(vm=vm, vcpu=vcpu, seq=self.seq, kind=kind, dir=d, addr=addr, size=size,
                                  value=value))
        assert isinstance(reply, m.IoreqDone), reply
        return reply.value

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def _cfg(g: _Guest, vm: int, reg: int, value: int | None = None, size: m.AccessSize = 4) -> int:
    g.io(vm, 0, PIO, WRITE, 0xCF8, 0x8000_0000 | (2 << 11) | reg)
    return g.io(vm, 0, PIO, WRITE if value is not None else READ, 0xCFC, value or 0, size=size)


def _measure(hs: HostStack, secure: bool, n: int) -> dict[str, float]:
    g = _Guest(hs.vhm.endpoint, secure)
    try:
        assert isinstance(g.call(m.Hello(role="guest", id=f"bench-{os.getpid()}", epoch=1, wire=WIRE_VERSION)),
                          m.HelloAck)
        vm = g.call(m.VmCreate(req=1, name="bench", vcpus=16, ram_mb=16, vgpu_type="GVTg_V5_8"))
        assert isinstance(vm, m.VmCreated), vm
        _cfg(g, vm.vm, 0x10, BAR0)  # BAR0 low (a 64-bit memory BAR), then high
        _cfg(g, vm.vm, 0x14, 0)
        _cfg(g, vm.vm, 0x04, 0x6, size=2)  # COMMAND (16 bits): memory space + bus master: gvt traps BAR0
        magic = g.io(vm.vm, 0, MMIO, READ, BAR0 + PVINFO_MAGIC, size=8)
        if magic != VGT_MAGIC:
            raise RuntimeError(f"the vGPU's PVINFO magic reads {magic:#x}: BAR0 is not trapped by gvt")
        t0 = time.perf_counter()
        for _ in range(n):
            g.io(vm.vm, 0, MMIO, READ, BAR0 + PVINFO_MAGIC, size=8)
        lat = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        done = 0
        for _ in range(max(1, n // 16)):  # 16 vCPUs each with one ioreq in flight
            for vcpu in range(16):
                g.seq += 1
                g.sock.send(encode(m.Ioreq(vm=vm.vm, vcpu=vcpu, seq=g.seq, kind=MMIO, dir=READ,
                                           addr=BAR0 + PVINFO_MAGIC, size=8)))
            got = 0
            while got < 16:
                if not g.sock.poll(10_000):
                    raise TimeoutError("vhm did not answer")
                if isinstance(decode(g.sock.recv()), m.IoreqDone):
                    got += 1
            done += 16
        rate = done / (time.perf_counter() - t0)
        g.call(m.VmDestroy(req=2, vm=vm.vm))
        return {"ioreq_roundtrip_us": lat * 1e6, "ioreqs_per_s_16_in_flight": rate}
    finally:
        g.close()


def _alternate(modes: dict[str, dict[str, str | None]], measure_curve: dict[str, bool], n: int, reps: int,
               ) -> dict[str, dict[str, float]]:
    """One stack per mode, each started with its environment overrides (None: unset); ``reps`` alternating
    repetitions of :func:`_measure` on each; the medians per mode. The environment and the CURVE
    configuration are put back afterwards."""
    names = {k for env in modes.values() for k in env} | {curve.ENV_KEYS, curve.ENV_INSECURE}
    saved = {k: os.environ.get(k) for k in names}
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    stacks: dict[str, HostStack] = {}
    try:
        for mode, env in modes.items():
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            stacks[mode] = HostStack(prefix=f"gvtsim-bench-{mode.replace('_', '-')}-").start()  # makes its keys
        for _ in range(reps):
            for mode in modes:
                curve.configure(stacks[mode].env.get(curve.ENV_KEYS), insecure=not measure_curve[mode])
                results[mode].append(_measure(stacks[mode], measure_curve[mode], n))
    finally:
        for hs in stacks.values():
            hs.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        curve.configure()
    return {mode: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]} for mode, rs in results.items()}


def _ratios(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {"roundtrip_ratio": round(a["ioreq_roundtrip_us"] / b["ioreq_roundtrip_us"], 3),
            "throughput_ratio": round(a["ioreqs_per_s_16_in_flight"] / b["ioreqs_per_s_16_in_flight"], 3)}


def run(n: int = 2000, reps: int = 3) -> dict[str, Any]:
    """Plain and CURVE stacks side by side; medians of ``reps`` alternating repetitions."""
    med = _alternate({"plain": {curve.ENV_INSECURE: "1"}, "curve": {curve.ENV_INSECURE: None, curve.ENV_KEYS: None}},
                     {"plain": False, "curve": True}, n, reps)
    return {**med, "curve_over_plain": _ratios(med["curve"], med["plain"]), "n": n, "reps": reps}


def run_vhm_state(n: int = 2000, reps: int = 3) -> dict[str, Any]:
    """The cost of vhm's saved state (docs/STATE.md): a stack whose vhm journals its state (the default)
    against one with ``--state-dir off``, plain transport, alternating; medians of ``reps``."""
    med = _alternate({"state_on": {curve.ENV_INSECURE: "1", "GVTSIM_VHM_STATE_DIR": None},
                      "state_off": {curve.ENV_INSECURE: "1", "GVTSIM_VHM_STATE_DIR": "off"}},
                     {"state_on": False, "state_off": False}, n, reps)
    return {**med, "on_over_off": _ratios(med["state_on"], med["state_off"]), "n": n, "reps": reps}
