"""Applying committed transactions to a replica: a plain SQLite file in rollback-journal mode.

The method (checked on these machines, see the design notes): hold the file's exclusive
lock through a SQLite connection (BEGIN EXCLUSIVE), write the page images in place,
truncate to the transaction's size, patch page 1 — rollback-journal mode, a change counter
one above the file's (which tells every other connection to drop its cache), the size —
and COMMIT. A reader never sees half a transaction: it cannot hold a lock while the
applier does.

A crash in the middle of the in-place writes would leave a torn file, so with a state
file each apply first writes a *redo record* — the replica's position (generation, frame)
and the pages about to be written — to a temporary file renamed over the state file (an
atomic step), and only then writes the pages. Reopening redoes the record: page images are
whole, so writing them again is harmless, and the file is again exactly the state at that
frame. The state file is therefore also where the replica's position persists. With
``durable`` the record and the file are fsynced (power loss); without, a process crash
(kill -9) is still safe, as the OS keeps what was written.
"""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Iterable

import apsw
import attrs

from sqld.replication.wal import Page, Transaction

_U32 = struct.Struct(">I")
STATE_MAGIC = b"SQLDREP2"
# magic, sequence, generation, frame, db size (pages), page count, page size, then the CRC-32 of
# all of that and the pages
STATE_HEADER = struct.Struct(">8sQ16sQIII")
_CRC = struct.Struct(">I")
_PAGENO = struct.Struct(">I")


@attrs.frozen
class Position:
    generation: bytes
    frame: int


def bootstrap(primary: apsw.Connection, replica_path: str) -> None:
    """Make ``replica_path`` a consistent copy of the primary's database, in rollback mode."""
    copy_database(primary, replica_path)


def copy_database(source: apsw.Connection, path: str, step: int = -1) -> None:
    """Copy ``source``'s database (in its read transaction, if one is open) to a new file at
    ``path``, in rollback-journal mode, with the source's schema cookie.

    SQLite's backup sets the copy's cookie to one above the destination's old one (so 1),
    not to the source's; pages of later commits then carry the primary's cookie, which can
    be that same value although the schema changed (a primary at 0 creates its first
    table: 1). Readers of the local copy would keep the schema they had, and never see the
    table. With the source's cookie every schema change of the primary changes it here."""
    cookie = source.execute("pragma schema_version").fetchall()[0][0]
    target = apsw.Connection(path)
    try:
        with target.backup("main", source, "main") as b:
            while not b.done:
                b.step(step)
        target.execute("pragma journal_mode=delete").fetchall()
        target.execute(f"pragma schema_version = {int(cookie)}").fetchall()
    finally:
        target.close()


def merge(txs: Iterable[Transaction]) -> Transaction:
    """Several consecutive transactions as one: the newest image of each page, the last size."""
    pages: dict[int, bytes] = {}
    size = 0
    end = 0
    for tx in txs:
        for page in tx.pages:
            pages[page.number] = page.data
        size, end = tx.db_size, tx.end_offset
    return Transaction(tuple(Page(n, d) for n, d in sorted(pages.items()) if n <= size), size, end)


