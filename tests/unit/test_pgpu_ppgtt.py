"""PPGTT walks in machine memory: legacy 32-bit (4 PDPs) and 4-level (PML4), gvt/gtt.c, gvt/page_track.c index math."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.services.common.memory import MachineMemory
from gvtsim.services.pgpu.builder import Layout, PpgttBuilder
from gvtsim.services.pgpu.ggtt import PageFault
from gvtsim.services.pgpu.ppgtt import Ppgtt, pd_index, pdp_index, pml4_index, pt_index


@pytest.fixture()
def mem(tmp_path):
    m = MachineMemory(str(tmp_path / "machine.mem"), 32 << 20, create=True)
    yield m
    m.close()


def test_index_math_matches_gvt_facts() -> None:
    gma = (0x1A5 << 39) | (0x0F3 << 30) | (0x111 << 21) | (0x1FE << 12) | 0x123
    assert (pml4_index(gma), pdp_index(gma, 4), pd_index(gma), pt_index(gma)) == (0x1A5, 0x0F3, 0x111, 0x1FE)
    assert pdp_index(gma, 3) == 0x0F3 & 3


@pytest.mark.parametrize("levels", [3, 4])
def test_walk_present_and_absent(mem, levels: int) -> None:
    lay = Layout(mem, next_mfn=mem.frames)
    pt = PpgttBuilder(lay, levels)
    target = lay.frame()
    gma = (2 << 30) | (7 << 21) | (9 << 12)  # PDP 2: exercises a non-zero L3 root index
    pt.map(gma, target)
    walker = Ppgtt(mem, levels, pt.roots if levels == 3 else pt.roots[:1])
    assert walker.translate(gma + 0x44) == target + 0x44
    for absent in (gma + 4096, gma + (1 << 21), gma - (1 << 30), gma + (1 << 30)):
        with pytest.raises(PageFault) as fault:
            walker.translate(absent)
        assert fault.value.gma == absent


def test_l3_is_32_bit_and_l4_is_48_bit(mem) -> None:
    lay = Layout(mem, next_mfn=mem.frames)
    l3, l4 = PpgttBuilder(lay, 3), PpgttBuilder(lay, 4)
    l4.map(1 << 40, lay.frame())
    with pytest.raises(PageFault, match="beyond"):
        Ppgtt(mem, 3, l3.roots).translate(1 << 32)
    assert Ppgtt(mem, 4, l4.roots[:1]).translate(1 << 40) > 0
    with pytest.raises(PageFault, match="beyond"):
        Ppgtt(mem, 4, l4.roots[:1]).translate(1 << 48)


def test_zero_root_is_not_present(mem) -> None:
    with pytest.raises(PageFault, match="root not present"):
        Ppgtt(mem, 4, (0,)).translate(0x1000)
    with pytest.raises(PageFault, match="PDP1 root"):
        Ppgtt(mem, 3, (0x5000, 0, 0, 0)).translate(1 << 30)


def test_2m_page(mem) -> None:
    lay = Layout(mem, next_mfn=mem.frames)
    pt = PpgttBuilder(lay, 4)
    pt.map(0, lay.frame())  # builds PML4 -> PDP -> PD
    pdp = mem.read_u64(pt.pml4) & ~0xFFF
    pd = mem.read_u64(pdp) & ~0xFFF
    mem.write_u64(pd + 8, 0x0060_0000 | 0x80 | 1)  # PDE 1: a 2 MiB page at machine 6 MiB
    assert Ppgtt(mem, 4, pt.roots[:1]).translate((1 << 21) + 0x12345) == 0x0060_0000 + 0x12345


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, (1 << 32) - 1).map(lambda a: a & ~0xFFF), min_size=1, max_size=12, unique=True),
       st.sampled_from([3, 4]))
def test_random_mappings_translate_back(tmp_path_factory, gmas: list[int], levels: int) -> None:
    path = tmp_path_factory.mktemp("pp") / "m.mem"
    with MachineMemory(str(path), 8 << 20, create=True) as mem:
        lay = Layout(mem, next_mfn=mem.frames)
        pt = PpgttBuilder(lay, levels)
        frames = {gma: lay.frame() for gma in gmas}
        for gma, maddr in frames.items():
            pt.map(gma, maddr)
        walker = Ppgtt(mem, levels, pt.roots)
        for gma, maddr in frames.items():
            assert walker.translate(gma | 0x7F8) == maddr | 0x7F8
