"""The guest's i915-like vGPU driver, in the real order (i915_vgpu.c, gvt/handlers.c, gvt/execlist.c, gvt/interrupt.c).

init(): PVINFO magic, version and caps (intel_vgpu_detect) -> the PVMMIO levels (ACRN: the guest's
i915.enable_pvmmio written to PVINFO enable_pvmmio, what reads back is what it may use) -> GGTT ballooning
from the four balloon registers (intel_vgt_balloon) -> fence count -> interrupts (IER/IMR per GT group,
then the master enable) -> ring mode with execlists (RING_MODE is masked) -> contexts and ring buffers in
the GGTT slice -> display_ready last.

submit(): commands go into the engine's ring (guest RAM, no trap), the new tail into the context image (guest
RAM, no trap), then four ELSP dword writes (element 1 high, element 1 low, element 0 high, element 0 low; the
4th submits); with ACRN's PVMMIO_ELSP_SUBMIT granted the first three go into the PVMMIO shared page at BAR0 +
2 MB (memory, no trap) and only the 4th is written to ELSP. Completion arrives as an MSI; the handler reads
the master IRQ, the GT IIR (and acks it), then the CSB pointer and entries: a context_complete entry for our
context id completes the request.

PPGTT (i915 gen8_ppgtt.c gen8_ppgtt_notify_vgt, gvt/gtt.c, gvt/page_track.c): an engine may also get a second context
with its own PPGTT (:meth:`VgpuDriver.create_ppgtt_context`): guest page tables in RAM (ppgtt.py), announced to GVT with
gen8_ppgtt_notify_vgt (pdp[i].lo/hi then g2v_notify = L3/L4 CREATE), the context image's PDP values =
the guest-physical roots, and the descriptor's addressing mode 1 (3-level) or 3 (4-level). Batches it
runs are non-privileged PPGTT batches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from ...hardware import cmds
from ...hardware.engines import BY_NAME
from .cpu import GuestMachine
from .gem import Bo, Gem
from .pci import PciDevice
from .pv import PvChannel, PvResult
from .pv import setup as pv_setup
from .ppgtt import GuestPpgtt
from .runtime import Gen, Lock, Signal, wait_until
from ...hardware import regs as r
from ...hardware.regs import PV_PDP0_LO  # PVINFO pdp[i].lo = 0x78838 + 8i, .hi = +4

RING_SIZE = 4 * 4096
MSI_VECTOR = 0x40
PPGTT_CTX_ID_BASE = 0x200
#: PVINFO g2v_notify values (enum vgt_g2v_type) by (levels, create)
G2V_PPGTT = {(3, True): 2, (3, False): 3, (4, True): 4, (4, False): 5}
#: the ring-context register of pdp n's UDW / LDW value (engine base + 0x274 + 8n / 0x270 + 8n)
PDP_REG = {n: (0x274 + 8 * n, 0x270 + 8 * n) for n in range(4)}


class DriverError(RuntimeError):
    """The vGPU misbehaved (wrong magic, bad balloon, a hang): the guest would reset the GPU."""


def ppgtt_notify_vgt(write: Callable[[int, int], Gen[None]], ppgtt: GuestPpgtt, create: bool) -> Gen[None]:
    """gen8_ppgtt_notify_vgt (i915 gen8_ppgtt.c gen8_ppgtt_notify_vgt): 4-level => pdp[0] = the PML4; 3-level =>
    pdp[0..3] = the page directories; then g2v_notify = L3/L4 CREATE or DESTROY. ``write(offset, value)`` is a 32-bit
    MMIO write at BAR0 + offset (the caller serialises notifications, as i915 does under vgpu.lock)."""
    roots = ppgtt.roots[:1] if ppgtt.levels == 4 else ppgtt.roots
    for i, root in enumerate(roots):
        yield from write(PV_PDP0_LO + 8 * i, root & 0xFFFF_FFFF)
        yield from write(PV_PDP0_LO + 8 * i + 4, root >> 32)
    yield from write(r.PV_G2V_NOTIFY, G2V_PPGTT[(ppgtt.levels, create)])


@dataclass
class PpgttContext:
    """An engine's second context: its own LRC and ring, addressing through a guest PPGTT."""

    ppgtt: GuestPpgtt
    context: Bo
    ring: Bo
    ctx_id: int
    tail: int = 0

    @property
    def addressing(self) -> int:
        return r.DESC_ADDRESSING_LEGACY32 if self.ppgtt.levels == 3 else r.DESC_ADDRESSING_LEGACY64


