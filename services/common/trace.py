"""ioreq-path tracing: timestamped events from every process, for one Chrome trace-event / Perfetto timeline.

Off by default, and then each hook costs one attribute test (``if trace.on``). ``--trace DIR``
(``GVTSIM_TRACE``) turns it on: the process appends one JSON trace event per line to ``DIR/ROLE-PID.jsonl``
(one file per process, so writers never interleave), and ``gvtsim trace`` merges the files into one
``{"traceEvents": [...]}`` document that chrome://tracing, https://ui.perfetto.dev and catapult's
trace2html open. Events use the Trace Event Format ("X" complete events with ``dur``, "i" instants,
"M" metadata naming each process); ``ts`` is the wall clock in microseconds so that the processes line up.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import IO, Any

on = False  # read by every hook: False keeps tracing off at the cost of one test
_out: IO[str] | None = None
_pid = 0
_lock = threading.Lock()


def now_us() -> float:
    """The wall clock in microseconds (the ``ts`` of every event)."""
    return time.time_ns() / 1000.0


def enable(directory: str, role: str, ident: str) -> str:
    """Start recording into ``directory`` (created if needed). Returns this process's file."""
    global on, _out, _pid
    os.makedirs(directory, exist_ok=True)
    _pid = os.getpid()
    path = os.path.join(directory, f"{role}-{_pid}.jsonl")
    _out = open(path, "a", buffering=1)
    on = True
    _write({"name": "process_name", "ph": "M", "pid": _pid, "tid": 0, "args": {"name": f"{role} {ident}"}})
    _write({"name": "process_labels", "ph": "M", "pid": _pid, "tid": 0, "args": {"labels": role}})
    return path


def disable() -> None:
    """Stop recording and close the file."""
    global on, _out
    on = False
    if _out is not None:
        _out.close()
        _out = None


def _write(ev: dict[str, Any]) -> None:
    if _out is None:
        return
    line = json.dumps(ev, separators=(",", ":"), default=str)
    with _lock:
        _out.write(line + "\n")


def complete(name: str, cat: str, ts_us: float, dur_us: float, tid: int = 0, **args: Any) -> None:
    """A span: ``name`` began at ``ts_us`` (see :func:`now_us`) and lasted ``dur_us``."""
    if on:
        _write({"name": name, "cat": cat, "ph": "X", "ts": round(ts_us, 3), "dur": round(max(0.0, dur_us), 3),
                "pid": _pid, "tid": tid, "args": args})


def instant(name: str, cat: str, tid: int = 0, **args: Any) -> None:
    """A point in time: ``name`` happened now."""
    if on:
        _write({"name": name, "cat": cat, "ph": "i", "s": "t", "ts": round(now_us(), 3), "pid": _pid, "tid": tid,
                "args": args})


def merge(directory: str) -> dict[str, Any]:
    """Every process's events in ``directory`` as one trace document, sorted by time (metadata first)."""
    events: list[dict[str, Any]] = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".jsonl"):
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if isinstance(ev, dict):
                    events.append(ev)
    events.sort(key=lambda e: (e.get("ph") != "M", e.get("ts", 0)))
    return {"traceEvents": events, "displayTimeUnit": "ms"}
