"""A blocking pgwire connection to sqld, on the server's own codec, with the sqld extension.

It knows the protocol, not sqlite3's API: ``run`` sends one statement through the extended
protocol in one round trip and returns its columns, typed rows and counts; ``script`` sends
a simple Query. ``sqld.client`` builds sqlite3's semantics on top.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections import OrderedDict

import attrs

from sqld.client.auth import AuthError, ClientAuth, tls_context
from sqld.pgwire import extension as ext
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.pgwire.codec import NEED_DATA, Decoder


class ServerError(Exception):
    """An ErrorResponse from the server."""

    def __init__(self, response: m.ErrorResponse) -> None:
        super().__init__(response.message)
        self.response = response


class WireError(Exception):
    """The connection failed (refused, dropped, or the peer broke the protocol)."""


@attrs.define
class Result:
    """One statement's outcome."""

    names: list[str] = attrs.Factory(list)       # column names ([] when no rows are returned)
    decltypes: list[str | None] = attrs.Factory(list)
    rows: list[tuple] = attrs.Factory(list)
    has_rows: bool = False
    tag: str = ""
    changes: int = 0
    last_rowid: int | None = None
    total_changes: int = 0


def _param(value) -> tuple[int, bytes | None]:
    """(type OID, binary value) for one parameter: each storage class travels exactly."""
    if value is None:
        return 0, None
    tp = type(value)
    if tp is int:
        if not -(2**63) <= value < 2**63:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return t.INT8, struct.pack("!q", value)
    if tp is float:
        return t.FLOAT8, struct.pack("!d", value)
    if tp is str:
        return t.TEXT, value.encode("utf-8")  # a lone surrogate: UnicodeEncodeError, as sqlite3
    if tp is bytes:
        return t.BYTEA, value
    raise TypeError(f"type {tp.__name__!r} is not supported")