@dataclass
class EngineState:
    """One engine as the driver sees it: its context, ring, CSB head and the request in flight."""

    name: str
    base: int
    gt: int
    user_bit: int
    ctx_bit: int
    ctx_id: int
    context: Bo | None = None
    ring: Bo | None = None
    tail: int = 0
    csb_head: int = 5  # i915 starts at the last entry so the first event lands in entry 0 (wp reset 7)
    ppgtt_ctx: PpgttContext | None = None
    inflight_ctx: int = 0  # context id of the request in flight (the default or the PPGTT context)
    lock: Lock = field(default_factory=Lock)
    pending: bool = False  # a request waits for its context_complete
    user_pending: bool = False  # ... and for its MI_USER_INTERRUPT
    done: Signal = field(default_factory=Signal)  # fired by the interrupt handler when either one arrives
    pv_wait_seq: int = 0  # PV submission in flight: the slot seq whose done_seq completes it
    user_irqs: int = 0
    csb_events: list[int] = field(default_factory=list)
    hwsp: "Bo | None" = None  # the engine's HWS page (RING_HWS_PGA)
    csb_hwsp_reads: int = 0  # CSB processed from the HWS page (no trap)
    completions: int = 0


class VgpuDriver:
    """Drives one vGPU of one VM. ``engines`` are the engines this VM uses."""

    def __init__(self, machine: GuestMachine, gpu: PciDevice, engines: tuple[str, ...] = ("rcs", "bcs"),
                 ram_reserved: int = 1 << 20, enable_pvmmio: int = 0) -> None:
        self.machine = machine
        self.gpu = gpu
        self.bar0 = gpu.bar0
        self.ram_reserved = ram_reserved
        self.engines: dict[str, EngineState] = {}
        for i, name in enumerate(engines):
            e = BY_NAME[name]
            self.engines[name] = EngineState(name, e.base, e.irq_group, e.user_irq_bit, e.ctx_switch_bit,
                                             ctx_id=0x100 + i)
        self.caps = 0
        self.want_pvmmio = enable_pvmmio  # this guest's i915.enable_pvmmio (ACRN)
        self.pvmmio = 0  # the PVMMIO levels gvt granted (PVINFO enable_pvmmio read back)
        self.pvmmio_lock = Lock()  # the shared page's elsp_data, from fill to the consuming ELSP write
        self.vgt_id = 0
        self.fences = 0
        self.mem_latency = 0  # what the pcode mailbox answered for the memory latency (skl_read_wm_latency)
        self.balloon: tuple[int, int, int, int] = (0, 0, 0, 0)
        self.gem: Gem | None = None
        self.msis = 0
        self.missed_irqs = 0  # interrupts the hangcheck found pending with no MSI (_hangcheck_wait)
        self.unexpected_completions = 0  # context_complete CSB entries with no request waiting (_process_csb)
        self.irq_lock = Lock()
        self.ready = False
        self.hang_timeout = 3.0  # seconds without completion before the request is declared hung
        self.pv: PvChannel | None = None  # the PV shared page, when the host accepted one (pv.py)
        self.pv_result: PvResult | None = None
        self.submission_traps: Counter[int] = Counter()  # traps taken per submission -> how many times
        self.hangcheck_period = 0.5
        self.pv_lock = Lock()  # i915 vgpu.lock: one PVINFO notification at a time
        self.display: Any = None  # the GuestDisplay when the VM has a screen (display.py)

    # ----------------------------------------------------------------------------------------- helpers
    def rd(self, off: int, size: int = 4, vcpu: int = 0) -> Gen[int]:
        return (yield from self.machine.mmio_read(self.bar0 + off, size, vcpu))

    def wr(self, off: int, value: int, size: int = 4, vcpu: int = 0) -> Gen[None]:
        yield from self.machine.mmio_write(self.bar0 + off, size, value, vcpu)

    def enable_pv(self, version: int = 1, corrupt: bool = False) -> Gen[PvResult]:
        """Try the PV shared page (after init); on any refusal the driver stays on the trap path."""
        self.pv, self.pv_result = yield from pv_setup(self, version=version, corrupt=corrupt)
        return self.pv_result

    # -------------------------------------------------------------------------------------------- init
    def init(self, modeset: Callable[[], Gen[None]] | None = None) -> Gen[None]:
        """The i915 probe order for a vGPU. Raises DriverError if the device is not a usable vGPU.
        ``modeset`` (display.py) runs after the engines are up and before ``display_ready`` is written,
        as i915 writes it once its display is initialised."""
        magic = yield from self.rd(r.PV_MAGIC, 8)
        if magic != r.VGT_MAGIC:
            raise DriverError(f"not a vGPU: PVINFO magic {magic:#x}")
        major = yield from self.rd(r.PV_VERSION_MAJOR, 2)
        if major < 1:
            raise DriverError(f"VGT interface version mismatch: {major}")
        self.caps = yield from self.rd(r.PV_VGT_CAPS)
        self.vgt_id = yield from self.rd(r.PV_VGT_ID)
        if self.want_pvmmio:  # ACRN: ask through vgt_if, use only what the host leaves in the field
            yield from self.wr(r.PV_ENABLE_PVMMIO, self.want_pvmmio)
            self.pvmmio = yield from self.rd(r.PV_ENABLE_PVMMIO)
        # GGTT ballooning: the four registers, in order (intel_vgt_balloon)
        mbase = yield from self.rd(r.PV_MAPPABLE_BASE)
        msize = yield from self.rd(r.PV_MAPPABLE_SIZE)
        ubase = yield from self.rd(r.PV_NONMAPPABLE_BASE)
        usize = yield from self.rd(r.PV_NONMAPPABLE_SIZE)
        ggtt_mappable_end = self.gpu.bar2_size
        if mbase + msize > ggtt_mappable_end or ubase < ggtt_mappable_end or msize == 0 or usize == 0:
            raise DriverError(f"Invalid ballooning configuration {mbase:#x}+{msize:#x} {ubase:#x}+{usize:#x}")
        self.balloon = (mbase, msize, ubase, usize)
        self.fences = yield from self.rd(r.PV_FENCE_NUM)
        yield from self._init_power()
        # interrupts: unmask and enable user + context-switch events of our engines, then the master
        groups: dict[int, int] = {}
        for e in self.engines.values():
            groups[e.gt] = groups.get(e.gt, 0) | 1 << e.user_bit | 1 << e.ctx_bit
        for gt, bits in groups.items():
            yield from self.wr(r.GT_IIR(gt), 0xFFFF_FFFF)  # clear stale events (write one to clear)
            yield from self.wr(r.GT_IER(gt), bits)
            yield from self.wr(r.GT_IMR(gt), 0xFFFF_FFFF & ~bits)
        yield from self.wr(r.MASTER_IRQ, r.MASTER_IRQ_CONTROL)
        # execlists on (PVINFO has been read, so GVT trusts us)
        for e in self.engines.values():
            yield from self.wr(e.base + r.RING_MODE, r.masked_enable(r.GFX_RUN_LIST_ENABLE))
        self.gem = Gem(self.machine, self.bar0, self.ram_reserved, (mbase, msize), (ubase, usize))
        for e in self.engines.values():
            yield from self._create_context(e)
            yield from self._init_hwsp(e)
        if modeset is not None:
            yield from modeset()
        yield from self.wr(r.PV_DISPLAY_READY, 1)
        self.ready = True

    def _wait_for(self, off: int, mask: int, want: int, what: str, tries: int = 10) -> Gen[int]:
        """intel_wait_for_register: poll until ``reg & mask == want`` (a device that never answers is an
        error, as i915's timeout is)."""
        for _ in range(tries):
            value = yield from self.rd(off)
            if value & mask == want:
                return value
        raise DriverError(f"{what}: register {off:#x} never reached {want:#x} under mask {mask:#x}")

    def _init_power(self) -> Gen[None]:
        """The gen9 bring-up i915 does before it touches the engines (gvt/handlers.c answers each one as
        the hardware would): render forcewake taken and acked (intel_uncore forcewake get), power well 1 and
        misc IO requested and powered (skl_display_core_init), the DBUF powered (gen9_dbuf_enable), the
        memory latency read through the pcode mailbox (skl_read_wm_latency), forcewake released."""
        yield from self.wr(r.FORCEWAKE_RENDER_GEN9, r.masked_enable(r.FORCEWAKE_KERNEL))
        yield from self._wait_for(r.FORCEWAKE_ACK_RENDER_GEN9, r.FORCEWAKE_KERNEL, r.FORCEWAKE_KERNEL, "forcewake ack")
        yield from self.wr(r.HSW_PWR_WELL_CTL2, r.SKL_PW1_REQ | r.SKL_MISC_IO_REQ)
        yield from self._wait_for(r.HSW_PWR_WELL_CTL2, r.SKL_PW1_STATE | r.SKL_MISC_IO_STATE,
                                  r.SKL_PW1_STATE | r.SKL_MISC_IO_STATE, "power well 1")
        yield from self.wr(r.DBUF_CTL, r.DBUF_POWER_REQUEST)
        yield from self._wait_for(r.DBUF_CTL, r.DBUF_POWER_STATE, r.DBUF_POWER_STATE, "DBUF power")
        yield from self.wr(r.GEN6_PCODE_DATA, 0)
        yield from self.wr(r.GEN6_PCODE_DATA1, 0)
        yield from self.wr(r.GEN6_PCODE_MAILBOX, r.GEN6_PCODE_READY | r.GEN9_PCODE_READ_MEM_LATENCY)
        yield from self._wait_for(r.GEN6_PCODE_MAILBOX, r.GEN6_PCODE_READY, 0, "pcode mailbox")
        self.mem_latency = yield from self.rd(r.GEN6_PCODE_DATA)
        yield from self.wr(r.FORCEWAKE_RENDER_GEN9, r.FORCEWAKE_KERNEL << 16)  # _MASKED_BIT_DISABLE: forcewake put

    def _init_hwsp(self, e: EngineState) -> Gen[None]:
        """The engine's status page (intel_engine_init_status_page + RING_HWS_PGA), its CSB write pointer
        reset to 7 (reset_csb_pointers). With VGT_CAPS_HWSP_EMULATION GVT mirrors the CSB there."""
        assert self.gem is not None
        e.hwsp = yield from self.gem.create(4096)
        yield from self.machine.write_u32(e.hwsp.gpa + r.HWS_CSB_WRITE, 7)
        yield from self.wr(e.base + r.RING_HWS_PGA, e.hwsp.gm)

    def _create_context(self, e: EngineState) -> Gen[None]:
        """The engine's default context (no PPGTT: its PDPs are zero)."""
        e.context, e.ring = yield from self._new_lrc(e, (0, 0, 0, 0))

    def _new_lrc(self, e: EngineState, pdps: tuple[int, int, int, int]) -> Gen[tuple[Bo, Bo]]:
        """An LRC: page 0 PPHWSP, page 1 the ring-context register state (LRI format) with these PDP
        values, plus a ring buffer."""
        assert self.gem is not None
        ring = yield from self.gem.create(RING_SIZE)
        context = yield from self.gem.create(2 * 4096)
        state = context.gpa + 4096
        image = bytearray(4096)

        def put(off: int, val: int) -> None:
            image[off:off + 4] = (val & 0xFFFF_FFFF).to_bytes(4, "little")

        put(0x04, cmds.MI_INSTR(0x22, 2 * 14 - 1))  # LRI header of the register-state block
        for val_off, reg in ((r.CTX_CTRL_VAL, r.RING_CTX_CTRL), (r.CTX_RING_HEAD_VAL, r.RING_HEAD),
                             (r.CTX_RING_TAIL_VAL, r.RING_TAIL), (r.CTX_RB_START_VAL, r.RING_START),
                             (r.CTX_RB_CTRL_VAL, r.RING_CTL)):
            put(val_off - 4, e.base + reg)
        if e.name == "rcs":  # the render context's workaround batch registers (values 0: none programmed)
            for val_off, reg in ((r.CTX_BB_PER_CTX_PTR_VAL, r.RING_BB_PER_CTX_PTR),
                                 (r.CTX_RCS_INDIRECT_CTX_VAL, r.RING_INDIRECT_CTX),
                                 (r.CTX_RCS_INDIRECT_CTX_OFFSET_VAL, r.RING_INDIRECT_CTX_OFFSET)):
                put(val_off - 4, e.base + reg)
        put(r.CTX_RB_START_VAL, ring.gm)
        put(r.CTX_RB_CTRL_VAL, (RING_SIZE - 4096) | r.RING_VALID)
        put(0x84, cmds.MI_INSTR(0x22, 2 * 9 - 1))  # the second LRI block: timestamp and the PDPs
        for n, (udw_off, ldw_off) in r.CTX_PDP_VAL.items():
            udw_reg, ldw_reg = PDP_REG[n]
            put(udw_off - 4, e.base + udw_reg)
            put(ldw_off - 4, e.base + ldw_reg)
            put(udw_off, pdps[n] >> 32)
            put(ldw_off, pdps[n])
        yield from self.machine.write_mem(state, bytes(image))
        return context, ring

    def alloc_table_page(self) -> int:
        """A page of guest RAM for a page table (not bound in the GGTT: only the GPU's PPGTT walk and
        GVT's shadowing read it)."""
        assert self.gem is not None
        return self.gem.ram.alloc(4096)

    def create_ppgtt_context(self, engine: str, levels: int = 3, vcpu: int = 0) -> Gen[PpgttContext]:
        """Give ``engine`` a PPGTT context: the page tables (top level), the g2v CREATE notification,
        then the LRC whose PDP values are the guest-physical roots. Idempotent."""
        e = self.engines[engine]
        if e.ppgtt_ctx is not None:
            return e.ppgtt_ctx
        ppgtt = GuestPpgtt(self.machine, self.alloc_table_page, levels)
        yield from ppgtt.create(vcpu)
        with (yield from self.pv_lock.hold()):
            yield from ppgtt_notify_vgt(self.wr, ppgtt, create=True)
        context, ring = yield from self._new_lrc(e, ppgtt.roots)
        e.ppgtt_ctx = PpgttContext(ppgtt, context, ring, PPGTT_CTX_ID_BASE + list(self.engines).index(engine))
        return e.ppgtt_ctx

    def destroy_ppgtt_contexts(self) -> Gen[None]:
        """Teardown: g2v DESTROY for every PPGTT context (GVT drops its reference and, with it, the
        shadow tables and their write protection)."""
        for e in self.engines.values():
            if e.ppgtt_ctx is None:
                continue
            with (yield from e.lock.hold()), (yield from self.pv_lock.hold()):
                yield from ppgtt_notify_vgt(self.wr, e.ppgtt_ctx.ppgtt, create=False)
            e.ppgtt_ctx = None

    # ------------------------------------------------------------------------------------------ submit
    def descriptor(self, e: EngineState, ppgtt: bool = False) -> int:
        """The 64-bit context descriptor: valid, addressing mode (legacy 32-bit for the default context;
        1 or 3 for a PPGTT context), privileged, LRCA, context id."""
        c = e.ppgtt_ctx if ppgtt else e
        assert c is not None and c.context is not None
        mode = c.addressing if isinstance(c, PpgttContext) else r.DESC_ADDRESSING_LEGACY32
        ldw = r.DESC_VALID | mode | r.DESC_PRIVILEGE | (c.context.gm & ~0xFFF)
        return c.ctx_id << 32 | ldw

    def submit(self, engine: str, commands: list[int], timeout: float | None = None, vcpu: int = 0,
                     wait_user_irq: bool = False, ppgtt: bool = False,
                     wa: tuple[int, int, int | None] | None = None) -> Gen[None]:
        """Append commands to the engine's ring, submit through ELSP, wait for context_complete and, if the
        commands end with MI_USER_INTERRUPT, for that interrupt too (as i915 waits on a request's
        breadcrumb interrupt), so one request's interrupt is never merged with the next one's in IIR.
        ``ppgtt`` submits on the engine's PPGTT context (create_ppgtt_context first). ``wa`` (render engine)
        = (indirect-ctx buffer GGTT address, its size in cachelines, per-ctx batch address or None): the
        context image carries them for this request (i915 lrc_init_wa_ctx / lrc_setup_indirect_ctx: they run
        at context restore), and they are cleared again once it completed.

        Raises DriverError on a GPU hang (no completion in time, or the vGPU failed the request)."""
        e = self.engines[engine]
        c = e.ppgtt_ctx if ppgtt else e
        if c is None:
            raise DriverError(f"{engine}: no PPGTT context")
        assert c.ring is not None and c.context is not None
        with (yield from e.lock.hold()):
            data = cmds.to_bytes(commands + ([cmds.MI_NOOP] if len(commands) % 2 else []))  # qword-aligned tail
            if c.tail + len(data) > RING_SIZE:  # wrap: pad with NOOPs to the end, start over at 0
                yield from self.machine.write_mem(c.ring.gpa + c.tail, bytes(RING_SIZE - c.tail), vcpu)
                yield from self._set_ring(c.context, head=0, tail=0, vcpu=vcpu)
                c.tail = 0
            yield from self.machine.write_mem(c.ring.gpa + c.tail, data, vcpu)
            c.tail = (c.tail + len(data)) % RING_SIZE  # intel_ring_wrap: a ring filled to its end goes on at 0
            yield from self.machine.write_u32(c.context.gpa + 4096 + r.CTX_RING_TAIL_VAL, c.tail, vcpu)
            if wa is not None:
                yield from self._set_wa(c.context, wa, vcpu)
            e.pending = True
            e.user_pending = wait_user_irq
            e.inflight_ctx = c.ctx_id
            desc = self.descriptor(e, ppgtt)
            if isinstance(c, PpgttContext):  # ppgtt: the engine's PPGTT context
                if self.pv is not None and self.pv.ppgtt:
                    for lo, hi in c.ppgtt.dirty:  # PV PPGTT: one update per edited range, no WP fault per entry
                        yield from self.pv.ppgtt_update(c.ppgtt.roots[0], lo, hi - lo, vcpu)
                c.ppgtt.dirty.clear()
            vc = self.machine.vcpus[vcpu]
            with (yield from vc.irqs_off()):  # the submission's traps, with nothing interleaved on this vCPU
                before = vc.traps
                if self.pv is not None and self.pv.submission:
                    e.pv_wait_seq = yield from self.pv.submit(engine, desc, 0, vcpu)
                elif self.pvmmio & r.PVMMIO_ELSP_SUBMIT:  # ACRN PVMMIO: 3 dwords in the shared page, 1 trap
                    # one elsp_data for every engine of the vGPU: a submission on another engine (another
                    # vCPU) must not rewrite it between these writes and the ELSP write that consumes it
                    with (yield from self.pvmmio_lock.hold()):
                        shared = self.bar0 + r.PVMMIO_SHARED_PAGE + r.PVMMIO_ELSP_DATA
                        for i, value in enumerate((0, 0, desc >> 32)):
                            yield from self.machine.mmio_write(shared + 4 * i, 4, value, vcpu)
                        yield from self.wr(e.base + r.ELSP, desc & 0xFFFF_FFFF, vcpu=vcpu)
                else:
                    for value in (0, 0, desc >> 32, desc & 0xFFFF_FFFF):  # element 1 (invalid), element 0
                        yield from self.wr(e.base + r.ELSP, value, vcpu=vcpu)
                self.submission_traps[vc.traps - before] += 1
            try:
                yield from self._hangcheck_wait(e, timeout if timeout is not None else self.hang_timeout)
            except DriverError:
                if wa is not None:
                    yield from self._set_wa(c.context, None, vcpu)
                raise
            finally:
                e.pending = e.user_pending = False
            if wa is not None:
                yield from self._set_wa(c.context, None, vcpu)

    def _set_wa(self, context: Bo, wa: tuple[int, int, int | None] | None, vcpu: int) -> Gen[None]:
        """RCS_INDIRECT_CTX = address | cachelines, RCS_INDIRECT_CTX_OFFSET (gen9 default), BB_PER_CTX_PTR =
        address | valid in the context image; ``None`` clears them."""
        state = context.gpa + 4096
        ind, lines, per = wa if wa is not None else (0, 0, None)
        yield from self.machine.write_u32(state + r.CTX_RCS_INDIRECT_CTX_VAL, (ind | lines) if lines else 0, vcpu)
        yield from self.machine.write_u32(state + r.CTX_RCS_INDIRECT_CTX_OFFSET_VAL,
                                          r.INDIRECT_CTX_OFFSET_GEN9 if lines else 0, vcpu)
        yield from self.machine.write_u32(state + r.CTX_BB_PER_CTX_PTR_VAL, (per | 1) if per is not None else 0, vcpu)

    def _hangcheck_wait(self, e: EngineState, timeout: float) -> Gen[None]:
        """Wait for the request's completion (and its user interrupt), checking the engine once a
        hangcheck period like i915's hangcheck: a device that reads all ones is gone (its device model
        or GPU died: reset at once); no completion within ``timeout`` is a hang."""
        rt = self.machine.rt
        deadline = rt.now + timeout
        while True:
            until = min(rt.now + self.hangcheck_period, deadline)
            if (yield from wait_until(e.done, lambda: not e.pending and not e.user_pending, until)):
                return
            if rt.now >= deadline:
                what = "context_complete" if e.pending else "user interrupt"
                raise DriverError(f"{e.name}: GPU hang (no {what} in {timeout}s)")
            status = yield from self.rd(e.base + r.EXECLIST_STATUS)
            if status == 0xFFFF_FFFF:
                raise DriverError(f"{e.name}: GPU gone (EXECLIST_STATUS reads all ones)")
            # A missed interrupt: the completion is in IIR but its MSI never came (lost with a hypervisor
            # service that died with it on the wire). i915 kicked the waiters of an engine that had moved on
            # without an interrupt from its hangcheck (intel_breadcrumbs.c intel_breadcrumbs_hangcheck,
            # missed_irq_rings); here the hangcheck runs the interrupt handler once, which finds nothing to
            # do unless the summary bits of MASTER_IRQ say an event is pending.
            if (yield from self._handle_irq()):
                self.missed_irqs += 1

    def _set_ring(self, context: Bo, head: int, tail: int, vcpu: int) -> Gen[None]:
        state = context.gpa + 4096
        yield from self.machine.write_u32(state + r.CTX_RING_HEAD_VAL, head, vcpu)
        yield from self.machine.write_u32(state + r.CTX_RING_TAIL_VAL, tail, vcpu)

    # --------------------------------------------------------------------------------------- interrupt
    def on_msi(self, addr: int, data: int) -> Gen[None]:
        """The MSI handler (gen8_irq_handler): master off, read and ack IIRs, process, master on."""
        self.msis += 1
        if data & 0xFF != self.gpu.msi_vector:
            return
        yield from self._handle_irq()

    def _handle_irq(self) -> Gen[bool]:
        """The handler's body; False when MASTER_IRQ shows nothing pending."""
        with (yield from self.irq_lock.hold()):
            master = yield from self.rd(r.MASTER_IRQ)
            if not master & ~r.MASTER_IRQ_CONTROL:
                return False  # nothing pending (already handled by an earlier run)
            yield from self.wr(r.MASTER_IRQ, 0)
            for gt in sorted({e.gt for e in self.engines.values()}):
                iir = yield from self.rd(r.GT_IIR(gt))
                if not iir:
                    continue
                yield from self.wr(r.GT_IIR(gt), iir)  # write one to clear
                for e in self.engines.values():
                    if e.gt != gt:
                        continue
                    if iir & (1 << e.user_bit):
                        e.user_irqs += 1
                        if e.user_pending:
                            e.user_pending = False
                            e.done.fire()
                        if self.pv is not None and e.pv_wait_seq:  # PV: completion is in the shared page
                            done_seq, _status = self.pv.done(e.name)
                            if done_seq == e.pv_wait_seq and e.pending:
                                e.completions += 1
                                e.pending = False
                                e.done.fire()
                    if iir & (1 << e.ctx_bit):
                        yield from self._process_csb(e)
            if master & r.MASTER_DE_PIPE_A and self.display is not None:
                yield from self.display.on_pipe_irq()
            yield from self.wr(r.MASTER_IRQ, r.MASTER_IRQ_CONTROL)
            return True

    def _process_csb(self, e: EngineState) -> Gen[None]:
        """process_csb: the write pointer and entries from the HWS page (RAM, no trap) when GVT emulates
        it (VGT_CAPS_HWSP_EMULATION, as i915's execlists read csb_write / csb_status), else from the CSB
        registers; then the read pointer is written back through MMIO."""
        hwsp = e.hwsp.gpa if e.hwsp is not None and self.caps & r.VGT_CAPS_HWSP_EMULATION else None
        if hwsp is not None:
            wp = self.machine.read_u32(hwsp + r.HWS_CSB_WRITE) & 0x7
            e.csb_hwsp_reads += 1
        else:
            wp = (yield from self.rd(e.base + r.CSB_PTR)) & 0x7
        if wp == 7:
            return  # reset value: empty
        head = e.csb_head
        while head != wp:
            head = (head + 1) % r.CSB_ENTRIES
            if hwsp is not None:
                status = self.machine.read_u32(hwsp + r.HWS_CSB_BUF0 + head * 8)
                ctx = self.machine.read_u32(hwsp + r.HWS_CSB_BUF0 + head * 8 + 4)
            else:
                status = yield from self.rd(e.base + r.CSB_BUF + head * 8)
                ctx = yield from self.rd(e.base + r.CSB_BUF + head * 8 + 4)
            e.csb_events.append(status)
            if status & r.CSB_CTX_COMPLETE and ctx == e.inflight_ctx:
                e.completions += 1
                if e.pending:
                    e.pending = False
                    e.done.fire()
                else:  # no request waits for it: a completion delivered twice, or after a declared hang
                    self.unexpected_completions += 1
        e.csb_head = head
        yield from self.wr(e.base + r.CSB_PTR, (0x7 << 8) << 16 | head << 8)  # masked write of the read pointer
