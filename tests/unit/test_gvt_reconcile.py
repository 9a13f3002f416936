"""gvt's half of reconciliation, on the core alone: the vGPU list it reports, what vhm's answer makes it
destroy and re-register, and the exactly-once answer to an ioreq vhm sends again after a reconnect."""

from __future__ import annotations

from test_gvt_fixtures import create, make_gvt, program_bar0

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt.mmio import GTT_START
from gvtsim.services.gvt.pvinfo import VGT_MAGIC, VGT_PVINFO_PAGE


def mmio(vm: int, vcpu: int, seq: int, addr: int, d: int = IoreqDir.READ, size: int = 4, value: int = 0) -> m.Ioreq:
    return m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=IoreqType.MMIO, dir=d, addr=addr, size=size, value=value)


def test_vgpu_list_has_only_the_vgpus_vhm_asked_for() -> None:
    gvt = make_gvt()
    a, b = create(gvt, 3), create(gvt, 5)
    a.owner, b.owner = "vhm", "ctl"
    assert gvt.vhm_vgpus() == [(3, a.id)]


def test_reconcile_destroys_listed_vgpus_and_re_registers_kept_ones() -> None:
    gvt = make_gvt()
    keep, drop, ctl, fresh = create(gvt, 1), create(gvt, 2), create(gvt, 3), create(gvt, 4)
    keep.owner = drop.owner = fresh.owner = "vhm"
    ctl.owner = "ctl"
    program_bar0(gvt, keep)
    keep.page_track.register(0x42, lambda *_: None)
    keep.page_track.enable(0x42)
    gvt.drain_effects()
    avail = {s.type.name: s.avail for s in gvt.types()}

    assert gvt.reconcile(keep=[1], destroy=[2, 3, 99]) == [2]  # ctl's vGPU and unknown VMs are not touched
    assert set(gvt.by_vm) == {1, 3, 4}  # 4 was created after the list went out: left alone
    assert {s.type.name: s.avail for s in gvt.types()}["GVTg_V5_4"] == avail["GVTg_V5_4"] + 1
    effects = gvt.drain_effects()
    start, end = keep.cfg.trapped
    for e in (fx.SetTrapArea(1, start, end, True), fx.InterceptBdf(1, 0, 2, 0, True),
              fx.AttachVgpu(1, keep.id, True), fx.PageTrack(1, 0x42, True)):
        assert e in effects
    assert fx.AttachVgpu(2, drop.id, False) in effects  # the destroyed one let go of its VM
    assert gvt.counters["reconcile_destroyed"] == 1


def test_an_ioreq_sent_again_is_answered_from_its_completion_once_emulated() -> None:
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    bar0 = v.cfg.bar0_base()
    pte_addr = bar0 + GTT_START + (v.resource.low_base >> 12) * 8
    assert gvt.handle_ioreq(mmio(1, 0, 7, bar0 + VGT_PVINFO_PAGE, size=8), 0.0) == VGT_MAGIC
    gvt.handle_ioreq(mmio(1, 1, 1, pte_addr, IoreqDir.WRITE, 8, 0x5000 | 1), 0.0)  # vCPU 1 sets a GGTT entry
    read = mmio(1, 0, 8, pte_addr, size=8)
    assert gvt.handle_ioreq(read, 0.0) == 0x5001
    gvt.handle_ioreq(mmio(1, 1, 2, pte_addr, IoreqDir.WRITE, 8, 0x9000 | 1), 0.0)  # and changes it
    n = gvt.counters["ioreqs"]
    assert gvt.handle_ioreq(read, 0.0) == 0x5001  # vhm re-sent vCPU 0's read: the value it completed with
    assert gvt.counters["ioreqs"] == n and gvt.counters["ioreq_replayed"] == 1
    assert gvt.handle_ioreq(mmio(1, 0, 9, pte_addr, size=8), 0.0) == 0x9001  # a new request is emulated
    gvt.destroy_vgpu(1)
    assert not [k for k in gvt.last_done if k[0] == 1]


def test_vhm_restart_destroys_its_vgpus_and_sends_only_the_physical_gpu_clean_up() -> None:
    gvt = make_gvt()
    old, ctl = create(gvt, 1), create(gvt, 2)
    old.owner, ctl.owner = "vhm", "ctl"
    program_bar0(gvt, old)
    gvt.shadow.add_frames([0x900, 0x901])
    gvt.drain_effects()
    gvt.effects.append(fx.InjectMsi(1, 0xFEE0_0000, 0x41))  # queued for the old vhm, never sent

    assert gvt.vhm_restarted() == [1]
    assert set(gvt.by_vm) == {2}  # the vGPU made with ctl stays
    effects = gvt.drain_effects()
    assert effects and all(isinstance(e, fx.PGPU_STATE_EFFECTS) for e in effects)
    assert any(isinstance(e, fx.PgpuGgttFill) for e in effects)  # its GGTT slices back to scratch
    assert gvt.shadow.frame_pool == []  # the old vhm's frames are not gvt's any more
