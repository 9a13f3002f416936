"""gvt's state in machine memory: what a restarted gvt re-opens to carry its vGPUs on (docs/STATE.md).

A GVT-g host keeps every vGPU's state in the i915 module's memory, so a crash of it takes the host down;
ACRN's device model keeps it in the acrn-dm process, so a crash takes the VM down. Here each vGPU's state
is also written, as it changes, to a file in the machine-memory tmpfs next to vhm's machine memory (a
process's SIGKILL does not take it; a host's power cut would, as it takes the guests' RAM too).

Format (one **journal** per vGPU, one for the device; the file format is services/common/journal.py, shared
with vhm's state): a file header (magic, format version, its CRC), then records, each ``length, crc32, seq``
and a msgpack payload. The first record is a full snapshot; each later
one holds only what changed in one batch (the vreg pages, GGTT entries, ...), so the trap path pays for what
it changed, not for the whole state. Records are appended with one ``write``; a journal grown past a bound is
compacted into a new file holding one full record and renamed over the old one (``os.replace`` is atomic).
Reading stops at a record cut short at the end of the file (the write the crash interrupted: the state is
that of the batch before); a record that fails its CRC with data after it, a sequence gap, a wrong magic or
version refuse the whole journal cleanly (the vGPU then takes the reset path: its guest is told VGPU_LOST
with the reason).

Sans-I/O parts (records, folding, capture and restore of a vGPU) are plain functions; :class:`StateStore`
does the file I/O and is driven by the gvt shell after each batch, before the batch's completions leave.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack
import msgspec

from ...protocol import messages as m
from ...protocol.constants import MAX_VCPUS
from ..common.journal import JournalFormat, JournalRefused, JournalWriter, encode_record
from ..common.memory import PAGE_SHIFT
from .display import PipeTimer
from .engines import PHYSICAL_ENGINES
from .errors import FailsafeReason
from .execlist import ExeclistSlot, VirtualExeclist
from .gtt import pte_encode
from .mpt import NullMpt
from .pv import PvCaps
from .shadow import ShadowBb, ShadowContext
from .types import GmResource
from .vgpu import Vgpu
from .workload import WaCtx, Workload

if TYPE_CHECKING:
    from .core import Gvt

FILE_MAGIC = b"GVTSTATE"
#: Bumped on any change of the payload schema; a journal of another version is refused (never guessed at).
FORMAT_VERSION = 4
#: the journal format (services/common/journal.py): header, records of length, crc32 and seq
FORMAT = JournalFormat(FILE_MAGIC, FORMAT_VERSION, "gvt state journal", "this gvt")
#: a journal is compacted (one full record, atomically renamed in) when it grows past this many bytes
COMPACT_BYTES = 256 << 10
#: workload ids reserved ahead in the device record (see StateStore.commit)
ID_RESERVE = 1 << 20
#: a changed vreg page is written as the changed chunks of this size, not whole (a fence write is 8 bytes)
VREG_CHUNK = 256

#: A journal that cannot be trusted (bad magic, version, checksum, sequence or content).
StateRefused = JournalRefused

__all__ = ["FORMAT_VERSION", "StateRefused", "StateStore", "Restored", "decode_journal", "encode_record",
           "file_header", "fold", "sweep_dead"]


# ================================================================================= record format
def file_header() -> bytes:
    """The 16 bytes every journal starts with."""
    return FORMAT.header()


def decode_journal(data: bytes) -> tuple[list[dict[str, Any]], int, bool]:
    """The payloads of a journal's records, in order, the next sequence number, and whether its last write
    was cut short (ignored: the state is that of the records before it). Raises :class:`StateRefused`."""
    return FORMAT.decode(data)


def fold(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The state the records describe: the last full record with every later delta applied."""
    state: dict[str, Any] = {}
    for rec in records:
        if rec.get("full"):
            state = {"vregs": {}, "ggtt": {"v": {}, "h": {}, "p": {}}, "last_done": {}}
        for key, value in rec.items():
            if key == "vregs":
                state["vregs"].update(value)
            elif key == "vregs_chunks":
                for pn, chunks in value.items():
                    page = bytearray(state["vregs"].get(pn, b""))
                    for off, data in chunks:
                        if off + len(data) > len(page):
                            raise StateRefused(f"vreg page {pn} changed past its end")
                        page[off:off + len(data)] = data
                    state["vregs"][pn] = bytes(page)
            elif key == "vregs_drop":
                for pn in value:
                    state["vregs"].pop(pn, None)
            elif key == "ggtt":
                for name, delta in value.items():
                    table = state["ggtt"][name]
                    if delta.get("clear"):
                        table.clear()
                    table.update(delta.get("set", {}))
                    for idx in delta.get("del", ()):
                        table.pop(idx, None)
            elif key == "last_done":
                state["last_done"].update(value)
            elif key != "full":
                state[key] = value
    return state


