"""The PVINFO page (``struct vgt_if``) at BAR0 + 0x78000 (i915_pvinfo.h, handlers.c; i915_pvinfo.h).

Top half (0x000-0x7FF) is host -> guest info, bottom half (0x800-0xFFF) guest -> host. GVT fills it at
create and on every DMLR / full GT reset; any guest read of it sets ``pv_notified`` (the guest is GVT
aware); writes to ``g2v_notify`` create and destroy PPGTT mm objects; a write to ``rsv5`` puts the vGPU
in failsafe (INSUFFICIENT_RESOURCE).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from . import pv, pvmmio
from ...hardware.regs import PV_CAPS, PV_ENABLED, PV_STATUS, PV_VERSIONS
from ...hardware.regs import VGT_MAGIC, VGT_VERSION_MAJOR, VGT_VERSION_MINOR
from ...hardware.regs import PV_CHECK_PENDING_IRQ as CHECK_PENDING_IRQ
from ...hardware.regs import PV_CURSOR_X_HOT as CURSOR_X_HOT
from ...hardware.regs import PV_CURSOR_Y_HOT as CURSOR_Y_HOT
from ...hardware.regs import PV_DISPLAY_READY as DISPLAY_READY
from ...hardware.regs import PV_ENABLE_PVMMIO as ENABLE_PVMMIO
from ...hardware.regs import PV_EXECLIST_CTX_DESC_HI as EXECLIST_CTX_DESC_HI
from ...hardware.regs import PV_EXECLIST_CTX_DESC_LO as EXECLIST_CTX_DESC_LO
from ...hardware.regs import PV_FENCE_NUM as FENCE_NUM
from ...hardware.regs import PV_G2V_NOTIFY as G2V_NOTIFY
from ...hardware.regs import PV_MAGIC as MAGIC
from ...hardware.regs import PV_MAPPABLE_BASE as MAPPABLE_BASE
from ...hardware.regs import PV_MAPPABLE_SIZE as MAPPABLE_SIZE
from ...hardware.regs import PV_NONMAPPABLE_BASE as NONMAPPABLE_BASE
from ...hardware.regs import PV_NONMAPPABLE_SIZE as NONMAPPABLE_SIZE
from ...hardware.regs import PV_PDP0_LO as PDP0_LO
from ...hardware.regs import PV_PV_MMIO as PV_MMIO
from ...hardware.regs import PV_RSV5 as RSV5
from ...hardware.regs import PV_SCALER_OWNED as SCALER_OWNED
from ...hardware.regs import PV_SHARED_PAGE_GPA as SHARED_PAGE_GPA
from ...hardware.regs import PV_VERSION_MAJOR as VERSION_MAJOR
from ...hardware.regs import PV_VERSION_MINOR as VERSION_MINOR
from ...hardware.regs import PV_VGT_CAPS as VGT_CAPS
from ...hardware.regs import PV_VGT_ID as VGT_ID
from ...hardware.regs import PVINFO as VGT_PVINFO_PAGE  # noqa: F401 (handlers.py maps the page by these names)
from ...hardware.regs import PVINFO_SIZE as VGT_PVINFO_SIZE  # noqa: F401
from .effects import Uevent
from .errors import FailsafeReason
from .gtt import PPGTT_ROOT_L3, PPGTT_ROOT_L4
from ...hardware.regs import MMIO_SIZE

if TYPE_CHECKING:
    from .vgpu import Vgpu

# The PVINFO field offsets (absolute in BAR0) are gvtsim.hardware.regs', imported above under the names of
# struct vgt_if's fields. ACRN's PVMMIO fields (acrn-kernel include/drm/i915_pvinfo.h, after
# execlist_context_descriptor_hi): the guest asks for PVMMIO levels in enable_pvmmio; the host keeps the
# levels it grants (data & i915.enable_pvmmio, 0 when PVMMIO is off) and maps the shared page through the
# MPT's set_pvmmio; a read of pv_mmio is redirected to the register named in the shared page (pvmmio.py).
# gvtsim's PV shared-page fields (docs/PV.md) sit past them, in ACRN's rsv7 padding: pv_caps (GVT),
# shared_page_gpa (guest, u64), the formats the host knows, its verdict, what it enabled.


class VgtCaps(enum.IntFlag):
    """VGT_CAPS_* bits."""

    FULL_PPGTT = 1 << 2
    HWSP_EMULATION = 1 << 3
    HUGE_GTT = 1 << 4


#: populate_pvinfo_page: FULL_PPGTT | HWSP_EMULATION | HUGE_GTT.
CAPS = VgtCaps.FULL_PPGTT | VgtCaps.HWSP_EMULATION | VgtCaps.HUGE_GTT  # 0x1C


class G2vNotify(enum.IntEnum):
    """enum vgt_g2v_type (mainline values)."""

    PPGTT_L3_PAGE_TABLE_CREATE = 2
    PPGTT_L3_PAGE_TABLE_DESTROY = 3
    PPGTT_L4_PAGE_TABLE_CREATE = 4
    PPGTT_L4_PAGE_TABLE_DESTROY = 5
    EXECLIST_CONTEXT_CREATE = 6
    EXECLIST_CONTEXT_DESTROY = 7
    MAX = 8


class PvG2vNotify(enum.IntEnum):
    """The PV patchset inserts SHARED_PAGE_SETUP 8 and PV_SEND_TRIGGER 9 before VGT_G2V_MAX (i915_pvinfo.h);
    PV_PPGTT_UPDATE 10 is gvtsim's (docs/PV.md)."""

    SHARED_PAGE_SETUP = 8
    PV_SEND_TRIGGER = 9
    PV_PPGTT_UPDATE = 10


