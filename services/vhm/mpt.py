"""The MPT services vhm offers to ioreq clients (device models), as AcrnGT implements them on ACRN.

ACRN gvt/acrngt.c and 9.1. Callers are role-gvt sessions: the Service VM, privileged, so they may name any VM
(no ownership check), but every argument is checked: a VM that does not exist (no_such_vm), a gfn/gpa
outside what the VM has (bad_address), a state that does not allow the call (bad_request). Calls that
*release* something (delete a range, unintercept, disable page track, DMA unmap, unmap, detach) on a VM
that is being destroyed answer OK: the device model's own teardown races with vhm's, harmlessly.

This is a mixin of :class:`~.core.VhmCore`; each method is an entry point returning an outcome.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from ...protocol import ErrorCode, IoreqType
from ...protocol import messages as m
from ..common.memory import PAGE_SHIFT, FrameAllocator, FrameRun, MachineMemory, OutOfFrames
from .guest_memory import GuestMemoryError
from .outcomes import DataReply, FramesOut, Notice, Reply, VhmError, entry_point
from .routing import IoRange
from .vm import Vm, VmState

if TYPE_CHECKING:
    from .core import Client

#: ACRN gvt/acrngt.c: the range kinds a client may trap; PCI config goes through INTERCEPT_BDF instead
RANGE_KINDS = (IoreqType.PIO, IoreqType.MMIO, IoreqType.WP)


class MptServices:
    """gfn_to_mfn, dma_(un)map_guest_page, map_gfn_to_mfn, page tracking, read/write_gpa, inject_msi,
    frames for device models, attach/detach_vgpu, dom0_ready, set_trap_area (IO_RANGE) and BDF intercept."""

    mem: MachineMemory
    frames: FrameAllocator
    vms: dict[int, Vm]
    clients: dict[int, Client]
    counters: Counter[str]

    # ------------------------------------------------------------------------------------ lookups
    def _client_vm(self, vm_id: int, *, releasing: bool = False) -> Vm | None:
        """The VM a client names. None means "being destroyed, and the call only releases: answer OK"."""
        vm = self.vms.get(vm_id)
        if vm is None:
            raise VhmError(ErrorCode.NO_SUCH_VM, f"no VM {vm_id}")
        if vm.state is VmState.DYING:
            if releasing:
                return None
            raise VhmError(ErrorCode.NO_SUCH_VM, f"VM {vm_id} is being destroyed")
        return vm

    def _client(self, client: int) -> Client:
        c = self.clients.get(client)
        if c is None:
            raise VhmError(ErrorCode.BAD_REQUEST, f"client {client} is not registered")
        return c

    # ---------------------------------------------------------------------- trap areas and BDFs
    @entry_point
    def io_range(self, client: int, vm_id: int, kind: int, start: int, end: int, add: bool) -> Reply:
        """IO_RANGE (acrn_ioreq_add_iorange / del_iorange; set_trap_area is an MMIO range). OK value 1 if
        the table changed, 0 if the range was already there."""
        self._client(client)
        vm = self._client_vm(vm_id, releasing=not add)
        if vm is None:
            return Reply()
        if kind not in RANGE_KINDS:
            raise VhmError(ErrorCode.BAD_REQUEST, "ranges are PIO, MMIO or WP; PCI config uses INTERCEPT_BDF")
        if start > end or (kind == IoreqType.PIO and end > 0xFFFF):
            raise VhmError(ErrorCode.BAD_REQUEST, f"bad range [{start:#x}, {end:#x}] (inclusive end)")
        rng = IoRange(client, IoreqType(kind), start, end)
        if add:
            return Reply(int(vm.ranges.add(rng)))
        if not vm.ranges.remove(rng):
            raise VhmError(ErrorCode.BAD_REQUEST, f"range {IoreqType(kind).name} [{start:#x}, {end:#x}] "
                           f"is not registered by this client")
        return Reply(1)

    @entry_point
    def intercept_bdf(self, client: int, vm_id: int, bus: int, dev: int, func: int, add: bool) -> Reply:
        """INTERCEPT_BDF (acrn_ioreq_intercept_bdf / unintercept_bdf): PCI config requests for bus:dev.func."""
        self._client(client)
        vm = self._client_vm(vm_id, releasing=not add)
        if vm is None:
            return Reply()
        bdf = (bus, dev, func)
        if add:
            held = vm.bdfs.claim(bdf, client)
            if held is not None:
                raise VhmError(ErrorCode.BAD_REQUEST, f"{bus:02x}:{dev:02x}.{func} is intercepted by client {held}")
        elif not vm.bdfs.release(bdf, client):
            raise VhmError(ErrorCode.BAD_REQUEST, f"{bus:02x}:{dev:02x}.{func} is not intercepted by this client")
        return Reply()

    # ------------------------------------------------------------------------------ translation
    @entry_point
    def gfn_to_mfn(self, client: int, vm_id: int, gfn: int) -> Reply:
        """GFN_TO_MFN: the machine frame behind a guest frame (RAM or an extra mapping), OK{value = mfn}."""
        vm = self._client_vm(vm_id)
        assert vm is not None
        mfn = vm.memory.translate(gfn)
        if mfn is None:
            raise VhmError(ErrorCode.BAD_ADDRESS, f"gfn {gfn:#x} is not mapped in VM {vm_id}")
        return Reply(mfn)

    @entry_point
    def dma_map_guest_page(self, client: int, vm_id: int, gfn: int) -> Reply:
        """DMA_MAP_GUEST_PAGE: pin a guest RAM page for device DMA; OK{value = mfn} (no IOMMU: the DMA
        address is the machine address, as AcrnGT's dma_map_guest_page = gfn_to_mfn)."""
        self._client(client)
        vm = self._client_vm(vm_id)
        assert vm is not None
        if not vm.memory.is_ram(gfn):
            raise VhmError(ErrorCode.BAD_ADDRESS, f"gfn {gfn:#x} is not RAM of VM {vm_id}")
        mfn = vm.memory.translate(gfn)
        assert mfn is not None
        vm.dma_pins.setdefault(client, Counter())[mfn] += 1
        return Reply(mfn)

    @entry_point
    def dma_unmap_guest_page(self, client: int, vm_id: int, mfn: int) -> Reply:
        """DMA_UNMAP_GUEST_PAGE: drop one pin this client took on machine frame ``mfn``."""
        vm = self._client_vm(vm_id, releasing=True)
        if vm is None:
            return Reply()
        pins = vm.dma_pins.get(client)
        if not pins or pins[mfn] <= 0:
            raise VhmError(ErrorCode.BAD_ADDRESS, f"mfn {mfn:#x} is not DMA-mapped by this client in VM {vm_id}")
        pins[mfn] -= 1
        if not pins[mfn]:
            del pins[mfn]
        return Reply()

    @entry_point
    def map_gfn_to_mfn(self, client: int, vm_id: int, gfn: int, mfn: int, nr: int, map_: bool) -> Reply:
        """MAP_GFN_TO_MFN (HC 0x42 add/del_memory_region, ACRN gvt/acrngt.c): map ``nr`` gfns above RAM onto
        existing machine frames, or unmap them; the VM's guest gets EPT_CHANGED."""
        self._client(client)
        vm = self._client_vm(vm_id, releasing=not map_)
        if vm is None:
            return Reply()
        try:
            if map_:
                vm.memory.map_extra(gfn, mfn, nr)
                vm.extra_maps.update(dict.fromkeys(range(gfn, gfn + nr), client))
            else:
                if any(vm.extra_maps.get(g) != client for g in range(gfn, gfn + nr)):
                    raise GuestMemoryError(f"gfn range {gfn:#x}+{nr} is not mapped by this client")
                vm.memory.unmap_extra(gfn, nr)
                for g in range(gfn, gfn + nr):
                    del vm.extra_maps[g]
        except (GuestMemoryError, ValueError) as err:
            raise VhmError(ErrorCode.BAD_ADDRESS, str(err)) from None
        return Reply(notices=(Notice(vm.owner, m.EptChanged(vm=vm.id)),))

    # ------------------------------------------------------------------------------- page tracking
    @entry_point
    def page_track(self, client: int, vm_id: int, gfn: int, enable: bool) -> Reply:
        """PAGE_TRACK, the ACRN way (ACRN gvt/acrngt.c): enable adds a WP range [gfn<<12, ((gfn+1)<<12)-1] for
        the client then write-protects the page (HC 0x43), so the guest's next write is a WP ioreq;
        disable un-protects then deletes the range."""
        self._client(client)
        vm = self._client_vm(vm_id, releasing=not enable)
        if vm is None:
            return Reply()
        if not vm.memory.is_ram(gfn):
            raise VhmError(ErrorCode.BAD_ADDRESS, f"gfn {gfn:#x} is not RAM of VM {vm_id}")
        rng = IoRange(client, IoreqType.WP, gfn << PAGE_SHIFT, ((gfn + 1) << PAGE_SHIFT) - 1)
        holder = vm.page_tracks.get(gfn)
        if enable:
            if holder is not None and holder != client:
                raise VhmError(ErrorCode.BAD_REQUEST, f"gfn {gfn:#x} is tracked by client {holder}")
            if holder == client:
                return Reply(0)
            vm.ranges.add(rng)
            vm.memory.write_protect(gfn, True)
            vm.page_tracks[gfn] = client
            return Reply(1)
        if holder != client:
            raise VhmError(ErrorCode.BAD_REQUEST, f"gfn {gfn:#x} is not tracked by this client")
        vm.memory.write_protect(gfn, False)
        vm.ranges.remove(rng)
        del vm.page_tracks[gfn]
        return Reply(1)

    # ---------------------------------------------------------------------------- guest memory
    @entry_point
    def read_gpa(self, client: int, vm_id: int, gpa: int, length: int) -> DataReply:
        """READ_GPA: read guest RAM (bounds-checked against the VM's RAM)."""
        vm = self._client_vm(vm_id)
        assert vm is not None
        try:
            return DataReply(vm.memory.read(gpa, length))
        except GuestMemoryError as err:
            raise VhmError(ErrorCode.BAD_ADDRESS, str(err)) from None

    @entry_point
    def write_gpa(self, client: int, vm_id: int, gpa: int, data: bytes) -> Reply:
        """WRITE_GPA: write guest RAM (bounds-checked; write protection does not apply to the Service VM)."""
        vm = self._client_vm(vm_id)
        assert vm is not None
        try:
            vm.memory.write(gpa, data)
        except GuestMemoryError as err:
            raise VhmError(ErrorCode.BAD_ADDRESS, str(err)) from None
        return Reply(len(data))

    # -------------------------------------------------------------------------------------- MSI
    @entry_point
    def inject_msi(self, client: int, vm_id: int, addr: int, data: int) -> Reply:
        """INJECT_MSI (vhm_inject_msi, gvt/hypercall.h, ACRN gvt/acrngt.c): deliver an MSI to the VM's guest over
        the guest's own connection, numbered per VM so the guest can see a gap. OK{value = the MSI's seq}."""
        vm = self._client_vm(vm_id)
        assert vm is not None
        if vm.state is not VmState.RUNNING:
            raise VhmError(ErrorCode.BAD_REQUEST, f"VM {vm_id} is not running yet")
        vm.msi_seq += 1
        self.counters["msi_injected"] += 1
        return Reply(vm.msi_seq, (Notice(vm.owner, m.Msi(vm=vm.id, addr=addr, data=data, seq=vm.msi_seq)),))

    # -------------------------------------------------------------------- frames for device models
    @entry_point
    def alloc_frames(self, client: int, count: int, contiguous: bool = False) -> FramesOut:
        """ALLOC_FRAMES: zeroed machine frames owned by the client (freed by FREE_FRAMES or when it is lost)."""
        c = self._client(client)
        if count < 1:
            raise VhmError(ErrorCode.BAD_REQUEST, "count must be >= 1")
        try:
            runs = self.frames.alloc(count, c.owner, contiguous=contiguous)
        except OutOfFrames as err:
            raise VhmError(ErrorCode.NO_SPACE, str(err)) from None
        return FramesOut(runs)  # zero already: free frames are holes in the machine memory file

    @entry_point
    def free_frames(self, client: int, runs: list[tuple[int, int]]) -> Reply:
        """FREE_FRAMES: return runs this client allocated, exactly as FRAMES gave them. All or nothing."""
        c = self._client(client)
        held = Counter(self.frames.owned(c.owner))
        asked = Counter(FrameRun(mfn, count) for mfn, count in runs)
        for run, n in asked.items():
            if held[run] < n:
                raise VhmError(ErrorCode.BAD_REQUEST, f"frames {run.mfn:#x}+{run.count} are not a run this "
                               f"client holds (free runs exactly as FRAMES returned them)")
        self.frames.free(list(asked.elements()), c.owner)
        return Reply(sum(r.count for r in asked.elements()))

    # ------------------------------------------------------------------------------- vGPU binding
    @entry_point
    def attach_vgpu(self, client: int, vm_id: int, vgpu_id: int, attach: bool) -> Reply:
        """ATTACH_VGPU (MPT attach/detach_vgpu): bind the vGPU to the VM, with this client as its device
        model (a restarted device model re-attaches the vGPUs it restored), or unbind it."""
        self._client(client)
        vm = self._client_vm(vm_id, releasing=not attach)
        if vm is None:
            return Reply()
        if attach:
            if vgpu_id < 1:
                raise VhmError(ErrorCode.BAD_REQUEST, "vGPU ids start at 1")
            if vm.vgpu_id and vm.vgpu_id != vgpu_id and vm.dm in self.clients:
                raise VhmError(ErrorCode.BAD_REQUEST, f"VM {vm_id} already has vGPU {vm.vgpu_id}")
            vm.vgpu_id, vm.dm = vgpu_id, client
        else:
            if vm.vgpu_id != vgpu_id:
                raise VhmError(ErrorCode.BAD_REQUEST, f"vGPU {vgpu_id} is not attached to VM {vm_id}")
            vm.vgpu_id, vm.dm = 0, None
        return Reply()

    @entry_point
    def dom0_ready(self, client: int) -> Reply:
        """DOM0_READY (uevent GVT_DOM0_READY=1): this device model now creates the vGPUs VMs ask for."""
        self._client(client).ready = True
        return Reply()
