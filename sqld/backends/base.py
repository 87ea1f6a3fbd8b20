"""The storage backend interface that libsql, mvsqlite and replica backends implement.

A backend hands out *connections* (blocking, one thread at a time) and says which is the
writer. The scheduler decides which connection runs what and on which thread; a backend
knows nothing of pgwire or sessions.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import attrs


@attrs.frozen
class Column:
    """A result column: its name and SQLite declared type (None for an expression)."""

    name: str
    decltype: str | None = None
    oid: int | None = None  # set only by compat answers, which know their PostgreSQL type


@attrs.frozen
class StatementInfo:
    """What preparing a statement tells without running it."""

    columns: tuple[Column, ...]
    param_count: int
    readonly: bool


class BudgetExceeded(Exception):
    """An inline run hit its step budget and was stopped before it changed anything."""


class NeedsWriter(Exception):
    """A read-only connection was asked to run a statement that writes; nothing ran."""


class NeedsOwnConnection(Exception):
    """A pooled connection was asked to hold something of one session's (a temp object, a
    connection pragma); nothing ran. The session gets a connection of its own
    (``Backend.open_session_connection``) and runs the statement there."""


class Interrupted(Exception):
    """The run was stopped by a cancel request or a statement timeout (``reason`` says which)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Batch(Protocol):
    rows: list[tuple]
    done: bool


class Connection(Protocol):
    """One SQLite connection. Methods block; call them on one thread at a time.

    ``guard`` sets what may stop the next run: a step budget (inline runs, read-only
    statements only), a deadline (monotonic seconds) and a cancel check.
    """

    readonly: bool
    context: Any
    epoch: int  # the scheduler's reader generation this connection belongs to (0 until pooled)

    def guard(self, *, budget: int | None, deadline: float | None, cancelled: Any, context: Any) -> None: ...

    def create_function(self, name: str, nargs: int, fn) -> None:
        """Register a SQL function; it is called as ``fn(context, *args)``."""
        ...

    def run(self, sql: str) -> None:
        """Run one statement to completion, ignoring its rows."""
        ...

    def info(self, sql: str) -> StatementInfo: ...

    def start(self, sql: str, params: Sequence[Any], first: int) -> tuple[tuple[Column, ...] | None, list[tuple], Any]:
        """Run ``sql``; return its columns (None if it returns no rows), up to ``first`` rows and
        a handle to read the rest with (None when there is no more). Several may be open."""
        ...

    def more(self, handle: Any, n: int) -> tuple[list[tuple], bool]:
        """Up to ``n`` more rows of an open handle, and whether it is now done (and closed)."""
        ...

    has_open_cursors: bool

    def finish(self, handle: Any = None) -> None:
        """Close one open handle (rows left unread are discarded), or all of them."""
        ...

    def run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run a statement that returns no rows once per parameter tuple, stopping at the
        first error; the rows changed (COPY FROM STDIN, inside its transaction)."""
        ...

    def changes(self) -> int: ...

    def last_insert_rowid(self) -> int: ...

    def in_transaction(self) -> bool: ...

    def column_decltypes(self, table: str) -> dict[str, str | None]: ...


class Backend(Protocol):
    """A database: a writer, a pool of readers, and a clean shutdown.

    Optional abilities are attributes every backend has, None where it lacks them: callers
    test ``is None``, never probe."""

    name: str
    # The replication log replicas follow (replication/capture.py; mvsqlite: FDB's change
    # log), None when the server keeps none.
    capture: Any
    # ContinuesSnapshots.begin_write_after where other processes write too (mvsqlite), else None.
    begin_write_after: Any
    # () -> (apsw connection, version): a snapshot a base backup copies pages from, where
    # snapshots are versions (mvsqlite); None: the backup copies the file (libsql).
    backup_source: Any

    def open(self) -> None: ...

    def writer(self) -> Connection: ...

    def open_reader(self) -> Connection: ...

    def open_session_connection(self) -> Connection:
        """A read-write connection for one session alone (temp objects, its own settings).
        It writes only while its user holds the writer lock, so SQLite never sees two
        writers. Raises FeatureNotSupported where the backend cannot give one."""
        ...

    def close(self) -> None: ...


class ContinuesSnapshots(Protocol):
    """Optional, for a backend whose writer may not see every commit its readers saw (other
    processes write too: mvsqlite). The scheduler calls it where it has it; elsewhere it runs
    ``begin immediate`` and relies on its own check that this process committed nothing."""

    def begin_write_after(self, reader: Connection, writer: Connection) -> None:
        """Begin ``writer``'s write transaction (``begin immediate``) as the continuation of
        ``reader``'s open read transaction: it reads at the reader's snapshot, and its commit
        fails with SerializationFailure if anything the reader read changed since. Raises
        SerializationFailure at once when it cannot continue the snapshot."""
        ...
