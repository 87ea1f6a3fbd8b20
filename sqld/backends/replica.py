"""The replica backend: read-only connections on the local copy of the primary's database.

The file is in rollback-journal mode and only the replication applier writes it (see
``sqld.replication.apply``); every connection here is opened read-only. There is no
writer: ``writer()`` answers a read-only connection too, which the scheduler (built with
``read_only=True``) never asks to write.
"""

from __future__ import annotations

import logging
import os
import time
import weakref

import apsw

from sqld.backends.libsql import LibsqlConnection

log = logging.getLogger(__name__)


class ReplicaBackend:
    name = "replica"

    def __init__(self, path: str | os.PathLike, *, foreign_keys: bool = True, busy_timeout_ms: int = 30000) -> None:
        self.path = path
        self.foreign_keys = foreign_keys
        self.busy_timeout_ms = busy_timeout_ms
        self.capture = None
        self._writer: LibsqlConnection | None = None
        # Weak: readers the scheduler drops (drop_readers) are gone once closed.
        self._readers: weakref.WeakSet[LibsqlConnection] = weakref.WeakSet()

    def _connect(self) -> LibsqlConnection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.execute(f"pragma foreign_keys={'on' if self.foreign_keys else 'off'}").fetchall()
        wrapped = LibsqlConnection(conn, readonly=True)
        limit = self.busy_timeout_ms / 1000

        def busy(attempts: int) -> bool:
            # Readers wait while a transaction is applied under the exclusive lock — on a
            # worker thread only: an inline run (on the event loop) gives up at once and is
            # run again on a thread (LibsqlConnection turns that into BudgetExceeded).
            if wrapped._budget is not None:
                return False
            delay = min(0.0005 * (2 ** min(attempts, 7)), 0.05)
            if attempts * 0.05 > limit:
                return False
            time.sleep(delay)
            return True

        conn.set_busy_handler(busy)
        return wrapped

    def open(self) -> None:
        self._writer = self._connect()
        log.info("serving replica %s (read-only)", self.path)

    def writer(self) -> LibsqlConnection:
        assert self._writer is not None, "backend not open"
        return self._writer

    def open_reader(self) -> LibsqlConnection:
        reader = self._connect()
        self._readers.add(reader)
        return reader

    def close(self) -> None:
        for r in list(self._readers):
            r.close()
        self._readers.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

