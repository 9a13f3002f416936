"""A guest VM's view of its machine: vCPUs that trap, guest-physical memory through the EPT.

Guest RAM is host memory, as in reality: a RAM access walks the VM's EPT (services/common/ept.py, kept by
vhm in the shared machine memory) and touches the machine frame directly, with no message. An access to a
gpa the EPT does not map is MMIO and becomes an ioreq; a write to a page whose EPT entry lacks W becomes a
WP ioreq (ACRN: EPT violation with exit qualification R-X => REQ_WP, the hypervisor does not commit the
write; the handler does). Port I/O always traps. A vCPU has one outstanding ioreq at a time (one ACRN slot
per vCPU), enforced by a lock.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass
from typing import cast

from ...protocol import IoreqDir, IoreqType
from ...protocol import messages as m
from ...protocol.errors import Refusal
from ..common.ept import Ept
from ..common.histo import Histogram
from ..common.memory import PAGE_SHIFT, PAGE_SIZE, MachineMemory
from .runtime import Gen, Held, Lock, Runtime, Trap


@dataclass
class RttStats:
    """Round-trip times of trapped accesses, by ioreq kind: histograms recorded at the source (exact merges
    across VMs and processes, services/common/histo.py)."""

    hists: dict[int, Histogram]

    @classmethod
    def new(cls) -> "RttStats":
        return cls({k: Histogram() for k in IoreqType})


class Vcpu:
    """One vCPU: its ioreq sequence numbers, its lock (one ACRN slot: one ioreq in flight) and counts."""

    def __init__(self, vm: "GuestMachine", index: int) -> None:
        self.vm = vm
        self.index = index
        self._seq = itertools.count(1)
        self.lock = Lock()  # held by a trap in flight, or by a thread running with interrupts off
        self.traps = 0  # ioreqs this vCPU has made

    def irqs_off(self) -> Gen[Held]:
        """Run a sequence of accesses on this vCPU with nothing interleaved (as a driver does with local
        interrupts disabled: i915 writes the ELSP ports under a spinlock with IRQs off):
        ``with (yield from vcpu.irqs_off()):``."""
        return (yield from self.lock.hold())

    def _req(self, kind: IoreqType, direction: IoreqDir, addr: int, size: int, value: int) -> m.Ioreq:
        # not checked here: the receiver's codec refuses a size other than 1, 2, 4 or 8 (a hostile guest may try)
        return m.Ioreq(vm=self.vm.vm_id, vcpu=self.index, seq=next(self._seq), kind=int(kind), dir=int(direction),
                       addr=addr, size=cast(m.AccessSize, size), value=value & ((1 << (8 * size)) - 1))

    def ioreq(self, kind: IoreqType, direction: IoreqDir, addr: int, size: int, value: int = 0) -> Gen[int]:
        """Trap: an ioreq; the thread resumes with the read value (0 for writes). A refusal ends the thread
        (the runtime reports it as the thread's outcome, the driver's GPU reset)."""
        result = yield Trap(self, self._req(kind, direction, addr, size, value))
        return int(result)

    def try_ioreq(self, kind: IoreqType, direction: IoreqDir, addr: int, size: int,
                  value: int = 0) -> Gen[int | Refusal]:
        """:meth:`ioreq`, resumed with the Refusal instead of ending the thread when the host refuses it."""
        result = yield Trap(self, self._req(kind, direction, addr, size, value), tolerate=True)
        return result if isinstance(result, Refusal) else int(result)

    def completed(self, trap: Trap, took: float) -> None:
        """The runtime's report of a completed trap: count it and its round trip."""
        kind = IoreqType(trap.req.kind)
        self.vm.rtt.hists[kind].record_s(took)
        self.vm.ioreqs[kind.name] += 1
        self.traps += 1