class DisplayReady(enum.IntEnum):
    NOT_READY = 0
    READY = 1


#: Reads inside these [start, end) windows are valid (pvinfo_mmio_read); others are logged but served.
_VALID_READS: tuple[tuple[int, int], ...] = (
    (MAGIC, VGT_ID + 4), (MAPPABLE_BASE, FENCE_NUM + 4), (VGT_CAPS, VGT_CAPS + 4), (0x7881C, 0x78820),
    (ENABLE_PVMMIO, CHECK_PENDING_IRQ + 4), (PV_CAPS, PV_ENABLED + 4),
)
#: Writes that are stored (pvinfo_mmio_write's handled list); display_ready and g2v_notify also act.
_STORED_WRITES: frozenset[int] = frozenset(
    [DISPLAY_READY, G2V_NOTIFY, CURSOR_X_HOT, CURSOR_Y_HOT, EXECLIST_CTX_DESC_LO, EXECLIST_CTX_DESC_HI,
     PV_MMIO, SCALER_OWNED, CHECK_PENDING_IRQ, SHARED_PAGE_GPA, SHARED_PAGE_GPA + 4]
    + [PDP0_LO + 4 * i for i in range(8)])
_RSV5 = frozenset(range(RSV5, RSV5 + 16, 4))
def populate(vgpu: "Vgpu") -> None:
    """populate_pvinfo_page: magic, version 1.0, display_ready 0, vgt_id, caps, ballooning info,
    fence_num, cursor hot spots UINT_MAX."""
    res = vgpu.resource
    w = vgpu.mmio.write
    w(MAGIC, VGT_MAGIC, 8)
    w(VERSION_MAJOR, VGT_VERSION_MAJOR, 2)
    w(VERSION_MINOR, VGT_VERSION_MINOR, 2)
    w(DISPLAY_READY, DisplayReady.NOT_READY, 4)
    w(VGT_ID, vgpu.id, 4)
    w(VGT_CAPS, int(CAPS), 4)
    w(MAPPABLE_BASE, res.low_base, 4)
    w(MAPPABLE_SIZE, res.low_size, 4)
    w(NONMAPPABLE_BASE, res.high_base, 4)
    w(NONMAPPABLE_SIZE, res.high_size, 4)
    w(FENCE_NUM, len(res.fences), 4)
    w(CURSOR_X_HOT, 0xFFFF_FFFF, 4)
    w(CURSOR_Y_HOT, 0xFFFF_FFFF, 4)
    # PV: caps and known formats; no shared page until the guest sets one up
    state = getattr(vgpu, "pv", None)
    active = state is not None and state.active  # a GT reset keeps an accepted page; a DMLR drops it first
    w(PV_CAPS, int(pv.HOST_CAPS), 4)
    w(PV_VERSIONS, pv.versions_mask(), 4)
    w(PV_STATUS, int(pv.PvStatus.ACCEPTED if active else pv.PvStatus.NONE), 4)
    w(PV_ENABLED, int(state.enabled) if state is not None and active else 0, 4)
    w(SHARED_PAGE_GPA, state.gpa if state is not None and active else 0, 8)


def pvinfo_read(vgpu: "Vgpu", offset: int, size: int) -> int:
    """pvinfo_mmio_read: return the vreg; an unexpected window is logged; ANY read sets pv_notified."""
    if offset == PV_MMIO:  # ACRN: the register named by shared_page->reg_addr, through its handler
        vgpu.pv_notified = True
        return pv_mmio_read(vgpu, size)
    value = vgpu.mmio.read(offset, size)
    if not any(lo <= offset and offset + size <= hi for lo, hi in _VALID_READS):
        vgpu.count("pvinfo_invalid_read")
        vgpu.log.warning("pvinfo_invalid_read", vgpu=vgpu.id, offset=hex(offset), size=size)
    vgpu.pv_notified = True
    return value


