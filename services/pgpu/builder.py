"""Driver-side toolkit: encode GEN commands and lay out GGTT mappings, PPGTT tables, contexts and rings in
machine memory. Tests, the benchmark and other services' tests use it to feed the emulator real encodings
(i915 intel_gpu_commands.h; see commands.py for the decoding side).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...hardware import cmds as enc
from ...hardware.engines import BY_NAME
from ...hardware.gtt import ADDR_4K_MASK, GEN8_PAGE_PRESENT, GEN8_PAGE_RW, PAGE_MASK, PAGE_SHIFT, PAGE_SIZE
from ...hardware.regs import MODE_LEGACY_32, MODE_LEGACY_64, RING_CTX
from ..common.memory import MachineMemory
from .context import make_descriptor, write_ring_context
from .ggtt import pte_encode
from .ppgtt import pd_index, pdp_index, pml4_index, pt_index


# ------------------------------------------------------------------------------------------- encoders
# One encoder for the project (hardware/cmds.py, the guest driver uses it too). Feeding the emulator's decoder
# (commands.py) with it checks the two against each other.
def mi_noop() -> list[int]:
    return [enc.MI_NOOP]


def mi_user_interrupt() -> list[int]:
    return [enc.MI_USER_INTERRUPT]


def mi_bb_end() -> list[int]:
    return [enc.MI_BATCH_BUFFER_END]


mi_bb_start = enc.batch_buffer_start
mi_store_dword = enc.store_dword
mi_store_qword = enc.store_qword
mi_lri = enc.load_register_imm
mi_flush_dw = enc.flush_dw
pipe_control = enc.pipe_control
xy_color_blt = enc.xy_color_blt
xy_src_copy_blt = enc.xy_src_copy_blt


# --------------------------------------------------------------------------------------------- layout
@dataclass
class Context:
    """A context laid out by :class:`Layout`."""

    engine: str
    lrca: int  # GGTT address of the LRC (PPHWSP); the ring context is the next page
    ring: int  # GGTT address of the ring
    ring_size: int
    ctx_id: int
    mode: int
    tail: int = 0

    @property
    def desc(self) -> int:
        return make_descriptor(self.lrca, self.ctx_id, self.mode)


@dataclass
class Layout:
    """Hands out machine frames (top-down, so GM-contiguous pages are not machine-contiguous) and GM pages,
    records the GGTT entries to write (``pending``), and writes through its own mapping."""

    mem: MachineMemory
    next_mfn: int
    next_gm_page: int = 16
    pending: list[tuple[int, int]] = field(default_factory=list)
    gm_map: dict[int, int] = field(default_factory=dict)  # gm page -> machine address

    def frame(self) -> int:
        """A fresh zeroed machine frame (its machine address)."""
        self.next_mfn -= 1
        maddr = self.next_mfn << PAGE_SHIFT
        self.mem.write(maddr, bytes(PAGE_SIZE))
        return maddr

    def gm(self, pages: int) -> int:
        """Map ``pages`` fresh frames at the next free GM pages; returns the GGTT address."""
        gma = self.next_gm_page << PAGE_SHIFT
        for i in range(pages):
            maddr = self.frame()
            self.gm_map[self.next_gm_page + i] = maddr
            self.pending.append((self.next_gm_page + i, pte_encode(maddr)))
        self.next_gm_page += pages
        return gma

    def take_pending(self) -> list[tuple[int, int]]:
        """The GGTT entries recorded since the last call."""
        out, self.pending = self.pending, []
        return out

    def maddr(self, gma: int) -> int:
        return self.gm_map[gma >> PAGE_SHIFT] | (gma & PAGE_MASK)

    def write(self, gma: int, data: bytes) -> None:
        """Write through the layout's GGTT mapping (page by page)."""
        off = 0
        while off < len(data):
            n = min(len(data) - off, PAGE_SIZE - ((gma + off) & PAGE_MASK))
            self.mem.write(self.maddr(gma + off), data[off:off + n])
            off += n

    def read(self, gma: int, length: int) -> bytes:
        out = bytearray()
        while len(out) < length:
            n = min(length - len(out), PAGE_SIZE - ((gma + len(out)) & PAGE_MASK))
            out += self.mem.read(self.maddr(gma + len(out)), n)
        return bytes(out)

    def write_dwords(self, gma: int, dws: list[int]) -> None:
        self.write(gma, b"".join((d & 0xFFFF_FFFF).to_bytes(4, "little") for d in dws))

    def context(self, engine: str, ctx_id: int, ring_pages: int = 1, mode: int = MODE_LEGACY_64,
                pdps: tuple[int, int, int, int] = (0, 0, 0, 0)) -> Context:
        """An LRC (PPHWSP + ring context) and an empty ring."""
        lrca = self.gm(2)
        ring = self.gm(ring_pages)
        ctx = Context(engine, lrca, ring, ring_pages * PAGE_SIZE, ctx_id, mode)
        write_ring_context(self.mem, self.maddr(lrca + PAGE_SIZE), BY_NAME[engine].base, start=ring,
                           size=ctx.ring_size, pdps=pdps, rcs=engine == "rcs")
        return ctx

    def emit(self, ctx: Context, dws: list[int]) -> None:
        """Append commands to the ring (wrapping) and move the ring tail in the context image. Pads with
        MI_NOOP to a qword, as i915 does: the tail register ignores bits 2:0."""
        if len(dws) % 2:
            dws = [*dws, enc.MI_NOOP]
        for d in dws:
            self.write_dwords(ctx.ring + ctx.tail, [d])
            ctx.tail = (ctx.tail + 4) % ctx.ring_size
        self.mem.write_u32(self.maddr(ctx.lrca + PAGE_SIZE) + RING_CTX["ring_tail"][1], ctx.tail)

    def ring_value(self, ctx: Context, name: str) -> int:
        """A value dword of the context's ring context (e.g. ``ring_header``)."""
        return self.mem.read_u32(self.maddr(ctx.lrca + PAGE_SIZE) + RING_CTX[name][1])


