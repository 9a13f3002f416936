"""The weighted time-slice scheduler between vGPUs (i915/gvt sched_policy.c "tbs"; gvt/sched_policy.c).

* A 1 ms timer (GVT_DEFAULT_TIME_SLICE) requests a scheduling pass; every 100 ms (GVT_TS_BALANCE_PERIOD_MS)
  ``gvt_balance_timeslice`` runs with a stage counter modulo 10 (GVT_TS_BALANCE_STAGE_NUM): stage 0 gives
  each vGPU on the run queue ``allocated_ts = 100 ms x weight / sum(weights)`` and ``left_ts = allocated_ts``
  (debt forgiven); the other stages add ``allocated_ts`` to ``left_ts`` (debt and credit carried).
* ``tbs_sched_func``: the first vGPU in LRU order with a pending workload and ``left_ts > 0`` becomes the
  next one (moved to the LRU tail); none => the idle vGPU (``None`` here: nothing is dispatched).
* ``try_to_schedule_next_vgpu``: ``need_reschedule`` stops new dispatches; the switch completes only when
  no engine runs a workload any more (switches happen only between workloads, no preemption by GVT).
  One current vGPU owns every engine, as upstream; each engine dispatches that vGPU's queue for it.
* ``vgpu_update_timeslice``: the current vGPU is charged the time since its schedule-in (or since the
  last pass) at every pass: ``left_ts -= now - sched_in_time``.

Sans-I/O: every entry point takes ``now`` (seconds, any monotonic clock; simulated time in the benchmark).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

GVT_DEFAULT_TIME_SLICE = 1e-3  # s: the timer period (1,000,000 ns)
GVT_TS_BALANCE_PERIOD = 0.1  # s: GVT_TS_BALANCE_PERIOD_MS
GVT_TS_BALANCE_STAGE_NUM = 10
GVT_SCHED_VGPU_PRI_TIME = 2.0  # s: a new vGPU gets 2 seconds of higher priority (sched_policy.c)


@dataclass
class VgpuSchedData:
    """struct vgpu_sched_data: weight (vgpu_sched_ctl), time slices and accounting, in seconds."""

    vgpu_id: int
    weight: int
    allocated_ts: float = 0.0
    left_ts: float = 0.0
    sched_in_time: float = 0.0
    sched_time: float = 0.0  # total time as the current vGPU
    sched_ins: int = 0
    pri_sched: bool = False  # tbs_sched_start_schedule: priority until pri_time
    pri_time: float = 0.0


class TimeSlicePolicy:
    """struct gvt_sched_data plus the scheduler fields the policy drives (current/next vGPU,
    need_reschedule)."""

    def __init__(self, period: float = GVT_TS_BALANCE_PERIOD, stages: int = GVT_TS_BALANCE_STAGE_NUM) -> None:
        self.period = period
        self.stages = stages
        self.data: dict[int, VgpuSchedData] = {}
        self.lru: list[int] = []  # lru_runq_head: vGPU ids, least recently picked first
        self.current: int | None = None  # None = the idle vGPU
        self.next: int | None = None
        self.next_set = False  # scheduler->next_vgpu != NULL (the idle vGPU may be the target)
        self.need_reschedule = False
        self.stage_check = 0
        self.expire_time: float | None = None  # None: balance at the next pass
        self.switches = 0
        self.balances = 0

    # ------------------------------------------------------------------------------ run queue
    def start_schedule(self, vgpu_id: int, weight: int, now: float) -> None:
        """tbs_sched_start_schedule: add the vGPU at the head of the run queue (list_add) with
        ``pri_sched`` for GVT_SCHED_VGPU_PRI_TIME (2 s): until then it is picked whenever it has work,
        time slice or not, and stays at the head. The other vGPUs' balance stage is left alone."""
        if vgpu_id in self.data:
            return
        self.data[vgpu_id] = VgpuSchedData(vgpu_id, max(1, weight), pri_sched=True,
                                           pri_time=now + GVT_SCHED_VGPU_PRI_TIME)
        self.lru.insert(0, vgpu_id)

    def stop_schedule(self, vgpu_id: int, now: float) -> None:
        """tbs_sched_stop_schedule: off the run queue; if it was current, dispatch stops and a new
        vGPU is chosen at the next pass."""
        if self.data.pop(vgpu_id, None) is None:
            return
        self.lru.remove(vgpu_id)
        if self.next_set and self.next == vgpu_id:
            self.next, self.next_set = None, False
        if self.current == vgpu_id:
            self.current = None
            self.need_reschedule = True

    def sync(self, runnable: Mapping[int, int], now: float) -> None:
        """Make the run queue the ``{vgpu_id: weight}`` given (vGPUs with execlists enabled, active, not
        failsafe): start_schedule for the new ones, stop_schedule for the gone ones."""
        for vid in [v for v in self.data if v not in runnable]:
            self.stop_schedule(vid, now)
        for vid, weight in runnable.items():
            if vid not in self.data:
                self.start_schedule(vid, weight, now)

    # ---------------------------------------------------------------------------------- passes
    def balance(self) -> None:
        """gvt_balance_timeslice: stage 0 allocates period x weight / sum(weights); others add it."""
        stage = self.stage_check % self.stages
        self.stage_check += 1
        self.balances += 1
        if stage == 0:
            total = sum(d.weight for d in self.data.values())
            for d in self.data.values():
                d.allocated_ts = self.period * d.weight / total
                d.left_ts = d.allocated_ts
        else:
            for d in self.data.values():
                d.left_ts += d.allocated_ts

    def _update_timeslice(self, now: float) -> None:
        """vgpu_update_timeslice: charge the current vGPU the time since its last accounting."""
        d = self.data.get(self.current) if self.current is not None else None
        if d is None:
            return
        delta = max(0.0, now - d.sched_in_time)
        d.sched_time += delta
        d.left_ts -= delta
        d.sched_in_time = now

    def _find_busy_vgpu(self, has_work: Callable[[int], bool], now: float) -> int | None:
        """find_busy_vgpu: the first in LRU order with pending work and either priority still running
        (``pri_sched``, which lapses at ``pri_time``) or time slice left."""
        for vid in self.lru:
            if not has_work(vid):
                continue
            d = self.data[vid]
            if d.pri_sched:
                if now < d.pri_time:
                    return vid
                d.pri_sched = False
            if d.left_ts > 0:
                return vid
        return None

    def schedule(self, now: float, *, timer: bool, has_work: Callable[[int], bool], engines_idle: bool) -> None:
        """intel_gvt_schedule: a timer pass (``timer``, may balance) or an event pass (a workload was
        queued, or one completed while a switch is pending). ``engines_idle``: no engine runs a workload."""
        if self.expire_time is None or (timer and now >= self.expire_time):
            self.balance()
            self.expire_time = now + self.period
        self._update_timeslice(now)
        if self.data and not self.next_set:  # tbs_sched_func
            vid = self._find_busy_vgpu(has_work, now)
            if vid is not None and not self.data[vid].pri_sched:
                self.lru.remove(vid)
                self.lru.append(vid)  # the last used vGPU goes to the LRU tail (a priority one stays)
            self.next, self.next_set = vid, True  # None: the idle vGPU
        if self.next_set:
            self._try_to_schedule_next(now, engines_idle)

    def _try_to_schedule_next(self, now: float, engines_idle: bool) -> None:
        """try_to_schedule_next_vgpu: switch once no engine runs a workload of the old vGPU."""
        if self.next == self.current:
            self.next_set = False
            self.need_reschedule = False
            return
        self.need_reschedule = True  # stops the dispatch of the current vGPU's workloads
        if not engines_idle:
            return
        self._update_timeslice(now)
        self.current = self.next
        if self.current is not None:
            d = self.data[self.current]
            d.sched_in_time = now
            d.sched_ins += 1
        self.next, self.next_set = None, False
        self.need_reschedule = False
        self.switches += 1

    def dispatchable(self) -> int | None:
        """pick_next_workload's gate: the vGPU whose workloads the engines may take now, or None."""
        return None if self.need_reschedule else self.current

    # ------------------------------------------------------------------------------------ views
    def info(self) -> dict[str, Any]:
        """What STATUS shows of the policy."""
        return {"current": self.current, "need_reschedule": self.need_reschedule, "switches": self.switches,
                "balances": self.balances, "stage": self.stage_check % self.stages,
                "vgpus": {str(d.vgpu_id): {"weight": d.weight, "left_ms": round(d.left_ts * 1e3, 3),
                                           "allocated_ms": round(d.allocated_ts * 1e3, 3),
                                           "sched_ms": round(d.sched_time * 1e3, 3), "sched_ins": d.sched_ins}
                          for d in self.data.values()}}
