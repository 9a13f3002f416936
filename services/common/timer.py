"""One loop timer at a deadline: what every shell arms at its core's ``next_deadline()``.

A sans-I/O core says when it next needs to run (``time.monotonic()`` seconds, or None for never); the shell
keeps exactly one ``loop.call_later`` for that instant and moves it only when the deadline moves. No polling
loop: a core with nothing due costs nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class DeadlineTimer:
    """Call ``callback`` (with no argument) once ``deadline`` has come; re-arm with :meth:`arm`."""

    def __init__(self, callback: Callable[[], None], loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._callback = callback
        self._loop = loop
        self._handle: asyncio.TimerHandle | None = None
        self.at: float | None = None  # the deadline armed, None when disarmed

    def arm(self, at: float | None) -> None:
        """Fire at ``at`` (None: never). An unchanged deadline keeps the armed timer."""
        if at == self.at and (at is None or self._handle is not None):
            return
        self.cancel()
        self.at = at
        if at is not None:
            loop = self._loop or asyncio.get_running_loop()
            self._handle = loop.call_later(max(0.0, at - time.monotonic()), self._fire)

    def cancel(self) -> None:
        """Disarm (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def _fire(self) -> None:
        self._handle, self.at = None, None
        self._callback()
