"""A rig for the scanner and scheduler tests (no tests here): the gvt core with real machine memory, guests
that build contexts, rings and batches in their RAM and submit through ELSP MMIO writes, and optionally the
pgpu core executing what gvt submits, all in one process, with no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from test_gvt_fixtures import program_bar0

from gvtsim.protocol import errors as protocol_errors
from gvtsim.services.common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from gvtsim.hardware import cmds
from gvtsim.hardware import regs as r
from gvtsim.services.gvt import effects as fx
from gvtsim.services.gvt import interrupt as irq
from gvtsim.services.gvt import pvinfo as pv
from gvtsim.protocol.errors import Refusal
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.engines import BY_NAME
from gvtsim.services.gvt.gtt import pte_encode
from gvtsim.services.gvt.vgpu import Vgpu
from gvtsim.services.pgpu.core import PgpuConfig, PgpuCore

RAM_PAGES = 512  # 2 MiB per VM
SCRATCH_MFN = 0x10
POOL_BASE, POOL_FRAMES = 0x100, 0x400
GTT = 8 << 20
RING_PAGES = 4


class RamMpt:
    """A VM's RAM: gfn g is machine frame ``base + g``; reads and writes go to the machine memory."""

    def __init__(self, mem: MachineMemory, base: int, pages: int = RAM_PAGES) -> None:
        self.mem, self.base, self.pages = mem, base, pages

    def is_valid_gfn(self, gfn: int) -> bool:
        return 0 <= gfn < self.pages

    def gfn_to_mfn(self, gfn: int) -> int | None:
        return self.base + gfn if self.is_valid_gfn(gfn) else None

    def dma_map_guest_page(self, gfn: int) -> int | None:
        return self.gfn_to_mfn(gfn)

    def read_gpa(self, gpa: int, length: int) -> bytes | None:
        if gpa < 0 or gpa + length > self.pages << PAGE_SHIFT:
            return None
        return self.mem.read((self.base << PAGE_SHIFT) + gpa, length)

    def write_gpa(self, gpa: int, data: bytes) -> bool:
        if gpa < 0 or gpa + len(data) > self.pages << PAGE_SHIFT:
            return False
        self.mem.write((self.base << PAGE_SHIFT) + gpa, data)
        return True


@dataclass
class Bo:
    gm: int
    gpa: int
    size: int


@dataclass
class Guest:
    """One VM's driver side: GM and RAM bump allocators, a context and ring per engine."""

    rig: "Rig"
    vm: int
    vgpu: Vgpu
    mpt: RamMpt
    next_gfn: int = 16
    next_gm: int = 0
    contexts: dict[str, tuple[Bo, Bo, int]] = field(default_factory=dict)  # engine -> (ctx, ring, tail)

    def bo(self, size: int) -> Bo:
        """Guest RAM bound at the next free GM of the vGPU's hidden range (GGTT PTEs through BAR0)."""
        pages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        gm = self.vgpu.resource.high_base + self.next_gm
        gpa = self.next_gfn << PAGE_SHIFT
        for i in range(pages):
            self.bind(gm + (i << PAGE_SHIFT), self.next_gfn + i)
        self.next_gfn += pages
        self.next_gm += pages << PAGE_SHIFT
        self.mpt.write_gpa(gpa, bytes(pages << PAGE_SHIFT))
        return Bo(gm, gpa, pages << PAGE_SHIFT)

    def bind(self, gm: int, gfn: int) -> None:
        self.rig.gvt.emulate_mmio_write(self.vgpu, self.vgpu.cfg.bar0_base() + GTT + (gm >> PAGE_SHIFT) * 8,
                                        pte_encode(gfn << PAGE_SHIFT), 8)

    def write(self, gpa: int, dwords: list[int]) -> None:
        self.mpt.write_gpa(gpa, cmds.to_bytes(dwords))

    def u32(self, gpa: int) -> int:
        data = self.mpt.read_gpa(gpa, 4)
        assert data is not None
        return int.from_bytes(data, "little")

    def context(self, engine: str) -> tuple[Bo, Bo, int]:
        if engine not in self.contexts:
            ring, ctx = self.bo(RING_PAGES * PAGE_SIZE), self.bo(2 * PAGE_SIZE)
            state = ctx.gpa + PAGE_SIZE
            self.write(state + r.CTX_RB_START_VAL, [ring.gm])
            self.write(state + r.CTX_RB_CTRL_VAL, [((RING_PAGES - 1) * PAGE_SIZE) | r.RING_VALID])
            self.contexts[engine] = (ctx, ring, 0)
        return self.contexts[engine]

    def submit(self, engine: str, commands: list[int], pdps: tuple[int, ...] = ()) -> None:
        """Append to the engine's ring, set the context's tail (and PDPs), write the 4 ELSP dwords."""
        ctx, ring, tail = self.context(engine)
        data = commands + ([cmds.MI_NOOP] if len(commands) % 2 else [])
        assert tail + 4 * len(data) < RING_PAGES * PAGE_SIZE, "the rig does not wrap rings"
        self.write(ring.gpa + tail, data)
        tail += 4 * len(data)
        self.contexts[engine] = (ctx, ring, tail)
        state = ctx.gpa + PAGE_SIZE
        self.write(state + r.CTX_RING_TAIL_VAL, [tail])
        for off, val in zip((0xCC, 0xBC, 0xAC, 0x9C), pdps):  # pdp0..3 LDW (gvt/handlers.c, gvt/execlist.c)
            self.write(state + off, [val])
        desc = (0x100 + list(BY_NAME).index(engine)) << 32 | r.DESC_VALID | r.DESC_ADDRESSING_LEGACY32 \
            | r.DESC_PRIVILEGE | ctx.gm
        base = BY_NAME[engine].base + r.ELSP
        for value in (0, 0, desc >> 32, desc & 0xFFFF_FFFF):
            self.rig.gvt.emulate_mmio_write(self.vgpu, self.vgpu.cfg.bar0_base() + base, value, 4)

    def iir(self, group: str = "GT0") -> int:
        g = irq.GROUP_BY_NAME[group].base
        return self.rig.gvt.emulate_mmio_read(self.vgpu, self.vgpu.cfg.bar0_base() + g + irq.IIR, 4)


