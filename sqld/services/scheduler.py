"""The scheduler: which SQLite connection runs a session's statement, when, and on which thread.

SQLite in WAL mode allows one writer and many readers. So:

* an autocommit read-only statement runs on a reader connection from a pool, many at once;
* an autocommit write, and every statement of an explicit transaction, runs on the one
  writer connection, which a session holds (an async lock, first come first served) from
  the statement's start, or the transaction's first statement, to its end; ``BEGIN READ
  ONLY`` transactions hold a reader instead;
* SQLITE_BUSY cannot happen between sessions of one process: they never contend inside
  SQLite, they queue on the lock;
* autocommit INSERT/UPDATE/DELETE from many sessions commit together, one fsync per group
  (``groupcommit``).

SQLite work blocks, so it runs on worker threads, except the first batch of a read-only
statement, which runs inline on the event loop under a step budget: a point read costs
microseconds, less than the hand-off to a thread. A read that outruns its budget is
stopped (nothing changed) and run again on a thread. Writes always go to a thread (their
COMMIT waits for fsync).
"""

from __future__ import annotations

import logging
import re
import time
import anyio
import anyio.to_thread
import attrs

from sqld.backends.base import (Backend, BudgetExceeded, Column, Connection, Interrupted, NeedsOwnConnection,
                                NeedsWriter, StatementInfo)
from sqld.errors import InFailedTransaction, QueryCanceled, ReadOnlyTransaction, SerializationFailure, SqldError
from sqld.services.base import (
    Abort,
    SchemaClock,
    Describe,
    DescribeResult,
    Execute,
    ExecuteMany,
    Peek,
    SessionState,
    StaticCursor,
    Sync,
    Terminate,
)
from sqld.pgwire import extension as ext
from sqld.pgwire.types import INT8
from sqld.services.groupcommit import CommitGroup, Write, groupable
from sqld.services.transaction import Transaction
from sqld.sqltext import Statement
from sqld.verbs import ATOMIC_VERBS, DDL_VERBS, INSERT_VERBS, READ_VERBS, TX_VERBS, WRITE_VERBS

log = logging.getLogger(__name__)

_READ_ONLY = re.compile(r"\bREAD\s+ONLY\b", re.IGNORECASE)
_DML_TAGS = {"INSERT": "INSERT 0 {}", "REPLACE": "INSERT 0 {}", "UPDATE": "UPDATE {}", "DELETE": "DELETE {}"}
_NO_ROWS_INFO = StatementInfo(columns=(), param_count=0, readonly=True)


