"""Conformance: behaviours that were found to differ from the real sources, each stated as the real device
model (Linux drivers/gpu/drm/i915/gvt, i915, ACRN) or the PCI spec does it. Every test names its source."""

from __future__ import annotations


import pytest
from test_gvt_cmd_parser_fixtures import Rig
from test_gvt_fixtures import BAR0_GPA, FakeMpt, create, make_gvt, program_bar0
from test_gvt_ppgtt_fixtures import Host

from gvtsim.services.common.memory import PAGE_SHIFT, PAGE_SIZE
from gvtsim.hardware import cmds
from gvtsim.hardware import regs as r
from gvtsim.hardware import pci
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt import opregion, pvinfo
from gvtsim.services.gvt.engines import BY_NAME
from gvtsim.services.gvt.gtt import pte_encode, pte_pfn, pte_present
from gvtsim.services.gvt.ppgtt import PpgttError, pdps_to_context
from gvtsim.services.gvt.sched_policy import GVT_SCHED_VGPU_PRI_TIME, TimeSlicePolicy
from gvtsim.services.gvt.types import MB, PhysicalGpu
from gvtsim.services.pgpu import main as pgpu_main

GTT = 8 << 20


# ------------------------------------------------------------------------------ EXECLIST_STATUS
def test_execlist_status_ldw_is_at_0x234_and_the_context_id_at_0x238(rig: Rig) -> None:
    """execlist.c emulate_execlist_status + execlist.h struct execlist_status_format: the status bits are
    the low dword (base + 0x234), the running context id the high dword (+ 0x238); an 8-byte read is the
    two dwords together."""
    g = rig.boot(1)
    base = g.vgpu.cfg.bar0_base() + BY_NAME["rcs"].base + r.EXECLIST_STATUS
    idle_lo = rig.gvt.emulate_mmio_read(g.vgpu, base, 4)
    assert idle_lo == 0 and rig.gvt.emulate_mmio_read(g.vgpu, base + 4, 4) == 0  # nothing running
    g.submit("rcs", cmds.store_dword(g.bo(4096).gm, 1))  # dispatched at once: element 0 runs
    el = g.vgpu.submission.execlists["rcs"]
    assert el.running is not None
    lo = rig.gvt.emulate_mmio_read(g.vgpu, base, 4)
    hi = rig.gvt.emulate_mmio_read(g.vgpu, base + 4, 4)
    # element 0 running: write pointer (bit 1), execlist 0 valid (bit 4) and active (bit 18)
    assert lo == (1 << 1) | (1 << 4) | (1 << 18)
    assert hi == el.running.ctx[0] >> 32 == 0x100  # the rig's rcs context id
    assert rig.gvt.emulate_mmio_read(g.vgpu, base, 8) == hi << 32 | lo
    assert not g.vgpu.failsafe


# ------------------------------------------------------------------------------------- BAR2
def test_bar2_sizes_to_the_aperture_which_must_be_a_power_of_two() -> None:
    """PCI Local Bus spec 6.2.5.1 (a BAR decodes a power-of-two size; software writes all ones and reads
    ~(size - 1)) and cfg_space.c emulate_pci_bar_write (BAR2 answers ~(aperture size - 1)): a 1 GB
    aperture sizes as 1 GB; a 640 MB one cannot exist, and gvt and pgpu refuse it."""
    gvt = make_gvt()
    v = create(gvt, 1)
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_2, 0xFFFF_FFFF, 4)
    gvt.emulate_cfg_write(v, pci.PCI_BASE_ADDRESS_3, 0xFFFF_FFFF, 4)
    lo = gvt.emulate_cfg_read(v, pci.PCI_BASE_ADDRESS_2, 4)
    hi = gvt.emulate_cfg_read(v, pci.PCI_BASE_ADDRESS_3, 4)
    size = (~((hi << 32 | lo) & ~0xF) + 1) & (2**64 - 1)
    assert lo & 0xF == pci.PCI_BASE_ADDRESS_MEM_TYPE_64 | pci.PCI_BASE_ADDRESS_MEM_PREFETCH
    assert size == gvt.gpu.aperture_size == 1024 * MB and size & (size - 1) == 0
    with pytest.raises(ValueError, match="power of two"):
        PhysicalGpu.from_info({"aperture_mb": 640})
    assert pgpu_main.main(["--aperture-mb", "640"]) == 2


