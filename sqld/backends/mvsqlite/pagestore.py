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
* ``P a <time u64> <commit id>``    → a marker written ``aborted`` (a fence), so GC finds it
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
FENCE_TTL = 3600  # seconds GC keeps an "aborted" marker (its commit was dead 5 s after it began)
GC_CHUNK_KEYS = 2_000  # keys one GC transaction reads at most (far inside FDB's 5 s)
GC_CHUNK_BYTES = 2_000_000  # bytes of page contents one GC transaction reads at most
# The change log (and the markers named in it) outlives the horizon by this much: a page cache
# up to RESYNC_VERSIONS behind reads the log since its version, and a 1021 is resolved within
# seconds by reading its marker.
LOG_MARGIN = RESYNC_VERSIONS + 10 * f.VERSIONS_PER_SECOND
READ_ATTEMPTS = 10  # tries of one read that meets FDB's transient errors (1009, 1037, 1213, …)
PENDING_BYTE = 0x40000000  # SQLite never writes (nor reads) the page holding this offset
MAYBE_COMMITTED = frozenset((f.COMMIT_UNKNOWN_RESULT, f.CLUSTER_VERSION_CHANGED, f.TRANSACTION_TIMED_OUT))


def vs_bound(version: int) -> bytes:
    """The smallest versionstamp after every versionstamp of ``version``."""
    return _VERSION.pack(version + 1) + b"\x00\x00"


def version_of(versionstamp: bytes) -> int:
    return _VERSION.unpack_from(versionstamp)[0]


class SnapshotTooOld(Exception):
    """The snapshot is older than the GC horizon: its pages may be gone."""


class PageMissing(Exception):
    """A page inside the database has no version at the snapshot: the store is damaged (never
    a page of zeros, which SQLite would take for real content)."""


class StoreUnavailable(Exception):
    """FoundationDB did not answer within the transaction timeout (1031), or kept failing with
    a transient error: the statement cannot go on. ``unknown``: it happened during a commit
    whose outcome could not be settled, so the commit may have happened (or may still)."""

    def __init__(self, message: str, error: FDBError | None = None, unknown: bool = False) -> None:
        super().__init__(message)
        self.error = error
        self.unknown = unknown


def describe(db) -> str:
    """How messages name the cluster (the real adapter names its cluster file)."""
    return getattr(db, "description", None) or "FoundationDB"


def unavailable(db, exc: FDBError, unknown: bool = False) -> StoreUnavailable:
    if exc.code == f.TRANSACTION_TIMED_OUT:
        timeout = getattr(db, "transaction_timeout", None)
        within = f" within {timeout:g} s" if timeout else ""
        why = f"{describe(db)} did not answer{within} (transaction_timed_out, 1031): is the cluster up and reachable?"
    else:
        why = f"{describe(db)} kept failing with {exc}: the cluster is overloaded or recovering"
    if unknown:
        why += "; whether the commit happened is unknown"
    return StoreUnavailable(why, exc, unknown)


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