class LocalCopy:
    """The replica's local copy of the database: the file, and the connection that holds
    its lock while a transaction is applied.

    ``state_path`` (optional) is the redo record / position file; ``position`` is None for
    a replica that has none (it must bootstrap).
    """

    def __init__(self, path: str, state_path: str | None = None, durable: bool = False,
                 busy_timeout_ms: int = 60000) -> None:
        self.path = path
        self.state_path = Path(state_path) if state_path else None
        self.durable = durable
        self.conn = apsw.Connection(path)
        self.lock_attempt = 0.02
        self.busy_timeout = busy_timeout_ms / 1000
        # Readers hold their shared lock for a statement (~0.1 ms for a point read): wait for
        # them in fine steps, not SQLite's default sleeps of 1, 2, 5, 10… ms.
        self.conn.set_busy_handler(lambda attempts: time.sleep(0.0002) or attempts < self.lock_attempt / 0.0002)
        self.idle = threading.Event()  # set while no transaction is being applied
        self.idle.set()
        mode = self.conn.execute("pragma journal_mode").fetchall()[0][0]
        if mode == "wal":
            raise ValueError(f"{path} is in WAL mode: a replica file must use a rollback journal")
        # One descriptor for the replica's life: closing any descriptor of a file drops every
        # POSIX lock this process holds on it, SQLite's exclusive lock included.
        self.fd = os.open(path, os.O_RDWR)
        self.position: Position | None = None
        self.damaged = False
        self.state = StateFile(self.state_path, durable) if self.state_path is not None else None
        if self.state is not None:
            self._recover()

    # -- the state file ---------------------------------------------------------------------

    def _recover(self) -> None:
        record = self.state.load()
        if record is None:
            return  # none, or unreadable: no position, the replica bootstraps again
        position, tx = record
        if tx.pages:
            self._lock()  # redo: the last apply may have stopped half-way
            try:
                self._write(tx)
            finally:
                self.conn.execute("commit").fetchall()
                self.idle.set()
        self.position = position

    def _save(self, position: Position, tx: Transaction) -> None:
        self.state.save(position, tx)

    def set_position(self, position: Position) -> None:
        """Record the position of a file made elsewhere (a fresh bootstrap): no pages to redo."""
        self._save(position, Transaction((), 0, 0))
        self.position = position

    # -- applying ---------------------------------------------------------------------------

    def apply(self, tx: Transaction, position: Position | None = None) -> bool:
        """Apply one committed transaction (or several merged); return whether the schema
        changed (the replica's statement caches must go).

        The redo record is written before the lock is taken (readers never look at it), so
        readers wait only for the page writes. The lock is asked for with a short busy
        timeout and asked again until it is had: between attempts SQLite's PENDING lock is
        let go, so an open read transaction holds back replication, not every new reader.
        """
        if position is not None and self.state_path is not None:
            self._save(position, tx)
        if self.damaged:
            raise OSError(f"{self.path} was left damaged by a failed apply: restart the replica")
        self._lock()
        try:
            changed = self._write(tx)
        except OSError:
            try:
                changed = self._write(tx)  # whole page images: writing them again is harmless
            except OSError:
                # Half a transaction is in the file. Keep the exclusive lock (readers wait and
                # then fail, rather than read it) until the process ends; a restart redoes
                # the record.
                self.damaged = True
                raise
        self.conn.execute("commit").fetchall()
        self.idle.set()
        if position is not None:
            self.position = position
        return changed

    def _lock(self) -> None:
        waited = 0.0
        while True:
            try:
                self.conn.execute("begin exclusive").fetchall()  # the file's exclusive lock
                self.idle.clear()  # readers that meet the lock now wait for this event
                return
            except apsw.BusyError:
                waited += self.lock_attempt
                if waited >= self.busy_timeout:
                    raise
                time.sleep(0.002)

    def _write(self, tx: Transaction) -> bool:
        """Page images in place, then page 1 last and already patched: a write that stops
        half-way never leaves a header that says WAL mode (which would let readers past the
        rollback-journal lock) or a counter that keeps readers' stale caches."""
        fd = self.fd
        old = os.pread(fd, 100, 0)
        old_counter = _U32.unpack_from(old, 24)[0] if len(old) == 100 else 0
        page_size = len(tx.pages[0].data) if tx.pages else self._page_size(fd)
        first = None
        for page in tx.pages:
            if page.number == 1:
                first = page.data
                continue
            os.pwrite(fd, page.data, (page.number - 1) * page_size)
        os.ftruncate(fd, tx.db_size * page_size)
        header = bytearray(first if first is not None else os.pread(fd, 100, 0))
        header[18] = header[19] = 1  # file format: legacy (rollback journal), not WAL
        # One above the file's own counter (not the page image's, which may be any value):
        # every reader then sees the file changed and drops its cache.
        counter = (old_counter + 1) & 0xFFFFFFFF
        _U32.pack_into(header, 24, counter)     # file change counter
        _U32.pack_into(header, 28, tx.db_size)  # database size in pages …
        _U32.pack_into(header, 92, counter)     # … valid for this change counter
        os.pwrite(fd, bytes(header), 0)
        if self.durable:
            os.fsync(fd)
        return len(old) < 100 or old[40:44] != header[40:44]  # the schema cookie

    def replace_with(self, snapshot_path: str, position: Position) -> bool:
        """Make the file a copy of ``snapshot_path`` (a bootstrap while readers are open),
        as one transaction: readers see the old database or the new one."""
        data = Path(snapshot_path).read_bytes()
        page_size = self._page_size_of(data)
        pages = tuple(Page(i // page_size + 1, data[i : i + page_size]) for i in range(0, len(data), page_size))
        return self.apply(Transaction(pages, len(pages), 0), position)

    @staticmethod
    def _page_size_of(header: bytes) -> int:
        size = struct.unpack_from(">H", header, 16)[0]
        return 65536 if size == 1 else size

    @classmethod
    def _page_size(cls, fd: int) -> int:
        return cls._page_size_of(os.pread(fd, 18, 0))

    def close(self) -> None:
        self.conn.close()
        os.close(self.fd)


@attrs.define(eq=False)
class StateFile:
    """The redo record and position, in two slots written in turn (``PATH`` and ``PATH.1``),
    each record with a sequence number and a CRC over all of it. A write torn by a crash
    leaves the other slot whole; reading takes the valid record with the highest sequence.
    No rename, so no directory sync: one fsync per record when durable."""

    paths: tuple[Path, Path] = attrs.field(converter=lambda p: (Path(p), Path(p).with_name(Path(p).name + ".1")),
                                           alias="path")
    durable: bool
    seq: int = attrs.field(init=False, default=0)
    slot: int = attrs.field(init=False, default=1)  # the slot written last

    def exists(self) -> bool:
        return any(p.exists() for p in self.paths)

    def load(self) -> tuple[Position, Transaction] | None:
        best = None
        for slot, path in enumerate(self.paths):
            try:
                record = _decode_state(path.read_bytes())
            except FileNotFoundError:
                continue
            if record is not None and (best is None or record[0] > best[0]):
                best = (*record, slot)
        if best is None:
            return None
        self.seq, position, tx, self.slot = best
        return position, tx

    def save(self, position: Position, tx: Transaction) -> None:
        self.seq += 1
        self.slot = 1 - self.slot
        path = self.paths[self.slot]
        new = not path.exists()
        body = b"".join(_PAGENO.pack(p.number) + p.data for p in tx.pages)
        page_size = len(tx.pages[0].data) if tx.pages else 0
        head = STATE_HEADER.pack(STATE_MAGIC, self.seq, position.generation, position.frame, tx.db_size,
                                 len(tx.pages), page_size)
        with open(path, "wb") as f:
            f.write(head + _CRC.pack(zlib.crc32(body, zlib.crc32(head))) + body)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        if new and self.durable:  # a new file's name must reach the disk too (once)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def reset(self) -> None:
        for p in self.paths:
            p.unlink(missing_ok=True)
        self.seq, self.slot = 0, 1


def _decode_state(raw: bytes) -> tuple[int, Position, Transaction] | None:
    if len(raw) < STATE_HEADER.size + _CRC.size:
        return None
    magic, seq, generation, frame, db_size, count, page_size = STATE_HEADER.unpack_from(raw)
    (crc,) = _CRC.unpack_from(raw, STATE_HEADER.size)
    body = raw[STATE_HEADER.size + _CRC.size :]
    if magic != STATE_MAGIC or zlib.crc32(body, zlib.crc32(raw[: STATE_HEADER.size])) != crc \
            or len(body) != count * (4 + page_size):
        return None
    step = 4 + page_size
    pages = [Page(_PAGENO.unpack_from(body, at)[0], body[at + 4 : at + step]) for at in range(0, len(body), step)]
    return seq, Position(generation, frame), Transaction(tuple(pages), db_size, 0)
