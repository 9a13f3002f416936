"""Guest page tracking: which guest frames are write-protected for this vGPU and who handles their writes
(i915/gvt page_track.c; gvt/gtt.c, gvt/page_track.c "Page-track API" and 8.4).

A handler is registered per gfn (``register_page_track``, -EEXIST if the gfn already has one), then the
page is write-protected through the hypervisor (``enable`` => a PageTrack effect => vhm PAGE_TRACK, which
clears the EPT W bit and routes the guest's writes to gvt as WP ioreqs). ``handle`` is
``intel_vgpu_page_track_handler``: look the gfn up, and call its handler -- or, for a vGPU in failsafe,
just remove the write protection.

ACRN does not commit a trapped write (ACRN hypervisor dm/io_req.c: "WP => no post-work"): whoever claims it must apply
it to guest RAM. Handlers do so; the failsafe path and a write that raced an un-protect do it here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT
from .effects import PageTrack
from .errors import EmulationError

if TYPE_CHECKING:
    from .vgpu import Vgpu

#: handler(gpa, data, size): the guest wrote ``size`` bytes of ``data`` (little endian) at ``gpa``
WriteHandler = Callable[[int, int, int], None]


@dataclass
class TrackedPage:
    """struct intel_vgpu_page_track: the handler and whether the hypervisor write-protects the page."""

    handler: WriteHandler
    tracked: bool = False


class PageTrackTable:
    """One vGPU's gfn -> handler registry (the radix tree ``vgpu->page_track_tree``)."""

    def __init__(self, vgpu: "Vgpu") -> None:
        self.vgpu = vgpu
        self.pages: dict[int, TrackedPage] = {}

    def register(self, gfn: int, handler: WriteHandler) -> None:
        """intel_vgpu_register_page_track. Raises EmulationError if the gfn already has a handler."""
        if gfn in self.pages:
            raise EmulationError(f"gfn {gfn:#x} already has a page-track handler")
        self.pages[gfn] = TrackedPage(handler)

    def unregister(self, gfn: int) -> None:
        """intel_vgpu_unregister_page_track: drop the handler, un-protecting the page if needed."""
        page = self.pages.get(gfn)
        if page is None:
            return
        if page.tracked:
            self.disable(gfn)
        del self.pages[gfn]

    def enable(self, gfn: int) -> None:
        """intel_vgpu_enable_page_track: write-protect the page (MPT enable_page_track)."""
        page = self.pages.get(gfn)
        if page is None or page.tracked:
            return
        page.tracked = True
        self.vgpu.emit(PageTrack(self.vgpu.vm, gfn, True))
        self.vgpu.count("page_track_enable")

    def disable(self, gfn: int) -> None:
        """intel_vgpu_disable_page_track: let the guest write the page directly again."""
        page = self.pages.get(gfn)
        if page is None or not page.tracked:
            return
        page.tracked = False
        self.vgpu.emit(PageTrack(self.vgpu.vm, gfn, False))
        self.vgpu.count("page_track_disable")

    def handle(self, gpa: int, data: int, size: int) -> bool:
        """intel_vgpu_page_track_handler for a WP ioreq. Returns True when the write was claimed.

        * no handler: -ENXIO upstream, and AcrnGT then emulates it as MMIO (not claimed). One exception:
          a gfn of guest RAM whose tracking was removed while this write was on its way (the un-protect
          and the trap crossed): the write is still the guest's, so it is committed, and claimed;
        * failsafe vGPU: remove the write protection and commit the write (gvt/gtt.c, gvt/page_track.c, gvt/vgpu.c);
        * else the handler applies it (and updates whatever shadows the page).
        """
        gfn = gpa >> PAGE_SHIFT
        page = self.pages.get(gfn)
        if page is None:
            if not self.vgpu.mpt.is_valid_gfn(gfn):
                return False
            self.vgpu.count("wp_untracked")
            self.commit(gpa, data, size)
            return True
        if self.vgpu.failsafe:
            self.disable(gfn)
            self.vgpu.count("wp_failsafe")
            self.commit(gpa, data, size)
            return True
        page.handler(gpa, data, size)
        return True

    def commit(self, gpa: int, data: int, size: int) -> None:
        """Apply a trapped write to guest RAM (AcrnGT: intel_gvt_hypervisor_write_gpa)."""
        if not 1 <= size <= 8:
            raise EmulationError(f"WP write of {size} bytes")
        if not self.vgpu.mpt.write_gpa(gpa, (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little")):
            raise EmulationError(f"WP write at {gpa:#x}: not guest RAM")

    def clean(self) -> None:
        """Un-protect and forget every page (vGPU destroy)."""
        for gfn in list(self.pages):
            self.unregister(gfn)