def _accepted(result: object) -> None:
    """pgpu answers a request it refuses with a returned Refusal; in this rig every GPU request must be taken."""
    assert not isinstance(result, protocol_errors.Refusal), result


class Rig:
    """gvt (and optionally pgpu) on one machine memory. ``pump()`` plays the shells: effects to pgpu,
    GPU events back to gvt, until nothing moves."""

    def __init__(self, path: str, pgpu: bool = True) -> None:
        self.mem = MachineMemory(path, size=64 << 20, create=True)
        self.mpts: dict[int, RamMpt] = {}
        self.gvt = Gvt(mpt_factory=lambda vm, root, ram: self.mpts[vm], scratch_mfn=SCRATCH_MFN)
        self.gvt.shadow.init(self.mem)
        self.gvt.shadow.add_frames(list(range(POOL_BASE, POOL_BASE + POOL_FRAMES)))
        self.pgpu = PgpuCore(self.mem, PgpuConfig(time_scale=0)) if pgpu else None
        self.now = 0.0
        self.submits: list[fx.PgpuSubmit] = []
        self.events: list[tuple[str, int, str]] = []  # (kind, tag, reason)
        self.effects: list[fx.Effect] = []  # every effect gvt emitted, in order

    def boot(self, vm: int, spec: str | None = None) -> Guest:
        """Create the vGPU (small custom slices keep the scratch fills cheap), probe it, read PVINFO,
        unmask GT0 interrupts, enable execlists on rcs and bcs."""
        self.mpts[vm] = RamMpt(self.mem, 0x1000 + vm * RAM_PAGES)
        v = self.gvt.create_vgpu(vm, spec or f"{vm},8,8,1", ept_root=1, ram_mb=RAM_PAGES >> 8, now=0.0)
        assert not isinstance(v, Refusal), v
        program_bar0(self.gvt, v, base=0xE000_0000)
        bar0 = v.cfg.bar0_base()
        assert self.gvt.emulate_mmio_read(v, bar0 + pv.MAGIC, 8) == pv.VGT_MAGIC
        gt0 = irq.GROUP_BY_NAME["GT0"].base
        self.gvt.emulate_mmio_write(v, bar0 + gt0 + irq.IMR, 0, 4)
        self.gvt.emulate_mmio_write(v, bar0 + gt0 + irq.IER, 0xFFFF_FFFF, 4)
        for e in ("rcs", "bcs"):
            self.gvt.emulate_mmio_write(v, bar0 + BY_NAME[e].base + r.RING_MODE,
                                        r.masked_enable(r.GFX_RUN_LIST_ENABLE), 4)
        self.pump()
        return Guest(self, vm, v, self.mpts[vm])

    def pump(self, rounds: int = 100) -> None:
        """Deliver effects and GPU events until both are quiet."""
        for _ in range(rounds):
            moved = False
            for e in self.gvt.drain_effects():
                moved = True
                self.effects.append(e)
                if self.pgpu is None:
                    continue
                if isinstance(e, fx.PgpuMmioWrite):
                    _accepted(self.pgpu.mmio_write(e.offset, e.size, e.value, self.now))
                if isinstance(e, fx.PgpuGgttWrite):
                    _accepted(self.pgpu.ggtt_write(e.entries))
                elif isinstance(e, fx.PgpuGgttFill):
                    _accepted(self.pgpu.ggtt_write((i, e.pte) for i in range(e.index, e.index + e.count)))
                elif isinstance(e, fx.PgpuSubmit):
                    self.submits.append(e)
                    _accepted(self.pgpu.submit(e.engine, list(e.descs), e.tag, self.now))
            if self.pgpu is not None:
                for ev in self.pgpu.advance(self.now):
                    moved = True
                    self.events.append((ev.kind, ev.tag, ev.reason))
                    self.gvt.scheduler.on_gpu_event(ev.engine, ev.kind, ev.tag, ev.status, ev.busy_ns, ev.reason,
                                                    now=self.now)
            if not moved:
                return
        raise AssertionError("the rig never went quiet")

    def close(self) -> None:
        self.mem.close()
