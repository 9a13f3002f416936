"""A hosted VM's life, as the guest process drives it: VM_CREATE, boot (PCI probe, the driver's init, PV,
buffers), the vCPU workload loops, and the GPU reset path (tear the VM down, create it again).

The steps that touch the vGPU run as guest threads on the sans-I/O runtime (runtime.py); this module only
sequences them and talks to vhm for the VM itself (VM_CREATE / VM_DESTROY). Events go to stdout as JSON
lines (``vm_ready``, ``vm_reset``, ``vm_recovered``, ``vm_done``...) for the launcher and tests.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol, TypeVar

from ...protocol import messages as m
from ...protocol.errors import Refusal
from ..common.client import Connection, PeerLost, RemoteError
from ..common.memory import MachineMemory
from . import hostile
from .cpu import GuestMachine
from .display import DisplayError, GuestDisplay
from .events import emit
from .i915 import DriverError, VgpuDriver
from .integrity import Integrity
from .pci import probe_gpu
from .runtime import Done, Failed, Gen, Outcome, Runtime, Thread
from .stats import GuestVm, vm_summary
from .workloads import Budget, WorkloadAborted, WorkloadRunner, allocate, kinds_for, vcpu_loop

T = TypeVar("T")


class IoreqRefused(RuntimeError):
    """A boot step's ioreq was refused (vhm or the device model failed it): the driver's GPU reset."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        super().__init__(f"{refusal.code.value}: {refusal.reason}")


def outcome_reason(outcome: Outcome) -> str:
    """What ended a thread, as a reason for events and failure lists."""
    if isinstance(outcome, Refusal):
        return f"IoreqRefused: {outcome.code.value}: {outcome.reason}"
    if isinstance(outcome, Failed):
        return f"{type(outcome.error).__name__}: {outcome.error}"
    return "done"


class ThreadHost(Protocol):
    """What the lifecycle needs of the shell: the runtime, and guest threads it can wait for."""

    rt: Runtime

    def start_thread(self, gen: Gen[Any], name: str, vm: int) -> tuple[Thread, asyncio.Future[Outcome]]: ...

    def kill(self, th: Thread) -> None: ...

    def forget_vm(self, vm: int) -> None: ...