@attrs.define(eq=False)
class Scheduler:
    """Shared by every session of one backend: the writer lock, the reader pool, the caches.

    ``inline_budget`` is the progress-handler calls (of 1000 VM steps each) an inline read
    may take before it moves to a thread; 0 sends every statement to a thread.
    """

    backend: Backend
    max_readers: int = 8
    inline_budget: int = 20
    # A replica's scheduler: nothing here may write; what would take the writer raises
    # NeedsWriter instead, for the replica layer to forward to the primary.
    read_only: bool = False
    writer_lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    _idle_readers: list[Connection] = attrs.field(factory=list)
    _reader_slots: anyio.Semaphore = attrs.field(init=False)
    limiter: anyio.CapacityLimiter = attrs.field(init=False)
    functions: list = attrs.field(factory=list)  # (name, nargs, fn(context, *args))
    commit_seq: int = 0  # write commits so far: tells a read snapshot it went stale
    reader_epoch: int = 0  # readers opened before the last drop_readers() are closed, not pooled
    _info_cache: dict[str, StatementInfo] = attrs.field(factory=dict)
    _decltypes_cache: dict[str, dict[str, str | None]] = attrs.field(factory=dict)
    described: dict[str, DescribeResult] = attrs.field(factory=dict)  # Describe answers by SQL text
    schema: SchemaClock = attrs.field(factory=SchemaClock)
    group: CommitGroup = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._reader_slots = anyio.Semaphore(self.max_readers)
        self.limiter = anyio.CapacityLimiter(self.max_readers + 1)
        self._install(self.backend.writer())
        self.group = CommitGroup(self.backend.writer(), self.writer_lock, self.limiter, self._committed)

    def _committed(self) -> None:
        self.commit_seq += 1

    async def run(self) -> None:
        """The background work of the scheduler (the group-commit loop); run it in the
        server's task group. Without it, every autocommit write commits alone."""
        await self.group.run()

    def _install(self, conn: Connection) -> None:
        for name, nargs, fn in self.functions:
            conn.create_function(name, nargs, fn)

    async def __call__(self, state: SessionState) -> SchedulerService:
        state.schema = self.schema
        return SchedulerService(self, state)

    # -- reader pool ----------------------------------------------------------------------

    async def acquire_reader(self, limit=(None, None)) -> Connection:
        """A reader from the pool; waits for one at most ``limit`` = (seconds, error factory)
        (SessionState.wait_limit)."""
        try:
            self._reader_slots.acquire_nowait()
        except anyio.WouldBlock:
            timeout, error = limit
            if timeout:
                with anyio.move_on_after(timeout) as scope:
                    await self._reader_slots.acquire()
                if scope.cancelled_caught:
                    raise error() from None
            else:
                await self._reader_slots.acquire()
        if self._idle_readers:
            return self._idle_readers.pop()
        try:
            conn = self.backend.open_reader()
            self._install(conn)
            conn.epoch = self.reader_epoch
            return conn
        except BaseException:
            self._reader_slots.release()
            raise

    def drop_readers(self) -> None:
        """Close every pooled reader, and each reader in use when it comes back: a replica's
        copy was replaced by another database, whose schema SQLite would not know to reload
        when its schema cookie happens to equal the old one's."""
        self.reader_epoch += 1
        idle, self._idle_readers = self._idle_readers, []
        for conn in idle:
            conn.close()
        self.schema_changed()

    def release_reader(self, conn: Connection) -> None:
        _unguard(conn)  # the session's cancel and deadline are not the next user's
        conn.finish()
        if conn.epoch != self.reader_epoch:
            conn.close()
            self._reader_slots.release()
            return
        if conn.in_transaction():
            try:
                conn.run("rollback")  # end its read snapshot: cheap, nothing to undo
            except SqldError:
                conn.close()
                self._reader_slots.release()
                return
        self._idle_readers.append(conn)
        self._reader_slots.release()

    # -- caches ---------------------------------------------------------------------------

    def cached_info(self, sql: str) -> StatementInfo | None:
        return self._info_cache.get(sql)

    def remember_info(self, sql: str, info: StatementInfo) -> None:
        if len(sql) > 8192:
            return  # bulk statements with inline values: not worth the memory
        if len(self._info_cache) > 4096:
            self._info_cache.clear()
        self._info_cache[sql] = info

    def schema_changed(self) -> None:
        self.schema.value += 1
        self._info_cache.clear()
        self._decltypes_cache.clear()
        self.described.clear()
        # SQLite notices another connection's schema change when a read begins, not when a
        # statement is prepared: make idle readers look now, so describing sees the new schema.
        for reader in self._idle_readers:
            _unguard(reader)
            try:
                reader.run("select 1 from sqlite_schema limit 0")
            except (SqldError, Interrupted):
                pass

    def decltypes(self, conn: Connection, table: str) -> dict[str, str | None]:
        d = self._decltypes_cache.get(table)
        if d is None:
            d = self._decltypes_cache[table] = conn.column_decltypes(table)
        return d


class ResultCursor:
    """The rows of one statement, read from the connection it runs on.

    Holds that connection (via ``release``) until the rows are read or the cursor closed.
    """

    __slots__ = ("_service", "_conn", "_handle", "columns", "rows", "done", "_verb", "_count", "_changes",
                 "_release", "last_rowid", "notice", "_tx")
    after = None  # nothing for the driver to do after a statement SQLite ran

    def __init__(self, service: SchedulerService, conn: Connection | None, columns, rows, handle, verb, release,
                 changes: int | None = None, last_rowid: int | None = None) -> None:
        self._service = service
        self._conn = conn
        self._handle = handle
        self.columns = columns
        self.rows = rows
        self.done = done = handle is None
        self._verb = verb
        self._count = len(rows)
        self._changes = changes
        self.last_rowid = last_rowid
        self._release = release
        self.notice = None
        # The transaction the rows are read in (None in autocommit): its end closes them.
        self._tx = service.tx.serial if service.tx.open else None
        if done:
            self._finish()

    def _finish(self) -> None:
        if self._verb in _DML_TAGS:
            if self._changes is None:
                self._changes = self._conn.changes()
                if self._verb in INSERT_VERBS:
                    self.last_rowid = self._conn.last_insert_rowid()
            self._service.state.total_changes += self._changes
            if self._verb in INSERT_VERBS and self.last_rowid is not None:
                self._service.state.last_rowid = self.last_rowid
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def changes(self) -> int | None:
        return self._changes

    @property
    def orphaned(self) -> bool:
        """Its transaction ended (COMMIT or ROLLBACK in the same batch): PostgreSQL drops such a
        portal; its connection went back to the pool, and reading on would read nothing."""
        return self._tx is not None and self._tx != self._service.tx.serial

    async def fetch(self, n: int) -> None:
        if self.done:
            return
        if self.orphaned:
            self.done = True
            raise SqldError("portal does not exist: its transaction has ended", sqlstate="34000")
        if self._service.tx.failed:
            # PostgreSQL: a portal of an aborted transaction cannot be read on
            raise InFailedTransaction()
        try:
            rows, done = await self._service._in_thread(self._conn, self._conn.more, self._handle, n)
        except BaseException:
            self.done = True
            self._finish()
            raise
        self.rows = rows
        self._count += len(rows)
        if done:
            self.done = True
            self._finish()

    def tag(self) -> str:
        fmt = _DML_TAGS.get(self._verb)
        if fmt is not None:
            return fmt.format(self._changes)
        if self.columns is not None:
            return f"SELECT {self._count}"
        return self._verb

    async def close(self) -> None:
        if not self.done:
            self.done = True
            self._conn.finish(self._handle)
            self._finish()


