"""PgConnectionFactory: drives the PostgreSQL protocol for one socket.

The protocol's state — framing, the phase table, buffered replies — is
``sqld.pgwire.server.ServerConnection``'s; this is the I/O around it and what each message
asks of the session's service stack: startup and authentication, the extended protocol,
simple queries and their implicit transactions, the error policy, timeouts and a client
that goes away. COPY is ``services/copy.py``'s, result types ``services/results.py``'s.
Output is written when the loop is about to wait for the client (or the buffer is large),
so a pipelined batch costs one write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

import anyio
import anyio.abc
import attrs

from sqld.auth import AuthFailed, NotAllowed, ScramExchange, is_loopback, md5_check, password_check
from sqld.preauth import PREAUTH_MAX_MESSAGE, StartupGate
from sqld.errors import AdminShutdown, ProtocolViolation, QueryCanceled, SqldError, TooManyConnections
from sqld.pgwire import extension as ext
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.pgwire.codec import NEED_DATA
from sqld.pgwire.server import Phase, ServerConnection
from sqld.services import copy, results
from sqld.services.base import CLIENT_GONE_GRACE, BATCH_ROWS, Abort, Describe, Execute, Held, MessageMemory, Peek, SessionMemory, SessionState, Sync, Terminate
from sqld.services.compat import initial_settings, is_reported, reported_name
from sqld.sqltext import Statement, parse, parse_one
from sqld.transport import ProtocolStream, SendTimeout
from sqld.verbs import OWN_TRANSACTION_VERBS

log = logging.getLogger(__name__)


def _tag_count(tag: str) -> int:
    """The row count a command tag ends with (INSERT 0 n, UPDATE n, DELETE n), else 0."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() and tag.split(" ", 1)[0] in ("INSERT", "UPDATE", "DELETE") else 0

FAILED_AUTH_DELAY = 1.0  # seconds before a wrong password is answered
FLUSH_AT = 64 * 1024   # write out once this much output is buffered
MESSAGE_ROOM_WAIT = 30.0  # seconds a large message may wait for room in --max-message-memory-mb
READ_SIZE = 65536      # bytes read from the socket at a time
PROBE_WAIT = 0.2       # seconds for a reset to come back after a probe of a client that closed its side
LINGER = 1.0           # seconds a connection ended by a FATAL error reads on before it closes

_PARSE_COMPLETE = m.ParseComplete().encode()
_BIND_COMPLETE = m.BindComplete().encode()
_CLOSE_COMPLETE = m.CloseComplete().encode()
_NO_DATA = m.NoData().encode()
_PORTAL_SUSPENDED = m.PortalSuspended().encode()
_EMPTY_QUERY = m.EmptyQueryResponse().encode()
_BEGIN, _COMMIT, _ROLLBACK = (parse_one(sql) for sql in ("BEGIN", "COMMIT", "ROLLBACK"))


def _is_savepoint_command(stmt: Statement) -> bool:
    return stmt.verb in ("SAVEPOINT", "RELEASE") or (stmt.verb in ("ROLLBACK", "ABORT") and "TO" in stmt.words)


@attrs.define(eq=False)
class Registry:
    """Live sessions by BackendKeyData, for CancelRequest and shutdown."""

    sessions: dict[int, SessionState] = attrs.field(factory=dict)
    _next_pid: int = 1000

    def new_state(self) -> SessionState:
        self._next_pid += 1
        state = SessionState(process_id=self._next_pid, secret_key=secrets.randbits(31))
        self.sessions[state.process_id] = state
        return state

    def remove(self, state: SessionState) -> None:
        self.sessions.pop(state.process_id, None)

    def cancel(self, process_id: int, secret_key: int) -> bool:
        state = self.sessions.get(process_id)
        if state is None or state.secret_key != secret_key:
            return False
        if state.executing or state.in_copy:
            state.cancel_requested = True
            if state.on_cancel is not None:
                state.on_cancel()
        return True

    def cancel_all(self) -> None:
        for state in self.sessions.values():
            state.cancel_requested = True