class PpgttBuilder:
    """Builds 3-level (legacy 32-bit) or 4-level page tables in machine memory, gvt-shadow style (every
    entry holds a machine address)."""

    def __init__(self, layout: Layout, levels: int = 4) -> None:
        self.layout = layout
        self.levels = levels
        self.pml4 = layout.frame() if levels == 4 else 0
        self.l3_pdps = [0, 0, 0, 0]

    @property
    def mode(self) -> int:
        return MODE_LEGACY_64 if self.levels == 4 else MODE_LEGACY_32

    @property
    def roots(self) -> tuple[int, int, int, int]:
        """Root pointers for the context image (pdp0 first); i915 writes them without the present bit."""
        if self.levels == 4:
            return (self.pml4, 0, 0, 0)
        return tuple(self.l3_pdps)  # type: ignore[return-value]

    def _child(self, table: int, index: int) -> int:
        entry = self.layout.mem.read_u64(table + index * 8)
        if entry & GEN8_PAGE_PRESENT:
            return entry & ADDR_4K_MASK
        child = self.layout.frame()
        self.layout.mem.write_u64(table + index * 8, child | GEN8_PAGE_PRESENT | GEN8_PAGE_RW)
        return child

    def map(self, gma: int, maddr: int) -> None:
        """Map the 4 KiB page at ``gma`` to machine address ``maddr``."""
        if self.levels == 4:
            pdp = self._child(self.pml4, pml4_index(gma))
            pd = self._child(pdp, pdp_index(gma, 4))
        else:
            i = pdp_index(gma, 3)
            if not self.l3_pdps[i]:
                self.l3_pdps[i] = self.layout.frame()
            pd = self.l3_pdps[i]
        pt = self._child(pd, pd_index(gma))
        self.layout.mem.write_u64(pt + pt_index(gma) * 8, (maddr & ~PAGE_MASK) | GEN8_PAGE_PRESENT | GEN8_PAGE_RW)

    def map_new(self, gma: int, pages: int) -> list[int]:
        """Map ``pages`` fresh frames at ``gma``; returns their machine addresses."""
        out = []
        for i in range(pages):
            maddr = self.layout.frame()
            self.map(gma + i * PAGE_SIZE, maddr)
            out.append(maddr)
        return out
