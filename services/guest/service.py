"""The guest process: one or many VMs over one connection to vhm.

Each VM: VM_CREATE (with a vGPU type), then boot on vCPU tasks: PCI probe, the i915-like driver, then each
vCPU runs workloads (vCPU i on engine i mod the VM's engines) and verifies them. Events go to stdout as JSON
lines (``vm_ready``, ``vm_done``, ``done``) for the launcher and tests; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...protocol import messages as m
from ..common.client import Connection, PeerLost, RemoteError
from ..common.memory import MachineMemory
from ..common.service import BaseService
from .cpu import GuestMachine, IoreqFailed
from .i915 import DriverError, VgpuDriver
from .pci import probe_gpu
from .workloads import KINDS, VerifyError, WorkloadRunner, allocate
from .events import emit


@dataclass
class GuestVm:
    """A VM hosted by this process."""

    name: str
    vm_id: int = 0
    machine: GuestMachine | None = None
    driver: VgpuDriver | None = None
    vgpu_type: str = ""
    submitted: int = 0
    verified: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    state: str = "new"
    runner: WorkloadRunner | None = None


class GuestService(BaseService):
    role = "guest"

    def __init__(self, ctx: Any, args: Any) -> None:
        super().__init__(ctx, args)
        self.vms: list[GuestVm] = []
        self.by_id: dict[int, GuestVm] = {}
        self._waiters: dict[tuple[int, int, int], asyncio.Future[int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.mem: MachineMemory | None = None
        self.t_start = 0.0

    # ------------------------------------------------------------------------------------------ shell
    async def start(self) -> dict[str, Any]:
        self.mem = MachineMemory(self.args.mem_path)
        self.conn = Connection(self.ctx, self.args.vhm, role="guest", ident=self.ident, epoch=self.epoch, hb=self.hb,
                               log=self.log, counters=self.counters, on_message=self._on_message,
                               on_down=self._on_down, name="vhm")
        self.conn.start()
        self._spawn(self._main())
        return {"vhm": self.args.vhm, "vms": self.args.vms}

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.conn.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def status(self) -> tuple[bool, dict[str, Any]]:
        return self.conn.up.is_set(), {"vms": [self._vm_summary(v) for v in self.vms]}

    async def send_ioreq(self, req: m.Ioreq) -> int:
        """Transport for GuestMachine: send and wait for IOREQ_DONE / ERROR with the same (vm, vcpu, seq)."""
        key = (req.vm, req.vcpu, req.seq)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters[key] = fut
        try:
            try:
                await self.conn.send(req)
            except PeerLost as err:
                raise IoreqFailed("peer_lost", str(err)) from None
            async with asyncio.timeout(self.args.ioreq_timeout):
                return await fut
        except TimeoutError:
            self.counters["ioreq_timeouts"] += 1
            raise IoreqFailed("timeout", f"ioreq {key} not completed in {self.args.ioreq_timeout}s") from None
        finally:
            self._waiters.pop(key, None)

    async def _on_message(self, msg: m.Message) -> None:
        if isinstance(msg, m.IoreqDone):
            fut = self._waiters.get((msg.vm, msg.vcpu, msg.seq))
            if fut is not None and not fut.done():
                fut.set_result(msg.value)
            else:
                self.counters["stray_ioreq_done"] += 1
        elif isinstance(msg, m.Error) and msg.vm is not None and msg.seq is not None:
            fut = self._waiters.get((msg.vm, msg.vcpu or 0, msg.seq))
            if fut is not None and not fut.done():
                fut.set_exception(IoreqFailed(msg.code, msg.reason))
            self.counters[f"ioreq_error_{msg.code}"] += 1
        elif isinstance(msg, m.Msi):
            vm = self.by_id.get(msg.vm)
            self.counters["msis"] += 1
            if vm is not None and vm.driver is not None:
                self._spawn(vm.driver.on_msi(msg.addr, msg.data))  # the handler traps: never inline here
            else:
                self.counters["msi_for_unknown_vm"] += 1
        elif isinstance(msg, m.EptChanged):
            self.counters["ept_changed"] += 1
        else:
            self.counters[f"unexpected_{type(msg).__name__}"] += 1

    async def _on_down(self, reason: str) -> None:
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(IoreqFailed("peer_lost", f"vhm lost: {reason}"))
        emit(event="vhm_lost", reason=reason)

    # ------------------------------------------------------------------------------------------- VMs
    async def _main(self) -> None:
        await self.conn.wait_up(timeout=60)
        types = [t for t in self.args.vgpu_types.split(",") if t]
        self.t_start = time.monotonic()
        runs = []
        for i in range(self.args.vms):
            vm = GuestVm(name=f"{self.args.name_prefix}{i}", vgpu_type=types[i % len(types)] if types else "")
            self.vms.append(vm)
            runs.append(self._spawn(self._run_vm(vm)))
        await asyncio.gather(*runs, return_exceptions=True)
        emit(event="done", **self.summary())

    async def _run_vm(self, vm: GuestVm) -> None:
        try:
            reply = await self.conn.request(m.VmCreate, name=vm.name, vcpus=self.args.vcpus, ram_mb=self.args.ram_mb,
                                            vgpu_type=vm.vgpu_type, timeout=30)
            assert isinstance(reply, m.VmCreated) and self.mem is not None
            vm.vm_id = reply.vm
            self.by_id[vm.vm_id] = vm
            vm.machine = GuestMachine(vm.vm_id, self.args.vcpus, self.mem, reply.ept_root,
                                      self.args.ram_mb << 20, self.send_ioreq)
            vm.state = "booting"
            gpu = await probe_gpu(vm.machine)
            vm.driver = VgpuDriver(vm.machine, gpu, log=self.log)
            await vm.driver.init()
            surfaces, fence = await allocate(vm.driver)
            vm.state = "running"
            emit(event="vm_ready", vm=vm.vm_id, name=vm.name, vgpu_id=reply.vgpu_id, vgt_id=vm.driver.vgt_id,
                 caps=vm.driver.caps, balloon=list(vm.driver.balloon), ept_root=reply.ept_root,
                 ram_mb=self.args.ram_mb)
            runner = WorkloadRunner(vm.driver, surfaces, fence, seed=vm.vm_id)
            vm.runner = runner
            engines = list(vm.driver.engines)
            await asyncio.gather(*(self._vcpu_loop(vm, runner, v, engines[v % len(engines)])
                                   for v in range(self.args.vcpus)))
            vm.state = "done"
        except Exception as err:  # every way a VM can fail is reported with its reason, none is hidden
            vm.state = "failed"
            vm.failures.append(f"{type(err).__name__}: {err}")
            self.log.warning("vm_failed", vm=vm.vm_id, name=vm.name, error=f"{type(err).__name__}: {err}",
                             exc_info=not isinstance(err, (RemoteError, IoreqFailed, DriverError, PeerLost,
                                                           TimeoutError)))
        emit(event="vm_done", **self._vm_summary(vm))

    async def _vcpu_loop(self, vm: GuestVm, runner: WorkloadRunner, vcpu: int, engine: str) -> None:
        per_vcpu = self.args.workloads // self.args.vcpus + (1 if vcpu < self.args.workloads % self.args.vcpus else 0)
        kinds = [k for k in KINDS if engine == "bcs" or k == "store"]
        for i in range(per_vcpu):
            kind = kinds[i % len(kinds)]
            vm.submitted += 1
            try:
                await runner.run(kind, engine, vcpu=vcpu, user_irq=(i % 3 != 2))
                vm.verified += 1
                vm.by_kind[kind] += 1
            except VerifyError as err:
                vm.failed += 1
                vm.failures.append(str(err))
            except Exception as err:  # a hang, a failed ioreq, or a bug: the workload failed, with its reason
                vm.failed += 1
                vm.failures.append(f"{kind}: {type(err).__name__}: {err}")
                break

    # ---------------------------------------------------------------------------------------- figures
    def _vm_summary(self, vm: GuestVm) -> dict[str, Any]:
        out: dict[str, Any] = {"vm": vm.vm_id, "name": vm.name, "state": vm.state, "vgpu_type": vm.vgpu_type,
                               "submitted": vm.submitted, "verified": vm.verified, "failed": vm.failed,
                               "by_kind": dict(vm.by_kind), "failures": vm.failures[:5]}
        if vm.machine is not None:
            out["ioreqs"] = dict(vm.machine.ioreqs)
        if vm.driver is not None:
            out["msis"] = vm.driver.msis
            out["user_irqs"] = {e.name: e.user_irqs for e in vm.driver.engines.values()}
            if vm.runner is not None:
                out["user_irqs_asked"] = dict(vm.runner.asked_user_irq)
            out["completions"] = {e.name: e.completions for e in vm.driver.engines.values()}
        return out

    def summary(self) -> dict[str, Any]:
        """Totals across this process's VMs (the demo's JSON is built from these)."""
        rtts: list[float] = []
        ioreqs: Counter[str] = Counter()
        for vm in self.vms:
            if vm.machine is not None:
                ioreqs.update(vm.machine.ioreqs)
                for kind, samples in vm.machine.rtt.samples.items():
                    if kind in (1,):  # MMIO round trips
                        rtts.extend(samples)
        rtts.sort()

        def pct(p: float) -> float:
            return round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6, 1) if rtts else 0.0

        elapsed = time.monotonic() - self.t_start if self.t_start else 0.0
        verified = sum(v.verified for v in self.vms)
        return {"vms": len(self.vms), "workloads_submitted": sum(v.submitted for v in self.vms),
                "workloads_verified": verified, "workloads_failed": sum(v.failed for v in self.vms),
                "ioreqs_by_type": dict(ioreqs), "msis": sum(v.driver.msis for v in self.vms if v.driver),
                "mmio_rtt_us": {"p50": pct(0.50), "p99": pct(0.99),
                                "mean": round(statistics.fmean(rtts) * 1e6, 1) if rtts else 0.0},
                "seconds": round(elapsed, 3), "workloads_per_s": round(verified / elapsed, 1) if elapsed else 0.0,
                "per_vm": [self._vm_summary(v) for v in self.vms]}