@attrs.define(eq=False, kw_only=True)
class PgConnectionFactory:
    """Makes the protocol driver for each accepted socket.

    ``session_factory`` builds the session's service stack (see ``services.stack``);
    ``max_connections`` bounds the sessions served at once (the next one gets 53300).
    """

    session_factory: object = attrs.field(kw_only=False)
    max_connections: int = 100
    max_message_size: int = 64 * 1024 * 1024
    # async (session state: user, database) -> Scheduler, for replication connections; None: refused
    replication: object = None
    auth: object = None  # an AuthConfig (None: trust, as with no users configured)
    tls: object = None   # an ssl.SSLContext, or None: SSLRequest is answered 'N'
    tls_required: bool = False
    startup_timeout: float = 60.0
    max_sql_length: int = 16 * 1024 * 1024
    max_session_memory: int | None = 64 << 20  # bytes a session keeps between messages
    # Large messages being received, all sessions together (never below one whole message)
    max_message_memory: int | None = 256 << 20
    message_memory: MessageMemory = attrs.field(init=False)
    gate: StartupGate = attrs.field(factory=StartupGate)  # connections not yet authenticated (sqld.preauth)
    registry: Registry = attrs.field(init=False, factory=Registry)
    active: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        limit = self.max_message_memory
        self.message_memory = MessageMemory(limit and max(limit, self.max_message_size))

    async def __call__(self, stream: ProtocolStream) -> None:
        conn = PgConnection(self, stream)
        await conn.run()


class _Gone(Exception):
    """The client closed the connection (or sent Terminate)."""


