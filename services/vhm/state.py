"""vhm's state in machine memory: what a restarted vhm re-opens so that every VM goes on (docs/STATE.md).

ACRN keeps the VM table, the EPT, the ioreq slots and the VHM clients in the hypervisor and the Service
VM's kernel: a crash of either is a host crash. gvtsim's vhm is a process; its guests' RAM and EPTs are
already in the machine memory file, which outlives it. What lived only in the process is written, as it
changes, to journals (services/common/journal.py) in a directory beside that file:

* ``vhm.journal``: vhm itself: its lineage (the epoch of the first incarnation of this state, announced in
  HELLO_ACK so that a guest or gvt can tell "restarted with its state" from "a different vhm"), the machine
  memory it belongs to (size, inode), the id counters, and the device-model clients (id, name, epoch,
  DOM0_READY, the frames each holds);
* ``vm-<id>.journal`` for each RUNNING VM: the VM table entry (name, vCPUs, RAM size, the guest's identity,
  vGPU binding), the gfn -> mfn map as run-length extents, the EPT root and every frame the VM owns, the
  ranges, BDFs, page tracks (write protection itself is in the EPT entries), extra mappings and DMA pins,
  the CONF1 latch, the MSI counter, and per vCPU the ioreq slot (state, client, value, request) and the
  last completion handed back (seq, value).

The shell commits after each batch, **before** what the batch produced leaves (dispatches, completions):
a kill at any instant leaves the state before the batch (nothing of it was seen outside) or after it.

A restarted vhm reads them (:func:`restore`): frames are claimed exactly (never zeroed), the free list is
what is left (discarded, so a free frame reads as zeros), VMs wait for their guest to say HELLO again with
the recorded identity, clients are detached until their device model says HELLO again. A journal that is
refused (checksum, version, a frame claimed twice, ...) is deleted and reported: with ``vhm.journal``
refused nothing is restored (every guest then sees a different vhm and resets its VMs); with a VM's
journal refused that VM alone is gone.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from ...protocol import IoreqState, IoreqType
from ...protocol import messages as m
from ...protocol.constants import MAX_VCPUS, MAX_VM_ID
from ..common.journal import JournalFormat, JournalRefused, JournalWriter
from ..common.memory import FrameRun
from .guest_memory import GuestMemory, GuestMemoryError
from .routing import IoRange
from .vm import AwaitingGuest, Vm, VmState

if TYPE_CHECKING:
    from .core import VhmCore

#: Bumped on any change of the payload schema; a journal of another version is refused (never guessed at).
FORMAT_VERSION = 1
FORMAT = JournalFormat(b"VHMSTATE", FORMAT_VERSION, "vhm state journal", "this vhm")
#: a VM's journal is compacted (one full record, atomically renamed in) past this many bytes of deltas
COMPACT_BYTES = 256 << 10

StateRefused = JournalRefused


def mem_identity(path: str) -> list[int]:
    """What names one machine memory file: its size and inode (a file deleted and made again differs)."""
    st = os.stat(path)
    return [st.st_size, st.st_ino]


# ============================================================================= capture
def _slot(vm: Vm, v: int) -> list[Any]:
    s = vm.slots[v]
    req = s.request
    seq, value = vm.last_done[v]
    # the request as its fields in declaration order (m.Ioreq(*fields) on restore): a tuple costs a tenth
    # of a dict to build and to encode, and a slot is recorded twice per request
    return [int(s.state), s.client, s.value,
            msgspec.structs.astuple(req) if isinstance(req, m.Ioreq) else None, seq, value]


def _tables(vm: Vm) -> dict[str, Any]:
    """The VM's tables that only MPT calls and lifecycle steps change."""
    return {
        "ranges": [[r.client, int(r.kind), r.start, r.end]
                   for rs in vm.ranges._by_client.values() for r in rs],
        "bdfs": [[b, d, f, c] for (b, d, f), c in vm.bdfs._owner.items()],
        "tracks": [[g, c] for g, c in vm.page_tracks.items()],
        "extra": [[g, vm.memory.extra[g], vm.extra_maps.get(g, 0)] for g in vm.memory.extra],
        "pins": [[c, [[mfn, n] for mfn, n in pins.items()]] for c, pins in vm.dma_pins.items()],
    }


