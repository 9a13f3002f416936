"""ACRN's paravirtualized MMIO (PVMMIO): the ``enable_pvmmio`` negotiation and the vGPU's shared page.

Sources (ACRN kernel, projectacrn/acrn-kernel, drivers/gpu/drm/i915/gvt):

* handlers.c ``pvinfo_mmio_write``, case ``enable_pvmmio``: when the host's ``i915.enable_pvmmio`` is not 0
  the vreg keeps ``data & i915.enable_pvmmio`` (what the guest asked for AND what the host offers), then
  ``set_pvmmio(vgpu, vreg != 0)``; if that fails the vreg is 0 (nothing granted). With the host parameter at
  0 the vreg is always 0. The guest reads the field back and uses only what it finds there
  (i915_params.c: "guest value is set through vgt_if").
* handlers.c ``set_pvmmio``: the range is BAR0 (from the vGPU's config space) for the BAR's size, handed to
  the MPT's ``set_pvmmio`` (acrngt.c ``acrngt_set_pvmmio``), which maps the vreg pages into the guest
  read-only (writes still trap, as WP), keeps the PVINFO page trapped, and maps the vGPU's **shared page**
  (``vgpu->mmio.shared_page``, struct ``gvt_shared_page`` of include/drm/i915_pvinfo.h) read-write at the
  first page after the 2 MB MMIO range, BAR0 + 0x200000.
* handlers.c ``elsp_mmio_write``: with ``PVMMIO_ELSP_SUBMIT`` granted the guest writes the first three ELSP
  dwords into ``shared_page->elsp_data[0..2]`` (memory, no trap) and only the last one into ELSP: that one
  trapped write submits (``elsp_dwords.data[3] = elsp_data[0]``, ``[2] = elsp_data[1]``,
  ``[1] = elsp_data[2]``, ``[0] = data``).
* handlers.c ``pvinfo_mmio_read``, case ``pv_mmio``: a read of PVINFO ``pv_mmio`` returns the register whose
  offset the guest put in ``shared_page->reg_addr``, through that register's read handler.

What gvtsim implements of it: the negotiation, the shared page (one machine frame from gvt's pool, mapped
into the guest with map_gfn_to_mfn while BAR0 is decoded), ``PVMMIO_ELSP_SUBMIT`` and the ``pv_mmio`` read
redirect. Not implemented, so never granted: the read-only mapping of the vreg pages (gvtsim's vregs are not
in machine memory) and the plane / watermark / IRQ / PPGTT / GGTT batching levels. docs/PV.md.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...hardware.regs import PVMMIO_ELSP_DATA as ELSP_DATA
from ...hardware.regs import PVMMIO_PV_PLANE as PV_PLANE  # noqa: F401 (struct gvt_shared_page pv_plane_update)
from ...hardware.regs import PVMMIO_REG_ADDR as REG_ADDR  # noqa: F401 (struct gvt_shared_page reg_addr)
from ...hardware.regs import PVMMIO_SHARED_PAGE
from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .effects import MapGfnToMfn
from .errors import EmulationError

if TYPE_CHECKING:
    from .vgpu import Vgpu


class PvmmioLevel(enum.IntFlag):
    """enum pvmmio_levels (ACRN include/drm/i915_pvinfo.h; acrn-hypervisor GVT-g-kernel-options.rst)."""

    ELSP_SUBMIT = 0x1
    PLANE_UPDATE = 0x2
    PLANE_WM_UPDATE = 0x4
    MASTER_IRQ = 0x8
    PPGTT_UPDATE = 0x10
    GGTT_UPDATE = 0x20


#: The levels gvtsim implements: the most a host parameter can offer.
SUPPORTED = PvmmioLevel.ELSP_SUBMIT
#: The host's i915.enable_pvmmio by default (ACRN's default is 1: PVMMIO_ELSP_SUBMIT).
DEFAULT_HOST_LEVELS = PvmmioLevel.ELSP_SUBMIT

#: The shared page sits at the first page after the 2 MB MMIO range of BAR0 (i915_pvinfo.h comment).
SHARED_PAGE_OFFSET = PVMMIO_SHARED_PAGE
#: struct gvt_shared_page: u32 elsp_data[4] at 0x00, u32 reg_addr at 0x10, struct pv_plane_update at 0x14.
_ELSP = struct.Struct("<III")


@dataclass
class PvmmioState:
    """A vGPU's PVMMIO grant and shared page (``vgpu->mmio.shared_page``)."""

    granted: PvmmioLevel = PvmmioLevel(0)
    mfn: int | None = None  # the shared page's machine frame, once the guest has been granted PVMMIO
    gfn: int | None = None  # where the page is mapped in the guest (BAR0 + 2 MB) while BAR0 is decoded


def host_levels(requested: int) -> PvmmioLevel:
    """The host parameter a gvt is started with, limited to what gvtsim implements."""
    return PvmmioLevel(requested & int(SUPPORTED))


