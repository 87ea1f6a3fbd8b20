"""The replica backend: read-only connections on the local copy of the primary's database.

The file is in rollback-journal mode and only the replication applier writes it (see
``sqld.replication.local_copy``); every connection here is opened read-only. There is no
writer: ``writer()`` answers a read-only connection too, which the scheduler (built with
``read_only=True``) never asks to write.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any

import apsw
import attrs

from sqld.backends import sandbox
from sqld.backends.libsql import LibsqlConnection
from sqld.errors import FeatureNotSupported

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class ReplicaBackend:
    name = "replica"

    path: str | os.PathLike
    foreign_keys: bool = attrs.field(default=True, kw_only=True)
    busy_timeout_ms: int = attrs.field(default=30000, kw_only=True)
    applier_idle: threading.Event | None = attrs.field(default=None, kw_only=True)  # set while the applier holds no lock
    unsafe_sql: bool = attrs.field(default=False, kw_only=True)
    _loop_thread: int = attrs.field(init=False, factory=threading.get_ident)  # opened on the event loop's thread
    capture: Any = attrs.field(init=False, default=None)
    begin_write_after: Any = attrs.field(init=False, default=None)
    backup_source: Any = attrs.field(init=False, default=None)
    _writer: LibsqlConnection | None = attrs.field(init=False, default=None)
    # Weak: readers the scheduler drops (drop_readers) are gone once closed.
    _readers: weakref.WeakSet[LibsqlConnection] = attrs.field(init=False, factory=weakref.WeakSet)

    def _connect(self) -> LibsqlConnection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        conn.execute(f"pragma foreign_keys={'on' if self.foreign_keys else 'off'}").fetchall()
        conn.authorizer = sandbox.authorizer(self.unsafe_sql)
        wrapped = LibsqlConnection(conn, readonly=True)
        limit = self.busy_timeout_ms / 1000

        def busy(attempts: int) -> bool:
            # The lock is the applier's (in this process): wait for its signal, not a backoff
            # that keeps missing the short gaps between applies. An inline run (on the event
            # loop) gives up at once and runs again on a thread (LibsqlConnection turns that
            # into BudgetExceeded); anything else on the loop waits a bounded moment only.
            if wrapped._budget is not None:
                return False
            on_loop = threading.get_ident() == self._loop_thread
            if attempts == 0:
                wrapped._busy_since = time.monotonic()
            waited = time.monotonic() - wrapped._busy_since
            if waited > (0.1 if on_loop else limit):
                return False
            idle = self.applier_idle
            if idle is not None and not idle.is_set():
                idle.wait(0.01)  # woken the moment the apply ends
            else:
                time.sleep(0.0005)  # the applier is still asking for its lock
            return True

        conn.set_busy_handler(busy)
        return wrapped

    def open(self) -> None:
        self._writer = self._connect()
        log.info("serving replica %s (read-only)", self.path)

    def writer(self) -> LibsqlConnection:
        assert self._writer is not None, "backend not open"
        return self._writer

    def open_session_connection(self) -> LibsqlConnection:
        raise FeatureNotSupported("temporary objects and connection settings are not available on a replica",
                                  hint="Connect to the primary for them.")

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