# ============================================================================ change tracking
class TrackedDict(dict):  # type: ignore[type-arg]
    """A dict that remembers which keys changed since :meth:`take` (the GGTT's sparse tables: a batch
    writes a few entries of up to a million, so only those are written out)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.dirty: set[Any] = set()
        self.cleared = False

    def __setitem__(self, key: Any, value: Any) -> None:
        self.dirty.add(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.dirty.add(key)
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        self.dirty.add(key)
        return super().pop(key, *default)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self.dirty.add(key)
        return super().setdefault(key, default)

    def update(self, *args: Any, **kw: Any) -> None:
        other = dict(*args, **kw)
        self.dirty.update(other)
        super().update(other)

    def popitem(self) -> tuple[Any, Any]:
        k, v = super().popitem()
        self.dirty.add(k)
        return k, v

    def clear(self) -> None:
        self.cleared = True
        self.dirty.clear()
        super().clear()

    def take(self, full: bool = False) -> dict[str, Any] | None:
        """The changes since the last take ({clear, set, del}), None if nothing changed."""
        if full or self.cleared:
            out: dict[str, Any] = {"clear": True, "set": dict(self)}
        elif self.dirty:
            out = {"set": {k: self[k] for k in self.dirty if k in self},
                   "del": [k for k in self.dirty if k not in self]}
        else:
            return None
        self.dirty = set()
        self.cleared = False
        return out


def track(vgpu: "Vgpu") -> None:
    """Put change tracking on the vGPU's GGTT tables (idempotent)."""
    g = vgpu.gtt
    for name in ("virtual", "host", "partial"):
        table = getattr(g, name)
        if not isinstance(table, TrackedDict):
            setattr(g, name, TrackedDict(table))


# ============================================================================= capture / restore
def not_restorable(vgpu: "Vgpu") -> str:
    """Why the vGPU's state, as it is now, could not be carried on by a restarted gvt ("" if it could).

    The record holds registers, config space, GGTT, execlists, workloads, PPGTT mms, PV page and the
    display's pipe timers, not the out-of-sync or PV PPGTT snapshots nor a shadow PML4 address a scanned
    ring loads: a vGPU with those is recorded as not restorable, and a restart gives its guest a GPU reset
    with this reason instead of a vGPU that is wrong."""
    ppgtt = vgpu.ppgtt
    if ppgtt.spt.oos_list or any(x.snapshot is not None for x in ppgtt.spts.values()):
        return "out-of-sync PPGTT pages existed (their snapshots are not recorded)"
    if ppgtt.spt.pv and ppgtt.mms:
        return "PV PPGTT shadows existed (their snapshots are not recorded)"
    if ppgtt.mms and any(w.pdp_patched for _, w in _vgpu_workloads(vgpu)):
        return "a workload's commands load a shadow PML4 (its address is in the shadow ring)"
    return ""


def _ppgtt_key(vgpu: "Vgpu") -> tuple[Any, ...]:
    p = vgpu.ppgtt
    spts = p.spts
    return (tuple((mm.root, mm.pdps, mm.refcount) for mm in p.mms), tuple((w, id(mm)) for w, mm in p.users.items()),
            len(spts), sum(x.mfn for x in spts.values()), len(p.spt.scratch))


def _ppgtt(vgpu: "Vgpu") -> dict[str, Any]:
    """The PPGTT bookkeeping a restarted gvt needs: each mm's roots and references (the guest page tables
    themselves are in guest RAM, its shadows are rebuilt from them), which workload on the GPU walks which
    mm, and the frames the shadows hold (given back once nothing on the GPU walks them)."""
    p = vgpu.ppgtt
    index = {id(mm): i for i, mm in enumerate(p.mms)}
    return {"mms": [[mm.root, list(mm.pdps), mm.refcount] for mm in p.mms],
            "users": {w: index[id(mm)] for w, mm in p.users.items() if id(mm) in index},
            "frames": p.frames()}


def _display(vgpu: "Vgpu") -> dict[str, Any]:
    """The display's state the vregs do not hold: whether a monitor is plugged, each running pipe's vblank
    timer (refresh, period, next expiry on the monotonic clock every process of the host shares) and the
    flip-done events waiting for a vblank; the frame counters are in the vregs."""
    d = vgpu.display
    return {"mon": d.monitor is not None,
            "timers": {pipe: [t.vrefresh_k, t.period, t.next] for pipe, t in d.timers.items()},
            "flip": {pipe: sorted(ev) for pipe, ev in d.flip_done_pending.items() if ev},
            "vblanks": dict(d.vblanks), "flips": d.flips, "cursor": d.cursor_generation}


def _display_key(vgpu: "Vgpu") -> tuple[Any, ...]:
    d = vgpu.display
    return (d.monitor is None, tuple((p, t.vrefresh_k, t.next) for p, t in d.timers.items()),
            tuple((p, len(ev)) for p, ev in d.flip_done_pending.items()), d.flips, d.cursor_generation)


