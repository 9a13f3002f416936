"""The figures of a load run, from the guest processes' JSON events (pure: events in, figures out).

:class:`LoadStats` is fed every event a guest process prints on stdout, tagged with its source (the
launcher's process name) and the time it was read. A ``ready`` line opens a new incarnation of the source
(a guest restarted by chaos is a new process with new VMs); counts are cumulative per incarnation, so the
run's totals are the sum over incarnations of each one's last word: its ``done`` event, else its last
``stats`` event, else the sum of its ``vm_done`` events. An incarnation killed before ``done`` keeps only
what it had reported: a workload is never counted verified unless the guest said so.

Events and fields relied on (the guest process, services/guest; optional ones marked):
  ready        {pid}
  vm_ready     {vm, name}
  vm_done      {vm, name, state, submitted, verified, failed, failures: [reason, ...]}
  done         {workloads_submitted, workloads_verified, workloads_failed, ioreqs_by_type: {PIO: n, ...},
                ioreq_hist: {TYPE: encoded HdrHistogram}, optional failures_by_reason}
  stats        (``--stats-interval``, cumulative) {submitted, verified, failed, ioreqs_by_type, ioreq_hist,
                workload_hist (of the interval), verified_by_vm: {name: n}, t}
  vm_reset     {vm, name, reason, t}      vm_recovered {vm, name, recovery_s, t}
Latency per ioreq type comes from the guests' histograms (``ioreq_hist``, cumulative per incarnation),
added bucket by bucket over every incarnation (services/common/histo.py): percentiles of the sum, exact
to the histogram's 1 % resolution, never an average of percentiles.

Each kill's latency blip (:func:`attach_blips`) comes from the per-interval workload histograms
(``workload_hist``, the workloads a guest process verified since its previous ``stats`` event): every
interval is kept with its guest process's host stack and its span, and a kill's blip is the sum of the
intervals of its stack's guests that overlap its recovery window, against the sum of every interval that
overlaps no recovery window of its own stack.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..services.common.histo import Histogram, merge

COUNTS = ("workloads_submitted", "workloads_verified", "workloads_failed")
PERCENTILES = ("p50", "p90", "p99")
FAILURES_LISTED = 5  # the guest's vm_done carries the first 5 failure reasons of a VM


@dataclass(frozen=True)
class Interval:
    """The workloads one guest process verified between two of its ``stats`` events (seconds into the run)."""

    source: str
    stack: int | None
    start: float
    end: float
    n: int
    hist: str  # the encoded HdrHistogram of their latencies (microseconds); "" when none verified
    failed: int = 0  # workloads it reported failed in the interval


@dataclass
class Incarnation:
    """One run of one guest process (between its ready line and its end)."""

    source: str
    pid: int
    started: float
    last: dict[str, Any] = field(default_factory=dict)  # the latest stats/done event
    done: bool = False
    ended: str = ""  # "" running, "done", "killed", "terminated", "exited"
    vms_ready: set[str] = field(default_factory=set)  # VM names (a VM re-created after a reset keeps its name)
    vm_ready_times: list[float] = field(default_factory=list)  # seconds into the run
    mark: tuple[float, int] = (0.0, 0)  # (seconds into the run, verified) at the last stats/done event
    vm_done: dict[str, dict[str, Any]] = field(default_factory=dict)
    vm_ready_at: dict[str, float] = field(default_factory=dict)  # VM name -> first vm_ready (s into the run)
    verified_by_vm: dict[str, int] = field(default_factory=dict)  # VM name -> verified, as last reported

    def counts(self) -> dict[str, int]:
        """Cumulative workload counts as last reported."""
        if self.last:  # done says workloads_verified, stats says verified
            return {k: int(self.last.get(k, self.last.get(k.removeprefix("workloads_"), 0))) for k in COUNTS}
        return {"workloads_submitted": sum(int(v.get("submitted", 0)) for v in self.vm_done.values()),
                "workloads_verified": sum(int(v.get("verified", 0)) for v in self.vm_done.values()),
                "workloads_failed": sum(int(v.get("failed", 0)) for v in self.vm_done.values())}


class LoadStats:
    """Aggregates guest events into the load report's figures."""

    def __init__(self, t0: float, vms_requested: int) -> None:
        self.t0 = t0
        self.vms_requested = vms_requested
        self.incarnations: list[Incarnation] = []
        self.current: dict[str, Incarnation] = {}
        self.timeline: list[dict[str, float]] = []
        self.resets: list[dict[str, Any]] = []
        self.recoveries: list[dict[str, Any]] = []
        self.unparsed = 0
        self.bins: dict[int, float] = defaultdict(float)  # second of the run -> workloads verified in it
        self.stack_bins: dict[str, dict[int, float]] = {}  # the same per host stack
        self.workload_latency: list[dict[str, Any]] = []  # per stats interval: n, p50, p90, p99 (ms)
        self.workload_hist = Histogram()  # every verified workload's latency, over the whole run
        self.progress: dict[str, list[float]] = {}  # VM name -> times (s into the run) it verified more
        self.vm_source: dict[str, str] = {}  # VM name -> the guest process that runs it
        #: VM name -> when (s into the run) its run ended cleanly: vm_done with state done and no failure
        self.vm_ended_clean: dict[str, float] = {}
        self.intervals: list[Interval] = []  # every stats event's workload histogram, with its span and stack

    # ------------------------------------------------------------------------------------------- input
    def feed(self, source: str, ev: dict[str, Any], now: float) -> None:
        """One event printed by guest process ``source``, read at monotonic time ``now``."""
        kind = ev.get("event")
        inc = self.current.get(source)
        if kind == "ready":
            if inc is not None and not inc.ended:
                inc.ended = "killed"  # a new incarnation means the old one is gone
            inc = Incarnation(source=source, pid=int(ev.get("pid", 0)), started=now - self.t0)
            inc.mark = (now - self.t0, 0)
            self.incarnations.append(inc)
            self.current[source] = inc
            return
        if inc is None:
            self.unparsed += 1
            return
        t = float(ev.get("t", now))
        if kind == "vm_ready":
            name = str(ev.get("name", ev.get("vm")))
            inc.vms_ready.add(name)
            inc.vm_ready_times.append(t - self.t0)
            inc.vm_ready_at.setdefault(name, t - self.t0)
        elif kind == "vm_done":
            inc.vm_done[str(ev.get("name", ev.get("vm")))] = ev
            if ev.get("state") == "done" and not int(ev.get("failed", 0) or 0):
                self.vm_ended_clean[str(ev.get("name", ev.get("vm")))] = t - self.t0
        elif kind in ("stats", "done"):
            failed_before = inc.counts()["workloads_failed"]
            inc.last = ev
            since = inc.mark[0]  # the previous stats event of this incarnation (or its ready line)
            self._spread(inc, t - self.t0, inc.counts()["workloads_verified"])
            wl = ev.get("workload_latency_ms")
            if kind == "stats" and isinstance(wl, dict) and wl.get("n"):
                self.workload_latency.append({"t": round(t - self.t0, 3), "source": source, **wl})
            if kind == "stats" and isinstance(ev.get("workload_hist"), str):
                try:
                    hist = Histogram.decode(ev["workload_hist"])
                except ValueError:
                    self.unparsed += 1
                else:
                    self.workload_hist.add(hist)
                    # kept encoded (a decoded HdrHistogram is tens of KB), empty ones too: a stall shows
                    self.intervals.append(Interval(source, _stack(source), since, t - self.t0, hist.count,
                                                   ev["workload_hist"] if hist.count else "",
                                                   max(0, inc.counts()["workloads_failed"] - failed_before)))
            by_vm = ev.get("verified_by_vm")
            if isinstance(by_vm, dict):
                for name, n in by_vm.items():
                    self.vm_source[str(name)] = source
                    if int(n) > inc.verified_by_vm.get(str(name), 0):
                        self.progress.setdefault(str(name), []).append(t - self.t0)
                    inc.verified_by_vm[str(name)] = int(n)
            if kind == "done":
                inc.done, inc.ended = True, "done"
        elif kind == "vm_reset":
            self.resets.append({"source": source, "vm": ev.get("vm"), "name": ev.get("name"),
                                "reason": ev.get("reason", ""),
                                "t": t - self.t0})
        elif kind == "vm_recovered":
            self.recoveries.append({"source": source, "vm": ev.get("vm"), "name": ev.get("name"),
                                    "seconds": ev.get("recovery_s", ev.get("seconds")), "t": t - self.t0})

    def _spread(self, inc: Incarnation, t: float, verified: int) -> None:
        """Spread the workloads verified since the previous report evenly over that interval's 1 s bins."""
        t_prev, v_prev = inc.mark
        inc.mark = (t, verified)
        delta, span = verified - v_prev, t - t_prev
        if delta <= 0:
            return
        stack = self.stack_bins.setdefault(str(_stack(inc.source)), defaultdict(float))
        if span <= 0:
            self.bins[int(t)] += delta
            stack[int(t)] += delta
            return
        b = int(t_prev)
        while b < t:
            overlap = min(t, b + 1) - max(t_prev, b)
            self.bins[b] += delta * overlap / span
            stack[b] += delta * overlap / span
            b += 1

    def throughput(self) -> list[tuple[float, float]]:
        """(bin start, verified workloads per second) for every 1 s of the run so far."""
        last = max(self.bins, default=-1)
        return [(float(b), round(self.bins.get(b, 0.0), 2)) for b in range(0, last + 1)]

    def throughput_by_stack(self) -> dict[str, list[tuple[float, float]]]:
        """Per host stack: (bin start, verified workloads per second)."""
        last = max(self.bins, default=-1)
        return {k: [(float(b), round(c.get(b, 0.0), 2)) for b in range(0, last + 1)]
                for k, c in sorted(self.stack_bins.items())}

    def ended(self, source: str, how: str) -> None:
        """The current incarnation of ``source`` ended without ``done`` (killed / terminated / exited)."""
        inc = self.current.get(source)
        if inc is not None and not inc.ended:
            inc.ended = how

    def sample(self, now: float) -> None:
        """Record the running totals at ``now`` (one point of the throughput-over-time curve)."""
        totals = self.totals()
        self.timeline.append({"t": round(now - self.t0, 3), "verified": totals["workloads_verified"],
                              "failed": totals["workloads_failed"], "vms_running": self.vms_running()})

    # ------------------------------------------------------------------------------------------ output
    def vms_running(self) -> int:
        return sum(len(i.vms_ready) - len(i.vm_done) for i in self.incarnations if not i.ended)

    def progress_line(self, now: float, vms: int) -> str:
        """The once-a-second progress line of a load: time since its start, VMs running, workloads."""
        tot = self.totals()
        return (f"{now - self.t0:6.1f}s  VMs running {self.vms_running()}/{vms}  verified "
                f"{tot['workloads_verified']}  failed {tot['workloads_failed']}")

    def totals(self) -> dict[str, int]:
        out = Counter[str]()
        for inc in self.incarnations:
            out.update(inc.counts())
        return {k: out[k] for k in COUNTS}

    def failures(self) -> dict[str, int]:
        """Failure reasons and their counts; workloads a killed guest had in flight are listed as such."""
        reasons: Counter[str] = Counter()
        for inc in self.incarnations:
            by_reason = inc.last.get("failures_by_reason") if inc.last else None
            if isinstance(by_reason, dict):
                reasons.update({str(k): int(v) for k, v in by_reason.items()})
            else:
                for vm in inc.vm_done.values():
                    reasons.update(_reason(f) for f in vm.get("failures", []))
        return dict(reasons)

    def unexplained_by_source(self) -> dict[str, int]:
        """Failed workloads without a reason, per guest incarnation (``source#pid``): counted failures beyond
        the reasons given, e.g. those a killed guest had reported only in ``stats`` events without
        ``failures_by_reason``."""
        out = {}
        for inc in self.incarnations:
            by_reason = inc.last.get("failures_by_reason") if inc.last else None
            if isinstance(by_reason, dict):
                listed = sum(int(v) for v in by_reason.values())
            else:
                listed = 0
                for vm in inc.vm_done.values():
                    reasons, failed = vm.get("failures", []), int(vm.get("failed", 0))
                    # vm_done lists at most FAILURES_LISTED reasons: a full list stands for all of them
                    listed += failed if len(reasons) >= FAILURES_LISTED else min(len(reasons), failed)
            missing = inc.counts()["workloads_failed"] - listed
            if missing > 0:
                out[f"{inc.source}#{inc.pid}" + (" (killed)" if inc.ended == "killed" else "")] = missing
        return out

    def unexplained_failures(self) -> int:
        """Failed workloads without a reason, over the whole run."""
        return sum(self.unexplained_by_source().values())

    def histograms(self) -> dict[str, Histogram]:
        """ioreq round-trip histograms per ioreq type, summed over every incarnation's last report."""
        parts: dict[str, list[str]] = {}
        for inc in self.incarnations:
            hist = (inc.last or {}).get("ioreq_hist")
            if isinstance(hist, dict):
                for typ, enc in hist.items():
                    if isinstance(enc, str):
                        parts.setdefault(str(typ), []).append(enc)
        out = {}
        for typ, encs in parts.items():
            try:
                out[typ] = merge(encs)
            except ValueError:
                self.unparsed += 1
        return out

    def latency(self) -> dict[str, dict[str, Any]]:
        """Percentiles (microseconds) of ioreq round trips per ioreq type, from the merged histograms."""
        return {typ: {"count": h.count, **{k: v for k, v in h.summary().items() if k != "n"}}
                for typ, h in sorted(self.histograms().items()) if h.count}

    def latency_cdf(self, points: int = 200) -> dict[str, list[tuple[float, float]]]:
        """Per ioreq type, (round trip us, fraction of ioreqs at most that) for a CDF plot (thinned)."""
        out = {}
        for typ, h in sorted(self.histograms().items()):
            total, seen, curve = h.count, 0, []
            if not total:
                continue
            for value, count in h.buckets():
                seen += count
                curve.append((value, round(seen / total, 5)))
            step = max(1, len(curve) // points)
            out[typ] = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
        return out

    def ioreqs(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for inc in self.incarnations:
            out.update({k: int(v) for k, v in ((inc.last or {}).get("ioreqs_by_type") or {}).items()})
        return dict(out)

    def all_up_seconds(self) -> float:
        """Seconds of the run during which every requested VM was running at once (from the timeline)."""
        total = 0.0
        for a, b in zip(self.timeline, self.timeline[1:]):
            if a["vms_running"] >= self.vms_requested:
                total += b["t"] - a["t"]
        return round(total, 2)

    def vms_verifying(self) -> int:
        """VMs (by name, over every incarnation) that verified at least one workload."""
        names: set[str] = set()
        for inc in self.incarnations:
            names |= {n for n, ev in inc.vm_done.items() if int(ev.get("verified", 0)) > 0}
            names |= {n for n, v in inc.verified_by_vm.items() if v > 0}
        return len(names)

    def figures(self, now: float) -> dict[str, Any]:
        """Everything the report shows, as plain JSON-able data."""
        totals = self.totals()
        elapsed = max(now - self.t0, 1e-9)
        return {"seconds": round(elapsed, 3), "vms_requested": self.vms_requested,
                "vms_booted": len(set().union(*(i.vms_ready for i in self.incarnations))),
                "vms_verifying": self.vms_verifying(), **totals,
                "unexplained_by_source": self.unexplained_by_source(),
                "workloads_per_s": round(totals["workloads_verified"] / elapsed, 2),
                "failures_by_reason": self.failures(), "unexplained_failures": self.unexplained_failures(),
                # context_complete events no request waited for (a workload completed twice, or after its
                # guest declared it hung), as each guest incarnation last reported them
                "unexpected_completions": sum(int(i.last.get("unexpected_completions", 0))
                                              for i in self.incarnations),
                "ioreqs_by_type": self.ioreqs(), "latency_us": self.latency(), "latency_cdf": self.latency_cdf(),
                "workload_latency_total_ms": self.workload_hist.summary(scale=1000.0),
                "all_vms_up_s": self.all_up_seconds(), "timeline": self.timeline,
                "throughput_per_s": self.throughput(), "throughput_by_stack": self.throughput_by_stack(),
                "vm_resets": self.resets, "vm_recoveries": self.recoveries,
                "workload_latency_ms": self.workload_latency,
                "killed_guests": [{"source": i.source, "pid": i.pid, "note": "in-flight workloads lost with the "
                                   "process; counted as neither verified nor failed"}
                                  for i in self.incarnations if i.ended == "killed"],
                "guest_processes": [{"source": i.source, "pid": i.pid, "ended": i.ended or "running",
                                     "vms": len(i.vms_ready), **i.counts()} for i in self.incarnations]}


def _reason(failure: str) -> str:
    """A failure string without its per-workload detail, so equal causes group (``kind: reason``)."""
    return failure.split(" (", 1)[0] if failure else "unknown"


def verdict(fig: dict[str, Any], chaos: bool, kills: list[dict[str, Any]], bound: float = 5.0) -> list[str]:
    """Problems that fail the run (empty: it passed).

    Without chaos every VM must boot and every workload verify; with chaos failures are allowed, but each
    must carry its reason, every kill must have been recovered from (the stack serving again within
    ``bound`` seconds), every VM it took down must have come back, within ``bound`` of its own outage, and
    no guest may still be running.
    """
    problems = []
    if fig["vms_booted"] < fig["vms_requested"]:
        problems.append(f"only {fig['vms_booted']} of {fig['vms_requested']} VMs booted")
    if fig["workloads_verified"] == 0:
        problems.append("no workload verified")
    elif not chaos and fig.get("vms_verifying", fig["vms_booted"]) < fig["vms_booted"]:
        problems.append(f"{fig['vms_booted'] - fig['vms_verifying']} of {fig['vms_booted']} booted VMs verified no "
                        "workload")
    if not chaos and fig["workloads_failed"]:
        problems.append(f"{fig['workloads_failed']} workloads failed without any fault injected: "
                        f"{fig['failures_by_reason']}")
    twice = fig.get("unexpected_completions", 0)
    failed_hung = any("hang" in reason for reason in fig.get("failures_by_reason", {}))
    if twice and not failed_hung:  # with no hang declared, each is a workload completed twice
        problems.append(f"{twice} workload completion(s) arrived with no request waiting: completed twice")
    if fig["unexplained_failures"]:
        problems.append(f"{fig['unexplained_failures']} failures carry no reason: {fig['unexplained_by_source']}")
    lost = fig.get("sessions_lost") or []
    if not chaos and lost:
        problems.append(f"{len(lost)} session(s) declared lost with no fault injected: "
                        + "; ".join(f"{x['service']} lost {x['peer']} ({x['reason']})" for x in lost[:5]))
    hung = [g["source"] for g in fig["guest_processes"] if g["ended"] not in ("done", "killed")]
    if hung:
        problems.append(f"guest processes that never reported done: {hung}")
    for k in kills:
        what = f"the kill of {k.get('service')} {k.get('target')} at {k.get('at')} s"
        if not k.get("recovered"):
            problems.append(f"{what} was not recovered from: {k.get('error') or 'no reason given'}")
        elif k.get("serving_s") is not None and float(k["serving_s"]) > bound:
            problems.append(f"after {what} the stack served again only {k['serving_s']} s after the restart "
                            f"(bound {bound:g} s)")
        lost = k.get("vms_not_back") or []
        if lost:
            problems.append(f"{len(lost)} VM(s) never came back after {what}: {', '.join(lost[:8])}"
                            + (" ..." if len(lost) > 8 else ""))
        slow = {vm: s for vm, s in (k.get("vm_recovery_s") or {}).items() if s > bound}
        if slow:
            worst = max(slow, key=lambda vm: slow[vm])
            problems.append(f"{len(slow)} VM(s) took longer than {bound:g} s to come back after {what} "
                            f"(slowest: {worst}, {slow[worst]} s from its own outage)")
    return problems


def explain(fig: dict[str, Any], chaos: bool, kills: list[dict[str, Any]], problems: list[str]) -> list[str]:
    """The verdict in words: why it passed or failed, and what was allowed on the way."""
    words = [f"FAIL: {len(problems)} problem(s), listed below." if problems else "PASS: every check held."]
    words.append(f"{fig['vms_booted']} of {fig['vms_requested']} VMs booted; all of them were running at once "
                 f"for {fig.get('all_vms_up_s', 0)} s of the {fig['seconds']} s run.")
    if fig["workloads_failed"]:
        if chaos:
            words.append(f"{fig['workloads_failed']} workloads failed; that is allowed under chaos because every "
                         "one of them names its reason (the faults injected), listed under failures.")
        else:
            words.append(f"{fig['workloads_failed']} workloads failed with no fault injected: that fails the run.")
    else:
        words.append(f"All {fig['workloads_verified']} workloads that ran were verified.")
    if "unexpected_completions" in fig:
        words.append(f"{fig['unexpected_completions']} workload completions arrived with no request waiting "
                     "(a workload completed twice, or after its guest declared it hung).")
    if "vms_verifying" in fig:
        words.append(f"{fig['vms_verifying']} of {fig['vms_booted']} booted VMs verified at least one workload.")
    for k in kills:
        back = k.get("vm_recovery_s") or {}
        lost = k.get("vms_not_back") or []
        words.append(f"Kill of {k.get('service')} {k.get('target')} at {k.get('at')} s: "
                     + ("stack serving again " + f"{k.get('serving_s')} s after the restart" if k.get("recovered")
                        else "NOT recovered")
                     + (f"; {len(back)} VM(s) affected, back after at most {max(back.values())} s of their own "
                        "outage" if back else "; no VM was affected")
                     + (f"; {len(lost)} never came back" if lost else "")
                     + (f"; {blip_words(k['blip'])}" if k.get("blip") else "") + ".")
    return words


def _stack(name: str) -> int | None:
    """The host stack of a launcher process name (``s3/gvt`` -> 3)."""
    head = name.split("/", 1)[0]
    return int(head[1:]) if head[:1] == "s" and head[1:].isdigit() else None


def attach_recovery(kills: list[dict[str, Any]], stats: LoadStats, bound: float = 5.0) -> None:
    """Fill each kill record with the VMs it took down and how long each was out, from its own outage.

    Kills of different host stacks may overlap: a kill's outage lasts until the next kill of its own stack.
    A guest kill takes down the VMs of the killed process: each is back at its first ``vm_ready`` in a
    later incarnation of that process (measured from the kill). A gvt or pgpu kill takes down the VMs of its
    host stack that reset (``vm_reset`` before the next kill): each is back at its ``vm_recovered`` (the
    guest measures from its own reset). Fields: ``vm_recovery_s`` {VM name: seconds}, ``vms_not_back``
    [names] (VMs down that never came back, or that never verified a workload again), ``vms_reset``
    (distinct VMs), ``vms_recovered_s`` (the slowest VM's recovery).
    """
    for k in kills:
        start = float(k.get("at", 0.0))
        # until the next kill of the same stack: kills of other stacks may overlap this one's recovery
        end = min((float(o.get("at", 0.0)) for o in kills if o is not k and _kill_stack(o) == _kill_stack(k)
                   and float(o.get("at", 0.0)) > start), default=float("inf"))
        back: dict[str, float] = {}
        down: set[str] = set()
        if k.get("service") == "guest":
            source = k.get("target")
            old = [inc for inc in stats.incarnations if inc.source == source and inc.started < start]
            down = set(old[-1].vms_ready) - set(old[-1].vm_done) if old else set()
            for inc in stats.incarnations:
                if inc.source == source and inc.started >= start:
                    for name in down:
                        if name in inc.vm_ready_at and name not in back:
                            back[name] = round(inc.vm_ready_at[name] - start, 3)
        else:
            stack = _stack(str(k.get("target", "")))
            resets = [r for r in stats.resets if start <= r["t"] < end and _stack(r["source"]) == stack]
            names = {(r["source"], str(r.get("name") or r.get("vm"))) for r in resets}
            down = {n for _, n in names}
            # VMs of the stack that were making progress before the kill are down too if they never do again
            # (a VM whose vGPU the restarted gvt still lists may hang without any reset), unless the VM's run
            # ended cleanly after the kill: a kill in the last seconds of a run can find a VM whose last
            # workload was already verified, and it then reports done with nothing failed
            down |= {n for n, times in stats.progress.items() if _stack(stats.vm_source.get(n, "")) == stack
                     and any(t < start for t in times) and not any(t > start for t in times)
                     and not stats.vm_ended_clean.get(n, -1.0) >= start}
            for r in stats.recoveries:
                name = str(r.get("name") or r.get("vm"))
                if r["t"] >= start and _stack(r["source"]) == stack and name in down and name not in back:
                    back[name] = round(float(r["seconds"]) if r.get("seconds") is not None else r["t"] - start, 3)
        # a VM is back only if it verified a workload again after the kill (when the guests report progress)
        if stats.progress:
            for name in list(back):
                if not any(t > start for t in stats.progress.get(name, [])):
                    back.pop(name)
        k["vms_reset"] = len(down)
        k["vm_recovery_s"] = dict(sorted(back.items()))
        k["vms_not_back"] = sorted(down - set(back))
        k["vms_recovered_s"] = max(back.values()) if back else None


#: seconds after its stack serves again that a kill's blip window still covers: the workloads the outage held
#: up complete then, and a guest reports them at its next stats event (gvtsim load asks for one a second)
BLIP_TAIL_S = 1.0


def recovery_window(k: dict[str, Any], restart_after: float | None, budget: float = 5.0,
                    tail: float = BLIP_TAIL_S) -> tuple[float, float]:
    """A kill's recovery window (seconds into the run): from the kill to its stack serving again (``serving_at``,
    else the kill + restart delay + ``serving_s``, else the kill + restart delay + ``budget``), plus ``tail``."""
    start = float(k.get("at", 0.0))
    if k.get("serving_at") is not None:
        end = float(k["serving_at"])
    elif k.get("serving_s") is not None:
        end = start + float(k.get("restart_after") or 0.0) + float(k["serving_s"])
    else:
        end = start + float(k.get("restart_after", restart_after) or 0.0) + budget
    return start, end + tail


def _kill_stack(k: dict[str, Any]) -> int | None:
    return k["stack"] if isinstance(k.get("stack"), int) else _stack(str(k.get("target", "")))


def attach_blips(kills: list[dict[str, Any]], stats: LoadStats, restart_after: float | None,
                 budget: float = 5.0, since: float = 0.0, tail: float = BLIP_TAIL_S) -> dict[str, Any]:
    """Fill each kill record with ``blip``: the latency of the workloads its stack's guests verified during
    its recovery window (:func:`recovery_window`), against the run's latency outside recovery windows.

    The guests report workload latencies per stats interval, so the window is widened to the intervals
    that overlap it: an interval (a, b] of a guest process of the killed stack counts when b > window start
    and a < window end. The baseline is every interval from ``since`` (the end of the ramp-up) on that
    overlaps no recovery window of its own stack. Percentiles are of the summed histograms (exact to their
    1 % resolution). A workload that failed (its VM reset) has no latency: ``failed`` counts those of the
    window, and ``stall_s`` is the longest part of the window in which no guest of the stack verified a
    workload (not covered by an interval that verified one). ``blip``: {p50_ms, p99_ms, max_ms, workloads,
    failed, stall_s, intervals, from_s, to_s (the span the intervals cover), window_s [start, end],
    baseline_p50_ms, baseline_p99_ms, p99_ratio}; p50_ms and p99_ms are None when no workload of the
    stack completed in the window. Returns the baseline summary.
    """
    windows = [(_kill_stack(k), *recovery_window(k, restart_after, budget, tail)) for k in kills
               if k.get("service") != "?"]

    def in_window(iv: Interval, stack: int | None, a: float, b: float) -> bool:
        return iv.stack == stack and iv.end > a and iv.start < b

    quiet = [iv for iv in stats.intervals if iv.end > since and not any(in_window(iv, *w) for w in windows)]
    base = _sum_ms(quiet)
    for k in kills:
        if k.get("service") == "?":
            continue
        stack = _kill_stack(k)
        a, b = recovery_window(k, restart_after, budget, tail)
        hit = [iv for iv in stats.intervals if in_window(iv, stack, a, b)]
        blip = _sum_ms(hit)
        p99 = blip.get("p99")
        k["blip"] = {"stack": stack, "window_s": [round(a, 3), round(b, 3)],
                     "from_s": round(min((iv.start for iv in hit), default=a), 3),
                     "to_s": round(max((iv.end for iv in hit), default=b), 3),
                     "intervals": len(hit), "workloads": blip.get("n", 0),
                     "failed": sum(iv.failed for iv in hit), "stall_s": _stall(hit, a, b),
                     "p50_ms": blip.get("p50"), "p99_ms": p99, "max_ms": blip.get("max"),
                     "baseline_p50_ms": base.get("p50"), "baseline_p99_ms": base.get("p99"),
                     "p99_ratio": round(p99 / base["p99"], 2) if p99 is not None and base.get("p99") else None}
    return base


def _stall(intervals: list[Interval], a: float, b: float) -> float:
    """The longest part of [a, b] covered by no interval that verified a workload (seconds)."""
    busy = sorted((max(a, iv.start), min(b, iv.end)) for iv in intervals if iv.n and iv.end > a and iv.start < b)
    longest, at = 0.0, a
    for lo, hi in busy:
        longest = max(longest, lo - at)
        at = max(at, hi)
    return round(max(longest, b - at), 3)


def _sum_ms(intervals: list[Interval]) -> dict[str, Any]:
    """{n, p50, p90, p99, max, mean} in milliseconds of the intervals' histograms added together."""
    h = Histogram()
    for iv in intervals:
        if not iv.hist:
            continue
        try:
            h.add(Histogram.decode(iv.hist))
        except ValueError:
            continue
    return h.summary(scale=1000.0)


def blip_words(b: dict[str, Any] | None) -> str:
    """One kill's blip in words (for the verdict lines and the summary)."""
    if not b:
        return ""
    span = f"{b['from_s']}-{b['to_s']} s"
    also = (f"; {b['failed']} failed" if b.get("failed") else "") \
        + (f"; none verified for {b['stall_s']} s of it" if b.get("stall_s") else "")
    if b.get("p99_ms") is None:
        return f"latency blip: no workload of stack {b['stack']} completed in {span}{also}"
    vs = f", vs p99 {b['baseline_p99_ms']} ms outside recovery windows" if b.get("baseline_p99_ms") is not None \
        else ""
    ratio = f" (x{b['p99_ratio']})" if b.get("p99_ratio") is not None else ""
    return (f"latency blip: p99 {b['p99_ms']} ms, p50 {b['p50_ms']} ms over {b['workloads']} workloads of stack "
            f"{b['stack']} in {span}{vs}{ratio}{also}")


#: sessions that come and go by design (health probes, gvtsim ctl): their end is never a lost session
TRANSIENT_ROLES = frozenset({"probe", "ctl"})


def lost_sessions(log_path: str, since: float | None = None, until: float | None = None) -> list[dict[str, Any]]:
    """The sessions a service declared lost (its ``peer_lost`` / ``server_lost`` log lines) between ``since``
    and ``until`` (Unix time; None: no bound), except those a peer ended on purpose (BYE) and those of
    transient roles. A load with no fault injected must have none."""
    out: list[dict[str, Any]] = []
    try:
        f = open(log_path, errors="replace")
    except FileNotFoundError:
        return out
    with f:
        for line in f:
            if '"peer_lost"' not in line and '"server_lost"' not in line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") not in ("peer_lost", "server_lost") or ev.get("peer_role") in TRANSIENT_ROLES:
                continue
            reason = str(ev.get("reason", ""))
            if reason.startswith("bye") or "said BYE" in reason:
                continue
            if since is not None or until is not None:
                try:
                    t = datetime.fromisoformat(str(ev.get("timestamp"))).timestamp()
                except ValueError:
                    continue
                if (since is not None and t < since) or (until is not None and t > until):
                    continue
            out.append(ev)
    return out
