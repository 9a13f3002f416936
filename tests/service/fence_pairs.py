"""The raw client of the restart tests (test_gvt_restart.py: 20 gvt and 20 pgpu kills; test_vhm_restart.py:
20 vhm kills): a guest whose vCPUs each keep one MMIO write+read pair outstanding on their own fence
register, with increasing values, while a service is killed with SIGKILL and started again; every request
must be answered exactly once with the right value."""

from __future__ import annotations

import asyncio
import time

from gvtsim.orchestration.hoststack import HostStack
from gvtsim.protocol import IoreqDir, IoreqType
from gvtsim.protocol import messages as m
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.pvinfo import VGT_PVINFO_PAGE
from vhm_scripted import ScriptedGuest

R, W = IoreqDir.READ, IoreqDir.WRITE
MMIO, PIO = IoreqType.MMIO, IoreqType.PIO
BAR0 = 0xF000_0000


async def probe(guest: ScriptedGuest, vm: int) -> int:
    """Place BAR0 of 00:02.0 through CONF1, enable decode, read the PVINFO magic (as i915 does first)."""
    def conf(reg: int) -> int:
        return 1 << 31 | 2 << 11 | reg

    for port, size, value in ((0xCF8, 4, conf(0x10)), (0xCFC, 4, BAR0), (0xCF8, 4, conf(0x14)),
                              (0xCFC, 4, 0), (0xCF8, 4, conf(0x04)), (0xCFC, 2, 0x6)):
        await guest.ioreq(vm, 0, PIO, W, port, size, value)
    return await guest.ioreq(vm, 0, MMIO, R, BAR0 + VGT_PVINFO_PAGE, 8)


class FencePairs:
    """``vcpus`` vCPUs, each keeping one write+read pair outstanding on its own fence register, increasing
    values; ``ioreq_timeout`` per request, ``progress_timeout`` for every vCPU to progress after a restart."""

    def __init__(self, guest: ScriptedGuest, vm: int, vcpus: int = 4, ioreq_timeout: float = 5.0,
                 progress_timeout: float = 20.0) -> None:
        self.guest, self.vm, self.vcpus = guest, vm, vcpus
        self.ioreq_timeout, self.progress_timeout = ioreq_timeout, progress_timeout
        self.pairs = [0] * vcpus
        self.last = [0] * vcpus  # the last value each vCPU wrote and read back
        self.wrong: list[tuple[int, int, int]] = []
        self.failures: list[str] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def vcpu(self, i: int) -> None:
        reg = BAR0 + FENCE_REG_GEN6_LO + 8 * i  # fence i: this vCPU's own register
        value = i << 24
        t = self.ioreq_timeout
        while not self.stop.is_set():
            value += 1
            try:
                assert await self.guest.ioreq(self.vm, i, MMIO, W, reg, 4, value, timeout=t) == 0
                got = await self.guest.ioreq(self.vm, i, MMIO, R, reg, 4, timeout=t)
            except Exception as err:  # an ERROR (client_lost, gpu_reset, timeout...): the guest noticed
                self.failures.append(f"vCPU {i} value {value}: {type(err).__name__}: {err}")
                return
            if got != value:
                self.wrong.append((i, value, got))
            self.pairs[i] += 1
            self.last[i] = value

    async def across(self, stack: HostStack, service: str, kills: int) -> list[float]:
        """Run the pairs while ``service`` is killed (SIGKILL) and started again ``kills`` times; after each
        restart wait until every vCPU completed pairs again. Returns each kill's time to progress, sorted."""
        self.tasks = [asyncio.create_task(self.vcpu(i)) for i in range(self.vcpus)]
        outages: list[float] = []
        try:
            await asyncio.sleep(0.5)
            for _ in range(kills):
                before = list(self.pairs)
                t0 = time.monotonic()
                await asyncio.to_thread(stack.restart, service)  # SIGKILL, the same command again: a new epoch
                async with asyncio.timeout(self.progress_timeout):
                    while not all(p > b + 2 for p, b in zip(self.pairs, before)) and not self.failures:
                        await asyncio.sleep(0.01)
                outages.append(time.monotonic() - t0)
                assert not self.failures, self.failures
        finally:
            self.stop.set()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        assert not self.failures, self.failures
        assert not self.wrong, self.wrong[:5]
        dup = [x for x in self.guest.stray if isinstance(x, (m.IoreqDone, m.Error))]
        assert not dup, dup[:5]  # no answer without a request waiting for it: nothing answered twice
        lost = [x for x in self.guest.stray if isinstance(x, m.VgpuLost)]
        assert not lost, lost
        return sorted(outages)
