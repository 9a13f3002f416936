"""A crash-consistent journal file: what gvt and vhm keep in the machine-memory tmpfs to survive ``kill -9``.

Format (docs/STATE.md): a file header (8-byte magic, format version, the CRC-32 of both), then records,
each ``payload length, crc32(seq + payload), seq`` and a msgpack payload. The first record of a file is a
full snapshot (``full: true``); each later one holds what changed in one batch, so a writer pays for what
it changed, not for its whole state. A record is appended with one ``write`` (a kill leaves it whole or
cut short at the end of the file); a journal grown past a bound is compacted into a new file holding one
full record, written beside it and renamed over it (``rename`` is atomic: the file is the old or the new).

Reading stops at a record cut short at the end of the file (the write the kill interrupted: the state is
that of the records before it); a record that fails its CRC with data after it, a sequence gap, a first
record that is not full, a payload that does not decode, a wrong magic or version refuse the whole journal
(:class:`JournalRefused`): it is never guessed at.

Who uses it: services/gvt/state.py (one journal per vGPU) and services/vhm/state.py (one per VM, one for
vhm itself). Each has its own magic and version; the folding of records into a state is theirs.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import msgspec

FILE_HEADER = struct.Struct("<8sII")  # magic, version, crc32(magic + version)
REC_HEADER = struct.Struct("<IIQ")  # payload length, crc32(seq + payload), seq
#: a record is never larger than this (a corrupt length is not an allocation)
MAX_RECORD = 64 << 20
_SEQ = struct.Struct("<Q")


class JournalRefused(Exception):
    """A journal that cannot be trusted (bad magic, version, checksum, sequence or content)."""


#: msgspec's encoder (C, about 5x msgpack-python's packb on a slot record); msgpack reads what it writes
_ENCODER = msgspec.msgpack.Encoder()


def encode_record(seq: int, payload: dict[str, Any]) -> bytes:
    """One record: header then the msgpack payload."""
    body = _ENCODER.encode(payload)
    crc = zlib.crc32(body, zlib.crc32(_SEQ.pack(seq)))
    return REC_HEADER.pack(len(body), crc, seq) + body


@dataclass(frozen=True)
class JournalFormat:
    """One kind of journal: its magic, its format version and what to call it in a refusal."""

    magic: bytes  # 8 bytes
    version: int
    what: str  # "gvt state journal", ...
    reader: str  # who reads it, for the version message ("this gvt")

    def header(self) -> bytes:
        """The 16 bytes every journal of this kind starts with."""
        head = self.magic + struct.pack("<I", self.version)
        return FILE_HEADER.pack(self.magic, self.version, zlib.crc32(head))

    def decode(self, data: bytes) -> tuple[list[dict[str, Any]], int, bool]:
        """The payloads of a journal's records, in order, the next sequence number, and whether its last
        write was cut short (ignored: the state is that of the records before it). Raises
        :class:`JournalRefused`."""
        if len(data) < FILE_HEADER.size:
            raise JournalRefused(f"journal of {len(data)} bytes has no header")
        magic, version, crc = FILE_HEADER.unpack_from(data)
        if magic != self.magic or crc != zlib.crc32(data[:12]):
            raise JournalRefused(f"not a {self.what} (bad magic or header checksum)")
        if version != self.version:
            raise JournalRefused(f"state format version {version}, {self.reader} reads version {self.version}")
        out: list[dict[str, Any]] = []
        off, seq, torn = FILE_HEADER.size, None, False
        while off < len(data):
            if len(data) - off < REC_HEADER.size:
                torn = True  # the header of the last write was cut
                break
            length, crc, rseq = REC_HEADER.unpack_from(data, off)
            end = off + REC_HEADER.size + length
            if length > MAX_RECORD or end > len(data):
                torn = True  # the last write was cut (or its length is garbage: nothing valid can follow it)
                break
            body = data[off + REC_HEADER.size:end]
            if zlib.crc32(body, zlib.crc32(_SEQ.pack(rseq))) != crc:
                if end == len(data):
                    torn = True  # the last record, partly written
                    break
                raise JournalRefused(f"record at byte {off} fails its checksum and is not the last")
            if seq is not None and rseq != seq + 1:
                raise JournalRefused(f"record at byte {off} has seq {rseq}, expected {seq + 1}")
            try:
                payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
            except Exception as err:
                raise JournalRefused(f"record at byte {off} does not decode: {err}") from None
            if not isinstance(payload, dict) or (seq is None and not payload.get("full")):
                raise JournalRefused(f"record at byte {off} is not a state record (or the first is not a full one)")
            out.append(payload)
            seq, off = rseq, end
        if not out:
            raise JournalRefused("journal holds no complete record")
        assert seq is not None
        return out, seq + 1, torn

    def read(self, path: str) -> tuple[list[dict[str, Any]], int, bool]:
        """:meth:`decode` of a file (FileNotFoundError if it is absent)."""
        with open(path, "rb") as f:
            return self.decode(f.read())


class JournalWriter:
    """The open journals of one directory, one file per name (``<name>.journal``), appended to with one
    ``write`` per record and compacted by atomic rename. Counts what it wrote."""

    def __init__(self, directory: str, fmt: JournalFormat) -> None:
        self.dir = directory
        self.fmt = fmt
        os.makedirs(directory, exist_ok=True)
        self._fds: dict[str, tuple[int, int, int]] = {}  # name -> (fd, next seq, size)
        self._full_size: dict[str, int] = {}  # name -> size of the journal right after its last full record
        self.bytes_written = 0
        self.records_written = 0

    def path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.journal")

    def is_open(self, name: str) -> bool:
        return name in self._fds

    def next_seq(self, name: str) -> int:
        """The seq the next record of ``name`` gets (1 for a journal not open yet)."""
        fds = self._fds.get(name)
        return fds[1] if fds else 1

    def deltas_size(self, name: str) -> int:
        """Bytes of deltas appended to ``name`` since its last full record."""
        fds = self._fds.get(name)
        return fds[2] - self._full_size.get(name, 0) if fds else 0

    def write_full(self, name: str, payload: dict[str, Any], seq: int | None = None) -> None:
        """A new journal holding one full record, atomically in place of the old (written as ``.tmp``
        beside it, then renamed over it). ``seq`` defaults to the next of the journal (sequence numbers
        go on across compactions)."""
        if seq is None:
            seq = self.next_seq(name)
        old = self._fds.pop(name, None)
        if old is not None:
            os.close(old[0])
        path = self.path(name)
        tmp = path + ".tmp"
        data = self.fmt.header() + encode_record(seq, payload)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._fds[name] = (fd, seq + 1, len(data))
        self._full_size[name] = len(data)
        self.bytes_written += len(data)
        self.records_written += 1

    def append(self, name: str, payload: dict[str, Any]) -> None:
        """Append one delta record to an open journal (one ``write``: whole, or cut short at the end)."""
        fd, seq, size = self._fds[name]
        rec = encode_record(seq, payload)
        os.write(fd, rec)
        self._fds[name] = (fd, seq + 1, size + len(rec))
        self.bytes_written += len(rec)
        self.records_written += 1

    def delete(self, name: str) -> None:
        """Close and delete one journal (its object is gone)."""
        fds = self._fds.pop(name, None)
        self._full_size.pop(name, None)
        if fds is not None:
            os.close(fds[0])
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        """The journals present in the directory (open or not), sorted; ``.tmp`` files left by a
        compaction a kill interrupted are deleted (the journal itself is whole)."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".journal.tmp"):
                os.unlink(os.path.join(self.dir, name))
            elif name.endswith(".journal"):
                out.append(name[:-len(".journal")])
        return out

    def close(self) -> None:
        for fd, _, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()
