"""COPY through the protocol: COPY … TO STDOUT streams rows as CopyData; COPY … FROM
STDIN reads CopyData into batched inserts, as one statement (all rows or none).

``PgConnection`` hands a COPY statement to ``run``; the options and the row formats are
``sqld.pgwire.copyformat``'s. While rows come in, the session is in the protocol's copy-in
phase (``ServerConnection.copy_in``), a cancel request or the statement timeout stops it at
once, and a watch notices a client killed mid-COPY (its unread bytes hold no CopyDone).
"""

from __future__ import annotations

import asyncio
import time

import anyio
import attrs

from sqld.errors import QueryCanceled, SqldError
from sqld.pgwire import copyformat
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.pgwire.codec import NEED_DATA
from sqld.services.base import BATCH_ROWS, CLIENT_GONE_GRACE, Abort, Describe, Execute, ExecuteMany, Sync
from sqld.sqltext import Statement, parse_one

COPY_BATCH = 2000      # COPY FROM STDIN rows inserted per trip to SQLite (at most)
_BEGIN, _COMMIT, _ROLLBACK = (parse_one(sql) for sql in ("BEGIN", "COMMIT", "ROLLBACK"))


async def run(conn, stmt: Statement, extended: bool = False) -> None:
    """Run the COPY statement ``stmt`` for ``conn`` (a PgConnection); ``extended``: it came
    through the extended protocol (its rows join the batch's implicit transaction)."""
    await _Copy(conn).run(stmt, extended)


