"""Replicas of an mvsqlite database: the replication log, read from FDB's change log.

A replica follows a sqld primary through the replication sub-protocol
(``sqld/replication/sender.py``), which reads a *capture*: a log of committed transactions
as page images. On the libsql backend that log is a file fed from the WAL. Here the page
store already has one, shared by every sqld process on the database: the change log
(``P l <versionstamp>``, which pages each commit changed). So a replica of any of those
processes sees every process's commits, in FDB's commit order:

* a frame number is an FDB commit version (monotonic, never reused);
* a transaction is a change-log entry: its pages read at its commit version (bounded
  index reads), and the database size from page 1 as of then;
* the generation is the database's own (made when it was created, in ``P m``);
* frames older than the GC horizon are gone: the replica bootstraps from a snapshot, a
  pinned read-only connection at the last commit (``MvsqliteBackend.open_at``).

Other processes' commits are found by polling the change log (``poll_interval``); this
process's own wake the senders at once.
"""

from __future__ import annotations

import struct

from sqld.backends.mvsqlite.pagestore import PageStore, _decode_pages, version_of, vs_bound
from sqld.replication.log import LoggedTransaction, LogError, SnapshotNeeded
from sqld.replication.wal import Page

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class ChangeLog:
    """The ``log`` a sender reads (the interface of ``replication.log.FrameLog``)."""

    def __init__(self, store: PageStore) -> None:
        self.store = store
        self.generation = store.generation
        self.page_size = store.page_size

    @property
    def last_commit(self) -> int:
        st = self.store
        tr = st.db.create_transaction()
        rows = tr.get_range(st.k_log(), st.k_log() + b"\xff", limit=1, reverse=True, snapshot=True)
        st.stats.reads += 1
        return version_of(rows[0][0][-10:]) if rows else 0

    def _horizon(self, tr) -> int:
        raw = tr.get(self.store.k_horizon(), snapshot=True)
        self.store.stats.reads += 1
        return _U64.unpack(raw)[0] if raw else 0

    def since(self, frame: int):
        st = self.store
        tr = st.db.create_transaction()
        horizon = self._horizon(tr)
        if frame < horizon:
            raise SnapshotNeeded(f"the change log up to version {horizon} was collected")
        rows = tr.get_range(st.k_log() + vs_bound(frame), st.k_log() + b"\xff", limit=512, snapshot=True)
        st.stats.reads += 1
        if frame and not rows and frame > self.last_commit:
            raise LogError(f"frame {frame} is ahead of this database's change log: another history?")
        for key, value in rows:
            version = version_of(key[-10:])
            numbers = _decode_pages(value)
            snap = st.snapshot(version)
            try:
                size = snap.page_count()
                if numbers is None:  # a commit too large to list: send every page
                    numbers = range(1, size + 1)
                pages = tuple(Page(n, snap.read_page(n)) for n in sorted(numbers) if n <= size)
            finally:
                snap.close()
            yield LoggedTransaction(version, size, pages)


class ChangeLogCapture:
    """What the sender needs of a capture, for an mvsqlite database."""

    poll_interval = 0.02  # seconds between looks at the change log for other processes' commits
    broken = False

    def __init__(self, store: PageStore) -> None:
        self.log = ChangeLog(store)
        self.listeners: list = store.listeners

    def commit_time(self, frame: int) -> float:
        return 0.0
