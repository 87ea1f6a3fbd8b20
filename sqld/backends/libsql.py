"""The libsql backend: one SQLite file through apsw, in WAL mode, one writer and many readers."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
import weakref
from pathlib import Path
from typing import Any, Sequence

import apsw
import attrs

from sqld.backends import memory, sandbox
from sqld.backends.base import BudgetExceeded, Column, Interrupted, NeedsOwnConnection, NeedsWriter, StatementInfo
from sqld.errors import SqldError, from_sqlite

log = logging.getLogger(__name__)

# SQLite calls the progress handler every this many virtual-machine steps; each call is
# one Python call, so this trades reaction time (cancel, timeout, budget) for overhead.
PROGRESS_STEPS = 1000

FILE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".sqld")
# A statement that is a plain VACUUM (after comments); what SQLite parsed is the judge of the
# rest, this only tells the sandbox when VACUUM's own scratch ATTACH may come.
_VACUUM = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*vacuum\b", re.IGNORECASE | re.DOTALL)
# CREATE … IF NOT EXISTS / DROP … IF EXISTS write or not depending on the schema: a prepared
# statement kept in apsw's cache would keep the answer of the schema it was first prepared
# for (SQLite re-prepares it at its step, after the check that sends writes to the writer).
_SCHEMA_DEPENDENT = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(?:create|drop)\b.*?\bif\b",
                               re.IGNORECASE | re.DOTALL)


def database_file(db_path: str | os.PathLike) -> Path:
    """The SQLite file for ``--db-path``: the path itself when it names a file, else
    ``main.db`` inside it (a folder, made if missing)."""
    p = Path(db_path)
    if p.is_file() or (not p.exists() and p.suffix in FILE_SUFFIXES):
        return p
    return p / "main.db"


def _not_utf8(exc: UnicodeDecodeError, names=()) -> SqldError:
    """A TEXT value that is not UTF-8 (SQLite stores what it is given; CAST(blob AS TEXT)).
    apsw does not say which column; with one column, that one (sqlite3's message)."""
    text = exc.object[: exc.start][:40].decode("utf-8", "replace") if isinstance(exc.object, bytes) else ""
    column = f"column '{names[0]}'" if len(names) == 1 else "a column"
    return SqldError(f"Could not decode to UTF-8 {column} with text '{text}'", sqlstate="22021",
                     hint="Read the value as a BLOB (CAST(x AS BLOB)).")


def _raised_in_python(exc: Exception) -> SqldError:
    """What a statement's client is told when Python code it ran raised: a SQL function of
    sqld's (apsw hands the function's own exception back, not a SQLite error), or apsw
    itself. A SqldError is the function's answer; anything else is a bug in sqld."""
    if isinstance(exc, SqldError):
        return exc
    if isinstance(exc, MemoryError):
        return SqldError("out of memory", sqlstate="53200")
    log.error("a SQL function raised %s", type(exc).__name__, exc_info=exc)
    return SqldError(f"internal error: {type(exc).__name__}: {exc}", sqlstate="XX000")


class LibsqlConnection:
    """One apsw connection with its one open cursor and its stop conditions."""

    def __init__(self, conn: apsw.Connection, readonly: bool) -> None:
        self.apsw = conn
        self.readonly = readonly
        self.epoch = 0  # the scheduler's reader generation (Connection.epoch)
        memory.apply(conn)
        # SQLite's defensive mode: no SQL may corrupt the file on purpose (writable_schema,
        # PRAGMA schema_version = N, writes to sqlite_dbpage or to virtual tables' shadow tables).
        conn.config(apsw.SQLITE_DBCONFIG_DEFENSIVE, 1)
        self._open: set[apsw.Cursor] = set()  # cursors of suspended portals
        self._budget: int | None = None
        self._deadline: float | None = None
        self._cancelled = None
        self._stop: str | None = None
        self.context: Any = None  # whose statement runs now; opaque here, read by SQL functions
        self._description = None
        self._needs_writer = False
        conn.set_progress_handler(self._progress, PROGRESS_STEPS)
        # The columns of a statement are known after prepare, but apsw forgets them once a
        # statement finishes without a row: catch them before the first step.
        conn.exec_trace = self._trace

    def _trace(self, cursor, sql, bindings) -> bool:
        auth = self.apsw.authorizer
        if auth is not None and hasattr(auth, "reset"):
            auth.reset()
            auth.running = True  # prepared: what SQLite prepares from here on is its own doing
        if self.readonly and not cursor.is_readonly:
            # SQLite says after prepare, before any step, whether a statement writes:
            # the scheduler sends it to the writer instead (no regex on SQL text).
            self._needs_writer = True
            return False
        self._description = cursor.get_description()
        if auth is not None and _VACUUM.match(sql) and not cursor.is_readonly:
            # A VACUUM is about to run: the ATTACH '' SQLite makes inside it is its own.
            auth.vacuum = True
        return True

    def _reset_authorizer(self) -> None:
        auth = self.apsw.authorizer
        if auth is not None and hasattr(auth, "reset"):
            auth.reset()

    # -- stop conditions ------------------------------------------------------------------

    def guard(self, *, budget: int | None = None, deadline: float | None = None, cancelled=None,
              context: Any = None) -> None:
        self.context = context
        self._budget = budget
        self._deadline = deadline
        self._cancelled = cancelled
        self._stop = None

    def _progress(self) -> bool:
        if self._budget is not None:
            self._budget -= 1
            if self._budget <= 0:
                self._stop = "budget"
                return True
        if self._cancelled is not None and self._cancelled():
            self._stop = "cancel"
            return True
        if self._deadline is not None and time.monotonic() > self._deadline:
            self._stop = "timeout"
            return True
        return False

    def _needs_own(self, exc: apsw.Error) -> None:
        if isinstance(exc, apsw.AuthError):
            auth = self.apsw.authorizer
            if getattr(auth, "wants_own", False):
                auth.wants_own = False
                raise NeedsOwnConnection() from None

    def _raise(self, exc: apsw.Error):
        self._needs_own(exc)
        if isinstance(exc, apsw.BusyError) and self._budget is not None:
            # An inline run met a lock (a replica's applier at work): it gave up at once
            # rather than sleep on the event loop; it runs again on a thread, where it waits.
            raise BudgetExceeded() from None
        if isinstance(exc, apsw.InterruptError) and self._stop:
            stop, self._stop = self._stop, None
            if stop == "budget":
                raise BudgetExceeded() from None
            raise Interrupted(stop) from None
        raise from_sqlite(exc) from None

    # -- statements -----------------------------------------------------------------------

    def info(self, sql: str) -> StatementInfo:
        return self._info(sql, True)

    def _info(self, sql: str, retry: bool) -> StatementInfo:
        """Prepare ``sql`` (freshly: a cached statement may predate a schema change) and say
        what it takes and returns, without running it."""
        got: dict[str, Any] = {}

        def trace(cursor, first: str, bindings) -> bool:
            got.update(desc=cursor.get_description(), readonly=cursor.is_readonly,
                       count=cursor.bindings_count, rest=sql[len(first):])
            return False  # stop before the first step: nothing runs

        self._reset_authorizer()
        cur = self.apsw.cursor()
        cur.exec_trace = trace
        budget, self._budget = self._budget, None  # preparing is no inline run: it may wait for a lock
        stale = False
        try:
            # apsw.ext.query_info binds NULLs with this same object to prepare without values
            cur.execute(sql, apsw._null_bindings, can_cache=False)
        except apsw.ExecTraceAbort:
            pass
        except apsw.Error as exc:
            self._needs_own(exc)
            if not (retry and self._stale_schema(exc)):
                raise from_sqlite(exc) from None
            stale = True
        finally:
            self._budget = budget
            self._close_cursor(cur)
        if stale:
            return self._info(sql, False)
        if not got:  # an empty statement
            return StatementInfo(columns=(), param_count=0, readonly=True)
        if got["rest"].strip(" \t\r\n;"):
            raise SqldError("cannot insert multiple commands into a prepared statement", sqlstate="42601")
        cols = tuple(Column(name, decl) for name, decl in (got["desc"] or ()))
        return StatementInfo(columns=cols, param_count=got["count"], readonly=bool(got["readonly"]))

    def _stale_schema(self, exc: apsw.Error) -> bool:
        """Whether ``exc`` may come from a schema another connection changed since this one
        last read it; if so, the schema is read again (then the statement is worth a second
        try). SQLite notices the change when a read begins, but a CREATE of a name another
        connection dropped fails at prepare ("already exists") against the old schema, and
        keeps failing until some other statement runs. In a transaction the old schema is
        the snapshot's own: the error stands."""
        if not isinstance(exc, apsw.SQLError) or "already exists" not in str(exc) or self.in_transaction():
            return False
        try:
            for _ in self.apsw.execute("select 1 from sqlite_schema limit 0"):
                pass
        except apsw.Error:
            return False
        return True

    def start(self, sql: str, params: Sequence[Any], first: int):
        return self._start(sql, params, first, True)

    def _start(self, sql: str, params: Sequence[Any], first: int, retry: bool):
        self._reset_authorizer()
        cur = self.apsw.cursor()
        try:
            self._description = None
            self._needs_writer = False
            cur.execute(sql, params, can_cache=_SCHEMA_DEPENDENT.match(sql) is None)
            desc = self._description
            rows = list(itertools.islice(cur, first))
            if desc and (not rows or len(rows[0]) != len(desc)):
                # A cached statement that SQLite re-prepared for a new schema (ALTER TABLE …
                # ADD) keeps apsw's old description; with no row there is none after a step
                # either. Prepare afresh to know the columns.
                desc = [(c.name, c.decltype) for c in self.info(sql).columns] or desc
            columns = tuple(Column(n, d) for n, d in desc) if desc else None
        except apsw.ExecTraceAbort:
            self._close_cursor(cur)
            if self._needs_writer:
                raise NeedsWriter() from None
            raise
        except apsw.Error as exc:
            self._close_cursor(cur)
            if self.readonly and isinstance(exc, apsw.ReadOnlyError):
                # Prepared as a read, it writes once SQLite re-prepared it for a schema
                # changed in between (by another connection): nothing was written here;
                # it runs on the writer instead.
                raise NeedsWriter() from None
            if retry and self._stale_schema(exc):
                return self._start(sql, params, first, False)
            self._raise(exc)
        except UnicodeDecodeError as exc:
            self._close_cursor(cur)
            raise _not_utf8(exc, [d[0] for d in (self._description or ())]) from None
        except Exception as exc:
            self._close_cursor(cur)
            raise _raised_in_python(exc) from None
        if len(rows) < first:
            self._close_cursor(cur)
            return columns, rows, None
        self._open.add(cur)
        return columns, rows, cur

    def more(self, handle, n: int) -> tuple[list[tuple], bool]:
        if handle not in self._open:
            return [], True
        try:
            rows = list(itertools.islice(handle, n))
        except apsw.Error as exc:
            self.finish(handle)
            self._raise(exc)
        except UnicodeDecodeError as exc:
            names = [d[0] for d in handle.get_description()] if handle in self._open else []
            self.finish(handle)
            raise _not_utf8(exc, names) from None
        except Exception as exc:
            self.finish(handle)
            raise _raised_in_python(exc) from None
        if len(rows) < n:
            self.finish(handle)
            return rows, True
        return rows, False

    @property
    def has_open_cursors(self) -> bool:
        return bool(self._open)

    def finish(self, handle=None) -> None:
        """Close one open cursor, or all of them."""
        if handle is None:
            cursors, self._open = self._open, set()
        else:
            self._open.discard(handle)
            cursors = (handle,)
        for cur in cursors:
            self._close_cursor(cur)

    @staticmethod
    def _close_cursor(cur) -> None:
        try:
            cur.close(force=True)
        except apsw.Error:
            pass

    def run(self, sql: str) -> None:
        """Run one statement to completion, ignoring rows (transaction control, pragmas)."""
        self._run(sql, True)

    def _run(self, sql: str, retry: bool) -> None:
        self._reset_authorizer()
        try:
            for _ in self.apsw.execute(sql):
                pass
        except apsw.Error as exc:
            if retry and self._stale_schema(exc):
                return self._run(sql, False)
            self._raise(exc)
        except (UnicodeDecodeError, Exception) as exc:
            raise (_not_utf8(exc) if isinstance(exc, UnicodeDecodeError) else _raised_in_python(exc)) from None

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement that returns no rows once per parameter tuple (apsw's
        executemany: prepared once); the rows it changed, each execution's as ``changes``
        counts them (not what its triggers changed; none for a row a trigger's RAISE(IGNORE)
        skipped). It stops at the first error."""
        self._reset_authorizer()
        cur = self.apsw.cursor()
        started = changed = 0

        def trace(cursor, statement, bindings) -> bool:
            nonlocal started, changed
            if started:
                changed += self.apsw.changes()  # the execution before this one's
            started += 1
            return self._trace(cursor, statement, bindings)

        cur.exec_trace = trace
        try:
            try:
                for _ in cur.executemany(sql, rows):
                    pass
            except apsw.ExecTraceAbort:
                if self._needs_writer:
                    raise NeedsWriter() from None
                raise
            except apsw.Error as exc:
                self._raise(exc)
            except UnicodeDecodeError as exc:
                raise _not_utf8(exc, []) from None
            except Exception as exc:
                raise _raised_in_python(exc) from None
        except SqldError as err:
            err.row = started - 1  # which of ``rows`` failed (COPY names its line)
            raise
        finally:
            self._close_cursor(cur)
        return changed + self.apsw.changes() if started else 0

    def changes(self) -> int:
        return self.apsw.changes()

    def last_insert_rowid(self) -> int:
        return self.apsw.last_insert_rowid()

    def in_transaction(self) -> bool:
        return not self.apsw.get_autocommit()

    def column_decltypes(self, table: str) -> dict[str, str | None]:
        try:
            rows = self.apsw.execute("select name, type from pragma_table_info(?)", (table,)).fetchall()
        except apsw.Error:
            return {}
        return {name.lower(): (decl or None) for name, decl in rows}

    def create_function(self, name: str, nargs: int, fn) -> None:
        """A SQL function on this connection; ``fn`` gets this connection's ``context`` first."""

        def call(*args):
            return fn(self.context, *args)

        self.apsw.create_scalar_function(name, call, nargs)

    def close(self) -> None:
        self.finish()
        try:
            self.apsw.close(force=True)
        except apsw.Error:
            pass


@attrs.define(eq=False)
class LibsqlBackend:
    """A SQLite file in WAL mode. One writer connection; readers opened on demand.

    Leaves to the caller (the scheduler): that only one thread uses a connection at a
    time, and that only the writer writes (readers are opened read-only, so a mistake
    is an error, not a second writer).
    """

    name = "libsql"

    path: Path = attrs.field(converter=database_file, alias="db_path")
    synchronous: str = attrs.field(default="full", kw_only=True)
    foreign_keys: bool = attrs.field(default=True, kw_only=True)
    busy_timeout_ms: int = attrs.field(default=5000, kw_only=True)
    replication_log: bool = attrs.field(default=False, kw_only=True)
    replication_log_max_bytes: int = attrs.field(default=64 << 20, kw_only=True)
    unsafe_sql: bool = attrs.field(default=False, kw_only=True)
    capture: Any = attrs.field(init=False, default=None)  # open() makes it, with replication_log
    begin_write_after: Any = attrs.field(init=False, default=None)  # one process writes: its own commit count says it all
    backup_source: Any = attrs.field(init=False, default=None)  # a base backup copies the file
    _writer: LibsqlConnection | None = attrs.field(init=False, default=None)
    _readers: weakref.WeakSet[LibsqlConnection] = attrs.field(init=False, factory=weakref.WeakSet)  # closed with the backend

    def _configure(self, conn: apsw.Connection) -> None:
        conn.set_busy_timeout(self.busy_timeout_ms)
        # One statement per call: apsw runs "a; b" lazily as its cursor is iterated.
        conn.execute(f"pragma synchronous={self.synchronous}").fetchall()
        conn.execute(f"pragma foreign_keys={'on' if self.foreign_keys else 'off'}").fetchall()

    def open(self) -> None:
        """Open (creating if needed) the database; raise SqldError with a one-line reason."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = apsw.Connection(
                str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
            )
        except apsw.Error as exc:
            raise SqldError(f"cannot open database {self.path}: {exc}") from None
        try:
            mode = conn.execute("pragma journal_mode=wal").fetchall()[0][0]
            if mode != "wal":
                raise SqldError(f"cannot put database {self.path} in WAL mode (got {mode})")
            conn.execute("select count(*) from sqlite_schema").fetchall()
            self._configure(conn)
        except apsw.Error as exc:
            conn.close()
            raise SqldError(f"cannot use database {self.path}: {exc}") from None
        self._writer = LibsqlConnection(conn, readonly=False)
        if self.replication_log:
            from sqld.replication.capture import Capture

            self.capture = Capture(conn, self.path, Path(str(self.path) + "-replog"),
                                   max_log_bytes=self.replication_log_max_bytes)
        conn.authorizer = sandbox.authorizer(self.unsafe_sql, sandbox.REPLICATION_LOG if self.capture is not None else frozenset())
        log.info("opened %s (journal_mode=wal, synchronous=%s)", self.path, self.synchronous)

    def writer(self) -> LibsqlConnection:
        assert self._writer is not None, "backend not open"
        return self._writer

    def open_session_connection(self) -> LibsqlConnection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READWRITE)
        self._configure(conn)
        guarded = frozenset()
        if self.capture is not None:
            # Its commits go into the replication log like the writer's (under the writer
            # lock, so one at a time); the hook also stands in for SQLite's autocheckpoint.
            conn.set_wal_hook(self.capture._on_commit)
            guarded = sandbox.REPLICATION_LOG
        conn.authorizer = sandbox.authorizer(self.unsafe_sql, guarded, kind=sandbox.SESSION_OWNED)
        own = LibsqlConnection(conn, readonly=True)  # read-only until its session holds the writer
        self._readers.add(own)
        return own

    def open_reader(self) -> LibsqlConnection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        self._configure(conn)
        conn.authorizer = sandbox.authorizer(self.unsafe_sql)
        reader = LibsqlConnection(conn, readonly=True)
        self._readers.add(reader)
        return reader

    def close(self) -> None:
        """Close every connection; roll back what is open; checkpoint and truncate the WAL."""
        for r in list(self._readers):
            r.close()
        self._readers.clear()
        w, self._writer = self._writer, None
        if w is None:
            return
        w.finish()
        w.apsw.authorizer = None  # the server's own checkpoint below
        try:
            if w.in_transaction():
                w.apsw.execute("rollback").fetchall()
            w.apsw.execute("pragma wal_checkpoint(TRUNCATE)").fetchall()
        except apsw.Error as exc:
            log.warning("checkpoint at shutdown failed: %s", exc)
        if self.capture is not None:
            self.capture.close()
        w.close()
