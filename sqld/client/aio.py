"""sqld.client for async code (anyio: asyncio or trio), with sqlite3's semantics.

    async with await sqld.client.aio.connect("app.db") as conn:
        await conn.execute("insert into t values (?)", (1,))
        await conn.commit()
        async for row in await conn.execute("select * from t"):
            ...

Each call runs the blocking client on a worker thread, one call at a time per connection
(a CapacityLimiter of 1), so the event loop never waits on the network. Results are
fetched whole when a statement runs, so iterating and fetching do not block.
"""

from __future__ import annotations

import functools

import anyio
import anyio.to_thread
import attrs

import sqld.client as _sync


@attrs.define(eq=False)
class AsyncCursor:
    _conn: AsyncConnection
    _cursor: _sync.Cursor

    @property
    def description(self):
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self):
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters=()) -> AsyncCursor:
        await self._conn._run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, seq) -> AsyncCursor:
        await self._conn._run(self._cursor.executemany, sql, seq)
        return self

    async def executescript(self, script: str) -> AsyncCursor:
        await self._conn._run(self._cursor.executescript, script)
        return self

    # The rows are already here: no thread needed.
    async def fetchone(self):
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None):
        return self._cursor.fetchmany(size)

    async def fetchall(self):
        return self._cursor.fetchall()

    def __aiter__(self):
        return self

    async def __anext__(self):
        row = self._cursor.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def close(self) -> None:
        self._cursor.close()

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


@attrs.define(eq=False)
class AsyncConnection:
    _conn: _sync.Connection
    _limiter: anyio.CapacityLimiter = attrs.field(init=False, factory=lambda: anyio.CapacityLimiter(1))

    async def _run(self, fn, *args):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def isolation_level(self):
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value) -> None:
        self._conn.isolation_level = value

    @property
    def row_factory(self):
        return self._conn.row_factory

    @row_factory.setter
    def row_factory(self, value) -> None:
        self._conn.row_factory = value

    @property
    def total_changes(self) -> int:
        return self._conn.total_changes

    async def cursor(self) -> AsyncCursor:
        return AsyncCursor(self, self._conn.cursor())

    async def execute(self, sql: str, parameters=()) -> AsyncCursor:
        cur = await self.cursor()
        return await cur.execute(sql, parameters)

    async def executemany(self, sql: str, seq) -> AsyncCursor:
        cur = await self.cursor()
        return await cur.executemany(sql, seq)

    async def executescript(self, script: str) -> AsyncCursor:
        cur = await self.cursor()
        return await cur.executescript(script)

    async def commit(self) -> None:
        await self._run(self._conn.commit)

    async def rollback(self) -> None:
        await self._run(self._conn.rollback)

    async def close(self) -> None:
        await self._run(self._conn.close)

    def interrupt(self) -> None:
        self._conn.interrupt()

    async def __aenter__(self) -> AsyncConnection:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        # sqlite3's context manager: commit or roll back; the connection stays open
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()


async def connect(database, **kwargs) -> AsyncConnection:
    """Like ``sqld.client.connect``; the connection may be used from any task."""
    kwargs["check_same_thread"] = False
    conn = await anyio.to_thread.run_sync(functools.partial(_sync.connect, database, **kwargs))
    return AsyncConnection(conn)
