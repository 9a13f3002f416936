"""The plane query and the framebuffer read (Linux drivers/gpu/drm/i915/gvt/dmabuf.c:
intel_vgpu_query_plane answers VFIO_DEVICE_QUERY_GFX_PLANE from fb_decoder.c; intel_vgpu_get_dmabuf exports
the surface's pages, found through the vGPU's GGTT entries, as a dma-buf the host can scan out).

gvtsim has no dma-buf: the host-side reader gets the surface's bytes instead, read page by page through the
vGPU's GGTT (the host entries GVT wrote: machine frames) straight from machine memory. A surface outside the
vGPU's graphics memory, or a page whose entry is not a guest page, is refused: the caller cannot read
another vGPU's memory through this call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from . import fb_decoder as fb
from .gtt import pte_pfn, pte_present

if TYPE_CHECKING:
    from .vgpu import Vgpu

MAX_SURFACE = 64 << 20  # a 4K XRGB8888 surface is 32 MiB; anything past this is a guest's mistake


class SurfaceError(ValueError):
    """The requested range is not readable framebuffer memory of this vGPU."""


def query_plane(vgpu: "Vgpu", plane: str, pipe: int = 0) -> fb.PlaneInfo:
    """intel_vgpu_query_plane: the decoded plane (``primary`` or ``cursor``). Raises fb.DecodeError."""
    if plane == "primary":
        return vgpu.display.primary(pipe)
    if plane == "cursor":
        return vgpu.display.cursor(pipe)
    raise fb.DecodeError(f"no plane {plane!r} (primary or cursor)")


def read_surface(vgpu: "Vgpu", mem: MachineMemory, ggtt_addr: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``ggtt_addr + offset`` of graphics memory, read through the vGPU's GGTT from
    machine memory. Raises SurfaceError."""
    start = ggtt_addr + offset
    if offset < 0 or length < 0 or offset + length > MAX_SURFACE:
        raise SurfaceError(f"range +{offset:#x}/{length:#x} is beyond a framebuffer's size")
    if length == 0:
        return b""
    if not (vgpu.resource.contains(start) and vgpu.resource.contains(start + length - 1)):
        raise SurfaceError(f"graphics memory [{start:#x}, +{length:#x}) is outside vGPU {vgpu.id}'s slices")
    scratch = vgpu.gvt.scratch_mfn
    out = bytearray()
    addr = start
    end = start + length
    while addr < end:
        index = addr >> PAGE_SHIFT
        in_page = addr & (PAGE_SIZE - 1)
        n = min(PAGE_SIZE - in_page, end - addr)
        pte = vgpu.gtt.host.get(index)
        if pte is None or not pte_present(pte) or pte_pfn(pte) == scratch:
            out += bytes(n)  # an unbound page reads as the scratch page: zeros
        else:
            out += mem.read((pte_pfn(pte) << PAGE_SHIFT) + in_page, n)
        addr += n
    return bytes(out)
