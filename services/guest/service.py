"""The guest process: one or many VMs over one connection to vhm.

Each VM: VM_CREATE (with a vGPU type), then boot on vCPU tasks: PCI probe, the i915-like driver, then each
vCPU runs workloads (vCPU i on engine i mod the VM's engines) and verifies them. Events go to stdout as JSON
lines (``vm_ready``, ``vm_done``, ``done``) for the launcher and tests; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...protocol import IoreqType
from ...protocol import messages as m
from ..common.client import Connection, PeerLost, RemoteError
from ..common import trace
from ..common.histo import Histogram
from ..common.memory import MachineMemory
from ..common.service import BaseService
from . import hostile
from .integrity import Integrity
from .cpu import GuestMachine, IoreqFailed
from .display import DisplayError, GuestDisplay
from .i915 import DriverError, VgpuDriver
from .pci import probe_gpu
from .workloads import VerifyError, WorkloadRunner, allocate, kinds_for
from .events import emit


def reason_category(reason: str) -> str:
    """A failure reason with its numbers folded ("fill#12 ... 3.0s" -> "fill#N ... N s"), for grouping."""
    return re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d+)?", "N", reason)[:160]


class WorkloadAborted(RuntimeError):
    """A workload ended without a result (hang, failed ioreq): the VM needs a reset."""


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
    reset_started: float | None = None
    run_s: float = 0.0  # seconds spent running workloads (for per-VM rates)
    recoveries: int = 0
    latencies: Histogram = field(default_factory=Histogram)  # per verified workload (since the last stats)
    # figures of earlier incarnations of this VM (before a reset), folded in at teardown
    past_ioreqs: Counter[str] = field(default_factory=Counter)
    past_rtt: dict[str, Histogram] = field(default_factory=dict)
    past_msis: int = 0
    resets: int = 0

    failure_reasons: Counter[str] = field(default_factory=Counter)
    display: GuestDisplay | None = None  # the VM's screen (--display)
    display_task: "asyncio.Task[Any] | None" = None
    index: int = 0

    def fail(self, reason: str) -> None:
        """A workload failed: count it under its reason (numbers folded, so alike failures group)."""
        self.failed += 1
        if len(self.failures) < 100:
            self.failures.append(reason)
        self.failure_reasons[reason_category(reason)] += 1

    def ioreqs(self) -> Counter[str]:
        out = Counter(self.past_ioreqs)
        if self.machine is not None:
            out.update(self.machine.ioreqs)
        return out

    def rtt(self) -> dict[str, Histogram]:
        out = {k: Histogram().add(v) for k, v in self.past_rtt.items()}
        if self.machine is not None:
            for kind, hist in self.machine.rtt.hists.items():
                if hist.count:
                    out.setdefault(IoreqType(kind).name, Histogram()).add(hist)
        return out

    def msis(self) -> int:
        return self.past_msis + (self.driver.msis if self.driver is not None else 0)

    def fold(self) -> None:
        """Keep this incarnation's figures before the machine and driver are dropped."""
        if self.machine is not None:
            self.past_ioreqs.update(self.machine.ioreqs)
            for kind, hist in self.machine.rtt.hists.items():
                if hist.count:
                    self.past_rtt.setdefault(IoreqType(kind).name, Histogram()).add(hist)
        if self.driver is not None:
            self.past_msis += self.driver.msis


