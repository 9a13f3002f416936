"""gvt's saved state (services/gvt/state.py, docs/STATE.md): the journal format, a vGPU carried on by a new
gvt exactly as it was (registers, config space, GGTT, last completions), and crash consistency: a write cut
or corrupted at any byte leaves either the state before it or a clean refusal, never a wrong state."""

from __future__ import annotations

import os
import random

import pytest
from test_gvt_fixtures import create, make_gvt, program_bar0, rd, wr

from gvtsim.protocol import messages as m
from gvtsim.protocol.constants import IoreqDir, IoreqType
from gvtsim.services.gvt import state as gs
from gvtsim.services.gvt.core import Gvt
from gvtsim.services.gvt.handlers import FENCE_REG_GEN6_LO
from gvtsim.services.gvt.mmio import GTT_START
from gvtsim.services.gvt.pvinfo import VGT_MAGIC, VGT_PVINFO_PAGE

EPOCH = 4242


def restore_into(directory: str) -> tuple[Gvt, gs.Restored]:
    """A new gvt (a restarted process) re-opening ``directory``."""
    g = make_gvt()
    store = gs.StateStore(directory)
    got = store.restore(g, g.mpt_factory)
    store.close()
    return g, got


def ioreq(vm: int, vcpu: int, seq: int, d: int, addr: int, value: int = 0, size: int = 4) -> m.Ioreq:
    return m.Ioreq(vm=vm, vcpu=vcpu, seq=seq, kind=IoreqType.MMIO, dir=d, addr=addr, size=size, value=value)


def busy_vgpu(gvt: Gvt, vm: int = 1):  # -> Vgpu
    """A vGPU whose guest placed BAR0 and read PVINFO (as i915 does before touching fences)."""
    v = create(gvt, vm)
    program_bar0(gvt, v)
    assert rd(gvt, v, VGT_PVINFO_PAGE, 8) == VGT_MAGIC
    return v


# ------------------------------------------------------------------------------------------ format
def test_records_round_trip_and_a_torn_tail_is_ignored() -> None:
    data = gs.file_header() + gs.encode_record(1, {"full": True, "a": 1}) + gs.encode_record(2, {"a": 2})
    recs, nxt, torn = gs.decode_journal(data)
    assert [r["a"] for r in recs] == [1, 2] and nxt == 3 and not torn
    cut = data + gs.encode_record(3, {"a": 3})[:-1]
    recs, nxt, torn = gs.decode_journal(cut)
    assert [r["a"] for r in recs] == [1, 2] and nxt == 3 and torn


def test_wrong_version_magic_or_sequence_is_refused() -> None:
    body = gs.encode_record(1, {"full": True})
    head = bytearray(gs.file_header())
    head[8] = gs.FORMAT_VERSION + 1  # a newer format: the header checksum still matches what is written
    import struct
    import zlib
    head[12:16] = struct.pack("<I", zlib.crc32(bytes(head[:12])))
    with pytest.raises(gs.StateRefused, match="version"):
        gs.decode_journal(bytes(head) + body)
    with pytest.raises(gs.StateRefused, match="magic"):
        gs.decode_journal(b"NOTSTATE" + bytes(head[8:]) + body)
    with pytest.raises(gs.StateRefused, match="seq"):
        gs.decode_journal(gs.file_header() + body + gs.encode_record(3, {}))
    with pytest.raises(gs.StateRefused, match="full"):
        gs.decode_journal(gs.file_header() + gs.encode_record(1, {"x": 1}))


# ---------------------------------------------------------------------------------------- restore
def test_a_restarted_gvt_carries_the_vgpu_on_exactly(tmp_path) -> None:
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 64)
    store.commit(gvt, [v.id], EPOCH)  # the full record
    # one batch: fence writes, a GGTT entry, a config-space write, the last completion per vCPU
    base = v.cfg.bar0_base()
    for i in range(4):
        assert gvt.handle_ioreq(ioreq(1, i, 7, IoreqDir.WRITE, base + FENCE_REG_GEN6_LO + 8 * i, 0x1000 + i), 0.0) == 0
    wr(gvt, v, GTT_START + 8 * 5, 0x1234_5001, 4)
    gvt.emulate_cfg_write(v, 0x3C, 0xB, 1)  # interrupt line
    written = store.commit(gvt, [v.id], EPOCH)
    assert written == 1  # one delta record for the vGPU (the device record did not change)
    store.close()

    g2, got = restore_into(str(tmp_path))
    assert [x.id for x in got.vgpus] == [v.id] and got.refused == [] and got.vhm_epoch == EPOCH
    w = g2.by_vm[1]
    assert (w.id, w.type.name, w.resource) == (v.id, v.type.name, v.resource)
    for i in range(4):
        assert rd(g2, w, FENCE_REG_GEN6_LO + 8 * i) == 0x1000 + i
    assert rd(g2, w, VGT_PVINFO_PAGE, 8) == VGT_MAGIC
    assert w.cfg.data == v.cfg.data and w.cfg.trapped == v.cfg.trapped and w.cfg.bar0_base() == base
    assert dict(w.gtt.virtual) == dict(v.gtt.virtual) and dict(w.gtt.host) == dict(v.gtt.host)
    assert w.active and not w.failsafe
    # a request vhm sends again (it cannot know the completion left) is answered from the saved completion
    again = ioreq(1, 2, 7, IoreqDir.WRITE, base + FENCE_REG_GEN6_LO + 16, 0x1002)
    assert g2.handle_ioreq(again, 0.0) == 0 and g2.counters["ioreq_replayed"] == 1
    # the GM it holds is taken: a new vGPU gets other slices
    other = create(g2, 2)
    assert other.resource.low_base != w.resource.low_base and other.id != w.id
    assert not [e for e in g2.effects if getattr(e, "vm", None) == 1]  # restoring emitted nothing for it


