"""The PV shared page negotiated with the gvt core directly (no sockets): PVINFO advertises pv_caps and the
known format versions; the host accepts only versions and features it knows, says so in pv_status /
pv_enabled, and keeps the mainline g2v values and VGT_CAPS (0x1C) untouched."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from gvtsim.services.gvt import pv
from gvtsim.services.gvt import pvinfo as pvi
from test_gvt_fixtures import FakeMpt, create, make_gvt, program_bar0, rd, wr

PAGE_GPA = 0x7000


@dataclass
class RamMpt(FakeMpt):
    """FakeMpt with a few pages of readable, writable guest RAM."""

    ram: dict[int, bytearray] = field(default_factory=dict)

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        page = self.ram.get(gpa & ~0xFFF)
        if page is None or (gpa & 0xFFF) + length > 4096:
            return None
        return bytes(page[gpa & 0xFFF:(gpa & 0xFFF) + length])

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        page = self.ram.get(gpa & ~0xFFF)
        if page is None:
            return False
        page[gpa & 0xFFF:(gpa & 0xFFF) + len(data)] = data
        return True


def header(magic: int = pv.PV_MAGIC, version: int = 1, hsize: int = 32, size: int = 4096, features: int = 5) -> bytes:
    return struct.pack("<IHHII", magic, version, hsize, size, features)


def setup(page: bytes, gpa: int = PAGE_GPA):
    mpt = RamMpt(ram={PAGE_GPA: bytearray(page.ljust(4096, b"\0"))})
    gvt = make_gvt({1: mpt})
    v = create(gvt, 1)
    program_bar0(gvt, v)
    assert rd(gvt, v, pvi.MAGIC, 8) == pvi.VGT_MAGIC  # a GVT-aware guest reads PVINFO first
    wr(gvt, v, pvi.SHARED_PAGE_GPA, gpa & 0xFFFF_FFFF)
    wr(gvt, v, pvi.SHARED_PAGE_GPA + 4, gpa >> 32)
    # the guest reads it back to verify (two dwords: the packed u64 at 0x864 is not 8-byte aligned)
    assert rd(gvt, v, pvi.SHARED_PAGE_GPA) | rd(gvt, v, pvi.SHARED_PAGE_GPA + 4) << 32 == gpa
    wr(gvt, v, pvi.G2V_NOTIFY, pvi.PvG2vNotify.SHARED_PAGE_SETUP)
    return gvt, v, mpt


def test_pvinfo_advertises_caps_and_versions_and_keeps_mainline_values():
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    assert (pvi.PV_CAPS, pvi.SHARED_PAGE_GPA) == (0x78880, 0x78884)  # past ACRN's PVMMIO fields
    assert rd(gvt, v, pvi.PV_CAPS) == int(pv.PvCaps.PPGTT | pv.PvCaps.SUBMISSION) == 0b101  # no PV GGTT
    assert rd(gvt, v, pvi.PV_VERSIONS) == 1 << 1  # format version 1 only
    assert rd(gvt, v, pvi.PV_STATUS) == pv.PvStatus.NONE
    assert rd(gvt, v, pvi.VGT_CAPS) == 0x1C  # mainline caps untouched
    assert (pvi.PvG2vNotify.SHARED_PAGE_SETUP, pvi.PvG2vNotify.PV_SEND_TRIGGER) == (8, 9)
    assert pvi.G2vNotify.MAX == 8


def test_a_valid_header_is_accepted():
    gvt, v, _ = setup(header())
    assert rd(gvt, v, pvi.PV_STATUS) == pv.PvStatus.ACCEPTED
    assert rd(gvt, v, pvi.PV_ENABLED) == 0b101
    assert v.pv.active and v.pv.gpa == PAGE_GPA and v.pv.version == 1
    assert not v.failsafe


@pytest.mark.parametrize("page,gpa,status", [
    (header(version=2), PAGE_GPA, pv.PvStatus.UNSUPPORTED_VERSION),  # a newer guest format
    (header(magic=0xDEADBEEF), PAGE_GPA, pv.PvStatus.BAD_MAGIC),  # a corrupt header
    (header(features=0b010), PAGE_GPA, pv.PvStatus.UNSUPPORTED_FEATURES),  # PV GGTT: not offered
    (header(size=8192), PAGE_GPA, pv.PvStatus.BAD_SIZE),
    (header(), PAGE_GPA + 8, pv.PvStatus.BAD_GPA),  # not page aligned
    (header(), 0x9000, pv.PvStatus.BAD_GPA),  # not guest RAM
])
def test_unknown_formats_and_bad_pages_are_refused_with_a_status(page, gpa, status):
    gvt, v, _ = setup(page, gpa)
    assert rd(gvt, v, pvi.PV_STATUS) == status
    assert rd(gvt, v, pvi.PV_ENABLED) == 0 and not v.pv.active
    assert not v.failsafe  # a refusal is an answer, not a guest error: the VM goes on, on the trap path
    assert gvt.counters[f"pv_setup_refused_{status.name.lower()}"] == 1


def test_pv_trigger_without_an_accepted_page_is_a_guest_error_of_that_vgpu_only():
    gvt, v, _ = setup(header(magic=0))
    other = create(gvt, 2)
    wr(gvt, v, pvi.G2V_NOTIFY, pvi.PvG2vNotify.PV_SEND_TRIGGER)
    assert v.failsafe and not other.failsafe


def test_dmlr_forgets_the_shared_page():
    gvt, v, _ = setup(header())
    gvt.reset_vgpu(1, dmlr=True)
    assert not v.pv.active and rd(gvt, v, pvi.PV_STATUS) == pv.PvStatus.NONE
