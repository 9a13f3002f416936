"""The one process manager: every gvtsim process the tools start is started, signalled and checked here.

Each process runs in its own process group (so a signal reaches the service and anything it started) and is
known by its pid and kernel start time (so a recycled pid is never signalled): :func:`start_group`,
:func:`signal_pid_group`, :func:`group_members`, :func:`proc_stat`. Two kinds of user sit on top:

* the launcher (``gvtsim up``, ``load``, ``chaos``, ``restart``; launcher.py) starts detached processes whose
  stdout and stderr go to files in the run directory, recorded in state.json, read back by offset;
* :class:`ServiceProc` (HostStack, the demo, the service tests) starts an attached child and reads JSON
  events from its stdout on a thread (the ``ready`` line first), and kills the whole group on teardown.
  Waiting is always on an event with a timeout, never a sleep.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

Event = dict[str, Any]

#: processes this process started, by pid: reaped when they are signalled or polled
children: dict[int, subprocess.Popen[Any]] = {}
DEAD = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def start_group(argv: list[str], env: dict[str, str], stdout: Any, stderr: Any, text: bool = False,
                stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[Any]:
    """Start ``argv`` in a new session (its own process group), remembered in :data:`children`."""
    child = subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=stdin, text=text, env=env,
                             start_new_session=True)
    children[child.pid] = child
    return child


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(psutil status, start time in ms since the epoch) of a pid, or None if there is no such process."""
    try:
        p = psutil.Process(pid)
        return p.status(), int(p.create_time() * 1000)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    if pgid <= 0:
        return []
    out = []
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] not in DEAD and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def signal_pid_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (gone already: nothing to do); reap it after a SIGKILL."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    child = children.get(pid)
    if child is not None and sig == signal.SIGKILL:
        try:
            child.wait(2)
        except subprocess.TimeoutExpired:
            pass


class ServiceProc:
    """One service process. ``argv`` are the gvtsim arguments, e.g. ``["vhm", "--bind", "tcp://127.0.0.1:*"]``."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, name: str = "",
                 module: str = "gvtsim.orchestration") -> None:
        self.argv = argv
        self.module = module
        self.name = name or argv[0]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.events: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.ready: Event = {}
        self.stderr_path = tempfile.mktemp(prefix=f"gvtsim-{self.name}-", suffix=".log", dir="/tmp")

    def start(self, timeout: float = 20.0) -> Event:
        """Start and wait for the ``ready`` line. Returns it."""
        self._err = open(self.stderr_path, "w")
        self.proc = start_group([sys.executable, "-m", self.module, *self.argv], self.env,
                                stdout=subprocess.PIPE, stderr=self._err, text=True)
        threading.Thread(target=self._reader, args=(self.proc,), daemon=True).start()
        self.ready = self.wait_event("ready", timeout)
        return self.ready

    def _reader(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"event": "stdout", "text": line}
            ev.setdefault("_t", time.monotonic())
            self.events.put(ev)
        self.events.put({"event": "_exit", "_t": time.monotonic()})

    def wait_event(self, match: str | Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """Next event named ``match`` (or satisfying it). Raises TimeoutError, or RuntimeError if the process ends."""
        pred = (lambda e: e.get("event") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no event {match!r} within {timeout}s; log: {self.tail()}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(ev)
            if pred(ev):
                return ev
            if ev.get("event") == "_exit":
                code = self.proc.poll() if self.proc else None
                raise RuntimeError(f"{self.name} exited ({code}); log: {self.tail()}")

    async def await_event(self, match: str | Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """:meth:`wait_event` for async tests (does not block the event loop)."""
        import asyncio

        return await asyncio.to_thread(self.wait_event, match, timeout)

    def tail(self, n: int = 15) -> str:
        try:
            with open(self.stderr_path) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    @property
    def endpoint(self) -> str:
        return str(self.ready.get("endpoint", ""))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            signal_pid_group(self.proc.pid, sig)

    def terminate(self, timeout: float = 5.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        self.kill(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(5)
            return None
        finally:
            self._err.close()

    def stop(self) -> None:
        """Teardown: kill the group, reap."""
        if self.proc is not None:
            self.kill(signal.SIGKILL)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._err.close()
