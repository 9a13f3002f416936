"""The guest side of the paravirtualized path (docs/PV.md; gvt side: services/gvt/pv.py).

Setup, as in the i915 PV patchset: allocate a zeroed page of guest RAM, fill the header (magic, the
format version this guest speaks, sizes, the features it wants out of ``pv_caps``), write its gpa to
PVINFO ``shared_page_gpa`` (64-bit), read it back to verify, then g2v_notify SHARED_PAGE_SETUP and read the
host's verdict (``pv_status``, ``pv_enabled``). Anything but ACCEPTED leaves the VM on the trap path.

Submission: the descriptors go into the engine's slot in the shared page (RAM, no trap), the slot's
submit_seq is bumped, and ONE g2v_notify PV_SEND_TRIGGER write traps (instead of four ELSP writes).
Completion: the host writes done_seq in the slot and raises the engine's user interrupt (an MSI).
PPGTT: the guest's page tables are not write-protected; before a PPGTT submission the guest posts the
edited range (pdp, start, length, cache level) and one g2v_notify PV_PPGTT_UPDATE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...protocol import IoreqDir, IoreqType
from ...protocol.errors import Refusal
from ...hardware import regs as r
from ...hardware.pv import PPGTT_UPDATE, PV_ENGINES, PV_HEADER_SIZE, PV_PAGE_SIZE, SLOT_BASE, SLOT_SIZE
from ...hardware.pv import PV_PAGE_MAGIC as PV_MAGIC
from ...hardware.pv import PvCaps
from .runtime import Gen, Lock

if TYPE_CHECKING:
    from .i915 import VgpuDriver

GUEST_VERSION = 1


STATUS_NAMES = {0: "none", 1: "accepted", 2: "bad_gpa", 3: "bad_magic", 4: "unsupported_version",
                5: "unsupported_features", 6: "bad_size"}
WANTED = PvCaps.PPGTT | PvCaps.SUBMISSION


@dataclass
class PvResult:
    """What setup ended with (the guest reports it)."""

    status: str
    enabled: int = 0
    host_caps: int = 0
    host_versions: int = 0
    reason: str = ""


class PvChannel:
    """An accepted shared page and the PV operations over it."""

    def __init__(self, drv: "VgpuDriver", gpa: int, enabled: PvCaps) -> None:
        self.drv = drv
        self.gpa = gpa
        self.enabled = enabled
        self.submit_seq = {e: 0 for e in PV_ENGINES}
        self.update_seq = 0
        self.update_lock = Lock()  # one update record in the page: vCPUs take turns (a driver lock)

    @property
    def submission(self) -> bool:
        return bool(self.enabled & PvCaps.SUBMISSION)

    @property
    def ppgtt(self) -> bool:
        return bool(self.enabled & PvCaps.PPGTT)

    def _slot(self, engine: str) -> int:
        return self.gpa + SLOT_BASE + SLOT_SIZE * PV_ENGINES.index(engine)

    def _post(self, engine: str, desc0: int, desc1: int, vcpu: int) -> Gen[int]:
        seq = self.submit_seq[engine] = (self.submit_seq[engine] + 1) & 0xFFFF_FFFF
        yield from self.drv.machine.write_mem(self._slot(engine), struct.pack("<QQI", desc0, desc1, seq), vcpu)
        return seq

    def submit(self, engine: str, desc0: int, desc1: int = 0, vcpu: int = 0) -> Gen[int]:
        """Descriptors into the slot (RAM), then the single trapped PV_SEND_TRIGGER. Returns the seq."""
        seq = yield from self._post(engine, desc0, desc1, vcpu)
        yield from self.drv.machine.mmio_write(self.drv.bar0 + r.PV_G2V_NOTIFY, 4, r.G2V_PV_SEND_TRIGGER, vcpu)
        return seq

    def try_submit(self, engine: str, desc0: int, desc1: int = 0, vcpu: int = 0) -> Gen[int | Refusal]:
        """:meth:`submit`, returning the Refusal of the trigger write instead of ending the thread."""
        seq = yield from self._post(engine, desc0, desc1, vcpu)
        got = yield from self.drv.machine.vcpus[vcpu].try_ioreq(IoreqType.MMIO, IoreqDir.WRITE,
                                                                self.drv.bar0 + r.PV_G2V_NOTIFY, 4,
                                                                r.G2V_PV_SEND_TRIGGER)
        return got if isinstance(got, Refusal) else seq

    def done(self, engine: str) -> tuple[int, int]:
        """(done_seq, status) the host published for the engine (a RAM read, no trap)."""
        done_seq, status = struct.unpack("<II", self.drv.machine.read_mem(self._slot(engine) + 0x14, 8))
        return done_seq, status

    def ppgtt_update(self, pdp: int, start: int, length: int, vcpu: int = 0, cache_level: int = 0) -> Gen[None]:
        """Post an edited PPGTT range and notify (one trap, no WP faults)."""
        with (yield from self.update_lock.hold()):
            self.update_seq = (self.update_seq + 1) & 0xFFFF_FFFF
            record = struct.pack("<IIQQQI", self.update_seq, 0, pdp, start, length, cache_level)
            yield from self.drv.machine.write_mem(self.gpa + PPGTT_UPDATE, record, vcpu)
            yield from self.drv.machine.mmio_write(self.drv.bar0 + r.PV_G2V_NOTIFY, 4, r.G2V_PV_PPGTT_UPDATE, vcpu)


def setup(drv: "VgpuDriver", version: int = GUEST_VERSION, corrupt: bool = False,
                vcpu: int = 0) -> Gen[tuple[PvChannel | None, PvResult]]:
    """Negotiate the shared page. Returns the channel (None: stay on the trap path) and the result."""
    caps = yield from drv.rd(r.PV_CAPS)
    versions = yield from drv.rd(r.PV_VERSIONS)
    if not caps:
        return None, PvResult("unsupported", host_caps=0, reason="host advertises no PV capability")
    assert drv.gem is not None
    gpa = drv.gem.ram.alloc(PV_PAGE_SIZE)
    features = int(WANTED) & caps
    header = struct.pack("<IHHII", 0xDEADBEEF if corrupt else PV_MAGIC, version, PV_HEADER_SIZE, PV_PAGE_SIZE,
                         features)
    yield from drv.machine.write_mem(gpa, header + bytes(PV_PAGE_SIZE - len(header)), vcpu)
    yield from drv.wr(r.PV_SHARED_PAGE_GPA, gpa & 0xFFFF_FFFF)
    yield from drv.wr(r.PV_SHARED_PAGE_GPA + 4, gpa >> 32)
    readback = (yield from drv.rd(r.PV_SHARED_PAGE_GPA)) | (yield from drv.rd(r.PV_SHARED_PAGE_GPA + 4)) << 32
    if readback != gpa:
        return None, PvResult("readback_mismatch", host_caps=caps, host_versions=versions,
                              reason=f"shared_page_gpa reads {readback:#x}, wrote {gpa:#x}")
    yield from drv.wr(r.PV_G2V_NOTIFY, r.G2V_SHARED_PAGE_SETUP)
    status = yield from drv.rd(r.PV_STATUS)
    enabled = yield from drv.rd(r.PV_ENABLED)
    name = STATUS_NAMES.get(status, f"status_{status}")
    result = PvResult(name, enabled, caps, versions)
    if status != 1:
        result.reason = f"host refused the shared page ({name}); host knows versions mask {versions:#x}"
        return None, result
    return PvChannel(drv, gpa, PvCaps(enabled)), result