class GuestService(BaseService):
    role = "guest"

    def __init__(self, ctx: Any, args: Any) -> None:
        super().__init__(ctx, args)
        self.vms: list[GuestVm] = []
        self.by_id: dict[int, GuestVm] = {}
        self._waiters: dict[tuple[int, int, int], asyncio.Future[int]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._vgpu_lost: dict[int, str] = {}  # vm id -> why vhm said VGPU_LOST (until the VM is torn down)
        self.mem: MachineMemory | None = None
        self.t_start = 0.0
        self.deadline: float | None = None

    # ------------------------------------------------------------------------------------------ shell
    async def start(self) -> dict[str, Any]:
        self.mem = MachineMemory(self.args.mem_path)
        self.conn = Connection(self.ctx, self.args.vhm, role="guest", ident=self.ident, epoch=self.epoch, hb=self.hb,
                               log=self.log, counters=self.counters, on_message=self._on_message,
                               on_down=self._on_down, name="vhm")
        self.conn.start()
        self._spawn(self._main())
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.finish_now)
        return {"vhm": self.args.vhm, "vms": self.args.vms}

    def finish_now(self) -> None:
        """SIGUSR1 (``gvtsim load`` once its measured window is over): end a ``--duration`` run now; every
        VM finishes the workload it is running and reports done."""
        if self.deadline is not None:
            self.deadline = min(self.deadline, time.monotonic())
            self.counters["finish_signals"] += 1

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.conn.close()

    def _spawn(self, coro: Any, what: str = "task") -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=what)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        """Retrieve every task's exception: an interrupt handler whose VM was reset or destroyed under it
        (no_such_vm, gpu_reset, vhm gone) is counted; anything else is logged with its traceback."""
        self._tasks.discard(t)
        if t.cancelled() or t.exception() is None:
            return
        err = t.exception()
        self.counters[f"{t.get_name()}_failed"] += 1
        if isinstance(err, (IoreqFailed, PeerLost, RemoteError, DriverError)):
            self.log.info("task_ended", task=t.get_name(), error=f"{type(err).__name__}: {err}")
        else:
            self.log.error("task_failed", task=t.get_name(), error=repr(err), exc_info=err)

    def status(self) -> tuple[bool, dict[str, Any]]:
        return self.conn.up.is_set(), {"vms": [self._vm_summary(v) for v in self.vms],
                                       "ioreq_hist": {k: h.encode() for k, h in self._rtt().items()}}

    async def send_ioreq(self, req: m.Ioreq) -> int:
        """Transport for GuestMachine: send and wait for IOREQ_DONE / ERROR with the same (vm, vcpu, seq)."""
        key = (req.vm, req.vcpu, req.seq)
        lost = self._vgpu_lost.get(req.vm)
        if lost is not None:  # the driver sees the GPU reset and the VM starts over
            raise IoreqFailed("gpu_reset", f"vGPU lost: {lost}")
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
            if fut.done() and not fut.cancelled():
                fut.exception()  # failed (VGPU_LOST, vhm lost) while this vCPU was cancelled: retrieved

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
            if trace.on:
                trace.instant("MSI received", "irq", tid=msg.vm, vm=msg.vm, data=hex(msg.data))
            if vm is not None and vm.driver is not None:
                self._spawn(vm.driver.on_msi(msg.addr, msg.data), "irq_handler")  # it traps: never inline here
            else:
                self.counters["msi_for_unknown_vm"] += 1
        elif isinstance(msg, m.VgpuLost):
            self.counters["vgpus_lost"] += 1
            if msg.vm in self.by_id:
                self._vgpu_lost[msg.vm] = msg.reason
                emit(event="vgpu_lost", vm=msg.vm, name=self.by_id[msg.vm].name, reason=msg.reason)
                for (waiter_vm, _, _), fut in self._waiters.items():
                    if waiter_vm == msg.vm and not fut.done():
                        fut.set_exception(IoreqFailed("gpu_reset", f"vGPU lost: {msg.reason}"))
                idle = self.by_id[msg.vm]
                if idle.state == "done":  # no vCPU of it will trap and see the reset: handle it now
                    self._spawn(self._reset_idle(idle, msg.reason), "idle_reset")
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
        self.deadline = self.t_start + self.args.duration if self.args.duration > 0 else None
        if self.args.stats_interval > 0:
            self._spawn(self._stats_loop())
        runs = []
        for i in range(self.args.vms):
            vm = GuestVm(name=f"{self.args.name_prefix}{i}", vgpu_type=types[i % len(types)] if types else "",
                         index=i)
            self.vms.append(vm)
            runs.append(self._spawn(self._run_vm(vm)))
        await asyncio.gather(*runs, return_exceptions=True)
        emit(event="done", **self.summary())

    def _time_left(self) -> bool:
        return self.deadline is None or time.monotonic() < self.deadline

    async def _run_vm(self, vm: GuestVm) -> None:
        """Create, boot and run the VM. With ``--recover``, a GPU reset (a failed ioreq, a hang, the device
        model or GPU gone) tears the VM down and brings it up again, as a guest re-initialising its driver
        after a reset; every reset and recovery is an event with its reason and timing."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._boot_and_run(vm)
                vm.state = "done"
                break
            except Exception as err:  # every way a VM can fail is reported with its reason, none is hidden
                if isinstance(err, ExceptionGroup):  # from the vCPU task group: the first real cause
                    err = err.exceptions[0]
                reason = f"{type(err).__name__}: {err}"
                if not isinstance(err, WorkloadAborted):  # a workload's failure was recorded with it
                    vm.failures.append(reason)
                self.log.warning("vm_failed", vm=vm.vm_id, name=vm.name, error=reason,
                                 exc_info=not isinstance(err, (RemoteError, IoreqFailed, DriverError, PeerLost,
                                                               TimeoutError, WorkloadAborted)))
                if not (self.args.recover and self._time_left()):
                    vm.state = "failed"
                    break
                vm.state = "resetting"
                t_reset = time.monotonic()
                emit(event="vm_reset", vm=vm.vm_id, name=vm.name, reason=reason, attempt=attempt)
                await self._teardown_vm(vm)
                await asyncio.sleep(min(0.2 * attempt, 1.0))  # back off before re-creating (not a sync)
                vm.reset_started = t_reset
        emit(event="vm_done", **self._vm_summary(vm))

    async def _reset_idle(self, vm: GuestVm, why: str) -> None:
        """A VM that finished its workloads lost its vGPU (the device model restarted without its state):
        the driver takes the GPU reset now, as i915 does on a reset interrupt, instead of the VM sitting
        without a GPU until it next touches it. With ``--recover`` it is created and booted again (no
        workloads: it was done); without, it is marked failed with the reason."""
        reason = f"vGPU lost while idle: {why}"
        vm.state = "resetting"
        emit(event="vm_reset", vm=vm.vm_id, name=vm.name, reason=reason, attempt=0)
        if not self.args.recover:
            vm.failures.append(reason)
            vm.state = "failed"
            return
        t_reset = time.monotonic()
        await self._teardown_vm(vm)
        vm.reset_started = t_reset
        try:
            await self._boot_and_run(vm, workloads=False)
            vm.state = "done"
        except Exception as err:  # reported with its reason, as any failed boot
            vm.failures.append(f"{type(err).__name__}: {err}")
            vm.state = "failed"
            emit(event="vm_failed", vm=vm.vm_id, name=vm.name, reason=vm.failures[-1])

    async def _teardown_vm(self, vm: GuestVm) -> None:
        """Best effort: destroy the VM in vhm (it may already be gone with a restarted vhm)."""
        vm.fold()
        vm.resets += 1
        if vm.display_task is not None:
            vm.display_task.cancel()
            vm.display_task = None
        if vm.vm_id:
            self.by_id.pop(vm.vm_id, None)
            self._vgpu_lost.pop(vm.vm_id, None)
            try:
                await self.conn.request(m.VmDestroy, vm=vm.vm_id, timeout=5)
            except (RemoteError, PeerLost, TimeoutError):
                pass
        vm.machine = vm.driver = vm.runner = None
        vm.vm_id = 0

    async def _boot_and_run(self, vm: GuestVm, workloads: bool = True) -> None:
        await self.conn.wait_up(timeout=30)
        reply = await self.conn.request(m.VmCreate, name=vm.name, vcpus=self.args.vcpus, ram_mb=self.args.ram_mb,
                                        vgpu_type=vm.vgpu_type, timeout=30)
        assert isinstance(reply, m.VmCreated) and self.mem is not None
        vm.vm_id = reply.vm
        self.by_id[vm.vm_id] = vm
        vm.machine = GuestMachine(vm.vm_id, self.args.vcpus, self.mem, reply.ept_root,
                                  self.args.ram_mb << 20, self.send_ioreq)
        vm.state = "booting"
        gpu = await probe_gpu(vm.machine)
        vm.driver = VgpuDriver(vm.machine, gpu, log=self.log, enable_pvmmio=getattr(self.args, "pvmmio", 0))
        vm.display = None
        if getattr(self.args, "display", False):  # a screen: the modeset runs inside init, before display_ready
            tiling = self.args.display_tiling
            if tiling == "alternate":
                tiling = "x" if vm.index % 2 else "linear"
            vm.display = GuestDisplay(vm.driver, vm.name, tiling)
            vm.driver.display = vm.display
        async def modeset() -> None:  # a display that does not come up costs the screen, not the VM
            assert vm.display is not None and vm.driver is not None
            try:
                await vm.display.modeset()
            except DisplayError as err:
                emit(event="display_failed", vm=vm.vm_id, name=vm.name, reason=f"DisplayError: {err}")
                vm.display = vm.driver.display = None

        await vm.driver.init(modeset=modeset if vm.display is not None else None)
        if vm.display is not None:
            mode = vm.display.st.mode
            emit(event="display_ready", vm=vm.vm_id, name=vm.name, **vm.display.summary(),
                 width=mode.width if mode else 0, height=mode.height if mode else 0)
        if self.args.pv:  # negotiate the PV shared page; any refusal keeps the trap path
            res = await vm.driver.enable_pv(self.args.pv_version, corrupt=self.args.pv_corrupt)
            emit(event="pv", vm=vm.vm_id, name=vm.name, status=res.status, enabled=res.enabled,
                 host_caps=res.host_caps, host_versions=res.host_versions, reason=res.reason)
        surfaces, fence = await allocate(vm.driver)
        vm.state = "running"
        emit(event="vm_ready", vm=vm.vm_id, name=vm.name, vgpu_id=reply.vgpu_id, vgt_id=vm.driver.vgt_id,
             caps=vm.driver.caps, pvmmio=vm.driver.pvmmio, balloon=list(vm.driver.balloon), ept_root=reply.ept_root,
             ram_mb=self.args.ram_mb)
        if vm.reset_started is not None:
            emit(event="vm_recovered", vm=vm.vm_id, name=vm.name,
                 recovery_s=round(time.monotonic() - vm.reset_started, 3))
            vm.recoveries += 1
            vm.reset_started = None
        vm.runner = WorkloadRunner(vm.driver, surfaces, fence, seed=vm.vm_id)
        if not workloads:  # an idle VM brought back after a GPU reset: its driver is up again, nothing to run
            return
        if vm.display is not None:
            vm.display_task = self._spawn(self._display_loop(vm, vm.display))
        vm.driver.hang_timeout = self.args.hang_timeout
        integrity = None
        if getattr(self.args, "integrity", False):  # integrity.py: canary views, checked after the workloads
            integrity = Integrity(vm.driver, seed=vm.vm_id)
            views = await integrity.setup()
            emit(event="integrity_before", vm=vm.vm_id, name=vm.name, **views, targets=integrity.targets())
        if getattr(self.args, "hostile", ""):  # hostile.py: one attack after boot, reported as an event
            target = hostile.parse_target(getattr(self.args, "hostile_target", ""))
            outcome = await hostile.attack(self.args.hostile, vm.driver, target)
            emit(event="hostile", vm=vm.vm_id, name=vm.name, **outcome)
        engines = list(vm.driver.engines)
        t_run = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:  # one vCPU failing stops its siblings: the VM resets as a whole
                for v in range(self.args.vcpus):
                    tg.create_task(self._vcpu_loop(vm, vm.runner, v, engines[v % len(engines)]))
        finally:
            vm.run_s += time.monotonic() - t_run
        if integrity is not None:
            emit(event="integrity_after", vm=vm.vm_id, name=vm.name, **await integrity.snapshot())

    async def _vcpu_loop(self, vm: GuestVm, runner: WorkloadRunner, vcpu: int, engine: str) -> None:
        """Run this vCPU's share of the workloads (or run until the deadline with ``--duration``). A
        verification failure counts and goes on; a hang or a failed ioreq ends the loop with its reason
        (the VM then resets if ``--recover``)."""
        kinds = kinds_for(engine, self.args.mix.split(","))
        if not kinds:
            return
        share = self.args.workloads // self.args.vcpus + (1 if vcpu < self.args.workloads % self.args.vcpus else 0)
        i = 0
        while (i < share) if self.deadline is None else self._time_left():
            kind = kinds[i % len(kinds)]
            vm.submitted += 1
            t0 = time.perf_counter()
            try:
                await runner.run(kind, engine, vcpu=vcpu, user_irq=(i % 3 != 2))
            except VerifyError as err:
                vm.fail(f"VerifyError: {err}")
            except asyncio.CancelledError:
                vm.fail(f"{kind} on {engine}: aborted by the VM reset")  # a sibling vCPU hit a reset
                raise
            except Exception as err:
                reason = f"{kind} on {engine}: {type(err).__name__}: {err}"
                vm.fail(reason)
                raise WorkloadAborted(reason) from err
            else:
                vm.verified += 1
                vm.by_kind[kind] += 1
                vm.latencies.record_s(time.perf_counter() - t0)
                if trace.on:
                    took = (time.perf_counter() - t0) * 1e6
                    trace.complete(f"workload {kind} on {engine}", "workload", trace.now_us() - took, took,
                                   tid=vm.vm_id, vm=vm.vm_id)
            i += 1

    async def _display_loop(self, vm: GuestVm, disp: GuestDisplay) -> None:
        """Animated frames until ``--display-frames`` (then the last frame stays on screen) or the VM goes.
        A display failure is reported and ends the display only; the VM's workloads go on."""
        try:
            await disp.run(lambda: vm.verified, fps=self.args.display_fps, frames=self.args.display_frames)
        except asyncio.CancelledError:
            raise
        except (DisplayError, DriverError, IoreqFailed) as err:
            disp.st.failures.append(f"{type(err).__name__}: {err}")
            emit(event="display_failed", vm=vm.vm_id, name=vm.name, reason=f"{type(err).__name__}: {err}")
            return
        dump = ""
        if self.args.display_dump:  # the guest's own copy of what is on screen, for tests and tools
            import os

            os.makedirs(self.args.display_dump, exist_ok=True)
            dump = os.path.join(self.args.display_dump, f"{vm.name}.xrgb")
            with open(dump, "wb") as f:
                f.write(disp.st.expected)
        mode = disp.st.mode
        emit(event="display_done", vm=vm.vm_id, name=vm.name, **disp.summary(), dump=dump,
             width=mode.width if mode else 0, height=mode.height if mode else 0,
             stride=disp.fbs[disp.st.shown].stride if disp.fbs else 0)

    async def _stats_loop(self) -> None:
        """A ``stats`` event every interval: cumulative counts and recent latencies (load reports use it)."""
        while True:
            await asyncio.sleep(self.args.stats_interval)
            emit(event="stats", **self.stats())

    # ---------------------------------------------------------------------------------------- figures
    def _vm_summary(self, vm: GuestVm) -> dict[str, Any]:
        out: dict[str, Any] = {"vm": vm.vm_id, "name": vm.name, "state": vm.state, "vgpu_type": vm.vgpu_type,
                               "submitted": vm.submitted, "verified": vm.verified, "failed": vm.failed,
                               "by_kind": dict(vm.by_kind), "failures": vm.failures[:5], "resets": vm.resets,
                               "recoveries": vm.recoveries, "ioreqs": dict(vm.ioreqs()), "msis": vm.msis(),
                               "workloads_per_s": round(vm.verified / vm.run_s, 1) if vm.run_s else 0.0}
        if vm.driver is not None:
            out["submission_traps"] = {str(k): v for k, v in sorted(vm.driver.submission_traps.items())}
            res = vm.driver.pv_result
            out["pv"] = {"status": res.status, "enabled": res.enabled, "reason": res.reason} if res else None
            out["user_irqs"] = {e.name: e.user_irqs for e in vm.driver.engines.values()}
            out["completions"] = {e.name: e.completions for e in vm.driver.engines.values()}
        if vm.runner is not None:
            out["user_irqs_asked"] = dict(vm.runner.asked_user_irq)
        if vm.display is not None:
            out["display"] = vm.display.summary()
        return out

    def _rtt(self) -> dict[str, Histogram]:
        out: dict[str, Histogram] = {}
        for vm in self.vms:
            for kind, hist in vm.rtt().items():
                out.setdefault(kind, Histogram()).add(hist)
        return out

    def summary(self) -> dict[str, Any]:
        """Totals across this process's VMs (the demo's JSON is built from these)."""
        rtt = self._rtt()
        ioreqs: Counter[str] = Counter()
        for vm in self.vms:
            ioreqs.update(vm.ioreqs())
        elapsed = time.monotonic() - self.t_start if self.t_start else 0.0
        verified = sum(v.verified for v in self.vms)
        mmio = rtt.get("MMIO", Histogram()).summary()
        return {"vms": len(self.vms), "workloads_submitted": sum(v.submitted for v in self.vms),
                "workloads_verified": verified, "workloads_failed": sum(v.failed for v in self.vms),
                "ioreqs_by_type": dict(ioreqs), "msis": sum(v.msis() for v in self.vms),
                "mmio_rtt_us": {"p50": mmio.get("p50", 0.0), "p99": mmio.get("p99", 0.0),
                                "mean": mmio.get("mean", 0.0)},
                "rtt_us_by_type": {k: v.summary() for k, v in rtt.items()},
                # the histograms themselves: readers merge them exactly (percentiles cannot be averaged)
                "ioreq_hist": {k: v.encode() for k, v in rtt.items()},
                "resets": sum(v.resets for v in self.vms), "recoveries": sum(v.recoveries for v in self.vms),
                "failures_by_reason": dict(sum((v.failure_reasons for v in self.vms), Counter())),
                "seconds": round(elapsed, 3), "workloads_per_s": round(verified / elapsed, 1) if elapsed else 0.0,
                "per_vm": [self._vm_summary(v) for v in self.vms]}

    def stats(self) -> dict[str, Any]:
        """Cumulative counts plus this interval's workload latencies (the load report plots these)."""
        lat = Histogram()
        for vm in self.vms:
            lat.add(vm.latencies)
            vm.latencies = Histogram()
        rtt = self._rtt()
        ioreqs: Counter[str] = Counter()
        for vm in self.vms:
            ioreqs.update(vm.ioreqs())
        return {"elapsed_s": round(time.monotonic() - self.t_start, 3), "vms": len(self.vms),
                "vms_running": sum(v.state == "running" for v in self.vms),
                "submitted": sum(v.submitted for v in self.vms), "verified": sum(v.verified for v in self.vms),
                "failed": sum(v.failed for v in self.vms), "resets": sum(v.resets for v in self.vms),
                "recoveries": sum(v.recoveries for v in self.vms), "ioreqs_by_type": dict(ioreqs),
                "failures_by_reason": dict(sum((v.failure_reasons for v in self.vms), Counter())),
                "rtt_us_by_type": {k: v.summary() for k, v in rtt.items()},
                "ioreq_hist": {k: v.encode() for k, v in rtt.items()},
                "workload_latency_ms": lat.summary(scale=1000.0), "workload_hist": lat.encode(),
                # per-VM progress by name (names survive resets and restarts): a load run tells a VM that
                # came back after a fault from one that never did
                "verified_by_vm": {v.name: v.verified for v in self.vms}}
