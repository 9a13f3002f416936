"""The ACRN ioreq slot as a pure state machine.

One slot per vCPU (acrn_common.h, 16 slots x 256 B per VM). Transitions follow the hypervisor
(hv-io-emulation.rst and the header comment in acrn_common.h):

    FREE --insert--> PENDING --dispatch--> PROCESSING --complete--> COMPLETE --resume--> FREE

There is no failure state: an unhandled read returns all ones, a dropped write still goes COMPLETE.
gvtsim adds one escape the real hypervisor handles in its VM-reset path (``acrn_ioreq_clear_request``):
``PENDING``/``PROCESSING`` may be *force-completed* when the client or the VM goes away.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import IoreqState
from .errors import IllegalTransition

#: The legal transitions, as a table (h11 style): src -> set of dst.
TRANSITIONS: dict[IoreqState, frozenset[IoreqState]] = {
    IoreqState.FREE: frozenset({IoreqState.PENDING}),
    IoreqState.PENDING: frozenset({IoreqState.PROCESSING, IoreqState.COMPLETE}),
    IoreqState.PROCESSING: frozenset({IoreqState.COMPLETE}),
    IoreqState.COMPLETE: frozenset({IoreqState.FREE}),
}
# PENDING -> COMPLETE is the in-kernel fast path: VHM completes 0xCF8 / CONF1-disabled 0xCFC accesses and
# fallback (unclaimed) requests without handing them to a client.


@dataclass
class IoreqSlot:
    """One vCPU's request slot. Holds the request while it is in flight; refuses illegal transitions."""

    vcpu: int
    state: IoreqState = IoreqState.FREE
    request: object | None = None  # the in-flight request (an Ioreq message); None when FREE
    client: int = 0  # id of the client the request was dispatched to (VHM ``req->client``)
    value: int = 0  # the completion value (reads)

    def _go(self, dst: IoreqState) -> None:
        if dst not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.state, dst)
        self.state = dst

    def insert(self, request: object) -> None:
        """FREE -> PENDING: the hypervisor queued a vCPU's request (``acrn_insert_request``)."""
        if self.state is not IoreqState.FREE:
            raise IllegalTransition(self.state, IoreqState.PENDING, "slot busy: one outstanding ioreq per vCPU")
        self._go(IoreqState.PENDING)
        self.request = request
        self.value = 0
        self.client = 0

    def dispatch(self, client: int) -> None:
        """PENDING -> PROCESSING: handed to an ioreq client (``acrn_ioreq_distribute_request``)."""
        self._go(IoreqState.PROCESSING)
        self.client = client

    def complete(self, value: int = 0) -> None:
        """PENDING/PROCESSING -> COMPLETE: emulation done (``ioreq_complete_request``)."""
        self._go(IoreqState.COMPLETE)
        self.value = value

    def free(self) -> object | None:
        """COMPLETE -> FREE: the vCPU resumed and consumed the result (``dm_emulate_io_complete``).

        Returns the request that was in the slot.
        """
        self._go(IoreqState.FREE)
        req, self.request = self.request, None
        return req

    @property
    def busy(self) -> bool:
        """True while a request occupies the slot (any state but FREE)."""
        return self.state is not IoreqState.FREE
