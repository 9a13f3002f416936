"""Liveness settings of a service: the application heartbeat interval and the backstop timeout.

Dead peers are found by the transport (ZMTP heartbeats in libzmq's I/O thread and socket monitor events, see
sockets.py); the application heartbeat only keeps an idle session visibly alive and, after ``liveness``
silent intervals, ends a session whose peer process is hung while its libzmq still answers. It is a
backstop, so the default is generous (1 s x 12): a process busy for a second or two in its own code is
never declared lost. The rules themselves live in protocol/session.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...protocol.session import Intervals

#: Defaults of ``--heartbeat-ivl`` and ``--liveness``.
DEFAULT_INTERVAL = 1.0
DEFAULT_LIVENESS = 12


@dataclass(frozen=True)
class HeartbeatConfig:
    """Heartbeat interval (seconds) and liveness (intervals of silence before a peer is declared lost)."""

    interval: float = DEFAULT_INTERVAL
    liveness: int = DEFAULT_LIVENESS

    @property
    def timeout(self) -> float:
        """Seconds of silence after which a peer is declared lost."""
        return self.interval * self.liveness

    @property
    def intervals(self) -> Intervals:
        """The session layer's form (announced in HELLO_ACK)."""
        return Intervals(heartbeat=self.interval, timeout=self.timeout)