@attrs.define(eq=False)
class _Copy:
    conn: object  # the PgConnection
    watch: object = None  # the timer of _watch while a COPY FROM STDIN runs

    async def run(self, stmt: Statement, extended: bool = False) -> None:
        spec = copyformat.parse(stmt.sql)
        if spec.direction == "TO":
            await self._out(spec)
        else:
            await self._into(spec, extended)

    async def _out(self, spec) -> None:
        query = spec.query or f"select {', '.join(spec.columns) or '*'} from {spec.table}"
        cur = await self.conn.service(Execute(parse_one(query)))
        try:
            names = [c.name for c in cur.columns or ()]
            writer = copyformat.RowWriter(spec, names, copyformat.force_columns(spec, names)[0])
            self.conn.write(m.CopyOutResponse(len(names)).encode())
            if spec.header:
                self.conn.write(m.copy_data(writer.header()))
            count = 0
            line = writer.row
            while True:
                for row in cur.rows:
                    self.conn.write(m.copy_data(line(row)))
                count += len(cur.rows)
                if cur.done:
                    break
                await self.conn.maybe_flush()
                await cur.fetch(BATCH_ROWS)
        finally:
            await cur.close()
        self.conn.write(m.COPY_DONE)
        self.conn.write(m.CommandComplete(f"COPY {count}").encode())

    async def _receive(self, deadline: float | None) -> None:
        """Receive more of a COPY's data; a cancel request or the COPY's deadline ends the
        wait (then the caller's check raises)."""
        state = self.conn.state
        with anyio.CancelScope() as scope:
            if deadline is not None:
                scope.deadline = anyio.current_time() + max(0.0, deadline - time.monotonic())
            state.on_cancel = scope.cancel
            try:
                await self.conn.receive()
            finally:
                state.on_cancel = None

    def _can_end(self) -> bool | None:
        """Once the client has closed its side, whether what it sent ends the COPY (a
        CopyDone or CopyFail among the bytes not yet read); None while it may send more, or
        where that cannot be seen (TLS: the kernel's bytes are encrypted)."""
        if not self.conn.stream.peer_closed():
            return None
        unread = self.conn.stream.peek_unread()
        if unread is None:
            return None
        if unread is False:
            return False  # the connection was reset: nothing more can come
        return self.conn.decoder.upcoming(b"cf", unread) is not None

    async def _into(self, spec, extended: bool = False) -> None:
        # The whole COPY is one statement: a cancel request stops it while it waits for rows
        # too, not only while a batch of them is being inserted.
        state = self.conn.state
        state.in_copy = True
        state.cancel_requested = False
        loop = asyncio.get_running_loop()
        self.watch = loop.call_later(0.25, self._watch, loop, 0)
        # Waiting for the client's rows holds the writer: the idle-in-transaction limit holds.
        self.conn.protocol.copy_in()
        try:
            await self._rows_in(spec, extended)
        finally:
            self.conn.protocol.copy_done()
            self.watch.cancel()
            state.in_copy = False
            state.cancel_requested = False

    def _watch(self, loop, tick: int) -> None:
        """While a COPY runs (a batch of its rows may take long inside SQLite), look a few
        times a second whether its client closed its side with no end of the COPY in what
        it sent (psql killed mid-COPY): then nothing of it can be kept, and it stops at once
        (within a batch too: SQLite's progress handler asks ``SessionState.cancelled``)."""
        state = self.conn.state
        if state.client_gone or not state.in_copy:
            return
        if tick % 4 == 3:
            # A killed client's unsent rows and FIN wait in its kernel while this one's
            # buffers are full: a closed socket shows itself only by answering a write.
            self.conn._probe()
        ends = self._can_end()
        if ends is False:
            state.client_gone = time.monotonic() - CLIENT_GONE_GRACE
        elif ends is None:
            self.watch = loop.call_later(0.25, self._watch, loop, tick + 1)

    async def _rows_in(self, spec, extended: bool) -> None:
        """COPY FROM STDIN: all rows or none, as in PostgreSQL. Outside a transaction block
        the rows form a transaction of their own (in the extended protocol: the batch's
        implicit transaction, committed at Sync); inside one, an error fails the transaction
        (status E, its COMMIT answers ROLLBACK), whatever made the COPY fail: a bad row, a
        constraint, or the client's CopyFail."""
        columns = list(spec.columns)
        table_columns = None
        if not columns or spec.force_null or spec.force_not_null:
            described = await self.conn.service(Describe(parse_one(f"select * from {spec.table}")))
            table_columns = [c.name for c in described.info.columns]
            columns = columns or table_columns
        force_null, force_not_null = copyformat.force_columns(spec, columns, table_columns)
        marks = ", ".join(f"?{i + 1}" for i in range(len(columns)))
        quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        insert = parse_one(f"insert into {spec.table} ({quoted}) values ({marks})")
        blobs = [t.oid_for_decltype(d) == t.BYTEA for d in (await self.conn.service(Describe(insert))).param_decltypes]
        self.conn.write(m.CopyInResponse(len(columns)).encode())
        await self.conn.flush()
        # In the extended protocol (not for the sqld extension, which runs statement by
        # statement) the rows are the batch's: outside a transaction block its first write
        # opens the implicit transaction that Sync commits and an error (Abort) rolls back.
        pipelined = extended and not self.conn.state.ext
        own_tx = not pipelined and await self.conn.service(Sync()) == b"I"
        if own_tx:
            await (await self.conn.service(Execute(_BEGIN))).close()
        reader = copyformat.RowReader(spec, columns, force_null, force_not_null)
        count = 0   # rows read (for the line numbers in errors)
        copied = 0  # rows inserted (the tag: a trigger's RAISE(IGNORE) skips some)
        error: SqldError | None = None
        # The statement timeout covers the whole COPY, not each row's insert.
        limit = self.conn.state.statement_timeout
        deadline = time.monotonic() + limit if limit else None

        any_blob = any(blobs)

        def check_stop() -> None:
            state = self.conn.state
            if state.client_gone and state.cancelled():
                raise QueryCanceled.because("cancel")
            if state.cancel_requested:
                raise QueryCanceled("canceling statement due to user request",
                                    detail=f"COPY {spec.table}: {count} rows in")
            if deadline is not None and time.monotonic() > deadline:
                raise QueryCanceled("canceling statement due to statement timeout",
                                    detail=f"COPY {spec.table}: {count} rows in")

        async def insert_rows(rows) -> None:
            nonlocal count, copied
            check_stop()
            bad = None
            width = len(columns)
            i = next((i for i, row in enumerate(rows) if len(row) != width), None)
            if i is not None:
                row = rows[i]
                bad = SqldError(f'missing data for column "{columns[len(row)]}"' if len(row) < width
                                else "extra data after last expected column", sqlstate="22P04",
                                detail=f"COPY {spec.table}, line {count + i + 1 + spec.header}: "
                                f"{len(row)} values for {width} columns")
                rows = rows[:i]
            batch = rows
            if any_blob:
                batch = [tuple(t.bytea_from_text(v) if blob and v is not None else v for v, blob in zip(row, blobs))
                         for row in rows]
            if batch:
                # One trip to the database for the rows the client has sent so far (a
                # batch each time its messages are read), not one per row. The rows before
                # a malformed one go in first: an error among them is the COPY's error, as
                # when rows are inserted one by one.
                try:
                    copied += await self.conn.service(ExecuteMany(insert, batch, pipelined, deadline))
                except SqldError as err:
                    row = getattr(err, "row", None)
                    if row is not None and err.detail is None and 0 <= row < len(batch):
                        err.detail = f"COPY {spec.table}, line {count + row + 1 + spec.header}"  # PostgreSQL's CONTEXT
                    raise
                count += len(batch)
            if bad is not None:
                raise bad

        # Rows are gathered from the CopyData messages already received, then inserted
        # together: before waiting for more, at COPY_BATCH rows, and at CopyDone.
        pending: list = []
        while True:
            msg = self.conn.protocol.next_message()  # CopyData, CopyDone, CopyFail (Flush, Sync dropped)
            if msg is NEED_DATA:
                try:
                    if pending:
                        rows, pending = pending, []
                        await insert_rows(rows)
                    else:
                        await self._receive(deadline)
                        check_stop()
                except SqldError as exc:
                    if exc.severity == "FATAL":
                        raise
                    error = exc
                    break
                continue
            mt = type(msg)
            try:
                if mt is m.CopyData:
                    check_stop()  # a cancel request or the deadline, while rows come in
                    pending += reader.feed(msg.data)
                    if len(pending) >= COPY_BATCH:
                        rows, pending = pending, []
                        await insert_rows(rows)
                    continue
                if mt is m.CopyDone:
                    self.watch.cancel()  # the client sent its end: done, whether it reads on or not
                    rows, pending = pending, []
                    rows += reader.finish()
                    await insert_rows(rows)
                    break
                # CopyFail
                error = SqldError(f"COPY from stdin failed: {msg.message}", sqlstate="57014")
                break
            except SqldError as exc:
                if exc.severity == "FATAL":
                    raise
                # A bad row, a constraint, a cancel, the statement timeout or a client gone
                # stops the COPY at once, as in PostgreSQL: the error goes out now, and the
                # CopyData the client still sends is ignored (outside COPY, or skipped to Sync).
                error = exc
                break
        if own_tx:
            with anyio.CancelScope(shield=True):
                await (await self.conn.service(Execute(_ROLLBACK if error else _COMMIT))).close()
        elif error is not None:
            # Inside a transaction block the rows sent so far are in it: the transaction is
            # failed, as PostgreSQL fails it (in a batch, Abort rolls its implicit one back).
            with anyio.CancelScope(shield=True):
                await self.conn.service(Abort())
        if error is not None:
            raise error
        self.conn.write(m.CommandComplete(f"COPY {copied}").encode())

