"""The load report: ``report.json`` (every raw figure), PNG plots and a short ``summary.md``.

Plots (matplotlib, Agg backend: no display needed):
  throughput.png   verified workloads per second over the run, per host stack, and VMs up over time
                   (kills marked)
  latency.png      ioreq round-trip CDF per ioreq type, log-scale time axis (from the merged histograms)
  workloads.png    workloads verified and failed; failures by reason (only when there are failures)
  recovery.png     recovery per kill: restart -> ready, -> stack serving, and each VM's own outage
  blip.png         latency blip per kill: p50/p99 of the killed stack's workloads in its recovery window,
                   against the run's p99 outside recovery windows
summary.md says the verdict in words first, then the figures.
"""

from __future__ import annotations

import json
import os
import textwrap
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .loadstats import BLIP_TAIL_S  # noqa: E402


def throughput_series(timeline: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(t, verified workloads per second over the preceding interval) from cumulative samples."""
    out = []
    for a, b in zip(timeline, timeline[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            out.append((b["t"], (b["verified"] - a["verified"]) / dt))
    return out


def _save(f: Any, path: str) -> None:
    f.tight_layout()
    f.savefig(path, dpi=100, bbox_inches="tight")  # tight: long labels are never cut off
    plt.close(f)


def _throughput(fig: dict[str, Any], kills: list[dict[str, Any]], path: str) -> None:
    series = fig.get("throughput_per_s") or throughput_series(fig["timeline"])
    per_stack = fig.get("throughput_by_stack") or {}
    f, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    if series:
        ax.step([t for t, _ in series], [v for _, v in series], where="post", lw=1.4, color="black",
                label="all stacks")
    for stack, pts in sorted(per_stack.items()):
        if len(per_stack) > 1 and pts:
            ax.step([t for t, _ in pts], [v for _, v in pts], where="post", lw=0.9, alpha=0.8, label=f"stack {stack}")
    if fig.get("ramp_s"):
        for a in (ax, ax2):
            a.axvline(fig["ramp_s"], color="grey", alpha=0.6, ls=":")
        ax.text(fig["ramp_s"], 0, " all VMs started", color="grey", fontsize=7, va="bottom")
    for k in kills:
        for a in (ax, ax2):
            a.axvline(k["at"], color="red", alpha=0.5, ls="--")
        ax.text(k["at"], ax.get_ylim()[1] * 0.95, f" kill {k['service']}", color="red", fontsize=7, va="top")
    ax.set_ylabel("verified workloads / s")
    ax.set_title(f"throughput: {fig['workloads_verified']} verified in {fig['seconds']} s, {fig['vms_booted']} VMs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    tl = fig.get("timeline") or []
    ax2.step([p["t"] for p in tl], [p["vms_running"] for p in tl], where="post", color="tab:blue")
    ax2.axhline(fig["vms_requested"], color="tab:green", ls="--", alpha=0.6, label=f"{fig['vms_requested']} asked")
    ax2.set_ylabel("VMs up")
    ax2.set_xlabel("seconds into the run")
    ax2.legend(fontsize=7, loc="lower right")
    ax2.grid(alpha=0.3)
    _save(f, path)


def _latency(fig: dict[str, Any], path: str) -> None:
    cdf = fig.get("latency_cdf") or {}
    f, ax = plt.subplots(figsize=(7, 4))
    for typ, pts in sorted(cdf.items()):
        if pts:
            lat = fig["latency_us"].get(typ, {})
            ax.step([v for v, _ in pts], [c for _, c in pts], where="post",
                    label=f"{typ}: n={lat.get('count', '?')}, p50 {lat.get('p50', '?')} µs, "
                          f"p99 {lat.get('p99', '?')} µs")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("ioreq round trip, µs (log scale)")
    ax.set_ylabel("fraction of ioreqs at most this")
    ax.set_title("ioreq latency CDF per type (merged histograms of every guest)")
    ax.grid(alpha=0.3, which="both")
    if cdf:
        ax.legend(fontsize=7, loc="lower right")
    _save(f, path)


def _workloads(fig: dict[str, Any], path: str) -> None:
    reasons = sorted(fig["failures_by_reason"].items(), key=lambda kv: -kv[1])[:8]
    if reasons:  # the failures panel only when there are failures
        f, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.5), gridspec_kw={"width_ratios": [1, 2]})
    else:
        f, a1 = plt.subplots(figsize=(4, 3.5))
    a1.bar(["verified", "failed"], [fig["workloads_verified"], fig["workloads_failed"]], color=["tab:green", "tab:red"])
    a1.set_title("workloads")
    if reasons:
        a2.barh([textwrap.shorten(r, 70) for r, _ in reasons], [n for _, n in reasons], color="tab:red")
        a2.invert_yaxis()
        a2.set_title("failures by reason")
        a2.tick_params(axis="y", labelsize=7)
    _save(f, path)


def _recovery(kills: list[dict[str, Any]], path: str, bound: float = 5.0) -> None:
    f, ax = plt.subplots(figsize=(9, 3.8))
    labels = [f"{k['service']} {k.get('target', '')}\n@{k['at']:.0f}s" for k in kills]
    for i, (key, label) in enumerate((("ready_s", "service ready"), ("serving_s", "stack serving"))):
        ax.bar([x + i * 0.27 for x in range(len(kills))], [k.get(key) or 0 for k in kills], 0.27, label=label)
    for x, k in enumerate(kills):  # every VM's own recovery, the ones that never came back at the top in red
        vals = list((k.get("vm_recovery_s") or {}).values())
        ax.scatter([x + 2 * 0.27] * len(vals), vals, s=12, color="tab:green", zorder=3,
                   label="each VM's outage" if x == 0 else None)
        lost = k.get("vms_not_back") or []
        if lost:
            ax.text(x + 2 * 0.27, bound * 1.05, f"{len(lost)} VM(s)\nnever back", color="red", fontsize=7,
                    ha="center", va="bottom")
    ax.axhline(bound, color="red", ls="--", alpha=0.5, label=f"{bound:g} s bound")
    ax.set_xticks([x + 0.27 for x in range(len(kills))], labels, fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("recovery per kill (service and stack: from the restart; VMs: from their own outage)")
    ax.legend(fontsize=7)
    _save(f, path)


def _blips(kills: list[dict[str, Any]], path: str) -> None:
    """Each kill's latency blip: p50 and p99 of its stack's workloads in its recovery window, and the run's
    p99 outside recovery windows."""
    f, ax = plt.subplots(figsize=(9, 3.8))
    labels = [f"{k['service']} {k.get('target', '')}\n@{k['at']:.0f}s" for k in kills]
    for i, (key, label) in enumerate((("p50_ms", "p50 in the window"), ("p99_ms", "p99 in the window"))):
        ax.bar([x + i * 0.4 for x in range(len(kills))], [(k.get("blip") or {}).get(key) or 0 for k in kills], 0.4,
               label=label)
    base = next(((k.get("blip") or {}).get("baseline_p99_ms") for k in kills if (k.get("blip") or {})
                 .get("baseline_p99_ms") is not None), None)
    if base is not None:
        ax.axhline(base, color="black", ls="--", alpha=0.6, label=f"run's p99 outside recovery windows ({base} ms)")
    ax.set_xticks([x + 0.2 for x in range(len(kills))], labels, fontsize=7)
    ax.set_ylabel("workload latency, ms")
    ax.set_title("latency blip per kill (the killed stack's VMs, from the kill to the stack serving again)")
    ax.legend(fontsize=7)
    _save(f, path)


def summary_md(data: dict[str, Any]) -> str:
    """A human summary of ``report.json``'s data."""
    fig, kills = data["figures"], data["kills"]
    lines = [f"# gvtsim load: {'PASS' if not data['problems'] else 'FAIL'}", ""]
    lines += [f"{w}" for w in data.get("verdict", [])] + [""]
    lines += [
             f"- {fig['vms_booted']}/{fig['vms_requested']} VMs booted over {len(fig['guest_processes'])} guest "
             f"process incarnations, {fig['seconds']} s",
             f"- workloads: {fig['workloads_verified']} verified, {fig['workloads_failed']} failed, "
             f"{fig['workloads_per_s']} verified/s",
             f"- ioreqs: {fig['ioreqs_by_type']}", "",
             "ioreq round trips, percentiles of every guest's histograms added together (HdrHistogram, 1 % "
             "resolution):", "", "| ioreq type | count | p50 µs | p90 µs | p99 µs | max µs |",
             "|---|---|---|---|---|---|"]
    for typ, d in sorted(fig["latency_us"].items()):
        lines.append(f"| {typ} | {d.get('count', '')} | {d.get('p50', '')} | {d.get('p90', '')} | "
                     f"{d.get('p99', '')} | {d.get('max', '')} |")
    if fig["failures_by_reason"]:
        lines += ["", "Failures by reason:", ""] + [f"- {n} x {r}" for r, n in fig["failures_by_reason"].items()]
    if kills:
        def cell(v: Any) -> str:
            return "-" if v is None else str(v)

        def blip(k: dict[str, Any], key: str) -> str:
            return cell((k.get("blip") or {}).get(key))

        lines += ["", "| t (s) | kill | target | ready (s) | stack serving (s) | VMs down | slowest VM back (s) "
                  "| VMs never back | blip p50 (ms) | blip p99 (ms) | x run's p99 | workloads in window | failed in "
                  "window | none verified for (s) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {k['at']} | {k['service']} | {k['target']} | {cell(k.get('ready_s'))} | "
                  f"{cell(k.get('serving_s'))} | {k.get('vms_reset', 0)} | {cell(k.get('vms_recovered_s'))} | "
                  f"{len(k.get('vms_not_back') or [])} | {blip(k, 'p50_ms')} | {blip(k, 'p99_ms')} | "
                  f"{blip(k, 'p99_ratio')} | {blip(k, 'workloads')} | {blip(k, 'failed')} | {blip(k, 'stall_s')} |"
                  for k in kills]
        base = next((k["blip"] for k in kills if k.get("blip")), None)
        if base is not None:
            lines += ["", "Latency blip of a kill: the workload latency (submit to verified completion) of the VMs "
                      "of the killed host stack during its recovery window, from the kill to the stack serving "
                      f"again plus {BLIP_TAIL_S:g} s (the workloads the outage held up complete then). The guests "
                      "report their latency histograms once per stats interval (1 s), so the window is widened to "
                      "the intervals that overlap it; percentiles are of the summed histograms. A workload that "
                      "failed has no latency: the table counts those, and the longest part of the window in which "
                      "no guest of the stack verified a workload. Compared with "
                      f"the run's p99 outside every recovery window: p50 {cell(base.get('baseline_p50_ms'))} ms, "
                      f"p99 {cell(base.get('baseline_p99_ms'))} ms."]
    if data["problems"]:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in data["problems"]]
    return "\n".join(lines) + "\n"


def write_report(directory: str, data: dict[str, Any]) -> list[str]:
    """Write report.json, summary.md and the PNG plots into ``directory``. Returns the files written."""
    os.makedirs(directory, exist_ok=True)
    files = []
    path = os.path.join(directory, "report.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    files.append(path)
    path = os.path.join(directory, "summary.md")
    with open(path, "w") as f:
        f.write(summary_md(data))
    files.append(path)
    fig, kills = data["figures"], data["kills"]
    plots = [("throughput.png", lambda p: _throughput(fig, kills, p)), ("latency.png", lambda p: _latency(fig, p)),
             ("workloads.png", lambda p: _workloads(fig, p))]
    if kills:
        plots.append(("recovery.png", lambda p: _recovery(kills, p)))
    if any(k.get("blip") for k in kills):
        plots.append(("blip.png", lambda p: _blips(kills, p)))
    for name, draw in plots:
        path = os.path.join(directory, name)
        draw(path)
        files.append(path)
    return files
