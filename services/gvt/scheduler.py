"""The scheduler proper: per-engine queues of workloads, their dispatch to the physical GPU and their
completion (gvt/scheduler.c dispatch_workload, complete_current_workload; gvt/execlist.c; the switch of
engine registers, gvt/mmio_context.c).

An ELSP submission becomes one workload per valid descriptor (workload.py creates, scans and shadows
them). Dispatch (one workload at a time per physical engine, a vGPU switch only between workloads) copies
the guest context into the vGPU's shadow context for that engine (shadow.py), emulates the execlist
schedule-in, and submits the shadow descriptor to pgpu. On completion the guest context is written back,
the pending user interrupts are injected, then the execlist schedule-out raises the context-switch event.
A failed workload (page fault, hang, error) is a vGPU hang: no schedule-out, no interrupt, and that
engine's queued workloads are dropped. Which vGPU's workloads the engines take is the weighted time-slice
policy's choice (sched_policy.py), run at every 1 ms ``tick`` and on events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..common.memory import PAGE_SIZE
from . import mmio_context, pv
from . import workload as wl
from .effects import PgpuSubmit
from .engines import PHYSICAL_ENGINES
from .errors import EmulationError, WorkloadError, WorkloadRefused
from ...hardware.regs import DESC_PRIVILEGE
from .execlist import VirtualExeclist, desc_valid, same_context
from .sched_policy import TimeSlicePolicy
from .shadow import SHADOW_PAGES, ShadowContext
from .workload import Workload

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

#: pgpu's user_interrupt reason -> the event's name after the engine (interrupt.EVENTS)
NOTIFY_EVENTS: dict[str, str] = {"PIPE_CONTROL notify": "PIPE_CONTROL", "MI_FLUSH_DW notify": "MI_FLUSH_DW"}


def notify_event(engine: str, reason: str) -> str:
    """The virtual interrupt event of a notify pgpu reported (MI_USER_INTERRUPT unless named)."""
    return f"{engine.upper()}_{NOTIFY_EVENTS.get(reason, 'MI_USER_INTERRUPT')}"


class Scheduler:
    """Per-engine queues of workloads, dispatch to pgpu, completion back to the guest."""

    def __init__(self, gvt: "Gvt") -> None:
        self.gvt = gvt
        self.queues: dict[tuple[int, str], deque[Workload]] = {}
        self.current: dict[str, Workload | None] = {e: None for e in PHYSICAL_ENGINES}
        # mmio_context.c: whose engine registers each physical engine holds (None: the host's)
        self.engine_owner: dict[str, int | None] = {e: None for e in PHYSICAL_ENGINES}
        self.inflight: dict[int, Workload] = {}  # tag -> workload on pgpu
        #: no submission while the GPU is away or its GGTT not yet rewritten (a new pgpu maps nothing)
        self.paused = False
        self._next_id = 1
        self.policy = TimeSlicePolicy()  # sched_policy.py: which vGPU owns the engines
        self.now = 0.0  # the latest time an entry point was given: the policy's clock
        #: workloads restored from the saved state (state.py) that were on the GPU when the old gvt died:
        #: what became of them is asked of pgpu (WORKLOAD_QUERY) before anything is dispatched
        self.reconciling: set[int] = set()

    # ------------------------------------------------------------------------------------ creation
    def submit_execlist(self, vgpu: "Vgpu", el: VirtualExeclist, pair: tuple[int, int]) -> None:
        """intel_vgpu_submit_execlist: one workload per valid descriptor; desc0 must be valid and every
        valid descriptor privileged ("unexpected GGTT elsp submission" otherwise)."""
        if not desc_valid(pair[0]):
            self.gvt.counters["elsp_refused_element0_invalid"] += 1
            raise EmulationError("ELSP submission with element 0 invalid")
        for d in pair:
            if desc_valid(d) and not d & DESC_PRIVILEGE:
                self.gvt.counters["elsp_refused_unprivileged"] += 1
                raise EmulationError("unexpected GGTT elsp submission (privilege_access = 0)")
        engine = el.engine.name
        if engine not in PHYSICAL_ENGINES:
            raise EmulationError(f"no physical engine for {engine}")
        for i, d in enumerate(pair):
            if not desc_valid(d):
                continue
            w = self._create(vgpu, engine, d, pair, emulate_schedule_in=(i == 0))
            self.queues.setdefault((vgpu.id, engine), deque()).append(w)
            self.gvt.counters["workloads_queued"] += 1
        self.kick()

    def submit_pv(self, vgpu: "Vgpu", engine: str, pair: tuple[int, int], seq: int) -> None:
        """PV submission (pv.py): the descriptors came from the shared page with one trap. The same checks
        and workload creation as an ELSP write, but no execlist emulation: no CSB, no context-switch
        interrupt (the PV patchset skips them); completion is published in the slot, then an MSI."""
        if engine not in PHYSICAL_ENGINES:
            raise EmulationError(f"no physical engine for {engine}")
        descs = [d for d in pair if desc_valid(d)]
        if not descs or any(not d & DESC_PRIVILEGE for d in descs):
            raise EmulationError("PV submission: element 0 invalid or not privileged")
        for d in descs:
            w = self._create(vgpu, engine, d, pair, emulate_schedule_in=False)
            w.pv = True
            w.pv_seq = seq if d == descs[-1] else None  # the slot completes with its last element
            self.queues.setdefault((vgpu.id, engine), deque()).append(w)
            self.gvt.counters["workloads_queued"] += 1
        self.kick()

    def _create(self, vgpu: "Vgpu", engine: str, desc: int, pair: tuple[int, int],
                emulate_schedule_in: bool) -> Workload:
        """A workload (workload.py), continuing after the queued one of the same context if any; a
        creation failure is an emulation error (a failsafe one unless the scan only refused it)."""
        queue = self.queues.get((vgpu.id, engine))
        after = queue[-1] if queue and same_context(queue[-1].desc, desc) else None
        wid, self._next_id = self._next_id, self._next_id + 1
        try:
            return wl.create(self.gvt, wid, vgpu, engine, desc, pair, emulate_schedule_in, after)
        except WorkloadError as err:
            self.gvt.counters["workload_create_failed"] += 1
            raise EmulationError(f"workload creation failed: {err}",
                                 failsafe=not isinstance(err, WorkloadRefused)) from None

    # ------------------------------------------------------------------------------------ dispatch
    def tick(self, now: float) -> None:
        """The 1 ms timer of the time-slice policy (INTEL_GVT_REQUEST_SCHED): a pass, then dispatch."""
        self.now = max(self.now, now)
        self._schedule(timer=True)
        self.kick(schedule=False)

    def _has_work(self, vgpu_id: int) -> bool:
        """vgpu_has_pending_workload: a queued workload on any engine."""
        return any(self.queues.get((vgpu_id, e)) for e in PHYSICAL_ENGINES)

    def _schedule(self, timer: bool) -> None:
        """intel_gvt_schedule: the run queue is the vGPUs with execlists on, active and not in failsafe
        (start/stop_schedule), then the policy's pass."""
        runnable = {v.id: v.type.weight for v in self.gvt.vgpus.values()
                    if v.active and not v.failsafe and v.submission.execlist_enabled}
        self.policy.sync(runnable, self.now)
        self.policy.schedule(self.now, timer=timer, has_work=self._has_work,
                             engines_idle=all(w is None for w in self.current.values()))

    def _pick(self, engine: str) -> Workload | None:
        """pick_next_workload: the current vGPU's next workload for this engine, unless a switch is
        pending (need_reschedule) or there is no current vGPU (the idle vGPU)."""
        vid = self.policy.dispatchable()
        if vid is None:
            return None
        vgpu = self.gvt.vgpus.get(vid)
        q = self.queues.get((vid, engine))
        if vgpu is None or not q or not vgpu.active or vgpu.failsafe:
            return None
        return q.popleft()

    def kick(self, schedule: bool = True) -> None:
        """intel_gvt_kick_schedule: a policy pass (``schedule``), then dispatch the current vGPU's
        workloads to every idle physical engine."""
        if self.gvt.shadow.batches:  # the shadow batches of workloads that ended go back
            self.gvt.shadow.reclaim_batches({w.id for q in self.queues.values() for w in q} | set(self.inflight))
        if schedule:
            self._schedule(timer=False)
        if self.paused:
            return
        for engine in PHYSICAL_ENGINES:
            while self.current[engine] is None:
                w = self._pick(engine)
                if w is None:
                    break
                if self._dispatch(w):
                    break

    def _dispatch(self, w: Workload) -> bool:
        """Prepare the shadow context and submit it. Returns False if the workload failed instead."""
        vgpu = w.vgpu
        try:
            shadow_pdps = (0, 0, 0, 0)
            if any(w.guest_pdps):
                # gvt/scheduler.c prepare_workload, gvt/gtt.c: the mm of the context's roots (lazily created),
                # shadowed, OOS pages synced, post-shadow flushed; its SHADOW roots go in the context
                shadow_pdps = vgpu.ppgtt.prepare_workload(w.desc, w.guest_pdps, w.id)
            sh = self.gvt.shadow.context_for(vgpu, w.engine)
            prologue = self._mmio_switch(w, sh)
            wl.populate_shadow_context(self.gvt, w, sh, shadow_pdps, prologue)
        except WorkloadError as err:
            self._fail(w, str(err))
            return False
        self.current[w.engine] = w
        self.inflight[w.id] = w
        if w.status == "queued":
            w.scan_events = len(w.pending_events)
        w.status = "running"
        w.dispatched_at = self.now
        el = vgpu.submission.execlists[w.engine]
        if w.emulate_schedule_in:
            el.schedule_in(w.ctx)
        # the shadow descriptor: same addressing mode and flags, the shadow LRCA, a host context id
        shadow_desc = ((w.desc & 0xFFF) | sh.gm) | ((vgpu.id << 8 | PHYSICAL_ENGINES.index(w.engine)) << 32)
        self.gvt.effects.append(PgpuSubmit(w.engine, (shadow_desc,), w.id))
        self.gvt.counters["workloads_dispatched"] += 1
        return True

    def _mmio_switch(self, w: Workload, sh: ShadowContext) -> bytes:
        """intel_gvt_switch_mmio, when the engine passes to another vGPU: the commands that save the
        engine's registers for the previous owner and load this vGPU's (mmio_context.py), run ahead of the
        guest's commands; the save lands in the last page of the shadow context (unused by its ring)."""
        owner = self.engine_owner.get(w.engine)
        if owner == w.vgpu.id:
            if not wl.is_inhibit_context(w):
                return b""
            # a restore-inhibit context loads no register state: its in-context registers come from the
            # vregs (restore_context_mmio_for_inhibit), even with no switch
            self.gvt.counters["mmio_inhibit_restores"] += 1
            return wl.inhibit_restore_commands(w)
        pre = self.gvt.vgpus.get(owner) if owner is not None else None
        save_gm = sh.gm + (SHADOW_PAGES - 1) * PAGE_SIZE if pre is not None else None
        dws = mmio_context.switch_commands(w.engine, w.vgpu.mmio.read32, save_gm)
        w.mmio_save_for = pre.id if pre is not None else None
        self.engine_owner[w.engine] = w.vgpu.id
        self.gvt.counters["mmio_switches"] += 1
        mmio_context.handle_tlb_pending_event(w.vgpu, w.engine)  # switch_mmio ends with it, for next
        return b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws)

    def _save_switched_mmio(self, w: Workload) -> None:
        """The save half of the switch: the previous owner's registers from the save page into its vregs."""
        pre = self.gvt.vgpus.get(w.mmio_save_for) if w.mmio_save_for is not None else None
        sh = self.gvt.shadow.contexts.get((w.vgpu.id, w.engine))
        mem = self.gvt.shadow.mem
        if pre is None or sh is None or mem is None:
            return
        page = mem.read(sh.maddr(SHADOW_PAGES - 1), PAGE_SIZE)
        for offset, value in mmio_context.saved_values(w.engine, page):
            pre.mmio.write32(offset, value)

    # ---------------------------------------------------------------------------------- completion
    def on_gpu_event(self, engine: str, kind: str, tag: int, status: int = 0, busy_ns: int = 0,
                     reason: str = "", *, now: float) -> None:
        """A GPU_EVENT from pgpu for workload ``tag``, at time ``now`` (the policy's clock)."""
        self.now = max(self.now, now)
        w = self.inflight.get(tag)
        if w is None:
            self.gvt.counters["gpu_event_unknown_tag"] += 1
            return
        if kind == "user_interrupt":
            # The scanner records (and NOOPs) the MI_USER_INTERRUPTs of the ring and privileged batches;
            # what pgpu still reports comes from unscanned PPGTT batches or a PIPE_CONTROL / MI_FLUSH_DW
            # notify: recorded as the matching event (gvt/interrupt.c bits)
            w.pending_events.append(notify_event(w.engine, reason))
            return
        del self.inflight[tag]
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        w.busy_ns = busy_ns
        w.vgpu.figures.workload_done(busy_ns)
        # the engine was this vGPU's from dispatch to completion (what intel_gpu_top calls busy)
        w.vgpu.engine_busy_ns[w.engine] += int(max(0.0, self.now - w.dispatched_at) * 1e9) if w.dispatched_at else 0
        if w.status == "abandoned":  # its vGPU was reset or destroyed meanwhile: nothing to report
            self.gvt.counters["workloads_abandoned"] += 1
            if kind == "ctx_complete" and status == 0:
                self._save_switched_mmio(w)
        elif kind == "ctx_complete" and status == 0:
            self._save_switched_mmio(w)
            self._complete(w)
        else:
            self.engine_owner[w.engine] = None  # what the registers hold is unknown: restore, no save, next
            self._fail(w, reason or f"{kind} (status {status:#x})")
        # complete_current_workload asks for a pass when a switch waits; so does a current vGPU that ran
        # out of work (sim: the GPU does not sit idle until the next tick)
        cur = self.policy.current
        self.kick(schedule=self.policy.need_reschedule or cur is None or not self._has_work(cur))

    def submit_failed(self, tag: int, reason: str, now: float) -> None:
        """pgpu refused the ELSP_SUBMIT (or is gone) at time ``now``: the workload fails like a hang."""
        self.now = max(self.now, now)
        w = self.inflight.pop(tag, None)
        if w is None:
            return
        if self.current.get(w.engine) is w:
            self.current[w.engine] = None
        self.engine_owner[w.engine] = None
        self._fail(w, f"submit refused: {reason}")
        self.kick()

    def _complete(self, w: Workload) -> None:
        """complete_current_workload: write back the guest context, pending events, then schedule-out."""
        vgpu = w.vgpu
        w.status = "done"
        vgpu.workloads_ended["completed"] += 1
        if vgpu.id not in self.gvt.vgpus:  # destroyed meanwhile
            return
        gm = wl.guest_modified(w)
        if gm is not None:  # a self-modifying or racing guest: counted; the GPU ran the shadow copy
            self.gvt.counters["shadow_guest_modified"] += 1
            self.gvt.log.info("shadow_guest_modified", vgpu=vgpu.id, vm=vgpu.vm, engine=w.engine, gm=hex(gm))
        wl.update_guest_context(self.gvt, w)
        if w.pv:
            self._complete_pv(w)
            return
        for ev in w.pending_events:
            self.gvt.trigger_event(vgpu, ev)
        q = self.queues.get((vgpu.id, w.engine))
        nxt_same = same_context(q[0].desc, w.desc) if q else False
        vgpu.submission.execlists[w.engine].schedule_out(w.desc, nxt_same)
        self.gvt.counters["workloads_completed"] += 1

    def _complete_pv(self, w: Workload) -> None:
        """PV completion: done_seq in the slot, then the engine's user interrupt (always: it is how the
        guest learns of a PV completion), the scanner's recorded ones merged into it."""
        self.gvt.counters["workloads_completed"] += 1
        if w.pv_seq is None:
            return  # element 0 of a two-element submission: the slot completes with element 1
        pv.complete(w.vgpu, w.engine, w.pv_seq, ok=True)
        for ev in dict.fromkeys(w.pending_events + [f"{w.engine.upper()}_MI_USER_INTERRUPT"]):
            self.gvt.trigger_event(w.vgpu, ev)
        self.gvt.counters["workloads_completed_pv"] += 1

    def _fail(self, w: Workload, reason: str) -> None:
        """A failed workload emulates a vGPU hang: no schedule-out, no interrupt, the engine's queue of
        that vGPU dropped (gvt/handlers.c, gvt/execlist.c)."""
        w.status = "failed"
        w.vgpu.workloads_ended["failed"] += 1
        dropped = self.queues.pop((w.vgpu.id, w.engine), deque())
        self.gvt.counters["workloads_failed"] += 1
        self.gvt.counters["workloads_dropped"] += len(dropped)
        self.gvt.log.warning("workload_failed", vgpu=w.vgpu.id, vm=w.vgpu.vm, engine=w.engine, ctx=w.ctx_id,
                             reason=reason, dropped=len(dropped))

    # ------------------------------------------------------------------------------------- resets
    def reset_vgpu(self, vgpu: "Vgpu", engines: list[str]) -> None:
        """intel_vgpu_reset_submission / destroy: forget queued workloads of these engines; a running one
        finishes on the GPU but its completion is not reported to the guest."""
        for e in engines:
            self.queues.pop((vgpu.id, e), None)
            if self.engine_owner.get(e) == vgpu.id:
                self.engine_owner[e] = None  # its vregs are reset: the next dispatch restores them
            cur = self.current.get(e)
            if cur is not None and cur.vgpu is vgpu:
                cur.status = "abandoned"
        for w in self.inflight.values():
            if w.vgpu is vgpu and w.engine in engines:
                w.status = "abandoned"

    def clean_vgpu(self, vgpu: "Vgpu") -> list[int]:
        """vGPU destroyed: drop its queues and return its shadow frames to the pool."""
        self.reset_vgpu(vgpu, list(PHYSICAL_ENGINES))
        return self.gvt.shadow.clean_vgpu(vgpu)

    def frames_lost(self) -> None:
        """vhm restarted: the frames it gave us are gone; shadow contexts are rebuilt from a new pool."""
        self.gvt.shadow.frames_lost()
        for vgpu in self.gvt.vgpus.values():
            vgpu.frames_lost()

    def requeue_inflight(self, only: set[int] | None = None) -> int:
        """pgpu restarted: the new GPU ran nothing of what the old one had been given, so every workload that
        had not completed goes back to the head of its queue, to be submitted again once the physical GGTT is
        rewritten (the guest sees only latency). A re-run starts from the guest's context as it was at the
        first submission: the guest context is written back only at completion. The schedule-in CSB event
        was already emulated; the GPU's own user interrupts of the first run are dropped. ``only``: just
        these tags (submissions that never reached the GPU). Returns how many."""
        n = 0
        if only is None:
            self.reconciling.clear()
        else:
            self.reconciling -= only
        tags = [t for t in self.inflight if only is None or t in only]
        for tag in sorted(tags, reverse=True):  # newest first: appendleft keeps the queue's order
            w = self.inflight.pop(tag)
            if self.current.get(w.engine) is w:
                self.current[w.engine] = None
            self.engine_owner[w.engine] = None  # the new GPU's registers hold nobody's values
            if w.status == "abandoned":
                continue
            w.status = "requeued"
            w.emulate_schedule_in = False
            del w.pending_events[w.scan_events:]
            w.resubmits += 1
            self.queues.setdefault((w.vgpu.id, w.engine), deque()).appendleft(w)
            n += 1
        self.gvt.counters["workloads_resubmitted"] += n
        return n

    def reconcile_restored(self, active: Iterable[int], ended: Iterable[tuple[str, str, int, int, int, str]],
                           now: float) -> tuple[int, int]:
        """pgpu's answer (WORKLOAD_STATUS) about the workloads a restarted gvt found on the GPU in its saved
        state. ``ended``: ``(engine, kind, tag, status, busy_ns, reason)`` of each event of the ones that
        ended, in order: played as if they had just arrived (the completions the dead gvt never handled, or
        handled without recording it, reach the guest once: CSB entry, interrupt); one that already came to
        this gvt is not in flight any more and is skipped. ``active``: still on the GPU (their events come).
        The rest pgpu never saw: they go back to the head of their queue, to be submitted again. Returns
        (ended, resubmitted)."""
        self.now = max(self.now, now)
        waiting, self.reconciling = self.reconciling, set()
        done = 0
        for engine, kind, tag, status, busy_ns, reason in ended:
            if tag in waiting and tag in self.inflight:
                done += kind != "user_interrupt"
                self.on_gpu_event(engine, kind, tag, status, busy_ns, reason, now=now)
        ended_tags = {e[2] for e in ended}
        unseen = {t for t in waiting if t in self.inflight and t not in ended_tags} - set(active)
        n = self.requeue_inflight(unseen) if unseen else 0
        self.gvt.counters["workloads_reconciled_ended"] += done
        return done, n

    def engine_lost(self, reason: str, now: float) -> None:
        """pgpu went away: every workload on it fails (the guests see a hang and reset)."""
        for tag in list(self.inflight):
            self.submit_failed(tag, reason, now)
