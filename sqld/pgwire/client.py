"""The client's side of a pgwire connection, without I/O: bytes in, results out.

One core for every client sqld has: ``sqld.client`` (a blocking socket around it,
``client/wire.py``), the replica's follower and its forwarded writes (anyio streams,
``client/wire_async.py``) and the tests' raw client. It does the startup (SSL negotiation's
answer, SCRAM-SHA-256 / md5 / cleartext), keeps what the server reports (parameters,
BackendKeyData, the transaction status), prepares statements once per (SQL, parameter
types) and collects each request's results::

    conn = ClientConnection("alice", "main", password="…")
    send(conn.data_to_send())                 # the StartupMessage
    while not conn.handshake():               # answers Authentication itself
        conn.receive_data(recv()); send(conn.data_to_send())
    conn.run("select ?", (1,)); send(conn.data_to_send())
    while (result := conn.next_result()) is NEED_DATA:
        conn.receive_data(recv())

A server's ErrorResponse raises ``ServerError``; one with severity FATAL also marks the
connection ``ended`` (the server closes it). Bytes that are not the protocol raise
``ProtocolViolation`` (from the codec).
"""

from __future__ import annotations

import hashlib
import ssl
import struct
from collections import OrderedDict, deque

import attrs
import scramp

from sqld.pgwire import extension as ext
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.pgwire.codec import NEED_DATA, Decoder

SSLMODES = ("disable", "prefer", "require", "verify-full")


class ServerError(Exception):
    """An ErrorResponse from the server."""

    def __init__(self, response: m.ErrorResponse) -> None:
        super().__init__(response.message)
        self.response = response


class ConnectError(Exception):
    """The server cannot be used as asked: it refused TLS that was required, asks for an
    authentication this client cannot give, or is not a sqld server."""


class AuthError(ConnectError):
    """The server asks for something this client cannot give (or failed to prove itself)."""


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


@attrs.define
class Described:
    """What Describe of a prepared statement told: parameter types, result fields (None:
    no rows) and the columns' declared types (the sqld extension)."""

    param_oids: tuple[int, ...] = ()
    fields: list[m.Field] | None = None
    decltypes: list = attrs.Factory(list)


# -- TLS and authentication --------------------------------------------------------------


def tls_context(sslmode: str, root_cert: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for libpq's sslmode (None for disable)."""
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}")
    if sslmode == "disable":
        return None
    if sslmode == "verify-full":
        context = ssl.create_default_context(cafile=root_cert)
    else:  # prefer, require: encrypted, not verified (as libpq without a root certificate)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


SSL_REQUEST = m.SSLRequest().encode()


def tls_agreed(answer: bytes, sslmode: str, where: str) -> bool:
    """The server's one-byte answer to SSLRequest: True to start TLS, False to go on in the
    clear (sslmode prefer); raises ConnectError when that is not allowed or not pgwire."""
    if answer == b"S":
        return True
    if answer == b"N":
        if sslmode in ("require", "verify-full"):
            raise ConnectError(f"{where} does not offer TLS (sslmode={sslmode})")
        return False
    raise ConnectError(f"{where} answered SSLRequest with {answer!r}: not a PostgreSQL server?")


class ClientAuth:
    """What to send for each Authentication request of the server."""

    def __init__(self, user: str, password: str | None, tls: bool = False) -> None:
        self.user = user
        self.password = password
        self.tls = tls  # the connection is encrypted: a password may be sent as such
        self._scram: scramp.ScramClient | None = None
        self._scram_done = False

    def _need_password(self) -> str:
        if self.password is None:
            raise AuthError(f'the server asks for a password for user "{self.user}" and none was given')
        return self.password

    def answer(self, msg: m.Authentication) -> bytes | None:
        """The encoded message to send for an Authentication request (None: nothing)."""
        code = msg.code
        if code == m.AUTH_OK:
            if self._scram is not None and not self._scram_done:
                # A server that skips SCRAM's final proof has not shown it knows the secret.
                raise AuthError("the server ended SCRAM authentication without proving itself")
            return None
        if code in (3, 5) and not self.tls:
            # Cleartext or md5 on a plain connection gives the password (or what stands for
            # it) to whoever is in between: only over TLS.
            raise AuthError(f"the server asks for the password {'in cleartext' if code == 3 else 'as md5'} on a "
                            "connection without TLS: refused (use TLS, or SCRAM on the server)")
        if code == 3:  # cleartext
            return m.PasswordMessage(self._need_password().encode() + b"\x00").encode()
        if code == 5:  # md5
            inner = hashlib.md5((self._need_password() + self.user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + msg.data[:4]).hexdigest()
            return m.PasswordMessage(b"md5" + outer.encode() + b"\x00").encode()
        if code == 10:  # SASL: the mechanisms offered
            offered = [x.decode() for x in msg.data.split(b"\x00") if x]
            if "SCRAM-SHA-256" not in offered:
                raise AuthError(f"the server offers SASL mechanisms {offered}, not SCRAM-SHA-256")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._need_password())
            first = self._scram.get_client_first().encode()
            return m.PasswordMessage(b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first).encode()
        if code == 11 and self._scram is not None:
            self._scram.set_server_first(msg.data.decode())
            return m.PasswordMessage(self._scram.get_client_final().encode()).encode()
        if code == 12 and self._scram is not None:
            try:
                self._scram.set_server_final(msg.data.decode())  # the server proves it knew the secret
            except scramp.ScramException as exc:
                raise AuthError(f"the server failed SCRAM's final check: {exc}") from None
            self._scram_done = True
            return None
        raise AuthError(f"the server asks for an authentication method ({code}) this client lacks")


