"""Conformance: gen8 GGTT PTEs and GGTT emulation through BAR0 + 8 MB (gvt/gtt.c, gvt/aperture_gm.c)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_gvt_fixtures import SCRATCH_MFN, FakeMpt, create, make_gvt, program_bar0, rd, wr

from gvtsim.services.common.ept import ROOT_FRAMES, Ept
from gvtsim.services.common.memory import FrameAllocator, MachineMemory
from gvtsim.services.gvt import gtt
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.effects import PgpuGgttFill, PgpuGgttWrite
from gvtsim.services.gvt.mpt import EptMpt
from gvtsim.services.gvt.errors import FailsafeReason

GTT = 8 << 20  # GGTT at BAR0 + 8 MB


# ------------------------------------------------------------------------------------- PTE format
def test_pte_format_constants() -> None:
    assert gtt.GEN8_PAGE_PRESENT == 1
    assert gtt.ADDR_4K_MASK == sum(1 << b for b in range(12, 46))  # GENMASK_ULL(45, 12)
    assert gtt.pte_encode(0x1234_5000) == 0x1234_5001  # the guest's addr | PRESENT


@given(pfn=st.integers(0, (1 << 34) - 1), flags=st.integers(0, (1 << 64) - 1))
def test_pte_pfn_roundtrip_keeps_flags(pfn: int, flags: int) -> None:
    pte = gtt.pte_set_pfn(flags, pfn)
    assert gtt.pte_pfn(pte) == pfn
    assert pte & ~gtt.ADDR_4K_MASK == flags & ~gtt.ADDR_4K_MASK  # every non-address bit kept
    assert gtt.pte_present(pte) == bool(flags & 1)


@given(addr=st.integers(0, (1 << 46) - 1))
def test_guest_encode_decodes_to_its_page(addr: int) -> None:
    pte = gtt.pte_encode(addr)
    assert gtt.pte_present(pte) and gtt.pte_pfn(pte) == addr >> 12


# ---------------------------------------------------------------------------------- emulation
def ggtt_writes(gvt: Gvt) -> list[tuple[int, int]]:
    return [en for e in gvt.drain_effects() if isinstance(e, PgpuGgttWrite) for en in e.entries]


def setup(frames: dict[int, int] | None = None):  # type: ignore[no-untyped-def]
    mpt = FakeMpt(dict(frames or {0x100: 0x9100, 0x101: 0x9101}))
    gvt = make_gvt({1: mpt})
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.drain_effects()
    return gvt, v


def test_8_byte_write_builds_host_entry_with_the_mfn_at_the_same_index() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    guest = gtt.pte_encode(0x100 << 12) | 0x6  # flags other than present are kept
    wr(gvt, v, GTT + 8 * index, guest, 8)
    assert ggtt_writes(gvt) == [(index, (0x9100 << 12) | 0x7)]
    assert rd(gvt, v, GTT + 8 * index, 8) == guest  # reads return the guest's value
    assert rd(gvt, v, GTT + 8 * index + 4, 4) == guest >> 32


def test_4_byte_halves_are_merged_before_the_host_entry_is_written() -> None:
    gvt, v = setup({0x1_0000_0: 0x77})  # a gfn above 4 GB needs both halves
    index = v.resource.high_base >> 12
    guest = gtt.pte_encode(0x1_0000_0 << 12)
    wr(gvt, v, GTT + 8 * index, guest & 0xFFFF_FFFF, 4)
    # only the first half: recorded; the host entry is the scratch page, not present (gtt.c partial_update)
    assert ggtt_writes(gvt) == [(index, SCRATCH_MFN << 12)]
    assert rd(gvt, v, GTT + 8 * index, 4) == guest & 0xFFFF_FFFF
    wr(gvt, v, GTT + 8 * index + 4, guest >> 32, 4)
    assert ggtt_writes(gvt) == [(index, (0x77 << 12) | 1)]
    assert rd(gvt, v, GTT + 8 * index, 8) == guest


def test_high_half_first_also_merges() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    wr(gvt, v, GTT + 8 * index + 4, 0, 4)
    assert ggtt_writes(gvt) == [(index, SCRATCH_MFN << 12)]
    wr(gvt, v, GTT + 8 * index, gtt.pte_encode(0x101 << 12), 4)
    assert ggtt_writes(gvt) == [(index, (0x9101 << 12) | 1)]


def test_entries_outside_the_vgpu_ranges_are_ignored_and_read_zero() -> None:
    gvt, v = setup()
    for index in (0, (v.resource.low_base >> 12) - 1, (v.resource.high_base >> 12) - 1):  # host's / others'
        wr(gvt, v, GTT + 8 * index, gtt.pte_encode(0x100 << 12), 8)
        assert rd(gvt, v, GTT + 8 * index, 8) == 0
    assert ggtt_writes(gvt) == [] and gvt.counters["ggtt_write_out_of_range"] == 3 and not v.failsafe


def test_gfn_outside_the_vm_becomes_the_scratch_page() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    guest = gtt.pte_encode(0xBAD_000 << 12)
    wr(gvt, v, GTT + 8 * index, guest, 8)
    assert ggtt_writes(gvt) == [(index, (SCRATCH_MFN << 12) | 1)]
    assert rd(gvt, v, GTT + 8 * index, 8) == guest and not v.failsafe


def test_non_present_entry_maps_scratch_with_present_cleared() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    wr(gvt, v, GTT + 8 * index, 0x100 << 12, 8)  # present bit clear
    assert ggtt_writes(gvt) == [(index, SCRATCH_MFN << 12)]


@pytest.mark.parametrize("off,size", [(2, 4), (0, 2), (0, 1), (1, 8)])
def test_bad_ggtt_access_is_failsafe_for_that_vgpu(off: int, size: int) -> None:
    gvt, v = setup()
    other = create(gvt, 2, "GVTg_V5_8")
    index = v.resource.low_base >> 12
    assert rd(gvt, v, GTT + 8 * index + off, size) == (1 << (8 * size)) - 1
    assert v.failsafe and not other.failsafe


def test_8_byte_access_at_a_4_aligned_offset_covers_two_halves() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    wr(gvt, v, GTT + 8 * index, gtt.pte_encode(0x100 << 12), 4)  # low half of entry i
    wr(gvt, v, GTT + 8 * index + 4, 0, 8)  # high half of i + low half of i+1
    assert ggtt_writes(gvt) == [(index, SCRATCH_MFN << 12), (index, (0x9100 << 12) | 1),
                                (index + 1, SCRATCH_MFN << 12)]  # i+1 waits for its other half
    assert not v.failsafe


def test_create_destroy_and_dmlr_fill_the_vgpu_slices_with_scratch() -> None:
    gvt = make_gvt()
    v = create(gvt, 1, "GVTg_V5_8")
    fills = [e for e in gvt.drain_effects() if isinstance(e, PgpuGgttFill)]
    scratch = gtt.scratch_pte(SCRATCH_MFN)
    assert scratch == (SCRATCH_MFN << 12) | 1
    assert fills == [PgpuGgttFill(v.resource.low_base >> 12, (64 << 20) >> 12, scratch),
                     PgpuGgttFill(v.resource.high_base >> 12, (384 << 20) >> 12, scratch)]
    gvt.reset_vgpu(1)
    assert [e for e in gvt.drain_effects() if isinstance(e, PgpuGgttFill)] == fills
    gvt.destroy_vgpu(1)
    assert [e for e in gvt.drain_effects() if isinstance(e, PgpuGgttFill)] == fills


def test_new_scratch_page_rewrites_every_vgpu_entry() -> None:
    gvt, v = setup()
    index = v.resource.low_base >> 12
    wr(gvt, v, GTT + 8 * index, gtt.pte_encode(0x100 << 12), 8)
    wr(gvt, v, GTT + 8 * (index + 1), gtt.pte_encode(0xBAD << 12), 8)
    gvt.drain_effects()
    gvt.set_scratch_mfn(0x42)
    out = gvt.drain_effects()
    assert [e.pte for e in out if isinstance(e, PgpuGgttFill)] == [gtt.scratch_pte(0x42)] * 2
    assert ggtt_writes_from(out) == [(index, (0x9100 << 12) | 1), (index + 1, (0x42 << 12) | 1)]


def ggtt_writes_from(effects: list) -> list[tuple[int, int]]:
    return [en for e in effects if isinstance(e, PgpuGgttWrite) for en in e.entries]


def test_failsafe_ggtt_is_plain_memory() -> None:
    gvt, v = setup()
    v.enter_failsafe(FailsafeReason.GUEST_ERR, "test")
    wr(gvt, v, GTT + 8, 0xAB, 1)  # any size, any offset, even outside the slices
    assert rd(gvt, v, GTT + 8, 8) == 0xAB and ggtt_writes(gvt) == []


# ------------------------------------------------------------------- the real MPT over a real EPT
def test_ept_mpt_translates_through_machine_memory(tmp_path: Path) -> None:
    mem = MachineMemory(str(tmp_path / "machine.mem"), size=8 << 20, create=True)
    alloc = FrameAllocator(mem.frames)
    root = alloc.alloc(ROOT_FRAMES, "vm1", contiguous=True)[0].mfn

    def table() -> int:
        return alloc.alloc(1, "vm1")[0].mfn

    ept = Ept(mem, root, alloc_table=table)
    ram = alloc.alloc(16, "vm1", from_top=True)  # 16 frames of guest RAM, not identity-mapped
    gfn = 0
    for run in ram:
        ept.map(gfn, run.mfn, run.count)
        gfn += run.count
    mpt = EptMpt(mem, root, ram_mb=1)
    first_mfn = ram[0].mfn
    assert mpt.gfn_to_mfn(0) == first_mfn != 0
    assert mpt.is_valid_gfn(15) and not mpt.is_valid_gfn(16) and not mpt.is_valid_gfn(1 << 30)
    assert mpt.write_gpa(0xFFC, b"12345678") and mpt.read_gpa(0xFFC, 8) == b"12345678"  # crosses a page
    assert mpt.read_gpa(16 << 12, 4) is None

    gvt = Gvt(mpt_factory=lambda vm, r, ram_mb: EptMpt(mem, r, ram_mb), scratch_mfn=SCRATCH_MFN)
    v = gvt.create_vgpu(1, "GVTg_V5_8", ept_root=root, ram_mb=1, now=0.0)
    assert not isinstance(v, Exception) and hasattr(v, "gtt")
    program_bar0(gvt, v)  # type: ignore[arg-type]
    gvt.drain_effects()
    index = v.resource.low_base >> 12  # type: ignore[union-attr]
    wr(gvt, v, GTT + 8 * index, gtt.pte_encode(3 << 12), 8)  # type: ignore[arg-type]
    wr(gvt, v, GTT + 8 * (index + 1), gtt.pte_encode(16 << 12), 8)  # type: ignore[arg-type]
    assert ggtt_writes(gvt) == [(index, (mpt.gfn_to_mfn(3) << 12) | 1), (index + 1, (SCRATCH_MFN << 12) | 1)]
    mem.close()