def _vgpu_workloads(vgpu: "Vgpu") -> list[tuple[bool, Workload]]:
    """The vGPU's workloads: (on the GPU, workload) for those pgpu was given, then each engine's queue in order."""
    sched = vgpu.gvt.scheduler
    out = [(True, w) for w in sched.inflight.values() if w.vgpu is vgpu]
    for e in PHYSICAL_ENGINES:
        q = sched.queues.get((vgpu.id, e))
        if q:
            out.extend((False, w) for w in q)
    return out


def _slot(slot: ExeclistSlot | None) -> list[Any] | None:
    return None if slot is None else [slot.ctx[0], slot.ctx[1], slot.done[0], slot.done[1], slot.index]


def _sched_key(vgpu: "Vgpu", wls: list[tuple[bool, Workload]]) -> tuple[Any, ...]:
    """What :func:`_sched` depends on that changes (compared before building it)."""
    return (tuple((run, w.id, w.status, len(w.pending_events), w.busy_ns, w.resubmits, w.emulate_schedule_in,
                   w.mmio_save_for) for run, w in wls),
            tuple((None if el.running is None else (el.running.ctx, tuple(el.running.done), el.running.index),
                   None if el.pending is None else (el.pending.ctx, tuple(el.pending.done), el.pending.index))
                  for el in vgpu.submission.execlists.values()))


def _workload(gvt: "Gvt", run: bool, w: Workload) -> dict[str, Any]:
    """One workload as it is needed to complete or submit it again: what it was made of (the ring as
    scanned and patched, the guest context's address, its PDPs, workaround batches), where its shadow
    batches are (their bytes are in the frames, in machine memory), what it collected so far."""
    bb = gvt.shadow.batches.get(w.id)
    wa = w.wa
    return {"run": run, "id": w.id, "engine": w.engine, "desc": w.desc, "ctx": list(w.ctx),
            "esi": w.emulate_schedule_in, "ctx_gpa": w.ring_ctx_gpa, "head": w.head, "tail": w.tail,
            "ring": w.ring, "pdps": list(w.guest_pdps), "events": list(w.pending_events),
            "save_for": w.mmio_save_for, "busy_ns": w.busy_ns, "at": w.dispatched_at, "status": w.status,
            "pv": w.pv, "pv_seq": w.pv_seq,
            "wa": None if wa is None else [wa.indirect_gma, wa.indirect_size, wa.per_ctx_gma, wa.per_ctx_valid,
                                           wa.indirect_shadow_gma, wa.per_ctx_shadow_gma],
            "scanned": [[gm, data] for gm, data in w.scanned], "scan_events": w.scan_events,
            "resubmits": w.resubmits, "bb": None if bb is None else [bb.gm, bb.first, list(bb.mfns)]}


def _sched(vgpu: "Vgpu", wls: list[tuple[bool, Workload]]) -> dict[str, Any]:
    """The vGPU's scheduler and execlist state: its workloads and each engine's running / pending slot."""
    return {"wl": [_workload(vgpu.gvt, run, w) for run, w in wls],
            "el": {n: [_slot(el.running), _slot(el.pending)] for n, el in vgpu.submission.execlists.items()}}


def _build_sched(vgpu: "Vgpu", rec: dict[str, Any]) -> list[tuple[bool, Workload, ShadowBb | None]]:
    """The workloads of a :func:`_sched` record, built for ``vgpu`` (nothing installed yet); the execlist
    slots are set on the vGPU's own execlists."""
    for name, (running, pending) in rec.get("el", {}).items():
        el = vgpu.submission.execlists.get(name)
        if el is None:
            raise StateRefused(f"execlist of an unknown engine {name!r}")
        for attr, x in (("running", running), ("pending", pending)):
            setattr(el, attr, None if x is None else ExeclistSlot((int(x[0]), int(x[1])), [bool(x[2]), bool(x[3])],
                                                                     int(x[4])))
    out: list[tuple[bool, Workload, ShadowBb | None]] = []
    for r in rec.get("wl", []):
        if r["engine"] not in PHYSICAL_ENGINES:
            raise StateRefused(f"a workload on an unknown engine {r['engine']!r}")
        wa = None if r["wa"] is None else WaCtx(*r["wa"])
        w = Workload(int(r["id"]), vgpu, r["engine"], int(r["desc"]), (int(r["ctx"][0]), int(r["ctx"][1])),
                     bool(r["esi"]), int(r["ctx_gpa"]), int(r["head"]), int(r["tail"]), bytes(r["ring"]),
                     tuple(int(x) for x in r["pdps"]), pending_events=list(r["events"]),
                     mmio_save_for=r["save_for"], busy_ns=int(r["busy_ns"]), dispatched_at=float(r["at"]),
                     status=str(r["status"]), pv=bool(r["pv"]), pv_seq=r["pv_seq"], wa=wa,
                     scanned=[(int(gm), bytes(data)) for gm, data in r["scanned"]],
                     scan_events=int(r["scan_events"]), resubmits=int(r["resubmits"]))
        bb = None if r["bb"] is None else ShadowBb(int(r["bb"][0]), int(r["bb"][1]), [int(x) for x in r["bb"][2]])
        out.append((bool(r["run"]), w, bb))
    return out


