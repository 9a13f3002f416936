"""Virtual execlists (i915/gvt execlist.c; gvt/handlers.c, gvt/execlist.c).

Per vGPU and engine: the ELSP port (4 dword writes: element 1 high, element 1 low, element 0 high,
element 0 low; ``data[3 - index] = value``, the 4th write submits), two virtual slots (running / pending),
EXECLIST_STATUS computed from them, and the 6-entry context status buffer (CSB) kept in the vregs at
base + 0x370 with its pointer at base + 0x3A0 (write pointer reset to 7 = empty, read pointer owned by the
guest). CSB events are emitted when workloads are *dispatched* to the physical GPU (schedule-in) and when
they *complete* (schedule-out), never at ELSP write time, each followed by the engine's context-switch
interrupt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...hardware.regs import (
    CSB_ACTIVE_TO_IDLE,
    CSB_CTX_COMPLETE,
    CSB_ELEMENT_SWITCH,
    CSB_ENTRIES,
    CSB_IDLE_TO_ACTIVE,
    CSB_LITE_RESTORE,
    CSB_PREEMPTED,
    CSB_WP_RESET,
    DESC_VALID,
    I915_HWS_CSB_BUF0_INDEX,
    I915_HWS_CSB_WRITE_INDEX,
)
from . import engines as eng
from . import pvmmio
from .errors import EmulationError, WorkloadError
from .gtt import gma_to_gpa
from .handlers import PURE_READS, F, Reg, always_pure
from .interrupt import trigger_event

if TYPE_CHECKING:
    from .vgpu import Vgpu


def desc_valid(desc: int) -> bool:
    return bool(desc & DESC_VALID)


def desc_ctx_id(desc: int) -> int:
    return desc >> 32


def same_context(a: int, b: int) -> bool:
    """same_context: equal context id and LRCA."""
    return desc_ctx_id(a) == desc_ctx_id(b) and (a & 0xFFFF_F000) == (b & 0xFFFF_F000)


@dataclass
class ExeclistSlot:
    """One ELSP submission as the guest made it: up to two context descriptors."""

    ctx: tuple[int, int]  # element 0, element 1 (0 = invalid)
    done: list[bool] = field(default_factory=lambda: [False, False])
    index: int = 0  # the element currently running


class VirtualExeclist:
    """One engine's virtual execlist of one vGPU."""

    def __init__(self, vgpu: "Vgpu", engine: eng.Engine) -> None:
        self.vgpu = vgpu
        self.engine = engine
        self.elsp = [0, 0, 0, 0]
        self.elsp_index = 0
        self.running: ExeclistSlot | None = None
        self.pending: ExeclistSlot | None = None
        self.reset()

    # ---------------------------------------------------------------------------------------- reset
    def reset(self) -> None:
        """intel_vgpu_reset_execlist: slots empty, CSB read pointer 0, write pointer 7."""
        self.elsp = [0, 0, 0, 0]
        self.elsp_index = 0
        self.running = None
        self.pending = None
        self.vgpu.mmio.write32(self.engine.base + eng.RING_CSB_PTR, 0 << 8 | CSB_WP_RESET)
        for i in range(CSB_ENTRIES * 2):
            self.vgpu.mmio.write32(self.engine.base + eng.RING_CSB + 4 * i, 0)

    # ---------------------------------------------------------------------------------------- ELSP
    def elsp_write(self, value: int) -> tuple[int, int] | None:
        """elsp_mmio_write: returns (desc0, desc1) on the 4th write, else None."""
        self.elsp[3 - self.elsp_index] = value & 0xFFFF_FFFF
        submit = self.elsp_index == 3
        self.elsp_index = (self.elsp_index + 1) & 3
        if not submit:
            return None
        d = self.elsp
        return (d[1] << 32 | d[0], d[3] << 32 | d[2])

    def elsp_write_pvmmio(self, shared: tuple[int, int, int], value: int) -> tuple[int, int]:
        """elsp_mmio_write with PVMMIO_ELSP_SUBMIT (ACRN handlers.c): the first three dwords come from the
        shared page's elsp_data[0..2], this write is the fourth and submits."""
        self.elsp = [value & 0xFFFF_FFFF, shared[2], shared[1], shared[0]]
        self.elsp_index = 0
        d = self.elsp
        return (d[1] << 32 | d[0], d[3] << 32 | d[2])

    # ------------------------------------------------------------------------------ status register
    def status(self) -> int:
        """EXECLIST_STATUS as emulate_execlist_status (execlist.c) computes it: the status dword (ldw,
        struct execlist_status_format) at +0x234, the running context's id (udw) at +0x238.

        ldw bits: 0 current execlist pointer (= running element index), 1 execlist write pointer
        (= !index), 2 queue full (a pending slot), 3/4 execlist 1/0 valid, 17/18 execlist 1/0 active;
        execlist.c sets valid and active together from the running element index, not from the
        descriptors' valid bits. Idle: both elements invalid and inactive, context id 0.
        """
        ldw = 0
        running = self.running
        ctx = 0
        if running is not None:
            second = bool(running.index)
            ldw |= (1 << 0) if second else (1 << 1)
            ldw |= ((1 << 3) | (1 << 17)) if second else ((1 << 4) | (1 << 18))
            ctx = desc_ctx_id(running.ctx[running.index])
        if self.pending is not None:
            ldw |= 1 << 2
        return ctx << 32 | ldw

    # ------------------------------------------------------------------------------------------ CSB
    def _csb_push(self, status: int, ctx_id: int) -> None:
        """emulate_csb_update: the next entry after the write pointer ((wp == 7) ? 0 : (wp + 1) % 6)."""
        ptr_off = self.engine.base + eng.RING_CSB_PTR
        ptr = self.vgpu.mmio.read32(ptr_off)
        wp = ptr & 0x7
        wp = 0 if wp == CSB_WP_RESET else (wp + 1) % CSB_ENTRIES
        entry = self.engine.base + eng.RING_CSB + 8 * wp
        self.vgpu.mmio.write32(entry, status)
        self.vgpu.mmio.write32(entry + 4, ctx_id)
        self.vgpu.mmio.write32(ptr_off, (ptr & ~0x7) | wp)
        self.vgpu.count("csb_entries")
        self._mirror_to_hwsp(wp, status, ctx_id)

    def _mirror_to_hwsp(self, wp: int, status: int, ctx_id: int) -> None:
        """emulate_csb_update: the entry and the write pointer also go to the guest's HWS page (its
        RING_HWS_PGA, vgpu->hws_pga), where a guest with VGT_CAPS_HWSP_EMULATION reads them, as i915 does."""
        hws = self.vgpu.mmio.read32(self.engine.base + eng.RING_HWS_PGA)
        if not hws:
            return
        try:
            gpa = gma_to_gpa(self.vgpu, hws & ~0xFFF)
        except WorkloadError:
            self.vgpu.count("csb_hwsp_unmapped")
            return
        mpt = self.vgpu.mpt
        mpt.write_gpa(gpa + I915_HWS_CSB_BUF0_INDEX * 4 + wp * 8,
                      status.to_bytes(4, "little") + (ctx_id & 0xFFFF_FFFF).to_bytes(4, "little"))
        mpt.write_gpa(gpa + I915_HWS_CSB_WRITE_INDEX * 4, wp.to_bytes(4, "little"))
        self.vgpu.count("csb_hwsp_entries")

    def _ctx_switch_irq(self) -> None:
        trigger_event(self.vgpu, f"{self.engine.name.upper()}_AS_CONTEXT_SWITCH")

    def schedule_in(self, ctx: tuple[int, int]) -> None:
        """emulate_execlist_schedule_in: the first workload of an ELSP submission reached the GPU."""
        slot = ExeclistSlot(ctx)
        run = self.running
        if run is None:
            self.running = slot
            self._csb_push(CSB_IDLE_TO_ACTIVE, 0)
            self._ctx_switch_irq()
            return
        lite = ((desc_valid(run.ctx[1]) and run.done[0] and same_context(ctx[0], run.ctx[1]))
                or (not desc_valid(run.ctx[1]) and same_context(ctx[0], run.ctx[0])))
        if lite:
            self.running = slot
            self._csb_push(CSB_PREEMPTED | CSB_LITE_RESTORE, desc_ctx_id(ctx[0]))
            self._ctx_switch_irq()
            return
        self.pending = slot

    def schedule_out(self, desc: int, next_is_same_context: bool) -> None:
        """emulate_execlist_ctx_schedule_out: the workload of ``desc`` completed."""
        run = self.running
        if run is None:
            self.vgpu.count("execlist_schedule_out_without_running")
            return
        if next_is_same_context:
            return  # lite restore: no CSB event
        if run.index == 0 and desc_valid(run.ctx[1]) and same_context(desc, run.ctx[0]):
            run.done[0] = True
            run.index = 1
            self._csb_push(CSB_ELEMENT_SWITCH | CSB_CTX_COMPLETE, desc_ctx_id(desc))
            self._ctx_switch_irq()
            return
        self._csb_push(CSB_ACTIVE_TO_IDLE | CSB_CTX_COMPLETE, desc_ctx_id(desc))
        self.running, self.pending = self.pending, None
        if self.running is not None:
            self._csb_push(CSB_IDLE_TO_ACTIVE, 0)
        self._ctx_switch_irq()