# ------------------------------------------------------------------------------ GGTT half write
def test_the_first_half_of_a_ggtt_pte_points_the_host_entry_at_scratch_not_present() -> None:
    """gtt.c emulate_ggtt_mmio_write: a 4-byte write of an 8-byte PTE is kept on partial_pte_list and the
    host entry becomes the scratch page with present cleared; the second half builds the real entry; the
    same first half again only updates the guest entry."""
    gvt = make_gvt({1: FakeMpt({0x42: 0x777})})
    v = create(gvt, 1)
    program_bar0(gvt, v)
    index = v.resource.high_base >> PAGE_SHIFT
    off = BAR0_GPA + GTT + 8 * index
    gvt.emulate_mmio_write(v, off, pte_encode(0x42 << PAGE_SHIFT), 8)  # an old, good entry
    gvt.drain_effects()
    new = pte_encode(0x42 << PAGE_SHIFT) | (1 << 1)
    gvt.emulate_mmio_write(v, off, new & 0xFFFF_FFFF, 4)
    (w,) = [e for e in gvt.drain_effects() if isinstance(e, fx.PgpuGgttWrite)]
    ((i, host),) = w.entries
    assert i == index and not pte_present(host) and pte_pfn(host) == gvt.scratch_mfn
    assert v.gtt.host[index] == host
    gvt.emulate_mmio_write(v, off, new & 0xFFFF_FFFF, 4)  # the same half again: no host write
    assert not [e for e in gvt.drain_effects() if isinstance(e, fx.PgpuGgttWrite)]
    gvt.emulate_mmio_write(v, off + 4, new >> 32, 4)
    (w,) = [e for e in gvt.drain_effects() if isinstance(e, fx.PgpuGgttWrite)]
    assert w.entries == ((index, (new & ~(0x42 << PAGE_SHIFT)) | (0x777 << PAGE_SHIFT)),)
    assert gvt.emulate_mmio_read(v, off, 8) == new


# ------------------------------------------------------------------------------ HUGE_GTT
def _pages(host: Host, g: object, entries: dict[int, dict[int, int]]) -> None:
    """Write guest page tables: gfn -> {index: entry}, straight into the VM's RAM (not tracked yet)."""
    for gfn, table in entries.items():
        mfn = g.vgpu.mpt.gfn_to_mfn(gfn)  # type: ignore[attr-defined]
        for index, e in table.items():
            host.mem.write_u64((mfn << PAGE_SHIFT) + 8 * index, e)


def test_huge_gtt_64k_split_2m_split_1g_refused() -> None:
    """gtt.c ppgtt_populate_shadow_entry (VGT_CAPS_HUGE_GTT): a 64K PTE (PT under a PDE with IPS, every
    16th entry) is split into 16 4K shadow entries (split_64KB_gtt_entry) and the unused entries are
    ignored; a 2M PDE is split into a shadow PT of 512 4K entries (split_2MB_gtt_entry); a 1G PDPE is
    refused (-EINVAL "GVT doesn't support 1GB entry")."""
    host = Host()
    try:
        g = host.add_vm(1, ram_mb=4)
        P, RW, PS, IPS = 1, 2, 1 << 7, 1 << 11
        pml4, pdp, pd, pt, big64, big2m = 16, 17, 18, 19, 32, 512
        _pages(host, g, {
            pml4: {0: pdp << 12 | P | RW},
            pdp: {0: pd << 12 | P | RW},
            pd: {0: pt << 12 | P | RW | IPS, 1: big2m << 12 | P | RW | PS},
            pt: {0: big64 << 12 | P | RW, 1: 40 << 12 | P | RW},  # entry 1 is unused in a 64K PT
        })
        desc = 1 | (3 << 3)  # valid, 4-level
        shadow = g.vgpu.ppgtt.prepare_workload(desc, pdps_to_context((pml4 << 12, 0, 0, 0)), 1)
        mfn = g.vgpu.mpt.gfn_to_mfn
        for k in (0, 1, 7, 15):  # 64K page: 16 4K frames, gfn big64 + k, whatever guest entry k says
            assert host.shadow_walk(4, shadow, k * PAGE_SIZE) == mfn(big64 + k) << PAGE_SHIFT
        for k in (0, 1, 300, 511):  # 2M page: 512 4K frames through a shadow PT gvt built
            assert host.shadow_walk(4, shadow, (2 << 20) + k * PAGE_SIZE) == mfn(big2m + k) << PAGE_SHIFT
        # a 1G entry: the shadowing fails, so the workload fails
        _pages(host, g, {pml4 + 100: {0: (pdp + 100) << 12 | P | RW}, pdp + 100: {0: big2m << 12 | P | RW | PS}})
        with pytest.raises(PpgttError, match="1GB"):
            g.vgpu.ppgtt.prepare_workload(desc, pdps_to_context(((pml4 + 100) << 12, 0, 0, 0)), 2)
    finally:
        host.close()