def _install_sched(gvt: "Gvt", vgpu: "Vgpu", built: list[tuple[bool, Workload, ShadowBb | None]]) -> None:
    """Put the restored workloads back: those pgpu was given in flight (each engine's newest is its current
    one) and waiting for pgpu's word on them (Scheduler.reconcile_restored), the rest in their queues; their
    shadow batches taken in the window and mapped in gvt's own host-GM entries again. The scheduler stays
    paused until the pgpu session is set up (the service does it, after the reconciliation)."""
    sched, shadow = gvt.scheduler, gvt.shadow
    for run, w, bb in built:
        if bb is not None:
            shadow.batches[w.id] = bb
            shadow.bb_window.used[bb.first:bb.first + len(bb.mfns)] = b"\1" * len(bb.mfns)
            for i, mfn in enumerate(bb.mfns):
                shadow.host_ptes[(bb.gm >> PAGE_SHIFT) + i] = pte_encode(mfn << PAGE_SHIFT)
        if run:
            sched.inflight[w.id] = w
            cur = sched.current.get(w.engine)
            if cur is None or cur.id < w.id:
                sched.current[w.engine] = w
            sched.reconciling.add(w.id)
        else:
            sched.queues.setdefault((vgpu.id, w.engine), deque()).append(w)
    if built:
        sched.paused = True


def _restore_display(vgpu: "Vgpu", rec: dict[str, Any]) -> None:
    """The display as :func:`_display` recorded it: the monitor, the running pipes' timers re-armed at
    their recorded expiry (a vblank the outage missed is emulated at the first timer run, its frames
    counted, as after any late wake-up), and the device's index of running displays (display_active)."""
    d = vgpu.display
    if not rec.get("mon", True):
        d.monitor = None
        if d.edid is not None:
            d.edid.monitor = None
    d.timers = {int(p): PipeTimer(int(k), float(period), float(nxt)) for p, (k, period, nxt) in rec["timers"].items()}
    d.flip_done_pending = {int(p): set(ev) for p, ev in rec.get("flip", {}).items()}
    d.vblanks = {int(p): int(n) for p, n in rec.get("vblanks", {}).items()}
    d.flips, d.cursor_generation = int(rec.get("flips", 0)), int(rec.get("cursor", 0))


def _misc(vgpu: "Vgpu") -> dict[str, Any]:
    """The small fields, written whole whenever one of them changed."""
    cfg, pv = vgpu.cfg, vgpu.pv
    return {
        "active": vgpu.active, "failsafe": vgpu.failsafe,
        "failsafe_reason": None if vgpu.failsafe_reason is None else int(vgpu.failsafe_reason),
        "pv_notified": vgpu.pv_notified, "msis": vgpu.msis_injected,
        "cfg_trapped": list(cfg.trapped) if cfg.trapped else None, "pmcsr_off": cfg.pmcsr_off,
        "d3": cfg.d3_entered,
        "execlist_enabled": sorted(vgpu.submission.execlist_enabled),
        "resets": dict(vgpu.submission.resets),
        "elsp": {n: [list(el.elsp), el.elsp_index] for n, el in vgpu.submission.execlists.items()},
        "aperture": [vgpu.aperture.enabled, vgpu.aperture.base, dict(vgpu.aperture.mapped)],
        "opregion": [vgpu.opregion.gpa, vgpu.opregion.requests],
        "pv": [pv.gpa, pv.version, int(pv.enabled), dict(pv.seen_submit), pv.seen_update],
        "restorable": not_restorable(vgpu),
    }


def _misc_key(vgpu: "Vgpu") -> tuple[Any, ...]:
    """A cheap key of what :func:`_misc` depends on that changes often (compared before building it); the
    rest (PV page, OpRegion, aperture, resets) changes only along with one of these or the vregs."""
    sched = vgpu.gvt.scheduler
    cfg, pv, sub = vgpu.cfg, vgpu.pv, vgpu.submission
    return (vgpu.active, vgpu.failsafe, vgpu.pv_notified, vgpu.msis_injected, cfg.trapped, cfg.d3_entered,
            len(sched.inflight), len(sched.queues), sum(len(q) for q in sched.queues.values()),
            len(vgpu.ppgtt.mms), len(vgpu.page_track.pages), len(vgpu.display.timers), vgpu.ppgtt.spt.pv,
            len(vgpu.ppgtt.spt.oos_list),
            tuple((el.elsp_index, el.elsp[0], el.elsp[1], el.elsp[2], el.elsp[3], el.running is None,
                   el.pending is None) for el in sub.execlists.values()),
            len(sub.execlist_enabled), sum(sub.resets.values()), vgpu.aperture.enabled, vgpu.aperture.base,
            len(vgpu.aperture.mapped), vgpu.opregion.gpa, vgpu.opregion.requests, pv.gpa, pv.version,
            int(pv.enabled), pv.seen_update, tuple(pv.seen_submit.items()))


