"""The primary's replication log: committed transactions as numbered frames, on disk.

File layout: a 40-byte header — magic ``SQLDLOG2``, a 16-byte generation id (new for every
new history: a replica that sees another generation knows it must bootstrap again), the page
size (u32), 4 bytes reserved, the base frame (u64: the log holds frames from base + 1; a
compacted log starts where its predecessor ended) — then records of one frame each::

    u64 frame number | u32 page number | u32 db size after commit (0: not a commit frame)
    | u32 chain checksum | page bytes

The chain checksum is CRC-32 over the previous record's checksum, this record's header
(without the checksum) and its page: a record is valid only if every one before it is.
Frame numbers start at 1 and are never reused. One thread appends while others read
(``since`` reads with pread up to the end it saw, never the shared file position).
Leaves to the caller: when to append (after each commit, before the WAL can restart) and
when to compact (``compact``: a new file, same generation, no frames, based at the last).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import attrs

from sqld.replication.wal import Page, Transaction

MAGIC = b"SQLDLOG2"
HEADER = struct.Struct(">8s16sI4xQ")
RECORD = struct.Struct(">QIII")


class LogError(Exception):
    pass


class SnapshotNeeded(Exception):
    """The frames asked for are no longer in the log: bootstrap from a snapshot."""


@attrs.frozen
class LoggedTransaction:
    """A committed transaction as the log holds it: its last frame number and its pages."""

    last_frame: int
    db_size: int
    pages: tuple[Page, ...]

    def as_transaction(self) -> Transaction:
        return Transaction(self.pages, self.db_size, 0)


class FrameLog:
    def __init__(self, path: str | os.PathLike, page_size: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            if page_size is None:
                raise LogError(f"{self.path} does not exist and no page size was given to create it")
            _write_header(self.path, os.urandom(16), page_size, 0)
        self.file = open(self.path, "r+b")
        raw = self.file.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise LogError(f"{self.path}: header truncated")
        magic, self.generation, self.page_size, self.base = HEADER.unpack(raw)
        if magic != MAGIC:
            raise LogError(f"{self.path} is not a sqld replication log")
        if page_size is not None and page_size != self.page_size:
            raise LogError(f"{self.path} has pages of {self.page_size} bytes, not {page_size}")
        self.record_size = RECORD.size + self.page_size
        self.first_frame = self.base + 1
        self.last_frame = self.base
        self.last_commit = self.base  # frame number of the last commit frame
        self._chain = 0
        self._end = HEADER.size   # offset after the last valid commit record
        self._recover()

    def _recover(self) -> None:
        """Find the last valid commit; cut off a torn or uncommitted tail (a crash mid-append)."""
        self.file.seek(HEADER.size)
        chain = 0
        offset = HEADER.size
        while True:
            rec = self.file.read(self.record_size)
            if len(rec) < self.record_size:
                break
            frame, pgno, db_size, check = RECORD.unpack_from(rec)
            chain = zlib.crc32(rec[: RECORD.size - 4] + rec[RECORD.size :], chain)
            if check != chain or frame != self.last_frame + 1 or pgno == 0:
                break
            self.last_frame = frame
            offset += self.record_size
            if db_size:
                self.last_commit = frame
                self._chain = chain
                self._end = offset
        self.last_frame = self.last_commit
        self.file.truncate(self._end)

    def append(self, tx: Transaction, durable: bool = True) -> int:
        """Write one committed transaction (fsynced unless ``durable`` is False); return its
        last frame number."""
        if not tx.pages:
            return self.last_commit
        chunks = []
        chain = self._chain
        frame = self.last_frame
        for i, page in enumerate(tx.pages):
            if len(page.data) != self.page_size:
                raise LogError(f"page {page.number} has {len(page.data)} bytes, the log {self.page_size}")
            frame += 1
            db_size = tx.db_size if i == len(tx.pages) - 1 else 0
            head = struct.pack(">QII", frame, page.number, db_size)
            chain = zlib.crc32(head + page.data, chain)
            chunks.append(head + struct.pack(">I", chain) + page.data)
        self.file.seek(self._end)
        self.file.write(b"".join(chunks))
        self.file.flush()
        if durable:
            os.fsync(self.file.fileno())
        self._end += len(chunks) * self.record_size
        self.last_frame = self.last_commit = frame
        self._chain = chain
        return frame

    @property
    def size(self) -> int:
        """Bytes in the file (header and records)."""
        return self._end

    def since(self, frame: int):
        """The committed transactions after frame ``frame`` (``base``: all), in order, as far
        as the log reached when called. Safe beside ``append`` on another thread."""
        if frame < self.base:
            raise SnapshotNeeded(f"frames from {frame + 1} were compacted away (the log starts at {self.first_frame})")
        if frame > self.last_commit:
            raise LogError(f"frame {frame} is ahead of this log ({self.last_commit}): another history?")
        end = self._end  # read once: the appender moves it only after the bytes are written
        offset = HEADER.size + (frame - self.base) * self.record_size
        fd = self.file.fileno()
        pages: dict[int, bytes] = {}
        size = self.record_size
        while offset < end:
            chunk = os.pread(fd, min(end - offset, max(size, (1 << 20) // size * size)), offset)
            if len(chunk) < size:
                raise LogError(f"{self.path} was cut short under a reader")
            for at in range(0, len(chunk) - size + 1, size):
                number, pgno, db_size, _ = RECORD.unpack_from(chunk, at)
                pages[pgno] = chunk[at + RECORD.size : at + size]
                if db_size:
                    yield LoggedTransaction(number, db_size, tuple(Page(n, p) for n, p in sorted(pages.items())))
                    pages = {}
            offset += len(chunk) // size * size

    def compact(self, keep_bytes: int = 0) -> "FrameLog":
        """A new log in this one's place: the same generation, keeping the last transactions
        that fit in about ``keep_bytes`` (so replicas a little behind read on), based at the
        commit before them (replicas that lack earlier frames bootstrap from a snapshot).
        Returns it; this object stays readable for readers that hold it."""
        size = self.record_size
        count = (self._end - HEADER.size) // size
        start = max(0, count - keep_bytes // size)  # index of the first record to keep, at most
        base = self.last_commit
        fd = self.file.fileno()
        if keep_bytes and start < count:
            # The first commit record at or after start - 1: the kept records follow it.
            for i in range(max(0, start - 1), count):
                frame, _, db_size, _ = RECORD.unpack(os.pread(fd, RECORD.size, HEADER.size + i * size))
                if db_size:
                    base, start = frame, i + 1
                    break
        else:
            start = count
        tmp = self.path.with_name(self.path.name + ".tmp")
        _write_header(tmp, self.generation, self.page_size, base)
        with open(tmp, "r+b") as out:
            out.seek(HEADER.size)
            chain = 0
            step = max(1, (1 << 20) // size) * size
            for at in range(HEADER.size + start * size, self._end, step):
                chunk = bytearray(os.pread(fd, min(step, self._end - at), at))
                for r in range(0, len(chunk), size):  # the chain starts again in the new file
                    chain = zlib.crc32(bytes(chunk[r : r + RECORD.size - 4]) + bytes(chunk[r + RECORD.size : r + size]),
                                       chain)
                    struct.pack_into(">I", chunk, r + RECORD.size - 4, chain)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        return FrameLog(self.path)

    def close(self) -> None:
        self.file.close()


def _write_header(path: Path, generation: bytes, page_size: int, base: int) -> None:
    with open(path, "wb") as f:
        f.write(HEADER.pack(MAGIC, generation, page_size, base))
        f.flush()
        os.fsync(f.fileno())