def test_only_what_changed_is_written(tmp_path) -> None:
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    store = gs.StateStore(str(tmp_path))
    store.commit(gvt, [v.id], EPOCH)
    size0 = store.bytes_written
    assert store.commit(gvt, [v.id], EPOCH) == 0  # nothing changed: nothing written
    wr(gvt, v, FENCE_REG_GEN6_LO, 5, 4)
    store.commit(gvt, [v.id], EPOCH)
    delta = store.bytes_written - size0
    assert delta < 6000  # one 4 KiB vreg page and the small fields, not the whole state
    store.close()


def test_compaction_keeps_the_state(tmp_path) -> None:
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    store = gs.StateStore(str(tmp_path), compact_bytes=20_000)
    store.commit(gvt, [v.id], EPOCH)
    full = os.path.getsize(tmp_path / f"vgpu-{v.id}.journal")
    for n in range(40):
        wr(gvt, v, FENCE_REG_GEN6_LO + 8 * (n % 4), n, 4)
        wr(gvt, v, GTT_START + 8 * n, 0x1000 * n | 1, 4)
        store.commit(gvt, [v.id], EPOCH)
    store.close()
    assert os.path.getsize(tmp_path / f"vgpu-{v.id}.journal") < 20_000 + 2 * full + 8192  # it was compacted
    g2, got = restore_into(str(tmp_path))
    w = g2.by_vm[1]
    assert [rd(g2, w, FENCE_REG_GEN6_LO + 8 * i) for i in range(4)] == [36, 37, 38, 39]
    assert dict(w.gtt.virtual) == dict(v.gtt.virtual)


def test_a_vgpu_with_work_in_flight_is_refused_with_its_reason(tmp_path) -> None:
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    v.ppgtt.spt.oos_list.append(object())  # type: ignore[arg-type]  # an out-of-sync page (not recorded)
    store = gs.StateStore(str(tmp_path))
    store.commit(gvt, [v.id], EPOCH)
    store.close()
    g2, got = restore_into(str(tmp_path))
    assert got.vgpus == [] and [(vm, why) for vm, _, why in got.refused] == [
        (1, "not restorable: out-of-sync PPGTT pages existed (their snapshots are not recorded)")]
    assert g2.vgpus == {} and g2.gm.empty  # nothing half-restored
    assert not os.path.exists(tmp_path / f"vgpu-{v.id}.journal")  # refused once, then gone


def test_destroyed_vgpus_leave_no_journal(tmp_path) -> None:
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    store = gs.StateStore(str(tmp_path))
    store.commit(gvt, [v.id], EPOCH)
    gvt.destroy_vgpu(1)
    store.forget(v.id)
    store.commit(gvt, [], EPOCH)
    store.close()
    _, got = restore_into(str(tmp_path))
    assert got.vgpus == [] and got.refused == []


# ------------------------------------------------------------------------------- crash consistency
def journal_with_history(tmp_path) -> tuple[bytes, list[dict[int, int]], int]:
    """A journal of a full record and 6 deltas; the fence values after each record (what a restore must
    show, one of them exactly); the offset where the last record starts."""
    gvt = make_gvt()
    v = busy_vgpu(gvt)
    store = gs.StateStore(str(tmp_path))
    store.mpt_args[v.id] = (1, 64)
    store.commit(gvt, [v.id], EPOCH)
    history = [{i: rd(gvt, v, FENCE_REG_GEN6_LO + 8 * i) for i in range(4)}]
    path = tmp_path / f"vgpu-{v.id}.journal"
    last_start = 0
    for n in range(1, 7):
        last_start = os.path.getsize(path)
        for i in range(4):
            wr(gvt, v, FENCE_REG_GEN6_LO + 8 * i, n * 100 + i, 4)
        wr(gvt, v, GTT_START + 8 * n, 0x2000 * n | 1, 4)
        store.commit(gvt, [v.id], EPOCH)
        history.append({i: n * 100 + i for i in range(4)})
    store.close()
    return path.read_bytes(), history, last_start


