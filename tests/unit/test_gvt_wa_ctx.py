"""The render context's workaround batches: the indirect-ctx buffer (RCS_INDIRECT_CTX) and the per-ctx batch
(BB_PER_CTX_PTR) are shadowed and scanned like the ring (Linux gvt/cmd_parser.c intel_gvt_scan_and_shadow_wa_ctx,
shadow_indirect_ctx, combine_wa_ctx, scan_wa_ctx; gvt/scheduler.c intel_vgpu_create_workload,
prepare_shadow_wa_ctx, update_wa_ctx_2_shadow_ctx), and pgpu runs the shadows at context restore."""

from __future__ import annotations


import pytest
from test_gvt_cmd_parser_fixtures import Bo, Guest, Rig

from gvtsim.services.common.memory import PAGE_SIZE
from gvtsim.hardware import cmds
from gvtsim.hardware import regs
from gvtsim.services.gvt.errors import FailsafeReason

GDRST = 0x941C  # not F_CMD_ACCESS: a command buffer may not touch it (handlers.c)
INDIRECT_CTX_OFFSET = 0x26 << 6  # i915 gen9 CTX_RCS_INDIRECT_CTX_OFFSET_DEFAULT, shifted as the register holds it


def _padded(dws: list[int]) -> list[int]:
    """A whole number of cachelines (16 dwords), MI_NOOP padded, as i915 builds its indirect-ctx buffer."""
    return dws + [cmds.MI_NOOP] * (-len(dws) % 16)


def _program_wa(g: Guest, engine: str, indirect: Bo | None, lines: int, per_ctx: Bo | None) -> None:
    """The guest's context image: RCS_INDIRECT_CTX = address | size in cachelines, its offset, and
    BB_PER_CTX_PTR = address | valid."""
    ctx, _, _ = g.context(engine)
    state = ctx.gpa + PAGE_SIZE
    g.write(state + regs.CTX_RCS_INDIRECT_CTX_VAL, [(indirect.gm | lines) if indirect else 0])
    g.write(state + regs.CTX_RCS_INDIRECT_CTX_OFFSET_VAL, [INDIRECT_CTX_OFFSET])
    g.write(state + regs.CTX_BB_PER_CTX_PTR_VAL, [(per_ctx.gm | 1) if per_ctx else 0])