# ----------------------------------------------------------------------------- register handlers
def _execlist(vgpu: "Vgpu", offset: int) -> VirtualExeclist:
    engine = eng.engine_of(offset)
    assert engine is not None
    return vgpu.submission.execlists[engine.name]


def elsp_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """ELSP (write-only): collect 4 dwords, then hand the pair of descriptors to the scheduler."""
    el = _execlist(vgpu, offset)
    vgpu.cfg.d3_entered = False  # elsp_mmio_write: engines run only in D0, so the first ELSP write clears it
    if el.engine.name not in vgpu.submission.execlist_enabled:
        raise EmulationError(f"ELSP write on {el.engine.name} with execlists disabled")
    pair: tuple[int, int] | None
    if vgpu.pvmmio.granted & pvmmio.PvmmioLevel.ELSP_SUBMIT:
        pair = el.elsp_write_pvmmio(pvmmio.elsp_data(vgpu), data)
        vgpu.count("pvmmio_elsp_submits")
    else:
        pair = el.elsp_write(data)
    if pair is not None:
        vgpu.gvt.scheduler.submit_execlist(vgpu, el, pair)


def elsp_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    return 0  # write-only port


def execlist_status_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    """EXECLIST_STATUS: 8 bytes from engine base + 0x234 (ldw) and + 0x238 (udw); a read of any width
    at any byte takes the same bytes of that 64-bit value, so an 8-byte read equals its two 4-byte reads."""
    engine = eng.engine_of(offset)
    assert engine is not None
    el = vgpu.submission.execlists[engine.name]
    rel = offset - (engine.base + eng.RING_EXECLIST_STATUS)
    value = el.status() >> (8 * rel)
    return value & ((1 << (8 * size)) - 1)


PURE_READS[elsp_read] = PURE_READS[execlist_status_read] = always_pure


def csb_ptr_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """The CSB pointer is masked; the guest may move only its read pointer (bits 10:8)."""
    allowed = (data >> 16) & 0x0700
    cur = vgpu.mmio.read32(offset)
    vgpu.mmio.write32(offset, allowed << 16 | (cur & ~allowed & 0xFFFF) | (data & allowed))


def execlist_regs() -> list[Reg]:
    """The execlist rows of the register table (handlers.c: ELSP, EXECLIST_STATUS, CSB, CSB pointer)."""
    regs = []
    for e in eng.ENGINES:
        b = e.base
        regs += [
            Reg(b + eng.RING_ELSP, read=elsp_read, write=elsp_write),
            Reg(b + eng.RING_EXECLIST_STATUS, size=8, flags=F.RO | F.UNALIGN, read=execlist_status_read),
            Reg(b + eng.RING_CSB, size=8 * CSB_ENTRIES, flags=F.RO),
            Reg(b + eng.RING_CSB_PTR, flags=F.MODE_MASK, write=csb_ptr_write, default=CSB_WP_RESET),
        ]
    return regs
