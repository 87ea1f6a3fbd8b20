"""The primary's replication log: committed transactions as numbered frames, on disk.

File layout: a 32-byte header — magic ``SQLDLOG1``, a 16-byte generation id (new for every
new log: a replica that sees another generation knows it is another history), the page
size (u32), 4 bytes reserved — then records of one frame each::

    u64 frame number | u32 page number | u32 db size after commit (0: not a commit frame)
    | u32 chain checksum | page bytes

The chain checksum is CRC-32 over the previous record's checksum, this record's header
(without the checksum) and its page: a record is valid only if every one before it is.
Frame numbers start at 1 and are never reused. Leaves to the caller: when to append
(after each commit, before the WAL can restart) and compaction.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import attrs

from sqld.replication.wal import Page, Transaction

MAGIC = b"SQLDLOG1"
HEADER = struct.Struct(">8s16sI4x")
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
            with open(self.path, "wb") as f:
                f.write(HEADER.pack(MAGIC, os.urandom(16), page_size))
                f.flush()
                os.fsync(f.fileno())
        self.file = open(self.path, "r+b")
        raw = self.file.read(HEADER.size)
        if len(raw) < HEADER.size:
            raise LogError(f"{self.path}: header truncated")
        magic, self.generation, self.page_size = HEADER.unpack(raw)
        if magic != MAGIC:
            raise LogError(f"{self.path} is not a sqld replication log")
        if page_size is not None and page_size != self.page_size:
            raise LogError(f"{self.path} has pages of {self.page_size} bytes, not {page_size}")
        self.record_size = RECORD.size + self.page_size
        self.first_frame = 1
        self.last_frame = 0
        self.last_commit = 0      # frame number of the last commit frame
        self._chain = 0
        self._end = HEADER.size   # offset after the last valid commit record
        self._recover()

    def _recover(self) -> None:
        """Find the last valid commit; cut off a torn or uncommitted tail (a crash mid-append)."""
        self.file.seek(HEADER.size)
        chain = 0
        offset = HEADER.size
        first = None
        while True:
            rec = self.file.read(self.record_size)
            if len(rec) < self.record_size:
                break
            frame, pgno, db_size, check = RECORD.unpack_from(rec)
            chain = zlib.crc32(rec[: RECORD.size - 4] + rec[RECORD.size :], chain)
            if check != chain or (self.last_frame and frame != self.last_frame + 1) or pgno == 0:
                break
            if first is None:
                first = frame
            self.last_frame = frame
            offset += self.record_size
            if db_size:
                self.last_commit = frame
                self._chain = chain
                self._end = offset
        self.last_frame = self.last_commit
        if first is not None:
            self.first_frame = first
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

    def since(self, frame: int):
        """The committed transactions after frame ``frame`` (0: all), in order."""
        if frame + 1 < self.first_frame:
            raise SnapshotNeeded(f"frames from {frame + 1} were compacted away (the log starts at {self.first_frame})")
        if frame > self.last_commit:
            raise LogError(f"frame {frame} is ahead of this log ({self.last_commit}): another history?")
        offset = HEADER.size + (frame + 1 - self.first_frame) * self.record_size
        pages: dict[int, bytes] = {}
        while offset < self._end:
            self.file.seek(offset)
            rec = self.file.read(self.record_size)
            number, pgno, db_size, _ = RECORD.unpack_from(rec)
            pages[pgno] = rec[RECORD.size :]
            offset += self.record_size
            if db_size:
                yield LoggedTransaction(number, db_size, tuple(Page(n, p) for n, p in sorted(pages.items())))
                pages = {}

    def close(self) -> None:
        self.file.close()
