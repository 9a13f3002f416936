"""Prometheus metrics of every service: an HTTP ``/metrics`` endpoint (prometheus_client).

Nothing is counted twice: at each scrape the collector takes one snapshot of what the service already
keeps (its counters and its STATUS ``info``), on the service's own event loop so that the figures are
consistent, and turns it into metric families. Labels are bounded: role, counter name, ioreq kind, VM id
(at most the VMs of one host stack), engine (RCS/BCS/VCS/VECS), vGPU type.

Histograms come from the services' HdrHistograms (services/common/histo.py), re-binned at scrape time into
fixed Prometheus buckets, so Prometheus can add them across processes and take quantiles of the sum with
``histogram_quantile``.

The endpoint is off unless ``--metrics HOST:PORT`` (``GVTSIM_METRICS``) is given; port 0 picks a free port,
and the ready line says which (``"metrics": "http://HOST:PORT/metrics"``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, \
    HistogramMetricFamily, Metric

from .histo import Histogram

#: Prometheus bucket bounds (seconds) for latencies: 10 us .. 10 s, roughly 1-2.5-5 per decade.
BUCKETS_S = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
             2.5, 5.0, 10.0)
NS = 1e-9


def hist_family(name: str, doc: str, labels: list[str], series: list[tuple[list[str], str]]) -> HistogramMetricFamily:
    """A Prometheus histogram from encoded HdrHistograms (microseconds), one per label set."""
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, enc in series:
        try:
            h = Histogram.decode(enc)
        except ValueError:
            continue
        pts = h.buckets()
        buckets, i, seen = [], 0, 0
        for le in BUCKETS_S:
            while i < len(pts) and pts[i][0] <= le * 1e6:
                seen += pts[i][1]
                i += 1
            buckets.append((repr(le), float(seen)))
        buckets.append(("+Inf", float(h.count)))
        # the sum from the one-pass summary (HdrHistogram's get_mean_value walks every count again in Python)
        total_s = float(h.summary()["mean"]) * h.count / 1e6 if h.count else 0.0
        fam.add_metric(values, buckets, total_s)
    return fam


def families(role: str, ready: bool, counters: dict[str, int], info: dict[str, Any]) -> list[Metric]:
    """The metric families of one snapshot of a service (pure: testable without a server)."""
    out: list[Metric] = []
    g = GaugeMetricFamily("gvtsim_ready", "1 when the service answers STATUS ready", labels=["role"])
    g.add_metric([role], 1.0 if ready else 0.0)
    out.append(g)
    c = CounterMetricFamily("gvtsim_events", "the service's event counters (errors, refusals, ...) by name",
                            labels=["role", "counter"])
    for k, v in sorted(counters.items()):
        c.add_metric([role, str(k)], float(v))
    out.append(c)
    builder = _BY_ROLE.get(role)
    if builder is not None:
        out += builder(info)
    return out


def _vhm(info: dict[str, Any]) -> list[Metric]:
    vms = info.get("vms", {})
    g = GaugeMetricFamily("gvtsim_vhm_vms", "VMs vhm holds")
    g.add_metric([], float(vms.get("count", 0) if isinstance(vms, dict) else len(vms)))
    frames = GaugeMetricFamily("gvtsim_vhm_free_frames", "free machine frames (4 KiB)")
    frames.add_metric([], float(info.get("free_frames", 0)))
    kinds = CounterMetricFamily("gvtsim_vhm_ioreqs", "ioreqs vhm handled, by ioreq kind", labels=["kind"])
    for k, n in sorted((info.get("ioreqs") or {}).items()):
        kinds.add_metric([k.upper()], float(n))
    per_vm = CounterMetricFamily("gvtsim_vm_ioreqs", "ioreqs of each VM by kind", labels=["vm", "kind"])
    for vm, by_kind in sorted((info.get("ioreqs_by_vm") or {}).items()):
        for k, n in sorted(by_kind.items()):
            per_vm.add_metric([vm, k], float(n))
    hist = hist_family("gvtsim_vhm_ioreq_service_seconds", "ioreq dispatch to completion by the device model",
                       ["kind"], [([k], enc) for k, enc in sorted((info.get("ioreq_hist") or {}).items())])
    return [g, frames, kinds, per_vm, hist]


def _gvt(info: dict[str, Any]) -> list[Metric]:
    vgpus = info.get("vgpus", [])
    g = GaugeMetricFamily("gvtsim_gvt_vgpus", "vGPUs gvt holds")
    g.add_metric([], float(len(vgpus)))
    avail = GaugeMetricFamily("gvtsim_gvt_type_available", "more vGPUs of each type that fit", labels=["type"])
    for t in info.get("types", []):
        avail.add_metric([str(t.get("name"))], float(t.get("avail", 0)))
    traps = CounterMetricFamily("gvtsim_vgpu_traps", "trapped accesses of each VM by kind", labels=["vm", "kind"])
    for vm, by_kind in sorted((info.get("traps_by_vm") or {}).items()):
        for k, n in sorted(by_kind.items()):
            traps.add_metric([vm, k], float(n))
    busy = CounterMetricFamily("gvtsim_vgpu_engine_busy_seconds",
                               "time each engine held the VM's workloads (dispatch to completion)",
                               labels=["vm", "engine"])
    for vm, by_engine in sorted((info.get("engines_by_vm") or {}).items()):
        for e, ns in sorted(by_engine.items()):
            busy.add_metric([vm, e], float(ns) * NS)
    wl = CounterMetricFamily("gvtsim_vgpu_workloads", "workloads of each VM that ended, by result",
                             labels=["vm", "result"])
    for vm, by_result in sorted((info.get("workloads_by_vm") or {}).items()):
        for r, n in sorted(by_result.items()):
            wl.add_metric([vm, r], float(n))
    fs = GaugeMetricFamily("gvtsim_vgpu_failsafe", "1 when the VM's vGPU is in failsafe", labels=["vm"])
    pv = GaugeMetricFamily("gvtsim_vgpu_pv_enabled", "PV features the VM enabled (0: trap path)", labels=["vm"])
    failsafe, pv_by_vm = info.get("failsafe") or {}, info.get("pv_by_vm") or {}
    for v in vgpus:
        vm = str(v.get("vm"))
        fs.add_metric([vm], 1.0 if vm in failsafe else 0.0)
        pv.add_metric([vm], float((pv_by_vm.get(vm) or {}).get("enabled", 0)))
    sched = CounterMetricFamily("gvtsim_vgpu_sched_seconds", "time the scheduler gave each vGPU", labels=["vgpu"])
    weight = GaugeMetricFamily("gvtsim_vgpu_weight", "the vGPU type's scheduling weight", labels=["vgpu"])
    for vg, d in sorted(((info.get("scheduler") or {}).get("policy") or {}).get("vgpus", {}).items()):
        sched.add_metric([vg], float(d.get("sched_ms", 0.0)) / 1e3)
        weight.add_metric([vg], float(d.get("weight", 0)))
    return [g, avail, traps, busy, wl, fs, pv, sched, weight]


def _pgpu(info: dict[str, Any]) -> list[Metric]:
    busy = CounterMetricFamily("gvtsim_engine_busy_seconds", "time each physical engine ran contexts",
                               labels=["engine"])
    subs = CounterMetricFamily("gvtsim_engine_submissions", "ELSP submissions per engine", labels=["engine"])
    resets = CounterMetricFamily("gvtsim_engine_resets", "engine resets (hang watchdog)", labels=["engine"])
    queued = GaugeMetricFamily("gvtsim_engine_queued", "contexts queued or running per engine", labels=["engine"])
    for e, d in sorted((info.get("engines") or {}).items()):
        busy.add_metric([e], float(d.get("busy_ns", 0)) * NS)
        subs.add_metric([e], float(d.get("submissions", 0)))
        resets.add_metric([e], float(d.get("resets", 0)))
        queued.add_metric([e], float(d.get("queued", 0)))
    ev = CounterMetricFamily("gvtsim_gpu_events", "GPU events sent to gvt by kind", labels=["kind"])
    for k, n in sorted((info.get("events") or {}).items()):
        ev.add_metric([k], float(n))
    return [busy, subs, resets, queued, ev]


def _guest(info: dict[str, Any]) -> list[Metric]:
    vms = info.get("vms", [])
    g = GaugeMetricFamily("gvtsim_guest_vms", "VMs of this guest process by state", labels=["state"])
    states: dict[str, int] = {}
    for v in vms:
        states[str(v.get("state"))] = states.get(str(v.get("state")), 0) + 1
    for st, n in sorted(states.items()):
        g.add_metric([st], float(n))
    wl = CounterMetricFamily("gvtsim_guest_workloads", "workloads of this process's VMs by result",
                             labels=["result"])
    for key in ("submitted", "verified", "failed"):
        wl.add_metric([key], float(sum(int(v.get(key, 0)) for v in vms)))
    hist = hist_family("gvtsim_guest_ioreq_rtt_seconds", "trapped access round trip as the vCPU sees it",
                       ["kind"], [([k], enc) for k, enc in sorted((info.get("ioreq_hist") or {}).items())])
    return [g, wl, hist]


_BY_ROLE = {"vhm": _vhm, "gvt": _gvt, "pgpu": _pgpu, "guest": _guest}


class ServiceCollector:
    """Collects one service's metrics at scrape time (called on the HTTP server's thread)."""

    def __init__(self, svc: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.svc = svc
        self.loop = loop

    async def _snapshot(self) -> tuple[bool, dict[str, int], dict[str, Any]]:
        ready, info = self.svc.status()
        return ready, dict(self.svc.counters), info

    def collect(self) -> Iterator[Metric]:
        try:
            ready, counters, info = asyncio.run_coroutine_threadsafe(self._snapshot(), self.loop).result(2.0)
        except Exception:  # the loop is busy or stopping: report the service as not ready, nothing else
            ready, counters, info = False, {}, {}
        yield from families(self.svc.role, ready, counters, info)


class MetricsServer:
    """The ``/metrics`` HTTP endpoint of one service (a prometheus_client server on its own thread)."""

    def __init__(self, svc: Any, address: str) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.svc = svc
        self.httpd: Any = None
        self.url = ""

    def start(self) -> str:
        """Bind and serve. Returns the URL. Raises OSError when the address cannot be bound."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ServiceCollector(self.svc, asyncio.get_running_loop()))  # type: ignore[arg-type]
        self.httpd, _thread = start_http_server(self.port, self.host, registry)
        port = self.httpd.server_address[1]
        self.url = f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{port}/metrics"
        return self.url

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def parse_address(text: str) -> str | None:
    """``HOST:PORT`` (or ``PORT``) for the metrics endpoint; None for off ("" / "off" / "0" alone)."""
    text = text.strip()
    if text in ("", "off", "none"):
        return None
    if ":" not in text:
        text = f"127.0.0.1:{text}"
    host, _, port = text.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics wants HOST:PORT, got {text!r}")
    return f"{host}:{port}"
