"""MMIO dispatch, the register table's rules, and bad input (gvt/gtt.c, gvt/aperture_gm.c, gvt/vgpu.c)."""

from __future__ import annotations

import pytest
from hypothesis import given as _given
from hypothesis import settings as _settings
from hypothesis import strategies as _st
from test_gvt_fixtures import create, make_gvt, masked, program_bar0, rd, wr

from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt.effects import InjectMsi, PgpuMmioWrite
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO, F, MmioTable, Reg, default_regs
from gvtsim.services.gvt.mmio import GEN8_MMIO_RESET_OFFSET, MMIO_SIZE, MmioState
from gvtsim.services.gvt.errors import FailsafeReason

UNTRACKED = 0x1234_0  # inside the 2 MB, no handler


def setup():  # type: ignore[no-untyped-def]
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.drain_effects()
    return gvt, v


def test_untracked_registers_read_back_what_was_written() -> None:
    gvt, v = setup()
    wr(gvt, v, UNTRACKED, 0xCAFEF00D)
    assert rd(gvt, v, UNTRACKED) == 0xCAFEF00D
    assert rd(gvt, v, UNTRACKED, 2) == 0xF00D and rd(gvt, v, UNTRACKED + 2, 2) == 0xCAFE
    wr(gvt, v, UNTRACKED, 0x1122334455667788, 8)
    assert rd(gvt, v, UNTRACKED + 4) == 0x11223344


def test_dispatch_uses_the_bar0_base_from_config_space() -> None:
    gvt, v = setup()
    wr(gvt, v, UNTRACKED, 7)
    gvt.emulate_cfg_write(v, 0x10, 0xD000_0000, 4)  # the guest moves BAR0
    assert gvt.emulate_mmio_read(v, 0xD000_0000 + UNTRACKED, 4) == 7


@pytest.mark.parametrize("offset,size", [(UNTRACKED + 2, 4), (UNTRACKED + 4, 8), (UNTRACKED + 1, 2),
                                         ((2 << 20) - 4, 8), (UNTRACKED, 16)])
def test_unaligned_or_oversized_access_is_failsafe_for_that_vgpu_alone(offset: int, size: int) -> None:
    gvt, v = setup()
    other = create(gvt, 2, "GVTg_V5_8")
    assert rd(gvt, v, offset, size) == (1 << (8 * min(size, 8))) - 1
    assert v.failsafe and v.failsafe_reason == FailsafeReason.GUEST_ERR
    assert not other.failsafe and gvt.counters["mmio_read_errors"] == 1


def test_holes_in_bar0_are_ignored() -> None:
    gvt, v = setup()
    wr(gvt, v, 3 << 20, 5)  # between the registers and the GGTT
    assert rd(gvt, v, 3 << 20) == 0
    assert gvt.emulate_mmio_read(v, 0x1000, 4) == 0  # below BAR0
    assert not v.failsafe and gvt.counters["mmio_hole_write"] == 1


def test_read_only_register_writes_are_ignored() -> None:
    gvt, v = setup()
    csb = 0x2370  # RING_CONTEXT_STATUS_BUF(rcs): F_RO, ro_mask ~0 in handlers.c
    before = rd(gvt, v, csb)
    wr(gvt, v, csb, 0xFFFF)
    assert rd(gvt, v, csb) == before and gvt.counters["mmio_ro_write"] == 1 and not v.failsafe


def test_partial_read_only_mask_keeps_those_bits() -> None:
    table = MmioTable([Reg(0x5000, ro_mask=0xFF00)])
    gvt, v = setup()
    gvt.table = table
    v.mmio.write32(0x5000, 0xAB00)
    wr(gvt, v, 0x5000, 0x1234)
    assert rd(gvt, v, 0x5000) == 0xAB34


def test_forcewake_is_masked_and_acked_at_once() -> None:
    gvt, v = setup()
    wr(gvt, v, 0xA278, masked(0x1))
    assert rd(gvt, v, 0x0D84) == 0x1
    wr(gvt, v, 0xA278, masked(0x1, enable=False))
    assert rd(gvt, v, 0x0D84) == 0


def test_ring_reset_ctl_reports_ready_to_reset() -> None:
    gvt, v = setup()
    off = eng.BY_NAME["rcs"].base + eng.RING_RESET_CTL
    wr(gvt, v, off, masked(eng.RESET_CTL_REQUEST_RESET))
    assert rd(gvt, v, off) & eng.RESET_CTL_READY_TO_RESET
    wr(gvt, v, off, masked(eng.RESET_CTL_REQUEST_RESET, enable=False))
    assert not rd(gvt, v, off) & eng.RESET_CTL_READY_TO_RESET


def test_fence_write_programs_the_host_fence_the_vgpu_owns() -> None:
    gvt, v = setup()
    rd(gvt, v, 0x78050)  # read PVINFO fence_num first, as i915 does
    wr(gvt, v, FENCE_REG_GEN6_LO + 8 * 2 + 4, 0xAAAA)  # vGPU fence 2, high dword
    wr(gvt, v, FENCE_REG_GEN6_LO + 8 * 2, 0x1001)
    host = FENCE_REG_GEN6_LO + 8 * v.resource.fences[2]
    assert gvt.drain_effects()[-1] == PgpuMmioWrite(host, 8, 0xAAAA_0000_1001)
    assert rd(gvt, v, FENCE_REG_GEN6_LO + 8 * 2, 8) == 0xAAAA_0000_1001