@attrs.define(eq=False)
class SchedulerService:
    """One session's view of the scheduler: its transaction and the connection it holds."""

    s: Scheduler
    state: SessionState
    tx: Transaction = attrs.field(init=False, factory=Transaction)  # its conn: the backend connection it runs on
    schema_dirty: bool = attrs.field(init=False, default=False)  # the open transaction changed the schema
    kept_readers: list[Connection] = attrs.field(init=False, factory=list)  # readers with portals, until the tx ends
    # The session's own connection, once it made a temp object or set a connection
    # pragma (SQLite keeps those on the connection): from then on every statement of the
    # session runs there, reads and writes; it writes only while holding the writer lock.
    own: Connection | None = attrs.field(init=False, default=None)
    on_close: object = attrs.field(init=False, default=None)  # called when the session ends (a private database is dropped)
    # A replica's forwarded session asks to be told the replication log's last frame
    # after each statement (sqld.frame), to wait for its own writes (docs/replication.md).
    frame_source: object = attrs.field(init=False)
    frame_reported: tuple | None = attrs.field(init=False, default=None)

    @frame_source.default
    def _frame_source(self):
        capture = self.s.backend.capture
        return capture if capture is not None and self.state.settings.get(ext.REPORT_FRAME) == "on" else None

    @property
    def status(self) -> bytes:
        return self.tx.status

    async def __call__(self, request):
        try:
            return await self._dispatch(request)
        except NeedsOwnConnection:
            await self._take_own_connection()
            return await self._dispatch(request)

    async def _take_own_connection(self) -> None:
        if self.own is not None:
            raise SqldError("internal error: the session's own connection refused its statement")
        conn = self.s.backend.open_session_connection()
        self.s._install(conn)
        self.own = conn
        log.info("session %s has a connection of its own from now on (temp objects or connection settings)",
                 self.state.process_id)

    def _reader(self):
        """A connection to read on: the session's own, or one from the pool (awaited)."""
        return _ready(self.own) if self.own is not None else self.s.acquire_reader(self.state.wait_limit("reader"))

    def _release_reader(self, conn: Connection) -> None:
        if conn is not self.own:
            self.s.release_reader(conn)

    @property
    def _private_schema(self) -> bool:
        """This session may see tables others do not (its temp ones, or a transaction's own
        schema change): the caches by SQL text shared by sessions do not apply."""
        return self.schema_dirty or self.own is not None

    async def _dispatch(self, request):
        if type(request) is Execute:
            return await self.execute(request)
        if type(request) is ExecuteMany:
            return await self.execute_many(request)
        if type(request) is Describe:
            return await self.describe(request.statement)
        if type(request) is Peek:
            return await self.peek(request.statement)
        if type(request) is Sync:
            if self.tx.implicit:
                await self._end_implicit("rollback" if self.tx.failed else "commit")
            if self.frame_source is not None and not self.frame_source.broken:
                log_ = self.frame_source.log
                frame = (log_.last_commit, log_.generation)
                if frame != self.frame_reported:
                    self.frame_reported = frame
                    self.state.reported[ext.FRAME] = ext.encode_frame(*frame)
            return self.status
        if type(request) is Abort:
            if self.tx.implicit:
                # All or nothing: the batch's work so far goes; the rest is skipped to Sync.
                await self._end_implicit("rollback")
            elif self.tx.open:
                self._fail()
            return None
        if type(request) is Terminate:
            await self.terminate()
            return None
        raise TypeError(f"unknown request {request!r}")

    # -- running ----------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        t = self.state.statement_timeout
        return time.monotonic() + t if t else None

    async def _in_thread(self, conn: Connection, fn, *args, deadline: float | None = None):
        conn.guard(budget=None, deadline=deadline or self._deadline(), cancelled=self.state.cancelled,
                   context=self.state)
        self.state.executing = True
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self.s.limiter)
        except Interrupted as exc:
            raise QueryCanceled.because(exc.reason) from None
        finally:
            self.state.executing = False

    async def _start(self, conn: Connection, sql: str, params, first: int, readonly: bool):
        self.state.new_statement()
        budget = self.s.inline_budget
        if readonly and budget:
            conn.guard(budget=budget, deadline=self._deadline(), cancelled=self.state.cancelled,
                       context=self.state)
            try:
                return conn.start(sql, params, first)
            except BudgetExceeded:
                pass
            except Interrupted as exc:
                raise QueryCanceled.because(exc.reason) from None
        return await self._in_thread(conn, conn.start, sql, params, first)

    async def _lock_writer(self) -> None:
        self.state.may_write()
        if self.s.read_only:
            raise NeedsWriter()
        lock = self.s.writer_lock
        try:
            lock.acquire_nowait()
            return
        except anyio.WouldBlock:
            pass
        timeout, error = self.state.wait_limit()
        if timeout:
            with anyio.move_on_after(timeout) as scope:
                await lock.acquire()
            if scope.cancelled_caught:
                raise error()
        else:
            await lock.acquire()

    def _unlock_writer(self) -> None:
        self.s.writer_lock.release()

    async def info(self, stmt: Statement, conn: Connection | None = None) -> StatementInfo:
        if stmt.verb in TX_VERBS:
            return _NO_ROWS_INFO
        # A transaction that changed the schema sees statements its own way: no cache.
        cached = None if self._private_schema else self.s.cached_info(stmt.sql)
        if cached is not None:
            return cached
        if conn is None:
            conn = self.tx.conn
        if conn is not None:
            info = conn.info(stmt.sql)
            if not self._private_schema:
                self.s.remember_info(stmt.sql, info)
            return info
        reader = await self._reader()
        try:
            info = reader.info(stmt.sql)
        finally:
            self._release_reader(reader)
        if not self._private_schema:
            self.s.remember_info(stmt.sql, info)
        return info

    async def describe(self, stmt: Statement) -> DescribeResult:
        if self.tx.failed and stmt.verb not in TX_VERBS:
            raise InFailedTransaction()
        cached = None if self._private_schema else self.s.described.get(stmt.sql)
        if cached is not None:
            return cached
        result = await self._describe(stmt)
        if not self._private_schema and len(stmt.sql) <= 8192:
            if len(self.s.described) > 4096:
                self.s.described.clear()
            self.s.described[stmt.sql] = result
        return result

    async def _describe(self, stmt: Statement) -> DescribeResult:
        info = await self.info(stmt)
        decltypes: list[str | None] = [None] * info.param_count
        hints = dict(stmt.hints)
        guesses = stmt.columns
        untyped = guesses is not None and len(guesses) == len(info.columns) and any(
            c.decltype is None for c in info.columns)
        if (hints or untyped) and stmt.tables:
            conn = self.tx.conn
            reader = None
            if conn is None:
                conn = reader = await self._reader()
            try:
                for n, hint in hints.items():
                    if not 0 < n <= len(decltypes):
                        continue
                    if hint.position is not None:
                        columns = list(self.s.decltypes(conn, stmt.tables[0]).values())
                        if hint.position < len(columns):
                            decltypes[n - 1] = columns[hint.position]
                        continue
                    if hint.column:
                        for table in stmt.tables:
                            d = self.s.decltypes(conn, table).get(hint.column)
                            if d:
                                decltypes[n - 1] = d
                                break
                if untyped:
                    info = attrs.evolve(info, columns=tuple(
                        col if col.decltype or hint is None else
                        Column(col.name, self._guess(conn, stmt.tables, hint))
                        for col, hint in zip(info.columns, guesses)))
            finally:
                if reader is not None:
                    self._release_reader(reader)
        elif untyped:
            info = attrs.evolve(info, columns=tuple(
                col if col.decltype or hint is None else Column(col.name, hint.decltype)
                for col, hint in zip(info.columns, guesses)))
        return DescribeResult(info=info, param_decltypes=tuple(decltypes))

    def _guess(self, conn: Connection, tables, hint) -> str | None:
        """The declared type an expression column would have: its cast, literal or function
        type, or for arithmetic the type its operand columns give it."""
        if hint.decltype or not hint.operands:
            return hint.decltype or ("REAL" if hint.has_real else None)
        kinds = set()
        for name in hint.operands:
            decl = None
            for table in tables:
                decl = self.s.decltypes(conn, table).get(name)
                if decl:
                    break
            up = (decl or "").upper()
            if "INT" in up:
                kinds.add("INTEGER")
            elif "REAL" in up or "FLOA" in up or "DOUB" in up:
                kinds.add("REAL")
            else:
                return decl if len(hint.operands) == 1 and not hint.has_real else None
        if kinds == {"INTEGER"} and not hint.has_real:
            return "INTEGER"
        return "REAL"

    async def peek(self, stmt: Statement) -> tuple | None:
        info = await self.info(stmt)
        if not info.readonly or not info.columns or self.tx.failed:
            return None
        conn = self.tx.conn
        reader = None
        if conn is None:
            conn = reader = await self._reader()
        try:
            conn.guard(budget=self.s.inline_budget or 20, deadline=None, cancelled=None, context=self.state)
            try:
                _, rows, handle = conn.start(stmt.sql, _peek_params(stmt, info.param_count), 1)
            except (BudgetExceeded, Interrupted, SqldError):
                return None
            if handle is not None:
                conn.finish(handle)
        finally:
            if reader is not None:
                self._release_reader(reader)
        return rows[0] if rows else None

    async def execute(self, req: Execute):
        stmt = req.statement
        verb = stmt.verb
        if verb in TX_VERBS:
            return await self._transaction_control(stmt)
        if self.tx.failed:
            raise InFailedTransaction()
        if self.tx.open:
            return await self._execute_in_tx(stmt, req)
        if verb not in WRITE_VERBS:
            # Most likely a read: a reader tries it; SQLite tells, before running it, if it writes.
            conn = await self._reader()
            release = _releaser(self._release_reader, conn)
            try:
                columns, rows, handle = await self._start(conn, stmt.sql, req.params, req.first, True)
            except NeedsWriter:
                release()
            except BaseException:
                release()
                raise
            else:
                return ResultCursor(self, conn, columns, rows, handle, verb, release)
        self.state.may_write()
        if self.s.read_only:
            raise NeedsWriter()
        if req.pipelined:
            return await self._begin_implicit(stmt, req)
        if groupable(stmt) and self.s.group.running and self.own is None:
            write = Write(stmt, req.params, self._deadline(), self.state.cancelled, self.state, req.check)
            self.state.new_statement()
            self.state.executing = True
            try:
                await self.s.group.submit(write, *self.state.wait_limit())
            finally:
                self.state.executing = False
            return ResultCursor(self, None, write.columns, write.rows, None, verb, None, write.changes,
                                write.last_rowid)
        # an autocommit write that runs alone: hold the writer for this statement only
        await self._lock_writer()
        conn = self._writer_connection()
        release = _releaser(self._after_autocommit_write, conn)
        try:
            if verb in ATOMIC_VERBS:
                return await self._atomic_write(conn, stmt, req, release)
            columns, rows, handle = await self._start(conn, stmt.sql, req.params, req.first, False)
            if verb.startswith(DDL_VERBS):
                self.s.schema_changed()
        except BaseException:
            release()
            raise
        return ResultCursor(self, conn, columns, rows, handle, verb, release)

    async def _atomic_write(self, conn: Connection, stmt: Statement, req: Execute, release):
        """An autocommit row change running alone (not grouped: OR ROLLBACK, or a session on
        its own connection), all or nothing as in PostgreSQL. In SQLite's own autocommit a
        RAISE(FAIL) or OR FAIL keeps what the statement changed before the error; so it runs
        as a group of one (CommitGroup.run_alone): in a transaction, under a savepoint, its
        rows (RETURNING) checked before the COMMIT, a conflict with another process run again."""
        write = Write(stmt, req.params, self._deadline(), self.state.cancelled, self.state, req.check)
        self.state.new_statement()
        self.state.executing = True
        try:
            await anyio.to_thread.run_sync(self.s.group.run_alone, conn, write, limiter=self.s.limiter)
        finally:
            self.state.executing = False
        if write.error is not None:
            raise write.error
        return ResultCursor(self, conn, write.columns, write.rows, None, stmt.verb, release, write.changes,
                            write.last_rowid)

    async def _begin_implicit(self, stmt: Statement, req: Execute):
        """A pipeline's first write outside a transaction block: it and what follows up to
        Sync run in one transaction on the writer (PostgreSQL's implicit transaction). It
        starts at the first write, on the writer: reads before it ran alone, each seeing
        the newest data (as under PostgreSQL's read committed), so they cannot go stale."""
        self.tx.begin(implicit=True)
        try:
            await self._tx_writer()
        except BaseException:
            self.tx.end()
            raise
        return await self._execute_in_tx(stmt, req)

    async def _end_implicit(self, how: str) -> None:
        self.tx.make_explicit()
        if self.tx.open:
            await self._end_tx(how)

    def _writer_connection(self) -> Connection:
        """The connection to write on, the writer lock held: the session's own, or the writer."""
        if self.own is None:
            return _unguard(self.s.backend.writer())  # a previous session's cancel is not this one's
        self.own.readonly = False
        return self.own

    def _after_autocommit_write(self, conn: Connection) -> None:
        _unguard(conn)  # ending it must not stop at the session's cancel
        if conn is self.own:
            conn.readonly = True  # its other portals read on; the statement's cursor is closed
        else:
            conn.finish()
        self.s.commit_seq += 1
        if conn.in_transaction():
            # The statement opened a transaction SQLite-side (e.g. a SAVEPOINT in a batch
            # that failed half-way): never leave the writer holding one between sessions.
            try:
                conn.run("rollback")
            except SqldError:
                pass
        self._unlock_writer()

    async def execute_many(self, req: ExecuteMany) -> int:
        stmt = req.statement
        if not self.tx.open or self.tx.failed or stmt.verb not in INSERT_VERBS:
            changed = 0
            for params in req.rows:
                cur = await self.execute(Execute(stmt, params, 1, req.pipelined))
                await cur.close()
                changed += cur.changes or 0
            return changed
        try:
            conn = await self._tx_writer_for(stmt)
            self.state.new_statement()
            changed = await self._in_thread(conn, conn.run_many, stmt.sql, req.rows, deadline=req.deadline)
        except NeedsOwnConnection:
            self._fail()
            raise SqldError("this COPY needs a connection of the session's own (a temporary object): "
                            "run it outside a transaction block", sqlstate="25001") from None
        except BaseException as exc:
            if isinstance(exc, Exception):
                self._fail()
            raise
        self.state.total_changes += changed
        return changed

    async def _execute_in_tx(self, stmt: Statement, req: Execute):
        fresh = self.tx.conn is None
        try:
            conn = self.tx.conn
            if stmt.verb in WRITE_VERBS:
                conn = await self._tx_writer_for(stmt)
            elif conn is None:
                conn = await self._tx_connection()
            try:
                columns, rows, handle = await self._start(
                    conn, stmt.sql, req.params, req.first, conn.readonly or stmt.verb in READ_VERBS)
            except NeedsWriter:
                if fresh:
                    # The transaction's first statement, refused by the reader before it read
                    # anything: the transaction starts on the writer instead. (Moving its
                    # snapshot over would fail, 40001, whenever anyone committed meanwhile.)
                    await self._abandon_tx_conn()
                conn = await self._tx_writer_for(stmt)
                columns, rows, handle = await self._start(conn, stmt.sql, req.params, req.first, False)
        except NeedsOwnConnection:
            if fresh:
                # The transaction's first statement: it can start over on the session's own
                # connection (nothing ran on the one it took).
                await self._abandon_tx_conn()
                raise
            self._fail()
            raise SqldError("a temporary object or connection setting cannot be the first of the session "
                            "inside a transaction that already ran statements", sqlstate="25001",
                            hint="Run it before BEGIN, or first in the transaction; the session keeps a "
                            "connection of its own from then on.") from None
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, NeedsWriter):
                self._fail()
            raise
        if stmt.verb.startswith(DDL_VERBS):
            self.schema_dirty = True
            self.s.schema_changed()
        return ResultCursor(self, conn, columns, rows, handle, stmt.verb, _releaser(_nothing, conn))

    async def _tx_writer_for(self, stmt: Statement) -> Connection:
        if self.tx.read_only:
            raise ReadOnlyTransaction(f"cannot execute {stmt.verb} in a read-only transaction")
        return await self._tx_writer()

    def _fail(self) -> None:
        """A statement in the transaction failed. PostgreSQL semantics: the transaction is
        aborted until ROLLBACK. A session on the sqld extension (sqlite3's semantics) keeps
        its transaction, as SQLite does, unless SQLite itself rolled it back."""
        if not self.state.ext:
            self.tx.fail()
            return
        conn = self.tx.conn
        if conn is not None and not conn.readonly and not conn.in_transaction():
            self.tx.end()  # SQLite rolled it back
            if conn is self.own:
                conn.readonly = True
            else:
                conn.finish()
            self._unlock_writer()

    async def _abandon_tx_conn(self) -> None:
        conn, self.tx.conn, self.tx.snapshot = self.tx.conn, None, None
        if conn is None:
            return
        with anyio.CancelScope(shield=True):
            if conn.in_transaction():
                await anyio.to_thread.run_sync(conn.run, "rollback", limiter=self.s.limiter)
        self._give_back(conn)

    async def _tx_connection(self) -> Connection:
        """The transaction's connection for a read. A transaction starts on a reader at its
        first statement (BEGIN itself takes nothing, as in PostgreSQL) and moves to the
        writer at its first write (``_tx_writer``)."""
        if self.tx.conn is not None:
            return self.tx.conn
        conn = await self._reader()
        # Taken before the snapshot starts: a commit racing with it can only make the
        # upgrade check below fail safe (a spurious 40001), never miss a change.
        self.tx.snapshot = self.s.commit_seq
        try:
            conn.run("begin")
        except BaseException:
            self._release_reader(conn)
            raise
        self.tx.conn = conn
        return conn

    async def _tx_writer(self) -> Connection:
        """The writer, for a write in the transaction, taking it over from the reader the
        transaction read on if nothing was committed since its snapshot began; otherwise
        the transaction read stale data and must be retried (SQLite's own rule for a
        deferred transaction that starts writing: SQLITE_BUSY_SNAPSHOT)."""
        conn = self.tx.conn
        if conn is not None and not conn.readonly:
            return conn
        await self._lock_writer()
        begun = False
        if conn is not None:
            if self.s.commit_seq != self.tx.snapshot:
                self._unlock_writer()
                raise SerializationFailure(
                    "could not serialize access due to concurrent update",
                    detail="Another session committed after this transaction's first read.",
                    hint="Retry the transaction, or start it with a write.",
                )
            if conn is self.own:
                # The session's own connection goes on from its read to its write: SQLite
                # upgrades the transaction (the check above made sure it can).
                conn.readonly = False
                return conn
            continues = self.s.backend.begin_write_after
            if continues is not None:
                # Other processes write too (mvsqlite): the write continues the reader's snapshot,
                # taken over before the reader lets it go (base.ContinuesSnapshots; issue 10, 4).
                try:
                    continues(conn, self._writer_connection())
                except BaseException:
                    self._unlock_writer()
                    raise
                begun = True
            self.tx.conn = None
            if conn.has_open_cursors:
                # Suspended portals read on in the snapshot they started in (as a PostgreSQL
                # cursor does); the reader is released when the transaction ends.
                self.kept_readers.append(conn)
            else:
                self.s.release_reader(conn)
        writer = self._writer_connection()
        try:
            if not begun:
                writer.run("begin immediate")
        except BaseException:
            if writer is self.own:
                writer.readonly = True
            self._unlock_writer()
            raise
        self.tx.conn = writer
        return writer

    def _give_back(self, conn: Connection) -> None:
        if conn is self.own:
            if conn.readonly:
                if conn.in_transaction():
                    conn.run("rollback")  # a read transaction: end its snapshot
            else:
                conn.readonly = True
                self._unlock_writer()
        elif conn.readonly:
            self.s.release_reader(conn)
        else:
            conn.finish()
            self._unlock_writer()

    async def _end_tx(self, sql: str) -> None:
        conn = self.tx.end()
        kept, self.kept_readers = self.kept_readers, []
        for reader in kept:
            self.s.release_reader(reader)
        if self.schema_dirty:
            self.schema_dirty = False
            self.s.schema_changed()
        if conn is None:
            return
        try:
            conn.finish()
            if conn.readonly:
                pass  # a read transaction: release_reader ends it
            elif conn.in_transaction():
                if sql == "commit":
                    try:
                        await self._in_thread(conn, conn.run, "commit")
                        self.s.commit_seq += 1
                    except BaseException:
                        # PostgreSQL ends a transaction whose COMMIT failed; SQLite may keep
                        # it open (deferred foreign keys): roll back so it ends here too.
                        with anyio.CancelScope(shield=True):
                            if conn.in_transaction():
                                await anyio.to_thread.run_sync(conn.run, "rollback", limiter=self.s.limiter)
                        raise
                else:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(conn.run, "rollback", limiter=self.s.limiter)
        finally:
            self._give_back(conn)

    async def _transaction_control(self, stmt: Statement):
        verb = stmt.verb
        words = stmt.words
        if verb in ("BEGIN", "START"):
            if self.tx.implicit:
                # BEGIN inside a pipeline's implicit transaction makes it an explicit one,
                # holding what ran before it (PostgreSQL does the same).
                self.tx.make_explicit()
                return StaticCursor(None, [], "BEGIN")
            if self.tx.open:
                return StaticCursor(None, [], "BEGIN", notice="there is already a transaction in progress")
            self.tx.begin(read_only=_READ_ONLY.search(stmt.sql) is not None)
            if not self.tx.read_only and ("IMMEDIATE" in words or "EXCLUSIVE" in words):
                # SQLite's way to say "this transaction will write": take the writer now, so
                # its reads can never go stale before its first write (no 40001 later).
                try:
                    await self._tx_writer()
                except BaseException:
                    self.tx.end()
                    raise
            return StaticCursor(None, [], "BEGIN")
        if verb in ("COMMIT", "END"):
            self.tx.make_explicit()  # COMMIT ends a pipeline's implicit transaction too
            if not self.tx.open:
                return StaticCursor(None, [], "COMMIT", notice="there is no transaction in progress")
            if self.tx.failed:
                await self._end_tx("rollback")
                return StaticCursor(None, [], "ROLLBACK")
            await self._end_tx("commit")
            return StaticCursor(None, [], "COMMIT")
        if verb in ("ROLLBACK", "ABORT"):
            if "TO" in words:
                return await self._rollback_to(stmt)
            self.tx.make_explicit()
            if not self.tx.open:
                return StaticCursor(None, [], "ROLLBACK", notice="there is no transaction in progress")
            await self._end_tx("rollback")
            return StaticCursor(None, [], "ROLLBACK")
        if verb == "SAVEPOINT":
            if self.tx.failed:
                raise InFailedTransaction()
            if not self.tx.open or self.tx.implicit:
                if not self.state.ext:
                    # PostgreSQL: savepoints live in transaction blocks only (not in a batch's
                    # implicit transaction either); nothing is opened, nothing held.
                    raise SqldError("SAVEPOINT can only be used in transaction blocks", sqlstate="25P01")
                if not self.tx.open:
                    self.tx.begin()  # sqlite3's semantics: an outer SAVEPOINT starts a transaction
            return await self._run_in_tx(stmt, "SAVEPOINT")
        if verb == "RELEASE":
            if self.tx.failed:
                raise InFailedTransaction()
            if not self.tx.open or (self.tx.implicit and not self.state.ext):
                raise SqldError("RELEASE SAVEPOINT can only be used in transaction blocks", sqlstate="25P01")
            return await self._run_in_tx(stmt, "RELEASE")
        raise SqldError(f"unexpected transaction statement {verb}")

    async def _rollback_to(self, stmt: Statement):
        if not self.tx.open or (self.tx.implicit and not self.state.ext):
            raise SqldError("ROLLBACK TO SAVEPOINT can only be used in transaction blocks", sqlstate="25P01")
        conn = self.tx.conn
        # A savepoint that is not there (never made, released, or rolled back past) is an
        # error that fails the transaction, as in PostgreSQL: its COMMIT answers ROLLBACK.
        if conn is None or not conn.in_transaction():
            self._fail()
            raise SqldError(f'savepoint "{_savepoint_name(stmt)}" does not exist', sqlstate="3B001")
        try:
            await self._in_thread(conn, conn.run, stmt.sql)
        except SqldError as exc:
            self._fail()
            if exc.sqlstate == "3B001":
                exc.message = f'savepoint "{_savepoint_name(stmt)}" does not exist'
            raise
        except Exception:
            self._fail()
            raise
        self.tx.recover()
        return StaticCursor(None, [], "ROLLBACK")

    async def _run_in_tx(self, stmt: Statement, tag: str):
        # Savepoints live on the writer: they could not follow a move from a reader.
        conn = await (self._tx_connection() if self.tx.read_only else self._tx_writer())
        try:
            await self._in_thread(conn, conn.run, stmt.sql)
        except Exception as exc:
            self._fail()
            if isinstance(exc, SqldError) and exc.sqlstate == "3B001":
                exc.message = f'savepoint "{_savepoint_name(stmt)}" does not exist'
            raise
        if not conn.in_transaction():
            # RELEASE of the outermost savepoint committed the transaction.
            await self._end_tx("commit")
        return StaticCursor(None, [], tag)

    async def terminate(self) -> None:
        """The session ended: roll back its transaction at once (shielded from cancellation)."""
        with anyio.CancelScope(shield=True):
            if self.tx.open:
                try:
                    await self._end_tx("rollback")
                except Exception as exc:  # the session is gone; nothing to tell it
                    log.warning("rollback at disconnect failed: %s", exc)
            own, self.own = self.own, None
            if own is not None:
                own.close()
            if self.on_close is not None:
                self.on_close()


