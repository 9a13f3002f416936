"""Machine memory (shared file), the frame allocator and the simulated EPT."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gvtsim.services.common.ept import EPT_W, MAX_GFN, ROOT_FRAMES, Ept
from gvtsim.services.common.memory import (FrameAllocator, FrameRun, MachineMemory, MemoryRangeError,
                                           OutOfFrames)


@pytest.fixture
def mem(tmp_path):
    mm = MachineMemory(str(tmp_path / "machine.mem"), 4 << 20, create=True)
    yield mm
    mm.close()


def test_typed_access_round_trips(mem):
    mem.write_u32(0x1000, 0xDEADBEEF)
    mem.write_u64(0x2008, 0x0123456789ABCDEF)
    mem.write(0x3000, b"hello")
    mem.write_int(0x3010, 2, 0x1234)
    assert mem.read_u32(0x1000) == 0xDEADBEEF
    assert mem.read_u64(0x2008) == 0x0123456789ABCDEF
    assert mem.read(0x3000, 5) == b"hello"
    assert mem.read_int(0x3010, 2) == 0x1234
    assert mem.read(0x2008, 2) == b"\xef\xcd"  # little-endian, as the GPU and CPU see it


@pytest.mark.parametrize("addr,length", [(-1, 4), (4 << 20, 1), ((4 << 20) - 3, 4), (0, (4 << 20) + 1)])
def test_out_of_range_is_a_clear_error(mem, addr, length):
    with pytest.raises(MemoryRangeError, match="outside machine memory"):
        mem.read(addr, length)
    with pytest.raises(MemoryRangeError):
        mem.write(addr, b"\0" * max(length, 0))


def test_file_is_sparse(tmp_path):
    path = tmp_path / "big.mem"
    with MachineMemory(str(path), 1 << 30, create=True) as mm:
        mm.write_u32(512 << 20, 1)
    assert path.stat().st_size == 1 << 30
    assert path.stat().st_blocks * 512 < 1 << 20  # 1 GiB file, under 1 MiB really used


def test_two_processes_see_each_others_writes(mem):
    """A second process maps the same file: each side sees the other's writes."""
    mem.write_u64(0x10000, 0x1111_2222_3333_4444)
    child = textwrap.dedent(f"""
        import sys
        from gvtsim.services.common.memory import MachineMemory
        m = MachineMemory({mem.path!r})
        assert m.read_u64(0x10000) == 0x1111_2222_3333_4444, hex(m.read_u64(0x10000))
        m.write(0x20000, b"written by the child")
        print("ok", flush=True)
        sys.stdin.readline()           # wait until the parent has written its answer
        print(m.read(0x30000, 6).decode(), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert mem.read(0x20000, 20) == b"written by the child"
        mem.write(0x30000, b"parent")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "parent"
        assert proc.wait(10) == 0
    finally:
        proc.kill()


# ------------------------------------------------------------------------------------------- allocator
def test_allocator_accounting_and_owners():
    a = FrameAllocator(1000)
    assert a.free_frames == 999  # frame 0 is reserved
    runs = a.alloc(100, "vm1", max_run=16, from_top=True)
    assert sum(r.count for r in runs) == 100 and all(r.count <= 16 for r in runs)
    assert min(r.mfn for r in runs) > 100  # from the top: guest RAM does not land at gfn == mfn
    b = a.alloc(10, "gvt", contiguous=True)
    assert len(b) == 1 and b[0].count == 10
    assert a.owners() == {"vm1": 100, "gvt": 10}
    assert a.free_owner("vm1") == 100
    a.free(b, "gvt")
    assert a.free_frames == 999 and a.used_frames == 0
    assert a.alloc(999, "all", contiguous=True) == [FrameRun(1, 999)]  # everything merged back


def test_allocator_refuses_what_it_cannot_give():
    a = FrameAllocator(64)
    a.alloc(60, "x")
    with pytest.raises(OutOfFrames):
        a.alloc(10, "y")
    assert a.owned_count("y") == 0 and a.free_frames == 3
    with pytest.raises(ValueError):
        a.free([FrameRun(1, 1)], "y")  # not y's frames
    held = a.owned("x")
    with pytest.raises(ValueError):
        a.free([held[0], FrameRun(500, 1)], "x")  # one bad run: nothing is freed
    assert a.owned_count("x") == 60 and a.free_frames == 3


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.booleans(), st.booleans(), st.sampled_from("abc")),
                max_size=25), st.data())
def test_allocator_never_hands_out_a_frame_twice(ops, data):
    a = FrameAllocator(512)
    held: set[int] = set()
    for count, contiguous, top, owner in ops:
        try:
            runs = a.alloc(count, owner, contiguous=contiguous, from_top=top, max_run=7)
        except OutOfFrames:
            continue
        frames = {r.mfn + i for r in runs for i in range(r.count)}
        assert len(frames) == count and not frames & held and 0 not in frames
        held |= frames
        if data.draw(st.booleans()):
            victim = data.draw(st.sampled_from("abc"))
            freed = {r.mfn + i for r in a.owned(victim) for i in range(r.count)}
            a.free_owner(victim)
            held -= freed
        assert a.free_frames == 511 - len(held)


# ------------------------------------------------------------------------------------------------- EPT
def test_ept_map_translate_and_write_protect(mem):
    alloc = FrameAllocator(mem.frames)
    root = alloc.alloc(ROOT_FRAMES, "vm", contiguous=True)[0].mfn

    def table() -> int:
        mfn = alloc.alloc(1, "vm")[0].mfn
        mem.zero_frames(mfn)
        return mfn

    writer = Ept(mem, root, table)
    writer.map(0x10, 0x300, 4)
    reader = Ept(mem, root)  # the guest's read-only view of the same tables
    assert reader.translate(0x11) == (0x301, True)
    assert reader.translate(0x14) is None  # unmapped: an MMIO hole
    assert writer.set_write_protect(0x11, True)
    assert reader.translate(0x11) == (0x301, False)
    assert not reader.entry(0x11) & EPT_W
    writer.set_write_protect(0x11, False)
    assert reader.translate(0x11) == (0x301, True)
    writer.unmap(0x10, 4)
    assert reader.translate(0x10) is None
    assert not writer.set_write_protect(0x10, True)  # cannot protect what is not mapped
    with pytest.raises(ValueError):
        writer.map(MAX_GFN, 1)
    assert len(writer.table_frames()) == 1