@dataclass
class VgpuRecorder:
    """What was last written of one vGPU, to write only what changed."""

    vgpu: "Vgpu"
    pages: dict[int, bytes] = field(default_factory=dict)
    cfg: bytes = b""
    misc: bytes = b""
    misc_key: tuple[Any, ...] = ()
    disp_key: tuple[Any, ...] | None = None
    sched_key: tuple[Any, ...] | None = None
    ppgtt_key: tuple[Any, ...] | None = None
    done_seen: dict[int, Any] = field(default_factory=dict)  # vcpu -> the (request, value) last written
    done_len: int = -1  # len(gvt.last_done) when ``vcpus`` was computed
    vcpus: list[int] = field(default_factory=list)  # this VM's vCPUs that have a last completion

    def full(self, ept_root: int, ram_mb: int) -> dict[str, Any]:
        """A full record of the vGPU (and what it takes to build it again)."""
        v = self.vgpu
        track(v)
        r = v.resource
        rec: dict[str, Any] = {
            "full": True, "id": v.id, "vm": v.vm, "type": v.type.name, "owner": v.owner,
            "resource": [r.low_base, r.low_size, r.high_base, r.high_size, list(r.fences)],
            "ept_root": ept_root, "ram_mb": ram_mb, "created_at": v.created_at,
        }
        self.pages, self.cfg, self.misc, self.misc_key, self.done_seen = {}, b"", b"", (), {}
        self.disp_key = self.sched_key = self.ppgtt_key = None
        self.done_len = -1
        delta = self.delta(full=True)
        assert delta is not None
        rec.update(delta)
        return rec

    def delta(self, full: bool = False) -> dict[str, Any] | None:
        """What changed since the last record (None: nothing)."""
        v = self.vgpu
        out: dict[str, Any] = {}
        pages = v.mmio._pages
        changed: dict[int, bytes] = {}
        chunks: dict[int, list[tuple[int, bytes]]] = {}
        for pn, p in pages.items():
            old = self.pages.get(pn)
            if old == p:
                continue
            now = bytes(p)
            self.pages[pn] = now
            if old is None or len(old) != len(now):
                changed[pn] = now
                continue
            chunks[pn] = [(o, now[o:o + VREG_CHUNK]) for o in range(0, len(now), VREG_CHUNK)
                          if old[o:o + VREG_CHUNK] != now[o:o + VREG_CHUNK]]
        dropped = [pn for pn in self.pages if pn not in pages]
        if changed:
            out["vregs"] = changed
        if chunks:
            out["vregs_chunks"] = chunks
        if dropped:
            out["vregs_drop"] = dropped
            for pn in dropped:
                del self.pages[pn]
        if v.cfg.data != self.cfg:
            self.cfg = bytes(v.cfg.data)
            out["cfg"] = self.cfg
        ggtt = {}
        for short, name in (("v", "virtual"), ("h", "host"), ("p", "partial")):
            table = getattr(v.gtt, name)
            d = table.take(full) if isinstance(table, TrackedDict) else {"clear": True, "set": dict(table)}
            if d is not None:
                ggtt[short] = d
        if ggtt:
            out["ggtt"] = ggtt
        key = _misc_key(v)
        if key != self.misc_key:
            self.misc_key = key
            misc = _misc(v)
            packed = msgpack.packb(misc, use_bin_type=True)
            if packed != self.misc:
                self.misc = packed
                out["misc"] = misc
        dkey = _display_key(v)
        if dkey != self.disp_key:
            self.disp_key = dkey
            out["disp"] = _display(v)
        wls = _vgpu_workloads(v)
        skey = _sched_key(v, wls)
        if skey != self.sched_key:
            self.sched_key = skey
            out["sched"] = _sched(v, wls)
        pkey = _ppgtt_key(v)
        if pkey != self.ppgtt_key:
            self.ppgtt_key = pkey
            out["ppgtt"] = _ppgtt(v)
        changed_done = {}
        gvt_done = v.gvt.last_done
        if len(gvt_done) != self.done_len:  # a vCPU answered for the first time (or a VM went): look again
            self.done_len = len(gvt_done)
            self.vcpus = [vcpu for vcpu in range(MAX_VCPUS) if (v.vm, vcpu) in gvt_done]
        for vcpu in self.vcpus:
            entry = gvt_done.get((v.vm, vcpu))
            if entry is not None and self.done_seen.get(vcpu) is not entry:  # a new completion object
                self.done_seen[vcpu] = entry
                changed_done[vcpu] = [msgspec.structs.asdict(entry[0]), entry[1]]
        if changed_done:
            out["last_done"] = changed_done
        return out or None


