"""A replica's session: reads run on the local copy, writes go to the primary.

Sits where ``SchedulerService`` sits on a primary, over one (a replica scheduler, which
raises ``NeedsWriter`` where a primary's would take the writer). What it does:

* A read-only statement runs locally, after waiting for the frame the session's
  consistency asks for: ``read_your_writes`` (default) — the frame of this session's last
  forwarded commit; ``strong`` — the primary's current frame (one round trip to ask);
  ``eventual`` — no wait. The wait is bounded (``sqld.replica_wait_timeout``); past it the
  read fails with SQLSTATE 57014 (canceled), saying why.
* Anything else — a statement SQLite says writes, ``BEGIN IMMEDIATE``/``EXCLUSIVE``,
  savepoints — goes to the primary over the session's own forwarded connection, opened at
  the first write; results, counts, errors and SQLSTATEs come back as the primary sent them.
* A transaction runs locally while it only reads. At its first write it moves to the
  primary: the local read snapshot ends, ``BEGIN IMMEDIATE`` runs there, and if the primary
  committed anything after the frame the transaction's reads saw, the write fails with
  40001 (as on a primary: the reads went stale). From then on every statement of the
  transaction, reads included, runs on the primary until COMMIT or ROLLBACK.
* When the primary is down, reads go on (with a notice that the data may be stale) and
  writes fail at once with 08006.
"""

from __future__ import annotations

import logging

import anyio
import attrs

from sqld.backends.base import Column, NeedsWriter, StatementInfo
from sqld.client.wire_async import AsyncWire, ServerError, WireError
from sqld.errors import InFailedTransaction, QueryCanceled, ReadOnlyTransaction, SerializationFailure, SqldError
from sqld.pgwire import extension as ext
from sqld.pgwire import types as t
from sqld.services.base import Abort, Describe, DescribeResult, Execute, ExecuteMany, Peek, StaticCursor, Sync, Terminate
from sqld.services.compat import parse_timeout
from sqld.services.transaction import Transaction
from sqld.sqltext import parse_one
from sqld.verbs import WRITE_VERBS

log = logging.getLogger(__name__)

CONSISTENCY = "sqld.consistency"
WAIT_TIMEOUT = "sqld.replica_wait_timeout"
LEVELS = ("read_your_writes", "eventual", "strong")
_DECLTYPE = {t.INT8: "INTEGER", t.INT4: "INTEGER", t.INT2: "INTEGER", t.FLOAT8: "REAL", t.FLOAT4: "REAL",
             t.TEXT: "TEXT", t.BYTEA: "BLOB", t.BOOL: "BOOLEAN"}
_ROLLBACK = parse_one("ROLLBACK")
_COMMIT = parse_one("COMMIT")
_PASSED = ("statement_timeout", "lock_timeout")  # session settings the primary applies to forwarded statements


class PrimaryUnavailable(SqldError):
    sqlstate = "08006"


def replica_settings(settings: dict, wait_timeout: float) -> None:
    settings.setdefault(CONSISTENCY, "read_your_writes")
    settings.setdefault(WAIT_TIMEOUT, f"{int(wait_timeout * 1000)}ms")
    settings["in_hot_standby"] = "on"


