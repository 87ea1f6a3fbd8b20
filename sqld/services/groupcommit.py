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
twice. A COMMIT that fails (a deferred constraint) falls back to one transaction each.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.to_thread
import attrs

from sqld.backends.base import Column, Connection, Interrupted
from sqld.errors import QueryCanceled, SqldError
from sqld.sqltext import Statement

log = logging.getLogger(__name__)

# Verbs that can share a transaction with others: plain DML. DDL, VACUUM, PRAGMA and
# anything naming ROLLBACK run alone.
GROUPABLE_VERBS = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE"))
MAX_GROUP = 256


def groupable(stmt: Statement) -> bool:
    return stmt.verb in GROUPABLE_VERBS and "ROLLBACK" not in stmt.sql.upper()


@attrs.define(eq=False)
class Write:
    """One queued autocommit write and, once the group committed, its outcome."""

    statement: Statement
    params: tuple
    deadline: float | None
    cancelled: Any  # () -> bool
    context: Any
    done: anyio.Event = attrs.field(factory=anyio.Event)
    started: bool = False
    columns: tuple[Column, ...] | None = None
    rows: list[tuple] = attrs.Factory(list)
    changes: int = 0
    last_rowid: int | None = None
    error: BaseException | None = None


class CommitGroup:
    """The commit loop and its queue. ``run`` must be running (in the server's task group)
    for ``submit`` to be answered."""

    def __init__(self, writer: Connection, writer_lock: anyio.Lock, limiter: anyio.CapacityLimiter,
                 on_commit) -> None:
        self.writer = writer
        self.writer_lock = writer_lock
        self.limiter = limiter
        self.on_commit = on_commit
        self.queue: list[Write] = []
        self._wake = anyio.Event()
        self.running = False
        self.groups = 0      # statistics: groups committed …
        self.statements = 0  # … and the statements in them

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
                    finally:
                        for w in batch:
                            w.done.set()
                self.groups += 1
                self.statements += len(batch)
                self.on_commit()
        finally:
            self.running = False
            for w in self.queue:
                w.error = SqldError("the server is shutting down", sqlstate="57P01")
                w.done.set()

    # -- on the worker thread -------------------------------------------------------------------

    def _run_group(self, batch: list[Write]) -> None:
        conn = self.writer
        pending = batch
        while pending:
            pending = self._attempt(conn, pending)

    def _attempt(self, conn: Connection, pending: list[Write]) -> list[Write]:
        """Run ``pending`` in one transaction; return what must run again (empty when done)."""
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        try:
            conn.run("begin")
        except SqldError as exc:
            for w in pending:
                w.error = exc
            return []
        ran: list[Write] = []
        for k, w in enumerate(pending):
            conn.guard(budget=None, deadline=w.deadline, cancelled=w.cancelled, context=w.context)
            try:
                conn.run("savepoint sqld_group")
                columns, rows, handle = conn.start(w.statement.sql, w.params, 1 << 62)
                w.columns, w.rows, w.error = columns, rows, None
                w.changes = conn.changes()
                w.last_rowid = conn.last_insert_rowid()
                conn.guard(budget=None, deadline=None, cancelled=None, context=None)
                conn.run("release sqld_group")
                ran.append(w)
            except (SqldError, Interrupted) as exc:
                conn.guard(budget=None, deadline=None, cancelled=None, context=None)
                w.error = QueryCanceled.because(exc.reason) if isinstance(exc, Interrupted) else exc
                if conn.in_transaction():
                    conn.run("rollback to sqld_group")
                    conn.run("release sqld_group")
                    continue
                # The statement took the group's transaction with it: run the others again.
                return ran + pending[k + 1 :]
        conn.guard(budget=None, deadline=None, cancelled=None, context=None)
        try:
            conn.run("commit")
        except SqldError as exc:
            if conn.in_transaction():
                conn.run("rollback")
            if len(ran) == 1:
                ran[0].error = exc
                return []
            log.info("group commit of %d statements failed (%s): committing them one by one",
                     len(ran), exc.message)
            for w in ran:
                while self._attempt(conn, [w]):
                    pass
        return []