# ------------------------------------------------------------------------------ failsafe errnos
def test_a_scan_error_puts_the_vgpu_in_failsafe_only_for_ebadrqc_and_efault(rig: Rig) -> None:
    """gvt.h vgpu_is_vm_unhealthy(ret) = ret == -EBADRQC || ret == -EFAULT (scheduler.c
    intel_vgpu_create_workload): an -EPERM scan error (SRM of a register other than GEN8_L3SQCREG4 /
    0x21F0) fails the submission but leaves the vGPU healthy; an -EBADRQC one puts it in failsafe."""
    a, b = rig.boot(1), rig.boot(2)
    dst = a.bo(4096)
    a.submit("rcs", [0x24 << 23 | 2 | (1 << 22), 0x2244, dst.gm, 0])  # CTX_SR_CTL: accessible, not SRM: EPERM
    assert rig.gvt.counters["cmd_scan_eperm"] == 1 and not a.vgpu.failsafe
    assert rig.gvt.counters["workload_create_failed"] == 1
    b.submit("rcs", cmds.load_register_imm([(0x44200, 0)]))  # not F_CMD_ACCESS: EBADRQC
    assert rig.gvt.counters["cmd_scan_ebadrqc"] == 1 and b.vgpu.failsafe


# ------------------------------------------------------------------------------ pri_sched
def test_a_new_vgpu_gets_two_seconds_of_priority_at_the_head_of_the_run_queue() -> None:
    """sched_policy.c tbs_sched_start_schedule (pri_sched, pri_time = now + GVT_SCHED_VGPU_PRI_TIME 2 s,
    list_add at the head), find_busy_vgpu (a pri_sched vGPU with work is picked, slice or not) and
    tbs_sched_func (it is not moved to the LRU tail); the others' balance stage is not reset."""
    p = TimeSlicePolicy()
    p.sync({1: 4}, -10.0)
    p.schedule(0.0, timer=True, has_work=lambda v: True, engines_idle=True)
    stage = p.stage_check
    p.sync({1: 4, 2: 4}, 0.5)
    assert p.lru[0] == 2 and p.data[2].pri_sched and p.data[2].left_ts == 0
    for t in (0.5, 1.0, 2.4):
        p.schedule(t, timer=False, has_work=lambda v: True, engines_idle=True)
        assert p.current == 2 and p.lru[0] == 2
    assert p.stage_check == stage  # no restart of the cycle for the newcomer
    p.schedule(0.5 + GVT_SCHED_VGPU_PRI_TIME + 0.01, timer=False, has_work=lambda v: True, engines_idle=True)
    # priority over and no slice of its own (it got none: no stage 0 since it came): no longer picked
    assert not p.data[2].pri_sched and p.data[2].allocated_ts == 0 and p.current != 2


