"""What the GVT core has to say, kept for the shell to log: the core does no I/O, not even a log line.

The core and its hardware concerns call ``gvt.log.warning("event", key=value, ...)`` as they would a
structured logger; each call becomes a :class:`LogEvent` in a bounded outbox that the shell drains after
every entry point (with the effects) and writes out through its own logger.
"""

from __future__ import annotations

import traceback
from collections import deque
from dataclasses import dataclass
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
#: events kept between two drains; a shell drains after every entry point, so only a bug fills it
OUTBOX_LIMIT = 4096


@dataclass(frozen=True)
class LogEvent:
    """One event: its level (one of LEVELS), name and fields (JSON-friendly values)."""

    level: str
    event: str
    fields: dict[str, Any]


class EventLog:
    """The core's log outbox: the logger's call shape, no output. ``exc_info=True`` (inside an ``except``)
    records the traceback as text in the ``exception`` field."""

    def __init__(self, limit: int = OUTBOX_LIMIT) -> None:
        self.events: deque[LogEvent] = deque(maxlen=limit)
        self.dropped = 0  # events pushed out of a full outbox (the oldest go first)

    def _add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if fields.pop("exc_info", False):
            fields["exception"] = traceback.format_exc()
        if len(self.events) == self.events.maxlen:
            self.dropped += 1
        self.events.append(LogEvent(level, event, fields))

    def debug(self, event: str, **fields: Any) -> None:
        self._add("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._add("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._add("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._add("error", event, fields)

    def drain(self) -> list[LogEvent]:
        """Take every event (oldest first)."""
        out = list(self.events)
        self.events.clear()
        return out
