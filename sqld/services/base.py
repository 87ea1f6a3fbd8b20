"""The tower-style service stack: requests a session service takes, and what it answers.

A service is anything with ``async def __call__(request)``; a layer is a function from
service to service. ``PgConnection`` turns protocol messages into these requests, so a
layer sees statements and parameters, never bytes, and knows nothing of the protocol.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, ClassVar, Protocol, TypeVar

import anyio
import attrs

from sqld.backends.base import Column, StatementInfo
from sqld.errors import LockNotAvailable, QueryCanceled, SqldError
from sqld.sqltext import Statement

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)


class Service(Protocol[Req, Resp]):
    async def __call__(self, request: Req, /) -> Resp: ...


Layer = Callable[[Service], Service]

BATCH_ROWS = 256  # rows fetched per trip to SQLite while a result streams (COPY TO too)
# A statement of a client that closed its connection is cancelled once the client has been
# gone this long (seconds): what it still runs, nobody will read.
CLIENT_GONE_GRACE = 1.0


@attrs.define(eq=False)
class SchemaClock:
    """Counts schema changes of one database: a prepared statement described at another
    count must be described again."""

    value: int = 0


@attrs.define(eq=False)
class MessageMemory:
    """Bytes of large messages (over ``LARGE``) being received, all sessions together, under
    ``--max-message-memory-mb``: each session's message limit times many sessions would
    otherwise be the server's memory (30 partial 55 MB Binds: 1.7 GB). A message that finds
    no room waits for some; past its wait it fails its session (53200)."""

    LARGE: ClassVar[int] = 1 << 20

    limit: int | None
    used: int = attrs.field(init=False, default=0)
    _freed: anyio.Event | None = attrs.field(init=False, default=None)  # made on the event loop, when first waited on

    async def reserve(self, size: int, wait: float, message: int) -> None:
        """Take ``size`` more bytes for a large message (of ``message`` bytes) as its bytes
        arrive; wait at most ``wait`` seconds for room, then fail the session (53200)."""
        limit = self.limit
        if not limit or not size:
            return
        with anyio.move_on_after(wait):
            while self.used + size > limit and self.used:
                if self._freed is None:
                    self._freed = anyio.Event()
                await self._freed.wait()
            self.used += size
            return
        raise SqldError("out of memory", sqlstate="53200", severity="FATAL",
                        detail=f"A message of {message >> 20} MiB waited {wait:g} s for room: other sessions' large "
                        f"messages being received take {self.used >> 20} of {limit >> 20} MiB "
                        "(--max-message-memory-mb).")

    def release(self, size: int) -> None:
        if size and self.limit:
            self.used -= size
            freed, self._freed = self._freed, None
            if freed is not None:
                freed.set()


@attrs.define(eq=False)
class SessionMemory:
    """What one session keeps between its messages — prepared statements, portals with
    their parameters, settings — counted against ``--max-session-memory``: one session
    cannot take the server's memory with many 16 MiB Parse or SET messages."""

    OVERHEAD: ClassVar[int] = 256  # bytes per entry besides its text (its objects)

    limit: int | None = None
    used: int = attrs.field(init=False, default=0)

    def take(self, n: int) -> None:
        if n > 0 and self.limit and self.used + n > self.limit:
            raise SqldError(
                "out of memory", sqlstate="53200",
                detail=f"This session would keep {(self.used + n) / 2**20:.1f} MiB of prepared statements, portals "
                       f"and settings; each session may keep {self.limit / 2**20:.0f} MiB (--max-session-memory).",
                hint="Close (DEALLOCATE) prepared statements and portals no longer needed.")
        self.used += n