def test_gdrst_engine_reset_keeps_the_other_state_and_acks() -> None:
    gvt, v = setup()
    rd(gvt, v, 0x78000, 8)
    wr(gvt, v, UNTRACKED, 0x55)  # an engine-range register below 0x44200
    wr(gvt, v, irq.GROUP_BY_NAME["GT0"].base + irq.IER, 0xFF)
    wr(gvt, v, eng.GDRST, 1 << 1)  # GRDOM_RENDER
    assert rd(gvt, v, eng.GDRST) == 0  # acknowledged at once
    assert v.submission.resets == {"rcs": 1}
    assert rd(gvt, v, UNTRACKED) == 0x55  # not a full reset: registers untouched
    assert v.pv_notified and not v.failsafe


def test_gdrst_full_restores_engine_registers_but_not_interrupts() -> None:
    gvt, v = setup()
    rd(gvt, v, 0x78000, 8)
    mode = eng.BY_NAME["rcs"].base + eng.RING_MODE
    wr(gvt, v, mode, masked(eng.GFX_RUN_LIST_ENABLE))
    wr(gvt, v, UNTRACKED, 0x55)
    wr(gvt, v, irq.GROUP_BY_NAME["GT0"].base + irq.IER, 0xFF)
    wr(gvt, v, eng.GDRST, 1 << 0)  # GRDOM_FULL
    assert set(v.submission.resets) == {e.name for e in eng.ENGINES}
    assert rd(gvt, v, UNTRACKED) == 0 and rd(gvt, v, mode) == 0  # [0, 0x44200) restored
    assert rd(gvt, v, irq.GROUP_BY_NAME["GT0"].base + irq.IER) == 0xFF  # >= 0x44200 untouched
    assert v.submission.execlist_enabled == set()  # execlists off until re-enabled
    assert rd(gvt, v, 0x78000, 8) == 0x4776544776544776 and v.pv_notified  # PVINFO repopulated


def test_gdrst_guc_bit_sets_mia_in_reset() -> None:
    gvt, v = setup()
    wr(gvt, v, eng.GDRST, eng.GDRST_GUC)
    assert rd(gvt, v, eng.GUC_STATUS) & eng.GS_MIA_IN_RESET


def test_failsafe_mmio_is_plain_memory_and_handlers_do_not_run() -> None:
    gvt, v = setup()
    cap = v.cfg.gpu.msi_cap
    gvt.emulate_cfg_write(v, cap + 2, 1, 2)
    v.enter_failsafe(FailsafeReason.GUEST_ERR, "test")
    wr(gvt, v, irq.GROUP_BY_NAME["GT0"].base + irq.IER, 0xFFFF_FFFF)
    wr(gvt, v, irq.GEN8_MASTER_IRQ, 0xFFFF_FFFF)  # stored as is, no master semantics, no MSI
    assert rd(gvt, v, irq.GEN8_MASTER_IRQ) == 0xFFFF_FFFF
    wr(gvt, v, UNTRACKED + 1, 0xAB, 1)  # unaligned is fine in failsafe
    assert rd(gvt, v, UNTRACKED + 1, 1) == 0xAB
    assert not any(isinstance(e, InjectMsi) for e in gvt.drain_effects())


def test_table_is_declarative_and_extensible() -> None:
    table = MmioTable(default_regs())
    mode = eng.BY_NAME["vecs"].base + eng.RING_MODE
    assert table.info[mode].flags & F.MODE_MASK and table.info[mode].flags & F.CMD_ACCESS
    assert eng.BY_NAME["rcs"].base + eng.RING_ELSP not in table.info  # the next issue adds it
    seen = []
    table.extend([Reg(0x2230, write=lambda v, o, d, s: seen.append((o, d)))])
    gvt, v = setup()
    gvt.table = table
    wr(gvt, v, 0x2230, 0x42)
    assert seen == [(0x2230, 0x42)]


# ------------------------------------------------------------------------ compact vreg (copy-on-write)
_SNAPSHOT = bytes(range(256)) * (MMIO_SIZE // 256)


@_given(_st.lists(_st.one_of(
    _st.tuples(_st.just("w"), _st.integers(0, MMIO_SIZE - 8), _st.sampled_from([1, 2, 4, 8]),
               _st.integers(0, 2**64 - 1)),
    _st.tuples(_st.just("gt"), _st.just(0), _st.just(0), _st.just(0)),
    _st.tuples(_st.just("dmlr"), _st.just(0), _st.just(0), _st.just(0))), max_size=40))
@_settings(deadline=None, max_examples=60)
def test_vreg_pages_behave_like_a_full_2mb_copy(ops) -> None:
    snapshot = _SNAPSHOT
    state, model = MmioState(snapshot), bytearray(snapshot)
    for op, off, size, val in ops:
        if op == "w":
            state.write(off, val, size)
            model[off:off + size] = (val & ((1 << 8 * size) - 1)).to_bytes(size, "little")
        elif op == "gt":
            state.reset(False)
            model[:GEN8_MMIO_RESET_OFFSET] = snapshot[:GEN8_MMIO_RESET_OFFSET]
        else:
            state.reset(True)
            model[:] = snapshot
        for o, n in ((off, size or 4), (max(0, off - 3), 8), (GEN8_MMIO_RESET_OFFSET - 4, 8), (0xFFC, 8)):
            assert state.read(o, n) == int.from_bytes(model[o:o + n], "little")
    assert state.pages_written <= len(ops) * 2  # only written pages are held (2 when a write straddles)