# ------------------------------------------------------------------------------ ROM BAR
def test_rom_bar_sizing_answers_no_rom_and_an_address_write_keeps_the_bitmap_bits() -> None:
    """cfg_space.c: emulate_pci_rom_bar_write answers a sizing write ((new & PCI_ROM_ADDRESS_MASK) ==
    PCI_ROM_ADDRESS_MASK) with 0, "We don't have rom, return size of 0"; any other write goes through
    pci_cfg_space_rw_bmp (0x01, 0xf8, 0xff, 0xff: enable bit and address bits 31:11). So a guest sizes the
    ROM BAR as absent; the bitmap alone would have given 2 KB."""
    gvt = make_gvt()
    v = create(gvt, 1)
    assert gvt.emulate_cfg_read(v, pci.PCI_ROM_ADDRESS, 4) == 0  # cleared at init
    gvt.emulate_cfg_write(v, pci.PCI_ROM_ADDRESS, pci.PCI_ROM_ADDRESS_MASK, 4)
    assert gvt.emulate_cfg_read(v, pci.PCI_ROM_ADDRESS, 4) == 0
    gvt.emulate_cfg_write(v, pci.PCI_ROM_ADDRESS, 0xFEB0_07FF, 4)
    assert gvt.emulate_cfg_read(v, pci.PCI_ROM_ADDRESS, 4) == 0xFEB0_0001
    assert not v.failsafe


# ------------------------------------------------------------------------------ config space
def test_config_space_has_the_hosts_capability_chain_with_pm_and_d3_tracking() -> None:
    """cfg_space.c intel_vgpu_init_cfg_space copies the host's whole config space, then walks the chain for
    PCI_CAP_ID_PM (pmcsr_off = cap + PCI_PM_CTRL); vgpu_pci_cfg_mem_write sets d3_entered on a D3hot write;
    vgpu.c intel_gvt_reset_vgpu_locked then keeps the PPGTT and pv_notified at the DMLR and clears
    d3_entered; handlers.c elsp_mmio_write clears it too."""
    gvt = make_gvt()
    v = create(gvt, 1)
    assert v.cfg.capabilities() == [(0x40, pci.PCI_CAP_ID_VNDR), (0x70, pci.PCI_CAP_ID_EXP),
                                    (0xAC, pci.PCI_CAP_ID_MSI), (0xD0, pci.PCI_CAP_ID_PM)]
    assert gvt.emulate_cfg_read(v, pci.PCI_STATUS, 2) & pci.PCI_STATUS_CAP_LIST
    program_bar0(gvt, v)
    assert gvt.emulate_mmio_read(v, BAR0_GPA + pvinfo.MAGIC, 8) == pvinfo.VGT_MAGIC  # pv_notified
    gvt.emulate_cfg_write(v, 0xD4, pci.PCI_D3HOT, 2)
    assert v.cfg.d3_entered and gvt.emulate_cfg_read(v, 0xD4, 2) == pci.PCI_D3HOT
    gvt.emulate_cfg_write(v, 0xD4, 0, 2)  # back to D0 before the reset, as the guest's resume does
    v.reset(dmlr=True)
    assert v.pv_notified and not v.cfg.d3_entered  # kept across an S3 resume
    v.reset(dmlr=True)
    assert not v.pv_notified  # a plain DMLR forgets it


def test_command_writes_wider_than_two_bytes_are_refused() -> None:
    """cfg_space.c intel_vgpu_emulate_cfg_write: offset == PCI_COMMAND with bytes > 2 is
    drm_WARN_ON => -EINVAL (gvtsim: the access is refused and the vGPU goes to failsafe)."""
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v, enable=False)
    gvt.drain_effects()
    gvt.emulate_cfg_write(v, pci.PCI_COMMAND, pci.PCI_COMMAND_MEMORY, 4)
    assert gvt.counters["cfg_write_errors"] == 1 and v.failsafe
    assert not [e for e in gvt.drain_effects() if isinstance(e, fx.SetTrapArea)]  # nothing trapped