class Held(dict):
    """A dict whose entries are counted in a SessionMemory (``size(value)`` bytes each)."""

    def __init__(self, memory: SessionMemory, size, items=()) -> None:
        super().__init__()
        self._memory, self._size, self._sizes = memory, size, {}
        for k, v in dict(items).items():
            self[k] = v

    def __setitem__(self, key, value) -> None:
        n = self._size(value) + SessionMemory.OVERHEAD
        self._memory.take(n - self._sizes.get(key, 0))
        self._sizes[key] = n
        dict.__setitem__(self, key, value)

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args, **kwargs) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __delitem__(self, key) -> None:
        dict.__delitem__(self, key)
        self._memory.take(-self._sizes.pop(key, 0))

    def pop(self, key, *default):
        if key in self:
            self._memory.take(-self._sizes.pop(key, 0))
        return dict.pop(self, key, *default)

    def clear(self) -> None:
        self._memory.take(-sum(self._sizes.values()))
        self._sizes.clear()
        dict.clear(self)


@attrs.define(eq=False)
class SessionState:
    """What one client session carries across requests (shared by every layer).

    ``settings`` are the session's SET values by lower-case name; ``reported`` those that
    changed and must go to the client as ParameterStatus after the statement (PostgreSQL's
    GUC report). What a statement asks of the protocol driver travels in its answer
    (``Cursor.after``), not here.
    """

    process_id: int
    secret_key: int
    user: str = ""
    database: str = ""
    application_name: str = ""
    settings: dict[str, str] = attrs.Factory(dict)  # a Held dict, in a PgConnection's session
    memory: SessionMemory = attrs.Factory(SessionMemory)  # what the session keeps, counted
    reported: dict[str, str] = attrs.Factory(dict)
    statement_timeout: float | None = None  # seconds
    lock_timeout: float | None = None  # seconds a statement may wait for the writer
    idle_tx_timeout: float | None = None  # seconds a session may sit idle inside a transaction
    cancel_requested: bool = False
    client_gone: float = 0.0  # when (time.monotonic) the client closed its connection; 0: it has not
    executing: bool = False
    in_copy: bool = False  # a COPY FROM STDIN is under way: a cancel request counts between its batches too
    on_cancel: Callable[[], None] | None = None  # wakes a COPY waiting for the client's rows
    ext: bool = False  # the client negotiated the sqld protocol extension (docs/protocol.md)
    read_only_user: bool = False  # the user may not write (a users-file "readonly" user)
    total_changes: int = 0  # rows changed by this session's statements (sqlite3's total_changes)
    last_rowid: int = 0  # rowid of this session's last INSERT (sqlite3's lastrowid)
    schema: SchemaClock = attrs.Factory(SchemaClock)  # the session's database's (set by its scheduler)

    def new_statement(self) -> None:
        """A statement starts: a cancel request for the one before it no longer counts
        (within a COPY, the COPY is the statement: one for it stays)."""
        if not self.in_copy:
            self.cancel_requested = False

    def cancelled(self) -> bool:
        """Whether the running statement should stop: a CancelRequest came, or the client
        closed its connection more than CLIENT_GONE_GRACE seconds ago (a client that closes
        its sending side right after a quick statement still gets the answer)."""
        if self.cancel_requested:
            return True
        gone = self.client_gone
        return bool(gone) and time.monotonic() - gone >= CLIENT_GONE_GRACE

    def may_write(self) -> None:
        """Raise 42501 for a read-only user (the one check, on a primary and on a replica)."""
        if self.read_only_user:
            raise SqldError(f'permission denied: user "{self.user}" may only read', sqlstate="42501",
                            hint="The users file marks this user readonly.")

    def wait_limit(self, what: str = "writer"):
        """How long a statement may wait for the writer (or a reader), and the error when it
        waited too long."""
        st, lk = self.statement_timeout, self.lock_timeout
        if what == "writer":
            held = "the writer, held by another session's transaction"
            hint = "Another session's transaction holds the writer."
        else:
            held = "a reader: every one is in use"
            hint = ("Every reader connection (--max-readers) is in use, by other sessions' statements, "
                    "read transactions or suspended portals.")
        if lk and (not st or lk < st):
            return lk, lambda: LockNotAvailable(hint)
        return st, lambda: QueryCanceled("canceling statement due to statement timeout",
                                         detail=f"It waited for {held}.")


