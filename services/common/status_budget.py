"""STATUS under a time budget: a flood of STATUS requests cannot take a service's time from its peers.

STATUS is the one request whose cost grows with the service's state: a vhm with 64 VMs summarises every
VM's ioreq histograms, tens of milliseconds in Python. Answered one by one, 500 STATUS a second (a flooder,
or many ``gvtsim top`` windows) would keep the service busy all the time, and every guest's MMIO would wait
behind them.

So the info is built at most once per interval of ``cost / SHARE`` after the previous build (its own
measured cost: builds take at most SHARE of the time), and never more than ``MAX_GAP_S`` apart while
requests wait. A request that comes sooner waits for the next build, which answers every request then
waiting: each answer is built after its request arrived, so it is never stale. At most ``PER_PEER``
requests of one routing id and ``MAX_WAITING`` in all wait; one past that is answered ERROR ``busy`` and
counted. A sans-I/O core: time is passed in, :meth:`next_deadline` says when the next build is due.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: the most of a service's time that STATUS builds take while requests keep coming
SHARE = 0.05
#: builds are never further apart than this while requests wait (a cost measured on a busy machine can
#: be large)
MAX_GAP_S = 1.0
#: requests of one routing id that may wait for a build; the next is answered ERROR busy
PER_PEER = 4
#: requests that may wait in all
MAX_WAITING = 1024


@dataclass
class StatusBudget:
    """When to build STATUS info, and who waits for it."""

    share: float = SHARE
    max_gap_s: float = MAX_GAP_S
    per_peer: int = PER_PEER
    max_waiting: int = MAX_WAITING
    #: (routing id, req) of every request waiting for the next build, in arrival order
    waiting: list[tuple[bytes, int]] = field(default_factory=list)
    _next_build: float = 0.0
    _per_ident: Counter[bytes] = field(default_factory=Counter)

    def want(self, ident: bytes, req: int, now: float) -> str:
        """A STATUS request arrived. ``"now"``: build and answer it at once (then :meth:`built`);
        ``"wait"``: it waits for the next build; ``"busy"``: refuse it (too many waiting)."""
        if now >= self._next_build and not self.waiting:
            return "now"
        if self._per_ident[ident] >= self.per_peer or len(self.waiting) >= self.max_waiting:
            return "busy"
        self._per_ident[ident] += 1
        self.waiting.append((ident, req))
        return "wait"

    def built(self, started: float, cost: float) -> None:
        """A build that began at ``started`` took ``cost`` seconds: the next may start after
        ``cost / share`` (at most ``max_gap_s``)."""
        self._next_build = started + min(self.max_gap_s, cost / self.share)

    def due(self, now: float) -> list[tuple[bytes, int]]:
        """The requests to answer with a build made now: every waiting one, once the next build is due
        (then call :meth:`built`); else none."""
        if not self.waiting or now < self._next_build:
            return []
        out, self.waiting = self.waiting, []
        self._per_ident.clear()
        return out

    def next_deadline(self) -> float | None:
        """When the waiting requests are due (None: nothing waits)."""
        return self._next_build if self.waiting else None

    def forget(self, ident: bytes) -> None:
        """The routing id's session or connection ended: its requests no longer wait."""
        if self._per_ident.pop(ident, 0):
            self.waiting = [w for w in self.waiting if w[0] != ident]
