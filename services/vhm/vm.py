"""One VM as vhm sees it: its vCPU ioreq slots, guest memory, PCI latch, trapped ranges, page tracks.

The per-VM state of the ACRN hypervisor and the Service-VM VHM together (ACRN acrn_common.h-8.3): one ioreq slot
per vCPU (``VHM_REQUEST_MAX`` = 16 slots of one 4 KiB page), ``pci_conf_addr`` (the CONF1 latch, per VM),
the ranges and BDFs each ioreq client registered for this VM, and which client tracks which page.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ...protocol import IoreqSlot, IoreqState
from ...protocol import messages as m
from .guest_memory import FRAMES_PER_MB, GuestMemory
from .routing import BdfTable, RangeTable

Peer = Hashable  # the connection a VM belongs to (the shell's Session; anything hashable in tests)


class VmState(enum.Enum):
    """Where a VM is in its lifecycle."""

    CREATING = "creating"  # memory is ready, the device model is creating its vGPU; the guest has no id yet
    RUNNING = "running"
    DYING = "dying"  # destroyed: no new ioreqs; waiting for the device model to drop the vGPU before frames go


@dataclass(frozen=True)
class AwaitingGuest:
    """The owner of a VM a restarted vhm restored, until its guest says HELLO again with the identity
    recorded (``Vm.owner_id``); ``since`` is when it was restored (it is destroyed if nobody claims it)."""

    id: str
    epoch: int
    since: float


@dataclass(eq=False)
class Vm:
    """One VM. ``serial`` is unique for the life of the vhm process (ids are reused, serials never)."""

    id: int
    serial: int
    name: str
    vcpus: int
    ram_mb: int
    owner: Peer
    memory: GuestMemory
    state: VmState = VmState.RUNNING
    vgpu_spec: str = ""
    vgpu_id: int = 0
    dm: int | None = None  # id of the ioreq client (device model) that holds the vGPU
    pci_conf_addr: int = 0  # ACRN drivers/vhm/vhm_ioreq.c: the CONF1 latch, one per VM
    msi_seq: int = 0
    slots: list[IoreqSlot] = field(default_factory=list)
    dispatched_at: list[float] = field(default_factory=list)  # per vCPU: when the slot went PROCESSING
    ranges: RangeTable = field(default_factory=RangeTable)
    bdfs: BdfTable = field(default_factory=BdfTable)
    page_tracks: dict[int, int] = field(default_factory=dict)  # gfn -> client that tracks it
    extra_maps: dict[int, int] = field(default_factory=dict)  # gfn -> client that mapped it (map_gfn_to_mfn)
    dma_pins: dict[int, Counter[int]] = field(default_factory=dict)  # client -> mfn -> pin count
    #: the guest's identity (its HELLO id and epoch): a restarted vhm gives the VM back to the session that
    #: says HELLO with it (state.py)
    owner_id: tuple[str, int] = ("", 0)
    #: per vCPU: (seq, value) of the last request completed and handed back (a guest that sends it again
    #: after a vhm restart gets the same answer, never a second emulation)
    last_done: list[tuple[int, int]] = field(default_factory=list)
    restored: bool = False  # carried on by a restarted vhm (state.py)
    #: per vCPU: the session the last completion was addressed to (not recorded: a restarted vhm answers a
    #: request sent again, since the dead one's answer may have been lost)
    done_to: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.slots:
            self.slots = [IoreqSlot(vcpu=v) for v in range(self.vcpus)]
            self.dispatched_at = [0.0] * self.vcpus
        if not self.last_done:
            self.last_done = [(-1, 0)] * self.vcpus  # -1: no request yet (a guest's seqs may start at 0)
        if not self.done_to:
            self.done_to = [None] * self.vcpus

    @property
    def ram_frames(self) -> int:
        return self.ram_mb * FRAMES_PER_MB

    def busy_slots(self) -> list[IoreqSlot]:
        """Slots holding a request that the guest has not been answered for (PENDING or PROCESSING)."""
        return [s for s in self.slots if s.state in (IoreqState.PENDING, IoreqState.PROCESSING)]

    def request_of(self, slot: IoreqSlot) -> m.Ioreq:
        """The in-flight request of a busy slot."""
        req = slot.request
        assert isinstance(req, m.Ioreq)
        return req

    def remove_client(self, client: int) -> list[int]:
        """Drop a lost client's ranges, BDF claims, page tracks and DMA pins; un-protect the pages it
        tracked (with nobody to handle WP ioreqs the guest must be able to write again).

        Returns the extra-mapped gfns that client had mapped (the caller unmaps them: their frames go away).
        """
        self.ranges.remove_client(client)
        self.bdfs.remove_client(client)
        for gfn in [g for g, c in self.page_tracks.items() if c == client]:
            del self.page_tracks[gfn]
            if self.state is not VmState.DYING:
                self.memory.write_protect(gfn, False)
        self.dma_pins.pop(client, None)
        if self.dm == client:
            self.dm = None
            self.vgpu_id = 0  # the vGPU died with its device model (a restarted one re-attaches it)
        return sorted(g for g, c in self.extra_maps.items() if c == client)

    def info(self) -> dict[str, Any]:
        """The STATUS view of the VM."""
        return {"vm": self.id, "name": self.name, "vcpus": self.vcpus, "ram_mb": self.ram_mb,
                "vgpu_id": self.vgpu_id, "owner": str(getattr(self.owner, "id", self.owner)),
                "state": self.state.value, "busy_vcpus": len(self.busy_slots())}