def negotiate(vgpu: "Vgpu", requested: int) -> int:
    """pvinfo_mmio_write(enable_pvmmio): grant ``requested & host``, map the shared page if anything is
    granted (unmap it if nothing is), and return the value the vreg keeps (0 if the mapping failed)."""
    host = int(vgpu.gvt.enable_pvmmio)
    vgpu.count("pvmmio_requests")
    if not host:
        set_pvmmio(vgpu, False)
        return 0
    granted = PvmmioLevel(requested & host)
    if not set_pvmmio(vgpu, bool(granted)):
        vgpu.count("pvmmio_set_failed")
        set_pvmmio(vgpu, False)
        return 0
    vgpu.pvmmio.granted = granted
    if granted:
        vgpu.count("pvmmio_granted")
        vgpu.log.info("pvmmio_granted", vgpu=vgpu.id, vm=vgpu.vm, levels=int(granted))
    return int(granted)


def set_pvmmio(vgpu: "Vgpu", map_: bool) -> bool:
    """set_pvmmio + the MPT's acrngt_set_pvmmio: on map, get the shared page (one zeroed frame of gvt's
    pool) and map it at BAR0 + 2 MB while BAR0 is decoded; on unmap, unmap it and give the frame back.
    Returns False when no frame or no machine memory is available (nothing is then granted)."""
    st = vgpu.pvmmio
    if not map_:
        _unmap(vgpu)
        if st.mfn is not None:
            vgpu.gvt.shadow.frame_pool.append(st.mfn)
            st.mfn = None
        st.granted = PvmmioLevel(0)
        return True
    shadow = vgpu.gvt.shadow
    if st.mfn is None:
        if shadow.mem is None or not shadow.frame_pool:
            return False
        st.mfn = shadow.frame_pool.pop()
        shadow.mem.write(st.mfn << PAGE_SHIFT, bytes(PAGE_SIZE))
    follow_bar0(vgpu, vgpu.cfg.trapped is not None)
    return True


def follow_bar0(vgpu: "Vgpu", decoded: bool) -> None:
    """BAR0 was trapped (memory decode on, or the BAR placed) or untrapped: the shared page is mapped
    exactly while BAR0 is, at its current base + 2 MB (a moved BAR takes the page along)."""
    st = vgpu.pvmmio
    gfn = (vgpu.cfg.bar0_base() + SHARED_PAGE_OFFSET) >> PAGE_SHIFT
    if decoded and st.mfn is not None and st.gfn == gfn:
        return  # already mapped there: a guest asking again costs the hypervisor nothing
    _unmap(vgpu)
    if decoded and st.mfn is not None:
        vgpu.emit(MapGfnToMfn(vgpu.vm, gfn, st.mfn, 1, True))
        st.gfn = gfn


def _unmap(vgpu: "Vgpu") -> None:
    st = vgpu.pvmmio
    if st.gfn is not None and st.mfn is not None:
        vgpu.emit(MapGfnToMfn(vgpu.vm, st.gfn, st.mfn, 1, False))
    st.gfn = None


def is_shared_page(vgpu: "Vgpu", offset: int, size: int) -> bool:
    """Whether a BAR0 access falls in the shared page while it exists (the hypervisor has not mapped
    it yet, or refused to: the access then traps and gvt serves it from the same frame)."""
    return (vgpu.pvmmio.mfn is not None and SHARED_PAGE_OFFSET <= offset
            and offset + size <= SHARED_PAGE_OFFSET + PAGE_SIZE)


def _page_addr(vgpu: "Vgpu", off: int) -> int:
    mem = vgpu.gvt.shadow.mem
    if vgpu.pvmmio.mfn is None or mem is None:
        raise EmulationError("PVMMIO shared page used without a grant")
    return (vgpu.pvmmio.mfn << PAGE_SHIFT) + off


def page_read(vgpu: "Vgpu", off: int, size: int) -> int:
    """Read ``size`` bytes of the shared page (little-endian)."""
    mem = vgpu.gvt.shadow.mem
    assert mem is not None
    return int.from_bytes(mem.read(_page_addr(vgpu, off), size), "little")


def page_write(vgpu: "Vgpu", off: int, data: int, size: int) -> None:
    """Write ``size`` bytes of the shared page (a trapped access to it)."""
    mem = vgpu.gvt.shadow.mem
    addr = _page_addr(vgpu, off)
    assert mem is not None
    mem.write(addr, (data & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))


def elsp_data(vgpu: "Vgpu") -> tuple[int, int, int]:
    """shared_page->elsp_data[0..2]: element 1 high, element 1 low, element 0 high (as the guest wrote
    them in ELSP order)."""
    mem = vgpu.gvt.shadow.mem
    addr = _page_addr(vgpu, ELSP_DATA)
    assert mem is not None
    a, b, c = _ELSP.unpack(mem.read(addr, _ELSP.size))
    return a, b, c


def frames_lost(vgpu: "Vgpu") -> bool:
    """vhm restarted: the shared page was one of its frames, gone with it; no grant stands (nothing is
    unmapped or written: the new vhm never mapped it). Returns whether a grant was dropped."""
    st = vgpu.pvmmio
    if st.mfn is None:
        return False
    st.mfn = st.gfn = None
    st.granted = PvmmioLevel(0)
    return True


def reset(vgpu: "Vgpu") -> None:
    """A DMLR: the vreg goes back to 0 with the rest of PVINFO, so the grant and the page go too (the
    guest negotiates again after its reset). A GT reset keeps both."""
    set_pvmmio(vgpu, False)


def clean(vgpu: "Vgpu") -> None:
    """vGPU destroy: unmap the page and give its frame back."""
    set_pvmmio(vgpu, False)