class RamMpt(FakeMpt):
    """FakeMpt with real bytes behind its RAM (for the OpRegion)."""

    def __init__(self, pages: int = 64) -> None:
        super().__init__({g: 0x1000 + g for g in range(pages)})
        self.ram = bytearray(pages * PAGE_SIZE)

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        return bytes(self.ram[gpa:gpa + length]) if gpa + length <= len(self.ram) else None

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        if gpa + len(data) > len(self.ram):
            return False
        self.ram[gpa:gpa + len(data)] = data
        return True


def test_asls_places_the_opregion_and_swsci_answers_capability_queries() -> None:
    """opregion.c: intel_vgpu_opregion_base_write_handler makes the guest pages at ASLS (0xFC) show GVT's
    OpRegion (intel_vgpu_init_opregion: "IntelGraphicsMem", size 8, version 2.0, MBOX_VBT);
    intel_vgpu_emulate_opregion_request on a SWSCI (0xE8) write with SCI select and a 0->1 trigger answers
    a capability query with SCIC = PARM = 0 and clears the exit status of any other function; SWSCI itself
    is not stored."""
    mpt = RamMpt()
    gvt = make_gvt({1: mpt})
    v = create(gvt, 1)
    gvt.emulate_cfg_write(v, pci.INTEL_GVT_PCI_OPREGION, 0x10000, 4)
    assert gvt.emulate_cfg_read(v, pci.INTEL_GVT_PCI_OPREGION, 4) == 0x10000
    assert mpt.ram[0x10000:0x10010] == b"IntelGraphicsMem" and mpt.ram[0x10058] == opregion.MBOX_VBT
    scic = 0x10000 + opregion.INTEL_GVT_OPREGION_SCIC
    query = (opregion.SCIC_F_GETBIOSDATA << 1) | 0x1  # GetBIOSData / supported calls, entry flag set
    mpt.ram[scic:scic + 8] = query.to_bytes(4, "little") + (0x55).to_bytes(4, "little")
    sci = opregion.SWSCI_SCI_SELECT | opregion.SWSCI_SCI_TRIGGER
    gvt.emulate_cfg_write(v, pci.INTEL_GVT_PCI_SWSCI, sci, 4)
    assert mpt.ram[scic:scic + 8] == bytes(8)
    other = (2 << 1) | 0xE0 | 0x1  # another function, exit status set
    mpt.ram[scic:scic + 4] = other.to_bytes(4, "little")
    gvt.emulate_cfg_write(v, pci.INTEL_GVT_PCI_SWSCI, sci, 4)
    assert int.from_bytes(mpt.ram[scic:scic + 4], "little") == other & ~0xE0
    assert gvt.emulate_cfg_read(v, pci.INTEL_GVT_PCI_SWSCI, 4) == 0 and v.opregion.requests == 2
    assert not v.failsafe


# ------------------------------------------------------------------------------ PVINFO layout
def test_pvinfo_keeps_acrns_pvmmio_offsets_and_gvtsims_pv_fields_do_not_overlap_them() -> None:
    """ACRN's acrn-kernel include/drm/i915_pvinfo.h struct vgt_if: enable_pvmmio 0x860, pv_mmio 0x864,
    scaler_owned 0x868, check_pending_irq 0x86C; gvtsim's shared-page fields live past them (docs/PV.md).
    A host started with i915.enable_pvmmio=0 grants nothing: enable_pvmmio reads back 0 (handlers.c
    pvinfo_mmio_write); grants are tested in test_gvt_pvmmio.py."""
    acrn = {pvinfo.ENABLE_PVMMIO, pvinfo.PV_MMIO, pvinfo.SCALER_OWNED, pvinfo.CHECK_PENDING_IRQ}
    assert sorted(o - pvinfo.VGT_PVINFO_PAGE for o in acrn) == [0x860, 0x864, 0x868, 0x86C]
    ours = [pvinfo.PV_CAPS, pvinfo.SHARED_PAGE_GPA, pvinfo.SHARED_PAGE_GPA + 4, pvinfo.PV_VERSIONS,
            pvinfo.PV_STATUS, pvinfo.PV_ENABLED]
    assert not acrn & set(ours) and min(ours) > pvinfo.CHECK_PENDING_IRQ
    assert (r.PV_CAPS, r.PV_SHARED_PAGE_GPA, r.PV_VERSIONS, r.PV_STATUS, r.PV_ENABLED) == tuple(
        o for o in ours if o != pvinfo.SHARED_PAGE_GPA + 4)
    gvt = make_gvt(enable_pvmmio=0)
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.emulate_mmio_write(v, BAR0_GPA + pvinfo.ENABLE_PVMMIO, 0x3F, 4)
    assert gvt.emulate_mmio_read(v, BAR0_GPA + pvinfo.ENABLE_PVMMIO, 4) == 0
    assert gvt.emulate_mmio_read(v, BAR0_GPA + pvinfo.VGT_CAPS, 4) == 0x1C and not v.failsafe


