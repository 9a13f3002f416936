"""The paravirtualized path: a versioned shared page, PV submission, PV PPGTT updates (docs/PV.md).

Follows the i915 PV patchset (lts2019: ``pv_caps`` and ``shared_page_gpa`` in PVINFO, which gvtsim moves
to + 0x880 / + 0x884 so that ACRN's PVMMIO fields keep + 0x860..0x86C; g2v SHARED_PAGE_SETUP 8 and
PV_SEND_TRIGGER 9) and answers its review: the host advertises the shared-page
format versions it knows (``pv_versions``), the page starts with a header the guest fills (magic,
version, size, features), and the host accepts only what it knows, saying so in ``pv_status`` /
``pv_enabled``; a guest whose format the host refuses stays on the trap path.

Shared page, format version 1 (little-endian, one 4 KiB page of guest RAM; the host reads and writes it
with read_gpa / write_gpa, so PV data moves with no trap):

    0x000 u32 magic "GVPV" (0x56505647)     0x004 u16 version     0x006 u16 header size (32)
    0x008 u32 size (4096)                   0x00C u32 features (PV_* bits the guest asks for)
    0x100 + 0x40 * engine (rcs 0, bcs 1, vcs 2, vecs 3): submission slot
          +0x00 u64 desc0  +0x08 u64 desc1  +0x10 u32 submit_seq (guest)  +0x14 u32 done_seq (host)
          +0x18 u32 status (host: 0 ok, 1 failed)
    0x300 PPGTT update record: +0x00 u32 seq (guest)  +0x04 u32 done (host)  +0x08 u64 pdp (root gpa)
          +0x10 u64 start  +0x18 u64 length  +0x20 u32 cache_level  +0x24 u32 status (host)
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...hardware.pv import PPGTT_UPDATE, PV_ENGINES, PV_HEADER_SIZE, PV_PAGE_SIZE, SLOT_BASE, SLOT_SIZE
from ...hardware.pv import PV_PAGE_MAGIC as PV_MAGIC
from ...hardware.pv import PvCaps
from ..common.memory import PAGE_SIZE
from .errors import EmulationError

if TYPE_CHECKING:
    from .vgpu import Vgpu

#: Shared-page format versions this host understands (bit n = version n).
HOST_VERSIONS = (1,)
MAX_UPDATE_PAGES = 1 << 16  # a PV PPGTT update covers at most 256 MiB of GPU VA


#: What this host implements (PV GGTT is not: its bit stays clear, so a guest never asks for it).
HOST_CAPS = PvCaps.PPGTT | PvCaps.SUBMISSION


class PvStatus(enum.IntEnum):
    """pv_status: the host's verdict on the last SHARED_PAGE_SETUP (gvtsim's answer to the review)."""

    NONE = 0
    ACCEPTED = 1
    BAD_GPA = 2
    BAD_MAGIC = 3
    UNSUPPORTED_VERSION = 4
    UNSUPPORTED_FEATURES = 5
    BAD_SIZE = 6


_HEADER = struct.Struct("<IHHII")  # magic, version, header size, size, features
_SLOT = struct.Struct("<QQI")  # desc0, desc1, submit_seq
_UPDATE = struct.Struct("<IIQQQI")  # seq, done, pdp, start, length, cache_level


@dataclass
class PvState:
    """A vGPU's accepted shared page."""

    gpa: int = 0
    version: int = 0
    enabled: PvCaps = PvCaps(0)
    seen_submit: dict[str, int] = field(default_factory=dict)  # engine -> last submit_seq taken
    seen_update: int = 0

    @property
    def active(self) -> bool:
        return bool(self.gpa)


def versions_mask() -> int:
    """pv_versions: bit n set for every shared-page format version the host knows."""
    mask = 0
    for v in HOST_VERSIONS:
        mask |= 1 << v
    return mask


