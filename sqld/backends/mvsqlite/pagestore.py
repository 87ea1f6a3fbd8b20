"""SQLite pages in FoundationDB, versioned: the key layout, snapshot reads, commits, GC.

Key layout under a database's prefix ``P`` (docs/mvsqlite.md says why):

* ``P m``                          → meta: page size
* ``P c <sha-256>``                → page content (content-addressed: immutable, written
  idempotently, so a large transaction can stage its pages in many small FDB transactions
  before one small commit makes them visible)
* ``P i <pgno u32> <versionstamp>`` → the hash of page ``pgno`` as of that commit (b"" for a
  page cut off by a truncate): **versioned pages**; a snapshot at version V reads the newest
  entry at or below V
* ``P l <versionstamp>``            → the change log: which pages that commit changed (and
  its commit id), so a process-wide cache of page → hash stays valid across transactions
* ``P x <commit id>``               → a commit's idempotence marker (``commit_unknown_result``)
* ``P s <commit id> <sha-256>``     → contents staged for a large commit not made yet
* ``P w``                          → written by every commit (GC of contents conflicts with it)
* ``P g``                          → the GC horizon: no snapshot older may read

A versionstamp is the commit version (8 bytes, big-endian) and 2 bytes of order: keys of
one page sort by commit version. Conflicts are on whole pages: a writer adds a read-conflict
range over the index range of every page it read, and a read- and write-conflict range over
every page it writes, so two writers that touched a common page cannot both commit (FDB
answers 1020), and writers of disjoint pages commit concurrently.
"""

from __future__ import annotations

import hashlib
import os
import struct
import bisect
import collections
import threading
import time

import attrs

from sqld.backends.mvsqlite import fdbport as f
from sqld.backends.mvsqlite.fdbport import FDBError, strinc

_PGNO = struct.Struct(">I")
_VERSION = struct.Struct(">Q")
INCOMPLETE = b"\xff" * 10  # the versionstamp placeholder, replaced at commit
STAGE_BATCH = 2_000_000    # bytes of page content per staging FDB transaction
SINGLE_PHASE_LIMIT = 4_000_000  # above this, stage the content first (multi-phase commit)
RESYNC_VERSIONS = 60 * f.VERSIONS_PER_SECOND  # a cache this far behind starts over
EVERYTHING = b"*"  # a change-log entry of a commit too large to list its pages: all changed
LIST_LIMIT = 20_000  # pages a change-log entry lists at most (4 bytes each, under FDB's value limit)
STAGING_TTL = 3600  # seconds GC keeps contents staged for a commit that has not come (yet)


def vs_bound(version: int) -> bytes:
    """The smallest versionstamp after every versionstamp of ``version``."""
    return _VERSION.pack(version + 1) + b"\x00\x00"


def version_of(versionstamp: bytes) -> int:
    return _VERSION.unpack_from(versionstamp)[0]


class SnapshotTooOld(Exception):
    """The snapshot is older than the GC horizon: its pages may be gone."""


