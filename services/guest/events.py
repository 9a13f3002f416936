"""JSON events on stdout (the launcher, the demo and tests read them; logs go to stderr)."""

from __future__ import annotations

import json
import time
from typing import Any


def emit(**event: Any) -> None:
    """Print one event as a JSON line, stamped with the monotonic clock."""
    event.setdefault("t", time.monotonic())
    print(json.dumps(event, default=str), flush=True)