def setup(vgpu: "Vgpu", gpa: int) -> PvStatus:
    """g2v SHARED_PAGE_SETUP: validate the guest's page and header; accept only known versions and
    features. Returns the status the host publishes in PVINFO."""
    vgpu.pv = PvState()
    if gpa % PAGE_SIZE or not gpa:
        return _refuse(vgpu, PvStatus.BAD_GPA, f"shared page gpa {gpa:#x} is not a page-aligned RAM page")
    raw = vgpu.mpt.read_gpa(gpa, PAGE_SIZE)
    if raw is None:
        return _refuse(vgpu, PvStatus.BAD_GPA, f"shared page gpa {gpa:#x} is not guest RAM")
    magic, version, header_size, size, features = _HEADER.unpack_from(raw, 0)
    if magic != PV_MAGIC:
        return _refuse(vgpu, PvStatus.BAD_MAGIC, f"shared page magic {magic:#x} != {PV_MAGIC:#x}")
    if version not in HOST_VERSIONS:
        return _refuse(vgpu, PvStatus.UNSUPPORTED_VERSION, f"shared page version {version} (host knows "
                                                           f"{list(HOST_VERSIONS)})")
    if size != PV_PAGE_SIZE or header_size != PV_HEADER_SIZE:
        return _refuse(vgpu, PvStatus.BAD_SIZE, f"shared page size {size} / header {header_size}")
    if features & ~int(HOST_CAPS) or not features:
        return _refuse(vgpu, PvStatus.UNSUPPORTED_FEATURES, f"features {features:#x} not within {int(HOST_CAPS):#x}")
    vgpu.pv = PvState(gpa=gpa, version=version, enabled=PvCaps(features),
                      seen_submit={e: _slot(raw, e)[2] for e in PV_ENGINES},
                      seen_update=_UPDATE.unpack_from(raw, PPGTT_UPDATE)[0])
    vgpu.count("pv_setup_accepted")
    vgpu.log.info("pv_enabled", vgpu=vgpu.id, vm=vgpu.vm, gpa=hex(gpa), version=version, features=hex(features))
    if vgpu.pv.enabled & PvCaps.PPGTT:
        vgpu.ppgtt.set_pv(True)  # guest page tables are no longer write-protected: updates come by message
    return PvStatus.ACCEPTED


def _refuse(vgpu: "Vgpu", status: PvStatus, why: str) -> PvStatus:
    vgpu.count(f"pv_setup_refused_{status.name.lower()}")
    vgpu.log.warning("pv_setup_refused", vgpu=vgpu.id, vm=vgpu.vm, status=status.name, why=why)
    return status


def _slot(page: bytes, engine: str) -> tuple[int, int, int]:
    return _SLOT.unpack_from(page, SLOT_BASE + SLOT_SIZE * PV_ENGINES.index(engine))


def send_trigger(vgpu: "Vgpu") -> int:
    """g2v PV_SEND_TRIGGER: take every engine slot whose submit_seq moved and submit its descriptors
    (one trap instead of four ELSP writes). Returns the number of submissions taken."""
    pv = vgpu.pv
    if not pv.active or not pv.enabled & PvCaps.SUBMISSION:
        raise EmulationError("PV_SEND_TRIGGER without an accepted PV submission shared page")
    page = vgpu.mpt.read_gpa(pv.gpa, PAGE_SIZE)
    if page is None:
        raise EmulationError("PV shared page is no longer guest RAM")
    taken = 0
    for engine in PV_ENGINES:
        desc0, desc1, seq = _slot(page, engine)
        if seq == pv.seen_submit.get(engine, 0):
            continue
        pv.seen_submit[engine] = seq
        vgpu.gvt.scheduler.submit_pv(vgpu, engine, (desc0, desc1), seq)
        taken += 1
    vgpu.count("pv_submissions", taken)
    return taken


def complete(vgpu: "Vgpu", engine: str, seq: int, ok: bool) -> None:
    """A PV workload finished: publish done_seq and status in the slot (the MSI that follows tells the
    guest to look)."""
    pv = vgpu.pv
    if not pv.active:
        return
    base = pv.gpa + SLOT_BASE + SLOT_SIZE * PV_ENGINES.index(engine)
    vgpu.mpt.write_gpa(base + 0x18, (0 if ok else 1).to_bytes(4, "little"))
    vgpu.mpt.write_gpa(base + 0x14, (seq & 0xFFFF_FFFF).to_bytes(4, "little"))


def ppgtt_update(vgpu: "Vgpu") -> None:
    """g2v PV_PPGTT_UPDATE: the guest changed its page tables for [start, start + length) of the PPGTT
    rooted at ``pdp`` (and did not fault: PV PPGTT tables are not write-protected); re-shadow that range."""
    pv = vgpu.pv
    if not pv.active or not pv.enabled & PvCaps.PPGTT:
        raise EmulationError("PV_PPGTT_UPDATE without an accepted PV PPGTT shared page")
    raw = vgpu.mpt.read_gpa(pv.gpa + PPGTT_UPDATE, _UPDATE.size)
    if raw is None:
        raise EmulationError("PV shared page is no longer guest RAM")
    seq, _done, pdp, start, length, _cache_level = _UPDATE.unpack(raw)
    if length > MAX_UPDATE_PAGES * PAGE_SIZE:
        raise EmulationError(f"PV PPGTT update of {length:#x} bytes is too large")
    vgpu.ppgtt.pv_update(pdp, start, length)
    pv.seen_update = seq
    vgpu.mpt.write_gpa(pv.gpa + PPGTT_UPDATE + 4, (seq & 0xFFFF_FFFF).to_bytes(4, "little"))
    vgpu.count("pv_ppgtt_updates")


def reset(vgpu: "Vgpu") -> None:
    """DMLR: the shared page is forgotten (the guest sets it up again after its reset)."""
    if vgpu.pv.enabled & PvCaps.PPGTT:
        vgpu.ppgtt.set_pv(False)
    vgpu.pv = PvState()