# ------------------------------------------------------------------------------ CSB in the HWSP
def test_the_guest_driver_waits_on_the_csb_gvt_mirrors_into_its_hwsp() -> None:
    """execlist.c emulate_csb_update writes each CSB entry and the write pointer into the guest's HWS page
    (RING_HWS_PGA, hws_pga_write) at I915_HWS_CSB_BUF0_INDEX 0x10 / I915_HWS_CSB_WRITE_INDEX 0x1f; with
    VGT_CAPS_HWSP_EMULATION the guest driver reads them there, as i915's process_csb does (no trap)."""
    from test_gvt_ppgtt_fixtures import BAR0

    from gvtsim.services.guest.i915 import VgpuDriver
    from gvtsim.services.guest.pci import PciDevice
    from gvtsim.services.guest.runtime import Done

    host = Host()
    try:
        g = host.add_vm(1, ram_mb=4)
        gpu = PciDevice(0, 2, 0, 0x8086, 0x1912, 6, 0x30000, bar0=BAR0, bar0_size=16 << 20,
                        bar2_size=host.gvt.gpu.aperture_size)
        drv = VgpuDriver(g.machine, gpu, engines=("rcs",))
        csb_reads: list[int] = []
        orig = host.gvt.emulate_mmio_read

        def counting_read(vgpu: object, gpa: int, size: int) -> int:
            if 0x2370 <= gpa - BAR0 < 0x23A4:
                csb_reads.append(gpa - BAR0)
            return orig(vgpu, gpa, size)  # type: ignore[arg-type]

        host.gvt.emulate_mmio_read = counting_read  # type: ignore[method-assign]

        host.run(drv.init())
        host.apply_effects()
        e = drv.engines["rcs"]
        assert drv.caps & r.VGT_CAPS_HWSP_EMULATION and e.hwsp is not None
        assert g.vgpu.mmio.read32(0x2080) == e.hwsp.gm  # RING_HWS_PGA
        sub = host.rt.spawn(drv.submit("rcs", [cmds.MI_NOOP], timeout=5), 0.0, "submit", 1)
        host.pump()  # the ELSP writes reach gvt, which dispatches to the (absent) GPU; the driver waits
        assert sub.outcome is None
        (w,) = host.gvt.scheduler.inflight.values()
        host.gvt.scheduler.on_gpu_event("rcs", "ctx_complete", w.id, now=0.0)  # the GPU completed it
        host.run(drv.on_msi(0xFEE0_0000, gpu.msi_vector))
        assert isinstance(sub.outcome, Done), sub.outcome
        wp = g.machine.read_u32(e.hwsp.gpa + r.HWS_CSB_WRITE)
        assert wp == g.vgpu.mmio.read32(0x23A0) & 7  # the mirror equals the CSB pointer register
        entry = g.machine.read_u32(e.hwsp.gpa + r.HWS_CSB_BUF0 + 8 * wp)
        assert entry & r.CSB_CTX_COMPLETE and e.completions == 1 and e.csb_hwsp_reads >= 1
        assert csb_reads == [] and host.gvt.counters["csb_hwsp_entries"] >= 2 and not g.vgpu.failsafe
    finally:
        host.close()


