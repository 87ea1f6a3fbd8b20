"""The apsw VFS that puts a SQLite database's pages in the page store.

SQLite runs in rollback-journal mode with the journal in memory (``journal_mode=MEMORY``):
the VFS sees the main database file only. Mapping SQLite's file calls:

* ``xLock(SHARED)`` from no lock begins a *snapshot* (one FDB read version) and
  ``xUnlock(NONE)`` ends it: one SQL transaction, one snapshot;
* ``xRead`` reads pages at the snapshot; ``xWrite`` buffers them; ``xTruncate`` too;
* ``xSync`` commits the buffered pages (SQLite syncs the database file exactly once, at
  COMMIT, when ``synchronous`` is not OFF); a failed commit raises, SQLite answers the COMMIT
  with an I/O error and rolls back, and ``last_commit_error`` (per thread) says why;
* no file locks: writers of different processes (and connections of one) meet in FDB's
  conflict detection instead.

Page 1 carries SQLite's file change counter (bytes 24-27, and 92-95), which SQLite rewrites
at every commit: stored as is, every pair of writers would conflict on page 1. The VFS
stores those bytes as zero and hands each connection a *virtual* counter on read, bumped
whenever the snapshot differs from the one the connection saw last (and never equal to
the value SQLite wrote itself), which is also what makes SQLite drop its page cache when
another process committed.
"""

from __future__ import annotations

import struct
import threading

import apsw
import attrs

from sqld.backends.mvsqlite.pagestore import (CommitFailed, PageMissing, PageStore, Snapshot, SnapshotTooOld,
                                               StoreUnavailable)

_U32 = struct.Struct(">I")
_local = threading.local()


def last_commit_error() -> CommitFailed | SnapshotTooOld | StoreUnavailable | PageMissing | None:
    """Why this thread's last failed SQLite call failed in the page store, if it did."""
    return getattr(_local, "error", None)


def clear_commit_error() -> None:
    _local.error = None


def opened_file() -> "PageFile | None":
    """The main database file this thread opened last (SQLite opens it when a connection
    is made): how a backend finds the file of the connection it just made."""
    return getattr(_local, "opened", None)


class PageStoreVFS(apsw.VFS):
    """A VFS named ``name`` whose main database files are the page store ``store``; every
    other file (temp files) goes to the default VFS."""

    def __init__(self, name: str, store: PageStore, pinned: int | None = None) -> None:
        self.vfs_name = name
        self.store = store
        self.pinned = pinned  # a time-travel VFS: every snapshot at this version
        super().__init__(name, "")

    def xOpen(self, name, flags):
        if flags[0] & apsw.SQLITE_OPEN_MAIN_DB:
            flags[1] = flags[0]
            _local.opened = PageFile(self.store, self.pinned)
            return _local.opened
        return super().xOpen(name, flags)

    def xAccess(self, pathname, flags) -> bool:
        # No journal or WAL files ever exist beside a page-store database.
        if str(pathname).endswith(("-journal", "-wal", "-shm")):
            return False
        return super().xAccess(pathname, flags)

    def xDelete(self, filename, syncdir) -> None:
        if str(filename).endswith(("-journal", "-wal", "-shm")):
            return
        super().xDelete(filename, syncdir)

    def xFullPathname(self, name) -> str:
        return name