def fences_in(data: bytes) -> dict[int, int] | str:
    """What a restarted gvt reads of ``data`` as a vGPU's journal: the fence vregs of the state it
    restores, or why it refuses (decoding and folding only: a full restore per byte would be slow; the
    whole path is checked on a few cases in :func:`fences_after`)."""
    try:
        records, _, _ = gs.decode_journal(data)
    except gs.StateRefused as err:
        return str(err)
    st = gs.fold(records)
    page = st["vregs"][FENCE_REG_GEN6_LO >> 12]
    off = FENCE_REG_GEN6_LO & 0xFFF
    return {i: int.from_bytes(page[off + 8 * i:off + 8 * i + 4], "little") for i in range(4)}


def fences_after(tmp_path, name: str, data: bytes) -> dict[int, int] | str:
    """Write ``data`` as the vGPU's journal in a copy of the state and restore it: the fences, or why refused."""
    d = tmp_path / "copy"
    d.mkdir(exist_ok=True)
    for f in os.listdir(d):
        os.unlink(d / f)
    (d / "device.journal").write_bytes((tmp_path / "device.journal").read_bytes())
    (d / name).write_bytes(data)
    g2, got = restore_into(str(d))
    if not got.vgpus:
        assert got.refused and g2.vgpus == {} and g2.gm.empty
        return got.refused[0][2]
    w = g2.by_vm[1]
    return {i: rd(g2, w, FENCE_REG_GEN6_LO + 8 * i) for i in range(4)}


def test_a_kill_at_any_byte_of_the_last_write_leaves_the_state_before_or_after_it(tmp_path) -> None:
    data, history, last = journal_with_history(tmp_path)
    name = next(f for f in os.listdir(tmp_path) if f.startswith("vgpu-"))
    # the write reached the file up to `cut` bytes: every cut restores the previous batch's state exactly,
    # and the whole write restores the last one
    for cut in range(last, len(data) + 1):
        got = fences_in(data[:cut])
        assert got == (history[-1] if cut == len(data) else history[-2]), cut
    for cut in (last, last + 7, (last + len(data)) // 2, len(data) - 1):  # the whole restore, a few cuts
        assert fences_after(tmp_path, name, data[:cut]) == history[-2]
    assert fences_after(tmp_path, name, data) == history[-1]


def test_corruption_at_any_byte_restores_a_true_state_or_refuses(tmp_path) -> None:
    data, history, last = journal_with_history(tmp_path)
    name = next(f for f in os.listdir(tmp_path) if f.startswith("vgpu-"))
    rng = random.Random(18)
    offsets = list(range(last, len(data))) + rng.sample(range(len(data)), 2000)
    outcomes = {"refused": 0, "restored": 0}
    for off in offsets:
        bad = bytearray(data)
        bad[off] ^= 1 << rng.randrange(8)
        got = fences_in(bytes(bad))
        if isinstance(got, str):
            outcomes["refused"] += 1
        else:  # never a state that did not exist: one of the committed ones
            assert got in history, (off, got)
            outcomes["restored"] += 1
    assert outcomes["refused"] > 0 and outcomes["restored"] > 0, outcomes
    bad = bytearray(data)
    bad[40] ^= 0x10  # inside the full record: the whole restore refuses cleanly
    assert isinstance(fences_after(tmp_path, name, bytes(bad)), str)


def test_a_kill_during_compaction_leaves_the_old_journal(tmp_path) -> None:
    data, history, _ = journal_with_history(tmp_path)
    name = next(f for f in os.listdir(tmp_path) if f.startswith("vgpu-"))
    full = gs.file_header() + gs.encode_record(99, {"full": True})
    for cut in (0, 5, len(full) // 2, len(full) - 1):
        (tmp_path / (name + ".tmp")).write_bytes(full[:cut])  # the new file, cut short, never renamed in
        assert fences_after(tmp_path, name, data) == history[-1]


def test_a_bad_device_record_refuses_every_vgpu_cleanly(tmp_path) -> None:
    data, _, _ = journal_with_history(tmp_path)
    dev = bytearray((tmp_path / "device.journal").read_bytes())
    dev[3] ^= 0xFF
    (tmp_path / "device.journal").write_bytes(bytes(dev))
    g2, got = restore_into(str(tmp_path))
    assert got.vgpus == [] and got.device and got.refused and g2.vgpus == {}


def test_state_left_by_dead_default_ids_is_swept(tmp_path) -> None:
    mine = tmp_path / "m.mem.gvt-h-100.state"
    prefix = "m.mem.gvt-h-"
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    for pid in (os.getpid(), 1, dead_pid):
        (tmp_path / f"{prefix}{pid}.state").mkdir()
    (tmp_path / "m.mem.other.state").mkdir()
    gone = gs.sweep_dead(str(mine), prefix, me=100)
    assert gone == [f"{prefix}{dead_pid}.state"]
    assert sorted(os.listdir(tmp_path)) == sorted([f"{prefix}{os.getpid()}.state", f"{prefix}1.state",
                                                   "m.mem.other.state"])