# --- requests -------------------------------------------------------------------------------


@attrs.frozen
class Describe:
    """What a statement takes and returns, without running it (extended-protocol Parse)."""

    statement: Statement


@attrs.frozen
class Peek:
    """The first row a read-only statement gives with every parameter NULL, to learn the
    types of its expression columns; None when it cannot be run that way."""

    statement: Statement


@attrs.frozen(repr=False)
class Execute:
    """Run a statement with its parameters; answer a Cursor holding the first ``first`` rows."""

    statement: Statement
    params: tuple[Any, ...] = ()
    first: int = 100
    # More of the same extended-query batch may follow before its Sync: outside a
    # transaction block, the batch's writes then form one implicit transaction, committed
    # at Sync and rolled back whole on an error (protocol 55.2.3).
    pipelined: bool = False
    # Rows a write returns (RETURNING) are checked by this before the write commits: the
    # protocol layer's "can each be sent as its column's announced type", so that a row it
    # could not send fails the statement, never a committed one (called on a worker thread;
    # raises SqldError). None: no check.
    check: Any = attrs.field(default=None, eq=False)

    def __repr__(self) -> str:
        return f"Execute({self.statement.sql[:80]!r}, {len(self.params)} params)"


@attrs.frozen(repr=False)
class ExecuteMany:
    """Run a row-changing statement that returns no rows once per parameter tuple of
    ``rows``, in order (COPY FROM STDIN's rows, a batch at a time); answer how many rows it
    changed. In an open transaction the batch is one trip to the database; elsewhere each
    row is an Execute of its own (``pipelined`` as there)."""

    statement: Statement
    rows: list
    pipelined: bool = False
    deadline: float | None = None  # time.monotonic() by which the COPY must be done (its statement timeout)

    def __repr__(self) -> str:
        return f"ExecuteMany({self.statement.sql[:80]!r}, {len(self.rows)} rows)"


@attrs.frozen
class Sync:
    """End of an extended-query batch: close the implicit transaction; answer the status."""


@attrs.frozen
class Abort:
    """An error outside the service (a bad Bind, a failed Parse) aborts the transaction, as
    any error inside one does in PostgreSQL."""


@attrs.frozen
class Terminate:
    """The client is gone: roll back, release everything."""


@attrs.frozen
class DescribeResult:
    info: StatementInfo
    param_decltypes: tuple[str | None, ...]


@attrs.frozen
class After:
    """What the protocol driver does once a statement is answered: ``forget`` prepared
    statements by name, ``"*"`` for all of them (DEALLOCATE, DISCARD ALL)."""

    forget: tuple[str, ...] = ()


class Cursor(Protocol):
    """A statement's results being read.

    ``columns`` is None for a statement that returns no rows. ``rows`` holds rows already
    fetched; ``done`` says no more are to come. ``tag`` is the command tag once done.
    ``notice`` is a warning to send before the rows; ``orphaned`` says the transaction the
    rows were read in has ended (the portal is gone, as in PostgreSQL); ``after`` what the
    driver does once the statement is answered; ``changes`` the rows the statement changed,
    once done (None for a statement that changes none).
    """

    columns: tuple[Column, ...] | None
    rows: list[tuple]
    done: bool
    notice: str | None
    orphaned: bool
    after: After | None
    changes: int | None

    async def fetch(self, n: int) -> None: ...

    def tag(self) -> str: ...

    async def close(self) -> None: ...


@attrs.define(eq=False)
class StaticCursor:
    """A cursor over rows known up front (compat answers, transaction control)."""

    columns: tuple[Column, ...] | None
    rows: list[tuple]
    command: str
    notice: str | None = None
    done: bool = True
    after: After | None = None
    changes: int | None = None
    orphaned = False

    async def fetch(self, n: int) -> None:
        return None

    def tag(self) -> str:
        if self.command == "SELECT":
            return f"SELECT {len(self.rows)}"
        return self.command

    async def close(self) -> None:
        return None


SessionServiceFactory = Callable[[SessionState], Awaitable[Service]]