@attrs.define(eq=False)
class PageFile:
    """The main database file of one SQLite connection."""

    store: PageStore
    pinned: int | None = None
    page_size: int = attrs.field(init=False)
    snap: Snapshot | None = attrs.field(init=False, default=None)
    lock: int = attrs.field(init=False, default=apsw.SQLITE_LOCK_NONE)
    counter: int = attrs.field(init=False, default=0)  # the virtual change counter handed out last
    written: int = attrs.field(init=False, default=0)  # the counter SQLite wrote at its last commit
    seen: int = attrs.field(init=False, default=-1)    # the snapshot state (last change) the counter belongs to
    size: int | None = attrs.field(init=False, default=None)  # pages, as this transaction sees them
    # After a failed commit SQLite rolls back, writing the transaction's original pages
    # back and syncing: those must never become a commit (they are images of an older
    # snapshot). Writes and syncs are dropped until the lock falls to SHARED or NONE.
    failed: bool = attrs.field(init=False, default=False)
    # Pages handed to SQLite since it last dropped its page cache (at a new virtual
    # counter): it may serve any of them again without a read, so a commit counts them
    # as read (issue 10, defect 4).
    cached: set[int] = attrs.field(init=False, factory=set, repr=False)
    follow: Snapshot | None = attrs.field(init=False, default=None)  # the next snapshot, continuing another's (backend)

    @page_size.default
    def _page_size(self) -> int:
        return self.store.page_size

    # -- snapshot ---------------------------------------------------------------------------

    def _snapshot(self) -> Snapshot:
        if self.snap is None:
            if self.follow is not None:
                self.snap, self.follow = self.follow, None
            else:
                self.snap = self.store.snapshot(self.pinned)
            self.size = None
        return self.snap

    def _end(self) -> None:
        if self.snap is not None:
            self.snap.close()
            self.snap = None
        self.size = None

    def _pages(self) -> int:
        if self.size is None:
            self.size = self._snapshot().page_count()
        return self.size

    # -- SQLite's file methods --------------------------------------------------------------

    def xLock(self, level: int) -> None:
        if self.lock == apsw.SQLITE_LOCK_NONE and level >= apsw.SQLITE_LOCK_SHARED:
            self._end()
            self._snapshot()
        self.lock = max(self.lock, level)

    def xUnlock(self, level: int) -> None:
        if level < apsw.SQLITE_LOCK_RESERVED:
            self.failed = False
            if self.snap is not None and self.snap.dirty:
                self.snap.dirty.clear()  # never synced: a rollback
        if level == apsw.SQLITE_LOCK_NONE:
            self._end()
        self.lock = level

    def xCheckReservedLock(self) -> bool:
        return False

    def xRead(self, amount: int, offset: int) -> bytes:
        try:
            snap = self._snapshot()
            ps = self.page_size
            first = offset // ps + 1
            last = (offset + amount - 1) // ps + 1
            pages = self._pages()
            out = bytearray()
            for pgno in range(first, min(last, pages) + 1):
                data = snap.read_page(pgno)
                if pgno == 1:
                    data = self._virtual_page1(snap, data)
                self.cached.add(pgno)
                out += data
            start = offset - (first - 1) * ps
            return bytes(out[start : start + amount])  # short past the end: SQLite zero-fills
        except Exception as exc:
            raise _failed(exc) from exc

    def _virtual_page1(self, snap: Snapshot, data: bytes) -> bytes:
        state = snap.last_change
        if state != self.seen:
            self.seen = state
            self.counter = (max(self.counter, self.written) + 1) & 0xFFFFFFFF
            self.cached = set()  # SQLite drops its page cache at a new counter
        page = bytearray(data)
        _U32.pack_into(page, 24, self.counter)
        _U32.pack_into(page, 92, self.counter)
        return bytes(page)

    def xWrite(self, data: bytes, offset: int) -> None:
        if self.failed:
            return
        snap = self._snapshot()
        ps = self.page_size
        if offset % ps or len(data) % ps:
            raise apsw.IOError(f"unaligned write of {len(data)} bytes at {offset} (pages are {ps} bytes)")
        for i in range(0, len(data), ps):
            pgno = (offset + i) // ps + 1
            page = data[i : i + ps]
            if pgno == 1:
                page = bytearray(page)
                self.written = _U32.unpack_from(page, 24)[0]
                page[24:28] = page[92:96] = b"\x00\x00\x00\x00"  # stored neutral
                page = bytes(page)
            snap.write_page(pgno, page)
            if self.size is not None and pgno > self.size:
                self.size = pgno

    def xTruncate(self, newsize: int) -> None:
        if self.failed:
            return
        snap = self._snapshot()
        pages = newsize // self.page_size
        old = self._pages()
        if pages < old:
            snap.truncate(pages, old)
        self.size = pages

    def xSync(self, flags: int) -> None:
        snap = self.snap
        if snap is None or not snap.dirty or self.failed:
            return
        try:
            snap.note_read(self.cached)
            snap.commit()
        except Exception as exc:
            snap.dirty.clear()
            self.failed = True
            self._end()  # its FDB transaction is spent; whatever SQLite reads next, afresh
            self._snapshot()
            raise _failed(exc) from exc
        snap.dirty.clear()
        # Later reads in this transaction (SQLite may read after syncing) start afresh.
        self._end()
        self._snapshot()

    def xFileSize(self) -> int:
        try:
            return self._pages() * self.page_size
        except Exception as exc:
            raise _failed(exc) from exc

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return self.page_size

    def xDeviceCharacteristics(self) -> int:
        return apsw.SQLITE_IOCAP_SAFE_APPEND | apsw.SQLITE_IOCAP_SEQUENTIAL

    def xClose(self) -> None:
        self._end()


def _failed(exc: Exception) -> apsw.IOError:
    """Remember why (for the connection to tell the client), and answer SQLite an I/O error."""
    previous = getattr(_local, "error", None)
    if isinstance(previous, StoreUnavailable) and previous.unknown:
        # SQLite's rollback after a commit whose outcome is unknown meets the same dead
        # cluster: the client must hear about the commit, not about the rollback's read.
        return apsw.IOError(str(exc))
    _local.error = exc if isinstance(exc, (SnapshotTooOld, CommitFailed, StoreUnavailable, PageMissing)) else CommitFailed(
        f"{type(exc).__name__}: {exc}", getattr(exc, "code", None) and exc, retryable=False)
    return apsw.IOError(str(exc))
