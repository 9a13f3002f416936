"""What the CLI prints is true and has no Python ``None`` in it: the text of ``gvtsim status`` with gvt down,
``gvtsim chaos``'s and ``gvtsim load``'s kill lines, and the load verdict's "all VMs running at once" figure."""

from __future__ import annotations

import os

from gvtsim.orchestration import chaos, load, status
from gvtsim.orchestration.chaos import KillRecord
from gvtsim.orchestration.loadstats import LoadStats, explain

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status(gvt: dict | None) -> dict:
    vhm = {"info": {"vms": {"count": 1, "list": [{"vm": 3, "name": "vm-a", "state": "running", "owner": "s0-guest"}]}}}
    stack = status.stack_summary(vhm, gvt)
    return {"services": [{"name": "s0/gvt", "pid": 42, "health": "exited", "restarts": 0, "endpoint": None}],
            "stacks": {"0": stack}, "healthy": False, "problems": stack["problems"],
            "totals": {"vms": stack["vms"], "vgpus": stack["vgpus"]}}


def test_status_text_with_gvt_down_says_the_slots_are_unknown_not_none() -> None:
    text = status.render(_status(None))
    assert "free vGPU slots unknown (gvt down)" in text and "gvt did not answer" in text
    assert "None" not in text and "NOT healthy: 1 VM, 0 vGPUs" in text
    # with gvt up, the figure is there
    gvt = {"info": {"vgpus": [], "types": [{"name": "GVTg_V5_8", "avail": 7}]}}
    up = status.render(_status(gvt))
    assert "slots free" in up and "None" not in up and "runs without a vGPU" in up


def test_chaos_and_load_kill_lines_never_print_none() -> None:
    restarted = KillRecord(service="gvt", target="s0/gvt", at=1.5, old_pid=10, new_pid=11, restart_after=0.5,
                           ready_s=0.4, serving_s=0.9, recovered=True)
    assert "ready in 0.4 s, stack serving in 0.9 s" in chaos._line(restarted)
    assert "stack serving in 0.9 s" in load.kill_progress(restarted)
    not_restarted = KillRecord(service="pgpu", target="s0/pgpu", old_pid=12, recovered=True)
    failed = KillRecord(service="guest", target="s0/guest", old_pid=13, restart_after=0.5, new_pid=14)
    failed_why = KillRecord(service="vhm", target="s0/vhm", old_pid=15, restart_after=0.5, new_pid=16,
                            error="s0/vhm exited during start-up")
    for r in (restarted, not_restarted, failed, failed_why):
        for line in (chaos._line(r), load.kill_progress(r)):
            assert "None" not in line and "Nones" not in line, line
    assert load.kill_progress(not_restarted).endswith("recovered (not restarted)")
    assert load.kill_progress(failed).endswith("NOT recovered: no reason given")
    assert "FAILED: s0/vhm exited during start-up" in chaos._line(failed_why)


def test_the_verdict_says_how_long_every_vm_was_running_at_once() -> None:
    s = LoadStats(100.0, vms_requested=2)
    for t, running in ((0.0, 0), (1.0, 1), (2.0, 2), (5.0, 2), (6.5, 1), (7.0, 0)):
        s.timeline.append({"t": t, "verified": 0, "failed": 0, "vms_running": running})
    assert s.all_up_seconds() == 4.5  # both VMs from 2.0 s to 6.5 s
    fig = s.figures(107.0)
    words = explain(fig, False, [], [])
    assert "all of them were running at once for 4.5 s of the 7.0 s run" in words[1]


def test_readme_shows_every_subcommand() -> None:
    from gvtsim.orchestration.cli import COMMANDS

    text = open(os.path.join(ROOT, "README.md")).read()
    missing = [c for c in COMMANDS if f"gvtsim {c}" not in text]
    assert not missing, f"README.md has no example of: {', '.join(missing)}"


def test_the_recovery_plot_and_summary_show_the_vms_that_never_came_back(monkeypatch) -> None:
    from gvtsim.orchestration import report

    saved: list = []
    monkeypatch.setattr(report, "_save", lambda f, path: saved.append(f))
    kills = [{"service": "pgpu", "target": "s0/pgpu", "at": 10.0, "ready_s": 0.3, "serving_s": 0.8, "vms_reset": 3,
              "vms_recovered_s": 1.2, "vm_recovery_s": {"x": 1.2}, "vms_not_back": ["y", "z"]}]
    report._recovery(kills, "recovery.png")
    [f] = saved
    assert [t.get_text() for t in f.axes[0].texts] == ["2 VM(s)\nnever back"]
    report.plt.close(f)
    s = LoadStats(100.0, vms_requested=3)
    data = {"figures": s.figures(101.0), "kills": kills, "problems": ["2 VM(s) never came back"], "verdict": []}
    assert "| 10.0 | pgpu | s0/pgpu | 0.3 | 0.8 | 3 | 1.2 | 2 |" in report.summary_md(data)