def test_indirect_ctx_and_per_ctx_batch_run_at_restore_from_their_checked_shadows(rig: Rig) -> None:
    g = rig.boot(1)
    ind, per, dst = g.bo(4096), g.bo(4096), g.bo(4096)
    g.submit("rcs", [cmds.MI_NOOP])  # the engine becomes this vGPU's: the next workload needs no switch
    rig.pump()
    body = _padded(cmds.store_dword(dst.gm, 0x11) + cmds.store_dword(dst.gm + 12, 0x44))
    g.write(ind.gpa, body)
    g.write(per.gpa, cmds.store_dword(dst.gm + 4, 0x22) + [cmds.MI_BATCH_BUFFER_END])
    _program_wa(g, "rcs", ind, len(body) // 16, per)
    g.submit("rcs", cmds.store_dword(dst.gm + 8, 0x33))
    (w,) = rig.gvt.scheduler.inflight.values()
    wa = w.wa
    assert wa is not None and (wa.indirect_gma, wa.indirect_size, wa.per_ctx_gma, wa.per_ctx_valid) == \
        (ind.gm, 64, per.gm, True)
    # the shadow context points at gvt's copies in host GM (outside the vGPU's GM), size / valid bits kept
    for gma in (wa.indirect_shadow_gma, wa.per_ctx_shadow_gma):
        assert gma >= rig.gvt.gpu.aperture_size and not g.vgpu.resource.contains(gma)
    assert wa.per_ctx_shadow_gma % PAGE_SIZE == 0 and wa.indirect_shadow_gma % 64 == 0
    sh = rig.gvt.shadow.contexts[(g.vgpu.id, "rcs")]
    u32 = rig.mem.read_u32
    assert u32(sh.maddr(1) + regs.CTX_RCS_INDIRECT_CTX_VAL) == wa.indirect_shadow_gma | 1
    assert u32(sh.maddr(1) + regs.CTX_BB_PER_CTX_PTR_VAL) == wa.per_ctx_shadow_gma | 1
    assert u32(sh.maddr(1) + regs.CTX_RCS_INDIRECT_CTX_OFFSET_VAL) == INDIRECT_CTX_OFFSET
    # the guest rewrites both buffers after ELSP: the GPU runs the copies that were scanned
    g.write(ind.gpa, _padded(cmds.load_register_imm([(GDRST, 1)])))
    g.write(per.gpa, cmds.store_dword(dst.gm + 4, 0xBAD) + [cmds.MI_BATCH_BUFFER_END])
    rig.pump()
    assert [g.u32(dst.gpa + 4 * i) for i in range(4)] == [0x11, 0x22, 0x33, 0x44]
    assert rig.events[-1][0] == "ctx_complete" and not g.vgpu.failsafe
    assert rig.pgpu is not None and rig.pgpu.engines["rcs"].stats["wa_batches"] == 1  # run at context restore
    assert rig.gvt.counters["wa_ctx_shadowed"] == 1 and rig.gvt.counters["wa_ctx_after_switch"] == 0


def test_after_a_switch_the_wa_batches_run_after_the_register_restore(rig: Rig) -> None:
    """The engine's registers are switched by commands ahead of the guest's in the shadow ring (mmio_context);
    the workaround batches must see the incoming vGPU's registers, never the previous owner's, and must not
    change what is saved for the previous owner: on such a dispatch they are called from the ring after the
    switch (the hardware's order: registers restored, then the indirect-ctx buffer, then the per-ctx batch)."""
    a, b = rig.boot(1), rig.boot(2)
    da, db, ind = a.bo(4096), b.bo(4096), b.bo(4096)
    srm = 0x24 << 23 | 2 | 1 << 22  # MI_STORE_REGISTER_MEM (GGTT); 0xB118 is one of the switched registers
    a.submit("rcs", cmds.load_register_imm([(0xB118, 0xA11CE)]))
    rig.pump()
    body = _padded([srm, 0xB118, db.gm, 0] + cmds.load_register_imm([(0xB118, 0xB0B)]))
    b.write(ind.gpa, body)
    _program_wa(b, "rcs", ind, len(body) // 16, None)
    b.submit("rcs", [srm, 0xB118, db.gm + 4, 0])
    rig.pump()
    assert b.u32(db.gpa) != 0xA11CE  # b's indirect-ctx buffer read b's register, not a's
    assert b.u32(db.gpa + 4) == 0xB0B  # b's ring sees what its own WA batch loaded
    a.submit("rcs", [srm, 0xB118, da.gm, 0])
    rig.pump()
    assert a.u32(da.gpa) == 0xA11CE  # what was saved for a is a's value, not the one b's WA batch loaded
    assert rig.gvt.counters["wa_ctx_after_switch"] == 1 and not a.vgpu.failsafe and not b.vgpu.failsafe
    assert rig.pgpu is not None and rig.pgpu.engines["rcs"].stats["wa_batches"] == 0  # none from the context


def test_the_per_ctx_batch_alone_is_scanned_and_shadowed_too(rig: Rig) -> None:
    """Upstream shadows the per-ctx batch only with an indirect-ctx buffer; gvtsim never lets an unscanned
    guest batch reach the GPU, so a per-ctx batch alone is shadowed as well."""
    g = rig.boot(1)
    per, dst = g.bo(4096), g.bo(4096)
    g.write(per.gpa, cmds.store_dword(dst.gm, 0x77) + [cmds.MI_BATCH_BUFFER_END])
    _program_wa(g, "rcs", None, 0, per)
    g.submit("rcs", [cmds.MI_NOOP])
    (w,) = rig.gvt.scheduler.inflight.values()
    assert w.wa is not None and not g.vgpu.resource.contains(w.wa.per_ctx_shadow_gma)
    rig.pump()
    assert g.u32(dst.gpa) == 0x77


@pytest.mark.parametrize("where", ["indirect_ctx", "per_ctx"])
def test_a_forbidden_command_in_a_wa_buffer_puts_that_vgpu_in_failsafe(rig: Rig, where: str) -> None:
    """An LRI of a register a command may not touch (-EBADRQC) in either workaround buffer: the vGPU enters
    failsafe (GUEST_ERR), the reason is counted, nothing reaches the GPU; another vGPU is unaffected."""
    a, b = rig.boot(1), rig.boot(2)
    ind, per = a.bo(4096), a.bo(4096)
    bad = cmds.load_register_imm([(GDRST, 1)])
    if where == "indirect_ctx":
        g_body = _padded(bad)
        a.write(ind.gpa, g_body)
        _program_wa(a, "rcs", ind, len(g_body) // 16, None)
    else:
        a.write(per.gpa, bad + [cmds.MI_BATCH_BUFFER_END])
        _program_wa(a, "rcs", None, 0, per)
    a.submit("rcs", [cmds.MI_NOOP])
    assert a.vgpu.failsafe and a.vgpu.failsafe_reason == FailsafeReason.GUEST_ERR
    assert rig.gvt.counters["wa_ctx_scan_errors"] == 1 and rig.gvt.counters["cmd_scan_ebadrqc"] == 1
    assert rig.gvt.scheduler.inflight == {} and rig.submits == []
    dst = b.bo(4096)
    b.submit("rcs", cmds.store_dword(dst.gm, 5))
    rig.pump()
    assert b.u32(dst.gpa) == 5 and not b.vgpu.failsafe


def test_a_wa_buffer_outside_the_vgpus_gm_fails_the_submission(rig: Rig) -> None:
    """intel_vgpu_create_workload: intel_gvt_ggtt_validate_range fails => -EINVAL, no workload."""
    g = rig.boot(1)
    ctx, _, _ = g.context("rcs")
    g.write(ctx.gpa + PAGE_SIZE + regs.CTX_RCS_INDIRECT_CTX_VAL, [0x1000 | 1])  # GM 0x1000: not this vGPU's
    g.submit("rcs", [cmds.MI_NOOP])
    assert rig.gvt.counters["wa_ctx_invalid"] == 1 and rig.gvt.counters["workload_create_failed"] == 1
    assert rig.gvt.scheduler.inflight == {}


def test_other_engines_have_no_wa_batches(rig: Rig) -> None:
    """Only the render context carries them (RCS0 in upstream; pgpu reads them on rcs only): values in a
    blitter context's image are neither scanned nor run."""
    g = rig.boot(1)
    per, dst = g.bo(4096), g.bo(4096)
    g.write(per.gpa, cmds.store_dword(dst.gm, 0x99) + [cmds.MI_BATCH_BUFFER_END])
    _program_wa(g, "bcs", None, 0, per)
    g.submit("bcs", [cmds.MI_NOOP])
    (w,) = rig.gvt.scheduler.inflight.values()
    assert w.wa is None
    rig.pump()
    assert g.u32(dst.gpa) == 0 and rig.pgpu is not None and rig.pgpu.engines["bcs"].stats["wa_batches"] == 0
