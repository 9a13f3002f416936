"""The load report: ``report.json`` (every raw figure), PNG plots and a short ``summary.md``.

Plots (matplotlib, Agg backend: no display needed):
  throughput.png   verified workloads per second over the run (with kills marked)
  latency.png      ioreq round-trip p50 / p90 / p99 per ioreq type
  workloads.png    workloads verified and failed, and failures by reason
  recovery.png     recovery time per kill (restart -> ready, -> stack serving, -> VMs recovered)
"""

from __future__ import annotations

import json
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def throughput_series(timeline: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(t, verified workloads per second over the preceding interval) from cumulative samples."""
    out = []
    for a, b in zip(timeline, timeline[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            out.append((b["t"], (b["verified"] - a["verified"]) / dt))
    return out


def _throughput(fig: dict[str, Any], kills: list[dict[str, Any]], path: str) -> None:
    series = fig.get("throughput_per_s") or throughput_series(fig["timeline"])
    f, ax = plt.subplots(figsize=(8, 3.5))
    if series:
        ax.step([t for t, _ in series], [v for _, v in series], where="post", lw=1.2, label="verified workloads/s")
    if fig.get("ramp_s"):
        ax.axvline(fig["ramp_s"], color="grey", alpha=0.6, ls=":")
        ax.text(fig["ramp_s"], 0, " all VMs up", color="grey", fontsize=7, va="bottom")
    for k in kills:
        ax.axvline(k["at"], color="red", alpha=0.5, ls="--")
        ax.text(k["at"], ax.get_ylim()[1] * 0.95, f" kill {k['service']}", color="red", fontsize=7, va="top")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("workloads / s")
    ax.set_title(f"throughput: {fig['workloads_verified']} verified in {fig['seconds']} s, {fig['vms_booted']} VMs")
    ax.grid(alpha=0.3)
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)


def _latency(fig: dict[str, Any], path: str) -> None:
    lat = fig["latency_us"]
    types = sorted(lat)
    f, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.25
    for i, p in enumerate(("p50", "p90", "p99")):
        ax.bar([x + i * width for x in range(len(types))], [lat[t].get(p, 0) for t in types], width, label=p)
    ax.set_xticks([x + width for x in range(len(types))],
                  [f"{t}{' ~' if lat[t].get('approximate') else ''}" for t in types])
    ax.set_ylabel("round trip, µs")
    ax.set_title("ioreq latency per type (~: approximate merge)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)


def _workloads(fig: dict[str, Any], path: str) -> None:
    f, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [1, 2]})
    a1.bar(["verified", "failed"], [fig["workloads_verified"], fig["workloads_failed"]], color=["tab:green", "tab:red"])
    a1.set_title("workloads")
    reasons = sorted(fig["failures_by_reason"].items(), key=lambda kv: -kv[1])[:8]
    a2.barh([r[:50] for r, _ in reasons] or ["(none)"], [n for _, n in reasons] or [0], color="tab:red")
    a2.set_title("failures by reason")
    a2.tick_params(axis="y", labelsize=7)
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)


def _recovery(kills: list[dict[str, Any]], path: str) -> None:
    f, ax = plt.subplots(figsize=(8, 3.5))
    labels = [f"{k['service']}@{k['at']:.0f}s" for k in kills]
    for i, (key, label) in enumerate((("ready_s", "ready"), ("serving_s", "stack serving"),
                                      ("vms_recovered_s", "VMs recovered"))):
        ax.bar([x + i * 0.27 for x in range(len(kills))], [k.get(key) or 0 for k in kills], 0.27, label=label)
    ax.axhline(5.0, color="red", ls="--", alpha=0.5, label="5 s bound")
    ax.set_xticks([x + 0.27 for x in range(len(kills))], labels, fontsize=7)
    ax.set_ylabel("seconds after restart")
    ax.set_title("recovery per kill")
    ax.legend(fontsize=7)
    f.tight_layout()
    f.savefig(path, dpi=100)
    plt.close(f)


def summary_md(data: dict[str, Any]) -> str:
    """A human summary of ``report.json``'s data."""
    fig, kills = data["figures"], data["kills"]
    lines = [f"# gvtsim load: {'PASS' if not data['problems'] else 'FAIL'}", "",
             f"- {fig['vms_booted']}/{fig['vms_requested']} VMs booted over {len(fig['guest_processes'])} guest "
             f"process incarnations, {fig['seconds']} s",
             f"- workloads: {fig['workloads_verified']} verified, {fig['workloads_failed']} failed, "
             f"{fig['workloads_per_s']} verified/s",
             f"- ioreqs: {fig['ioreqs_by_type']}", "", "| ioreq type | count | p50 µs | p90 µs | p99 µs |",
             "|---|---|---|---|---|"]
    for typ, d in sorted(fig["latency_us"].items()):
        lines.append(f"| {typ}{' (approx.)' if d.get('approximate') else ''} | {d.get('count', '')} | "
                     f"{d.get('p50', '')} | {d.get('p90', '')} | {d.get('p99', '')} |")
    if fig["failures_by_reason"]:
        lines += ["", "Failures by reason:", ""] + [f"- {n} x {r}" for r, n in fig["failures_by_reason"].items()]
    if kills:
        lines += ["", "| t (s) | kill | target | ready (s) | stack serving (s) | VMs reset | VMs recovered (s) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {k['at']} | {k['service']} | {k['target']} | {k['ready_s']} | {k['serving_s']} | "
                  f"{k['vms_reset']} | {k['vms_recovered_s']} |" for k in kills]
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
    for name, draw in plots:
        path = os.path.join(directory, name)
        draw(path)
        files.append(path)
    return files
