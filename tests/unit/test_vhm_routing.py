"""vhm routing rules, pure: the 0xCF8/0xCFC latch and rewrite (ACRN drivers/vhm/vhm_ioreq.c), range boundaries, BDFs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.vhm.routing import (BdfTable, IoRange, RangeTable, all_ones, fallback_value, handle_cf8cfc,
                                         route)

R, W = IoreqDir.READ, IoreqDir.WRITE


def pio(port: int, d: int, size: int = 4, value: int = 0) -> m.Ioreq:
    return m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.PIO, dir=d, addr=port, size=size, value=value)


def test_cf8_size4_write_latches_and_read_returns_latch():
    out = handle_cf8cfc(0, pio(0xCF8, W, value=0x8000_1010))
    assert out is not None and out.latch == 0x8000_1010 and out.value == 0 and out.request is None
    back = handle_cf8cfc(out.latch, pio(0xCF8, R))
    assert back is not None and back.value == 0x8000_1010 and back.latch == 0x8000_1010


@pytest.mark.parametrize("size", [1, 2])
def test_cf8_other_sizes_are_not_latched(size):
    # VHM handles 0xCF8 only as a dword (is_cfg_addr + size == 4); a byte/word access is routed normally
    assert handle_cf8cfc(0x8000_0000, pio(0xCF8, W, size=size, value=0xAB)) is None
    assert handle_cf8cfc(0x8000_0000, pio(0xCF9, W, size=1, value=0xAB)) is None


@pytest.mark.parametrize("size", [1, 2, 4])
@pytest.mark.parametrize("port", [0xCFC, 0xCFD, 0xCFE, 0xCFF])
def test_cfc_with_conf1_disabled_reads_all_ones_and_drops_writes(port, size):
    latch = 0x0000_1008  # bit 31 (CONF1_ENABLE) clear
    rd = handle_cf8cfc(latch, pio(port, R, size=size))
    assert rd is not None and rd.request is None and rd.value == (1 << (8 * size)) - 1
    wr = handle_cf8cfc(latch, pio(port, W, size=size, value=0x12))
    assert wr is not None and wr.request is None and wr.value == 0 and wr.latch == latch


def test_cfc_rewrite_known_example():
    # bus 0, dev 2, func 0 (the vGPU at 00:02.0), register 0x08, read one byte at 0xCFD -> reg 0x09
    out = handle_cf8cfc(0x8000_1008, pio(0xCFD, R, size=1))
    assert out is not None and out.value is None
    req = out.request
    assert req is not None
    assert (req.kind, req.bus, req.dev, req.func, req.reg, req.size, req.dir) == (IoreqType.PCI, 0, 2, 0, 9, 1, R)


@given(bus=st.integers(0, 255), dev=st.integers(0, 31), func=st.integers(0, 7), dword=st.integers(0, 63),
       ext=st.integers(0, 15), off=st.integers(0, 3), d=st.sampled_from([R, W]))
def test_cfc_rewrite_by_latched_bdf(bus, dev, func, dword, ext, off, d):
    latch = 1 << 31 | ext << 24 | bus << 16 | dev << 11 | func << 8 | dword << 2
    out = handle_cf8cfc(latch, pio(0xCFC + off, d, size=1, value=0x5A))
    assert out is not None and out.request is not None and out.latch == latch
    req = out.request
    assert (req.bus, req.dev, req.func) == (bus, dev, func)
    # ACRN drivers/vhm/vhm_ioreq.c: reg = (addr & 0xFF) + ((addr >> 16) & 0xF00) + (port - 0xCFC); bits 27:24 extend it
    assert req.reg == (ext << 8 | dword << 2) + off
    assert req.kind == IoreqType.PCI and req.dir == d and req.value == 0x5A


def test_non_cf8cfc_ports_are_not_touched():
    assert handle_cf8cfc(0x8000_0000, pio(0x3F8, W, size=1)) is None
    assert handle_cf8cfc(0x8000_0000, m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=R, addr=0xCFC,
                                             size=4)) is None


def test_range_boundaries_inclusive_end():
    t = RangeTable()
    t.add(IoRange(7, IoreqType.MMIO, 0x1000, 0x1FFF))
    look = lambda addr, size: t.lookup(IoreqType.MMIO, addr, size)  # noqa: E731
    assert look(0x1000, 4) == 7  # first byte
    assert look(0x0FFF, 1) is None  # one below
    assert look(0x0FFE, 4) is None  # straddles the start
    assert look(0x1FFC, 4) == 7  # last dword
    assert look(0x1FFF, 1) == 7  # last byte (inclusive end)
    assert look(0x1FFD, 4) is None  # straddles the end: not claimed
    assert look(0x2000, 1) is None  # one above
    assert t.lookup(IoreqType.PIO, 0x1000, 4) is None  # same address, other type
    assert t.lookup(IoreqType.WP, 0x1000, 4) is None


@given(start=st.integers(0, 1 << 40), length=st.integers(1, 1 << 20), addr=st.integers(0, (1 << 40) + (1 << 21)),
       size=st.sampled_from([1, 2, 4, 8]))
def test_range_lookup_matches_containment(start, length, addr, size):
    t = RangeTable()
    t.add(IoRange(3, IoreqType.MMIO, start, start + length - 1))
    inside = start <= addr and addr + size <= start + length
    assert (t.lookup(IoreqType.MMIO, addr, size) == 3) == inside


def test_newest_client_wins_and_removal():
    t = RangeTable()
    t.add(IoRange(1, IoreqType.MMIO, 0, 0xFFFF))
    t.add(IoRange(2, IoreqType.MMIO, 0x100, 0x1FF))
    assert t.lookup(IoreqType.MMIO, 0x100, 4) == 2
    assert t.lookup(IoreqType.MMIO, 0x200, 4) == 1
    assert not t.add(IoRange(2, IoreqType.MMIO, 0x100, 0x1FF))  # exact duplicate
    assert t.remove_client(2) == 1
    assert t.lookup(IoreqType.MMIO, 0x100, 4) == 1
    assert not t.remove(IoRange(2, IoreqType.MMIO, 0x100, 0x1FF))
    assert t.remove(IoRange(1, IoreqType.MMIO, 0, 0xFFFF)) and len(t) == 0


def test_bdf_claims_and_route():
    b = BdfTable()
    assert b.claim((0, 2, 0), 5) is None
    assert b.claim((0, 2, 0), 6) == 5  # held by another client: refused
    assert b.lookup((0, 2, 0)) == 5
    assert not b.release((0, 2, 0), 6)
    ranges = RangeTable()
    pci = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.PCI, dir=R, addr=0xCFC, size=4, bus=0, dev=2, func=0)
    assert route(ranges, b, pci) == 5
    other = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.PCI, dir=R, addr=0xCFC, size=4, bus=0, dev=3, func=0)
    assert route(ranges, b, other) is None
    assert b.remove_client(5) == 1 and route(ranges, b, pci) is None


@pytest.mark.parametrize("size,ones", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFF_FFFF), (8, 0xFFFF_FFFF_FFFF_FFFF)])
def test_fallback_value(size, ones):
    assert all_ones(size) == ones
    rd = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=R, addr=0x1234, size=size)
    wr = m.Ioreq(vm=1, vcpu=0, seq=1, kind=IoreqType.MMIO, dir=W, addr=0x1234, size=size, value=7)
    assert fallback_value(rd) == ones and fallback_value(wr) == 0


# ------------------------------------------------------------------------------ VM creation admission
from gvtsim.services.vhm.admission import CreateAdmission  # noqa: E402


def test_creation_admission_lets_a_burst_through_then_spaces_the_rest_at_the_rate() -> None:
    adm = CreateAdmission(rate=100.0, burst=4)
    waits = [round(adm.reserve(10.0), 9) for _ in range(10)]  # a boot storm: 10 creations at the same instant
    assert waits[:4] == [0.0] * 4
    assert [round(w, 6) for w in waits[4:]] == [round(0.01 * i, 6) for i in range(1, 7)]
    assert adm.delayed == 6 and adm.admitted == 10
    assert adm.reserve(20.0) == 0.0  # idle for long: the bucket refilled (no debt carried)
    assert [round(adm.reserve(20.0), 9) for _ in range(3)] == [0.0] * 3  # the burst again, not more
    assert round(adm.reserve(20.0), 9) == 0.01
    with pytest.raises(ValueError):
        CreateAdmission(rate=0)