class WireConnection:
    def __init__(self, host: str, port: int, *, user: str, database: str, password: str | None = None,
                 timeout: float | None = 5.0, application_name: str = "sqld.client",
                 lock_timeout: float | None = None, cache_size: int = 128, options: dict | None = None,
                 sslmode: str = "prefer", sslrootcert: str | None = None) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self._tls(host, sslmode, sslrootcert)
        except ssl.SSLError as exc:
            raise WireError(f"TLS with sqld at {host}:{port} failed: {exc}") from None
        except OSError as exc:
            raise WireError(f"cannot connect to sqld at {host}:{port}: {exc.strerror or exc}") from None
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(self.sock)
        self.host, self.port = host, port
        self.decoder = Decoder(m.BACKEND)
        self.status = b"I"
        self.params: dict[str, str] = {}
        self.key: m.BackendKeyData | None = None
        self.total_changes = 0
        self.closed = False
        self.lost: str | None = None  # why the server ended the session, if it did
        self.cache_size = cache_size
        self._statements: OrderedDict[tuple, str] = OrderedDict()  # (sql, param OIDs) → name
        self._counter = 0
        self._pending_close: list[str] = []
        startup = {"user": user, "database": database, ext.EXT_PARAM: "1", "application_name": application_name}
        if lock_timeout is not None:  # sqlite3's timeout=0: do not wait at all (1 ms here)
            startup["lock_timeout"] = f"{max(1, int(lock_timeout * 1000))}ms"
        startup.update(options or {})
        self._send(m.StartupMessage(startup).encode())
        auth = ClientAuth(user, password, tls=isinstance(self.sock, ssl.SSLSocket))
        while True:
            msg = self._recv()
            if isinstance(msg, m.Authentication):
                try:
                    reply = auth.answer(msg)
                except AuthError as exc:
                    self.close()
                    raise WireError(str(exc)) from None
                if reply is not None:
                    self._send(reply)
                continue
            if isinstance(msg, m.ParameterStatus):
                self.params[msg.name] = msg.value
            elif isinstance(msg, m.BackendKeyData):
                self.key = msg
            elif isinstance(msg, m.ErrorResponse):
                self.close()
                raise ServerError(msg)
            elif isinstance(msg, m.ReadyForQuery):
                self.status = msg.status
                break
        if self.params.get(ext.EXT_PARAM) != "1":
            self.close()
            raise WireError(f"{host}:{port} is not a sqld server (it did not accept the sqld protocol extension)")

    def _tls(self, host: str, sslmode: str, root_cert: str | None) -> None:
        """SSLRequest, and TLS if the server agrees (libpq's sslmode semantics)."""
        context = tls_context(sslmode, root_cert)
        if context is None:
            return
        self.sock.sendall(m.SSLRequest().encode())
        answer = self.sock.recv(1)
        if answer == b"S":
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
        elif sslmode in ("require", "verify-full"):
            self.sock.close()
            raise WireError(f"sqld at {host} does not offer TLS (sslmode={sslmode})")
        elif answer != b"N":
            self.sock.close()
            raise WireError(f"{host} answered SSLRequest with {answer!r}: not a PostgreSQL server?")

    # -- bytes ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._broken(exc)

    def _recv(self):
        while True:
            try:
                msg = self.decoder.next_message()
            except Exception as exc:  # a server that breaks the protocol
                self._broken(exc)
            if msg is not NEED_DATA:
                return msg
            try:
                data = self.sock.recv(262144)
            except OSError as exc:
                self._broken(exc)
            if not data:
                self._broken(None)
            self.decoder.feed(data)

    def _broken(self, exc):
        self.closed = True
        self.lost = f"the connection to sqld was lost{': ' + str(exc) if exc else ''}"
        try:
            self.sock.close()
        except OSError:
            pass
        why = f": {exc}" if exc else ""
        raise WireError(f"the connection to sqld was lost{why}") from None

    # -- statements -------------------------------------------------------------------------

    def run(self, sql: str, params: tuple = ()) -> Result:
        """One statement with bound parameters, all its rows, one round trip.

        Statements are prepared once per (SQL, parameter types) and kept by name, up to
        ``cache_size``; the least recently used is closed on the server when one more comes.
        """
        encoded = [_param(v) for v in params]
        oids = tuple(oid for oid, _ in encoded)
        key = (sql, oids)
        parts = [m.Close(b"S", n).encode() for n in self._pending_close]
        self._pending_close.clear()
        name = self._statements.pop(key, None)
        prepared_now = name is None
        if name is None:
            if self.cache_size <= 0:
                name = ""
            else:
                self._counter += 1
                name = f"sqld_client_{self._counter}"
                if len(self._statements) >= self.cache_size:
                    _, old = self._statements.popitem(last=False)
                    parts.append(m.Close(b"S", old).encode())
            parts.append(m.Parse(name, sql, oids).encode())
        if name:
            self._statements[key] = name  # most recently used last
        parts += (
            m.Bind("", name, (1,), tuple(raw for _, raw in encoded), (t.TYPED_FORMAT,)).encode(),
            m.Describe(b"P", "").encode(),
            m.Execute("", 0).encode(),
            m.SYNC.encode(),
        )
        self._send(b"".join(parts))
        try:
            return self._results(single=True)[0]
        except ServerError:
            if prepared_now and name:
                # It may not have been prepared at all: forget it, and close it at the next
                # round trip in case it was (Close of an unknown name is no error).
                self._statements.pop(key, None)
                self._pending_close.append(name)
            raise

    def describe(self, sql: str) -> tuple[tuple[int, ...], list[m.Field] | None, list]:
        """Prepare ``sql`` unnamed and say its parameter types and result fields (None: no
        rows) and the columns' declared types, without running it."""
        self._send(m.Parse("", sql, ()).encode() + m.Describe(b"S", "").encode() + m.SYNC.encode())
        oids: tuple[int, ...] = ()
        fields = None
        decltypes: list = []
        error = None
        while True:
            msg = self._recv()
            kind = type(msg)
            if kind is m.ParameterDescription:
                oids = msg.type_oids
            elif kind is m.RowDescription:
                fields = list(msg.fields)
            elif kind is m.ParameterStatus:
                if msg.name == ext.DECLTYPES:
                    decltypes = ext.decode_decltypes(msg.value)
                else:
                    self.params[msg.name] = msg.value
            elif kind is m.ErrorResponse:
                error = ServerError(msg)
            elif kind is m.ReadyForQuery:
                self.status = msg.status
                if error is not None:
                    raise error
                return oids, fields, decltypes

    def script(self, sql: str) -> list[Result]:
        """A simple Query: several statements, each committed as it runs (no parameters)."""
        self._send(m.Query(sql).encode())
        return self._results(single=False)

    def _results(self, single: bool) -> list[Result]:
        results: list[Result] = []
        current = Result()
        error: ServerError | None = None
        while True:
            msg = self._recv()
            kind = type(msg)
            if kind is m.DataRow:
                if single:  # a script's rows (text format) are not kept: executescript drops them
                    current.rows.append(tuple(None if v is None else _value(v) for v in msg.values))
            elif kind is m.RowDescription:
                current.names = [f.name for f in msg.fields]
                current.has_rows = True
                if len(current.decltypes) != len(current.names):
                    current.decltypes = [None] * len(current.names)
            elif kind is m.ParameterStatus:
                if msg.name == ext.DECLTYPES:
                    current.decltypes = ext.decode_decltypes(msg.value)
                elif msg.name == ext.RESULT:
                    changes, last_rowid, total = ext.decode_result(msg.value)
                    current.changes, current.last_rowid, current.total_changes = changes, last_rowid, total
                    self.total_changes = total
                else:
                    self.params[msg.name] = msg.value
            elif kind is m.CommandComplete:
                current.tag = msg.tag
                results.append(current)
                current = Result()
            elif kind is m.ErrorResponse:
                error = ServerError(msg)
                if msg.severity == "FATAL":  # the server ends the session after this
                    self.closed = True
                    self.lost = f"the server ended the session: {msg.message}"
                    try:
                        self.sock.close()
                    except OSError:
                        pass
                    raise error
            elif kind is m.ReadyForQuery:
                self.status = msg.status
                if error is not None:
                    raise error
                if single and not results:
                    results.append(current)
                return results
            # ParseComplete, BindComplete, NoData, EmptyQueryResponse, NoticeResponse: nothing to keep

    def cancel(self) -> None:
        """Ask the server to interrupt what this connection runs (from any thread)."""
        if self.key is None:
            return
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as s:
                s.sendall(m.CancelRequest(self.key.process_id, self.key.secret_key).encode())
                s.recv(1)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.sendall(m.TERMINATE.encode())
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _keepalive(sock: socket.socket) -> None:
    """A server whose host vanished (no reset) is noticed in about half a minute, not after
    TCP's retransmission timeout of a quarter of an hour."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3), ("TCP_USER_TIMEOUT", 30000)):
        option = getattr(socket, name, None)
        if option is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
            except OSError:
                pass


def _value(raw: bytes):
    try:
        return t.decode_typed(raw)
    except ValueError as exc:
        raise WireError(f"the server sent {exc}") from None
