"""The aperture pass-through (i915/gvt cfg_space.c ``map_aperture``; gvt/gtt.c, gvt/aperture_gm.c "CPU aperture
access").

When the guest enables memory decode, the guest BAR2 window is mapped 1:1 onto the host aperture: guest
gpa ``BAR2 + gm`` for every ``gm`` in the vGPU's aperture slice reaches, with no trap, the page the host
GGTT maps at ``gm``. The simulated host aperture has no frames of its own, so gvtsim maps each guest
BAR2 page straight onto the machine frame behind the GGTT entry (``map_gfn_to_mfn``), and follows the
guest's GGTT writes in the slice while decode is on, as a CPU access through the real aperture would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...hardware.gtt import PAGE_SHIFT
from ...hardware.pci import PCI_BASE_ADDRESS_2
from .effects import MapGfnToMfn
from .gtt import pte_pfn, pte_present

if TYPE_CHECKING:
    from .vgpu import Vgpu


class Aperture:
    """The mappings of one vGPU's BAR2 window: guest gfn -> machine frame."""

    def __init__(self, vgpu: "Vgpu") -> None:
        self.vgpu = vgpu
        self.enabled = False
        self.base = 0  # guest BAR2 gpa while mapped
        self.mapped: dict[int, int] = {}  # GGTT index -> mfn mapped at base + (index << 12)

    def _bar2(self) -> int:
        cfg = self.vgpu.cfg
        return cfg.get(PCI_BASE_ADDRESS_2, 8) & ~0xF

    def _low_range(self) -> range:
        r = self.vgpu.resource
        return range(r.low_base >> PAGE_SHIFT, (r.low_base + r.low_size) >> PAGE_SHIFT)

    def set_enabled(self, enabled: bool) -> None:
        """Memory decode toggled (or BAR2 moved): map every present page of the slice, or unmap all."""
        if self.enabled:
            for index, mfn in sorted(self.mapped.items()):
                self.vgpu.emit(MapGfnToMfn(self.vgpu.vm, (self.base >> PAGE_SHIFT) + index, mfn, 1, False))
            self.mapped.clear()
        self.enabled = enabled
        if not enabled:
            return
        self.base = self._bar2()
        for index in sorted(self.vgpu.gtt.host):
            if index in self._low_range():
                self.on_host_entry(index, self.vgpu.gtt.host[index])

    def on_host_entry(self, index: int, host_pte: int) -> None:
        """A host GGTT entry of the vGPU changed: follow it in the BAR2 window if decode is on."""
        if not self.enabled or index not in self._low_range():
            return
        gfn = (self.base >> PAGE_SHIFT) + index
        old = self.mapped.pop(index, None)
        scratch = self.vgpu.gvt.scratch_mfn
        mfn = pte_pfn(host_pte) if pte_present(host_pte) else None
        if old is not None and old != mfn:
            self.vgpu.emit(MapGfnToMfn(self.vgpu.vm, gfn, old, 1, False))
        if mfn is None or mfn == scratch:
            return
        if old != mfn:
            self.vgpu.emit(MapGfnToMfn(self.vgpu.vm, gfn, mfn, 1, True))
        self.mapped[index] = mfn
        self.vgpu.count("aperture_pages_mapped")

    def clean(self) -> None:
        self.set_enabled(False)
