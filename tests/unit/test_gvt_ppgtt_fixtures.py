"""Shared helpers for the PPGTT tests (no tests here): one host in a process.

A real MachineMemory on a tmp file, a real FrameAllocator and real EPTs (services/common/ept.py), the real
GVT core with EptMpt, and real guests (GuestMachine + the guest's GuestPpgtt). The host plays vhm in a
few lines: every ioreq a vCPU traps (MMIO to BAR0, WP on a tracked page) goes to ``Gvt.handle_ioreq``,
and the PageTrack effects it returns write-protect (or release) the page in the VM's EPT before the
ioreq completes, as vhm does.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any

from test_gvt_fixtures import program_bar0

from gvtsim.protocol import messages as m
from gvtsim.services.common.ept import ROOT_FRAMES, Ept
from gvtsim.services.common.memory import PAGE_SHIFT, PAGE_SIZE, FrameAllocator, MachineMemory
from gvtsim.services.guest.cpu import GuestMachine
from gvtsim.services.guest.i915 import ppgtt_notify_vgt
from gvtsim.services.guest.ppgtt import GuestPpgtt
from gvtsim.protocol.errors import Refusal
from gvtsim.services.guest.runtime import Gen, Runtime, drive
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.effects import PageTrack
from gvtsim.services.gvt.mpt import EptMpt
from gvtsim.services.gvt.ppgtt import pdps_to_context
from gvtsim.services.gvt.vgpu import Vgpu
from gvtsim.services.pgpu.ggtt import PageFault
from gvtsim.services.pgpu.ppgtt import Ppgtt

BAR0 = 0xE000_0000
DESC_VALID = 1


@dataclass
class GuestVm:
    vm: int
    ept: Ept
    ept_root: int
    ram_mb: int
    machine: GuestMachine
    vgpu: Vgpu
    next_page: int = 16  # gfns below are left alone

    def alloc_page(self) -> int:
        """A fresh page of guest RAM (bump allocator)."""
        gpa = self.next_page << PAGE_SHIFT
        self.next_page += 1
        return gpa


class Host:
    """One machine: memory, frames, VMs with their EPTs, the GVT core wired as vhm would wire it."""

    def __init__(self, frames: int = 4096, *, oos: bool = False, pool: int = 256) -> None:
        self._dir = tempfile.mkdtemp(prefix="gvtsim-ppgtt-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.mem = MachineMemory(os.path.join(self._dir, "mem"), size=frames * PAGE_SIZE, create=True)
        self.frames = FrameAllocator(frames)
        self.gvt = Gvt(mpt_factory=lambda vm, root, ram: EptMpt(self.mem, root, ram), enable_out_of_sync=oos)
        self.gvt.set_scratch_mfn(self._one("gvt"))
        self.gvt.shadow.init(self.mem)
        self.gvt.shadow.add_frames([self._one("gvt") for _ in range(pool)])
        self.vms: dict[int, GuestVm] = {}
        self.page_tracks: Counter[str] = Counter()
        self.rt = Runtime()  # the guests' CPUs (no event loop: pump() answers their ioreqs)

    def _one(self, owner: str) -> int:
        (run,) = self.frames.alloc(1, owner)
        self.mem.zero_frames(run.mfn)
        return run.mfn

    def add_vm(self, vm: int, ram_mb: int = 1) -> GuestVm:
        """A VM whose RAM is scattered over machine frames (gfn != mfn), with a vGPU and BAR0 placed."""
        (root,) = self.frames.alloc(ROOT_FRAMES, f"vm{vm}", contiguous=True)
        self.mem.zero_frames(root.mfn, ROOT_FRAMES)
        ept = Ept(self.mem, root.mfn, alloc_table=lambda: self._one(f"vm{vm}"))
        gfn = 0
        for run in self.frames.alloc(ram_mb << 8, f"vm{vm}", max_run=3, from_top=True):
            self.mem.zero_frames(run.mfn, run.count)
            ept.map(gfn, run.mfn, run.count)
            gfn += run.count
        v = self.gvt.create_vgpu(vm, "GVTg_V5_4", ept_root=root.mfn, ram_mb=ram_mb, now=0.0)
        assert not isinstance(v, Refusal), v
        program_bar0(self.gvt, v, BAR0)
        self.gvt.drain_effects()
        machine = GuestMachine(vm, 1, self.mem, root.mfn, ram_mb << 20, self.rt)
        g = GuestVm(vm, ept, root.mfn, ram_mb, machine, v)
        self.vms[vm] = g
        return g

    def _send(self, req: m.Ioreq) -> int:
        value = self.gvt.handle_ioreq(req, 0.0)
        self.apply_effects()
        return value

    def pump(self) -> None:
        """vhm's part for the guests' threads: every ioreq they trapped goes to GVT and completes at once."""
        rt = self.rt
        while rt.outbox:
            req = rt.outbox.pop(0)
            rt.ioreq_done(req.vm, req.vcpu, req.seq, self._send(req), rt.now)

    def run(self, gen: Any) -> Any:
        """Run one guest thread (a driver step) to its end on the guests' runtime, answering its ioreqs."""
        if not inspect.isgenerator(gen):  # a step that turned out not to need the CPU
            return gen
        return drive(gen, self._send, self.rt)

    def apply_effects(self) -> None:
        """vhm's part: PAGE_TRACK write-protects / releases the page in the VM's EPT."""
        for e in self.gvt.drain_effects():
            if isinstance(e, PageTrack):
                assert self.vms[e.vm].ept.set_write_protect(e.gfn, e.enable)
                self.page_tracks["enable" if e.enable else "disable"] += 1

    def notify(self, g: GuestVm, ppgtt: GuestPpgtt, create: bool = True) -> None:
        """The guest's gen8_ppgtt_notify_vgt through trapped MMIO."""
        def write(off: int, value: int) -> Gen[None]:
            yield from g.machine.mmio_write(BAR0 + off, 4, value)
        self.run(ppgtt_notify_vgt(write, ppgtt, create))

    def prepare(self, g: GuestVm, ppgtt: GuestPpgtt, workload_id: int = 1) -> tuple[int, int, int, int]:
        """What dispatch does before a submission: the shadow roots, after the OOS sync and the
        post-shadow flush."""
        desc = DESC_VALID | ((1 if ppgtt.levels == 3 else 3) << 3)
        shadow = g.vgpu.ppgtt.prepare_workload(desc, pdps_to_context(ppgtt.roots), workload_id)
        self.apply_effects()
        return shadow

    def shadow_walk(self, levels: int, shadow: tuple[int, int, int, int], va: int) -> int | None:
        """The machine address pgpu's walker reaches through the SHADOW tables (None: page fault)."""
        walker = Ppgtt(self.mem, levels, shadow if levels == 3 else shadow[:1])
        try:
            return walker.translate(va)
        except PageFault:
            return None

    def guest_walk(self, g: GuestVm, ppgtt: GuestPpgtt, va: int) -> int | None:
        """What the guest's tables say, in machine terms: gfn -> mfn of the VM, or the scratch page for
        a frame that is not the VM's (None: not mapped)."""
        gpa = ppgtt.translate(va)
        if gpa is None:
            return None
        mfn = g.vgpu.mpt.gfn_to_mfn(gpa >> PAGE_SHIFT)
        if mfn is None:
            mfn = self.gvt.scratch_mfn
        return (mfn << PAGE_SHIFT) | (va & (PAGE_SIZE - 1))

    def close(self) -> None:
        self.mem.close()
        os.unlink(os.path.join(self._dir, "mem"))
        os.rmdir(self._dir)
