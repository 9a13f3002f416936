"""Service processes run as local children: the demo, the launcher and the service tests use this.

A :class:`ServiceProc` starts ``python -m gvtsim.orchestration ARGS`` (or another module) in its own process
group, reads JSON events from its stdout on a thread (the ``ready`` line first), and kills the whole group
on teardown. Waiting is always on an event with a timeout, never a sleep.
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

Event = dict[str, Any]


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
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.argv],
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=self.env,
                                     start_new_session=True)
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
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

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