class GuestMachine:
    """A VM's CPU-side view: its vCPUs, its RAM through the EPT, and trapped MMIO/PIO.

    Args:
        vm_id: the id vhm gave the VM.
        vcpus: vCPU count.
        mem: the host stack's machine memory.
        ept_root: the VM's EPT root frame (from VM_CREATED).
        ram_bytes: size of guest RAM (gpa 0 .. ram_bytes-1).
        rt: the runtime its threads run on (its clock is ``rt.now``).
    """

    def __init__(self, vm_id: int, vcpus: int, mem: MachineMemory, ept_root: int, ram_bytes: int,
                 rt: Runtime) -> None:
        self.vm_id = vm_id
        self.mem = mem
        self.ept = Ept(mem, ept_root)
        self.ram_bytes = ram_bytes
        self.rt = rt
        self.vcpus = [Vcpu(self, i) for i in range(vcpus)]
        self.ioreqs: Counter[str] = Counter()
        self.rtt = RttStats.new()
        self.direct_writes = 0

    # ------------------------------------------------------------------------------------ memory path
    def _frame(self, gpa: int) -> tuple[int, bool] | None:
        return self.ept.translate(gpa >> PAGE_SHIFT)

    def is_memory(self, gpa: int) -> bool:
        """True if the EPT maps ``gpa`` (RAM, or an aperture window mapped with map_gfn_to_mfn)."""
        return self._frame(gpa) is not None

    def read_mem(self, gpa: int, length: int) -> bytes:
        """Read guest memory directly (no trap). Raises ValueError for an unmapped gpa."""
        out = bytearray()
        while length:
            t = self._frame(gpa)
            if t is None:
                raise ValueError(f"gpa {gpa:#x} is not memory")
            off = gpa & (PAGE_SIZE - 1)
            n = min(length, PAGE_SIZE - off)
            out += self.mem.read((t[0] << PAGE_SHIFT) + off, n)
            gpa, length = gpa + n, length - n
        return bytes(out)

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.read_mem(gpa, 4), "little")

    def read_u64(self, gpa: int) -> int:
        return int.from_bytes(self.read_mem(gpa, 8), "little")

    def write_mem(self, gpa: int, data: bytes, vcpu: int = 0) -> Gen[None]:
        """Write guest memory: directly where the EPT allows writes, as WP ioreqs (8-byte pieces, naturally
        aligned) where the page is write-protected. Raises ValueError for an unmapped gpa."""
        view = memoryview(data)
        while view.nbytes:
            t = self._frame(gpa)
            if t is None:
                raise ValueError(f"gpa {gpa:#x} is not memory")
            mfn, writable = t
            off = gpa & (PAGE_SIZE - 1)
            n = min(view.nbytes, PAGE_SIZE - off)
            if writable:
                self.mem.write((mfn << PAGE_SHIFT) + off, view[:n])
                self.direct_writes += 1
            else:
                yield from self._write_protected(gpa, bytes(view[:n]), vcpu)
            gpa, view = gpa + n, view[n:]

    def _write_protected(self, gpa: int, data: bytes, vcpu: int) -> Gen[None]:
        pos = 0
        while pos < len(data):
            a = gpa + pos
            size = 8
            while size > 1 and (a % size or pos + size > len(data)):
                size //= 2
            value = int.from_bytes(data[pos:pos + size], "little")
            yield from self.vcpus[vcpu].ioreq(IoreqType.WP, IoreqDir.WRITE, a, size, value)
            pos += size

    def write_u32(self, gpa: int, value: int, vcpu: int = 0) -> Gen[None]:
        yield from self.write_mem(gpa, (value & 0xFFFF_FFFF).to_bytes(4, "little"), vcpu)

    def write_u64(self, gpa: int, value: int, vcpu: int = 0) -> Gen[None]:
        yield from self.write_mem(gpa, (value & (2**64 - 1)).to_bytes(8, "little"), vcpu)

    # --------------------------------------------------------------------------------------- MMIO / PIO
    def mmio_read(self, gpa: int, size: int, vcpu: int = 0) -> Gen[int]:
        """A load from an MMIO address: an MMIO ioreq (or a plain read if the gpa is memory)."""
        if self.is_memory(gpa):
            return int.from_bytes(self.read_mem(gpa, size), "little")
        return (yield from self.vcpus[vcpu].ioreq(IoreqType.MMIO, IoreqDir.READ, gpa, size))

    def mmio_write(self, gpa: int, size: int, value: int, vcpu: int = 0) -> Gen[None]:
        """A store to an MMIO address: an MMIO ioreq (or a memory write if the gpa is memory)."""
        if self.is_memory(gpa):
            yield from self.write_mem(gpa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"), vcpu)
            return
        yield from self.vcpus[vcpu].ioreq(IoreqType.MMIO, IoreqDir.WRITE, gpa, size, value)

    def inl(self, port: int, size: int = 4, vcpu: int = 0) -> Gen[int]:
        return (yield from self.vcpus[vcpu].ioreq(IoreqType.PIO, IoreqDir.READ, port, size))

    def outl(self, port: int, value: int, size: int = 4, vcpu: int = 0) -> Gen[None]:
        yield from self.vcpus[vcpu].ioreq(IoreqType.PIO, IoreqDir.WRITE, port, size, value)
