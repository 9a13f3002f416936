"""Machine memory: one shared-memory file per host stack, mapped by every process of the stack.

Guest RAM, shadow page tables, contexts and ring buffers all live here, addressed by *machine* address
(mfn << 12). The file is sparse, so untouched frames cost nothing. vhm owns the :class:`FrameAllocator`;
every other process just maps the file and reads and writes by machine address.

Memory costs what is touched: a frame that is free is a hole in the file (it reads as zeros and holds no
page), so allocating never writes zeros. Freeing gives the pages back with ``madvise(MADV_REMOVE)``, which on
tmpfs/shmem punches a hole in the file (as ``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` would;
mm/madvise.c madvise_remove -> vfs_fallocate): every process mapping the file sees zeros there at once and
the pages stop counting in anyone's RSS or in /dev/shm. That is the Linux balloon driver's "free page
reporting" idea and what a hypervisor does when it gives a guest fresh (zero) pages.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

from ...hardware.gtt import PAGE_SHIFT, PAGE_SIZE  # a machine frame is one 4 KiB page

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class MemoryRangeError(ValueError):
    """A machine address (or frame) outside the machine memory."""


class OutOfFrames(MemoryError):
    """The allocator cannot satisfy the request."""


class MachineMemory:
    """A shared-memory file mapped into this process.

    Args:
        path: the file (on tmpfs: /dev/shm or a compose tmpfs volume).
        size: bytes; required with ``create``. Rounded up to whole frames.
        create: create (or grow) the file; otherwise it must exist.
    """

    def __init__(self, path: str, size: int | None = None, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                if not size or size <= 0:
                    raise ValueError("size is required to create machine memory")
                size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)  # sparse: no page is touched
            self.size = os.fstat(fd).st_size
            if self.size == 0:
                raise ValueError(f"machine memory {path} is empty")
            self._mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._view = memoryview(self._mm)
        self.frames = self.size >> PAGE_SHIFT
        self._can_discard = hasattr(mmap, "MADV_REMOVE")
        self.discarded_frames = 0  # frames given back by discard_frames (a counter for STATUS)

    # -------------------------------------------------------------------------------------- checks
    def _check(self, maddr: int, length: int) -> None:
        if maddr < 0 or length < 0 or maddr + length > self.size:
            raise MemoryRangeError(
                f"machine address range [{maddr:#x}, +{length:#x}) outside machine memory of {self.size:#x} bytes")

    def check_mfn(self, mfn: int, count: int = 1) -> None:
        """Raise :class:`MemoryRangeError` unless frames ``[mfn, mfn+count)`` exist."""
        if mfn < 0 or count < 0 or mfn + count > self.frames:
            raise MemoryRangeError(f"machine frames [{mfn:#x}, +{count}) outside 0..{self.frames:#x}")

    # --------------------------------------------------------------------------------- byte access
    def read(self, maddr: int, length: int) -> bytes:
        """Copy ``length`` bytes at machine address ``maddr``."""
        self._check(maddr, length)
        return self._mm[maddr:maddr + length]

    def write(self, maddr: int, data: bytes | bytearray | memoryview) -> None:
        """Write bytes at machine address ``maddr``."""
        self._check(maddr, len(data))
        self._mm[maddr:maddr + len(data)] = data

    def view(self, maddr: int, length: int) -> memoryview:
        """A zero-copy view (valid while this object is open)."""
        self._check(maddr, length)
        return self._view[maddr:maddr + length]

    def fill(self, maddr: int, length: int, byte: int = 0) -> None:
        """Set ``length`` bytes to ``byte``."""
        self._check(maddr, length)
        self._mm[maddr:maddr + length] = bytes([byte]) * length

    def read_u32(self, maddr: int) -> int:
        self._check(maddr, 4)
        return _U32.unpack_from(self._mm, maddr)[0]

    def write_u32(self, maddr: int, value: int) -> None:
        self._check(maddr, 4)
        _U32.pack_into(self._mm, maddr, value & 0xFFFF_FFFF)

    def read_u64(self, maddr: int) -> int:
        self._check(maddr, 8)
        return _U64.unpack_from(self._mm, maddr)[0]

    def write_u64(self, maddr: int, value: int) -> None:
        self._check(maddr, 8)
        _U64.pack_into(self._mm, maddr, value & 0xFFFF_FFFF_FFFF_FFFF)

    def read_int(self, maddr: int, size: int) -> int:
        """Little-endian unsigned read of 1, 2, 4 or 8 bytes."""
        self._check(maddr, size)
        return int.from_bytes(self._mm[maddr:maddr + size], "little")

    def write_int(self, maddr: int, size: int, value: int) -> None:
        """Little-endian write of the low ``size`` bytes of ``value``."""
        self._check(maddr, size)
        self._mm[maddr:maddr + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def zero_frames(self, mfn: int, count: int = 1) -> None:
        """Zero whole frames by writing zeros (for frames a process recycles itself; frames freed to the
        allocator are discarded instead, see :meth:`discard_frames`)."""
        self.fill(mfn << PAGE_SHIFT, count << PAGE_SHIFT, 0)

    def discard_frames(self, mfn: int, count: int = 1) -> None:
        """Give frames' pages back: they read as zeros afterwards, in every process mapping the file, and
        cost no memory until written again (madvise MADV_REMOVE: a hole punched in the shmem file).

        Where the file system cannot punch holes the frames are zeroed by writing instead, so the
        "a free frame reads as zeros" rule holds either way."""
        self.check_mfn(mfn, count)
        if count == 0:
            return
        if self._can_discard:
            try:
                self._mm.madvise(mmap.MADV_REMOVE, mfn << PAGE_SHIFT, count << PAGE_SHIFT)
                self.discarded_frames += count
                return
            except (OSError, AttributeError, ValueError):
                self._can_discard = False  # EOPNOTSUPP (not shmem, no punch hole): fall back for good
        self.zero_frames(mfn, count)

    def resident_bytes(self) -> int:
        """Bytes of the file that hold pages (st_blocks; what the machine memory really costs on tmpfs)."""
        return os.stat(self.path).st_blocks * 512

    def close(self) -> None:
        """Unmap. Views handed out earlier become invalid."""
        try:
            self._view.release()
            self._mm.close()
        except (BufferError, ValueError):
            pass  # a view is still exported: the mapping goes away with the process

    def __enter__(self) -> "MachineMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameRun(NamedTuple):
    """A run of machine frames ``[mfn, mfn + count)`` (a tuple: a VM's RAM is thousands of them)."""

    mfn: int
    # shadows tuple.count() on purpose: the field is named as on the wire (Run.count) and read as run.count
    # everywhere; nothing calls the tuple method on a run
    count: int  # type: ignore[assignment]


def coalesce(runs: list[FrameRun]) -> list[FrameRun]:
    """The same frames as fewer runs: sorted, adjacent runs merged."""
    out: list[FrameRun] = []
    for run in sorted(runs, key=lambda r: r.mfn):
        if out and out[-1].mfn + out[-1].count == run.mfn:
            out[-1] = FrameRun(out[-1].mfn, out[-1].count + run.count)
        else:
            out.append(run)
    return out


class FrameAllocator:
    """First-fit allocator of machine frames, with per-owner accounting. Pure: no memory is touched.

    Frames ``[0, reserved)`` are never handed out (frame 0 stays the "null" frame, so mfn 0 never names a
    real page, like a non-present PTE).

    Args:
        on_release: called with ``(mfn, count)`` for every run given back (vhm passes
            :meth:`MachineMemory.discard_frames`, so a free frame is always a zero hole: frames handed out
            are zero without anything written at allocation time).
    """

    def __init__(self, total_frames: int, reserved: int = 1,
                 on_release: Callable[[int, int], None] | None = None) -> None:
        if total_frames <= reserved:
            raise ValueError("no allocatable frames")
        self.total = total_frames
        self.reserved = reserved
        self.on_release = on_release
        self._starts: list[int] = [reserved]  # sorted starts of free runs
        self._counts: dict[int, int] = {reserved: total_frames - reserved}
        self._owned: dict[str, list[FrameRun]] = defaultdict(list)
        self.free_frames = total_frames - reserved

    @property
    def used_frames(self) -> int:
        return self.total - self.reserved - self.free_frames

    def owned(self, owner: str) -> list[FrameRun]:
        """Runs currently held by ``owner``."""
        return list(self._owned.get(owner, ()))

    def owned_count(self, owner: str) -> int:
        return sum(r.count for r in self._owned.get(owner, ()))

    def alloc(self, count: int, owner: str, *, contiguous: bool = False, max_run: int | None = None,
              from_top: bool = False) -> list[FrameRun]:
        """Allocate ``count`` frames for ``owner``.

        Args:
            contiguous: one run or nothing.
            max_run: cap each run's length (vhm uses it to build deliberately fragmented guest RAM).
            from_top: take frames from the highest free runs first (so guest RAM does not sit at gfn == mfn).

        Raises:
            OutOfFrames: not enough free frames (nothing is allocated then).
        """
        if count <= 0:
            raise ValueError("count must be positive")
        if count > self.free_frames:
            raise OutOfFrames(f"{count} frames asked, {self.free_frames} free")
        order = list(reversed(self._starts)) if from_top else list(self._starts)
        if contiguous:
            for start in order:
                n = self._counts[start]
                if n >= count:
                    mfn = start + n - count if from_top else start
                    self._take(mfn, count)
                    run = FrameRun(mfn, count)
                    self._owned[owner].append(run)
                    return [run]
            raise OutOfFrames(f"no contiguous run of {count} frames")
        runs: list[FrameRun] = []
        need = count
        for start in order:
            n = self._counts[start]
            take = min(n, need)
            mfn = start + n - take if from_top else start
            self._take(mfn, take)  # one block out of the free run, handed out in pieces of max_run
            piece = max_run or take
            if from_top:  # highest piece first
                runs.extend(FrameRun(max(mfn, top - piece), top - max(mfn, top - piece))
                            for top in range(mfn + take, mfn, -piece))
            else:
                runs.extend(FrameRun(a, min(piece, mfn + take - a)) for a in range(mfn, mfn + take, piece))
            need -= take
            if not need:
                break
        self._owned[owner].extend(runs)
        return runs

    def _take(self, mfn: int, count: int) -> None:
        i = bisect.bisect_right(self._starts, mfn) - 1
        start = self._starts[i]
        n = self._counts[start]
        assert start <= mfn and mfn + count <= start + n
        del self._counts[start]
        self._starts.pop(i)
        if mfn > start:
            self._insert(start, mfn - start)
        end = mfn + count
        if end < start + n:
            self._insert(end, start + n - end)
        self.free_frames -= count

    def _insert(self, start: int, count: int) -> None:
        bisect.insort(self._starts, start)
        self._counts[start] = count

    def free(self, runs: list[FrameRun], owner: str) -> None:
        """Return runs that ``owner`` holds. Raises ValueError for a run the owner does not hold."""
        held = self._owned.get(owner, [])
        for run in runs:  # all or nothing: check every run before releasing any
            if runs.count(run) > held.count(run):
                raise ValueError(f"{owner} does not hold frames {run.mfn:#x}+{run.count}")
        for run in runs:
            held.remove(run)
            self._release(run)
        if not held:
            self._owned.pop(owner, None)

    def free_owner(self, owner: str) -> int:
        """Release everything ``owner`` holds (VM destroyed, client gone). Returns the frame count."""
        runs = self._owned.pop(owner, [])
        for run in coalesce(runs):  # guest RAM is many adjacent short runs: give them back as few big ones
            self._release(run)
        return sum(r.count for r in runs)

    def _release(self, run: FrameRun) -> None:
        start, count = run.mfn, run.count
        if self.on_release is not None:
            self.on_release(start, count)
        i = bisect.bisect_left(self._starts, start)
        # merge with the next free run
        if i < len(self._starts) and self._starts[i] == start + count:
            nxt = self._starts.pop(i)
            count += self._counts.pop(nxt)
        # merge with the previous free run
        if i > 0:
            prev = self._starts[i - 1]
            if prev + self._counts[prev] == start:
                self._counts[prev] += count
                self.free_frames += run.count
                return
        self._insert(start, count)
        self.free_frames += run.count

    def claim(self, runs: list[FrameRun], owner: str) -> None:
        """Take exactly these runs for ``owner`` (a restarted vhm re-opening the frames its VMs and clients
        held). All or nothing: raises ValueError if a run is not wholly free (or two of them overlap)."""
        ordered = sorted(runs)
        for i, run in enumerate(ordered):
            if run.count <= 0 or run.mfn < self.reserved or run.mfn + run.count > self.total:
                raise ValueError(f"frames {run.mfn:#x}+{run.count} do not exist")
            j = bisect.bisect_right(self._starts, run.mfn) - 1
            if j < 0 or run.mfn + run.count > self._starts[j] + self._counts[self._starts[j]]:
                raise ValueError(f"frames {run.mfn:#x}+{run.count} are not free")
            if i and ordered[i - 1].mfn + ordered[i - 1].count > run.mfn:
                raise ValueError(f"frames {run.mfn:#x}+{run.count} are claimed twice")
        for run in runs:
            self._take(run.mfn, run.count)
            self._owned[owner].append(FrameRun(run.mfn, run.count))

    def free_runs(self) -> list[FrameRun]:
        """The free runs, ascending."""
        return [FrameRun(s, self._counts[s]) for s in self._starts]

    def owners(self) -> dict[str, int]:
        """owner -> frames held."""
        return {o: sum(r.count for r in runs) for o, runs in self._owned.items()}
