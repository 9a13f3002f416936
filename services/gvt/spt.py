"""Shadow page tables (SPTs): one per guest page-table page, in a frame gvt owns, kept equal to the guest
table with every guest frame replaced by a machine frame (i915/gvt gtt.c "ppgtt_spt"; gvt/gtt.c, gvt/page_track.c).

* populate: a table entry -> the child SPT's frame (shared, refcounted, keyed by the guest gfn); a PTE ->
  ``gfn_to_mfn``; what the guest may not name -> scratch (the per-level scratch tables for a non-present
  entry or a bad table, the scratch page for a PTE naming a frame that is not the VM's);
* every guest table page is write-protected (page_track.py); a trapped write is applied to guest RAM (ACRN
  does not commit it) then shadowed, the new entry added before the old one is removed;
* a 4-byte (half-entry) write goes to scratch and is queued for the post-shadow flush before the next
  submission;
* out-of-sync (``enable_out_of_sync``): a PTE-level table trapped twice gets a snapshot and loses its
  write protection; before the next submission it is protected again and every entry that differs from the
  snapshot is shadowed again;
* huge pages (VGT_CAPS_HUGE_GTT, gtt.c ``ppgtt_populate_shadow_entry``): a PT under a PDE with IPS holds
  64K entries, only every 16th used (``for_each_present_guest_entry`` strides by GTT_64K_PTE_STRIDE); each
  is split into 16 shadow 4K entries (``split_64KB_gtt_entry``) and writes to the unused ones are ignored;
  the shadow PDE has IPS cleared. A 2M PDE is split into a shadow PT of 512 4K entries
  (``split_2MB_gtt_entry``: guest frames are never 2M-contiguous in machine memory here, so
  ``is_2MB_gtt_possible`` never holds); the shadow PDE loses PS and names that PT. A 1G PDPE is refused
  ("GVT doesn't support 1GB entry", -EINVAL): the workload fails.

The mms that own the roots of these trees are ppgtt.py.
"""

from __future__ import annotations

import functools
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...hardware.gtt import GEN8_PAGE_PRESENT as ENTRY_PRESENT
from ...hardware.gtt import GEN8_PAGE_RW as ENTRY_RW
from ...hardware.gtt import GEN8_PDE_IPS_64K as ENTRY_IPS
from ...hardware.gtt import GTT_64K_PTE_STRIDE, PAGE_DIRTY, PAGE_PAT, PAGE_PAT_LARGE
from ...hardware.gtt import GTT_ENTRIES_PER_PAGE as ENTRIES
from ...hardware.gtt import PAGE_PSE as ENTRY_PS
from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .errors import EmulationError, WorkloadError
from .gtt import pte_pfn, pte_set_pfn

if TYPE_CHECKING:
    from .core import Gvt
    from .vgpu import Vgpu

_TABLE = struct.Struct(f"<{ENTRIES}Q")

#: table levels: 1 = PT (PTEs), 2 = PD, 3 = PDP (4-level only), 4 = PML4
LEVEL_PT, LEVEL_PD, LEVEL_PDP, LEVEL_PML4 = 1, 2, 3, 4
LEVEL_NAMES = {LEVEL_PT: "PTE_PT", LEVEL_PD: "PDE_PT", LEVEL_PDP: "PDP_PT", LEVEL_PML4: "PML4_PT"}
#: gvt/gtt.c, gvt/page_track.c: a PTE-level table goes out of sync after 2 trapped writes
OOS_WRITE_THRESHOLD = 2
#: gvt/gtt.c, gvt/page_track.c: preallocated_oos_pages
PREALLOCATED_OOS_PAGES = 8192


class PpgttError(WorkloadError):
    """The PPGTT of a workload cannot be shadowed (unsupported mode, no frames, no machine memory): the
    workload fails like any other it cannot be built (a vGPU hang for the guest)."""


class NoFrames(PpgttError):
    """The shadow frame pool is empty."""


class HugePageRefused(PpgttError):
    """A 1G PDPE: gtt.c refuses it (-EINVAL, "GVT doesn't support 1GB entry")."""