def restore_vgpu(gvt: "Gvt", st: dict[str, Any], mpt: Any) -> "Vgpu":
    """Build a vGPU from its folded record (:func:`fold`) and put it in ``gvt``, as it was when the record
    was written; nothing is emitted (vhm and pgpu already hold what it had set up). Raises
    :class:`StateRefused` if the record cannot be carried on."""
    misc = st.get("misc")
    if not isinstance(misc, dict):
        raise StateRefused("record has no register state")
    if misc.get("restorable"):
        raise StateRefused(f"not restorable: {misc['restorable']}")
    vid, vm = st.get("id"), st.get("vm")
    if not isinstance(vid, int) or not 1 <= vid <= gvt.max_vgpu or vid in gvt.vgpus:
        raise StateRefused(f"vGPU id {vid!r} is not free here")
    if not isinstance(vm, int) or vm in gvt.by_vm:
        raise StateRefused(f"VM {vm!r} already has a vGPU")
    vtype = gvt.types_by_name.get(st.get("type", ""))
    if vtype is None:
        raise StateRefused(f"vGPU type {st.get('type')!r} is not one of this GPU profile's")
    lo, lo_n, hi, hi_n, fences = st["resource"]
    res = GmResource(lo, lo_n, hi, hi_n, tuple(fences))
    if not gvt.gm.claim(res):
        raise StateRefused("its GM slices or fences overlap another vGPU's")
    effects_before = len(gvt.effects)
    try:
        v = Vgpu(gvt, vid, vm, vtype, res, mpt, float(st.get("created_at", 0.0)))
        v.owner = st.get("owner", "")
        v.display.init()  # the monitor and its EDID (their registers come back below)
        cfg = st.get("cfg", b"")
        if len(cfg) != len(v.cfg.data):
            raise StateRefused("config space of the wrong size")
        v.cfg.data[:] = cfg
        v.cfg.trapped = tuple(misc["cfg_trapped"]) if misc["cfg_trapped"] else None  # type: ignore[assignment]
        v.cfg.pmcsr_off, v.cfg.d3_entered = misc["pmcsr_off"], misc["d3"]
        v.mmio._pages = {int(pn): bytearray(p) for pn, p in st["vregs"].items()}
        g = st["ggtt"]
        v.gtt.virtual, v.gtt.host = dict(g["v"]), dict(g["h"])
        v.gtt.partial = {i: (x[0], x[1]) for i, x in g["p"].items()}
        track(v)
        v.active, v.failsafe, v.pv_notified = misc["active"], misc["failsafe"], misc["pv_notified"]
        v.failsafe_reason = None if misc["failsafe_reason"] is None else FailsafeReason(misc["failsafe_reason"])
        v.msis_injected = misc["msis"]
        v.submission.execlist_enabled = set(misc["execlist_enabled"])
        v.submission.resets = dict(misc["resets"])
        for name, (elsp, index) in misc["elsp"].items():
            el: VirtualExeclist | None = v.submission.execlists.get(name)
            if el is not None:
                el.elsp, el.elsp_index = list(elsp), index
        v.aperture.enabled, v.aperture.base = misc["aperture"][0], misc["aperture"][1]
        v.aperture.mapped = {int(k): x for k, x in misc["aperture"][2].items()}
        v.opregion.gpa, v.opregion.requests = misc["opregion"]
        gpa, version, enabled, seen_submit, seen_update = misc["pv"]
        v.pv.gpa, v.pv.version, v.pv.enabled = gpa, version, PvCaps(enabled)
        v.pv.seen_submit, v.pv.seen_update = dict(seen_submit), seen_update
        if "disp" in st:
            _restore_display(v, st["disp"])
        built = _build_sched(v, st.get("sched", {}))
        pp = st.get("ppgtt", {})
        mms = v.ppgtt.restore([(str(root), (int(p[0]), int(p[1]), int(p[2]), int(p[3])), int(ref))
                               for root, p, ref in pp.get("mms", [])])
        users = {int(w): mms[int(i)] for w, i in pp.get("users", {}).items()}
    except StateRefused:
        gvt.gm.free(res)
        raise
    except Exception as err:  # a record that decodes but does not fit: refused, never half-applied
        gvt.gm.free(res)
        raise StateRefused(f"record does not fit this gvt: {type(err).__name__}: {err}") from None
    finally:
        del gvt.effects[effects_before:]
    gvt.vgpus[vid] = v
    gvt.by_vm[vm] = v
    v.display._timers_changed()  # the index of vGPUs with a pipe running (display.next_deadline)
    _install_sched(gvt, v, built)
    v.ppgtt.users = {w: mm for w, mm in users.items() if w in gvt.scheduler.inflight}
    for vcpu, (req, value) in st["last_done"].items():
        gvt.last_done[(vm, int(vcpu))] = (m.Ioreq(**req), value)
    return v


