"""The mvsqlite backend: the libsql backend's connections, on the page-store VFS.

Each sqld process (each ``MvsqliteBackend``) writes through its own writer connection; the
processes meet in FDB, whose conflict check makes concurrent writers serializable. A write
transaction that loses a conflict fails at COMMIT with 40001; an autocommit statement that
loses one is run again here (nothing of it was committed or seen: it is safe), up to
``retries`` times.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time

import apsw
import attrs

from sqld.backends import sandbox
from sqld.backends.libsql import LibsqlConnection
from sqld.backends.mvsqlite import vfs as v
from sqld.backends.mvsqlite.fdbport import VERSIONS_PER_SECOND, Database
from sqld.backends.mvsqlite.pagestore import CommitFailed, PageMissing, PageStore, SnapshotTooOld, StoreUnavailable
from sqld.errors import FeatureNotSupported, SerializationFailure, SqldError

log = logging.getLogger(__name__)

_names = itertools.count(1)


class MvsqliteConnection(LibsqlConnection):
    """A connection whose failed COMMITs say why (a conflict, a limit), and whose autocommit
    statements are retried after a conflict."""

    retries = 8
    page_file = None  # its main database file (vfs.PageFile), set by the backend

    def _raise(self, exc: apsw.Error):
        why = v.last_commit_error()
        if why is not None:
            v.clear_commit_error()
            raise _as_sqld_error(why) from None
        super()._raise(exc)

    def start(self, sql, params, first):
        autocommit = not self.in_transaction()
        for attempt in range(self.retries + 1):
            v.clear_commit_error()
            try:
                return super().start(sql, params, first)
            except SerializationFailure:
                if not autocommit or self.in_transaction() or attempt == self.retries:
                    raise
                time.sleep(min(0.05, 0.001 * 2 ** attempt) * random.random())

    def run(self, sql: str) -> None:
        v.clear_commit_error()
        super().run(sql)


def _as_sqld_error(why) -> SqldError:
    if isinstance(why, SnapshotTooOld):
        return SqldError(f"snapshot too old: {why}", sqlstate="72000",
                         hint="The transaction's snapshot is older than the page store keeps; start a new one.")
    if isinstance(why, StoreUnavailable):
        # The server lost its storage, as a client that loses its connection mid-COMMIT: 08006,
        # and when it was a commit, the outcome is unknown (PostgreSQL's clients know that case).
        return SqldError(f"lost FoundationDB: {why}", sqlstate="08006",
                         hint="Check the cluster (fdbcli --exec status) and the cluster file; then retry"
                              + (" after checking whether the transaction's changes are there." if why.unknown
                                 else "."))
    if isinstance(why, PageMissing):
        return SqldError(f"the mvsqlite page store is damaged: {why}", sqlstate="XX001")
    code = getattr(why.error, "code", None) if isinstance(why, CommitFailed) else None
    if code == 1007:
        return SerializationFailure("the transaction is older than FoundationDB allows (5 s)",
                                    detail=str(why), hint="Keep write transactions shorter than 5 seconds; retry.")
    if isinstance(why, CommitFailed) and why.retryable:
        return SerializationFailure(
            "could not serialize access due to concurrent update",
            detail=f"FoundationDB: {why}",
            hint="Another process committed a change to the pages this transaction read: retry the transaction.")
    if code == 2101:
        return SqldError("the transaction is too large for FoundationDB (10 MB per commit)", sqlstate="54000",
                         detail=str(why), hint="Split it into smaller transactions.")
    if code in (2102, 2103):
        return SqldError(f"a key or value exceeds FoundationDB's limits: {why}", sqlstate="54000")
    return SqldError(f"FoundationDB: {why}", sqlstate="58030")


@attrs.define(eq=False)
class MvsqliteBackend:
    """A database whose pages are in FDB under ``prefix``: a writer and readers, each an
    apsw connection on the page-store VFS."""

    name = "mvsqlite"

    fdb: Database = attrs.field(alias="db")
    prefix: bytes
    foreign_keys: bool = attrs.field(kw_only=True, default=True)
    page_size: int = attrs.field(kw_only=True, default=4096)
    gc_interval: float | None = attrs.field(kw_only=True, default=300.0)
    gc_retention: float = attrs.field(kw_only=True, default=600.0)
    unsafe_sql: bool = attrs.field(kw_only=True, default=False)
    # Accepted and unused (the file backend's setting): the VFS commits at SQLite's sync.
    synchronous: str = attrs.field(kw_only=True, default="normal")
    capture: object = attrs.field(init=False, default=None)
    path: str = attrs.field(init=False)
    store: PageStore | None = attrs.field(init=False, default=None)
    vfs: v.PageStoreVFS | None = attrs.field(init=False, default=None)
    _writer: MvsqliteConnection | None = attrs.field(init=False, default=None)
    _readers: list[MvsqliteConnection] = attrs.field(init=False, factory=list, repr=False)
    _pinned: list[v.PageStoreVFS] = attrs.field(init=False, factory=list, repr=False)
    _stop: threading.Event = attrs.field(init=False, factory=threading.Event, repr=False)
    _gc_thread: threading.Thread | None = attrs.field(init=False, default=None, repr=False)

    @path.default
    def _path(self) -> str:
        return self.prefix.decode(errors="replace")

    @staticmethod
    def exists(db: Database, prefix: bytes) -> bool:
        """Whether a database was ever created under ``prefix``."""
        tr = db.create_transaction()
        return tr.get(prefix + b"m", snapshot=True) is not None

    def _connect(self, readonly: bool) -> MvsqliteConnection:
        flags = apsw.SQLITE_OPEN_READONLY if readonly else apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        conn = apsw.Connection("mvsqlite.db", flags=flags, vfs=self.vfs.vfs_name)
        page_file = v.opened_file()
        for pragma in ("journal_mode=memory", "synchronous=normal", "cache_size=-16000",
                       f"foreign_keys={'on' if self.foreign_keys else 'off'}"):
            conn.execute(f"pragma {pragma}").fetchall()
        # The VFS commits at SQLite's sync: journal mode and synchronous are never the session's.
        conn.authorizer = sandbox.authorizer(self.unsafe_sql, sandbox.MVSQLITE)
        wrapped = MvsqliteConnection(conn, readonly=readonly)
        wrapped.page_file = page_file
        return wrapped

    def open(self) -> None:
        self.store = PageStore(self.fdb, self.prefix, page_size=self.page_size)
        self.vfs = v.PageStoreVFS(f"mvsqlite-{next(_names)}", self.store)
        conn = apsw.Connection("mvsqlite.db", vfs=self.vfs.vfs_name)
        conn.execute(f"pragma page_size={self.store.page_size}").fetchall()
        conn.execute("pragma journal_mode=memory").fetchall()
        conn.execute("select count(*) from sqlite_schema").fetchall()
        conn.close()
        self._writer = self._connect(readonly=False)
        from sqld.backends.mvsqlite.replsource import ChangeLogCapture

        self.capture = ChangeLogCapture(self.store)  # replicas follow FDB's change log
        if self.gc_interval:
            self._gc_thread = threading.Thread(target=self._collect, name=f"mvsqlite-gc {self.path}", daemon=True)
            self._gc_thread.start()
        log.info("opened mvsqlite database %r (page size %d)", self.prefix, self.store.page_size)

    def _collect(self) -> None:
        """Every ``gc_interval`` seconds: drop what no snapshot younger than ``gc_retention``
        seconds reads (every process may run it: it is idempotent and safe beside commits;
        an older snapshot then fails with 72000 rather than read a page that is gone)."""
        while not self._stop.wait(self.gc_interval * random.uniform(0.8, 1.2)):
            try:
                horizon = self.store.current_version() - int(self.gc_retention * VERSIONS_PER_SECOND)
                if horizon > 0:
                    removed = self.store.gc(horizon)
                    log.info("mvsqlite %s: collected %s", self.path, removed)
            except Exception as exc:  # the next round tries again
                log.warning("mvsqlite %s: garbage collection failed: %s", self.path, exc)

    def backup_source(self) -> tuple[apsw.Connection, int]:
        """A read-only connection pinned at the last commit, and that commit's version: what
        a replica bootstraps from."""
        frame = self.capture.log.last_commit
        return self.open_at(frame), frame

    def writer(self) -> MvsqliteConnection:
        assert self._writer is not None, "backend not open"
        return self._writer

    def open_session_connection(self) -> MvsqliteConnection:
        raise FeatureNotSupported("temporary objects and connection settings are not available on the mvsqlite "
                                  "backend yet", hint="Use regular tables; connection settings are the server's flags.")

    def begin_write_after(self, reader: MvsqliteConnection, writer: MvsqliteConnection) -> None:
        """Begin the writer's transaction as the continuation of ``reader``'s open read
        transaction (the scheduler moves a transaction to the writer at its first write): at
        the reader's FDB read version, with a read-conflict range on every page the reader
        read or its SQLite cache may have served, so the commit fails with 40001 if another
        process changed any of them since (issue 10, defect 4; base.ContinuesSnapshots)."""
        source = reader.page_file
        snap = source.snap if source is not None else None
        if snap is None or snap.version is None:
            writer.run("begin immediate")  # the reader read nothing: a fresh snapshot is the same
            return
        if snap.pinned is not None:
            # It read on past FDB's 5 s in fresh FDB transactions: its conflict ranges are gone.
            raise SerializationFailure("the transaction is older than FoundationDB allows for a write (5 s)",
                                       detail="Its reads cannot be checked for conflicts any more.",
                                       hint="Keep transactions that write shorter than 5 seconds; retry.")
        target = writer.page_file
        target.follow = self.store.continuation(snap, snap.read_pages | source.cached)
        try:
            writer.run("begin immediate")
        finally:
            if target.follow is not None:  # not taken (the BEGIN failed first): never later
                target.follow.close()
                target.follow = None

    def open_reader(self) -> MvsqliteConnection:
        reader = self._connect(readonly=True)
        self._readers.append(reader)
        return reader

    def open_at(self, version: int) -> apsw.Connection:
        """A read-only connection that sees the database exactly as of FDB version
        ``version`` (time travel, as far back as GC allows). Close it when done."""
        vfs = v.PageStoreVFS(f"mvsqlite-{next(_names)}-at-{version}", self.store, pinned=version)
        conn = apsw.Connection("mvsqlite.db", flags=apsw.SQLITE_OPEN_READONLY, vfs=vfs.vfs_name)
        conn.execute("pragma journal_mode=memory").fetchall()
        self._pinned.append(vfs)  # a VFS must outlive its connections
        return conn

    def close(self) -> None:
        self._stop.set()
        for r in self._readers:
            r.close()
        self._readers.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.vfs is not None:
            self.vfs.unregister()
            self.vfs = None