@dataclass
class VmRecorder:
    """What was last written of one VM, to write only what changed."""

    vm: Vm
    slots: list[Any] = field(default_factory=list)
    misc_key: tuple[Any, ...] = ()
    tables: dict[str, bytes] = field(default_factory=dict)
    frames_key: tuple[Any, ...] = ()

    def full(self, frames: Any) -> dict[str, Any]:
        vm = self.vm
        self.slots, self.misc_key, self.tables, self.frames_key = [None] * vm.vcpus, (), {}, ()
        rec: dict[str, Any] = {
            "full": True, "id": vm.id, "serial": vm.serial, "name": vm.name, "vcpus": vm.vcpus,
            "ram_mb": vm.ram_mb, "owner": list(vm.owner_id), "ept_root": vm.memory.ept_root,
            "extents": [list(e) for e in vm.memory.extents],
        }
        delta = self.delta(frames, tables=True)
        rec.update(delta or {})
        return rec

    def delta(self, frames: Any, tables: bool) -> dict[str, Any] | None:
        vm = self.vm
        out: dict[str, Any] = {}
        slots = {}
        for v, s in enumerate(vm.slots):
            key = (s.state, s.client, s.value, s.request, vm.last_done[v])
            if key != self.slots[v]:
                self.slots[v] = key
                slots[v] = _slot(vm, v)
        if slots:
            out["slots"] = slots
        misc = (vm.state.value, vm.vgpu_spec, vm.vgpu_id, vm.dm, vm.pci_conf_addr, vm.msi_seq)
        if misc != self.misc_key:
            self.misc_key = misc
            out["misc"] = list(misc)
        if tables:
            for name, value in _tables(vm).items():
                packed = msgpack.packb(value, use_bin_type=True)
                if packed != self.tables.get(name):
                    self.tables[name] = packed
                    out[name] = value
            owner = vm.memory.owner
            held = frames._owned.get(owner, ())
            # a VM's runs are only appended (EPT tables) until it is destroyed: their count and last one
            fkey = (len(held), held[-1] if held else None)
            if fkey != self.frames_key:
                self.frames_key = fkey
                out["frames"] = [[r.mfn, r.count] for r in held]
        return out or None


