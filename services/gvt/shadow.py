"""Shadow resources: the machine frames gvt owns and where they sit in the host's graphics memory.

gvt gets machine frames from vhm (ALLOC_FRAMES) into one pool; shadow contexts (gvt/scheduler.c
intel_vgpu_setup_submission: one per vGPU and engine, PPHWSP + ring context + shadow ring), shadow batch
buffers (gvt/cmd_parser.c perform_bb_shadow), shadow page tables (spt.py) and PVMMIO shared pages
(pvmmio.py) are taken from it. Shadow contexts and batches are mapped in the host's reserved high GM
(above the aperture, which the guests' ballooning leaves to the host: gvt/aperture_gm.c); what gvt maps
there is kept in ``host_ptes`` so that a restarted pgpu gets it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .effects import PgpuGgttWrite
from .engines import PHYSICAL_ENGINES
from .errors import WorkloadError
from .gtt import pte_encode

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

#: shadow batch buffers: a window of the host's reserved high GM after the 16 MB the shadow contexts take
SHADOW_BB_GM_OFFSET = 16 << 20
SHADOW_BB_GM_PAGES = 4096
SHADOW_RING_PAGES = 8
SHADOW_PAGES = 2 + SHADOW_RING_PAGES  # PPHWSP + ring context + ring


@dataclass
class ShadowContext:
    """A vGPU's shadow context for one engine: frames from vhm, mapped at ``gm`` in the host's GM."""

    gm: int
    mfns: list[int]

    def maddr(self, page: int) -> int:
        return self.mfns[page] << PAGE_SHIFT


@dataclass(frozen=True)
class ShadowBb:
    """A workload's shadow batch buffers: ``mfns`` mapped at ``gm`` (page ``first`` of the window)."""

    gm: int
    first: int
    mfns: list[int]


class ShadowBbWindow:
    """First-fit page runs in the host-GM window for shadow batch buffers."""

    def __init__(self, pages: int = SHADOW_BB_GM_PAGES) -> None:
        self.used = bytearray(pages)

    def alloc(self, n: int) -> int | None:
        """The first page of a free run of ``n`` pages (marked used), or None."""
        i = self.used.find(bytes(n))
        if i < 0 or n <= 0:
            return None
        self.used[i:i + n] = b"\1" * n
        return i

    def free(self, first: int, n: int) -> None:
        self.used[first:first + n] = bytes(n)

    @staticmethod
    def gm(aperture_size: int, first: int) -> int:
        """The graphics address of window page ``first`` (host high GM starts at the aperture end)."""
        return aperture_size + SHADOW_BB_GM_OFFSET + (first << PAGE_SHIFT)


def shadow_context_gm(aperture_size: int, vgpu_id: int, engine_index: int) -> int:
    """Where the shadow context of (vGPU, engine) sits in the host's reserved high GM: a 64 KiB window
    each from the aperture end, below the shadow batch window (room for vGPU ids 1..63). Higher ids (only
    simulated GPU profiles have them: services/common/gpu_profiles.py) go above the batch window."""
    slot = vgpu_id * len(PHYSICAL_ENGINES) + engine_index
    below = SHADOW_BB_GM_OFFSET // (16 * PAGE_SIZE)
    if slot < below:
        return aperture_size + slot * 16 * PAGE_SIZE
    return aperture_size + SHADOW_BB_GM_OFFSET + (SHADOW_BB_GM_PAGES << PAGE_SHIFT) + (slot - below) * 16 * PAGE_SIZE