class Lifecycle:
    """Creates, boots, runs and resets the VMs of one guest process."""

    def __init__(self, host: ThreadHost, conn: Connection, args: Any, mem: MachineMemory, budget: Budget,
                 log: Any) -> None:
        self.host = host
        self.conn = conn
        self.args = args
        self.mem = mem
        self.budget = budget
        self.log = log
        self.by_id: dict[int, GuestVm] = {}

    # ------------------------------------------------------------------------------------ threads
    async def call(self, vm: GuestVm, gen: Gen[T], name: str) -> T:
        """Run a guest thread to its end; its value, or its failure raised here (a refusal as
        :class:`IoreqRefused`)."""
        _th, fut = self.host.start_thread(gen, name, vm.vm_id)
        out = await fut
        if isinstance(out, Done):
            return out.value  # type: ignore[no-any-return]
        if isinstance(out, Failed):
            raise out.error
        raise IoreqRefused(out)

    def _time_left(self) -> bool:
        return self.budget.deadline is None or self.host.rt.now < self.budget.deadline

    # ------------------------------------------------------------------------------------------ VMs
    async def run_vm(self, vm: GuestVm) -> None:
        """Create, boot and run the VM. With ``--recover``, a GPU reset (a failed ioreq, a hang, the device
        model or GPU gone) tears the VM down and brings it up again, as a guest re-initialising its driver
        after a reset; every reset and recovery is an event with its reason and timing."""
        attempt = 0
        while True:
            attempt += 1
            try:
                await self.boot_and_run(vm)
                vm.state = "done"
                break
            except Exception as err:  # every way a VM can fail is reported with its reason, none is hidden
                reason = f"{type(err).__name__}: {err}"
                if not isinstance(err, WorkloadAborted):  # a workload's failure was recorded with it
                    vm.failures.append(reason)
                self.log.warning("vm_failed", vm=vm.vm_id, name=vm.name, error=reason,
                                 exc_info=not isinstance(err, (RemoteError, IoreqRefused, DriverError, PeerLost,
                                                               TimeoutError, WorkloadAborted)))
                if not (self.args.recover and self._time_left()):
                    vm.state = "failed"
                    break
                vm.state = "resetting"
                t_reset = time.monotonic()
                emit(event="vm_reset", vm=vm.vm_id, name=vm.name, reason=reason, attempt=attempt)
                await self.teardown(vm)
                await asyncio.sleep(min(0.2 * attempt, 1.0))  # back off before re-creating (not a sync)
                vm.reset_started = t_reset
        emit(event="vm_done", **vm_summary(vm))

    async def reset_idle(self, vm: GuestVm, why: str) -> None:
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
        await self.teardown(vm)
        vm.reset_started = t_reset
        try:
            await self.boot_and_run(vm, workloads=False)
            vm.state = "done"
        except Exception as err:  # reported with its reason, as any failed boot
            vm.failures.append(f"{type(err).__name__}: {err}")
            vm.state = "failed"
            emit(event="vm_failed", vm=vm.vm_id, name=vm.name, reason=vm.failures[-1])

    async def teardown(self, vm: GuestVm) -> None:
        """Best effort: stop the VM's threads and destroy the VM in vhm (it may already be gone with a
        restarted vhm)."""
        vm.fold()
        vm.resets += 1
        vm.display_thread = None
        if vm.vm_id:
            self.by_id.pop(vm.vm_id, None)
            self.host.forget_vm(vm.vm_id)
            try:
                await self.conn.request(m.VmDestroy, vm=vm.vm_id, timeout=5)
            except (RemoteError, PeerLost, TimeoutError):
                pass
        vm.machine = vm.driver = vm.runner = None
        vm.vm_id = 0

    async def boot_and_run(self, vm: GuestVm, workloads: bool = True) -> None:
        """VM_CREATE, then boot and (unless ``workloads`` is False) the workload loops."""
        args = self.args
        await self.conn.wait_up(timeout=30)
        reply = await self.conn.request(m.VmCreate, name=vm.name, vcpus=args.vcpus, ram_mb=args.ram_mb,
                                        vgpu_type=vm.vgpu_type, timeout=30)
        assert isinstance(reply, m.VmCreated)
        vm.vm_id = reply.vm
        self.by_id[vm.vm_id] = vm
        machine = vm.machine = GuestMachine(vm.vm_id, args.vcpus, self.mem, reply.ept_root, args.ram_mb << 20,
                                            self.host.rt)
        vm.state = "booting"
        gpu = await self.call(vm, probe_gpu(machine), "pci_probe")
        drv = vm.driver = VgpuDriver(machine, gpu, enable_pvmmio=getattr(args, "pvmmio", 0))
        display = vm.display = None
        if getattr(args, "display", False):  # a screen: the modeset runs inside init, before display_ready
            tiling = args.display_tiling
            if tiling == "alternate":
                tiling = "x" if vm.index % 2 else "linear"
            display = vm.display = drv.display = GuestDisplay(drv, vm.name, tiling)

        def modeset() -> Gen[None]:  # a display that does not come up costs the screen, not the VM
            assert display is not None
            try:
                yield from display.modeset()
            except DisplayError as err:
                emit(event="display_failed", vm=vm.vm_id, name=vm.name, reason=f"DisplayError: {err}")
                vm.display = drv.display = None

        await self.call(vm, drv.init(modeset=modeset if display is not None else None), "driver_init")
        if vm.display is not None:
            mode = vm.display.st.mode
            emit(event="display_ready", vm=vm.vm_id, name=vm.name, **vm.display.summary(),
                 width=mode.width if mode else 0, height=mode.height if mode else 0)
        if args.pv:  # negotiate the PV shared page; any refusal keeps the trap path
            res = await self.call(vm, drv.enable_pv(args.pv_version, corrupt=args.pv_corrupt), "pv_setup")
            emit(event="pv", vm=vm.vm_id, name=vm.name, status=res.status, enabled=res.enabled,
                 host_caps=res.host_caps, host_versions=res.host_versions, reason=res.reason)
        surfaces, fence = await self.call(vm, allocate(drv), "allocate")
        vm.state = "running"
        emit(event="vm_ready", vm=vm.vm_id, name=vm.name, vgpu_id=reply.vgpu_id, vgt_id=drv.vgt_id,
             caps=drv.caps, pvmmio=drv.pvmmio, balloon=list(drv.balloon), ept_root=reply.ept_root,
             ram_mb=args.ram_mb)
        if vm.reset_started is not None:
            emit(event="vm_recovered", vm=vm.vm_id, name=vm.name,
                 recovery_s=round(time.monotonic() - vm.reset_started, 3))
            vm.recoveries += 1
            vm.reset_started = None
        runner = vm.runner = WorkloadRunner(drv, surfaces, fence, seed=vm.vm_id)
        if not workloads:  # an idle VM brought back after a GPU reset: its driver is up again, nothing to run
            return
        if vm.display is not None:
            self._start_display(vm, vm.display)
        drv.hang_timeout = args.hang_timeout
        integrity = None
        if getattr(args, "integrity", False):  # integrity.py: canary views, checked after the workloads
            integrity = Integrity(drv, seed=vm.vm_id)
            views = await self.call(vm, integrity.setup(), "integrity")
            emit(event="integrity_before", vm=vm.vm_id, name=vm.name, **views, targets=integrity.targets())
        if getattr(args, "hostile", ""):  # hostile.py: one attack after boot, reported as an event
            target = hostile.parse_target(getattr(args, "hostile_target", ""))
            outcome = await self.call(vm, hostile.attack(args.hostile, drv, target), "hostile")
            emit(event="hostile", vm=vm.vm_id, name=vm.name, **outcome)
        await self._run_vcpus(vm, runner)
        if integrity is not None:
            emit(event="integrity_after", vm=vm.vm_id, name=vm.name,
                 **await self.call(vm, integrity.snapshot(), "integrity"))

    async def _run_vcpus(self, vm: GuestVm, runner: WorkloadRunner) -> None:
        """One workload thread per vCPU (vCPU i on engine i mod the VM's engines). One vCPU failing stops
        its siblings: the VM resets as a whole."""
        engines = list(runner.drv.engines)
        mix = self.args.mix.split(",")
        threads = [self.host.start_thread(vcpu_loop(runner, vm, v, engines[v % len(engines)],
                                             kinds_for(engines[v % len(engines)], mix), self.budget),
                                   f"vcpu{v}", vm.vm_id) for v in range(self.args.vcpus)]
        t_run = time.monotonic()
        first_failure: Outcome | None = None
        try:
            pending = {fut for _, fut in threads}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    out = fut.result()
                    if not isinstance(out, Done) and first_failure is None:
                        first_failure = out
                        for th, _ in threads:
                            self.host.kill(th)
        finally:
            vm.run_s += time.monotonic() - t_run
        if isinstance(first_failure, Failed):
            raise first_failure.error
        if isinstance(first_failure, Refusal):
            raise WorkloadAborted(outcome_reason(first_failure))

    def _start_display(self, vm: GuestVm, disp: GuestDisplay) -> None:
        """Animated frames until ``--display-frames`` (then the last frame stays on screen) or the VM goes.
        A display failure is reported and ends the display only; the VM's workloads go on."""
        th, fut = self.host.start_thread(disp.run(lambda: vm.verified, fps=self.args.display_fps,
                                           frames=self.args.display_frames), "display", vm.vm_id)
        vm.display_thread = th
        fut.add_done_callback(lambda f: self._display_done(vm, disp, th, f.result()))

    def _display_done(self, vm: GuestVm, disp: GuestDisplay, th: Thread, out: Outcome) -> None:
        if vm.display_thread is not th:  # the VM was torn down under it: nothing to report
            return
        vm.display_thread = None
        if not isinstance(out, Done):
            reason = outcome_reason(out)
            disp.st.failures.append(reason)
            emit(event="display_failed", vm=vm.vm_id, name=vm.name, reason=reason)
            return
        dump = ""
        if self.args.display_dump:  # the guest's own copy of what is on screen, for tests and tools
            os.makedirs(self.args.display_dump, exist_ok=True)
            dump = os.path.join(self.args.display_dump, f"{vm.name}.xrgb")
            with open(dump, "wb") as f:
                f.write(disp.st.expected)
        mode = disp.st.mode
        emit(event="display_done", vm=vm.vm_id, name=vm.name, **disp.summary(), dump=dump,
             width=mode.width if mode else 0, height=mode.height if mode else 0,
             stride=disp.fbs[disp.st.shown].stride if disp.fbs else 0)
