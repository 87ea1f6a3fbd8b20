"""Group commit: autocommit writes from many sessions share one SQLite transaction and fsync.

With ``synchronous=full`` every commit waits for an fsync (1–7 ms on the disks measured),
so one writer committing each session's statement alone tops out at a few hundred writes a
second. PostgreSQL commits concurrent transactions with one flush; so does this.

The commit loop takes every autocommit write queued while the previous group ran, and on
the writer connection runs ``BEGIN``, then each statement under its own savepoint (a
failing statement is rolled back alone and gets its own error), then ``COMMIT``; only then
is any session answered, so an acknowledged write is a durable one, as before.

Two things can undo the whole group transaction before COMMIT: an interrupt (cancel,
statement timeout) of a writing statement, which SQLite answers by rolling the transaction
back, and a conflict clause ``OR ROLLBACK``. The statements that had run are then run
again in a fresh transaction; none of them was answered yet, so nothing is lost or done
twice. A COMMIT that fails (a deferred constraint) falls back to one transaction each, for
every member: an error a member saw in the group may have come from a groupmate's rows,
which that rollback took away. A COMMIT that lost a conflict to another process (mvsqlite,
40001) runs the whole group again, a bounded number of times.

A deferred constraint (DEFERRABLE INITIALLY DEFERRED foreign key) is checked at COMMIT on
the whole transaction, where one member's violation could be repaired by a groupmate: while
the schema has one, members commit one by one. Rows a member returns are checked before the
commit (``Write.check``: could the client be sent them).

The invariant: a member is answered "committed" only when the COMMIT holding it succeeded;
whatever else happens (an exception in a SQL function, a bug here), it gets an error, and
the loop goes on serving the others.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import anyio
import anyio.to_thread
import attrs

from sqld.backends.base import Column, Connection, Interrupted
from sqld.errors import QueryCanceled, SerializationFailure, SqldError
from sqld.sqltext import Statement
from sqld.verbs import GROUPABLE_VERBS

log = logging.getLogger(__name__)

MAX_GROUP = 256
# mvsqlite: how often a group whose COMMIT lost a conflict to another process runs again.
CONFLICT_RETRIES = 8


def groupable(stmt: Statement) -> bool:
    """Plain DML can share a transaction with others; DDL, VACUUM, PRAGMA and anything naming
    ROLLBACK (OR ROLLBACK, RAISE(ROLLBACK)) run alone."""
    return stmt.verb in GROUPABLE_VERBS and "ROLLBACK" not in stmt.sql.upper()


@attrs.define(eq=False)
class Write:
    """One queued autocommit write and, once the group committed, its outcome."""

    statement: Statement
    params: tuple
    deadline: float | None
    cancelled: Any  # () -> bool
    context: Any
    check: Any = None  # (columns, rows) -> None, raises: Execute.check, before the group commits
    done: anyio.Event = attrs.field(factory=anyio.Event)
    started: bool = False
    columns: tuple[Column, ...] | None = None
    rows: list[tuple] = attrs.Factory(list)
    changes: int = 0
    last_rowid: int | None = None
    error: BaseException | None = None
    committed: bool = False  # set only once the COMMIT that holds it succeeded

    def reset(self) -> None:
        """Forget the outcome of a run that was rolled back: the statement runs again."""
        self.columns, self.rows, self.changes, self.last_rowid = None, [], 0, None
        self.error, self.committed = None, False


@attrs.define(eq=False)
class CommitGroup:
    """The commit loop and its queue. ``run`` must be running (in the server's task group)
    for ``submit`` to be answered."""

    writer: Any  # the backend's writer connection
    writer_lock: anyio.Lock
    limiter: anyio.CapacityLimiter
    on_commit: Any  # called after each group committed
    queue: list[Write] = attrs.field(init=False, factory=list)
    _wake: anyio.Event = attrs.field(init=False, factory=anyio.Event)
    running: bool = attrs.field(init=False, default=False)
    _deferred: bool = attrs.field(init=False, default=False)  # _has_deferred_constraints' cache …
    _deferred_for: object = attrs.field(init=False, factory=object)  # … for this schema version
    groups: int = attrs.field(init=False, default=0)      # statistics: groups committed …
    statements: int = attrs.field(init=False, default=0)  # … and the statements in them

    async def submit(self, write: Write, timeout: float | None, error=None) -> Write:
        """Queue a write and wait for its group to commit; a timeout only stops a write that
        has not started (one that started is waited for: its group may commit it), with
        ``error()`` (a statement or lock timeout)."""
        self.queue.append(write)
        self._wake.set()
        if timeout:
            with anyio.move_on_after(timeout):
                await write.done.wait()
            if not write.done.is_set():
                if not write.started:
                    self.queue.remove(write)
                    raise error()
                with anyio.CancelScope(shield=True):
                    await write.done.wait()
        else:
            await write.done.wait()
        if write.error is not None:
            raise write.error
        return write

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                if not self.queue:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                async with self.writer_lock:
                    batch, self.queue = self.queue[:MAX_GROUP], self.queue[MAX_GROUP:]
                    for w in batch:
                        w.started = True
                    try:
                        # Shielded: a group that started finishes, so every session in it
                        # hears how its statement ended.
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self._run_group, batch, limiter=self.limiter)
                    except Exception:
                        # A bug in sqld, not in a statement (those are each member's error):
                        # the group was rolled back; its members hear so, the loop goes on.
                        log.exception("group commit of %d statements failed", len(batch))
                    finally:
                        for w in batch:
                            if w.error is None and not w.committed:
                                # Only a COMMIT that succeeded makes an acknowledgement.
                                w.error = SqldError("internal error: the statement was not committed",
                                                    sqlstate="XX000", hint="The server's log has the reason.")
                            w.done.set()
                self.groups += 1
                self.statements += len(batch)
                self.on_commit()
        except Exception:
            log.critical("the group-commit loop stopped; autocommit writes now commit one by one", exc_info=True)
        finally:
            self.running = False
            for w in self.queue:
                w.error = SqldError("the server is shutting down", sqlstate="57P01")
                w.done.set()
            self.queue = []

    # -- on the worker thread -------------------------------------------------------------------

    def _has_deferred_constraints(self, conn: Connection) -> bool:
        """Whether the schema has a DEFERRABLE INITIALLY DEFERRED foreign key (read again
        when the schema version moves)."""
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        version = _one(conn, "pragma schema_version")
        if version != self._deferred_for:
            found = _one(conn, "select 1 from sqlite_schema where type = 'table' and "
                               "sql like '%initially%deferred%' limit 1")
            self._deferred, self._deferred_for = found is not None, version
        return self._deferred

    def _run_group(self, batch: list[Write]) -> None:
        conn = self.writer
        if len(batch) > 1 and self._has_deferred_constraints(conn):
            # A deferred constraint is checked at COMMIT, on the whole transaction: a member's
            # violation could be repaired by a groupmate's statement (a row inserted before its
            # parent, the parent inserted by another session), committing what no serial order
            # would have. Each runs in a transaction of its own, checked alone.
            try:
                self._alone(conn, batch)
            except BaseException:
                _rollback(conn)
                raise
            return
        pending = batch
        conflicts = 0
        try:
            while pending:
                pending, conflicted = self._attempt(conn, pending)
                if conflicted:
                    # mvsqlite: another process committed to pages the group read. Nothing of
                    # the group was answered, so all of it can run again (bounded, with jitter).
                    conflicts += 1
                    if conflicts > CONFLICT_RETRIES:
                        self._alone(conn, pending, retry_conflicts=False)
                        return
                    time.sleep(min(0.05, 0.001 * 2 ** conflicts) * random.random())
        except BaseException:
            _rollback(conn)
            raise

    def run_alone(self, conn: Connection, write: Write) -> None:
        """One write in a transaction of its own on ``conn`` (the writer, or a session's own
        connection; its lock held), with a member's guarantees: all or nothing under its
        savepoint, rows checked before COMMIT, conflicts with other processes run again. On
        the worker thread; the outcome is in ``write`` (``error`` set if it failed)."""
        self._alone(conn, [write])

    def _alone(self, conn: Connection, members: list[Write], retry_conflicts: bool = True) -> None:
        """Run each member in a transaction of its own: after a group failed at COMMIT, the
        errors members saw may have come from a groupmate's rows, now rolled back."""
        for w in members:
            w.reset()
            pending, tries = [w], 0
            while pending:
                pending, conflicted = self._attempt(conn, pending)
                tries += 1
                if conflicted and (not retry_conflicts or tries > CONFLICT_RETRIES):
                    break  # its error is the conflict (40001)
                if conflicted:
                    time.sleep(min(0.05, 0.001 * 2 ** tries) * random.random())

    def _attempt(self, conn: Connection, pending: list[Write]) -> tuple[list[Write], bool]:
        """Run ``pending`` in one transaction. Returns what must run again (empty when done)
        and whether COMMIT lost a conflict (then everything in ``pending`` runs again)."""
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        try:
            conn.run("begin")
        except SqldError as exc:
            for w in pending:
                w.error = exc
            return [], False
        ran: list[Write] = []
        for k, w in enumerate(pending):
            w.reset()
            conn.guard(budget=None, deadline=w.deadline, cancelled=w.cancelled, context=w.context)
            try:
                conn.run("savepoint sqld_group")
                columns, rows, handle = conn.start(w.statement.sql, w.params, 1 << 62)
                w.columns, w.rows = columns, rows
                if w.check is not None and columns:
                    w.check(columns, rows)  # rows the client could not be sent fail the statement
                w.changes = conn.changes()
                w.last_rowid = conn.last_insert_rowid()
                conn.guard(budget=None, deadline=None, cancelled=None, context=None)
                conn.run("release sqld_group")
                ran.append(w)
            except Exception as exc:
                conn.guard(budget=None, deadline=None, cancelled=None, context=None)
                w.error = _statement_error(exc)
                if conn.in_transaction():
                    conn.run("rollback to sqld_group")
                    conn.run("release sqld_group")
                    continue
                # The statement took the group's transaction with it: run the others again.
                return ran + pending[k + 1 :], False
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        try:
            conn.run("commit")
        except SqldError as exc:
            _rollback(conn)
            for w in ran:
                w.reset()
            if isinstance(exc, SerializationFailure):
                for w in pending:
                    w.error = exc  # kept only if no retry is left
                return pending, True
            if len(pending) == 1:
                pending[0].error = exc
                return [], False
            log.info("group commit of %d statements failed (%s): running them one by one",
                     len(pending), exc.message)
            self._alone(conn, pending)
            return [], False
        for w in ran:
            w.committed = True
        return [], False


def _statement_error(exc: Exception) -> SqldError:
    """What the session of a statement that failed inside the group is told."""
    if isinstance(exc, Interrupted):
        return QueryCanceled.because(exc.reason)
    if isinstance(exc, SqldError):
        return exc
    # The backend turns what SQLite and SQL functions raise into SqldError; anything else
    # is a bug in sqld.
    log.error("unexpected error in a grouped statement", exc_info=exc)
    return SqldError(f"internal error: {type(exc).__name__}: {exc}", sqlstate="XX000")


def _one(conn: Connection, sql: str):
    """The first value of the first row of ``sql`` (None if no row), its statement finished."""
    _, rows, handle = conn.start(sql, (), 2)
    if handle is not None:
        conn.finish(handle)
    return rows[0][0] if rows else None


def _rollback(conn: Connection) -> None:
    if conn.in_transaction():
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        conn.run("rollback")