# -- values ---------------------------------------------------------------------------------


def encode_param(value) -> tuple[int, bytes | None]:
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


# -- the connection --------------------------------------------------------------------------

_TYPED, _RAW, _DROP = 0, 1, 2  # how a request keeps its rows: decoded (format 2), as sent, not


@attrs.define(eq=False)
class _Request:
    """A request sent and not yet answered whole (its ReadyForQuery)."""

    rows: int                       # _TYPED, _RAW or _DROP
    single: bool                    # one statement: its Result (else a list of them)
    describe: Described | None = None
    prepared: tuple | None = None   # (cache key, name) of a statement prepared by this request
    results: list = attrs.Factory(list)
    current: Result = attrs.Factory(Result)
    error: ServerError | None = None


class ClientConnection:
    """One connection's protocol state, client side. ``params`` are extra startup
    parameters; ``extension`` asks for the sqld extension (and refuses a server without
    it); ``cache_size`` statements stay prepared (least recently used closed first)."""

    def __init__(self, user: str, database: str, *, password: str | None = None, tls: bool = False,
                 params: dict | None = None, extension: bool = True, cache_size: int = 128,
                 where: str = "the server", application_name: str | None = "sqld.client") -> None:
        self.decoder = Decoder(m.BACKEND)
        self.auth = ClientAuth(user, password, tls=tls)
        self.extension = extension
        self.where = where
        self.status = b"I"
        self.params: dict[str, str] = {}
        self.key: m.BackendKeyData | None = None
        self.total_changes = 0
        self.ready = False                    # the startup is over (first ReadyForQuery)
        self.ended: m.ErrorResponse | None = None  # the server's FATAL error, after which it closes
        self.cache_size = cache_size
        self._statements: OrderedDict[tuple, str] = OrderedDict()  # (sql, param OIDs) → name
        self._counter = 0
        self._pending_close: list[str] = []
        self._requests: deque[_Request] = deque()
        startup = {"user": user, "database": database}
        if application_name is not None:
            startup["application_name"] = application_name
        if extension:
            startup[ext.EXT_PARAM] = "1"
        startup.update(params or {})
        self._out: list[bytes] = [m.StartupMessage(startup).encode()]

    # -- bytes --------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.decoder.feed(data)

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def next_message(self):
        """The server's next message (NEED_DATA: feed more), once what belongs to the
        connection is taken from it: reported parameters, the key, the status, the answers
        to Authentication (queued to send)."""
        msg = self.decoder.next_message()
        kind = type(msg)
        if kind is m.ParameterStatus:
            if msg.name not in (ext.DECLTYPES, ext.RESULT):
                self.params[msg.name] = msg.value
        elif kind is m.ReadyForQuery:
            self.status = msg.status
        elif kind is m.ErrorResponse:
            if msg.severity == "FATAL":
                self.ended = msg
        elif kind is m.Authentication:
            reply = self.auth.answer(msg)
            if reply is not None:
                self._out.append(reply)
        elif kind is m.BackendKeyData:
            self.key = msg
        return msg

    def handshake(self) -> bool:
        """Go through what the server sent during startup: True once it is ready for queries
        (raises ServerError if it refused, ConnectError / AuthError if it cannot be used)."""
        while not self.ready:
            msg = self.next_message()
            if msg is NEED_DATA:
                return False
            kind = type(msg)
            if kind is m.ErrorResponse:
                raise ServerError(msg)
            if kind is m.ReadyForQuery:
                self.ready = True
                if self.extension and self.params.get(ext.EXT_PARAM) != "1":
                    raise ConnectError(f"{self.where} is not a sqld server (it did not accept the sqld protocol "
                                       "extension)")
        return True

    def cancel_request(self) -> bytes | None:
        """What a new connection sends to interrupt this one's statement (None before the key)."""
        return m.CancelRequest(self.key.process_id, self.key.secret_key).encode() if self.key else None

    def terminate(self) -> bytes:
        return m.TERMINATE.encode()

    @property
    def busy(self) -> bool:
        """Requests are sent and not answered whole yet."""
        return bool(self._requests)

    # -- requests -------------------------------------------------------------------------------

    def run(self, sql: str, params: tuple = ()) -> None:
        """One statement with bound parameters through the extended protocol, its rows typed
        (the extension's format 2): one round trip, answered by a ``Result``.

        Statements are prepared once per (SQL, parameter types) and kept by name, up to
        ``cache_size``; the least recently used is closed on the server when one more comes."""
        encoded = [encode_param(v) for v in params]
        oids = tuple(oid for oid, _ in encoded)
        key = (sql, oids)
        parts = [m.Close(b"S", n).encode() for n in self._pending_close]
        self._pending_close.clear()
        name = self._statements.pop(key, None)
        prepared = None
        if name is None:
            if self.cache_size <= 0:
                name = ""
            else:
                self._counter += 1
                name = f"sqld_client_{self._counter}"
                prepared = (key, name)
                if len(self._statements) >= self.cache_size:
                    _, old = self._statements.popitem(last=False)
                    parts.append(m.Close(b"S", old).encode())
            parts.append(m.Parse(name, sql, oids).encode())
        if name:
            self._statements[key] = name  # most recently used last
        formats = (t.TYPED_FORMAT,) if self.extension else ()
        parts += (
            m.Bind("", name, (1,), tuple(raw for _, raw in encoded), formats).encode(),
            m.Describe(b"P", "").encode(),
            m.Execute("", 0).encode(),
            m.SYNC.encode(),
        )
        self._out.append(b"".join(parts))
        self._requests.append(_Request(_TYPED if self.extension else _RAW, True, prepared=prepared))

    def describe(self, sql: str) -> None:
        """Prepare ``sql`` unnamed and tell its parameter types and result columns, without
        running it: answered by a ``Described``."""
        self._out.append(m.Parse("", sql, ()).encode() + m.Describe(b"S", "").encode() + m.SYNC.encode())
        self._requests.append(_Request(_DROP, True, describe=Described()))

    def script(self, sql: str) -> None:
        """A simple Query (several statements, no parameters), its rows dropped (sqlite3's
        executescript): answered by a list of ``Result``."""
        self._out.append(m.Query(sql).encode())
        self._requests.append(_Request(_DROP, False))

    def query(self, sql: str) -> None:
        """A simple Query whose rows are kept as the server sent them (text, or None):
        answered by a list of ``Result``."""
        self._out.append(m.Query(sql).encode())
        self._requests.append(_Request(_RAW, False))

    def next_result(self):
        """The answer to the oldest request once it is whole (NEED_DATA before); raises
        ServerError if the server answered it with an error."""
        req = self._requests[0]
        while True:
            msg = self.next_message()
            if msg is NEED_DATA:
                return NEED_DATA
            kind = type(msg)
            if kind is m.DataRow:
                if req.rows == _TYPED:
                    req.current.rows.append(tuple(None if v is None else t.decode_typed(v) for v in msg.values))
                elif req.rows == _RAW:
                    req.current.rows.append(msg.values)
            elif kind is m.RowDescription:
                current = req.current
                current.names = [f.name for f in msg.fields]
                current.has_rows = True
                if len(current.decltypes) != len(current.names):
                    current.decltypes = [None] * len(current.names)
                if req.describe is not None:
                    req.describe.fields = list(msg.fields)
            elif kind is m.ParameterStatus:
                if msg.name == ext.DECLTYPES:
                    req.current.decltypes = ext.decode_decltypes(msg.value)
                    if req.describe is not None:
                        req.describe.decltypes = req.current.decltypes
                elif msg.name == ext.RESULT:
                    current = req.current
                    current.changes, current.last_rowid, current.total_changes = ext.decode_result(msg.value)
                    self.total_changes = current.total_changes
            elif kind is m.ParameterDescription:
                if req.describe is not None:
                    req.describe.param_oids = msg.type_oids
            elif kind is m.CommandComplete:
                req.current.tag = msg.tag
                req.results.append(req.current)
                req.current = Result()
            elif kind is m.ErrorResponse:
                req.error = ServerError(msg)
                if msg.severity == "FATAL":  # the server ends the session after this
                    self._requests.clear()
                    raise req.error
            elif kind is m.ReadyForQuery:
                self._requests.popleft()
                if req.error is not None:
                    if req.prepared is not None:
                        # It may not have been prepared at all: forget it, and close it at the
                        # next round trip in case it was (Close of an unknown name is no error).
                        key, name = req.prepared
                        self._statements.pop(key, None)
                        self._pending_close.append(name)
                    raise req.error
                if req.describe is not None:
                    return req.describe
                if req.single:
                    return req.results[0] if req.results else req.current
                return req.results
            # ParseComplete, BindComplete, NoData, EmptyQueryResponse, NoticeResponse: nothing to keep