class CommitFailed(Exception):
    """The commit did not happen (conflict, limit, unknown result resolved as not committed)."""

    def __init__(self, message: str, error: FDBError | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.error = error
        self.retryable = retryable


@attrs.define
class Stats:
    reads: int = 0        # get / get_range round trips
    commits: int = 0      # commit round trips
    grv: int = 0          # read versions obtained
    cache_hits: int = 0


@attrs.define(eq=False)
class _Entry:
    hash: bytes
    since: int            # the commit version of this page image
    end: int | None = None  # the commit version that replaced it (None: still current)


class PageCache:
    """Process-wide: page → hash entries kept valid by reading the change log, and page
    contents by hash (immutable, LRU-bounded)."""

    def __init__(self, max_contents: int = 20_000) -> None:
        self.lock = threading.RLock()
        self.version = 0  # the change log has been read up to here
        self.commits: list[int] = []  # recent commit versions, ascending (the log's keys)
        self.entries: dict[int, _Entry] = {}
        self.contents: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self.max_contents = max_contents

    def advance(self, version: int, log: list[tuple[int, list[int]]]) -> None:
        """The change log entries (commit version, pages) in (self.version, version]."""
        with self.lock:
            if version <= self.version:
                return
            for commit, pages in log:
                if pages is None:  # everything changed
                    for pgno, e in list(self.entries.items()):
                        if e.since < commit:
                            del self.entries[pgno]
                    pages = ()
                for pgno in pages:
                    e = self.entries.get(pgno)
                    if e is not None and e.end is None and e.since < commit:
                        e.end = commit
                if not self.commits or commit > self.commits[-1]:
                    self.commits.append(commit)
            if len(self.commits) > 20_000:
                del self.commits[:10_000]
            self.version = version

    def restart(self, version: int, last_change: int) -> None:
        """Forget every entry: the log between is not read (too long)."""
        with self.lock:
            if version <= self.version:
                return
            self.entries.clear()
            self.commits = [last_change] if last_change else []
            self.version = version

    def last_change_at(self, at: int) -> int:
        """The newest commit at or below ``at`` (``at`` itself when that is not known here,
        which only ever makes a reader drop its cache)."""
        with self.lock:
            if at > self.version:
                return at
            i = bisect.bisect_right(self.commits, at)
            if i == 0:
                return at if self.commits else 0
            return self.commits[i - 1]

    def lookup(self, pgno: int, at: int) -> bytes | None:
        if at > self.version:
            return None
        e = self.entries.get(pgno)
        if e is not None and e.since <= at and (e.end is None or at < e.end):
            return e.hash
        return None

    def remember(self, pgno: int, h: bytes, since: int, at: int) -> None:
        """An entry read at snapshot ``at``: cacheable only if the log was read up to ``at``
        exactly (its end is unknown otherwise)."""
        with self.lock:
            if at == self.version:
                e = self.entries.get(pgno)
                if e is None or e.end is not None or e.since <= since:
                    self.entries[pgno] = _Entry(h, since)
            if len(self.entries) > 200_000:
                self.entries.clear()

    def own_commit(self, pages: dict[int, bytes], commit: int) -> None:
        """This process committed these pages at ``commit``: valid from there on, unless the
        cache already knows more. An entry never moves back (issue 10, defect 5): another
        thread may have read the change log past ``commit`` and cached a newer image."""
        with self.lock:
            for pgno, h in pages.items():
                e = self.entries.get(pgno)
                if e is not None and e.since >= commit:
                    continue  # a newer image (another process's later commit) is cached
                if commit <= self.version:
                    # The log was read past this commit by another thread: a later change of
                    # the page may be in what it read, and this entry would not be ended.
                    continue
                self.entries[pgno] = _Entry(h, commit)

    def content(self, h: bytes) -> bytes | None:
        with self.lock:
            data = self.contents.get(h)
            if data is not None:
                self.contents.move_to_end(h)  # least recently used goes first
            return data

    def keep(self, h: bytes, data: bytes) -> None:
        with self.lock:
            self.contents[h] = data
            self.contents.move_to_end(h)
            while len(self.contents) > self.max_contents:
                self.contents.popitem(last=False)


class PageStore:
    """One database in FDB: ``snapshot()`` gives a transaction's view of it."""

    def __init__(self, db: f.Database, prefix: bytes, page_size: int = 4096, cache: PageCache | None = None) -> None:
        self.db = db
        self.prefix = prefix
        self.cache = cache or PageCache()
        self.stats = Stats()
        self.listeners: list = []  # called after each commit this process makes
        self.page_size, self.generation = self._meta(page_size)
        self.zero = bytes(self.page_size)

    # -- keys -------------------------------------------------------------------------------

    def k_meta(self) -> bytes:
        return self.prefix + b"m"

    def k_content(self, h: bytes) -> bytes:
        return self.prefix + b"c" + h

    def k_index(self, pgno: int) -> bytes:
        return self.prefix + b"i" + _PGNO.pack(pgno)

    def k_log(self) -> bytes:
        return self.prefix + b"l"

    def k_marker(self, commit_id: bytes) -> bytes:
        return self.prefix + b"x" + commit_id

    def k_horizon(self) -> bytes:
        return self.prefix + b"g"

    def k_staging(self, commit_id: bytes) -> bytes:
        return self.prefix + b"s" + commit_id

    # -- plumbing ---------------------------------------------------------------------------

    def run(self, fn, attempts: int = 20):
        """Run ``fn(tr)`` in a transaction, retrying FDB's retryable errors."""
        tr = self.db.create_transaction()
        for _ in range(attempts):
            try:
                result = fn(tr)
                tr.commit()
                self.stats.commits += 1
                return result
            except FDBError as exc:
                tr.on_error(exc)
        raise FDBError(f.NOT_COMMITTED, "gave up after repeated conflicts")

    def _meta(self, page_size: int) -> tuple[int, bytes]:
        """The page size and the database's generation (a random id made at creation:
        replicas of a database made again under the same prefix see another history)."""
        def go(tr):
            raw = tr.get(self.k_meta())
            self.stats.reads += 1
            if raw is None:
                generation = os.urandom(16)
                tr.set(self.k_meta(), _PGNO.pack(page_size) + generation)
                return page_size, generation
            return _PGNO.unpack_from(raw)[0], raw[4:20]

        return self.run(go)

    def snapshot(self, version: int | None = None) -> "Snapshot":
        return Snapshot(self, pinned=version)

    def continuation(self, of: "Snapshot", pages) -> "Snapshot":
        """A snapshot for a write that continues the read transaction ``of`` (another
        connection's, still open): at its FDB read version, with a read-conflict range on
        each of ``pages`` (what it read), so the commit fails with 1020 if another process
        changed any of them since (issue 10, defect 4)."""
        snap = Snapshot(self)
        snap.version = of.version
        snap.tr.set_read_version(of.version)
        snap.hashes = dict(of.hashes)
        snap.note_read(pages)
        return snap

    def current_version(self) -> int:
        tr = self.db.create_transaction()
        self.stats.grv += 1
        return tr.get_read_version()

    # -- garbage collection -----------------------------------------------------------------

    def k_written(self) -> bytes:
        return self.prefix + b"w"

    def gc(self, horizon: int) -> dict:
        """Drop what no snapshot at or after ``horizon`` can read: page versions replaced at
        or before it and change-log entries up to it (both safe beside concurrent commits,
        which only add newer keys); then page contents no index entry names, in one FDB
        transaction that conflicts with any commit since its scan began (every commit writes
        ``P w``), so a content a concurrent commit references is never dropped."""
        removed = {"versions": 0, "log": 0, "contents": 0}
        self.run(lambda tr: tr.set(self.k_horizon(), _VERSION.pack(horizon)))
        start, end = self.prefix + b"i", self.prefix + b"j"
        while True:
            rows = self.run(lambda tr, start=start: list(tr.get_range(start, end, limit=5000, snapshot=True)))
            if not rows:
                break
            by_page: dict[bytes, list[bytes]] = {}
            for k, _ in rows:
                if version_of(k[-10:]) <= horizon:
                    by_page.setdefault(k[:-10], []).append(k)
            doomed = [k for keys in by_page.values() for k in keys[:-1]]  # all but the newest ≤ horizon
            if doomed:
                def clear(tr, doomed=doomed):
                    for k in doomed:
                        tr.clear(k)
                self.run(clear)
                removed["versions"] += len(doomed)
            start = rows[-1][0] + b"\x00"

        def drop_log(tr):
            n = len(tr.get_range(self.k_log(), self.k_log() + vs_bound(horizon), snapshot=True))
            tr.clear_range(self.k_log(), self.k_log() + vs_bound(horizon))
            return n

        removed["log"] = self.run(drop_log)

        def drop_contents(tr):
            tr.get(self.k_written())  # any commit after this read version: conflict, retry
            referenced = {v for _, v in tr.get_range(self.prefix + b"i", self.prefix + b"j", snapshot=True)}
            old = int(time.time()) - STAGING_TTL
            for k, stamp in tr.get_range(self.prefix + b"s", self.prefix + b"t", snapshot=True):
                if _VERSION.unpack(stamp)[0] >= old:
                    referenced.add(k[-32:])  # staged for a commit that may still come
                else:
                    tr.clear(k)  # a large commit that never came
            unused = [k for k, _ in tr.get_range(self.prefix + b"c", self.prefix + b"d", snapshot=True)
                      if k[len(self.prefix) + 1 :] not in referenced]
            for k in unused:
                tr.clear(k)
            return len(unused)

        removed["contents"] = self.run(drop_contents, attempts=100)
        return removed


class Snapshot:
    """One SQL transaction's view: reads at one version; writes buffered until ``commit``.

    Reads go through an FDB transaction at the snapshot's read version; a read-only view
    older than FDB's 5 s window continues on a fresh FDB transaction with every read
    bounded at its version (the versioned keys make that exact), unless the GC horizon
    passed it. A view with writes that grows too old cannot commit (1007).
    """

    def __init__(self, store: PageStore, pinned: int | None = None) -> None:
        self.store = store
        self.tr = store.db.create_transaction()
        self.pinned = pinned
        self.version: int | None = pinned
        self.read_pages: set[int] = set()
        self.hashes: dict[int, bytes] = {}  # pages read: their hash at this snapshot
        self.dirty: dict[int, bytes] = {}  # b"": cut off by a truncate

    # -- reading ----------------------------------------------------------------------------

    def _begin(self) -> int:
        if self.version is not None:
            return self.version
        st = self.store
        rv = self.tr.get_read_version()
        st.stats.grv += 1
        self.version = rv
        cache = st.cache
        if cache.version < rv:
            if cache.version == 0 or rv - cache.version > RESYNC_VERSIONS:
                # A new process, or one far behind: not the whole log since, only its newest
                # entry (for the virtual change counter); what the cache holds is dropped.
                rows = self._read(lambda tr: tr.get_range(st.k_log(), st.k_log() + vs_bound(rv), limit=1,
                                                          reverse=True, snapshot=True))
                cache.restart(rv, version_of(rows[0][0][-10:]) if rows else 0)
            else:
                rows = self._read(lambda tr: tr.get_range(st.k_log() + vs_bound(cache.version),
                                                          st.k_log() + vs_bound(rv), snapshot=True))
                cache.advance(rv, [(version_of(k[-10:]), _decode_pages(v)) for k, v in rows])
        return rv

    def _read(self, fn):
        st = self.store
        while True:
            try:
                st.stats.reads += 1
                return fn(self.tr)
            except FDBError as exc:
                if exc.code != f.TRANSACTION_TOO_OLD or self.dirty or self.version is None:
                    raise
                # A read-only view past FDB's window: read on at the same version.
                self._check_horizon()
                self.tr = st.db.create_transaction()
                self.pinned = self.version

    def _check_horizon(self) -> None:
        st = self.store
        tr = st.db.create_transaction()
        raw = tr.get(st.k_horizon())
        st.stats.reads += 1
        if raw is not None and _VERSION.unpack(raw)[0] > (self.version or 0):
            raise SnapshotTooOld(f"snapshot at version {self.version} is older than the GC horizon")

    @property
    def last_change(self) -> int:
        """The newest commit at or below this snapshot: another value means another state."""
        at = self._begin()
        return self.store.cache.last_change_at(at) if self.pinned is None else at

    def read_page(self, pgno: int) -> bytes:
        """Page ``pgno`` as this transaction sees it (its own writes first); zeros if none."""
        if pgno in self.dirty:
            return self.dirty[pgno] or self.store.zero
        at = self._begin()
        st = self.store
        h = self.hashes.get(pgno)
        if h is None:
            h = st.cache.lookup(pgno, at) if self.pinned is None else None
            if h is not None:
                st.stats.cache_hits += 1
            else:
                start = st.k_index(pgno)
                rows = self._read(lambda tr: tr.get_range(start, start + vs_bound(at), limit=1, reverse=True,
                                                          snapshot=True))
                if rows:
                    k, h = rows[0]
                    if self.pinned is None:
                        st.cache.remember(pgno, h, version_of(k[-10:]), at)
                else:
                    h = b""
            self.hashes[pgno] = h
        if pgno not in self.read_pages:
            self.read_pages.add(pgno)
            if self.pinned is None:
                self.tr.add_read_conflict_range(st.k_index(pgno), st.k_index(pgno + 1))
        if not h:
            return st.zero
        data = st.cache.content(h)
        if data is None:
            data = self._read(lambda tr: tr.get(st.k_content(h), snapshot=True))
            if data is None:
                raise SnapshotTooOld(f"page {pgno}'s content is gone (collected?)")
            st.cache.keep(h, data)
        else:
            st.stats.cache_hits += 1
        return data

    def note_read(self, pages) -> None:
        """Pages this transaction may have read without asking the store (SQLite served them
        from its own page cache): they conflict as if read here."""
        st = self.store
        for pgno in pages:
            if pgno not in self.read_pages:
                self.read_pages.add(pgno)
                if self.pinned is None:
                    self.tr.add_read_conflict_range(st.k_index(pgno), st.k_index(pgno + 1))

    def page_count(self) -> int:
        """The database size in pages, from page 1's header (0 for an empty database)."""
        page1 = self.read_page(1)
        if page1 == self.store.zero:
            return 0
        return _PGNO.unpack_from(page1, 28)[0]

    # -- writing ----------------------------------------------------------------------------

    def write_page(self, pgno: int, data: bytes) -> None:
        if len(data) != self.store.page_size:
            raise ValueError(f"page {pgno}: {len(data)} bytes, pages are {self.store.page_size}")
        self.dirty[pgno] = bytes(data)

    def truncate(self, pages: int, old_pages: int) -> None:
        for pgno in [p for p in self.dirty if p > pages]:
            del self.dirty[pgno]
        for pgno in range(pages + 1, old_pages + 1):
            self.dirty[pgno] = b""  # a tombstone: reads give zeros

    def commit(self) -> int | None:
        """Make the writes visible atomically; return the commit version (None: nothing to
        commit). Raises CommitFailed when they did not become visible."""
        st = self.store
        self._begin()
        if self.pinned is not None and self.dirty:
            # Its reads went on in a fresh FDB transaction (past the 5 s window): their
            # conflict ranges are lost, so it cannot commit writes safely.
            raise CommitFailed("the transaction's snapshot is older than FoundationDB allows for a write (5 s)",
                               FDBError(f.TRANSACTION_TOO_OLD))
        changes: dict[int, bytes] = {}
        contents: dict[bytes, bytes] = {}
        for pgno, data in self.dirty.items():
            h = hashlib.sha256(data).digest() if data else b""
            if self.hashes.get(pgno, None) == h:
                continue  # unchanged (page 1 with only its change counter rewritten)
            changes[pgno] = h
            if data:
                contents[h] = data
        if not changes:
            return None
        tr = self.tr
        staged: list[bytes] = []
        commit_id = os.urandom(16)
        if sum(len(d) for d in contents.values()) > SINGLE_PHASE_LIMIT:
            self._stage(contents, commit_id)  # phase one: content in small transactions, invisible
            staged = list(contents)
            contents = {}
        try:
            for h, data in contents.items():
                tr.set(st.k_content(h), data)
            for pgno, h in changes.items():
                lo, hi = st.k_index(pgno), st.k_index(pgno + 1)
                tr.add_read_conflict_range(lo, hi)
                tr.add_write_conflict_range(lo, hi)
                tr.set_versionstamped_key(st.k_index(pgno) + INCOMPLETE, len(lo), h)
            listed = EVERYTHING if len(changes) > LIST_LIMIT else b"".join(_PGNO.pack(p) for p in sorted(changes))
            tr.set_versionstamped_key(st.k_log() + INCOMPLETE, len(st.k_log()), commit_id + listed)
            marker = st.k_marker(commit_id)
            tr.add_read_conflict_range(marker, marker + b"\x00")  # fences a retry's check (below)
            tr.set(marker, b"")
            tr.set(st.k_written(), b"")  # GC of contents conflicts with this commit (PageStore.gc)
            if staged:  # its contents are named by index entries from now on
                tr.clear_range(st.k_staging(commit_id), strinc(st.k_staging(commit_id)))
            tr.commit()
            st.stats.commits += 1
        except FDBError as exc:
            st.stats.commits += 1
            if exc.code == f.COMMIT_UNKNOWN_RESULT:
                version = self._resolve_unknown(commit_id)
                if version is not None:
                    self._committed(changes, contents, version)
                    return version
                raise CommitFailed("the commit did not happen (FoundationDB: commit_unknown_result, resolved)",
                                   exc) from None
            if exc.code in (f.NOT_COMMITTED, f.TRANSACTION_TOO_OLD, f.FUTURE_VERSION):
                raise CommitFailed(str(exc), exc) from None
            raise CommitFailed(str(exc), exc, retryable=False) from None
        version = tr.get_committed_version()
        self._committed(changes, contents, version)
        return version

    def _committed(self, changes, contents, version: int) -> None:
        cache = self.store.cache
        for h, data in contents.items():
            cache.keep(h, data)
        cache.own_commit({p: h for p, h in changes.items()}, version)
        for listener in self.store.listeners:
            listener()

    def _stage(self, contents: dict[bytes, bytes], commit_id: bytes) -> None:
        """Phase one of a large commit: the contents, in FDB transactions of ~2 MB, each with
        a staging record naming them (GC keeps what staging records name, for an hour)."""
        st = self.store
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        stamp = _VERSION.pack(int(time.time()))

        def flush(items):
            def go(tr):
                for h, data in items:
                    tr.set(st.k_content(h), data)
                    tr.set(st.k_staging(commit_id) + h, stamp)
                tr.set(st.k_written(), b"")  # a GC of contents running now conflicts
            st.run(go)

        for h, data in contents.items():
            batch.append((h, data))
            size += len(data) + 40
            if size >= STAGE_BATCH:
                flush(batch)
                batch, size = [], 0
        if batch:
            flush(batch)
        for h, data in contents.items():
            st.cache.keep(h, data)

    def _resolve_unknown(self, commit_id: bytes) -> int | None:
        """Did the commit with this id happen? Writing the marker fences the original: if it
        had not committed yet, it now conflicts and never will."""
        st = self.store
        marker = st.k_marker(commit_id)
        tr = st.db.create_transaction()
        for _ in range(50):
            try:
                raw = tr.get(marker)
                st.stats.reads += 1
                if raw == b"":
                    # Committed: find its version in the change log (the marker has none).
                    rows = tr.get_range(st.k_log() + vs_bound(self.version or 0), st.k_log() + b"\xff",
                                        snapshot=True)
                    st.stats.reads += 1
                    for k, v in rows:
                        if v[:16] == commit_id:
                            return version_of(k[-10:])
                    return tr.get_read_version()
                tr.set(marker, b"aborted")
                tr.commit()
                st.stats.commits += 1
                return None
            except FDBError as exc:
                tr.on_error(exc)
        raise FDBError(f.COMMIT_UNKNOWN_RESULT, "could not resolve an unknown commit result")

    def close(self) -> None:
        try:
            self.tr.cancel()
        except FDBError:
            pass


def _decode_pages(value: bytes) -> list[int] | None:
    """The pages a change-log entry lists; None: every page may have changed."""
    body = value[16:]
    if body == EVERYTHING:
        return None
    return [_PGNO.unpack_from(body, i)[0] for i in range(0, len(body), 4)]