@attrs.define(eq=False)
class ForwardingService:
    node: object                # the Follower (its applied frame, its connection to the primary)
    local: object               # the SchedulerService on the local copy
    state: object               # the session's SessionState
    primary: tuple[str, int] = attrs.field(kw_only=True)
    database: str = attrs.field(kw_only=True)
    account: PrimaryAccount = attrs.field(kw_only=True, default=None,
                                          converter=lambda a: a if a is not None else PrimaryAccount())
    connect: object = attrs.field(kw_only=True, default=AsyncWire.connect)  # opens the forwarded connection
    remote: AsyncWire | None = attrs.field(init=False, default=None)
    # The transaction once it moved to the primary (its conn: the forwarded connection);
    # before that, a transaction is the local scheduler's (``local.tx``).
    tx: Transaction = attrs.field(init=False, factory=Transaction)
    # read-your-writes: (frame, generation) of this session's last commit, None before
    wait_frame: tuple[int, bytes] | None = attrs.field(init=False, default=None)
    sent: dict[str, str] = attrs.field(init=False, factory=dict)  # settings as the forwarded connection has them
    on_close: object = attrs.field(init=False, default=None)

    @property
    def status(self) -> bytes:
        return self.tx.status if self.tx.open else self.local.status

    async def __call__(self, request):
        kind = type(request)
        if kind is Execute:
            return await self.execute(request)
        if kind is ExecuteMany:  # COPY's rows: each a write of its own, forwarded
            changed = 0
            for params in request.rows:
                cur = await self.execute(Execute(request.statement, params, 1, request.pipelined))
                await cur.close()
                changed += cur.changes or 0
            return changed
        if kind is Describe:
            return await self.describe(request)
        if kind is Peek:
            if self.tx.open:
                return None
            if self.local.tx.conn is None:
                await self._catch_up()
            return await self.local(request)
        if kind is Sync:
            if self.tx.implicit:
                await self._end_implicit(_ROLLBACK if self.tx.failed else _COMMIT)
            if self.tx.open:
                return self.status
            return await self.local(request)
        if kind is Abort:
            if self.tx.implicit:
                await self._end_implicit(_ROLLBACK)
                return None
            if self.tx.open:
                if not self.state.ext:
                    self.tx.fail()
                return None
            return await self.local(request)
        if kind is Terminate:
            await self.local(request)
            remote, self.remote = self.remote, None
            if remote is not None:
                await remote.aclose()
            return None
        raise TypeError(f"unknown request {request!r}")

    # -- reads ----------------------------------------------------------------------------------

    def _wait_timeout(self) -> float:
        try:
            return parse_timeout(self.state.settings.get(WAIT_TIMEOUT, "5s")) or 5.0
        except SqldError:
            return 5.0

    async def _catch_up(self) -> None:
        level = self.state.settings.get(CONSISTENCY, "read_your_writes").strip().lower()
        if level == "eventual":
            target = None
        elif level == "strong":
            target = await self._primary_frame()
        elif level == "read_your_writes":
            target = self.wait_frame
        else:
            raise SqldError(f'invalid value for parameter "{CONSISTENCY}": "{level}"', sqlstate="22023",
                            hint="Valid values are read_your_writes, eventual and strong.")
        if target is None:
            return
        frame, generation = target
        node = self.node
        if generation != node.primary_generation and node.primary_generation is not None and \
                generation != node.generation:
            # The primary has another history now: what the session wrote in the old one is
            # not coming; nothing to wait for.
            self.wait_frame = None
            return
        if node.generation == generation and node.applied >= frame:
            return
        timeout = self._wait_timeout()
        if not await node.wait_for(frame, timeout, generation):
            raise QueryCanceled(
                f"canceling statement: the replica did not reach frame {frame} within {timeout:g}s "
                f"(it is at {node.applied})",
                detail="The session's consistency level asks for data the replica has not applied yet.",
                hint=f"Raise {WAIT_TIMEOUT}, or SET {CONSISTENCY} = eventual to read what the replica has.")

    async def _primary_frame(self) -> tuple[int, bytes] | None:
        """The primary's last frame and generation now (strong consistency): a round trip on
        the forwarded connection, whose answer reports them."""
        remote = await self._remote()
        await self._call(remote.run, "select 1")
        return _reported_frame(remote)

    def _stale_notice(self, cur):
        if not self.node.connected and hasattr(cur, "notice") and not cur.notice:
            cur.notice = (f"the primary is unreachable: this replica's data may be stale "
                          f"(as of frame {self.node.applied})")
        return cur

    async def describe(self, request: Describe) -> DescribeResult:
        if not self.tx.open:
            if self.local.tx.conn is None:
                await self._catch_up()
            try:
                return await self.local(request)
            except SqldError as exc:
                if self.local.tx.open or self.node.connected is False or exc.sqlstate == "25P02":
                    raise
                # A table the replica does not have yet: the primary knows the statement.
        elif self.tx.failed:
            raise InFailedTransaction()
        return await self._describe_remote(request.statement.sql)

    async def _describe_remote(self, sql: str) -> DescribeResult:
        remote = await self._remote()
        described = await self._call(remote.describe, sql)
        oids, fields, decltypes = described.param_oids, described.fields, described.decltypes
        columns = ()
        if fields:
            columns = tuple(Column(f.name, decltypes[i] if i < len(decltypes) else None,
                                   oid=None if i < len(decltypes) and decltypes[i] else f.type_oid)
                            for i, f in enumerate(fields))
        info = StatementInfo(columns=columns, param_count=len(oids), readonly=False)
        return DescribeResult(info=info, param_decltypes=tuple(_DECLTYPE.get(o) for o in oids))

    # -- statements -----------------------------------------------------------------------------

    async def execute(self, req: Execute):
        stmt = req.statement
        verb = stmt.verb
        if self.tx.open:
            return await self._in_remote_tx(req)
        words = stmt.words
        if verb in ("BEGIN", "START") and not self.local.tx.open and (
                "IMMEDIATE" in words or "EXCLUSIVE" in words) and "ONLY" not in words:
            return await self._begin_remote(req)
        if verb == "SAVEPOINT" and not self.local.tx.read_only:
            # Savepoints are for writing transactions: the transaction moves to the primary.
            await self._move_to_primary(stmt)
            return await self._in_remote_tx(req)
        if verb not in WRITE_VERBS:
            if self.local.tx.conn is None:  # no read snapshot held yet (none, or BEGIN only)
                await self._catch_up()
            try:
                return self._stale_notice(await self.local(req))
            except NeedsWriter:
                pass
        if self.local.tx.open:
            if self.local.tx.failed:
                raise InFailedTransaction()
            await self._move_to_primary(stmt)
            return await self._in_remote_tx(req)
        if req.pipelined:
            # A pipeline's first write: the batch's writes go to the primary as one
            # transaction, committed at Sync (as the primary itself runs a batch).
            await self._move_to_primary(stmt, implicit=True)
            return await self._in_remote_tx(req)
        return await self._forward(req)

    async def _end_implicit(self, how) -> None:
        self.tx.make_explicit()
        if how is _ROLLBACK and self.remote is None:
            self.tx.end()  # the forwarded connection was lost: the primary rolled it back
            return
        try:
            with anyio.CancelScope(shield=how is _ROLLBACK):
                await self._forward(Execute(how))
        except BaseException:
            # The primary ends a transaction whose COMMIT failed; a lost primary took it along.
            self.tx.end()
            raise

    async def _begin_remote(self, req: Execute):
        return await self._forward(req)  # the primary's status T opens self.tx

    async def _move_to_primary(self, stmt, *, implicit: bool = False) -> None:
        """The local (read) transaction writes: continue it on the primary, or fail 40001
        when the primary moved on since its reads."""
        if self.local.tx.read_only:
            raise ReadOnlyTransaction(f"cannot execute {stmt.verb} in a read-only transaction")
        snapshot = self.local.tx.snapshot  # None: it read nothing yet
        await self.local(Execute(_ROLLBACK))  # ends the local snapshot (it only read)
        remote = await self._remote()
        await self._call(remote.run, "BEGIN IMMEDIATE")
        self.tx.begin(implicit=implicit)
        reported = _reported_frame(remote)
        frame, generation = reported if reported else (0, None)
        if snapshot is not None and (frame > snapshot or generation != self.node.generation):
            await self._call(remote.run, "ROLLBACK")
            self.tx.fail()  # the client ends the transaction with ROLLBACK
            raise SerializationFailure(
                "could not serialize access due to concurrent update",
                detail=f"The transaction read the replica at frame {snapshot}; the primary is at {frame}"
                + ("" if generation == self.node.generation else " of another history") + ".",
                hint="Retry the transaction, or start it with BEGIN IMMEDIATE to run it on the primary.")

    async def _in_remote_tx(self, req: Execute):
        stmt = req.statement
        verb = stmt.verb
        if self.tx.failed:
            if verb in ("COMMIT", "END", "ROLLBACK", "ABORT") and "TO" not in stmt.words:
                if self.remote is not None:
                    await self._forward(Execute(_ROLLBACK))
                self.tx.end()
                return StaticCursor(None, [], "ROLLBACK")
            if not (verb in ("ROLLBACK", "ABORT") and "TO" in stmt.words):
                raise InFailedTransaction()
        try:
            cur = await self._forward(req)
        except SqldError as exc:
            if isinstance(exc, PrimaryUnavailable):
                raise
            ended = self.remote is not None and self.remote.status == b"I"
            if ended and (self.state.ext or verb in ("COMMIT", "END")):
                # A COMMIT that failed ends the transaction (PostgreSQL too); in sqlite3's
                # semantics so does any error with which SQLite rolled it back.
                self.tx.end()
            elif not self.state.ext:
                self.tx.fail()  # PostgreSQL's aborted state, until ROLLBACK
            raise
        if verb in ("ROLLBACK", "ABORT") and "TO" in stmt.words:
            self.tx.recover()
        if verb in ("BEGIN", "START"):
            self.tx.make_explicit()
        return cur

    async def _remote(self) -> AsyncWire:
        self.state.may_write()
        if self.remote is not None and not self.remote.closed:
            if self.tx.open or self.remote.alive():
                return self.remote
            self.remote = None  # the primary went away since (restarted): connect again
        if self.tx.open:
            self.tx.fail()
            raise PrimaryUnavailable("lost the connection to the primary in the middle of a transaction",
                                     hint="ROLLBACK, then retry the transaction.")
        host, port = self.primary
        state = self.state
        options = {ext.REPORT_FRAME: "on"}
        self.sent = {}
        for name in _PASSED:
            value = state.settings.get(name, "0")
            if value not in ("0", ""):
                options[name] = value
            self.sent[name] = value

        options["application_name"] = f"sqld-replica/{state.user}/{state.application_name}"[:63]
        account = self.account
        try:
            # As the replica's own user (it cannot speak for the client's password): the
            # client was authenticated here, and read-only users were stopped above.
            self.remote = await self.connect(host, port, user=account.user, password=account.password,
                                             database=self.database, timeout=2.0, sslmode=account.sslmode,
                                             sslrootcert=account.sslrootcert, params=options)
        except WireError as exc:
            raise PrimaryUnavailable(f"cannot forward the write to the primary: {exc}",
                                     hint="This server is a replica; writes go to its primary, which is unreachable. "
                                     "Reads are still served here.") from None
        except ServerError as exc:
            raise _as_error(exc) from None
        return self.remote

    def _lost(self) -> bool:
        """The forwarded connection is gone. A transaction open on it was rolled back there:
        it stays aborted here (25P02) until the client's ROLLBACK, never turning into
        autocommit statements. Returns whether one was open."""
        self.remote = None
        if self.tx.open:
            self.tx.fail()
            return True
        return False

    def _track(self, status: bytes) -> None:
        """Follow the primary's ReadyForQuery status after a forwarded statement: a BEGIN (or
        a SAVEPOINT, in sqlite3's semantics) opened the transaction there, a COMMIT or
        ROLLBACK ended it."""
        if status == b"I":
            self.tx.end()
            return
        if not self.tx.open:
            self.tx.begin()
        if status == b"E":
            self.tx.fail()

    async def _pass_settings(self, remote: AsyncWire) -> None:
        """The session's timeouts hold on the primary too (set again when they change)."""
        for name in _PASSED:
            value = self.state.settings.get(name, "0")
            if self.sent.get(name, "0") != value:
                await self._call(remote.run, f"SET {name} = '{value.replace(chr(39), chr(39) * 2)}'")
                self.sent[name] = value

    async def _call(self, fn, *args):
        """A request on the forwarded connection; a cancel request for the session goes to
        the primary (on a connection of its own) while the answer is awaited."""
        remote = self.remote
        state = self.state
        state.new_statement()
        state.executing = True
        previous = state.on_cancel
        outcome: tuple = (False, None)
        try:
            async with anyio.create_task_group() as tg:
                state.on_cancel = lambda: tg.start_soon(remote.cancel)
                try:
                    outcome = (True, await fn(*args))
                except Exception as exc:
                    outcome = (False, exc)
                state.on_cancel = previous
                tg.cancel_scope.cancel()  # a cancel request still on its way is not needed now
        finally:
            state.on_cancel = previous
            state.executing = False
        ok, value = outcome
        if ok:
            return value
        if isinstance(value, ServerError):
            if remote.closed:  # a FATAL error: the primary ended the forwarded session
                lost_tx = self._lost()
                r = value.response
                raise PrimaryUnavailable(
                    f"the primary ended the forwarded session: {r.message} ({r.sqlstate})",
                    detail="The open transaction on the primary was rolled back; ROLLBACK to end it here."
                    if lost_tx else None) from None
            raise _as_error(value) from None
        if isinstance(value, WireError):
            if self._lost():
                raise PrimaryUnavailable(
                    f"lost the primary in the middle of a transaction: {value}",
                    detail="The open transaction on the primary was rolled back; ROLLBACK to end it here.") from None
            raise PrimaryUnavailable(
                f"lost the primary while it ran the statement (whether it committed there is unknown): {value}",
                hint="Check before retrying a statement that must not run twice.") from None
        raise value

    async def _forward(self, req: Execute):
        remote = await self._remote()
        await self._pass_settings(remote)
        stmt = req.statement
        result = await self._call(remote.run, stmt.sql, req.params)
        self._track(remote.status)
        if not self.tx.open:
            reported = _reported_frame(remote)  # read your writes: wait for this commit
            if reported is not None and (self.wait_frame is None or reported[1] != self.wait_frame[1]
                                         or reported[0] > self.wait_frame[0]):
                self.wait_frame = reported
        state = self.state
        state.total_changes += result.changes
        if stmt.verb in ("INSERT", "REPLACE") and result.last_rowid is not None:
            state.last_rowid = result.last_rowid
        columns = None
        if result.has_rows:
            decltypes = result.decltypes or [None] * len(result.names)
            columns = tuple(Column(n, d) for n, d in zip(result.names, decltypes))
        return StaticCursor(columns, result.rows, result.tag or stmt.verb, changes=result.changes)