async def _ready(value):
    return value


def _savepoint_name(stmt: Statement) -> str:
    """The savepoint a ROLLBACK TO / RELEASE names (its last word), for PostgreSQL's message."""
    name = stmt.sql.strip().rstrip(";").split()[-1]
    return name[1:-1].replace('""', '"') if name.startswith('"') and name.endswith('"') else name.lower()


def _releaser(fn, conn):
    """A release callback that runs at most once."""
    done = False

    def release() -> None:
        nonlocal done
        if not done:
            done = True
            fn(conn)

    return release


def _peek_params(stmt: Statement, count: int) -> tuple:
    """Parameters for a peek: NULL, but -1 where an integer is wanted (LIMIT -1 is no limit,
    where LIMIT NULL would be an error)."""
    params = [None] * count
    for n, hint in stmt.hints:
        if hint.oid == INT8 and 0 < n <= count:
            params[n - 1] = -1
    return tuple(params)


def _nothing(conn: Connection) -> None:
    """Release for a cursor inside a transaction: the connection stays with the transaction."""



def _unguard(conn: Connection) -> Connection:
    """``conn`` with no session's stop conditions: a connection passed on keeps the last
    ``guard`` it was given, and the cancel of a session whose client went away stays true."""
    conn.guard(budget=None, deadline=None, cancelled=None, context=None)
    return conn
