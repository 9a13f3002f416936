"""A hostile guest: command buffers and GGTT entries GVT must not let through (gvt/gtt.c, gvt/aperture_gm.c,
gvt/cmd_parser.c; docs/ARCHITECTURE.md, faults and restarts).

Each attack runs on a booted :class:`~.i915.VgpuDriver` and returns what the guest saw. The command attacks
are submitted like any request (ring -> ELSP) and should never complete: GVT's scanner refuses them and
puts this vGPU alone in failsafe, so the guest sees a hang. The PTE attack binds graphics memory to a frame
that is not the guest's (a gfn beyond its RAM): GVT points the host entry at the scratch page, so the
GPU's write through it lands in scratch and nowhere else.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from . import cmds
from .i915 import DriverError, VgpuDriver

ENGINE = "rcs"
#: a register that is not F_CMD_ACCESS: the master interrupt control (gvt/interrupt.c)
OFF_WHITELIST_REG = 0x44200
#: the value the attacks try to write, easy to look for in machine memory
MARK = 0x0BAD_F00D
MI_UPDATE_GTT = cmds.MI_INSTR(0x23, 2)  # 4 dwords: header, GGTT offset, one 8-byte entry


async def _expect_hang(drv: VgpuDriver, commands: list[int], what: str) -> dict[str, Any]:
    """Submit and wait: a GPU hang (DriverError) is the expected outcome."""
    t0 = time.monotonic()
    try:
        await drv.submit(ENGINE, commands + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": what, "hang": True, "error": str(err), "seconds": round(time.monotonic() - t0, 3)}
    return {"what": what, "hang": False, "seconds": round(time.monotonic() - t0, 3)}


async def lri_off_whitelist(drv: VgpuDriver) -> dict[str, Any]:
    """MI_LOAD_REGISTER_IMM to a register off the F_CMD_ACCESS whitelist."""
    return await _expect_hang(drv, cmds.load_register_imm([(OFF_WHITELIST_REG, 0)]),
                              f"MI_LOAD_REGISTER_IMM {OFF_WHITELIST_REG:#x}")


async def update_gtt(drv: VgpuDriver) -> dict[str, Any]:
    """MI_UPDATE_GTT: rewrite a GGTT entry from the command stream (forbidden)."""
    return await _expect_hang(drv, [MI_UPDATE_GTT, 0, (MARK << PAGE_SHIFT) | 1, 0], "MI_UPDATE_GTT")


async def ggtt_oob_store(drv: VgpuDriver) -> dict[str, Any]:
    """MI_STORE_DATA_IMM to a GGTT address outside the vGPU's slices (the host's own low GM)."""
    target = 0x1000
    mbase, msize, ubase, usize = drv.balloon
    assert not (mbase <= target < mbase + msize or ubase <= target < ubase + usize)
    out = await _expect_hang(drv, cmds.store_dword(target, MARK), f"MI_STORE_DATA_IMM GGTT {target:#x}")
    return {**out, "gm": target}


async def foreign_pte(drv: VgpuDriver) -> dict[str, Any]:
    """Bind a page of its GM to a gfn beyond its RAM (someone else's frame), then have the GPU store
    through it. Completes: the write lands in the scratch page."""
    assert drv.gem is not None
    gm = drv.gem.high.alloc(PAGE_SIZE)
    gfn = (drv.machine.ram_bytes >> PAGE_SHIFT) + 0x100
    await drv.gem.bind_page(gm, gfn)
    t0 = time.monotonic()
    try:
        await drv.submit(ENGINE, cmds.store_dword(gm + 0x40, MARK) + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": "foreign PTE", "hang": True, "error": str(err), "gm": gm, "gfn": gfn}
    return {"what": "foreign PTE", "hang": False, "gm": gm, "gfn": gfn, "offset": 0x40, "value": MARK,
            "pte_read_back": await drv.gem.read_pte(gm), "seconds": round(time.monotonic() - t0, 3)}


def _outside(drv: VgpuDriver) -> int:
    """A graphics address outside this vGPU's slices: the host's own low GM (another VM's or the host's)."""
    target = 0x2000
    mbase, msize, ubase, usize = drv.balloon
    assert not (mbase <= target < mbase + msize or ubase <= target < ubase + usize)
    return target


async def pipe_control_oob(drv: VgpuDriver) -> dict[str, Any]:
    """PIPE_CONTROL with a post-sync QW write to a GGTT address outside the vGPU's graphics memory."""
    t = _outside(drv)
    return {**await _expect_hang(drv, cmds.pipe_control(t, MARK), f"PIPE_CONTROL post-sync GGTT {t:#x}"), "gm": t}


async def flush_dw_oob(drv: VgpuDriver) -> dict[str, Any]:
    """MI_FLUSH_DW (on BCS, where it is legal) with a post-sync dword store outside the vGPU's graphics memory."""
    t = _outside(drv)
    out = await _expect_hang_on(drv, "bcs", cmds.flush_dw(t, MARK), f"MI_FLUSH_DW post-sync GGTT {t:#x}")
    return {**out, "gm": t}


async def blit_oob(drv: VgpuDriver) -> dict[str, Any]:
    """XY_COLOR_BLT whose destination is outside the vGPU's graphics memory (on BCS)."""
    t = _outside(drv)
    out = await _expect_hang_on(drv, "bcs", cmds.color_blt(t, 64, 16, 4, MARK), f"XY_COLOR_BLT dst {t:#x}")
    return {**out, "gm": t}


async def bb_start_foreign(drv: VgpuDriver) -> dict[str, Any]:
    """MI_BATCH_BUFFER_START chaining into graphics memory outside the vGPU (another VM's or the host's)."""
    t = _outside(drv)
    return {**await _expect_hang(drv, cmds.batch_buffer_start(t), f"MI_BATCH_BUFFER_START {t:#x}"), "gm": t}


async def _expect_hang_on(drv: VgpuDriver, engine: str, commands: list[int], what: str) -> dict[str, Any]:
    t0 = time.monotonic()
    if engine not in drv.engines:
        engine = ENGINE
    try:
        await drv.submit(engine, commands + [cmds.MI_USER_INTERRUPT], wait_user_irq=True)
    except DriverError as err:
        return {"what": what, "hang": True, "error": str(err), "seconds": round(time.monotonic() - t0, 3)}
    return {"what": what, "hang": False, "seconds": round(time.monotonic() - t0, 3)}


ATTACKS: dict[str, Callable[[VgpuDriver], Awaitable[dict[str, Any]]]] = {
    "lri": lri_off_whitelist, "update_gtt": update_gtt, "ggtt_oob": ggtt_oob_store, "foreign_pte": foreign_pte,
    "pipe_control_oob": pipe_control_oob, "flush_dw_oob": flush_dw_oob, "blit_oob": blit_oob,
    "bb_start_foreign": bb_start_foreign,
}


async def attack(kind: str, drv: VgpuDriver) -> dict[str, Any]:
    """Run the named attack (a key of ATTACKS)."""
    return {"kind": kind, **await ATTACKS[kind](drv)}