@attrs.define(eq=False, slots=False)  # not slotted: tests replace a method on an instance
class PageCache:
    """Process-wide: page → hash entries kept valid by reading the change log, and page
    contents by hash (immutable, LRU-bounded)."""

    max_contents: int = 20_000
    lock: threading.RLock = attrs.field(init=False, factory=threading.RLock)
    version: int = attrs.field(init=False, default=0)  # the change log has been read up to here
    commits: list[int] = attrs.field(init=False, factory=list)  # recent commit versions, ascending (the log's keys)
    entries: dict[int, _Entry] = attrs.field(init=False, factory=dict, repr=False)
    contents: collections.OrderedDict[bytes, bytes] = attrs.field(init=False, factory=collections.OrderedDict,
                                                                  repr=False)

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
        """Run ``fn(tr)`` in a transaction, retrying FDB's retryable errors (bounded: FDB's
        transaction timeout is not reset by on_error, and ``attempts``). A cluster that does
        not answer is StoreUnavailable."""
        tr = self.db.create_transaction()
        for _ in range(attempts):
            try:
                result = fn(tr)
                tr.commit()
                self.stats.commits += 1
                return result
            except FDBError as exc:
                try:
                    tr.on_error(exc)
                except FDBError as final:
                    if final.code == f.TRANSACTION_TIMED_OUT:
                        raise unavailable(self.db, final) from None
                    raise
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
        """Drop what no snapshot at or after ``horizon`` can read, in FDB transactions that each
        read at most GC_CHUNK_KEYS keys or GC_CHUNK_BYTES bytes (any database size fits FDB's
        5 s and 10 MB) and that do not conflict with ordinary commits:

        1. the horizon ``P g`` rises to ``horizon`` (never falls: another collector's higher
           one stays, and is used); a pinned snapshot reads it in the transaction that reads
           its pages, so none reads below it after anything here is gone;
        2. page versions replaced at or before it (the newest at or below it stays); the
           hashes of the rest are marked as referenced;
        3. change-log entries and their commits' markers (``P x``) up to LOG_MARGIN before
           it, and "aborted" markers older than FENCE_TTL;
        4. page contents nothing references: swept in chunks, each transaction first reading
           the change log since the previous one (the pages those commits wrote, and staging
           records) and adding a read-conflict range on every content it clears. A commit
           that references a content writes its key (or stages it), so a commit landing
           after the chunk's read version makes the chunk conflict and retry; one before it
           is in what the chunk read. No content a commit names is ever dropped.

        Returns counts; ``complete`` is False when the content sweep gave up this round (a
        commit too large to list its pages, or too many conflicts): the next round redoes it.
        """
        removed = {"versions": 0, "log": 0, "markers": 0, "fences": 0, "staging": 0, "contents": 0,
                   "transactions": 0, "complete": True}
        pack = _VERSION.pack

        def raise_horizon(tr):
            raw = tr.get(self.k_horizon())  # not a snapshot read: two collectors conflict
            current = _VERSION.unpack(raw)[0] if raw else 0
            if horizon > current:
                tr.set(self.k_horizon(), pack(horizon))
            return max(current, horizon), tr.get_read_version()

        horizon, now = self.run(raise_horizon)
        removed["transactions"] += 1
        referenced: set[bytes] = set()
        mark_from = self._gc_versions(horizon, referenced, removed)
        log_horizon = min(horizon, now - LOG_MARGIN)
        if log_horizon > 0:
            self._gc_log(log_horizon, removed)
        self._gc_fences(int(time.time()) - FENCE_TTL, removed)
        self._gc_contents(mark_from, referenced, removed)
        return removed

    def _gc_versions(self, horizon: int, referenced: set, removed: dict) -> int:
        """Step 2; returns the read version of its first transaction (the mark begins there)."""
        start, end = self.prefix + b"i", self.prefix + b"j"
        mark_from = 0
        page, pending = None, None  # the newest entry at or below the horizon of ``page`` seen

        def keep(entry):
            if entry is not None and entry[1]:
                referenced.add(entry[1])

        while True:
            def chunk(tr, start=start):
                rows = tr.get_range(start, end, limit=GC_CHUNK_KEYS, snapshot=True)
                return rows, tr.get_read_version()

            rows, rv = self.run(lambda tr: chunk(tr))
            removed["transactions"] += 1
            mark_from = mark_from or rv
            if not rows:
                break
            doomed = []
            for k, h in rows:
                if k[:-10] != page:
                    keep(pending)
                    page, pending = k[:-10], None
                if version_of(k[-10:]) <= horizon:
                    if pending is not None:
                        doomed.append(pending[0])  # replaced at or before the horizon
                    pending = (k, h)
                else:
                    keep(pending)
                    pending = None
                    keep((k, h))
            if doomed:
                def clear(tr, doomed=doomed):
                    for k in doomed:
                        tr.clear(k)
                self.run(clear)
                removed["transactions"] += 1
                removed["versions"] += len(doomed)
            start = rows[-1][0] + b"\x00"
        keep(pending)
        return mark_from

    def _gc_log(self, log_horizon: int, removed: dict) -> None:
        """Step 3: change-log entries up to ``log_horizon`` and their commits' markers."""
        end = self.k_log() + vs_bound(log_horizon)
        while True:
            def chunk(tr):
                rows = tr.get_range(self.k_log(), end, limit=GC_CHUNK_KEYS, snapshot=True)
                for k, v in rows:
                    tr.clear(self.k_marker(v[:16]))  # its commit is long settled
                if rows:
                    tr.clear_range(self.k_log(), rows[-1][0] + b"\x00")
                return len(rows)

            n = self.run(chunk)
            removed["transactions"] += 1
            removed["log"] += n
            removed["markers"] += n
            if n < GC_CHUNK_KEYS:
                return

    def _gc_fences(self, before: int, removed: dict) -> None:
        """Step 3: "aborted" markers written before ``before`` (Unix seconds)."""
        begin, end = self.prefix + b"a", self.prefix + b"a" + _VERSION.pack(before)
        while True:
            def chunk(tr):
                rows = tr.get_range(begin, end, limit=GC_CHUNK_KEYS, snapshot=True)
                for k, _ in rows:
                    tr.clear(self.k_marker(k[len(begin) + 8:]))
                    tr.clear(k)
                return len(rows)

            n = self.run(chunk)
            removed["transactions"] += 1
            removed["fences"] += n
            if n < GC_CHUNK_KEYS:
                return

    def _gc_contents(self, mark_from: int, referenced: set, removed: dict) -> None:
        """Step 4 (see ``gc``): sweep contents in chunks, the change log replayed since
        ``mark_from`` so that what commits referenced meanwhile is kept."""
        st = self
        replayed = self.k_log() + vs_bound(mark_from)  # the first log key the mark's first read did not see
        cursor, end = self.prefix + b"c", self.prefix + b"d"
        per_chunk = max(1, GC_CHUNK_BYTES // (self.page_size + 40))
        old_staging = int(time.time()) - STAGING_TTL

        class GiveUp(Exception):
            pass

        def replay(tr) -> bool:
            """Read the log from ``replayed`` on, marking what those commits wrote; True once
            it reached the end (as of this transaction's read version) within the budget."""
            nonlocal replayed
            budget = GC_CHUNK_KEYS
            while budget > 0:
                rows = tr.get_range(replayed, st.k_log() + b"\xff", limit=min(budget, 500), snapshot=True)
                if not rows:
                    return True
                for k, v in rows:
                    pages = _decode_pages(v)
                    if pages is None:
                        raise GiveUp()  # too large to list: no cheap way to know what it wrote
                    stamp = k[-10:]
                    for pgno in pages:
                        h = tr.get(st.k_index(pgno) + stamp, snapshot=True)
                        if h:
                            referenced.add(h)
                    budget -= 1 + len(pages)
                    replayed = k + b"\x00"
                    if budget <= 0:
                        break
            return False

        def chunk(tr):
            raw = tr.get(st.k_horizon(), snapshot=True)
            if raw and _VERSION.unpack(raw)[0] > mark_from:
                # Another collector's horizon passed this round's start: it may have dropped
                # log entries the replay still needs. Start over next round.
                raise GiveUp()
            if not replay(tr):
                return None  # caught up next time, in a transaction of its own
            staged = tr.get_range(st.prefix + b"s", st.prefix + b"t", limit=GC_CHUNK_KEYS, snapshot=True)
            if len(staged) >= GC_CHUNK_KEYS:
                raise GiveUp()  # more staging in progress than one transaction can check
            for k, stamp in staged:
                if _VERSION.unpack(stamp)[0] >= old_staging:
                    referenced.add(k[-32:])  # staged for a commit that may still come
                else:
                    tr.clear(k)  # a large commit that never came
                    removed["staging"] += 1
            rows = tr.get_range(cursor, end, limit=per_chunk, snapshot=True)
            unused = [k for k, _ in rows if k[len(st.prefix) + 1:] not in referenced]
            for k in unused:
                # A commit naming this content writes this key (or stages it): if one lands
                # after this read version, this transaction conflicts and the chunk is redone.
                tr.add_read_conflict_range(k, k + b"\x00")
                tr.clear(k)
            return rows, len(unused)

        tr = self.db.create_transaction()
        failures = 0
        while True:
            try:
                got = chunk(tr)
                tr.commit()
                self.stats.commits += 1
                removed["transactions"] += 1
            except GiveUp:
                removed["complete"] = False
                return
            except FDBError as exc:
                failures += 1
                if failures > 100:
                    removed["complete"] = False
                    return
                try:
                    tr.on_error(exc)
                except FDBError as final:
                    if final.code == f.TRANSACTION_TIMED_OUT:
                        raise unavailable(self.db, final) from None
                    raise
                continue
            tr.reset()  # a fresh transaction (and timeout) for the next chunk
            failures = 0
            if got is None:
                continue
            rows, n = got
            removed["contents"] += n
            if len(rows) < per_chunk:
                return
            cursor = rows[-1][0] + b"\x00"


class Snapshot:
    """One SQL transaction's view: reads at one version; writes buffered until ``commit``.

    Reads go through an FDB transaction at the snapshot's read version; a read-only view
    older than FDB's 5 s window continues on a fresh FDB transaction with every read
    bounded at its version (the versioned keys make that exact), unless the GC horizon
    passed it. A view with writes that grows too old cannot commit (1007).
    """

    def __init__(self, store: PageStore, pinned: int | None = None, tr=None, horizon_read: bool = False) -> None:
        self.store = store
        self.tr = tr if tr is not None else store.db.create_transaction()
        self.pinned = pinned
        self.version: int | None = pinned
        self.read_pages: set[int] = set()
        self.hashes: dict[int, bytes] = {}  # pages read: their hash at this snapshot
        self.dirty: dict[int, bytes] = {}  # b"": cut off by a truncate
        # A pinned view reads at the FDB transaction's own (newer) read version, bounded at
        # its version: the GC horizon must be read in that same transaction, before any of
        # its pages (issue 10, defect 6). The transaction that did (``horizon_read``: the
        # caller read it in ``tr`` and found it at or below ``pinned``):
        self._checked = self.tr if horizon_read else None
        self._stored_size: int | None = None  # pages, as page 1 in the store says at this version

    # -- reading ----------------------------------------------------------------------------

    def _begin(self) -> int:
        if self.version is not None:
            return self.version
        st = self.store
        rv = self._read(lambda tr: tr.get_read_version(), counted=False)
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

    def _read(self, fn, counted: bool = True):
        """``fn(self.tr)``, through what FDB may answer: a read-only view past FDB's 5 s (1007)
        or past the transaction timeout (1031, counted from the transaction's start) reads on
        at its version in a fresh transaction; transient errors (1009, 1037, 1213, …) are
        retried at the same read version with the same conflict ranges, a few times; a fresh
        transaction that times out, or a transient error that does not pass, is
        StoreUnavailable."""
        st = self.store
        fresh = False  # self.tr was made for this read: a timeout is the cluster's, not age
        transient = 0
        while True:
            try:
                if self.pinned is not None and self._checked is not self.tr:
                    self._check_horizon()
                if counted:
                    st.stats.reads += 1
                return fn(self.tr)
            except FDBError as exc:
                code = exc.code
                if (code == f.TRANSACTION_TOO_OLD or (code == f.TRANSACTION_TIMED_OUT and not fresh)) \
                        and not self.dirty and self.version is not None:
                    # A read-only view past FDB's window: read on at the same version.
                    self.tr = st.db.create_transaction()
                    self.pinned = self.version
                    fresh = code == f.TRANSACTION_TIMED_OUT
                    continue
                if code in f.TRANSIENT and transient < READ_ATTEMPTS:
                    transient += 1
                    self._retry(exc)
                    continue
                if code == f.TRANSACTION_TIMED_OUT or code in f.TRANSIENT:
                    raise unavailable(st.db, exc) from None
                raise

    def _retry(self, exc: FDBError) -> None:
        """FDB's on_error (its backoff), then the same read version and read conflicts again."""
        try:
            self.tr.on_error(exc)
        except FDBError as final:
            raise unavailable(self.store.db, final) from None
        self._checked = None
        if self.pinned is None and self.version is not None:
            self.tr.set_read_version(self.version)
            st = self.store
            for pgno in self.read_pages:
                self.tr.add_read_conflict_range(st.k_index(pgno), st.k_index(pgno + 1))

    def _check_horizon(self) -> None:
        st = self.store
        raw = self.tr.get(st.k_horizon(), snapshot=True)
        st.stats.reads += 1
        if raw is not None and _VERSION.unpack(raw)[0] > (self.version or 0):
            raise SnapshotTooOld(f"snapshot at version {self.version} is older than the GC horizon "
                                 f"({_VERSION.unpack(raw)[0]}): its pages may be collected")
        self._checked = self.tr

    @property
    def last_change(self) -> int:
        """The newest commit at or below this snapshot: another value means another state."""
        at = self._begin()
        return self.store.cache.last_change_at(at) if self.pinned is None else at

    def read_page(self, pgno: int) -> bytes:
        """Page ``pgno`` as this transaction sees it (its own writes first); zeros for a page
        the database does not have (past its end, or cut off)."""
        if pgno in self.dirty:
            return self.dirty[pgno] or self.store.zero
        return self._stored_page(pgno)

    def _stored_page(self, pgno: int) -> bytes:
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
                elif pgno == 1 or pgno > self._stored_pages() or pgno == PENDING_BYTE // st.page_size + 1:
                    h = b""  # no database yet at this version, or past its end
                else:
                    raise PageMissing(f"page {pgno} of {self._stored_pages()} has no version at or below "
                                      f"{at} in the page store (damaged?)")
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
                raise PageMissing(f"page {pgno}'s content {h.hex()[:16]} is not in the page store (damaged?)")
            st.cache.keep(h, data)
        else:
            st.stats.cache_hits += 1
        return data

    def _stored_pages(self) -> int:
        """The database size at this version as stored (not this transaction's writes)."""
        if self._stored_size is None:
            page1 = self._stored_page(1)
            self._stored_size = 0 if page1 == self.store.zero else _PGNO.unpack_from(page1, 28)[0]
        return self._stored_size

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
            try:
                self._stage(contents, commit_id)  # phase one: content in small transactions, invisible
            except FDBError as exc:  # nothing names what was staged: the commit did not happen
                raise CommitFailed(str(exc), exc, retryable=exc.retryable) from None
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
            if exc.code in MAYBE_COMMITTED:
                # 1021, 1039 (FDB's maybe_committed), or a timeout that may have cut the answer
                # off: the marker says whether it happened, and fences it if not.
                try:
                    version = self._resolve_unknown(commit_id)
                except FDBError as again:
                    raise unavailable(st.db, again, unknown=True) from None
                except StoreUnavailable as again:
                    raise unavailable(st.db, again.error, unknown=True) from None
                if version is not None:
                    self._committed(changes, contents, version)
                    return version
                raise CommitFailed(f"the commit did not happen (FoundationDB: {exc}, resolved)", exc) from None
            if exc.code in f.RETRYABLE:  # a conflict, too old, or a transient error: not committed
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
                # Indexed by time, so GC finds fences (committed markers go with the log).
                tr.set(st.prefix + b"a" + _VERSION.pack(int(time.time())) + commit_id, b"")
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