class ShadowResources:
    """The frame pool, the shadow contexts and batches taken from it, and gvt's own host-GM mappings."""

    def __init__(self, gvt: "Gvt") -> None:
        self.gvt = gvt
        self.frame_pool: list[int] = []
        self.contexts: dict[tuple[int, str], ShadowContext] = {}  # (vGPU id, engine) -> its shadow context
        self.batches: dict[int, ShadowBb] = {}  # workload id -> its shadow batch buffers
        self.bb_window = ShadowBbWindow()
        self.host_ptes: dict[int, int] = {}  # GGTT index -> pte of gvt's own (shadow) pages
        self.mem: MachineMemory | None = None  # machine memory, once the shell has mapped it

    def init(self, mem: MachineMemory | None) -> None:
        """Machine memory is mapped (the shell opened it): shadows can be written."""
        self.mem = mem

    def add_frames(self, mfns: list[int]) -> None:
        """Frames (from vhm ALLOC_FRAMES) for shadow contexts, rings, batches and tables."""
        self.frame_pool.extend(mfns)

    def _map(self, gm: int, mfns: list[int]) -> None:
        entries = []
        for i, mfn in enumerate(mfns):
            index = (gm >> PAGE_SHIFT) + i
            pte = pte_encode(mfn << PAGE_SHIFT)
            self.host_ptes[index] = pte
            entries.append((index, pte))
        self.gvt.effects.append(PgpuGgttWrite(tuple(entries)))

    def context_for(self, vgpu: "Vgpu", engine: str) -> ShadowContext:
        """The shadow context of (vGPU, engine), taken from the pool and mapped on first use."""
        key = (vgpu.id, engine)
        sh = self.contexts.get(key)
        if sh is not None:
            return sh
        if len(self.frame_pool) < SHADOW_PAGES:
            raise WorkloadError("no frames for a shadow context (vhm ALLOC_FRAMES pending or exhausted)")
        mfns = [self.frame_pool.pop() for _ in range(SHADOW_PAGES)]
        gm = shadow_context_gm(self.gvt.gpu.aperture_size, vgpu.id, PHYSICAL_ENGINES.index(engine))
        self._map(gm, mfns)
        sh = ShadowContext(gm, mfns)
        self.contexts[key] = sh
        return sh

    def alloc_batch(self, workload_id: int, size: int) -> ShadowBb:
        """Frames from the pool mapped at a free run of the shadow-batch window of host GM, for ``size``
        bytes of workload ``workload_id``'s shadow batches."""
        pages = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
        if self.mem is None:
            raise WorkloadError("machine memory is not mapped in gvt")
        if len(self.frame_pool) < pages:
            raise WorkloadError("no frames for a shadow batch buffer (vhm ALLOC_FRAMES pending or exhausted)")
        first = self.bb_window.alloc(pages)
        if first is None:
            raise WorkloadError("the shadow batch buffer window of host GM is full")
        mfns = [self.frame_pool.pop() for _ in range(pages)]
        gm = self.bb_window.gm(self.gvt.gpu.aperture_size, first)
        self._map(gm, mfns)
        bb = ShadowBb(gm, first, mfns)
        self.batches[workload_id] = bb
        return bb

    def reclaim_batches(self, live: set[int]) -> None:
        """Give back the shadow batches of workloads not in ``live`` (completed, failed, dropped, abandoned).
        Frames whose host mapping was forgotten (vhm restarted: they are not ours any more) stay out."""
        for wid in [i for i in self.batches if i not in live]:
            bb = self.batches.pop(wid)
            self.bb_window.free(bb.first, len(bb.mfns))
            index = bb.gm >> PAGE_SHIFT
            mapped = [self.host_ptes.pop(index + i, None) is not None for i in range(len(bb.mfns))]
            if all(mapped):
                self.frame_pool.extend(bb.mfns)

    def resync_host_ggtt(self) -> None:
        """pgpu restarted: map gvt's own shadow pages again."""
        if self.host_ptes:
            self.gvt.effects.append(PgpuGgttWrite(tuple(sorted(self.host_ptes.items()))))

    def clean_vgpu(self, vgpu: "Vgpu") -> list[int]:
        """vGPU destroyed: its shadow contexts' frames go back to the pool (returned)."""
        freed = []
        for e in PHYSICAL_ENGINES:
            sh = self.contexts.pop((vgpu.id, e), None)
            if sh is not None:
                for i in range(len(sh.mfns)):
                    self.host_ptes.pop((sh.gm >> PAGE_SHIFT) + i, None)
                self.frame_pool.extend(sh.mfns)
                freed.extend(sh.mfns)
        return freed

    def frames_lost(self) -> None:
        """vhm restarted: the frames it gave us are gone; shadow contexts are rebuilt from a new pool. The
        batch window keeps the runs of workloads still queued (reclaim_batches frees them, frames not)."""
        self.frame_pool.clear()
        self.contexts.clear()
        self.host_ptes.clear()