@dataclass(eq=False)
class Spt:
    """struct intel_vgpu_ppgtt_spt: one guest table page and its shadow."""

    owner: "SptTable"
    gfn: int
    level: int
    mfn: int
    refcount: int = 1
    children: dict[int, "Spt"] = field(default_factory=dict)  # index -> child SPT its shadow entry names
    post_shadow: set[int] = field(default_factory=set)  # post_shadow_bitmap
    write_cnt: int = 0
    snapshot: bytearray | None = None  # the attached OOS page
    out_of_sync: bool = False  # on the vGPU's oos list (write protection removed)
    alive: bool = True
    pv_snapshot: bytearray | None = None  # PV PPGTT: the guest table as last shadowed (no write protection)
    ips: bool = False  # a PT named by a PDE with IPS: 64K entries (guest_page.pde_ips)
    split_2m: dict[int, int] = field(default_factory=dict)  # PD index -> shadow PT frame of a split 2M page


class SptTable:
    """One vGPU's SPTs, post-shadow list and OOS list. ``on_no_frames`` tears the vGPU's shadows down when
    the frame pool runs dry (they are rebuilt at the next dispatch), so a half-built tree never stays."""

    def __init__(self, vgpu: "Vgpu", stats: Counter[str], on_no_frames: Callable[[], None]) -> None:
        self.vgpu = vgpu
        self.stats = stats
        self.on_no_frames = on_no_frames
        self.spts: dict[int, Spt] = {}  # guest gfn -> SPT (intel_vgpu_find_spt_by_gfn)
        self.post_shadow_list: list[Spt] = []
        self.oos_list: list[Spt] = []
        self.scratch: dict[int, int] = {}  # level -> mfn of the scratch table (scratch_pt[type])
        self.pv = False  # PV PPGTT (pv.py): tables are not write-protected, the guest posts updates

    @property
    def glob(self) -> "PpgttGlobal":
        return self.vgpu.gvt.ppgtt

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] += n
        self.vgpu.count(f"ppgtt_{name}", n)

    def reclaim(self) -> None:
        """Out of frames: the owner drops every shadow of this vGPU."""
        self._count("reclaims")
        self.on_no_frames()

    def flush_post_shadow(self) -> None:
        """intel_vgpu_flush_post_shadow: every half-written entry is re-read and shadowed in full."""
        for spt in list(self.post_shadow_list):
            if not spt.alive:
                continue
            guest = self._read_table(spt.gfn)
            for index in sorted(spt.post_shadow):
                self._write_entry(spt, index, guest[index])
                self._count("post_shadow_entries")
            spt.post_shadow.clear()
        self.post_shadow_list.clear()

    def sync_oos(self, only: set[Spt] | None = None) -> None:
        """intel_vgpu_sync_oos_pages: write-protect each OOS page again, then re-shadow every entry that
        differs from the snapshot (or has a pending half write).

        ``only``: sync just these pages (the tree of the address space about to run); the others stay out
        of sync until their own address space is dispatched. Upstream syncs every OOS page of the vGPU,
        which is safe there because enable_page_track is a synchronous hypercall made before the page is
        read. Here the write protection is an effect that reaches vhm later: a page of another address
        space, which another vCPU may be editing right now, would be read, marked in sync, and then miss
        the writes that land before vhm protects it again (a stale shadow, a wrong result under load). The
        pages of the tree being dispatched are safe: the vCPU that edits them is waiting for this workload.
        """
        for spt in list(self.oos_list):
            if only is not None and spt not in only:
                continue
            if spt.alive and spt.out_of_sync:
                self._sync_spt(spt)
            if spt in self.oos_list:
                self.oos_list.remove(spt)

    @staticmethod
    def tree(roots: list[Spt | None]) -> set[Spt]:
        """Every SPT reachable from ``roots`` (an mm's tables)."""
        out: set[Spt] = set()
        todo = [r for r in roots if r is not None]
        while todo:
            spt = todo.pop()
            if spt in out:
                continue
            out.add(spt)
            todo.extend(spt.children.values())
        return out

    def _sync_spt(self, spt: Spt) -> None:
        self.vgpu.page_track.enable(spt.gfn)
        spt.out_of_sync = False
        if spt in self.oos_list:
            self.oos_list.remove(spt)
        guest = self._read_table(spt.gfn)
        assert spt.snapshot is not None
        old = _TABLE.unpack(bytes(spt.snapshot))
        for index in range(ENTRIES):
            if old[index] == guest[index] and index not in spt.post_shadow:
                continue
            self._write_entry(spt, index, guest[index])
            if not spt.alive:
                return
            spt.snapshot[index * 8:index * 8 + 8] = guest[index].to_bytes(8, "little")
        spt.write_cnt = 0
        self._count("oos_syncs")

    # ------------------------------------------------------------------------------------ SPTs
    def scratch_tables(self) -> None:
        """alloc_scratch_pages: a zero PT, and above it tables whose every entry names the one below
        (present | RW), as i915's own scratch tree."""
        if self.scratch:
            return
        mem = self.vgpu.gvt.shadow.mem
        made: dict[int, int] = {}
        try:
            for level in (LEVEL_PT, LEVEL_PD, LEVEL_PDP):
                made[level] = self.glob.take_frame()
                if level > LEVEL_PT:
                    e = (made[level - 1] << PAGE_SHIFT) | ENTRY_PRESENT | ENTRY_RW
                    assert mem is not None
                    mem.write(made[level] << PAGE_SHIFT, _TABLE.pack(*([e] * ENTRIES)))
        except PpgttError:
            self.glob.give_frames(list(made.values()))
            raise
        self.scratch = made

    def _scratch_entry(self, level: int) -> int:
        """The shadow of a non-present guest entry at ``level``: the scratch table one level down, or
        for a PTE a non-present entry naming the scratch page."""
        if level == LEVEL_PT:
            return pte_set_pfn(0, self.vgpu.gvt.scratch_mfn)
        return (self.scratch[level - 1] << PAGE_SHIFT) | ENTRY_PRESENT | ENTRY_RW

    def _read_table(self, gfn: int) -> tuple[int, ...]:
        data = self.vgpu.mpt.read_gpa(gfn << PAGE_SHIFT, PAGE_SIZE)
        if data is None:
            return (0,) * ENTRIES
        return _TABLE.unpack(data)

    def get(self, gfn: int, level: int, ips: bool = False) -> Spt | None:
        """ppgtt_populate_spt_by_guest_entry: share the SPT of this guest table (taking a reference) or
        build one: a frame, page tracking, every entry populated. None if the guest may not name it."""
        spt = self.spts.get(gfn)
        if spt is not None:
            if spt.level != level or spt.ips != ips:  # one page used two ways: only a hostile guest does this
                self._count("level_mismatch")
                return None
            spt.refcount += 1
            return spt
        if not self.vgpu.mpt.is_valid_gfn(gfn):
            self._count("invalid_gfn")
            return None
        spt = Spt(self, gfn, level, self.glob.take_frame(), ips=ips)
        self.spts[gfn] = spt
        self.vgpu.page_track.register(gfn, functools.partial(self._on_write, spt))
        if not self.pv:
            self.vgpu.page_track.enable(gfn)
        self._count("spts_created")
        try:
            guest = self._read_table(gfn)
            if ips:
                shadow = []
                for i in range(0, ENTRIES, GTT_64K_PTE_STRIDE):
                    shadow += self._split_64k(guest[i])
            else:
                shadow = [self._shadow_entry(spt, i, ge) for i, ge in enumerate(guest)]
            if self.pv:
                spt.pv_snapshot = bytearray(_TABLE.pack(*guest))
        except PpgttError:
            self.put(spt)
            raise
        self._mem_write(spt.mfn, _TABLE.pack(*shadow))
        return spt

    def put(self, spt: Spt) -> None:
        """ppgtt_invalidate_spt: drop a reference; the last one frees the subtree, the tracking, the
        frame."""
        spt.refcount -= 1
        if spt.refcount > 0:
            return
        spt.alive = False
        children, spt.children = list(spt.children.values()), {}
        for child in children:
            self.put(child)
        if spt.split_2m:
            self.glob.give_frames(list(spt.split_2m.values()))
            spt.split_2m = {}
        self.spts.pop(spt.gfn, None)
        self.vgpu.page_track.unregister(spt.gfn)
        if spt.out_of_sync and spt in self.oos_list:
            self.oos_list.remove(spt)
        if spt in self.post_shadow_list:
            self.post_shadow_list.remove(spt)
        self._detach_oos(spt)
        self.glob.give_frames([spt.mfn])
        self._count("spts_destroyed")

    def _map_4k(self, ge: int, gfn: int) -> int:
        """A 4K shadow PTE: ``ge``'s flags, gfn -> mfn (scratch for a frame that is not the VM's)."""
        mfn = self.vgpu.mpt.dma_map_guest_page(gfn)
        if mfn is None:  # another VM's frame, or no RAM at all: the GPU gets the scratch page
            self._count("invalid_gfn")
            return pte_set_pfn(ge, self.vgpu.gvt.scratch_mfn)
        return pte_set_pfn(ge, mfn)

    def _split_64k(self, ge: int) -> list[int]:
        """split_64KB_gtt_entry: the 16 shadow 4K entries of one guest 64K PTE (scratch if not present)."""
        if not ge & ENTRY_PRESENT:
            return [self._scratch_entry(LEVEL_PT)] * GTT_64K_PTE_STRIDE
        self._count("split_64k")
        gfn = pte_pfn(ge)
        return [self._map_4k(ge, gfn + i) for i in range(GTT_64K_PTE_STRIDE)]

    def _split_2m(self, spt: Spt, index: int, ge: int) -> int:
        """split_2MB_gtt_entry: a shadow PT (no guest page behind it) of 512 4K entries mapping the 2M
        page's frames, PAT copied from the PDE; the shadow PDE loses PS, IPS and dirty and names it."""
        mfn = self.glob.take_frame()
        gfn = pte_pfn(ge)
        pte = (ge & ~(ENTRY_PS | PAGE_PAT | PAGE_PAT_LARGE)) | ((ge & PAGE_PAT_LARGE) >> 5)
        try:
            self._mem_write(mfn, _TABLE.pack(*[self._map_4k(pte, gfn + i) for i in range(ENTRIES)]))
        except PpgttError:
            self.glob.give_frames([mfn])
            raise
        spt.split_2m[index] = mfn
        self._count("split_2m")
        return pte_set_pfn(ge & ~(ENTRY_PS | ENTRY_IPS | PAGE_DIRTY | PAGE_PAT_LARGE), mfn)

    def _shadow_entry(self, spt: Spt, index: int, ge: int) -> int:
        """The shadow of guest entry ``ge`` at ``index`` (recording a child SPT in ``spt.children``)."""
        if not ge & ENTRY_PRESENT:
            return self._scratch_entry(spt.level)
        if spt.level == LEVEL_PT:
            return self._map_4k(ge, pte_pfn(ge))
        if ge & ENTRY_PS:
            if spt.level == LEVEL_PD:
                return self._split_2m(spt, index, ge)
            self._count("huge_1g_refused")
            raise HugePageRefused(f"1G entry at index {index} of PDP gfn {spt.gfn:#x}: GVT doesn't support 1GB entry")
        child = self.get(pte_pfn(ge), spt.level - 1, ips=spt.level == LEVEL_PD and bool(ge & ENTRY_IPS))
        if child is None:
            return self._scratch_entry(spt.level)
        spt.children[index] = child
        return pte_set_pfn(ge & ~ENTRY_IPS, child.mfn)  # always split 64K: IPS cleared in the shadow PDE

    def _write_entry(self, spt: Spt, index: int, ge: int) -> None:
        """ppgtt_handle_guest_write_page_table for a whole entry: add the new shadow first, then remove
        the old one, so a table named by both stays alive in between."""
        spt.post_shadow.discard(index)
        if spt.ips:
            if index % GTT_64K_PTE_STRIDE:  # an unused entry of a 64K PT: ignored, as gtt.c does
                self._count("ips_unused_entry_writes")
                return
            for i, se in enumerate(self._split_64k(ge)):
                self._set_shadow(spt, index + i, se)
            return
        old = spt.children.pop(index, None)
        old_split = spt.split_2m.pop(index, None)
        try:
            se = self._shadow_entry(spt, index, ge)
        except PpgttError:
            if old is not None:
                spt.children[index] = old
            if old_split is not None:
                spt.split_2m[index] = old_split
            raise
        self._set_shadow(spt, index, se)
        if old is not None:
            self.put(old)
        if old_split is not None:
            self.glob.give_frames([old_split])

    def _set_shadow(self, spt: Spt, index: int, se: int) -> None:
        mem = self.vgpu.gvt.shadow.mem
        if mem is None:
            raise PpgttError("machine memory is not mapped in gvt")
        mem.write_u64((spt.mfn << PAGE_SHIFT) + index * 8, se)

    def _mem_write(self, mfn: int, data: bytes) -> None:
        mem = self.vgpu.gvt.shadow.mem
        if mem is None:
            raise PpgttError("machine memory is not mapped in gvt")
        mem.write(mfn << PAGE_SHIFT, data)

    # ----------------------------------------------------------------------------- WP handler
    def _on_write(self, spt: Spt, gpa: int, data: int, size: int) -> None:
        """ppgtt_write_protection_handler (gvt/gtt.c, gvt/page_track.c, WP fault path): apply the guest's write (ACRN
        does not), then shadow it: a full entry at once, a half entry after the next flush."""
        if size not in (4, 8) or gpa % size:
            raise EmulationError(f"page-table write of {size} bytes at {gpa:#x} (must be an aligned 4 or 8)")
        self.vgpu.page_track.commit(gpa, data, size)
        self._count("wp_traps")
        index = (gpa & (PAGE_SIZE - 1)) >> 3
        try:
            if size == 8:
                self._write_entry(spt, index, data)
            elif spt.ips and index % GTT_64K_PTE_STRIDE:
                self._count("ips_unused_entry_writes")
            elif index not in spt.post_shadow:
                old = spt.children.pop(index, None)
                old_split = spt.split_2m.pop(index, None)
                for i in range(GTT_64K_PTE_STRIDE if spt.ips else 1):
                    self._set_shadow(spt, index + i, self._scratch_entry(spt.level))
                if old is not None:
                    self.put(old)
                if old_split is not None:
                    self.glob.give_frames([old_split])
                spt.post_shadow.add(index)
                if spt not in self.post_shadow_list:
                    self.post_shadow_list.append(spt)
        except NoFrames:
            self.reclaim()  # the guest's write is in its RAM: the next dispatch re-shadows from it
            return
        except HugePageRefused as err:  # the entry stays scratch; the GPU never sees the 1G page
            self._set_shadow(spt, index, self._scratch_entry(spt.level))
            self.vgpu.log.warning("ppgtt_1g_refused", vgpu=self.vgpu.id, why=str(err))
        if not spt.alive:
            return
        spt.write_cnt += 1
        if spt.snapshot is not None:  # keep an attached snapshot equal to what the shadow reflects
            off = gpa & (PAGE_SIZE - 1)
            spt.snapshot[off:off + size] = (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if self._can_do_oos(spt):
            self._set_oos(spt)

    def pv_sync(self, spt: Spt, index: int, pages: dict[int, tuple[int, ...]]) -> None:
        """PV PPGTT: shadow entry ``index`` again if the guest changed it since it was shadowed (the guest
        said so with a PV_PPGTT_UPDATE instead of faulting). ``pages`` caches guest tables read."""
        if spt.pv_snapshot is None or not spt.alive:
            return
        guest = pages.get(spt.gfn)
        if guest is None:
            guest = pages[spt.gfn] = self._read_table(spt.gfn)
        ge = guest[index]
        if ge == int.from_bytes(spt.pv_snapshot[index * 8:index * 8 + 8], "little"):
            return
        self._write_entry(spt, index, ge)
        spt.pv_snapshot[index * 8:index * 8 + 8] = ge.to_bytes(8, "little")
        self._count("pv_entries_synced")

    def _can_do_oos(self, spt: Spt) -> bool:
        return (self.glob.enable_out_of_sync and spt.level == LEVEL_PT and not spt.out_of_sync
                and spt.write_cnt >= OOS_WRITE_THRESHOLD)

    def _set_oos(self, spt: Spt) -> None:
        """ppgtt_set_guest_page_oos: attach a snapshot (copy of the guest page) if none, un-protect."""
        if spt.snapshot is None:
            g = self.glob
            if g.oos_free <= 0 and g.oos_in_use:
                victim = g.oos_in_use[0]
                try:
                    if victim.out_of_sync:
                        victim.owner._sync_spt(victim)
                except PpgttError:
                    victim.owner.reclaim()
                victim.owner._detach_oos(victim)
            if g.oos_free <= 0:
                return
            g.oos_free -= 1
            g.oos_in_use.append(spt)
            data = self.vgpu.mpt.read_gpa(spt.gfn << PAGE_SHIFT, PAGE_SIZE)
            spt.snapshot = bytearray(data if data is not None else bytes(PAGE_SIZE))
        spt.out_of_sync = True
        self.oos_list.append(spt)
        self.vgpu.page_track.disable(spt.gfn)
        self._count("oos_pages")

    def _detach_oos(self, spt: Spt) -> None:
        if spt.snapshot is None:
            return
        spt.snapshot = None
        g = self.glob
        if spt in g.oos_in_use:
            g.oos_in_use.remove(spt)
        g.oos_free += 1


    # ------------------------------------------------------------------------------ lifecycle
    def clean(self) -> None:
        """After every mm let go: free whatever is left (only a bug leaves an SPT behind; never leak
        tracking) and the scratch tables."""
        for spt in list(self.spts.values()):
            spt.refcount = 1
            self.put(spt)
        if self.scratch:
            self.glob.give_frames(list(self.scratch.values()))
            self.scratch = {}

    def frames_lost(self) -> None:
        """The frames are gone with vhm: drop all state without returning or writing anything."""
        for spt in self.spts.values():
            spt.alive = False
            self._detach_oos(spt)
        self.spts.clear()
        self.post_shadow_list.clear()
        self.oos_list.clear()
        self.scratch = {}
        self.vgpu.page_track.pages.clear()


# ------------------------------------------------------------------------------------ device-global
class PpgttGlobal:
    """Device-wide PPGTT resources (struct intel_gvt_gtt): shadow frames, the OOS page pool, the
    ``enable_out_of_sync`` switch. Frames come from the scheduler's pool (ALLOC_FRAMES from vhm); a freed
    frame is held back until every workload that was on the GPU when it was freed has finished, so a
    stale walk never reads a frame already reused for someone else's table."""

    def __init__(self, gvt: "Gvt", enable_out_of_sync: bool = False,
                 oos_pages: int = PREALLOCATED_OOS_PAGES) -> None:
        self.gvt = gvt
        self.enable_out_of_sync = enable_out_of_sync
        self.oos_free = oos_pages
        self.oos_in_use: list["Spt"] = []  # attach order: the oldest is detached first when none is free
        self.quarantine: list[tuple[frozenset[int], list[int]]] = []

    def take_frame(self) -> int:
        """A zeroed machine frame for a shadow table. Raises NoFrames / PpgttError."""
        shadow = self.gvt.shadow
        if shadow.mem is None:
            raise PpgttError("machine memory is not mapped in gvt")
        self.reap()
        if not shadow.frame_pool:
            self.gvt.counters["ppgtt_no_frames"] += 1
            raise NoFrames("no frames for shadow page tables (vhm ALLOC_FRAMES pending or exhausted)")
        mfn = shadow.frame_pool.pop()
        shadow.mem.zero_frames(mfn)
        return mfn

    def give_frames(self, mfns: list[int]) -> None:
        """Return frames; they go back to the pool once the workloads running now are done."""
        if not mfns:
            return
        busy = frozenset(self.gvt.scheduler.inflight)
        if busy:
            self.quarantine.append((busy, mfns))
        else:
            self.gvt.shadow.frame_pool.extend(mfns)

    def reap(self) -> None:
        """Release quarantined frames whose workloads have all left the GPU."""
        if not self.quarantine:
            return
        inflight = self.gvt.scheduler.inflight
        keep = []
        for busy, mfns in self.quarantine:
            if any(w in inflight for w in busy):
                keep.append((busy, mfns))
            else:
                self.gvt.shadow.frame_pool.extend(mfns)
        self.quarantine = keep

    def frames_lost(self) -> None:
        """vhm restarted: its frames are gone. Every shadow is dropped without returning frames."""
        self.quarantine.clear()
        for v in self.gvt.vgpus.values():
            v.ppgtt.frames_lost()
        self.oos_in_use.clear()
