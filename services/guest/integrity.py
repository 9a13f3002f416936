"""A victim VM's integrity views: checksums of its RAM, its GGTT view and its PPGTT view, before and after.

With ``--integrity`` the guest sets aside canary pages after boot: random bytes in its RAM, bound in its
GGTT (mappable GM) and mapped in a PPGTT of its own (registered with GVT through the g2v PPGTT notify, so GVT
shadows and write-protects its tables like any other). Nothing of the guest touches them afterwards, so
any change is someone else's doing: another VM's command buffer, a forged PTE, a DMA that got through. The
checksums are SHA-256 over the canary bytes (read through the VM's EPT, i.e. its machine frames), over the
GGTT entries as the guest reads them back through BAR0 (GVT answers with the guest's values), and over the
PPGTT tables and translations of the canary range.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from ..common.memory import PAGE_SHIFT, PAGE_SIZE
from .i915 import PpgttContext, VgpuDriver
from .runtime import Gen

CANARY_PAGES = 16
CANARY_VA = 0x40_0000  # where the canary pages sit in the victim's PPGTT


class Integrity:
    """The canary and its three checksummed views."""

    def __init__(self, drv: VgpuDriver, seed: int) -> None:
        self.drv = drv
        self.seed = seed
        self.bo: Any = None
        self.ctx: PpgttContext | None = None

    def setup(self, engine: str = "rcs") -> Gen[dict[str, str]]:
        """Allocate, fill, bind and map the canary; returns the first snapshot."""
        assert self.drv.gem is not None
        self.bo = yield from self.drv.gem.create(CANARY_PAGES * PAGE_SIZE, mappable=True)
        data = random.Random(self.seed).randbytes(self.bo.size)
        yield from self.drv.machine.write_mem(self.bo.gpa, data)
        self.ctx = yield from self.drv.create_ppgtt_context(engine)
        for i in range(CANARY_PAGES):
            yield from self.ctx.ppgtt.map(CANARY_VA + i * PAGE_SIZE, self.bo.gpa + i * PAGE_SIZE)
        return (yield from self.snapshot())

    def targets(self) -> dict[str, int]:
        """Where the canary and this VM's rcs context live (graphics addresses, the first canary machine
        frame): what an attacker would aim at, handed to the hostile guests of the malicious-guest suite."""
        assert self.bo is not None
        e = self.drv.engines.get("rcs") or next(iter(self.drv.engines.values()))
        t = self.drv.machine.ept.translate(self.bo.gpa >> PAGE_SHIFT)
        return {"canary_gm": self.bo.gm, "canary_mfn": t[0] if t else 0,
                "ctx_gm": e.context.gm if e.context else 0, "ring_gm": e.ring.gm if e.ring else 0}

    def snapshot(self) -> Gen[dict[str, str]]:
        """SHA-256 of the RAM, GGTT and PPGTT views of the canary."""
        assert self.bo is not None and self.ctx is not None and self.drv.gem is not None
        m = self.drv.machine
        ram = hashlib.sha256(m.read_mem(self.bo.gpa, self.bo.size)).hexdigest()
        g = hashlib.sha256()
        for i in range(CANARY_PAGES):
            g.update(((yield from self.drv.gem.read_pte(self.bo.gm + (i << PAGE_SHIFT)))).to_bytes(8, "little"))
        p = hashlib.sha256()
        pp = self.ctx.ppgtt
        for top in pp.top:
            p.update(m.read_mem(top, PAGE_SIZE))
        for i in range(CANARY_PAGES):
            p.update((pp.translate(CANARY_VA + i * PAGE_SIZE) or 0).to_bytes(8, "little"))
        return {"ram": ram, "ggtt": g.hexdigest(), "ppgtt": p.hexdigest()}