# ===================================================================================== the store
def sweep_dead(directory: str, prefix: str, me: int) -> list[str]:
    """Delete the state directories ``<prefix><pid>.state`` beside ``directory`` whose pid is not a live
    process (other than ``me``): a gvt with the default --id (its host name and pid) that died left one no
    later process can re-open. Returns what was deleted."""
    import shutil

    parent = os.path.dirname(directory) or "."
    gone: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return gone
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".state")):
            continue
        pid = name[len(prefix):-len(".state")]
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or not ours to signal): its state stays
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        gone.append(name)
    return gone


@dataclass
class Restored:
    """What :meth:`StateStore.restore` found: the vGPUs carried on, those refused (vm, vgpu id, why), the
    device record's vhm epoch."""

    vgpus: list["Vgpu"] = field(default_factory=list)
    refused: list[tuple[int, int, str]] = field(default_factory=list)
    vhm_epoch: int | None = None
    device: str = ""  # why the device record was refused ("" if it was read or absent)


class _Versioned(dict[int, tuple[int, int]]):
    """A dict that counts its changes (``version``), so a commit can tell it changed without comparing it."""

    version = 0

    def __setitem__(self, key: int, value: tuple[int, int]) -> None:
        super().__setitem__(key, value)
        self.version += 1

    def pop(self, key: int, *default: Any) -> Any:  # type: ignore[override]
        self.version += 1
        return super().pop(key, *default)


