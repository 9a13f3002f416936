"""The guest process's shell: one connection to vhm, the guest runtime's effects in and out, one timer.

The VMs' CPUs are the sans-I/O runtime (runtime.py) running the driver's threads; this shell feeds it what
arrives (IOREQ_DONE, ERROR, MSI, VGPU_LOST, vhm lost) with the time, sends the ioreqs it produced after each
drained batch, hands finished threads to whoever waits for them, and arms one timer at the runtime's next
deadline. The VMs' lives (lifecycle.py) and the figures (stats.py) are their own modules. Events go to
stdout as JSON lines (``vm_ready``, ``vm_done``, ``done``...) for the launcher and tests; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

from ...protocol import IoreqType
from ...protocol import messages as m
from ...protocol.constants import MAX_IOREQ_BATCH
from ...protocol.errors import ErrorCode, Refusal
from ..common import trace
from ..common.client import Connection, PeerLost, RemoteError
from ..common.histo import Histogram
from ..common.memory import MachineMemory
from ..common.service import BaseService
from . import stats
from .events import emit
from .i915 import DriverError
from .lifecycle import Lifecycle, outcome_reason
from .runtime import Done, Gen, Outcome, Runtime, Thread
from .stats import GuestVm
from .workloads import Budget


class GuestService(BaseService):
    role = "guest"

    def __init__(self, ctx: Any, args: Any) -> None:
        super().__init__(ctx, args)
        self.vms: list[GuestVm] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rt = Runtime(ioreq_timeout=args.ioreq_timeout, wall_offset=time.time() - time.perf_counter())
        self.budget = Budget(workloads=args.workloads, vcpus=args.vcpus, think=max(0.0, getattr(args, "think", 0.0)))
        self.mem: MachineMemory | None = None
        self.life: Lifecycle | None = None
        self.t_start = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # vhm is away since (None: connected): the VMs' traps in flight wait for it for --vhm-grace, then
        # are sent again to a vhm that restarted with its state (docs/STATE.md) or refused
        self._vhm_away: float | None = None
        self._vhm_grace: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------------------ shell
    async def start(self) -> dict[str, Any]:
        self.mem = MachineMemory(self.args.mem_path)
        self.conn = Connection(self.ctx, self.args.vhm, role="guest", ident=self.ident, epoch=self.epoch, hb=self.hb,
                               log=self.log, counters=self.counters, on_message=self._on_message,
                               on_down=self._on_down, on_up=self._on_up, name="vhm",
                               after_batch=self._after_batch)
        self.life = Lifecycle(self, self.conn, self.args, self.mem, self.budget, self.log)
        self.rt.record = trace.on
        self.conn.start()
        self._spawn(self._main())
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.finish_now)
        return {"vhm": self.args.vhm, "vms": self.args.vms}

    def finish_now(self) -> None:
        """SIGUSR1 (``gvtsim load`` once its measured window is over): end a ``--duration`` run now; every
        VM finishes the workload it is running and reports done."""
        if self.budget.deadline is not None:
            self.budget.deadline = min(self.budget.deadline, time.perf_counter())
            self.counters["finish_signals"] += 1
            self.budget.ended.fire()  # vCPUs pausing between workloads (--think) end now, not at their wake-up
            self._on_timer()

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        await self.conn.close()

    def _spawn(self, coro: Any, what: str = "task") -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=what)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        """Retrieve every task's exception (none is left to asyncio's "never retrieved")."""
        self._tasks.discard(t)
        if t.cancelled() or t.exception() is None:
            return
        err = t.exception()
        self.counters[f"{t.get_name()}_failed"] += 1
        self.log.error("task_failed", task=t.get_name(), error=repr(err), exc_info=err)

    def status(self) -> tuple[bool, dict[str, Any]]:
        return self.conn.up.is_set(), {"vms": [stats.vm_summary(v) for v in self.vms],
                                       "ioreq_hist": {k: h.encode() for k, h in stats.rtt(self.vms).items()}}

    # ------------------------------------------------------------------------------- guest threads
    def start_thread(self, gen: Gen[Any], name: str, vm: int) -> tuple[Thread, asyncio.Future[Outcome]]:
        """Start a guest thread on the runtime; the future gets its outcome."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        th = self.rt.spawn(gen, time.perf_counter(), name, vm, tag=fut)
        self._flush()
        return th, fut

    def kill(self, th: Thread) -> None:
        """Stop a guest thread (its outcome is reported as for any other)."""
        self.rt.kill(th)
        self._flush()

    def forget_vm(self, vm: int) -> None:
        """The VM is being torn down: its threads stop, its ioreqs in flight are dropped."""
        self.rt.forget_vm(vm)
        self._flush()

    def _flush(self) -> None:
        """Send the ioreqs the runtime produced, hand over finished threads, re-arm the timer."""
        rt = self.rt
        while rt.outbox or rt.finished:
            reqs, rt.outbox = rt.outbox, []
            # the vCPUs that trapped in this turn go to vhm together, as one IOREQ_BATCH (ACRN's one upcall
            # for every pending slot); a lone trap is a plain IOREQ
            for i in range(0, len(reqs), MAX_IOREQ_BATCH):
                chunk = reqs[i:i + MAX_IOREQ_BATCH]
                try:
                    self.conn.send_now(chunk[0] if len(chunk) == 1 else m.IoreqBatch(reqs=chunk))
                except PeerLost as err:  # the threads see it as a failed access (a GPU reset)
                    if self._vhm_away is not None:  # they wait in flight: sent when vhm is back
                        continue
                    for req in chunk:
                        rt.ioreq_refused(req.vm, req.vcpu, req.seq, Refusal(ErrorCode.PEER_LOST, str(err)),
                                         time.perf_counter())
            done, rt.finished = rt.finished, []
            for th in done:
                self._thread_done(th)
        if rt.events:
            events, rt.events = rt.events, []
            for cat, name, vm, took in events:
                trace.complete(name, cat, trace.now_us() - took * 1e6, took * 1e6, tid=vm, vm=vm)
        rt.record = trace.on
        self._arm()

    def _thread_done(self, th: Thread) -> None:
        out = th.outcome
        assert out is not None
        fut = th.tag
        if isinstance(fut, asyncio.Future):
            if not fut.done():
                fut.set_result(out)
            return
        if isinstance(out, Done):
            return
        # an interrupt handler whose VM was reset or destroyed under it (a refusal, a hang) is counted;
        # anything else is logged with its traceback
        self.counters[f"{th.name}_failed"] += 1
        err = getattr(out, "error", None)
        if err is None or isinstance(err, (DriverError, RemoteError)):
            self.log.info("thread_ended", thread=th.name, vm=th.vm, error=outcome_reason(out))
        else:
            self.log.error("thread_failed", thread=th.name, vm=th.vm, error=repr(err), exc_info=err)

    def _arm(self) -> None:
        """One timer at the runtime's next deadline (kept when an earlier one is already armed: it fires,
        advances the runtime and re-arms)."""
        when = self.rt.next_deadline()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = asyncio.get_running_loop().call_later(max(0.0, when - time.perf_counter()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        before = self.rt.timeouts
        self.rt.advance(time.perf_counter())
        self.counters["ioreq_timeouts"] += self.rt.timeouts - before
        self._flush()

    # ------------------------------------------------------------------------------------- messages
    async def _after_batch(self) -> None:
        self._flush()

    async def _on_message(self, msg: m.Message) -> None:
        rt = self.rt
        if isinstance(msg, m.IoreqDone):
            now = time.perf_counter()
            if trace.on:
                self._trace_ioreq(msg.vm, msg.vcpu, msg.seq, now)
            if not rt.ioreq_done(msg.vm, msg.vcpu, msg.seq, msg.value, now):
                self.counters["stray_ioreq_done"] += 1
        elif isinstance(msg, m.IoreqDoneBatch):
            now = time.perf_counter()
            for d in msg.dones:
                if trace.on:
                    self._trace_ioreq(d.vm, d.vcpu, d.seq, now)
                if not rt.ioreq_done(d.vm, d.vcpu, d.seq, d.value, now):
                    self.counters["stray_ioreq_done"] += 1
        elif isinstance(msg, m.Error) and msg.vm is not None and msg.seq is not None:
            rt.ioreq_refused(msg.vm, msg.vcpu or 0, msg.seq,
                             Refusal(ErrorCode(msg.code), msg.reason, msg.vm, msg.vcpu, msg.seq), time.perf_counter())
            self.counters[f"ioreq_error_{msg.code}"] += 1
        elif isinstance(msg, m.Msi):
            assert self.life is not None
            vm = self.life.by_id.get(msg.vm)
            self.counters["msis"] += 1
            if trace.on:
                trace.instant("MSI received", "irq", tid=msg.vm, vm=msg.vm, data=hex(msg.data))
            if vm is not None and vm.driver is not None:  # the handler traps: a thread of its own
                rt.spawn(vm.driver.on_msi(msg.addr, msg.data), time.perf_counter(), "irq_handler", msg.vm)
            else:
                self.counters["msi_for_unknown_vm"] += 1
        elif isinstance(msg, m.VgpuLost):
            self._vgpu_lost(msg)
        elif isinstance(msg, m.EptChanged):
            self.counters["ept_changed"] += 1
        else:
            self.counters[f"unexpected_{type(msg).__name__}"] += 1

    def _vgpu_lost(self, msg: m.VgpuLost) -> None:
        """The VM's waiting ioreqs and every later one fail with gpu_reset until it is torn down."""
        assert self.life is not None
        self.counters["vgpus_lost"] += 1
        vm = self.life.by_id.get(msg.vm)
        if vm is None:
            return
        emit(event="vgpu_lost", vm=msg.vm, name=vm.name, reason=msg.reason)
        self.rt.refuse_vm(msg.vm, Refusal(ErrorCode.GPU_RESET, f"vGPU lost: {msg.reason}", msg.vm),
                          time.perf_counter())
        if vm.state == "done":  # no vCPU of it will trap and see the reset: handle it now
            self._spawn(self.life.reset_idle(vm, msg.reason), "idle_reset")

    def _trace_ioreq(self, vm: int, vcpu: int, seq: int, now: float) -> None:
        entry = self.rt.inflight.get((vm, vcpu, seq))
        if entry is None:
            return
        req, took = entry[1].req, now - entry[1].t0
        trace.complete(f"ioreq {IoreqType(req.kind).name}", "ioreq",
                       trace.now_us() - took * 1e6, took * 1e6, tid=vm, vm=vm, vcpu=vcpu, seq=seq, addr=hex(req.addr))

    async def _on_down(self, reason: str) -> None:
        """vhm is gone: the traps in flight wait --vhm-grace for it (a vhm restarted with its state answers
        them), then fail as a GPU reset."""
        emit(event="vhm_lost", reason=reason)
        grace = float(getattr(self.args, "vhm_grace", 0.0))
        if grace <= 0:
            self._refuse_all(f"vhm lost: {reason}")
            return
        if self._vhm_away is None:
            self._vhm_away = time.monotonic()
            self._vhm_grace = asyncio.get_running_loop().call_later(
                grace, lambda: self._refuse_all(f"vhm lost: {reason} (not back within {grace:g}s)"))

    def _refuse_all(self, reason: str) -> None:
        self._vhm_away = None
        if self._vhm_grace is not None:
            self._vhm_grace.cancel()
            self._vhm_grace = None
        self.counters["vhm_lost_refusals"] += len(self.rt.inflight)
        self.rt.refuse_all(Refusal(ErrorCode.PEER_LOST, reason), time.perf_counter())
        self._flush()

    async def _on_up(self, server_epoch: int, restarted: bool) -> None:
        """vhm is back. The same vhm (reconnected, or restarted with its state: the same lineage) still has
        the VMs: every trap in flight is sent again with its seq (answered once: vhm knows which it
        completed). A different vhm has none of them: they fail, and the VMs take the reset path."""
        away, self._vhm_away = self._vhm_away, None
        if self._vhm_grace is not None:
            self._vhm_grace.cancel()
            self._vhm_grace = None
        if restarted:
            self.counters["vhm_restarted_without_state"] += 1
            emit(event="vhm_restarted", reason="a different vhm (restarted without the state of its VMs)")
            self._refuse_all("vhm restarted without the state of the VM")
            return
        if away is None:
            return
        resent = 0
        for _, trap in list(self.rt.inflight.values()):
            try:
                self.conn.send_now(trap.req)
                resent += 1
            except PeerLost:
                break  # down again: the next up sends them
        self.counters["ioreqs_resent"] += resent
        emit(event="vhm_back", away_s=round(time.monotonic() - away, 3), resent=resent)

    # ------------------------------------------------------------------------------------------- VMs
    async def _main(self) -> None:
        assert self.life is not None
        await self.conn.wait_up(timeout=60)
        types = [t for t in self.args.vgpu_types.split(",") if t]
        self.t_start = time.monotonic()
        if self.args.duration > 0:
            self.budget.deadline = time.perf_counter() + self.args.duration
        if self.args.stats_interval > 0:
            self._spawn(self._stats_loop())
        runs = []
        for i in range(self.args.vms):
            vm = GuestVm(name=f"{self.args.name_prefix}{i}", vgpu_type=types[i % len(types)] if types else "",
                         index=i)
            self.vms.append(vm)
            runs.append(self._spawn(self.life.run_vm(vm)))
        await asyncio.gather(*runs, return_exceptions=True)
        emit(event="done", **self.summary())

    async def _stats_loop(self) -> None:
        """A ``stats`` event every interval: cumulative counts and recent latencies (load reports use it)."""
        while True:
            await asyncio.sleep(self.args.stats_interval)
            emit(event="stats", **self.stats())

    def summary(self) -> dict[str, Any]:
        """Totals across this process's VMs (the demo's JSON is built from these)."""
        return stats.summary(self.vms, time.monotonic() - self.t_start if self.t_start else 0.0)

    def stats(self) -> dict[str, Any]:
        """Cumulative counts plus this interval's workload latencies (the load report plots these)."""
        return stats.stats(self.vms, time.monotonic() - self.t_start)

    def _rtt(self) -> dict[str, Histogram]:
        return stats.rtt(self.vms)