# ------------------------------------------------------------------------------ engine state switch
def test_a_register_vm_a_wrote_is_not_seen_by_vm_bs_next_workload_on_the_same_engine(rig: Rig) -> None:
    """mmio_context.c switch_mmio: when the render engine passes from vGPU A to vGPU B, the registers of
    gen9_engine_mmio_list (here GEN8_L3SQCREG4 0xB118) are saved into A's vregs and B's are loaded, so B's
    MI_STORE_REGISTER_MEM reads B's value, and A's next workload finds its own again."""
    a, b = rig.boot(1), rig.boot(2)
    da, db = a.bo(4096), b.bo(4096)
    srm = 0x24 << 23 | 2 | (1 << 22)  # MI_STORE_REGISTER_MEM (GGTT)
    a.submit("rcs", cmds.load_register_imm([(0xB118, 0xA11CE)]) + [srm, 0xB118, da.gm, 0])
    rig.pump()
    assert a.u32(da.gpa) == 0xA11CE  # A sees its own write
    b.submit("rcs", [srm, 0xB118, db.gm, 0])
    rig.pump()
    assert b.u32(db.gpa) == b.vgpu.mmio.read32(0xB118) != 0xA11CE  # B sees its own (initial) value
    assert a.vgpu.mmio.read32(0xB118) == 0xA11CE  # saved into A's vregs at the switch
    a.submit("rcs", [srm, 0xB118, da.gm + 4, 0])
    rig.pump()
    assert a.u32(da.gpa + 4) == 0xA11CE  # restored for A
    assert rig.gvt.counters["mmio_switches"] == 3 and not a.vgpu.failsafe and not b.vgpu.failsafe


def test_a_restore_inhibit_context_gets_its_in_context_registers_from_the_vregs(rig: Rig) -> None:
    """mmio_context.c restore_context_mmio_for_inhibit / is_inhibit_context: a context whose
    CTX_CONTEXT_CONTROL has RESTORE_INHIBIT masked-enabled restores nothing from its image, so the
    in-context registers (here GEN7_HALF_SLICE_CHICKEN1 0xE100, masked) are loaded from the vregs with LRI
    before its commands, even when the engine does not change owner."""
    a = rig.boot(1)
    a.submit("rcs", [cmds.MI_NOOP])  # the first dispatch: the engine passes to A
    rig.pump()
    a.vgpu.mmio.write32(0xE100, 0x55)  # what A's vreg holds (e.g. from an LRI in its indirect context)
    ctx, _, _ = a.context("rcs")
    a.write(ctx.gpa + 4096 + 0x0C, [1 << 16 | 1])  # CTX_CONTEXT_CONTROL: RESTORE_INHIBIT
    rig.pgpu.mmio.set(0xE100, 0xBAD)  # type: ignore[union-attr]  # stale hardware value
    a.submit("rcs", [cmds.MI_NOOP])  # same owner, but an inhibit context
    rig.pump()
    assert rig.gvt.counters["mmio_inhibit_restores"] == 1
    assert rig.pgpu.mmio.read(0xE100) & 0xFFFF == 0x55  # type: ignore[union-attr]


def test_the_context_image_the_gpu_saved_is_written_back_to_the_guest(rig: Rig) -> None:
    """scheduler.c update_guest_context: after completion the shadow ring-context page past
    struct execlist_ring_context (0xD0 bytes) is copied back to the guest's context."""
    a = rig.boot(1)
    a.submit("rcs", [cmds.MI_NOOP])
    (w,) = rig.gvt.scheduler.inflight.values()
    sh = rig.gvt.shadow.contexts[(a.vgpu.id, "rcs")]
    rig.mem.write(sh.maddr(1) + 0x100, (0x5EED_0001).to_bytes(4, "little"))  # state the GPU saved
    rig.pump()
    ctx, _, _ = a.context("rcs")
    assert a.u32(ctx.gpa + 4096 + 0x100) == 0x5EED_0001
    assert a.u32(ctx.gpa + 4096 + r.CTX_RB_START_VAL) == a.contexts["rcs"][1].gm  # shadowed fields untouched