class PgConnection:
    def __init__(self, factory: PgConnectionFactory, stream: ProtocolStream) -> None:
        self.factory = factory
        self.stream = stream
        self.protocol = ServerConnection(factory.max_message_size)  # phases, framing, buffered replies
        self.decoder = self.protocol.decoder
        self.write = self.protocol.write
        self.state: SessionState | None = None
        self.service = None
        # Kept between messages, counted against --max-session-memory (with the settings).
        self.memory = SessionMemory(factory.max_session_memory)
        self.statements: dict[str, results.PreparedStatement] = Held(self.memory, results.statement_size)
        self.portals: dict[str, results.Portal] = Held(self.memory, results.portal_size)
        self.counted = False
        self.tls = False
        self.replication = None  # the Scheduler a replication connection streams from
        self.gate_entry = None
        self.reserved = 0  # bytes of MessageMemory held for the large message being received

    # -- output ---------------------------------------------------------------------------

    def _client_gone(self, broken: bool = True) -> None:
        """The transport saw the client close its side (``broken`` False: a FIN) or the
        connection end. A FIN does not tell a half-close (the client reads on: it gets every
        answer) from a killed client; what is sent next does: a closed socket answers it
        with a reset. So a probe is written (``_probe``) and the kernel asked a moment later
        — also when messages are still to handle: their answers come only once the running
        statement ends (a Sync after an Execute that runs for minutes), too late to stop it."""
        state = self.state
        if state is None or state.client_gone:
            return
        if broken or self.replication is not None:
            self._gone_now()
            return
        # Something harmless is written; a closed socket answers it with a reset.
        self._probe()
        asyncio.get_running_loop().call_later(PROBE_WAIT, self._after_probe)

    def _probe(self) -> None:
        if self.state is not None:
            # A ParameterStatus may come at any time (protocol 55.2.7); this one repeats a value.
            name = "application_name"
            self.stream.probe(m.ParameterStatus(name, self.state.settings.get(name, "")).encode())

    def _after_probe(self) -> None:
        state = self.state
        if state is not None and not state.client_gone and self.stream.reset_by_peer():
            self._gone_now()

    def _gone_now(self) -> None:
        """The client is gone: its running statement stops after CLIENT_GONE_GRACE (its
        stop conditions ask ``SessionState.cancelled``); one that waits elsewhere — a write
        forwarded to the primary — is told then, as a CancelRequest would tell it."""
        state = self.state
        state.client_gone = time.monotonic()

        def stop() -> None:
            if state.on_cancel is not None and (state.executing or state.in_copy):
                state.on_cancel()

        asyncio.get_running_loop().call_later(CLIENT_GONE_GRACE, stop)

    async def flush(self) -> None:
        protocol = self.protocol
        if protocol.has_output:
            busy = protocol.status != b"I" or protocol.busy
            data = protocol.data_to_send()
            state = self.state
            if state is None or not busy or not state.idle_tx_timeout:
                await self.stream.send(data)
                return
            # Inside a transaction, a query or a batch the session may hold the writer or a
            # reader: a client that stops reading its answers holds them no longer than one
            # idle in a transaction may.
            try:
                await self.stream.send(data, state.idle_tx_timeout)
            except SendTimeout as exc:
                log.info("closing a connection from %s: it read none of its answers for %g s "
                         "inside a transaction or query (--idle-in-transaction-timeout)", self.peer(), exc.limit)
                raise _Gone() from None

    async def maybe_flush(self) -> None:
        if self.protocol.out_size >= FLUSH_AT:
            await self.flush()

    def write_error(self, err: SqldError) -> None:
        self.protocol.error(err, self.state is not None and self.state.ext)

    def _end_if_gone(self, err: SqldError) -> None:
        """A statement cancelled because its client went away ends the session, saying so."""
        state = self.state
        if isinstance(err, QueryCanceled) and state.client_gone and not state.cancel_requested:
            raise SqldError("terminating connection: the client closed its connection while its statement ran",
                            sqlstate="08006", severity="FATAL") from None

    def write_notice(self, message: str) -> None:
        self.write(m.NoticeResponse(severity="WARNING", sqlstate="25001", message=message).encode())

    async def sync_point(self) -> None:
        """After ReadyForQuery or Flush: write out, unless the client already sent more
        (a pipeline), whose answers then go out together. Like PostgreSQL, nothing is
        flushed between a Sync and the next one."""
        if not self.decoder.has_message():
            await self.flush()

    async def _reserve(self) -> None:
        """Room in MessageMemory for the large message being received, taken as its bytes
        arrive (one read ahead): what a header claims costs nothing until it is sent."""
        budget = self.factory.message_memory
        decoder = self.decoder
        size = decoder.front_length() if decoder.wanted() else 0
        want = min(size, decoder.buffered + READ_SIZE) if budget.LARGE < size <= decoder.max_message_size else 0
        more = want - self.reserved
        if more > 0:
            st = self.state.statement_timeout if self.state is not None else None
            await budget.reserve(more, min(st or MESSAGE_ROOM_WAIT, MESSAGE_ROOM_WAIT), size)
        elif more < 0:
            budget.release(-more)
        self.reserved = want

    async def receive(self) -> None:
        if self.reserved or self.decoder.buffered >= 5:
            await self._reserve()
        # Idle inside a transaction — or inside a batch not yet Synced, or a COPY, which hold
        # the writer (or a reader) just the same though the status last told was I.
        idle_limit = self.state.idle_tx_timeout if self.state is not None and (
            self.protocol.status != b"I" or self.protocol.busy) else None
        try:
            if idle_limit:
                # A session idle inside a transaction may hold the writer: every other
                # session's writes wait for it. Past the limit it is ended (rolled back).
                with anyio.move_on_after(idle_limit) as scope:
                    await self.flush()
                    data = await self.stream.receive(READ_SIZE)
                if scope.cancelled_caught:
                    raise SqldError("terminating connection due to idle-in-transaction timeout",
                                    sqlstate="25P03", severity="FATAL")
            else:
                if self.protocol.has_output:  # never wait for the client while holding answers back from it
                    await self.flush()
                data = await self.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            raise _Gone() from None
        self.protocol.receive_data(data)

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                # A client gets this long to start up and authenticate (PostgreSQL's
                # authentication_timeout): a silent or half-sent startup holds no socket forever.
                factory = self.factory
                # Sockets not yet authenticated have their own budget (sqld.preauth): per
                # peer and in total, apart from --max-connections, with small messages only.
                # A burst waits there for room, within its startup timeout.
                self.decoder.max_message_size = min(PREAUTH_MAX_MESSAGE, factory.max_message_size)
                entry = None
                try:
                    with anyio.move_on_after(factory.startup_timeout) as scope:
                        entry = self.gate_entry = await factory.gate.admit(self.peer())
                        entry.scope = scope
                        started = await self.startup()
                finally:
                    factory.gate.leave(entry)
                if scope.cancelled_caught:
                    if entry is None:
                        log.info("closing a connection from %s: no room to start up within %g s", self.peer(),
                                 self.factory.startup_timeout)
                        with anyio.move_on_after(1):
                            self.write_error(TooManyConnections("sorry, too many clients are connecting at once"))
                            await self.flush()
                    elif entry.evicted:
                        log.info("closing a connection from %s still starting up: others are connecting", self.peer())
                        with anyio.move_on_after(1):
                            self.write_error(TooManyConnections("sorry, too many clients are connecting at once"))
                            await self.flush()
                    else:
                        log.info("closing a connection from %s that did not start up within %g s", self.peer(),
                                 self.factory.startup_timeout)
                    return
                if not started:
                    return
                if self.replication is not None:
                    from sqld.replication import sender

                    await sender.serve(self, self.replication)
                else:
                    await self.serve()
            except SqldError as exc:  # FATAL: the session cannot go on
                log.info("closing session: %s %s", exc.sqlstate, exc.message)
                self.write_error(exc)
                await self.flush()
                await self._linger()
            except anyio.get_cancelled_exc_class():
                with anyio.move_on_after(1, shield=True):
                    self.write_error(AdminShutdown("terminating connection due to administrator command"))
                    await self.flush()
                raise
        except (_Gone, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.close()

    async def _linger(self) -> None:
        """After a FATAL error, before closing: end the sending side and read (discarding)
        what the client still sends, for a moment. Closing with its bytes unread would make
        the kernel answer with a reset, which throws away the error not yet read."""
        with anyio.move_on_after(LINGER):
            try:
                await self.stream.send_eof()
                while True:
                    await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    async def close(self) -> None:
        self.factory.message_memory.release(self.reserved)
        self.reserved = 0
        for portal in self.portals.values():
            if portal.cursor is not None:
                try:
                    await portal.cursor.close()
                except Exception:
                    pass
        self.portals.clear()
        if self.service is not None:
            try:
                await self.service(Terminate())
            except Exception as exc:
                log.warning("error ending session: %s", exc)
        if self.state is not None:
            self.factory.registry.remove(self.state)
        if self.counted:
            self.factory.active -= 1
        try:
            await self.stream.aclose()
        except Exception:
            pass

    async def startup(self) -> bool:
        while True:
            msg = self.protocol.next_startup()
            if msg is NEED_DATA:
                await self.receive()
                continue
            if isinstance(msg, m.SSLRequest) and self.factory.tls is not None and not self.tls:
                if self.decoder.buffered:  # bytes after the request would be in the clear
                    raise ProtocolViolation("received unencrypted data after SSL request")
                await self.stream.send(b"S")
                await self.stream.start_tls(self.factory.tls)
                self.tls = True
                continue
            if isinstance(msg, (m.SSLRequest, m.GSSENCRequest)):
                # 'N': no TLS (or GSS) here; the client goes on in the clear or gives up.
                await self.stream.send(b"N")
                continue
            if isinstance(msg, m.CancelRequest):
                self.factory.registry.cancel(msg.process_id, msg.secret_key)
                return False
            break
        params = msg.params
        user = params.get("user")
        if not user:
            raise ProtocolViolation("no PostgreSQL user name specified in startup packet", sqlstate="28000")
        replication = params.get("replication")
        if replication not in (None, "false", "0", "off", "no"):
            if replication != "sqld" or self.factory.replication is None:
                raise ProtocolViolation(
                    "replication connections are not supported" if self.factory.replication is None else
                    f'replication="{replication[:20]}" is not supported: sqld replicas connect with replication=sqld',
                    sqlstate="0A000")
        if self.factory.tls_required and not self.tls:
            raise NotAllowed("this server requires TLS (connect with sslmode=require or stronger)",
                             hint="The server was started with --tls-required.")
        self.protocol.authenticating()
        account = await self.authenticate(user)
        self.factory.gate.leave(self.gate_entry)  # authenticated: past the pre-auth limits
        self.decoder.max_message_size = self.factory.max_message_size
        if self.factory.active >= self.factory.max_connections:
            raise TooManyConnections(
                "sorry, too many clients already",
                detail=f"sqld serves at most {self.factory.max_connections} connections (--max-connections).",
            )
        self.factory.active += 1
        self.counted = True
        state = self.factory.registry.new_state()
        state.user = user
        state.database = params.get("database") or user
        state.settings = Held(self.memory, len, initial_settings(user, params))
        state.memory = self.memory
        state.application_name = state.settings.get("application_name", "")
        state.ext = params.get(ext.EXT_PARAM) == "1"
        state.read_only_user = account is not None and account.read_only
        self.state = state
        # The socket is watched while a statement runs: a client that goes away has its
        # statements cancelled (SessionState.cancelled), as PostgreSQL's
        # client_connection_check_interval does, rather than run them for nobody.
        self.stream.watch_close(self._client_gone)
        try:
            if replication not in (None, "false", "0", "off", "no"):
                self.replication = await self.factory.replication(state)  # may refuse the user
            else:
                self.service = await self.factory.session_factory(state)
        except SqldError as exc:
            exc.severity = "FATAL"  # no session to go on with (a bad startup setting, say)
            raise
        self.write(m.Authentication(m.AUTH_OK).encode())
        for name, value in state.settings.items():
            if is_reported(name):
                self.write(m.ParameterStatus(reported_name(name), value).encode())
        if state.ext:
            self.write(m.ParameterStatus(ext.EXT_PARAM, "1").encode())  # the extension is on
        self.write(m.BackendKeyData(state.process_id, state.secret_key).encode())
        self.protocol.ready(b"I")
        self.protocol.started(replication=self.replication is not None)
        await self.flush()
        return True

    def peer(self) -> str | None:
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        try:
            return sock.getpeername()[0] if sock is not None else None
        except OSError:
            return None

    async def authenticate(self, name: str):
        """Who the client is (sqld.auth decides; this sends and receives): the User, or None
        when the server trusts (no users configured). Raises a FATAL error otherwise."""
        auth = self.factory.auth
        peer = self.peer()
        if auth is None or not auth.users:
            if (auth is not None and auth.allow_trust) or peer is None or is_loopback(peer):
                return None
            raise NotAllowed(f"no users are configured: this server accepts connections from loopback only, "
                             f"not from {peer}", hint="Configure users (--user, --users-file) or --allow-trust.")
        user = auth.users.get(name)
        try:
            if auth.method == "scram-sha-256":
                exchange = ScramExchange(user, name)
                self.write(m.Authentication(10, exchange.mechanisms()).encode())
                server_first = exchange.first((await self._password()).data)
                self.write(m.Authentication(11, server_first).encode())
                final = exchange.final((await self._password()).data)
                self.write(m.Authentication(12, final).encode())
            elif auth.method == "md5":
                salt = os.urandom(4)
                self.write(m.Authentication(5, salt).encode())
                if not md5_check(user, salt, (await self._password()).data):
                    raise AuthFailed("password authentication failed")
            else:
                if not self.tls:
                    raise NotAllowed("cleartext passwords are accepted over TLS only",
                                     hint="Connect with sslmode=require (the server needs --tls-cert/--tls-key).")
                self.write(m.Authentication(3).encode())
                if not password_check(user, (await self._password()).data):
                    raise AuthFailed("password authentication failed")
        except AuthFailed:
            log.warning("password authentication failed for user %r from %s", name[:64], peer)
            await anyio.sleep(FAILED_AUTH_DELAY)  # slows guessing; other sessions go on
            raise AuthFailed(f'password authentication failed for user "{name[:64]}"') from None
        return user

    async def next_message(self):
        """The client's next whole message that the phase table lets through, reading as
        much as that takes."""
        while True:
            msg = self.protocol.next_message()
            if msg is not NEED_DATA:
                return msg
            await self.receive()

    async def _password(self) -> m.PasswordMessage:
        await self.flush()
        return await self.next_message()  # the phase table lets only a PasswordMessage through

    # -- the message loop -------------------------------------------------------------------

    async def serve(self) -> None:
        protocol = self.protocol
        handlers = {
            m.Bind: self.on_bind, m.Execute: self.on_execute, m.Sync: self.on_sync, m.Parse: self.on_parse,
            m.Describe: self.on_describe, m.Query: self.on_query, m.Close: self.on_close, m.Flush: self.on_flush,
        }
        while True:
            msg = protocol.next_message()  # the phase table drops or refuses what it must
            if msg is NEED_DATA:
                await self.receive()
                continue
            if self.reserved:
                # A large message read whole gives its room back now, not at the next read
                # after its statement (which may run long): others' messages wait for it.
                self.factory.message_memory.release(self.reserved)
                self.reserved = 0
            mt = type(msg)
            if mt is m.Terminate:
                await self.flush()  # the answers to what was pipelined before it
                return
            if mt is m.Flush and protocol.phase is Phase.SKIP:
                await self.sync_point()  # after an error, up to Sync only Flush and Sync count
                continue
            try:
                await handlers[mt](msg)
            except (_Gone, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
                raise  # the client went away in the middle: the session ends, quietly
            except (SqldError, Exception) as exc:
                if isinstance(exc, SqldError):
                    err = exc
                    if err.severity == "FATAL":
                        raise
                    self._end_if_gone(err)
                else:
                    # A bug: say so (XX000), keep the session; the log has the traceback.
                    log.exception("internal error handling %s", mt.__name__)
                    err = SqldError(f"internal error: {type(exc).__name__}: {exc}", sqlstate="XX000")
                    if mt is m.Query:
                        self.write_error(err)
                        await self._ready()
                        continue
                self.write_error(err)
                if mt is not m.Query:
                    protocol.failed()  # the rest of the batch is skipped up to its Sync
                    await self.service(Abort())
                    # The error goes out now, as PostgreSQL sends it: a client that sent
                    # Flush rather than Sync (asyncpg) is waiting for it.
                    await self.sync_point()

    async def on_flush(self, msg: m.Flush) -> None:
        await self.sync_point()

    async def on_sync(self, msg: m.Sync = m.SYNC) -> None:
        await self._ready()

    def _complete(self, cur) -> None:
        """CommandComplete, after the extension's changes / last rowid / total changes."""
        tag = cur.tag()
        state = self.state
        if state.ext:
            result = ext.encode_result(_tag_count(tag), state.last_rowid, state.total_changes)
            self.write(m.ParameterStatus(ext.RESULT, result).encode())
        self.write(m.CommandComplete(tag).encode())

    def _after_statement(self, cur=None) -> None:
        """What a statement's answer asks to be done after it (``Cursor.after``: DISCARD
        and DEALLOCATE forget prepared statements), then the settings to report."""
        after = cur.after if cur is not None else None
        if after is not None:
            for name in after.forget:
                if name == "*":
                    self.statements.clear()
                else:
                    self.statements.pop(name, None)
        state = self.state
        if state.reported:
            for name, value in state.reported.items():
                self.write(m.ParameterStatus(name, value).encode())
            state.reported.clear()

    async def _close_portals(self) -> None:
        portals = list(self.portals.values())
        self.portals.clear()
        for p in portals:
            if p.cursor is not None:
                await p.cursor.close()

    # -- extended protocol -------------------------------------------------------------------

    def _check_length(self, sql: str) -> None:
        limit = self.factory.max_sql_length
        if len(sql) > limit:
            raise SqldError(f"statement too long: {len(sql):,} characters (the limit is {limit:,})",
                            sqlstate="54000", hint="Bind large values as parameters, or raise --max-sql-length.")

    async def on_parse(self, msg: m.Parse) -> None:
        self._check_length(msg.sql)
        stmt = parse_one(msg.sql)
        if msg.name and msg.name in self.statements:
            raise SqldError(f'prepared statement "{msg.name}" already exists', sqlstate="42P05")
        if stmt.is_empty or stmt.verb == "COPY":
            # COPY returns no rows (NoData); it streams at Execute, as in PostgreSQL.
            ps = results.PreparedStatement(stmt, tuple(msg.param_types), None)
        else:
            clock = self.state.schema.value  # before describing: a change meanwhile is seen at Bind
            desc = await self.service(Describe(stmt))
            count = max(desc.info.param_count, len(msg.param_types), stmt.param_count)
            hints = dict(stmt.hints)
            types = []
            for i in range(count):
                oid = msg.param_types[i] if i < len(msg.param_types) else 0
                if not oid:
                    hint = hints.get(i + 1)
                    if hint is not None and hint.oid:
                        oid = hint.oid
                    elif i < len(desc.param_decltypes):
                        oid = t.oid_for_decltype(desc.param_decltypes[i]) or 0
                types.append(oid or t.TEXT)
            ps = results.PreparedStatement(stmt, tuple(types), desc.info.columns or None, described=desc,
                                   schema=clock)
        self.statements[msg.name] = ps
        self.write(_PARSE_COMPLETE)

    async def on_bind(self, msg: m.Bind) -> None:
        ps = self.statements.get(msg.statement)
        if ps is None:
            raise SqldError(f'prepared statement "{msg.statement}" does not exist', sqlstate="26000")
        if ps.described is not None and ps.schema != self.state.schema.value:
            # The schema changed since this statement was described: describe it again.
            ps.schema = self.state.schema.value
            described = await self.service(Describe(ps.statement))
            if described is not ps.described:
                ps.refresh(described)
        n = len(ps.param_types)
        if len(msg.params) != n:
            raise ProtocolViolation(
                f"bind message supplies {len(msg.params)} parameters, but prepared statement "
                f'"{msg.statement}" requires {n}', severity="ERROR",
            )
        fmts = msg.param_formats
        for f in fmts:
            if f != 0 and f != 1:
                raise SqldError(f"unsupported format code: {f}", sqlstate="22023")
        if len(fmts) not in (0, 1, n):
            raise ProtocolViolation(f"bind message has {len(fmts)} parameter formats but {n} parameters",
                                    severity="ERROR")
        if not fmts:
            values = tuple(
                t.decode_param(i, raw, oid, 0) for i, (raw, oid) in enumerate(zip(msg.params, ps.param_types))
            )
        else:
            values = tuple(
                t.decode_param(i, raw, oid, fmts[i] if len(fmts) > 1 else fmts[0])
                for i, (raw, oid) in enumerate(zip(msg.params, ps.param_types))
            )
        old = self.portals.get(msg.portal)
        if old is not None and old.cursor is not None:
            if msg.portal:
                raise SqldError(f'portal "{msg.portal}" already exists', sqlstate="42P03")
            await old.cursor.close()  # binding the unnamed portal again replaces it
        self.portals[msg.portal] = results.Portal(ps, values, msg.result_formats)
        self.write(_BIND_COMPLETE)

    async def on_describe(self, msg: m.Describe) -> None:
        if msg.kind == b"S":
            ps = self.statements.get(msg.name)
            if ps is None:
                raise SqldError(f'prepared statement "{msg.name}" does not exist', sqlstate="26000")
            self.write(m.ParameterDescription(ps.param_types).encode())
            if ps.columns is None:
                self.write(_NO_DATA)
                return
            if ps.row_oids is None:
                ps.row_oids = await results.statement_oids(ps, lambda: self.service(Peek(ps.statement)))
            self.write(results.row_description(ps.columns, ps.row_oids, (), self.state.ext))
            return
        portal = self.portals.get(msg.name)
        if portal is None:
            raise SqldError(f'portal "{msg.name}" does not exist', sqlstate="34000")
        if portal.prepared.columns is None and portal.cursor is None:
            self.write(_NO_DATA)
            return
        await results.ensure_types(portal, self.state.ext, self._start)
        ps = portal.prepared
        if ps.row_oids is not None and portal.oids is ps.row_oids:
            desc = ps.descriptions.get(portal.result_formats)
            if desc is None:
                desc = ps.descriptions[portal.result_formats] = results.row_description(
                    ps.columns, ps.row_oids, portal.result_formats, self.state.ext)
            self.write(desc)
            return
        cols = portal.cursor.columns if portal.cursor is not None else ps.columns
        if cols is None:
            self.write(_NO_DATA)
        else:
            self.write(results.row_description(cols, portal.oids, portal.result_formats, self.state.ext))

    async def _start(self, portal: results.Portal, first: int = BATCH_ROWS, pipelined: bool = False) -> None:
        cur = await self.service(Execute(portal.prepared.statement, portal.params, first, pipelined,
                                         check=results.row_check(portal, self.state.ext)))
        portal.cursor = cur
        if cur.notice:
            self.write_notice(cur.notice)
        portal.pending = list(cur.rows)

    async def on_execute(self, msg: m.Execute) -> None:
        portal = self.portals.get(msg.portal)
        if portal is None:
            raise SqldError(f'portal "{msg.portal}" does not exist', sqlstate="34000")
        if portal.prepared.statement.is_empty:
            self.write(_EMPTY_QUERY)
            return
        if portal.cursor is not None and not portal.complete and portal.cursor.orphaned:
            del self.portals[msg.portal]  # dropped at the end of its transaction, as PostgreSQL does
            raise SqldError(f'portal "{msg.portal}" does not exist', sqlstate="34000",
                            detail="The transaction it was read in has ended.")
        if portal.complete:
            self._complete(portal.cursor)
            return
        if portal.prepared.statement.verb == "COPY":
            # COPY through the extended protocol: the copy sub-protocol at Execute; after an
            # error the messages up to the client's Sync are skipped, as after any other.
            await copy.run(self, portal.prepared.statement, extended=True)
            self._after_statement()
            return
        limit = msg.max_rows
        if portal.cursor is None:
            await self._start(portal, limit + 1 if 0 < limit < BATCH_ROWS else BATCH_ROWS, self._pipelined())
        cur = portal.cursor
        if cur.columns is not None and portal.encoders is None:
            await results.ensure_types(portal, self.state.ext, self._start)
            if len(portal.oids) != len(cur.columns):
                raise SqldError("cached plan must not change result type", sqlstate="0A000",
                                hint="Prepare the statement again after changing the schema.")
        try:
            suspended = await self._send_rows(portal, limit)
        except SqldError:
            await cur.close()
            raise
        if suspended:
            self.write(_PORTAL_SUSPENDED)
        else:
            portal.complete = True
            self._complete(cur)
        self._after_statement(cur)

    def _pipelined(self) -> bool:
        """Whether more of this batch may run before its Sync: another Execute is already
        here, or the Sync is not (a client streaming a pipeline, asyncpg's executemany).
        Then the batch is one implicit transaction; a lone Execute with its Sync behind it
        (pgbench, most drivers) stays an autocommit statement that can join a group commit.
        Sessions on the sqld extension keep sqlite3's semantics: statement by statement."""
        if self.state.ext:
            return False
        return self.protocol.batch_continues()

    async def _send_rows(self, portal: results.Portal, limit: int) -> bool:
        """Send up to ``limit`` rows (0: all); True if the portal was suspended."""
        cur = portal.cursor
        if cur.columns is None:
            return False
        encoders = portal.encoders
        write = self.write
        encode_row = m.encode_data_row
        sent = 0
        while True:
            rows = portal.pending
            if limit:
                room = limit - sent
                if room <= 0:
                    return True
                if len(rows) > room:
                    portal.pending = rows[room:]
                    rows = rows[:room]
                else:
                    portal.pending = []
            else:
                portal.pending = []
            for row in rows:
                write(encode_row([None if v is None else enc(v) for v, enc in zip(row, encoders)]))
            sent += len(rows)
            if portal.pending:
                continue
            if cur.done:
                return False
            if limit and sent >= limit:
                return True
            await self.maybe_flush()
            await cur.fetch(BATCH_ROWS)
            portal.pending = list(cur.rows)

    async def on_close(self, msg: m.Close) -> None:
        if msg.kind == b"S":
            self.statements.pop(msg.name, None)
        else:
            portal = self.portals.pop(msg.name, None)
            if portal is not None and portal.cursor is not None:
                await portal.cursor.close()
        self.write(_CLOSE_COMPLETE)

    # -- simple query ---------------------------------------------------------------------

    async def on_query(self, msg: m.Query) -> None:
        # A simple Query closes the unnamed portal and statement (protocol 55.2.2).
        try:
            self._check_length(msg.sql)
            statements = parse(msg.sql)
        except SqldError as err:
            self.write_error(err)
            await self._ready()
            return
        if not statements:
            self.write(_EMPTY_QUERY)
        # Several statements in one Query form one implicit transaction (protocol 55.2.2.1):
        # all or nothing, unless they manage transactions themselves.
        # (Not for the sqld extension: sqlite3's executescript runs statements one by one.)
        # A savepoint command before any BEGIN fails there (25P01), taking the statements
        # before it back with the implicit transaction, as PostgreSQL does.
        own = [st for st in statements if st.verb in OWN_TRANSACTION_VERBS]
        implicit = len(statements) > 1 and not self.state.ext \
            and (not own or _is_savepoint_command(own[0])) \
            and await self.service(Sync()) == b"I"
        try:
            if implicit:
                await (await self.service(Execute(_BEGIN))).close()
            for stmt in statements:
                if implicit and _is_savepoint_command(stmt):
                    name = "ROLLBACK TO SAVEPOINT" if stmt.verb in ("ROLLBACK", "ABORT") else \
                        "SAVEPOINT" if stmt.verb == "SAVEPOINT" else "RELEASE SAVEPOINT"
                    raise SqldError(f"{name} can only be used in transaction blocks", sqlstate="25P01")
                await self._simple(stmt)
            if implicit:
                await (await self.service(Execute(_COMMIT))).close()
        except SqldError as err:
            if err.severity == "FATAL":
                raise  # the session ends (its transaction rolls back with it)
            self._end_if_gone(err)
            self.write_error(err)
            with anyio.CancelScope(shield=True):
                if implicit:
                    await (await self.service(Execute(_ROLLBACK))).close()
                else:
                    # Whatever failed the statement (here too: a row that could not be sent),
                    # a transaction block is failed by it, as in the extended protocol.
                    await self.service(Abort())
        await self._ready()

    async def _ready(self) -> None:
        """End a simple query or a batch: close portals of a finished transaction, ReadyForQuery."""
        try:
            status = await self.service(Sync())
        except SqldError as err:
            # The batch's implicit transaction failed to commit (a deferred constraint): the
            # error, then ReadyForQuery, as PostgreSQL answers a Sync whose COMMIT failed.
            if err.severity == "FATAL":
                raise
            self.write_error(err)
            status = await self.service(Sync())
        if status == b"I" and self.portals:
            await self._close_portals()
        self._after_statement()
        self.protocol.ready(status)
        await self.sync_point()

    async def _simple(self, stmt: Statement) -> None:
        if stmt.verb == "COPY":
            await copy.run(self, stmt)
            self._after_statement()
            return
        ps = results.PreparedStatement(stmt, ())
        portal = results.Portal(ps, (), ())
        await self._start(portal)
        cur = portal.cursor
        try:
            if cur.columns is not None:
                await results.ensure_types(portal, self.state.ext, self._start)
                self.write(results.row_description(cur.columns, portal.oids, (), self.state.ext))
                await self._send_rows(portal, 0)
        finally:
            await cur.close()
        self._complete(cur)
        self._after_statement(cur)
