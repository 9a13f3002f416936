"""Heartbeat bookkeeping for one session, sans-I/O (time is passed in).

zguide ch.4 "Heartbeating": any message counts as a sign of life; send a heartbeat only when the outgoing
direction has been idle for one interval; declare the peer dead after ``liveness`` silent intervals.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HeartbeatConfig:
    """Heartbeat interval (seconds) and liveness (intervals of silence before a peer is declared dead)."""

    interval: float = 0.5
    liveness: int = 3

    @property
    def timeout(self) -> float:
        """Seconds of silence after which a peer is dead."""
        return self.interval * self.liveness

    @property
    def tick(self) -> float:
        """How often a shell should call :meth:`Liveness.poll` (a fraction of the interval)."""
        return self.interval / 5


class Liveness:
    """Tracks when a peer was last heard from and when we last sent to it."""

    def __init__(self, cfg: HeartbeatConfig, now: float) -> None:
        self.cfg = cfg
        self.last_heard = now
        self.last_sent = now

    def heard(self, now: float) -> None:
        """Anything arrived from the peer."""
        self.last_heard = now

    def sent(self, now: float) -> None:
        """Anything was sent to the peer."""
        self.last_sent = now

    def need_heartbeat(self, now: float) -> bool:
        """True when our direction has been idle for an interval."""
        return now - self.last_sent >= self.cfg.interval

    def expired(self, now: float) -> bool:
        """True when the peer has been silent for ``liveness`` intervals, less one poll tick, so that a shell
        polling every :attr:`HeartbeatConfig.tick` declares a dead peer within ``liveness`` intervals of the
        last thing it heard (hence within ``liveness`` intervals of the peer's death)."""
        return now - self.last_heard >= self.cfg.timeout - self.cfg.tick

    def silence(self, now: float) -> float:
        return now - self.last_heard
