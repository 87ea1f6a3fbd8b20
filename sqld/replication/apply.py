"""Applying committed transactions to a replica: a plain SQLite file in rollback-journal mode.

The method (checked on these machines, see the design notes): hold the file's exclusive
lock through a SQLite connection (BEGIN EXCLUSIVE), write the page images in place,
truncate to the transaction's size, patch page 1 — rollback-journal mode, a bumped change
counter (which tells every other connection to drop its cache), the size — fsync, COMMIT.
A reader never sees half a transaction: it cannot hold a lock while the writer does.
"""

from __future__ import annotations

import os
import struct

import apsw

from sqld.replication.wal import Transaction

_U32 = struct.Struct(">I")


def bootstrap(primary: apsw.Connection, replica_path: str) -> None:
    """Make ``replica_path`` a consistent copy of the primary's database, in rollback mode."""
    target = apsw.Connection(replica_path)
    with target.backup("main", primary, "main") as b:
        while not b.done:
            b.step(-1)
    target.execute("pragma journal_mode=delete").fetchall()
    target.close()


class Replica:
    """A replica file and the connection that holds its lock while a transaction is applied."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = apsw.Connection(path)
        mode = self.conn.execute("pragma journal_mode").fetchall()[0][0]
        if mode == "wal":
            raise ValueError(f"{path} is in WAL mode: a replica file must use a rollback journal")
        # One descriptor for the replica's life: closing any descriptor of a file drops every
        # POSIX lock this process holds on it, SQLite's exclusive lock included.
        self.fd = os.open(path, os.O_RDWR)

    def apply(self, tx: Transaction) -> None:
        conn = self.conn
        fd = self.fd
        conn.execute("begin exclusive").fetchall()  # SQLite takes the file's exclusive lock
        try:
            page_size = len(tx.pages[0].data) if tx.pages else self._page_size(fd)
            for page in tx.pages:
                os.pwrite(fd, page.data, (page.number - 1) * page_size)
            os.ftruncate(fd, tx.db_size * page_size)
            header = bytearray(os.pread(fd, 100, 0))
            header[18] = header[19] = 1  # file format: legacy (rollback journal), not WAL
            counter = (_U32.unpack_from(header, 24)[0] + 1) & 0xFFFFFFFF
            _U32.pack_into(header, 24, counter)     # file change counter
            _U32.pack_into(header, 28, tx.db_size)  # database size in pages …
            _U32.pack_into(header, 92, counter)     # … valid for this change counter
            os.pwrite(fd, bytes(header), 0)
            os.fsync(fd)
        finally:
            conn.execute("commit").fetchall()

    @staticmethod
    def _page_size(fd: int) -> int:
        raw = os.pread(fd, 2, 16)
        size = struct.unpack(">H", raw)[0]
        return 65536 if size == 1 else size

    def close(self) -> None:
        self.conn.close()
        os.close(self.fd)
