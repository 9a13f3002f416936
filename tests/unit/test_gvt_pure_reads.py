"""Reads that change nothing are not recorded before they are answered (mmio.read_is_pure).

gvt records a vGPU's state before it answers an ioreq that may have changed it (state.py), so that a
restarted gvt carries on from what the guest saw. A read that changes nothing, emulated again after a
restart, returns what it returned the first time: it need not wait for a record. These tests hold the
classification against the recorder itself: a read the core leaves out of ``touched`` must leave nothing
for the recorder to write but the completion it remembers.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gvt_fixtures import create, make_gvt, program_bar0

from gvtsim.hardware.regs import MMIO_SIZE, PV_MAGIC, PV_PV_MMIO
from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.gvt import state as gs
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt import engines as eng
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.mmio import GTT_START
from gvtsim.services.gvt.vgpu import Vgpu

SEQ = iter(range(1, 1 << 30))


def access(gvt: Gvt, v: Vgpu, offset: int, write: bool = False, value: int = 0, size: int = 4) -> int:
    req = m.Ioreq(vm=v.vm, vcpu=0, seq=next(SEQ), kind=IoreqType.MMIO,
                  dir=IoreqDir.WRITE if write else IoreqDir.READ, addr=v.cfg.bar0_base() + offset,
                  size=size, value=value)  # type: ignore[arg-type]
    return gvt.handle_ioreq(req, 0.0)


def fresh() -> tuple[Gvt, Vgpu]:
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.touched.clear()
    return gvt, v


def touched_by(gvt: Gvt, v: Vgpu, offset: int, **kw: object) -> bool:
    gvt.touched.clear()
    access(gvt, v, offset, **kw)  # type: ignore[arg-type]
    return v.id in gvt.touched


def test_writes_touch_plain_reads_do_not() -> None:
    gvt, v = fresh()
    assert touched_by(gvt, v, FENCE_REG_GEN6_LO, write=True, value=0x1001)
    assert not touched_by(gvt, v, FENCE_REG_GEN6_LO)  # fence_read: the vreg
    assert not touched_by(gvt, v, GTT_START)  # the guest's GGTT entry
    assert not touched_by(gvt, v, 0x7F000)  # a hole in the register range


def test_the_first_pvinfo_read_touches_the_next_do_not() -> None:
    gvt, v = fresh()
    assert not v.pv_notified
    assert touched_by(gvt, v, PV_MAGIC)  # sets pv_notified
    assert v.pv_notified
    assert not touched_by(gvt, v, PV_MAGIC)
    assert touched_by(gvt, v, PV_PV_MMIO)  # reads another register through its own handler


def test_a_read_with_a_side_effect_touches_and_the_recorder_sees_it() -> None:
    gvt, v = fresh()
    v.mmio.write32(eng.GUC_STATUS, eng.GS_MIA_IN_RESET)  # as a GuC reset request leaves it
    rec = gs.VgpuRecorder(v)
    rec.full(ept_root=1, ram_mb=64)
    assert touched_by(gvt, v, eng.GUC_STATUS)  # guc_status_read clears MIA_IN_RESET once read
    assert "vregs_chunks" in (rec.delta() or {})


def test_a_read_that_enters_failsafe_touches() -> None:
    gvt, v = fresh()
    assert touched_by(gvt, v, FENCE_REG_GEN6_LO + 8 * 31)  # beyond its fences, before PVINFO: failsafe
    assert v.failsafe


def _offsets() -> list[int]:
    gvt, _ = fresh()
    regs = sorted({off & ~3 for off in gvt.table.info})
    return regs + [b.start + o for b in gvt.table.blocks for o in range(0, b.size, 4)]


OFFSETS = _offsets()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reads=st.lists(st.tuples(st.one_of(st.sampled_from(OFFSETS), st.integers(0, MMIO_SIZE // 4 - 1).map(
    lambda i: 4 * i)), st.sampled_from([4, 8])), min_size=1, max_size=30), notified=st.booleans())
def test_a_read_left_untouched_leaves_nothing_to_record(reads: list[tuple[int, int]], notified: bool) -> None:
    """Every tracked register and block dword, and random offsets: a read the core does not mark changed
    must leave the recorder (state.py) nothing to write but the completion itself."""
    gvt, v = fresh()
    if notified:
        access(gvt, v, PV_MAGIC)
    rec = gs.VgpuRecorder(v)
    rec.full(ept_root=1, ram_mb=64)
    for offset, size in reads:
        gvt.touched.clear()
        access(gvt, v, offset, size=size)
        delta = rec.delta() or {}
        delta.pop("last_done", None)
        if v.id not in gvt.touched:
            assert delta == {}, f"a read of {offset:#x} ({size} bytes) was taken as pure but changed {sorted(delta)}"