def pv_mmio_read(vgpu: "Vgpu", size: int) -> int:
    """pvinfo_mmio_read(pv_mmio): the register named by shared_page->reg_addr, through its handler. The
    offset must lie in the 2 MB register range and not be pv_mmio itself (a redirect to itself would
    recurse); anything else is refused and counted, and reads 0."""
    if vgpu.pvmmio.mfn is None:
        vgpu.count("pvmmio_read_without_grant")
        return 0
    reg = pvmmio.page_read(vgpu, pvmmio.REG_ADDR, 4)
    if (reg + size > MMIO_SIZE or reg % min(size, 4)
            or (reg < PV_MMIO + 4 and PV_MMIO < reg + size)):
        vgpu.count("pvmmio_bad_reg_addr")
        vgpu.log.warning("pvmmio_bad_reg_addr", vgpu=vgpu.id, reg_addr=hex(reg))
        return 0
    vgpu.count("pvmmio_redirected_reads")
    return vgpu.gvt.table.read(vgpu, reg, size)


def pvinfo_write(vgpu: "Vgpu", offset: int, data: int, size: int) -> None:
    """pvinfo_mmio_write: act on display_ready / g2v_notify, store the handled fields, rsv5 => failsafe."""
    if offset == DISPLAY_READY:
        vgpu.emit(Uevent(vgpu.vm, "GVT_DISPLAY_READY", 1 if data else 0))
    elif offset == G2V_NOTIFY:
        handle_g2v_notification(vgpu, data & 0xFFFF_FFFF)
    elif offset == ENABLE_PVMMIO:
        # ACRN handlers.c pvinfo_mmio_write: the vreg keeps what the host grants (data & i915.enable_pvmmio),
        # 0 if set_pvmmio could not map the shared page (pvmmio.py)
        vgpu.mmio.write(offset, pvmmio.negotiate(vgpu, data & 0xFFFF_FFFF), 4)
        return
    elif offset in _RSV5:
        vgpu.count("pvinfo_rsv5_write")
        vgpu.enter_failsafe(FailsafeReason.INSUFFICIENT_RESOURCE, f"write to PVINFO rsv5 at {offset:#x}")
        return
    elif offset not in _STORED_WRITES:
        vgpu.count("pvinfo_invalid_write")
        vgpu.log.warning("pvinfo_invalid_write", vgpu=vgpu.id, offset=hex(offset), size=size, data=hex(data))
        return
    vgpu.mmio.write(offset, data, size)


def guest_pdps(vgpu: "Vgpu") -> tuple[int, int, int, int]:
    """pdp[0..3] as 4 x u64, read from the vregs (the guest writes them before g2v_notify)."""
    return tuple(vgpu.mmio.read(PDP0_LO + 8 * i, 8) for i in range(4))  # type: ignore[return-value]


def handle_g2v_notification(vgpu: "Vgpu", notification: int) -> None:
    """L3/L4 CREATE => get (or create) the PPGTT mm with these root pointers; DESTROY => put it;
    EXECLIST_CONTEXT_CREATE/DESTROY and the legacy value 1 are ignored (i915_pvinfo.h)."""
    pdps = guest_pdps(vgpu)
    if notification in (G2vNotify.PPGTT_L3_PAGE_TABLE_CREATE, G2vNotify.PPGTT_L4_PAGE_TABLE_CREATE):
        root = PPGTT_ROOT_L3 if notification == G2vNotify.PPGTT_L3_PAGE_TABLE_CREATE else PPGTT_ROOT_L4
        vgpu.ppgtt.get(root, pdps)  # find + ref, or create and shadow now (ppgtt.py)
        vgpu.count("g2v_ppgtt_create")
    elif notification in (G2vNotify.PPGTT_L3_PAGE_TABLE_DESTROY, G2vNotify.PPGTT_L4_PAGE_TABLE_DESTROY):
        root = PPGTT_ROOT_L3 if notification == G2vNotify.PPGTT_L3_PAGE_TABLE_DESTROY else PPGTT_ROOT_L4
        if not vgpu.ppgtt.put(root, pdps):
            vgpu.count("g2v_ppgtt_destroy_unknown")
            vgpu.log.warning("ppgtt_put_unknown", vgpu=vgpu.id, pdps=[hex(p) for p in pdps])
        else:
            vgpu.count("g2v_ppgtt_destroy")
    elif notification == PvG2vNotify.SHARED_PAGE_SETUP:
        status = pv.setup(vgpu, vgpu.mmio.read(SHARED_PAGE_GPA, 8))
        vgpu.mmio.write(PV_STATUS, int(status), 4)
        vgpu.mmio.write(PV_ENABLED, int(vgpu.pv.enabled), 4)
    elif notification == PvG2vNotify.PV_SEND_TRIGGER:
        pv.send_trigger(vgpu)
    elif notification == PvG2vNotify.PV_PPGTT_UPDATE:
        pv.ppgtt_update(vgpu)
    elif notification in (G2vNotify.EXECLIST_CONTEXT_CREATE, G2vNotify.EXECLIST_CONTEXT_DESTROY, 1):
        pass
    else:
        vgpu.count("g2v_invalid")
        vgpu.log.warning("g2v_invalid", vgpu=vgpu.id, notification=notification)
