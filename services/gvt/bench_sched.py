"""Fairness of the weighted time-slice policy (sched_policy.py), in simulated time.

Four always-busy vGPUs with the weights of GVTg_V5_8/4/2/1 (2, 4, 8, 16) each keep a workload queued on
two engines (rcs, bcs); workload lengths are drawn at random (0.1 to 1.0 ms of GPU time). The simulation
drives the policy exactly as the gvt Scheduler does: a pass on every 1 ms tick (balancing every 100 ms),
a pass when a guest queues a workload (here: right after each completion, the guest resubmits), dispatch
of the current vGPU's workloads to idle engines, switches only when no engine runs a workload. GPU time is
measured two ways, split into 1 s windows: *owned* time (the time a vGPU is the current one and owns every
engine: what the policy slices and charges, upstream's sched_time) and *engine* time (the GPU time of its
workloads). The figures are each window's shares and their deviation from weight / sum(weights).
Engine-time shares lean towards the heaviest vGPU: near the end of each 100 ms the lighter ones have used
their slice, it runs alone and switches no more, while a switch costs the outgoing vGPU the time its last
workload on the other engine still runs (switches only between workloads). Deterministic for a seed;
prints, never asserts.

    python -m gvtsim.services.gvt.bench_sched [--seconds 5] [--weights 2,4,8,16]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from .sched_policy import GVT_DEFAULT_TIME_SLICE, GVT_SCHED_VGPU_PRI_TIME, TimeSlicePolicy

WEIGHTS = (2, 4, 8, 16)  # GVTg_V5_8, _4, _2, _1 (gvt/gtt.c, gvt/aperture_gm.c)
ENGINES = ("rcs", "bcs")
WINDOW = 1.0  # s


def _split(busy: list[dict[int, float]], vid: int, start: float, end: float) -> None:
    """Add [start, end) of engine time to the windows it falls in."""
    while start < end:
        w = int(start // WINDOW)
        while len(busy) <= w:
            busy.append({})
        cut = min(end, (w + 1) * WINDOW)
        busy[w][vid] = busy[w].get(vid, 0.0) + cut - start
        start = cut


def run(seconds: float = 5.0, weights: Sequence[int] = WEIGHTS, seed: int = 1, min_ms: float = 0.1,
        max_ms: float = 1.0, engines: Sequence[str] = ENGINES) -> dict[str, Any]:
    """Simulate ``seconds`` of always-busy vGPUs; returns per-window shares and deviations (percent)."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    policy = TimeSlicePolicy()
    vids = list(range(1, len(weights) + 1))
    for vid, w in zip(vids, weights):
        # started before the measured run: the 2 s start-up priority (pri_sched) is over, steady state
        policy.start_schedule(vid, w, -GVT_SCHED_VGPU_PRI_TIME)
    running: dict[str, tuple[int, float, float] | None] = {e: None for e in engines}  # vid, start, end
    done: list[tuple[float, str]] = []  # completion heap: (time, engine)
    busy: list[dict[int, float]] = []
    counts = {vid: 0 for vid in vids}
    owned: list[dict[int, float]] = []  # sched_time (time as the current vGPU) at each window's end

    def always_busy(vid: int) -> bool:
        return True

    def schedule(now: float, timer: bool) -> None:
        policy.schedule(now, timer=timer, has_work=always_busy,
                        engines_idle=all(r is None for r in running.values()))

    def dispatch(now: float) -> None:
        vid = policy.dispatchable()
        if vid is None:
            return
        for e in engines:
            if running[e] is None:
                end = now + rng.uniform(min_ms, max_ms) * 1e-3
                running[e] = (vid, now, end)
                counts[vid] += 1
                heapq.heappush(done, (end, e))

    tick = GVT_DEFAULT_TIME_SLICE
    per_window = round(WINDOW / tick)
    k = 1  # the next tick is k x 1 ms (counted, so windows end exactly on a tick)
    schedule(0.0, timer=True)
    dispatch(0.0)
    while True:
        if done and done[0][0] < k * tick:
            now, e = heapq.heappop(done)
            r = running[e]
            assert r is not None
            running[e] = None
            _split(busy, r[0], r[1], r[2])
            schedule(now, timer=False)  # the guest queues its next workload at once: an event pass
        else:
            now = k * tick
            schedule(now, timer=True)
            if k % per_window == 0:  # the pass charged the current vGPU up to the window's end
                owned.append({vid: d.sched_time for vid, d in policy.data.items()})
            k += 1
            if now >= seconds - tick / 2:
                break
        dispatch(now)
    for r in running.values():  # work still on the engines at the end counts up to the end
        if r is not None:
            _split(busy, r[0], r[1], min(r[2], seconds))
    total_w = sum(weights)

    def shares(per_vid: dict[int, float]) -> tuple[dict[str, float], dict[str, float]]:
        total = sum(per_vid.values()) or 1.0
        sh = {vid: per_vid.get(vid, 0.0) / total for vid in vids}
        dev = {vid: 100.0 * (sh[vid] - w / total_w) / (w / total_w) for vid, w in zip(vids, weights)}
        return ({str(v): round(100.0 * x, 2) for v, x in sh.items()}, {str(v): round(d, 2) for v, d in dev.items()})

    windows: list[dict[str, Any]] = []
    for i, b in enumerate(busy[:int(seconds // WINDOW)]):
        gpu_shares, gpu_dev = shares(b)
        prev = owned[i - 1] if i else {}
        own_shares, own_dev = shares({v: t - prev.get(v, 0.0) for v, t in owned[i].items()} if i < len(owned) else {})
        windows.append({"window": i, "gpu_busy_pct": round(100.0 * sum(b.values()) / (WINDOW * len(engines)), 1),
                        "shares_pct": gpu_shares, "deviation_pct": gpu_dev,
                        "owned_shares_pct": own_shares, "owned_deviation_pct": own_dev})
    worst = max((abs(d) for w in windows for d in w["deviation_pct"].values()), default=0.0)
    worst_owned = max((abs(d) for w in windows for d in w["owned_deviation_pct"].values()), default=0.0)
    return {"weights": {str(v): w for v, w in zip(vids, weights)},
            "target_pct": {str(v): round(100.0 * w / total_w, 2) for v, w in zip(vids, weights)},
            "windows": windows, "max_abs_deviation_pct": round(worst, 2),
            "max_abs_owned_deviation_pct": round(worst_owned, 2), "workloads": counts,
            "switches": policy.switches, "balances": policy.balances, "sim_seconds": seconds,
            "wall_seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gvtsim.services.gvt.bench_sched", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="simulated seconds")
    p.add_argument("--weights", default=",".join(map(str, WEIGHTS)))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a = p.parse_args(argv)
    out = run(a.seconds, [int(w) for w in a.weights.split(",")], a.seed)
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    vids = list(out["weights"])
    print(f"weights {out['weights']}  target % {out['target_pct']}")
    for title, key in (("owned GPU time (time as the current vGPU)", "owned_"), ("engine busy time", "")):
        print(f"{title}: share % / deviation from target per 1 s window")
        print("window  busy%  " + "  ".join(f"v{v:<13}" for v in vids))
        for w in out["windows"]:
            cells = "  ".join(f"{w[key + 'shares_pct'][v]:6.2f}/{w[key + 'deviation_pct'][v]:+5.1f}%" for v in vids)
            print(f"{w['window']:>6}  {w['gpu_busy_pct']:5.1f}  {cells}")
    print(f"max |deviation|: owned {out['max_abs_owned_deviation_pct']}%, engine {out['max_abs_deviation_pct']}%  "
          f"switches {out['switches']}  workloads {out['workloads']}  wall {out['wall_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