class StateStore:
    """The journals of one gvt identity, in ``directory`` (created if missing)."""

    def __init__(self, directory: str, compact_bytes: int = COMPACT_BYTES) -> None:
        self.dir = directory
        self.compact_bytes = compact_bytes
        self.files = JournalWriter(directory, FORMAT)  # services/common/journal.py: the file I/O
        self.recorders: dict[int, VgpuRecorder] = {}
        self._device_sig: tuple[Any, ...] = ()
        self.mpt_args: _Versioned = _Versioned()  # vgpu id -> (ept_root, ram_mb), from VGPU_CREATE
        self.id_floor = 0  # every workload id (pgpu tag) given so far is below it (the device record has it)

    @property
    def bytes_written(self) -> int:
        return self.files.bytes_written

    @property
    def records_written(self) -> int:
        return self.files.records_written

    def _path(self, name: str) -> str:
        return self.files.path(name)

    # --------------------------------------------------------------------------------- writing
    def commit(self, gvt: "Gvt", dirty: Iterable[int], vhm_epoch: int | None) -> int:
        """Write what changed of the vGPUs ``dirty`` (ids) and of the device. Returns records written."""
        before = self.records_written
        for vid in dirty:
            v = gvt.vgpus.get(vid)
            if v is None:
                continue
            name = f"vgpu-{vid}"
            rec = self.recorders.get(vid)
            if rec is None or rec.vgpu is not v:
                rec = self.recorders[vid] = VgpuRecorder(v)
                self.files.write_full(name, rec.full(*self.mpt_args.get(vid, (0, 0))), 1)
                continue
            delta = rec.delta()
            if delta is None:
                continue
            if self.files.deltas_size(name) > self.compact_bytes:  # deltas outgrew the bound: compact
                self.files.write_full(name, rec.full(*self.mpt_args.get(vid, (0, 0))))
            else:
                self.files.append(name, delta)
        shadow = gvt.shadow
        pool = shadow.frame_pool
        # workload ids are pgpu's tags: a restarted gvt must not reuse one an earlier incarnation gave pgpu
        # (its events would be taken for the new workload's). The record keeps a floor well above the ids
        # given, moved on long before they reach it (a submission can leave before the commit after it).
        if gvt.scheduler._next_id + ID_RESERVE // 2 > self.id_floor:
            self.id_floor = gvt.scheduler._next_id + ID_RESERVE
        # a cheap signature first: the pool is a LIFO (pop / extend at its end), so its length and last
        # frame change whenever its content does; the VGPU_CREATE arguments count their changes and the
        # vGPUs their number (what the record keeps is the arguments of live vGPUs). Cheap means O(1): a
        # dense GPU has hundreds of vGPUs and this runs after every batch of ioreqs.
        sig = (gvt.scratch_mfn, len(pool), pool[-1] if pool else -1, len(shadow.contexts), vhm_epoch,
               self.mpt_args.version, len(gvt.vgpus), self.id_floor)
        if sig != self._device_sig:
            self._device_sig = sig
            device = {"full": True, "scratch_mfn": gvt.scratch_mfn, "frame_pool": list(pool),
                      "vhm_epoch": vhm_epoch, "id_floor": self.id_floor,
                      "shadows": [[vid, eng, sh.gm, list(sh.mfns)] for (vid, eng), sh in shadow.contexts.items()],
                      "mpt": {vid: list(a) for vid, a in self.mpt_args.items() if vid in gvt.vgpus}}
            self.files.write_full("device", device)
        return self.records_written - before

    def forget(self, vgpu_id: int) -> None:
        """The vGPU was destroyed: its journal goes."""
        self.recorders.pop(vgpu_id, None)
        self.mpt_args.pop(vgpu_id, None)
        self.files.delete(f"vgpu-{vgpu_id}")

    def close(self) -> None:
        self.files.close()

    # --------------------------------------------------------------------------------- reading
    def read(self, name: str) -> dict[str, Any]:
        """The folded state of one journal. Raises :class:`StateRefused` (FileNotFoundError if absent)."""
        with open(self._path(name), "rb") as f:
            data = f.read()
        records, _, _ = FORMAT.decode(data)
        return fold(records)

    def restore(self, gvt: "Gvt", mpt_factory: Any) -> Restored:
        """Re-open every journal: the device's (scratch page, frame pool, shadow contexts) and each vGPU's.
        A refused journal is deleted and reported; what was restored is recorded again from scratch."""
        out = Restored()
        for name in os.listdir(self.dir):
            if name.endswith(".tmp"):  # a compaction the crash interrupted: the journal itself is whole
                os.unlink(os.path.join(self.dir, name))
        try:
            dev = self.read("device")
        except FileNotFoundError:
            dev = {}
        except StateRefused as err:
            out.device, dev = str(err), {}
        if out.device or not dev:
            for name in sorted(os.listdir(self.dir)):
                if name.startswith("vgpu-") and name.endswith(".journal"):
                    vid = int(name[5:-8]) if name[5:-8].isdigit() else 0
                    out.refused.append((0, vid, out.device or "the device record is missing"))
                    os.unlink(os.path.join(self.dir, name))
            return out
        out.vhm_epoch = dev.get("vhm_epoch")
        sched = gvt.scheduler
        sched._next_id = self.id_floor = max(sched._next_id, int(dev.get("id_floor", 0)))
        mpt_args = {int(k): tuple(a) for k, a in dev.get("mpt", {}).items()}
        spt_frames: list[int] = []  # the frames the restored vGPUs' old shadow tables were in
        for name in sorted(os.listdir(self.dir)):
            if not (name.startswith("vgpu-") and name.endswith(".journal")):
                continue
            vid = int(name[5:-8]) if name[5:-8].isdigit() else 0
            vm = 0
            try:
                st = self.read(name[:-8])
                vm = int(st.get("vm", 0))
                ept_root, ram_mb = mpt_args.get(vid, (st.get("ept_root", 0), st.get("ram_mb", 0)))
                try:
                    mpt = mpt_factory(vm, ept_root, ram_mb) if ept_root else None
                except Exception as err:
                    raise StateRefused(f"guest memory of VM {vm} not reachable: {err}") from None
                if mpt is None:
                    mpt = NullMpt()
                v = restore_vgpu(gvt, st, mpt)
                self.mpt_args[vid] = (ept_root, ram_mb)
                out.vgpus.append(v)
                spt_frames += [int(f) for f in st.get("ppgtt", {}).get("frames", [])]
            except StateRefused as err:
                out.refused.append((vm, vid, str(err)))
                os.unlink(os.path.join(self.dir, name))
        kept = {v.id for v in out.vgpus}
        gvt.scratch_mfn = int(dev.get("scratch_mfn", 0))
        shadow = gvt.shadow
        shadow.frame_pool = [int(x) for x in dev.get("frame_pool", [])]
        for vid, eng, gm, mfns in dev.get("shadows", []):
            if vid in kept:
                shadow.contexts[(vid, eng)] = ShadowContext(gm, list(mfns))
                for i, mfn in enumerate(mfns):  # gvt's own GGTT entries, for a pgpu restart to get again
                    shadow.host_ptes[(gm >> PAGE_SHIFT) + i] = pte_encode(mfn << PAGE_SHIFT)
            else:  # its vGPU is not carried on: the frames go back to the pool
                shadow.frame_pool.extend(mfns)
        # A vGPU record is written before the device record in a commit: a kill between them can leave a
        # frame taken in that batch (a shadow batch) in the device record's free pool too. In use wins: a
        # frame is never handed out twice (at worst one freed in that batch is not given back).
        in_use = {mfn for bb in shadow.batches.values() for mfn in bb.mfns}
        if in_use:
            before = len(shadow.frame_pool)
            shadow.frame_pool = [f for f in shadow.frame_pool if f not in in_use]
            gvt.counters["state_pool_frames_in_use"] += before - len(shadow.frame_pool)
        # the old shadow tables are rebuilt from the guest's: their frames go back, once the restored
        # workloads on the GPU (which may walk them) are done (the quarantine of PpgttGlobal.give_frames)
        free = set(shadow.frame_pool)
        back = [f for f in dict.fromkeys(spt_frames) if f not in free and f not in in_use]
        gvt.ppgtt.give_frames(back)
        return out
