"""A hostile guest: command buffers, page-table entries, descriptors, ioreqs and interrupt-register writes
GVT and vhm must not let through (gvt/gtt.c, gvt/aperture_gm.c, gvt/cmd_parser.c, gvt/execlist.c,
gvt/scheduler.c, gvt/interrupt.c; ACRN hypervisor dm/io_req.c; docs/ARCHITECTURE.md, faults and restarts).

Each attack runs on a booted :class:`~.i915.VgpuDriver` and returns what the guest saw. The command attacks
are submitted like any request (ring -> ELSP) and should never complete: GVT's scanner refuses them and
puts this vGPU alone in failsafe, so the guest sees a hang. The PTE attacks bind graphics memory (GGTT) or
GPU virtual memory (PPGTT) to frames that are not the guest's (beyond its RAM, beyond machine memory,
another VM's machine frame named as a gfn): GVT points the host or shadow entry at the scratch page, so
the GPU's writes through them land in scratch and nowhere else. The descriptor attacks submit contexts
whose LRCA or ring lies in another vGPU's graphics memory; the WP attack forges write-protect ioreqs; the
interrupt attack plays with IMR/IER/IIR/ISR and the master control; the self-modifying attacks change a
batch and the ring after GVT scanned them (from the GPU and from the CPU): the shadow copy is what runs.

``target`` (``--hostile-target``) names what to aim at: the victim's canary (``canary_gm``,
``canary_mfn``) and its rcs context (``ctx_gm``, ``ring_gm``), as the victim reports them; without it the
attacks aim just outside their own slices.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ...protocol import IoreqDir, IoreqType
from ...protocol.errors import Refusal
from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from ...hardware import cmds
from ...hardware import regs as r
from .runtime import Gen
from .gem import Bo
from .i915 import RING_SIZE, DriverError, EngineState, VgpuDriver

#: what an attack aims at (``--hostile-target``): graphics addresses and a machine frame of another VM
Target = dict[str, int]

ENGINE = "rcs"
#: a register that is not F_CMD_ACCESS: the master interrupt control (gvt/interrupt.c)
OFF_WHITELIST_REG = 0x44200
#: the value the attacks try to write, easy to look for in machine memory
MARK = 0x0BAD_F00D
MI_UPDATE_GTT = cmds.MI_INSTR(0x23, 2)  # 4 dwords: header, GGTT offset, one 8-byte entry


def _expect_hang(drv: VgpuDriver, commands: list[int], what: str) -> Gen[dict[str, Any]]:
    """Submit and wait: a GPU hang (DriverError) is the expected outcome."""
    t0 = drv.machine.rt.now
    try:
        yield from drv.submit(ENGINE, commands + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": what, "hang": True, "error": str(err), "seconds": round(drv.machine.rt.now - t0, 3)}
    return {"what": what, "hang": False, "seconds": round(drv.machine.rt.now - t0, 3)}


def lri_off_whitelist(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """MI_LOAD_REGISTER_IMM to a register off the F_CMD_ACCESS whitelist."""
    return (yield from _expect_hang(drv, cmds.load_register_imm([(OFF_WHITELIST_REG, 0)]),
                                    f"MI_LOAD_REGISTER_IMM {OFF_WHITELIST_REG:#x}"))


def update_gtt(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """MI_UPDATE_GTT: rewrite a GGTT entry from the command stream (forbidden)."""
    return (yield from _expect_hang(drv, [MI_UPDATE_GTT, 0, (MARK << PAGE_SHIFT) | 1, 0], "MI_UPDATE_GTT"))


def ggtt_oob_store(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """MI_STORE_DATA_IMM to a GGTT address outside the vGPU's slices (the host's own low GM)."""
    target = 0x1000
    mbase, msize, ubase, usize = drv.balloon
    assert not (mbase <= target < mbase + msize or ubase <= target < ubase + usize)
    out = yield from _expect_hang(drv, cmds.store_dword(target, MARK), f"MI_STORE_DATA_IMM GGTT {target:#x}")
    return {**out, "gm": target}


def foreign_pte(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """Bind a page of its GM to a gfn beyond its RAM (someone else's frame), then have the GPU store
    through it. Completes: the write lands in the scratch page."""
    assert drv.gem is not None
    gm = drv.gem.high.alloc(PAGE_SIZE)
    gfn = (drv.machine.ram_bytes >> PAGE_SHIFT) + 0x100
    yield from drv.gem.bind_page(gm, gfn)
    t0 = drv.machine.rt.now
    try:
        yield from drv.submit(ENGINE, cmds.store_dword(gm + 0x40, MARK) + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": "foreign PTE", "hang": True, "error": str(err), "gm": gm, "gfn": gfn}
    return {"what": "foreign PTE", "hang": False, "gm": gm, "gfn": gfn, "offset": 0x40, "value": MARK,
            "pte_read_back": (yield from drv.gem.read_pte(gm)), "seconds": round(drv.machine.rt.now - t0, 3)}


def _outside(drv: VgpuDriver) -> int:
    """A graphics address outside this vGPU's slices: the host's own low GM (another VM's or the host's)."""
    target = 0x2000
    mbase, msize, ubase, usize = drv.balloon
    assert not (mbase <= target < mbase + msize or ubase <= target < ubase + usize)
    return target


def pipe_control_oob(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """PIPE_CONTROL with a post-sync QW write to a GGTT address outside the vGPU's graphics memory."""
    t = _outside(drv)
    out = yield from _expect_hang(drv, cmds.pipe_control(t, MARK), f"PIPE_CONTROL post-sync GGTT {t:#x}")
    return {**out, "gm": t}


def flush_dw_oob(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """MI_FLUSH_DW (on BCS, where it is legal) with a post-sync dword store outside the vGPU's graphics memory."""
    t = _outside(drv)
    out = yield from _expect_hang_on(drv, "bcs", cmds.flush_dw(t, MARK), f"MI_FLUSH_DW post-sync GGTT {t:#x}")
    return {**out, "gm": t}


def blit_oob(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """XY_COLOR_BLT whose destination is outside the vGPU's graphics memory (on BCS)."""
    t = _outside(drv)
    out = yield from _expect_hang_on(drv, "bcs", cmds.color_blt(t, 64, 16, 4, MARK), f"XY_COLOR_BLT dst {t:#x}")
    return {**out, "gm": t}


def bb_start_foreign(drv: VgpuDriver) -> Gen[dict[str, Any]]:
    """MI_BATCH_BUFFER_START chaining into graphics memory outside the vGPU (another VM's or the host's)."""
    t = _outside(drv)
    return {**(yield from _expect_hang(drv, cmds.batch_buffer_start(t), f"MI_BATCH_BUFFER_START {t:#x}")), "gm": t}


def _expect_hang_on(drv: VgpuDriver, engine: str, commands: list[int], what: str) -> Gen[dict[str, Any]]:
    t0 = drv.machine.rt.now
    if engine not in drv.engines:
        engine = ENGINE
    try:
        yield from drv.submit(engine, commands + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": what, "hang": True, "error": str(err), "seconds": round(drv.machine.rt.now - t0, 3)}
    return {"what": what, "hang": False, "seconds": round(drv.machine.rt.now - t0, 3)}


def parse_target(text: str) -> Target:
    """``--hostile-target``: a JSON object of integers (canary_gm, canary_mfn, ctx_gm, ring_gm); "" => {}."""
    if not text:
        return {}
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError("--hostile-target must be a JSON object")
    return {str(k): int(v) for k, v in obj.items()}


def _own(drv: VgpuDriver, gm: int) -> bool:
    mbase, msize, ubase, usize = drv.balloon
    return mbase <= gm < mbase + msize or ubase <= gm < ubase + usize


def _foreign(drv: VgpuDriver, target: Target, key: str) -> int:
    """The target's graphics address ``key`` (another vGPU's), else one outside this vGPU's slices."""
    gm = target.get(key) or _outside(drv)
    assert not _own(drv, gm), f"{key} {gm:#x} is inside this vGPU's own graphics memory"
    return gm


def _submit(drv: VgpuDriver, commands: list[int], what: str, ppgtt: bool = False) -> Gen[dict[str, Any]]:
    """A request that should complete (the attack is defused, not refused): hang True if it did not."""
    t0 = drv.machine.rt.now
    try:
        yield from drv.submit(ENGINE, commands + [cmds.MI_USER_INTERRUPT], wait_user_irq=True, ppgtt=ppgtt)
    except DriverError as err:
        return {"what": what, "hang": True, "error": str(err), "seconds": round(drv.machine.rt.now - t0, 3)}
    return {"what": what, "hang": False, "seconds": round(drv.machine.rt.now - t0, 3)}


# ----------------------------------------------------------------------------------- page tables
def ppgtt_foreign_pte(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """PPGTT PTEs at frames that are not the guest's: a gfn beyond its RAM, an address beyond machine
    memory, and the victim's machine frame named as a gfn; then GPU stores through each (a PPGTT context's
    ring: PPGTT-addressed stores are not audited, the shadow PPGTT is the protection). GVT's shadow entries
    name the scratch page (ppgtt_populate_shadow_entry -> the scratch for a gfn the MPT cannot map)."""
    assert drv.gem is not None
    ctx = yield from drv.create_ppgtt_context(ENGINE)
    ram_pages = drv.machine.ram_bytes >> PAGE_SHIFT
    gpas = {"beyond_ram": (ram_pages + 0x100) << PAGE_SHIFT, "beyond_memory": 1 << 40}
    mfn = target.get("canary_mfn", 0)
    if mfn >= ram_pages:  # an mfn below our RAM size names one of our own gfns: nothing foreign to try
        gpas["victim_mfn"] = mfn << PAGE_SHIFT
    ring: list[int] = []
    vas = {}
    for i, (name, gpa) in enumerate(gpas.items()):
        va = 0x80_0000 + i * PAGE_SIZE
        yield from ctx.ppgtt.map(va, gpa)
        vas[name] = va
        ring += cmds.store_dword(va + 0x40, MARK, ggtt=False)
    out = yield from _submit(drv, ring, "PPGTT PTEs at foreign frames", ppgtt=True)
    kept = all(ctx.ppgtt.translate(vas[n]) == g for n, g in gpas.items())  # the guest's tables keep its values
    return {**out, "gpas": {n: hex(g) for n, g in gpas.items()}, "guest_entries_kept": kept}


def ggtt_foreign_frames(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """GGTT PTEs at frames that are not the guest's: the victim's machine frame named as a gfn (when it is
    beyond our RAM), a gfn beyond machine memory, and the gfn of the vGPU's own BAR0 (MMIO, not RAM); then
    GPU stores through each. Every host entry becomes the scratch page (gtt.c: an invalid gfn => scratch)."""
    assert drv.gem is not None
    ram_pages = drv.machine.ram_bytes >> PAGE_SHIFT
    gfns = {"beyond_memory": 1 << 33, "bar0": drv.bar0 >> PAGE_SHIFT}
    mfn = target.get("canary_mfn", 0)
    if mfn >= ram_pages:
        gfns["victim_mfn"] = mfn
    ring: list[int] = []
    for gfn in gfns.values():
        gm = drv.gem.high.alloc(PAGE_SIZE)
        yield from drv.gem.bind_page(gm, gfn)
        ring += cmds.store_dword(gm + 0x40, MARK)
    out = yield from _submit(drv, ring, "GGTT PTEs at foreign frames")
    return {**out, "gfns": {n: hex(g) for n, g in gfns.items()}}


def ppgtt_batch_privileged(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """A non-privileged (PPGTT) batch, which GVT does not scan (cmd_parser.c batch_buffer_needs_scan, as
    upstream), carrying privileged commands: a GGTT store at another vGPU's graphics memory, an LRI off the
    whitelist, then a chained *GGTT* batch start into a batch of its own that GVT never scanned (another GGTT
    store at the victim). The hardware no-ops privileged commands in a non-privileged batch (i915_cmd_parser.c
    "the hardware will noop these commands in unsecure batches"), and a batch started from one stays
    non-privileged; only the PPGTT store of the batch lands (in the guest's own page)."""
    assert drv.gem is not None
    m = drv.machine
    ctx = yield from drv.create_ppgtt_context(ENGINE)
    victim = _foreign(drv, target, "canary_gm")
    batch_gpa, check_gpa = drv.alloc_table_page(), drv.alloc_table_page()
    va, check_va = 0x90_0000, 0x90_1000
    yield from ctx.ppgtt.map(va, batch_gpa)
    yield from ctx.ppgtt.map(check_va, check_gpa)
    ggtt_batch = yield from drv.gem.create(PAGE_SIZE)  # a GGTT batch of its own, never shown to the scanner
    yield from ctx.ppgtt.map(ggtt_batch.gm, ggtt_batch.gpa)  # the same bytes at the same address in the PPGTT too
    yield from m.write_mem(ggtt_batch.gpa, cmds.to_bytes(cmds.store_dword(victim + 8, MARK)
                           + cmds.load_register_imm([(OFF_WHITELIST_REG, 0)])
                           + [cmds.MI_BATCH_BUFFER_END]))
    body = (cmds.store_dword(victim, MARK) + cmds.load_register_imm([(OFF_WHITELIST_REG, 0)])
            + cmds.store_dword(check_va, MARK, ggtt=False) + cmds.batch_buffer_start(ggtt_batch.gm))
    yield from m.write_mem(batch_gpa, cmds.to_bytes(body))
    out = yield from _submit(drv, cmds.batch_buffer_start(va, ppgtt=True), "privileged commands in a PPGTT batch",
                             ppgtt=True)
    return {**out, "gm": victim, "own_store_landed": m.read_u32(check_gpa) == MARK}


# ------------------------------------------------------------------------------------ descriptors
def _elsp_raw(drv: VgpuDriver, e: EngineState, desc: int, what: str) -> Gen[dict[str, Any]]:
    """Write ``desc`` as element 0 into the engine's ELSP and wait for its completion like submit() does."""
    t0 = drv.machine.rt.now
    vcpu = drv.machine.vcpus[0]
    with (yield from e.lock.hold()):
        e.pending, e.user_pending, e.inflight_ctx = True, False, desc >> 32
        try:
            for value in (0, 0, desc >> 32, desc & 0xFFFF_FFFF):
                got = yield from vcpu.try_ioreq(IoreqType.MMIO, IoreqDir.WRITE, drv.bar0 + e.base + r.ELSP, 4, value)
                if isinstance(got, Refusal):
                    return {"what": what, "hang": True, "refused": got.code.value,
                            "seconds": round(drv.machine.rt.now - t0, 3)}
            yield from drv._hangcheck_wait(e, drv.hang_timeout)
        except DriverError as err:
            return {"what": what, "hang": True, "error": str(err), "seconds": round(drv.machine.rt.now - t0, 3)}
        finally:
            e.pending = False
    return {"what": what, "hang": False, "seconds": round(drv.machine.rt.now - t0, 3)}


def _desc(ctx_id: int, lrca: int, privileged: bool = True) -> int:
    return (ctx_id << 32 | r.DESC_VALID | r.DESC_ADDRESSING_LEGACY32 | (r.DESC_PRIVILEGE if privileged else 0)
            | (lrca & ~0xFFF))


def elsp_foreign_lrca(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """ELSP with a forged descriptor: its LRCA is another vGPU's context (in its ballooned-out slice).
    intel_vgpu_create_workload refuses an LRCA outside the vGPU's GGTT range ("invalid guest context
    LRCA")."""
    lrca = _foreign(drv, target, "ctx_gm")
    out = yield from _elsp_raw(drv, drv.engines[ENGINE], _desc(0x1F0, lrca), f"ELSP LRCA {lrca:#x}")
    return {**out, "lrca": lrca}


def elsp_foreign_ring(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """ELSP with a context of its own whose ring (RING_START in the ring context) is another vGPU's ring:
    GVT would copy the victim's commands and run them as ours. The ring is read through the vGPU's own
    GGTT view, which ends at its slices."""
    e = drv.engines[ENGINE]
    context, _ring = yield from drv._new_lrc(e, (0, 0, 0, 0))
    rb = _foreign(drv, target, "ring_gm")
    state = context.gpa + PAGE_SIZE
    yield from drv.machine.write_u32(state + r.CTX_RB_START_VAL, rb)
    yield from drv.machine.write_u32(state + r.CTX_RING_TAIL_VAL, 16)
    out = yield from _elsp_raw(drv, e, _desc(0x1F1, context.gm), f"ELSP ring at {rb:#x}")
    return {**out, "ring": rb}


def elsp_unprivileged(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """ELSP with its own context but the privilege bit clear: a GGTT context run non-privileged, which
    intel_vgpu_submit_execlist refuses ("unexpected GGTT elsp submission")."""
    e = drv.engines[ENGINE]
    assert e.context is not None
    return (yield from _elsp_raw(drv, e, _desc(e.ctx_id, e.context.gm, privileged=False), "ELSP without privilege"))


def pv_forged(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """The paravirtualized path (docs/PV.md) with forged contents: a PV PPGTT update naming a root that is not
    one of its PPGTTs (beyond its RAM), then a PV submission whose descriptor's LRCA is another vGPU's context.
    The shared page is guest RAM, so GVT checks what it reads there as it checks an ELSP write."""
    pv = yield from drv.enable_pv()
    if drv.pv is None:
        return {"what": "forged PV requests", "hang": False, "pv": pv.status, "skipped": True}
    e = drv.engines[ENGINE]
    yield from drv.pv.ppgtt_update(drv.machine.ram_bytes + 0x10_0000, 0, PAGE_SIZE)
    lrca = _foreign(drv, target, "ctx_gm")
    t0 = drv.machine.rt.now
    with (yield from e.lock.hold()):
        e.pending, e.user_pending, e.inflight_ctx = True, False, 0x1F2
        try:
            seq = yield from drv.pv.try_submit(ENGINE, _desc(0x1F2, lrca))
            if isinstance(seq, Refusal):
                hang = True
            else:
                e.pv_wait_seq = seq
                yield from drv._hangcheck_wait(e, drv.hang_timeout)
                hang = False
        except DriverError:
            hang = True
        finally:
            e.pending, e.pv_wait_seq = False, 0
    return {"what": "forged PV requests", "hang": hang, "pv": pv.status, "lrca": lrca,
            "seconds": round(drv.machine.rt.now - t0, 3)}


# ----------------------------------------------------------------------------------- WP ioreqs
def wp_forged(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """Write-protect ioreqs the hypervisor would never raise (ACRN raises REQ_WP only for an EPT write
    violation on a page it write-protected): a WP write to a page of its own that is not protected, one
    beyond its RAM, a WP read. vhm refuses each (bad_request); the page keeps its bytes."""
    assert drv.gem is not None
    m = drv.machine
    bo = yield from drv.gem.create(PAGE_SIZE)
    tries = {"own_unprotected": (IoreqDir.WRITE, bo.gpa), "beyond_ram": (IoreqDir.WRITE, m.ram_bytes + 0x1000),
             "read": (IoreqDir.READ, bo.gpa)}
    results = {}
    for name, (direction, gpa) in tries.items():
        got = yield from m.vcpus[0].try_ioreq(IoreqType.WP, direction, gpa, 8, MARK)
        results[name] = got.code.value if isinstance(got, Refusal) else "accepted"
    return {"what": "forged WP ioreqs", "hang": False, "results": results, "own_page": m.read_u64(bo.gpa)}


# ----------------------------------------------------------------------------------- interrupts
def irq_games(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """Interrupt-register games: write the read-only ISR and the master's summary bits (to spoof pending
    events), write IIR (write-1-to-clear: it cannot set bits), then mask our own engine's events in IMR and
    run a request (its interrupts are swallowed: gvt counts each masked event), put everything back and run
    another (its interrupts arrive). Everything lands in this vGPU's virtual registers (gvt/interrupt.c);
    the physical interrupt registers and other VMs' interrupts are not reachable from here (gvt injects an
    MSI only into the vGPU's own VM)."""
    assert drv.gem is not None
    e = drv.engines[ENGINE]
    bits = 1 << e.user_bit | 1 << e.ctx_bit
    msis = drv.msis
    yield from drv.wr(r.GT_ISR(e.gt), 0xFFFF_FFFF)  # a plain register in gvt (handlers.c MMIO_D): drives nothing
    yield from drv.wr(r.MASTER_IRQ, 0xFFFF_FFFF)  # only bit 31 is writable: no summary bit, no MSI
    spoof = {"isr": (yield from drv.rd(r.GT_ISR(e.gt))), "master": (yield from drv.rd(r.MASTER_IRQ)),
             "iir_before": (yield from drv.rd(r.GT_IIR(e.gt))), "msis": drv.msis - msis}
    yield from drv.wr(r.GT_IIR(e.gt), 0xFFFF_FFFF)
    spoof["iir_after_w1c"] = yield from drv.rd(r.GT_IIR(e.gt))
    yield from drv.wr(r.MASTER_IRQ, r.MASTER_IRQ_CONTROL)
    own = yield from drv.gem.create(PAGE_SIZE)
    yield from drv.wr(r.GT_IMR(e.gt), 0xFFFF_FFFF)  # swallow our own engine's interrupts
    msis = drv.msis
    masked = yield from _submit(drv, cmds.store_dword(own.gm, MARK), "request with its interrupts masked")
    masked["msis"] = drv.msis - msis
    yield from drv.wr(r.GT_IMR(e.gt), 0xFFFF_FFFF & ~bits)  # back as init() left it
    yield from drv._process_csb(e)  # catch up with the CSB entries the masked request left (as after a reset)
    after = yield from _submit(drv, cmds.store_dword(own.gm + 4, MARK), "request with its interrupts back")
    return {"what": "interrupt-register games", "hang": after["hang"], "spoof": spoof, "masked": masked,
            "after": after, "own_stores": [drv.machine.read_u32(own.gpa), drv.machine.read_u32(own.gpa + 4)]}


# ---------------------------------------------------------------------------------- self-modifying
def _ring_offset(e: EngineState, commands: list[int]) -> int:
    """Where submit() will put ``commands`` in the engine's ring (it pads to a qword and wraps at the end)."""
    n = 4 * (len(commands) + len(commands) % 2)
    return e.tail if e.tail + n <= RING_SIZE else 0


def _rewrite_setup(drv: VgpuDriver, target: Target) -> Gen[tuple[EngineState, int, Bo, Bo]]:
    """What a rewrite attack needs: the engine (its ring set up), the victim's canary address, and two pages
    of the attacker's own: one its honest stores land in, one for the batch."""
    assert drv.gem is not None
    e = drv.engines[ENGINE]
    assert e.ring is not None
    own = yield from drv.gem.create(PAGE_SIZE)
    batch = yield from drv.gem.create(PAGE_SIZE)
    return e, _foreign(drv, target, "canary_gm"), own, batch


def self_modifying_batch(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """A privileged batch whose first commands rewrite, after GVT scanned it, a later command of the same
    batch and a later command of the ring, both into a store at the victim's canary (the stores target the
    guest's own graphics memory, so the audit passes them). GVT runs shadow copies of the ring and of the
    batch (cmd_parser.c perform_bb_shadow, scheduler.c copy_workload_to_ring_buffer): the rewrites land in
    the guest's own copies, and the GPU runs the commands as scanned."""
    e, victim, own, batch = yield from _rewrite_setup(drv, target)
    m = drv.machine
    assert e.ring is not None
    later = 64  # byte offset of the batch's own later store
    ring = cmds.batch_buffer_start(batch.gm) + cmds.store_dword(own.gm + 4, MARK)
    ring_later = _ring_offset(e, ring + [cmds.MI_USER_INTERRUPT]) + 12  # the ring's store, after the start
    body = cmds.store_dword(batch.gm + later + 4, victim) + cmds.store_dword(e.ring.gm + ring_later + 4, victim)
    body += [cmds.MI_NOOP] * (later // 4 - len(body)) + cmds.store_dword(own.gm, MARK) + [cmds.MI_BATCH_BUFFER_END]
    yield from m.write_mem(batch.gpa, cmds.to_bytes(body))
    out = yield from _submit(drv, ring, "self-modifying batch")
    return {**out, "gm": victim, "own_stores": [m.read_u32(own.gpa), m.read_u32(own.gpa + 4)],
            "batch_rewritten": m.read_u32(batch.gpa + later + 4) == victim & 0xFFFF_FFFF,
            "ring_rewritten": m.read_u32(e.ring.gpa + ring_later + 4) == victim & 0xFFFF_FFFF}


def rewrite_after_scan(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
    """The CPU rewrites the batch and the ring right after the ELSP write that made GVT scan them (a
    time-of-check / time-of-use race): the batch's store now aims at the victim's canary. The GPU runs
    the shadow copies made at the scan."""
    e, victim, own, batch = yield from _rewrite_setup(drv, target)
    m = drv.machine
    assert e.ring is not None
    yield from m.write_mem(batch.gpa, cmds.to_bytes(cmds.store_dword(own.gm, MARK) + [cmds.MI_BATCH_BUFFER_END]))
    ring = cmds.batch_buffer_start(batch.gm) + cmds.store_dword(own.gm + 4, MARK)
    ring_at = _ring_offset(e, ring + [cmds.MI_USER_INTERRUPT])
    writes = {"elsp": 0, "rewrites": 0}
    plain, ring_gpa = drv.wr, e.ring.gpa

    def wr(off: int, value: int, size: int = 4, vcpu: int = 0) -> Gen[None]:
        yield from plain(off, value, size, vcpu)
        if off == e.base + r.ELSP:
            writes["elsp"] += 1
            if writes["elsp"] % 4 == 0:  # the 4th dword submitted: GVT has scanned and shadowed by now
                yield from m.write_mem(batch.gpa, cmds.to_bytes(cmds.store_dword(victim, MARK)), vcpu)
                yield from m.write_mem(ring_gpa + ring_at + 12, cmds.to_bytes(cmds.store_dword(victim + 4, MARK)),
                                       vcpu)
                writes["rewrites"] += 1

    drv.wr = wr  # type: ignore[method-assign]
    try:
        out = yield from _submit(drv, ring, "batch and ring rewritten after the scan")
    finally:
        del drv.wr
    return {**out, "gm": victim, "rewrites": writes["rewrites"],
            "own_stores": [m.read_u32(own.gpa), m.read_u32(own.gpa + 4)]}


def _plain(fn: Callable[[VgpuDriver], Gen[dict[str, Any]]]) -> Callable[[VgpuDriver, Target],
                                                                             Gen[dict[str, Any]]]:
    def run(drv: VgpuDriver, target: Target) -> Gen[dict[str, Any]]:
        return (yield from fn(drv))
    return run


ATTACKS: dict[str, Callable[[VgpuDriver, Target], Gen[dict[str, Any]]]] = {
    "lri": _plain(lri_off_whitelist), "update_gtt": _plain(update_gtt), "ggtt_oob": _plain(ggtt_oob_store),
    "foreign_pte": _plain(foreign_pte), "pipe_control_oob": _plain(pipe_control_oob),
    "flush_dw_oob": _plain(flush_dw_oob), "blit_oob": _plain(blit_oob), "bb_start_foreign": _plain(bb_start_foreign),
    "ppgtt_foreign_pte": ppgtt_foreign_pte, "ggtt_foreign_frames": ggtt_foreign_frames,
    "ppgtt_batch_privileged": ppgtt_batch_privileged, "elsp_foreign_lrca": elsp_foreign_lrca,
    "elsp_foreign_ring": elsp_foreign_ring, "elsp_unprivileged": elsp_unprivileged, "pv_forged": pv_forged,
    "wp_forged": wp_forged,
    "irq_games": irq_games, "self_modifying_batch": self_modifying_batch, "rewrite_after_scan": rewrite_after_scan,
}


def attack(kind: str, drv: VgpuDriver, target: Target | None = None) -> Gen[dict[str, Any]]:
    """Run the named attack (a key of ATTACKS) against ``target`` (see the module docstring)."""
    return {"kind": kind, **(yield from ATTACKS[kind](drv, target or {}))}
