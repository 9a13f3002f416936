"""Workloads the GPU really executes and the guest verifies in its own RAM.

Each workload builds a privileged batch in a GGTT-addressed buffer (the blit or the stores, then
MI_BATCH_BUFFER_END); the ring gets MI_BATCH_BUFFER_START(GGTT), a store-dword fence with the request's
seqno, and (if asked) MI_USER_INTERRUPT. After context_complete the guest checks the target bytes and the
fence in its own RAM. ``aperture_copy`` writes its input through the BAR2 aperture window, which the
hypervisor maps straight onto the buffer's machine frames (map_gfn_to_mfn): no trap, the pass-through half.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import cmds
from .gem import Bo
from .i915 import VgpuDriver

WIDTH, HEIGHT = 64, 16  # pixels (32 bpp): 4 KiB per surface
PITCH = WIDTH * 4
SURFACE = PITCH * HEIGHT
KINDS = ("fill", "copy", "store", "aperture_copy")
#: which engines can run a kind (real hardware: the XY_* blits are blitter-engine commands)
ENGINES_FOR: dict[str, tuple[str, ...]] = {
    "fill": ("bcs",), "copy": ("bcs",), "aperture_copy": ("bcs",), "store": ("rcs", "bcs", "vcs", "vecs"),
}


def kinds_for(engine: str, mix: list[str]) -> list[str]:
    """The kinds of ``mix`` an engine runs, in mix order (a vCPU cycles through them)."""
    return [k for k in mix if engine in ENGINES_FOR.get(k, ())]


class VerifyError(AssertionError):
    """The GPU's result in guest RAM is not what the workload asked for."""


@dataclass
class Surfaces:
    """Long-lived buffers one engine's workloads use (allocated once, after driver init): each engine has
    its own, so workloads running at the same time on two engines never share a target."""

    src: Bo
    dst: Bo
    batch: Bo
    aperture_src: Bo


async def allocate(drv: VgpuDriver) -> tuple[dict[str, Surfaces], Bo]:
    """Per-engine surfaces and the shared fence page (one 64-byte slot per engine)."""
    assert drv.gem is not None
    g = drv.gem
    surfaces = {e: Surfaces(src=await g.create(SURFACE), dst=await g.create(SURFACE), batch=await g.create(4096),
                            aperture_src=await g.create(SURFACE, mappable=True)) for e in drv.engines}
    return surfaces, await g.create(4096)


class WorkloadRunner:
    """Runs numbered workloads on a VM and verifies each one."""

    def __init__(self, drv: VgpuDriver, surfaces: dict[str, Surfaces], fence: Bo, seed: int) -> None:
        self.drv = drv
        self.surfaces = surfaces
        self.fence = fence
        self.rng = random.Random(seed)
        self.seqno = 0
        self.asked_user_irq: dict[str, int] = {e: 0 for e in drv.engines}

    async def run(self, kind: str, engine: str, vcpu: int = 0, user_irq: bool = True) -> None:
        """Submit one workload of ``kind`` on ``engine`` and verify it. Raises VerifyError / DriverError."""
        self.seqno += 1
        seq = self.seqno
        m = self.drv.machine
        s = self.surfaces[engine]
        if kind == "fill":
            color = self.rng.getrandbits(32)
            body = cmds.color_blt(s.dst.gm, PITCH, WIDTH, HEIGHT, color)
            expect = color.to_bytes(4, "little") * (WIDTH * HEIGHT)
        elif kind in ("copy", "aperture_copy"):
            pattern = self.rng.randbytes(SURFACE)
            src = s.src if kind == "copy" else s.aperture_src
            if kind == "copy":
                await m.write_mem(src.gpa, pattern, vcpu)
            else:
                await self._write_through_aperture(src, pattern, vcpu)
            body = cmds.src_copy_blt(s.dst.gm, PITCH, src.gm, PITCH, WIDTH, HEIGHT)
            expect = pattern
        elif kind == "store":
            values = [self.rng.getrandbits(32) for _ in range(16)]
            body = []
            for i, v in enumerate(values):
                body += cmds.store_dword(s.dst.gm + 256 * i, v)
            expect = b""
        else:
            raise ValueError(kind)
        batch = s.batch
        await m.write_mem(batch.gpa, cmds.to_bytes(body + [cmds.MI_BATCH_BUFFER_END]), vcpu)
        ring = cmds.batch_buffer_start(batch.gm) + cmds.store_dword(self.fence.gm + 64 * _slot(engine), seq)
        if user_irq:
            ring.append(cmds.MI_USER_INTERRUPT)
            self.asked_user_irq[engine] += 1
        await self.drv.submit(engine, ring, vcpu=vcpu, wait_user_irq=user_irq)
        fence = m.read_u32(self.fence.gpa + 64 * _slot(engine))
        if fence != seq:
            raise VerifyError(f"{kind}#{seq} on {engine}: fence {fence} != {seq}")
        if kind == "store":
            for i, v in enumerate(values):
                got = m.read_u32(s.dst.gpa + 256 * i)
                if got != v:
                    raise VerifyError(f"store#{seq}: dword {i} = {got:#x}, expected {v:#x}")
        else:
            got = m.read_mem(s.dst.gpa, SURFACE)
            if got != expect:
                bad = next(i for i in range(SURFACE) if got[i] != expect[i])
                raise VerifyError(f"{kind}#{seq} on {engine}: first wrong byte at {bad}")

    async def _write_through_aperture(self, bo: Bo, data: bytes, vcpu: int) -> None:
        """CPU writes through the BAR2 window at the buffer's GM offset: memory accesses, never ioreqs."""
        m = self.drv.machine
        gpa = self.drv.gpu.bar2 + bo.gm
        if not m.is_memory(gpa):
            raise VerifyError(f"aperture window at {gpa:#x} is not mapped (map_gfn_to_mfn missing)")
        before = sum(m.ioreqs.values())
        await m.write_mem(gpa, data, vcpu)
        if sum(m.ioreqs.values()) != before:
            raise VerifyError("aperture writes trapped: pass-through expected")


def _slot(engine: str) -> int:
    return ("rcs", "bcs", "vcs", "vecs").index(engine)
