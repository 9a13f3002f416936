"""PPGTT mms: guest address spaces known by their root pointers, and their shadows (i915/gvt gtt.c, the
ppgtt mm half; gvt/gtt.c, gvt/page_track.c and 5.2). The shadow page tables themselves are spt.py.

* A **ppgtt mm** is named by its roots (L3: the 4 PDPs of a legacy 32-bit context; L4: pdp0 = the PML4).
  g2v CREATE takes a reference (creating and shadowing it), DESTROY drops one; a workload whose context
  names roots nobody announced gets one lazily, alive while a workload on the GPU walks it.
* Before each dispatch (``prepare_workload``): the mm of the context's roots is shadowed if it is not,
  out-of-sync pages are synced and half-written entries flushed; the SHADOW roots go into the shadow
  context.
* Device-wide (``PpgttGlobal``, struct intel_gvt_gtt): the frames shadow tables live in, the OOS snapshot
  pool and the ``enable_out_of_sync`` switch (off by default, as upstream).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .gtt import PPGTT_ROOT_L3, PPGTT_ROOT_L4, pte_pfn
from .spt import LEVEL_PD, LEVEL_PML4, LEVEL_PT, NoFrames, PpgttError, PpgttGlobal, Spt, SptTable

if TYPE_CHECKING:
    from .vgpu import Vgpu

__all__ = ["PpgttError", "NoFrames", "PpgttGlobal", "PpgttMm", "VgpuPpgtt", "pdps_from_context",
           "pdps_to_context", "root_key", "ROOT_BY_MODE"]

#: root type -> (root entries, level of the table a root entry points at) (gvt/gtt.c, gvt/page_track.c:
#: L3 = 4 PDPs -> PD, L4 = pdp0 -> PML4)
ROOTS: dict[str, tuple[int, int]] = {PPGTT_ROOT_L3: (4, LEVEL_PD), PPGTT_ROOT_L4: (1, LEVEL_PML4)}
#: context descriptor addressing mode -> root type (gvt/gtt.c, gvt/page_track.c, prepare_mm; others "not supported")
ROOT_BY_MODE = {1: PPGTT_ROOT_L3, 3: PPGTT_ROOT_L4}
#: value offsets of pdp3_UDW, pdp3_LDW ... pdp0_UDW, pdp0_LDW in the ring context (gvt/handlers.c, gvt/execlist.c)
CTX_PDP_ORDER = ((3, 32), (3, 0), (2, 32), (2, 0), (1, 32), (1, 0), (0, 32), (0, 0))


def pdps_from_context(values: Sequence[int]) -> tuple[int, int, int, int]:
    """The 4 root pointers (pdp0 first) from the 8 dwords of the ring context, in context order."""
    pdps = [0, 0, 0, 0]
    for (n, shift), v in zip(CTX_PDP_ORDER, values):
        pdps[n] |= (v & 0xFFFF_FFFF) << shift
    return pdps[0], pdps[1], pdps[2], pdps[3]


def pdps_to_context(pdps: Sequence[int]) -> tuple[int, ...]:
    """The inverse: 8 dwords in context order (update_shadow_pdps writes them reversed, pdp3_UDW first)."""
    return tuple((pdps[n] >> shift) & 0xFFFF_FFFF for n, shift in CTX_PDP_ORDER)


def root_key(root: str, pdps: Sequence[int]) -> tuple[int, int, int, int]:
    """What identifies an mm: all 4 PDPs for L3, pdp0 only for L4 (the guest leaves pdp1..3 stale)."""
    return (pdps[0], 0, 0, 0) if root == PPGTT_ROOT_L4 else (pdps[0], pdps[1], pdps[2], pdps[3])


# ------------------------------------------------------------------------------------------- mms
@dataclass(eq=False)
class PpgttMm:
    """struct intel_vgpu_mm of type PPGTT: root pointers, their shadows, the references."""

    root: str
    pdps: tuple[int, int, int, int]
    refcount: int = 1
    shadow_pdps: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    roots: list[Spt | None] = field(default_factory=lambda: [None, None, None, None])
    shadowed: bool = False


class VgpuPpgtt:
    """One vGPU's ppgtt mms, SPTs, post-shadow and OOS lists. Every entry point keeps its state
    consistent when it fails: a shadow it cannot finish is torn down and rebuilt at the next submission."""

    def __init__(self, vgpu: "Vgpu") -> None:
        self.vgpu = vgpu
        self.mms: list[PpgttMm] = []
        self.users: dict[int, PpgttMm] = {}  # workload id -> the mm it was dispatched with
        self.stats: Counter[str] = Counter()
        self.spt = SptTable(vgpu, self.stats, on_no_frames=self._reclaim)

    @property
    def spts(self) -> dict[int, Spt]:
        """The vGPU's shadow page tables by guest gfn."""
        return self.spt.spts

    def _count(self, name: str, n: int = 1) -> None:
        self.spt._count(name, n)

    # -------------------------------------------------------------------------------------- mms
    def find(self, root: str, pdps: Sequence[int]) -> PpgttMm | None:
        """intel_vgpu_find_ppgtt_mm: L4 compares pdp0, L3 all four."""
        key = root_key(root, pdps)
        return next((mm for mm in self.mms if mm.root == root and mm.pdps == key), None)

    def get(self, root: str, pdps: Sequence[int]) -> PpgttMm:
        """intel_vgpu_get_ppgtt_mm (g2v CREATE): take a reference, or create the mm and shadow it now.
        A shadow that cannot be built yet (no frames, memory not mapped) is built at the next dispatch."""
        mm = self.find(root, pdps)
        if mm is not None:
            mm.refcount += 1
            return mm
        mm = PpgttMm(root, root_key(root, pdps))
        self.mms.append(mm)
        self._try_shadow(mm)
        return mm

    def put(self, root: str, pdps: Sequence[int]) -> bool:
        """intel_vgpu_put_ppgtt_mm (g2v DESTROY). False if no mm has these roots. The mm goes when the
        last reference does and no workload on the GPU still walks it."""
        mm = self.find(root, pdps)
        if mm is None or mm.refcount <= 0:  # unknown, or only a workload's (lazy) use: not the guest's to drop
            return False
        mm.refcount -= 1
        self.reap()
        return True

    def reap(self) -> None:
        """Forget workloads that left the GPU; destroy unreferenced mms nobody walks any more."""
        inflight = self.vgpu.gvt.scheduler.inflight
        self.users = {w: mm for w, mm in self.users.items() if w in inflight}
        in_use = {id(mm) for mm in self.users.values()}
        for mm in [mm for mm in self.mms if mm.refcount <= 0 and id(mm) not in in_use]:
            self._destroy_mm(mm)

    def _destroy_mm(self, mm: PpgttMm) -> None:
        self._unshadow(mm)
        self.mms.remove(mm)
        self._count("mms_destroyed")

    def try_shadow(self, mm: PpgttMm) -> None:
        """Shadow ``mm`` now if it can be (else at its next dispatch)."""
        self._try_shadow(mm)

    def frames(self) -> list[int]:
        """Every machine frame the vGPU's shadow tables hold: SPTs, split 2M page tables, scratch tables."""
        spt = self.spt
        return ([x.mfn for x in spt.spts.values()] + [f for x in spt.spts.values() for f in x.split_2m.values()]
                + list(spt.scratch.values()))

    def restore(self, mms: list[tuple[str, tuple[int, int, int, int], int]]) -> list[PpgttMm]:
        """A restarted gvt's mms (state.py): the guest's address spaces by their roots and references, not
        shadowed; each is shadowed again from the guest's tables (in guest RAM) when next used."""
        self.mms = [PpgttMm(root, pdps, refcount) for root, pdps, refcount in mms]
        return self.mms

    def _try_shadow(self, mm: PpgttMm) -> None:
        try:
            self._shadow(mm)
        except PpgttError as err:
            self._count("shadow_deferred")
            self.vgpu.log.info("ppgtt_shadow_deferred", vgpu=self.vgpu.id, why=str(err))

    def _shadow(self, mm: PpgttMm) -> None:
        """shadow_ppgtt_mm: populate an SPT tree for every present root entry ("present" = non-zero)."""
        if mm.shadowed:
            return
        self.spt.scratch_tables()
        n, level = ROOTS[mm.root]
        try:
            for i in range(n):
                ge = mm.pdps[i]
                if ge == 0:
                    continue
                spt = self.spt.get(pte_pfn(ge), level)
                mm.roots[i] = spt
                mm.shadow_pdps[i] = (spt.mfn << PAGE_SHIFT) if spt is not None else 0
        except PpgttError:
            self._unshadow(mm)
            raise
        mm.shadowed = True
        self._count("mms_shadowed")

    def _unshadow(self, mm: PpgttMm) -> None:
        """invalidate_ppgtt_mm: drop the root SPTs (the mm stays, re-shadowed when next pinned)."""
        for i, spt in enumerate(mm.roots):
            mm.roots[i] = None
            mm.shadow_pdps[i] = 0
            if spt is not None:
                self.spt.put(spt)
        mm.shadowed = False

    # ---------------------------------------------------------------------------- before dispatch
    def prepare_workload(self, desc: int, ctx_pdps: Sequence[int], workload_id: int) -> tuple[int, int, int, int]:
        """prepare_mm + the PPGTT steps of prepare_workload (gvt/gtt.c, gvt/page_track.c, gvt/scheduler.c): the mm
        of the context's roots (lazily created), shadowed, OOS pages synced, post-shadow flushed. Returns the
        SHADOW root pointers for the shadow context (pdp0 first). Raises PpgttError."""
        mode = (desc >> 3) & 0x3
        root = ROOT_BY_MODE.get(mode)
        if root is None:
            raise PpgttError(f"addressing mode {mode} not supported (only 1 = L3, 3 = L4)")
        pdps = pdps_from_context(ctx_pdps)
        self.reap()
        mm = self.find(root, pdps)
        if mm is None:  # no g2v CREATE: the workload's reference is the only one
            mm = PpgttMm(root, root_key(root, pdps), refcount=0)
            self.mms.append(mm)
            self._count("mms_lazy")
        self.users[workload_id] = mm
        try:
            self._shadow(mm)
            self.spt.sync_oos(only=self.spt.tree(mm.roots))  # this address space's pages (spt.py says why)
            self.spt.flush_post_shadow()
        except NoFrames as err:
            self.spt.reclaim()
            raise PpgttError(str(err)) from None
        s = mm.shadow_pdps
        return s[0], s[1], s[2], s[3]

    def _reclaim(self) -> None:
        """reclaim_one_ppgtt_mm, bluntly: tear every shadow of this vGPU down (rebuilt at the next
        dispatch) so a half-built tree never stays around."""
        for mm in self.mms:
            self._unshadow(mm)

    # ---------------------------------------------------------------------------------- PV PPGTT
    def set_pv(self, enabled: bool) -> None:
        """Switch between write-protected tables and PV updates: every shadow is rebuilt in the new mode
        at the next dispatch."""
        if self.spt.pv == enabled:
            return
        for mm in self.mms:
            self._unshadow(mm)
        self.spt.pv = enabled

    def pv_update(self, pdp: int, start: int, length: int) -> None:
        """PV_PPGTT_UPDATE (pdp, start, length): walk the shadowed tree of the mm rooted at ``pdp`` over the
        range and shadow again every entry the guest changed. An mm not shadowed yet is built from the
        guest tables at its next dispatch anyway."""
        mm = next((mm for mm in self.mms if pdp and pdp in mm.pdps), None)
        if mm is None:
            self._count("pv_update_unknown_root")
            return
        if not mm.shadowed:
            return
        pages: dict[int, tuple[int, ...]] = {}
        va = start & ~(PAGE_SIZE - 1)
        limit = 1 << 32 if mm.root == PPGTT_ROOT_L3 else 1 << 48
        while va < start + length and va < limit:
            spt = mm.roots[(va >> 30) & 3] if mm.root == PPGTT_ROOT_L3 else mm.roots[0]
            while spt is not None:
                index = (va >> (PAGE_SHIFT + 9 * (spt.level - 1))) & 511
                self.spt.pv_sync(spt, index, pages)
                spt = spt.children.get(index) if spt.level > LEVEL_PT else None
            va += PAGE_SIZE
        self._count("pv_updates")

    # ------------------------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """intel_vgpu_invalidate_ppgtt (full GT reset): tear every shadow down, keep the mms."""
        for mm in self.mms:
            self._unshadow(mm)

    def clean(self) -> None:
        """intel_vgpu_destroy_all_ppgtt_mm (DMLR, destroy): every mm, SPT and tracked page goes."""
        for mm in list(self.mms):
            self._unshadow(mm)
        self.mms.clear()
        self.users.clear()
        self.spt.clean()

    def frames_lost(self) -> None:
        """The frames are gone with vhm: drop all shadow state without returning or writing anything."""
        self.spt.frames_lost()
        for mm in self.mms:
            mm.roots = [None, None, None, None]
            mm.shadow_pdps = [0, 0, 0, 0]
            mm.shadowed = False

    def info(self) -> dict[str, int]:
        """Counts for STATUS and tests."""
        return {"mms": len(self.mms), "spts": len(self.spt.spts), "oos": len(self.spt.oos_list),
                "post_shadow": len(self.spt.post_shadow_list), **self.stats}
