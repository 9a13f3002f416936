"""The MMIO table (services/gvt/mmio_info.py) against the figures read in Linux 5.14
drivers/gpu/drm/i915/gvt/handlers.c (init_generic_mmio_info + init_bdw_mmio_info + init_skl_mmio_info for
SKL/KBL), and the register table gvt builds from it."""

from __future__ import annotations

from test_gvt_fixtures import BAR0_GPA, create, make_gvt, program_bar0

from gvtsim.hardware import cmd_table
from gvtsim.services.gvt import mmio_info as mi
from gvtsim.services.gvt.handlers import F, Reg


def test_the_table_has_the_figures_of_the_source() -> None:
    """1,038 new_mmio_info rows valid on SKL (1,010 without the VCS1 ring), 2,065 tracked dwords
    (num_tracked_mmio), 192 rows with a handler, 715 / 136 / 187 from the generic / bdw / skl functions,
    and the 31-register force_nonpriv_white_list, sorted (in_whitelist bsearches it)."""
    rows = mi.MMIO_INFO
    assert len(rows) == mi.ROWS == 1038 and sum(1 for r in rows if not r.vcs2) == 1010
    assert sum(r.size // 4 for r in rows) == mi.TRACKED_DWORDS == 2065
    assert sum(1 for r in rows if r.read or r.write) == mi.ROWS_WITH_HANDLER == 192
    assert [sum(1 for r in rows if r.origin == o) for o in ("generic", "bdw", "skl")] == [715, 136, 187]
    dwords = [r.offset + 4 * i for r in rows for i in range(r.size // 4)]
    assert len(dwords) == len(set(dwords))  # new_mmio_info refuses a duplicate (-EEXIST)
    assert all(r.offset % 4 == 0 and r.size % 4 == 0 and r.offset + r.size <= 2 << 20 for r in rows)
    wl = mi.FORCE_NONPRIV_WHITELIST
    assert len(wl) == 31 and list(wl) == sorted(wl) and 0xB118 in wl and 0x64844 in wl
    by_name = {r.name: r for r in rows}
    assert by_name["RING+0x29c(rcs)"].flags == mi.F_MODE_MASK | mi.F_CMD_ACCESS | mi.F_CMD_WRITE_PATCH
    assert by_name["_MMIO(0x24d0)"].size == 48 and by_name["_MMIO(0x24d0)"].write == "force_nonpriv_write"
    assert by_name["PIPECONF(PIPE_A)"].offset == 0x70008  # display rows use the SKL pipe offsets


def test_gvt_tracks_every_dword_with_its_flags_and_status_reports_the_sizes() -> None:
    gvt = make_gvt()
    for r in mi.MMIO_INFO:
        for off in range(r.offset, r.offset + r.size, 4):
            row = gvt.table.info[off]
            assert bool(row.flags & F.CMD_ACCESS) == bool(r.flags & mi.F_CMD_ACCESS), r.name
            assert bool(row.flags & F.MODE_MASK) == bool(r.flags & mi.F_MODE_MASK), r.name
    info = gvt.status_info()
    assert info["tracked_mmio"] >= mi.TRACKED_DWORDS >= 1000 and info["cmd_table_size"] == len(cmd_table.CMD_INFO)
    assert info["cmd_table_size"] >= 220


def test_force_nonpriv_slots_take_only_whitelisted_registers() -> None:
    """handlers.c force_nonpriv_write: a slot may name a whitelisted register or RING_NOPID; else dropped."""
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x24D0, 0xB118, 4)
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x24D4, 0x2094, 4)  # RING_NOPID(RENDER_RING_BASE)
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x24D8, 0x2030, 4)  # RING_TAIL: not in the whitelist
    got = [gvt.emulate_mmio_read(v, BAR0_GPA + 0x24D0 + 4 * i, 4) for i in range(3)]
    assert got == [0xB118, 0x2094, 0] and gvt.counters["force_nonpriv_refused"] == 1 and not v.failsafe