def fold(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The state a VM journal's records describe: the last full record with every later delta applied."""
    state: dict[str, Any] = {}
    for rec in records:
        if rec.get("full"):
            state = {"slots": {}}
        for key, value in rec.items():
            if key == "slots":
                state["slots"].update(value)
            elif key != "full":
                state[key] = value
    return state


# ============================================================================= the store
class VhmStore:
    """The journals of one vhm (one machine memory), in ``directory``; driven by the shell: ``mark`` what
    a message touched, :meth:`commit` before what the batch produced leaves."""

    def __init__(self, directory: str, compact_bytes: int = COMPACT_BYTES) -> None:
        self.dir = directory
        self.compact_bytes = compact_bytes
        self.files = JournalWriter(directory, FORMAT)
        self.recorders: dict[int, VmRecorder] = {}
        self.dirty: set[int] = set()  # VMs whose slots or small fields may have changed
        self.struct: set[int] = set()  # VMs whose tables (ranges, tracks, frames...) may have changed
        self.all = True  # every VM and vhm's own record may have changed (a client came or went...)
        self.top = False  # vhm's own record may have changed (a client's frames, DOM0_READY)
        self.lineage = 0
        self.mem_id: list[int] = []
        self._vhm_sig: tuple[Any, ...] = ()
        self.commits = 0

    @property
    def pending(self) -> bool:
        """Something may have changed since the last commit."""
        return self.all or self.top or bool(self.dirty)

    def mark(self, vm: int, struct: bool = False) -> None:
        self.dirty.add(vm)
        if struct:
            self.struct.add(vm)

    def mark_all(self) -> None:
        self.all = True

    def mark_vhm(self) -> None:
        self.top = True

    def commit(self, core: "VhmCore") -> int:
        """Write what changed: vhm's own record first (the clients a VM may name), then the VMs. Returns
        the records written."""
        before = self.files.records_written
        all_, dirty, struct, top = self.all, self.dirty, self.struct, self.top
        self.all, self.dirty, self.struct, self.top = False, set(), set(), False
        frames = core.frames
        if all_ or top:
            sig = (core._last_vm, core._last_client, core.next_serial, self.lineage,
                   tuple((c.id, c.name, c.epoch, c.ready, len(frames._owned.get(c.owner, ())),
                          frames.owned_count(c.owner)) for c in core.clients.values()))
            if sig != self._vhm_sig:
                self._vhm_sig = sig
                self.files.write_full("vhm", {
                    "full": True, "lineage": self.lineage, "mem": self.mem_id, "last_vm": core._last_vm,
                    "last_client": core._last_client, "next_serial": core.next_serial,
                    "clients": [[c.id, c.name, c.epoch or 0, c.ready, [[r.mfn, r.count] for r in frames.owned(c.owner)]]
                                for c in core.clients.values()]})
        for vid in [vid for vid, rec in self.recorders.items()
                    if core.vms.get(vid) is not rec.vm or rec.vm.state is not VmState.RUNNING]:
            del self.recorders[vid]  # destroyed (DYING: its frames go) or replaced: its journal goes
            self.files.delete(f"vm-{vid}")
        for vid in (list(core.vms) if all_ else dirty):
            vm = core.vms.get(vid)
            if vm is None or vm.state is not VmState.RUNNING:
                continue
            name = f"vm-{vid}"
            rec = self.recorders.get(vid)
            if rec is None or rec.vm is not vm:
                rec = self.recorders[vid] = VmRecorder(vm)
                self.files.write_full(name, rec.full(frames), 1)
                continue
            delta = rec.delta(frames, tables=all_ or vid in struct)
            if delta is None:
                continue
            if self.files.deltas_size(name) > self.compact_bytes:
                self.files.write_full(name, rec.full(frames))
            else:
                self.files.append(name, delta)
        self.commits += 1
        return self.files.records_written - before

    def delete_all(self) -> None:
        """A clean stop (every peer was told BYE): nothing to carry on; the journals go."""
        self.files.close()
        for name in self.files.names():
            self.files.delete(name)
        self.recorders.clear()
        try:
            os.rmdir(self.dir)
        except OSError:
            pass  # something else is in it: left as it is

    def close(self) -> None:
        self.files.close()


@dataclass
class Restored:
    """What :func:`restore` found: the VMs carried on, those refused (vm id, why), the clients restored,
    the lineage carried on (0: nothing restored), why vhm's own record was refused ("" if read or absent)."""

    vms: list[int] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    clients: list[int] = field(default_factory=list)
    lineage: int = 0
    refused_all: str = ""
    found: bool = False  # there was a state to restore (vhm.journal present)


def _read(store: VhmStore, name: str) -> list[dict[str, Any]]:
    records, _, _ = FORMAT.read(store.files.path(name))
    return records


def restore(core: "VhmCore", store: VhmStore, now: float | None = None) -> Restored:
    """Re-open the state in ``store`` into ``core`` (created with ``fresh=False``: nothing discarded yet).

    Claims every frame the restored VMs and clients hold, discards every frame left free (a free frame
    reads as zeros), and records again from scratch. A refused journal is deleted and reported."""
    from .core import Client

    now = time.monotonic() if now is None else now
    out = Restored()
    names = store.files.names()
    frames = core.frames
    try:
        if "vhm" not in names:
            raise FileNotFoundError
        out.found = True
        recs = _read(store, "vhm")
        top = recs[-1]
        if top.get("mem") != mem_identity(core.mem.path):
            raise StateRefused(f"it belongs to another machine memory (recorded {top.get('mem')}, "
                               f"{core.mem.path} is {mem_identity(core.mem.path)})")
        clients = []
        for cid, name, epoch, ready, runs in top["clients"]:
            c = Client(int(cid), None, str(name), bool(ready), int(epoch) or None, detached_at=now)
            frames.claim([FrameRun(int(a), int(n)) for a, n in runs], c.owner)
            clients.append(c)
        lineage = int(top["lineage"])
        if lineage <= 0:
            raise StateRefused("no lineage recorded")
    except FileNotFoundError:
        names = [n for n in names if n != "vhm"]
        for n in names:
            store.files.delete(n)
        core.mem.discard_frames(0, core.mem.frames)
        return out
    except (StateRefused, ValueError, KeyError, TypeError) as err:
        out.refused_all = f"{type(err).__name__}: {err}" if not isinstance(err, StateRefused) else str(err)
        for n in names:
            store.files.delete(n)
        core.frames = type(frames)(frames.total, frames.reserved, frames.on_release)  # nothing claimed
        core.mem.discard_frames(0, core.mem.frames)
        return out
    for c in clients:
        core.clients[c.id] = c
    out.clients = [c.id for c in clients]
    out.lineage = lineage
    core._last_vm = int(top.get("last_vm", 0))
    core._last_client = int(top.get("last_client", 0))
    serial = int(top.get("next_serial", 1))
    for name in names:
        if not name.startswith("vm-"):
            continue
        vid = int(name[3:]) if name[3:].isdigit() else 0
        try:
            st = fold(_read(store, name))
            vm = _restore_vm(core, st, now)
            serial = max(serial, vm.serial + 1)
            out.vms.append(vm.id)
        except (StateRefused, GuestMemoryError, ValueError, KeyError, TypeError, IndexError) as err:
            out.refused.append((vid, f"{type(err).__name__}: {err}" if not isinstance(err, StateRefused) else str(err)))
            store.files.delete(name)
    core.next_serial = serial
    core._serials = itertools.count(serial)
    # every frame nobody holds now is free: a hole (an earlier incarnation's VM that is not carried on
    # leaves nothing behind)
    for run in frames.free_runs():
        core.mem.discard_frames(run.mfn, run.count)
    store.lineage = lineage
    store.mark_all()
    return out


def _restore_vm(core: "VhmCore", st: dict[str, Any], now: float) -> Vm:
    """One VM from its folded journal; its frames claimed. Raises if it does not fit (nothing is kept)."""
    vid, vcpus, ram_mb = int(st["id"]), int(st["vcpus"]), int(st["ram_mb"])
    if not 1 <= vid <= MAX_VM_ID or vid in core.vms:
        raise StateRefused(f"VM id {vid} is not free")
    if not 1 <= vcpus <= MAX_VCPUS or ram_mb < 1:
        raise StateRefused(f"VM {vid}: {vcpus} vCPUs, {ram_mb} MB")
    misc = st["misc"]
    if misc[0] != VmState.RUNNING.value:
        raise StateRefused(f"VM {vid} was {misc[0]}")
    owner = f"vm{vid}"
    frames = core.frames
    frames.claim([FrameRun(int(a), int(n)) for a, n in st["frames"]], owner)
    try:
        extra = {int(g): int(f) for g, f, _ in st.get("extra", [])}
        memory = GuestMemory.reopen(core.mem, frames, owner, ram_mb, int(st["ept_root"]),
                                    [tuple(e) for e in st["extents"]], extra)  # type: ignore[misc]
        ident, epoch = st["owner"]
        vm = Vm(vid, int(st["serial"]), str(st["name"]), vcpus, ram_mb, AwaitingGuest(str(ident), int(epoch), now),
                memory, owner_id=(str(ident), int(epoch)), restored=True)
        _, vm.vgpu_spec, vm.vgpu_id, vm.dm, vm.pci_conf_addr, vm.msi_seq = misc
        if vm.dm is not None and vm.dm not in core.clients:  # its device model was not carried on
            vm.dm, vm.vgpu_id = None, 0
        clients = core.clients
        for client, kind, start, end in st.get("ranges", []):
            if client in clients:
                vm.ranges.add(IoRange(int(client), IoreqType(kind), int(start), int(end)))
        for b, d, f, c in st.get("bdfs", []):
            if c in clients:
                vm.bdfs.claim((b, d, f), c)
        vm.page_tracks = {int(g): int(c) for g, c in st.get("tracks", []) if int(c) in clients}
        # the EPT's write protection is in machine memory and may be one PAGE_TRACK ahead of the record
        # (the kill came between the EPT write and the commit; gvt never got its OK): the record wins
        for gfn in set(memory.ept.write_protected(0, memory.ram_frames)) ^ set(vm.page_tracks):
            memory.write_protect(gfn, gfn in vm.page_tracks)
        vm.extra_maps = {int(g): int(c) for g, _, c in st.get("extra", [])}
        vm.dma_pins = {int(c): Counter({int(a): int(n) for a, n in pins}) for c, pins in st.get("pins", [])}
        for v, (state, client, value, req, seq, done) in st["slots"].items():
            v = int(v)
            if not 0 <= v < vcpus:
                raise StateRefused(f"VM {vid}: slot of vCPU {v}")
            slot = vm.slots[v]
            slot.state, slot.client, slot.value = IoreqState(state), int(client), int(value)
            # fields in order (a list); journals written before that change hold a map of them
            slot.request = (None if req is None else m.Ioreq(**req) if isinstance(req, dict) else m.Ioreq(*req))
            if slot.busy and slot.request is None:
                raise StateRefused(f"VM {vid}: vCPU {v} busy without a request")
            if slot.state is IoreqState.PENDING:  # never recorded between insert and distribute: cleared
                slot.state, slot.request = IoreqState.FREE, None
            if slot.state is IoreqState.PROCESSING and slot.client not in clients:
                raise StateRefused(f"VM {vid}: vCPU {v} PROCESSING at client {slot.client}, not restored")
            vm.last_done[v] = (int(seq), int(done))
            vm.dispatched_at[v] = now  # its ioreq timeout starts again
    except BaseException:
        frames.free_owner(owner)
        raise
    core.vms[vid] = vm
    return vm
