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
                rtt_us_by_type: {TYPE: {n, p50, p90, p99, mean}}, optional failures_by_reason}
  stats        (``--stats-interval``, cumulative) {submitted, verified, failed, ioreqs_by_type, rtt_us_by_type,
                workload_latency_ms: {n, p50, p90, p99, mean} of the interval, t}
  vm_reset     {vm, name, reason, t}      vm_recovered {vm, name, recovery_s, t}
Latency per ioreq type, best first: ``ioreq_hist_us`` {TYPE: [[upper_us, count], ...]} (merged exactly),
``rtt_us_by_type`` {TYPE: {n, p50, p90, p99}} (percentiles of several processes merged count-weighted, so
marked approximate), ``mmio_rtt_us`` (MMIO only, approximate).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

COUNTS = ("workloads_submitted", "workloads_verified", "workloads_failed")
PERCENTILES = ("p50", "p90", "p99")
FAILURES_LISTED = 5  # the guest's vm_done carries the first 5 failure reasons of a VM


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
        self.bins: Counter[int] = Counter()  # second of the run -> workloads verified in it (may be fractional)
        self.workload_latency: list[dict[str, Any]] = []  # per stats interval: n, p50, p90, p99 (ms)

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
            inc.vms_ready.add(str(ev.get("name", ev.get("vm"))))
            inc.vm_ready_times.append(t - self.t0)
        elif kind == "vm_done":
            inc.vm_done[str(ev.get("name", ev.get("vm")))] = ev
        elif kind in ("stats", "done"):
            inc.last = ev
            self._spread(inc, t - self.t0, inc.counts()["workloads_verified"])
            wl = ev.get("workload_latency_ms")
            if kind == "stats" and isinstance(wl, dict) and wl.get("n"):
                self.workload_latency.append({"t": round(t - self.t0, 3), "source": source, **wl})
            if kind == "done":
                inc.done, inc.ended = True, "done"
        elif kind == "vm_reset":
            self.resets.append({"source": source, "vm": ev.get("vm"), "reason": ev.get("reason", ""),
                                "t": t - self.t0})
        elif kind == "vm_recovered":
            self.recoveries.append({"source": source, "vm": ev.get("vm"),
                                    "seconds": ev.get("recovery_s", ev.get("seconds")), "t": t - self.t0})

    def _spread(self, inc: Incarnation, t: float, verified: int) -> None:
        """Spread the workloads verified since the previous report evenly over that interval's 1 s bins."""
        t_prev, v_prev = inc.mark
        inc.mark = (t, verified)
        delta, span = verified - v_prev, t - t_prev
        if delta <= 0:
            return
        if span <= 0:
            self.bins[int(t)] += delta
            return
        b = int(t_prev)
        while b < t:
            overlap = min(t, b + 1) - max(t_prev, b)
            self.bins[b] += delta * overlap / span
            b += 1

    def throughput(self) -> list[tuple[float, float]]:
        """(bin start, verified workloads per second) for every 1 s of the run so far."""
        last = max(self.bins, default=-1)
        return [(float(b), round(self.bins.get(b, 0.0), 2)) for b in range(0, last + 1)]

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

    def latency(self) -> dict[str, dict[str, Any]]:
        """Percentiles (microseconds) of ioreq round trips per ioreq type."""
        hists: dict[str, Counter[float]] = {}
        approx: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for inc in self.incarnations:
            last = inc.last
            if not last:
                continue
            if isinstance(last.get("ioreq_hist_us"), dict):
                for typ, buckets in last["ioreq_hist_us"].items():
                    h = hists.setdefault(typ, Counter())
                    for upper, count in buckets:
                        h[float(upper)] += int(count)
            elif isinstance(last.get("rtt_us_by_type") or last.get("ioreq_latency_us"), dict):
                for typ, d in (last.get("rtt_us_by_type") or last["ioreq_latency_us"]).items():
                    approx.setdefault(typ, []).append((int(d.get("n", d.get("count", 0))), d))
            elif isinstance(last.get("mmio_rtt_us"), dict):
                n = int((last.get("ioreqs_by_type") or {}).get("MMIO", 0))
                approx.setdefault("MMIO", []).append((n, last["mmio_rtt_us"]))
        out: dict[str, dict[str, Any]] = {}
        for typ, h in hists.items():
            out[typ] = {**hist_percentiles(h), "approximate": False}
        for typ, parts in approx.items():
            if typ in out:
                continue
            total = sum(n for n, _ in parts) or 1
            out[typ] = {"count": sum(n for n, _ in parts), "approximate": True,
                        **{p: round(sum(n * float(d.get(p, 0.0)) for n, d in parts) / total, 1)
                           for p in (*PERCENTILES, "mean") if any(p in d for _, d in parts)}}
        return out

    def ioreqs(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for inc in self.incarnations:
            out.update({k: int(v) for k, v in ((inc.last or {}).get("ioreqs_by_type") or {}).items()})
        return dict(out)

    def figures(self, now: float) -> dict[str, Any]:
        """Everything the report shows, as plain JSON-able data."""
        totals = self.totals()
        elapsed = max(now - self.t0, 1e-9)
        return {"seconds": round(elapsed, 3), "vms_requested": self.vms_requested,
                "vms_booted": len(set().union(*(i.vms_ready for i in self.incarnations))), **totals,
                "unexplained_by_source": self.unexplained_by_source(),
                "workloads_per_s": round(totals["workloads_verified"] / elapsed, 2),
                "failures_by_reason": self.failures(), "unexplained_failures": self.unexplained_failures(),
                "ioreqs_by_type": self.ioreqs(), "latency_us": self.latency(), "timeline": self.timeline,
                "throughput_per_s": self.throughput(),
                "vm_resets": self.resets, "vm_recoveries": self.recoveries,
                "workload_latency_ms": self.workload_latency,
                "killed_guests": [{"source": i.source, "pid": i.pid, "note": "in-flight workloads lost with the "
                                   "process; counted as neither verified nor failed"}
                                  for i in self.incarnations if i.ended == "killed"],
                "guest_processes": [{"source": i.source, "pid": i.pid, "ended": i.ended or "running",
                                     "vms": len(i.vms_ready), **i.counts()} for i in self.incarnations]}


def hist_percentiles(hist: Counter[float]) -> dict[str, Any]:
    """p50/p90/p99 (bucket upper bounds) and the count of a histogram {upper_us: count}."""
    total = sum(hist.values())
    out: dict[str, Any] = {"count": total}
    if not total:
        return out
    bounds = sorted(hist)
    for p, q in zip(PERCENTILES, (0.50, 0.90, 0.99)):
        seen = 0
        for b in bounds:
            seen += hist[b]
            if seen >= q * total:
                out[p] = b
                break
    return out


def _reason(failure: str) -> str:
    """A failure string without its per-workload detail, so equal causes group (``kind: reason``)."""
    return failure.split(" (", 1)[0] if failure else "unknown"


def verdict(fig: dict[str, Any], chaos: bool, kills: list[dict[str, Any]]) -> list[str]:
    """Problems that fail the run (empty: it passed).

    Without chaos every VM must boot and every workload verify; with chaos failures are allowed, but each
    must carry its reason, every kill must have been recovered from, and no guest may still be running.
    """
    problems = []
    if fig["vms_booted"] < fig["vms_requested"]:
        problems.append(f"only {fig['vms_booted']} of {fig['vms_requested']} VMs booted")
    if fig["workloads_verified"] == 0:
        problems.append("no workload verified")
    if not chaos and fig["workloads_failed"]:
        problems.append(f"{fig['workloads_failed']} workloads failed: {fig['failures_by_reason']}")
    if fig["unexplained_failures"]:
        problems.append(f"{fig['unexplained_failures']} failures carry no reason: {fig['unexplained_by_source']}")
    hung = [g["source"] for g in fig["guest_processes"] if g["ended"] not in ("done", "killed")]
    if hung:
        problems.append(f"guest processes that never reported done: {hung}")
    for k in kills:
        if not k.get("recovered"):
            problems.append(f"kill of {k.get('service')} {k.get('target')} not recovered: {k.get('error')}")
    return problems


def _stack(name: str) -> int | None:
    """The host stack of a launcher process name (``s3/gvt`` -> 3)."""
    head = name.split("/", 1)[0]
    return int(head[1:]) if head[:1] == "s" and head[1:].isdigit() else None


def attach_recovery(kills: list[dict[str, Any]], stats: LoadStats) -> None:
    """Fill each kill record's ``vms_reset`` and ``vms_recovered_s`` from the guests' events.

    A gvt or pgpu kill resets the VMs of its host stack: count their ``vm_reset`` events until the next
    kill, and time the last ``vm_recovered`` from the restart. A guest kill is recovered when the restarted
    process has booted its VMs again (its last ``vm_ready``).
    """
    for i, k in enumerate(kills):
        start = float(k.get("at", 0.0))
        end = float(kills[i + 1]["at"]) if i + 1 < len(kills) else float("inf")
        restart = start + float(k.get("restart_after") or 0.0)
        if k.get("service") == "guest":
            new = [inc for inc in stats.incarnations if inc.source == k.get("target") and inc.started >= start]
            if new and new[0].vm_ready_times:
                k["vms_recovered_s"] = round(max(new[0].vm_ready_times) - restart, 3)
            continue
        stack = _stack(str(k.get("target", "")))
        resets = [r for r in stats.resets if start <= r["t"] < end and _stack(r["source"]) == stack]
        recovered = [r for r in stats.recoveries if start <= r["t"] < end and _stack(r["source"]) == stack]
        k["vms_reset"] = len(resets)
        if recovered:
            k["vms_recovered_s"] = round(max(r["t"] for r in recovered) - restart, 3)