def test_hws_pga_must_name_the_vgpus_graphics_memory() -> None:
    """handlers.c hws_pga_write: 0 or a page inside the vGPU's GM, else -EINVAL."""
    gvt = make_gvt()
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x2080, v.resource.high_base, 4)
    assert gvt.emulate_mmio_read(v, BAR0_GPA + 0x2080, 4) == v.resource.high_base and not v.failsafe
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x2080, 0x1000, 4)  # the host's GM
    assert v.failsafe


def test_another_module_attaches_handlers_to_the_declared_display_rows() -> None:
    """The display rows are declared plain; a display module overlays its handler and keeps the flags."""
    gvt = make_gvt()
    seen: list[int] = []

    def pipeconf_write(vgpu: object, offset: int, data: int, size: int) -> None:
        seen.append(data)
        vgpu.mmio.write(offset, data | (1 << 30), size)  # type: ignore[attr-defined]

    before = gvt.table.tracked_mmio
    gvt.table.overlay([Reg(0x70008, write=pipeconf_write)])
    assert gvt.table.tracked_mmio == before and gvt.table.info[0x70008].name == "PIPECONF(PIPE_A)"
    v = create(gvt, 1)
    program_bar0(gvt, v)
    gvt.emulate_mmio_write(v, BAR0_GPA + 0x70008, 1 << 31, 4)
    assert seen == [1 << 31] and gvt.emulate_mmio_read(v, BAR0_GPA + 0x70008, 4) == (1 << 31) | (1 << 30)


def test_the_engine_switch_lists_are_those_of_mmio_context_c() -> None:
    """mmio_context.c gen9_engine_mmio_list[]: 60 entries (RCS 52 distinct registers, GEN9_CTX_PREEMPT_REG
    twice; BCS 5; VCS1 1; VECS 1); 64 MOCS registers per engine from gen9_mocs_mmio_offset_list; 32 L3CC."""
    from gvtsim.services.gvt import mmio_context as mc

    rows = mc.GEN9_ENGINE_MMIO_LIST
    assert len(rows) == 60
    assert {e: len({r.offset for r in rows if r.engine == e}) for e in ("rcs", "bcs", "vcs2", "vecs")} == \
        {"rcs": 52, "bcs": 5, "vcs2": 1, "vecs": 1}
    assert mc.MOCS_BASE == {"rcs": 0xC800, "vcs": 0xC900, "vcs2": 0xCA00, "bcs": 0xCC00, "vecs": 0xCB00}
    regs = mc.engine_registers("rcs")
    assert len(regs) == 51 + 64 + 32 and (0xB118, 0) in regs and (0x229C, 0xFFFF) not in regs
    cmds = mc.switch_commands("bcs", lambda off: off, 0x1000)
    assert cmds[:4] == [mc.MI_STORE_REGISTER_MEM_GGTT, 0x2209C, 0x1000, 0]  # save first
    saved = bytes(4) * len(mc.engine_registers("bcs"))
    assert all(v == 0 for _, v in mc.saved_values("bcs", saved))


def test_a_read_handler_looked_up_before_a_row_is_added_is_not_kept() -> None:
    """The table remembers which handler serves each offset; a row laid over it later is what reads run."""
    from gvtsim.services.gvt.handlers import MmioTable, Reg, default_read

    def special(vgpu: object, offset: int, size: int) -> int:
        return 0x5A

    table = MmioTable()
    assert table.read_fn(0x2000) is default_read
    table.extend([Reg(0x2000, 4, read=special)])
    assert table.read_fn(0x2000) is special
    table.overlay([Reg(0x2000, 4, read=default_read)])
    assert table.read_fn(0x2000) is default_read


def test_the_remembered_read_handlers_stay_bounded_whatever_offsets_a_guest_reads() -> None:
    """The offsets are the guest's choice: reading every one of many distinct offsets does not grow the
    table's memory past its bound, and every read still runs the right handler."""
    from gvtsim.services.gvt.handlers import READ_FNS_MAX, MmioTable, Reg, default_read

    def special(vgpu: object, offset: int, size: int) -> int:
        return 0x5A

    table = MmioTable([Reg(0x2000, 4, read=special)])
    for off in range(0x10000, 0x10000 + 3 * READ_FNS_MAX):
        assert table.read_fn(off) is default_read
        assert len(table._read_fns) <= READ_FNS_MAX
    assert table.read_fn(0x2000) is special
