"""Physical GGTT: gen8 PTEs, translation, the TLB and its flush register (gvt/gtt.c, gvt/aperture_gm.c)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gvtsim.hardware.regs import GFX_FLSH_CNTL_GEN6 as GFX_FLSH_CNTL
from gvtsim.services.pgpu.ggtt import Ggtt, GgttRangeError, PageFault, pte_decode, pte_encode
from gvtsim.services.pgpu.mmio import Mmio

MIB = 1 << 20


@given(st.integers(0, (1 << 34) - 1), st.booleans())
def test_pte_roundtrip_keeps_bits_45_12(pfn: int, present: bool) -> None:
    maddr = pfn << 12
    pte = pte_encode(maddr, present)
    assert pte & 1 == int(present)
    assert pte >> 46 == 0 and pte & 0xFFE == 0
    assert pte_decode(pte) == (maddr, present)


def test_size_follows_gm() -> None:
    assert Ggtt(4096 * MIB).num_entries == 1 << 20  # 8 MiB of entries for 4 GiB (gvt/gtt.c, gvt/aperture_gm.c)
    assert Ggtt(64 * MIB).num_entries == 16384


def test_translate_present_absent_and_out_of_range() -> None:
    g = Ggtt(16 * MIB)
    g.write_batch([(5, pte_encode(0x1234_5000))])
    assert g.translate(5 << 12 | 0xABC) == 0x1234_5ABC
    with pytest.raises(PageFault) as fault:
        g.translate(6 << 12)
    assert fault.value.gma == 6 << 12
    with pytest.raises(PageFault):
        g.translate(16 * MIB)  # one past the end of the GM


def test_write_batch_is_all_or_nothing() -> None:
    g = Ggtt(16 * MIB)
    with pytest.raises(GgttRangeError):
        g.write_batch([(1, pte_encode(0x5000)), (4096, pte_encode(0x6000))])
    assert g.read(1, 1) == [0]


def test_tlb_keeps_old_translation_until_flush_register() -> None:
    g = Ggtt(16 * MIB)
    mmio = Mmio(on_flush=g.flush, on_reset=lambda engine: None)
    g.write_batch([(3, pte_encode(0xA000))])
    assert g.translate(3 << 12) == 0xA000
    g.write(3, pte_encode(0xB000))  # no flush yet: the TLB still holds the old page
    assert g.translate(3 << 12) == 0xA000
    mmio.write(GFX_FLSH_CNTL, 4, 1)
    assert g.translate(3 << 12) == 0xB000
    assert mmio.read(GFX_FLSH_CNTL) == 0  # self-clearing


def test_fill_writes_the_range_only_checks_bounds_and_flushes() -> None:
    g = Ggtt(16 * MIB)
    g.write_batch([(3, pte_encode(0x1000)), (20, pte_encode(0x2000))])
    assert g.translate(3 << 12) == 0x1000  # now cached in the TLB
    flushes = g.flushes
    scratch = pte_encode(0x7000)
    assert g.fill(3, 10, scratch) == 10
    assert g.read(2, 12) == [0] + [scratch] * 10 + [0]
    assert g.read(20)[0] == pte_encode(0x2000)  # outside the range: untouched
    assert g.flushes == flushes + 1 and g.translate(3 << 12) == 0x7000  # TLB flushed
    with pytest.raises(GgttRangeError):
        g.fill(g.num_entries - 1, 2, scratch)
    assert g.read(g.num_entries - 1)[0] == 0  # all or nothing
def test_fill_sets_exactly_the_range_flushes_and_is_all_or_nothing() -> None:
    g = Ggtt(16 * MIB)
    g.write_batch([(9, pte_encode(0xA000)), (20, pte_encode(0xC000))])
    assert g.translate(9 << 12) == 0xA000  # cached
    assert g.fill(10, 10, pte_encode(0x7000)) == 10
    assert g.read(9, 12) == [pte_encode(0xA000)] + [pte_encode(0x7000)] * 10 + [pte_encode(0xC000)]
    assert g.translate(15 << 12) == 0x7000
    g.fill(9, 1, pte_encode(0x8000))
    assert g.translate(9 << 12) == 0x8000  # the fill flushed the TLB, as gvt's update does
    with pytest.raises(GgttRangeError):
        g.fill(4090, 7, pte_encode(0x9000))  # one past the end
    assert g.read(4090, 6) == [0] * 6