def _reported_frame(remote: AsyncWire) -> tuple[int, bytes] | None:
    """The primary's last frame and generation, as its ``sqld.frame`` report said last."""
    raw = remote.params.get(ext.FRAME)
    return ext.decode_frame(raw) if raw else None


def _as_error(exc: ServerError) -> SqldError:
    r = exc.response
    err = SqldError(r.message, sqlstate=r.sqlstate, detail=r.detail, hint=r.hint,
                    severity="ERROR" if r.severity == "FATAL" else None)
    err.sqlite_code = r.sqlite_code
    return err


def replica_functions(node):
    """SQL functions a replica adds: where it stands against its primary."""

    def applied(st):
        return node.applied

    def primary(st):
        return node.primary_frame

    def lag_ms(st):
        return round(node.lag * 1000, 3)

    def status(st):
        import json

        return json.dumps(node.status())

    return [("sqld_replica_frame", 0, applied), ("sqld_primary_frame", 0, primary),
            ("sqld_replication_lag_ms", 0, lag_ms), ("sqld_replication_status", 0, status)]



@attrs.frozen
class PrimaryAccount:
    """How a replica reaches its primary: user, password, TLS."""

    user: str = "sqld-replica"
    password: str | None = attrs.field(default=None, repr=False)
    sslmode: str = "prefer"
    sslrootcert: str | None = None


@attrs.define(eq=False)
class ReplicaSessions:
    """Each session of a replica: the replica service over the local scheduler. A replica
    serves one database, its primary's ``database`` (also reachable as ``main``)."""

    node: object
    scheduler: object
    primary: tuple[str, int] = attrs.field(kw_only=True)
    database: str = attrs.field(kw_only=True)
    wait_timeout: float = attrs.field(kw_only=True)
    account: PrimaryAccount | None = attrs.field(kw_only=True, default=None)

    async def __call__(self, state):
        from sqld.services.databases import UnknownDatabase

        if state.database not in ("", "main", self.database):
            raise UnknownDatabase(f'database "{state.database}" does not exist',
                                  hint=f'This replica serves its primary\'s database "{self.database}".')
        replica_settings(state.settings, self.wait_timeout)
        local = await self.scheduler(state)
        return ForwardingService(self.node, local, state, primary=self.primary, database=self.database,
                                 account=self.account)
