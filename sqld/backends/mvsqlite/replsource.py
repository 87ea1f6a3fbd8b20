"""Replicas of an mvsqlite database: the replication log, read from FDB's change log.

A replica follows a sqld primary through the replication sub-protocol
(``sqld/replication/sender.py``), which reads a *capture*: a log of committed transactions
as page images. On the libsql backend that log is a file fed from the WAL. Here the page
store already has one, shared by every sqld process on the database: the change log
(``P l <versionstamp>``, which pages each commit changed). So a replica of any of those
processes sees every process's commits, in FDB's commit order:

* a frame number is an FDB commit version (monotonic, never reused);
* a transaction is every change-log entry of one commit version: its pages read at that
  version (bounded index reads), and the database size from page 1 as of then. Commits of
  one proxy batch share the 8-byte commit version and differ only in the 2 order bytes of
  their versionstamps; no read version falls between them (FDB answers read versions of
  whole batches), so the version names one database state, and the batch is one frame:
  a replica at frame V has all of it (issue 10, defect 8). The wire's u64 frame and the
  replica's saved position stay the commit version;
* the generation is the database's own (made when it was created, in ``P m``);
* frames older than the GC horizon are gone: the replica bootstraps from a snapshot, a
  pinned read-only connection at the last commit (``MvsqliteBackend.open_at``). The horizon
  is read in the FDB transaction that reads the pages (and again in any later one), so a
  frame is sent whole or ``SnapshotNeeded`` is raised, never pages GC took away.

Other processes' commits are found by polling the change log (``poll_interval``); this
process's own wake the senders at once.
"""

from __future__ import annotations

import struct

import attrs

from sqld.backends.mvsqlite.pagestore import PageStore, Snapshot, SnapshotTooOld, _decode_pages, version_of, vs_bound
from sqld.replication.log import LoggedTransaction, LogError, SnapshotNeeded
from sqld.replication.wal import Page

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@attrs.define(eq=False)
class ChangeLog:
    """The ``log`` a sender reads (the interface of ``replication.log.FrameLog``)."""

    store: PageStore
    generation: bytes = attrs.field(init=False)  # the store's, when this log was made
    page_size: int = attrs.field(init=False)

    @generation.default
    def _generation(self) -> bytes:
        return self.store.generation

    @page_size.default
    def _page_size(self) -> int:
        return self.store.page_size

    @property
    def last_commit(self) -> int:
        st = self.store
        tr = st.db.create_transaction()
        rows = tr.get_range(st.k_log(), st.k_log() + b"\xff", limit=1, reverse=True, snapshot=True)
        st.stats.reads += 1
        return version_of(rows[0][0][-10:]) if rows else 0

    def since(self, frame: int):
        st = self.store
        tr = st.db.create_transaction()
        raw = tr.get(st.k_horizon(), snapshot=True)
        st.stats.reads += 1
        horizon = _U64.unpack(raw)[0] if raw else 0
        if frame < horizon:
            raise SnapshotNeeded(f"the change log up to version {horizon} was collected")
        rows = tr.get_range(st.k_log() + vs_bound(frame), st.k_log() + b"\xff", limit=512, snapshot=True)
        st.stats.reads += 1
        if len(rows) == 512:
            # Cut by the limit: the last version's batch may go on past it. Read the rest of it,
            # or a replica that stops at that frame would never get them.
            last = version_of(rows[-1][0][-10:])
            rows += tr.get_range(rows[-1][0] + b"\x00", st.k_log() + vs_bound(last), snapshot=True)
            st.stats.reads += 1
        if frame and not rows and frame > self._last_commit(tr):
            raise LogError(f"frame {frame} is ahead of this database's change log: another history?")
        batches: dict[int, set[int] | None] = {}  # commit version -> pages (None: every page)
        for key, value in rows:
            version = version_of(key[-10:])
            numbers = _decode_pages(value)
            pages = batches.setdefault(version, set())
            if numbers is None or pages is None:
                batches[version] = None
            else:
                pages.update(numbers)
        for version, numbers in batches.items():
            # Pages read at the version, in this FDB transaction (the horizon above holds for
            # it) or, past FDB's 5 s, in fresh ones that read the horizon again.
            snap = Snapshot(st, pinned=version, tr=tr, horizon_read=True)
            try:
                size = snap.page_count()
                if numbers is None:  # a commit too large to list: send every page
                    numbers = range(1, size + 1)
                pages = tuple(Page(n, snap.read_page(n)) for n in sorted(numbers) if n <= size)
            except SnapshotTooOld as exc:
                raise SnapshotNeeded(str(exc)) from None
            tr = snap.tr
            yield LoggedTransaction(version, size, pages)

    def _last_commit(self, tr) -> int:
        rows = tr.get_range(self.store.k_log(), self.store.k_log() + b"\xff", limit=1, reverse=True, snapshot=True)
        self.store.stats.reads += 1
        return version_of(rows[0][0][-10:]) if rows else 0


class ChangeLogCapture:
    """What the sender needs of a capture, for an mvsqlite database."""

    poll_interval = 0.02  # seconds between looks at the change log for other processes' commits
    broken = False

    def __init__(self, store: PageStore) -> None:
        self.log = ChangeLog(store)
        self.listeners: list = store.listeners

    def commit_time(self, frame: int) -> float:
        return 0.0
