"""A blocking pgwire connection to sqld: a socket around the protocol core
(``sqld.pgwire.client.ClientConnection``), with the sqld extension.

It knows the protocol, not sqlite3's API: ``run`` sends one statement through the extended
protocol in one round trip and returns its columns, typed rows and counts; ``script`` sends
a simple Query. ``sqld.client`` builds sqlite3's semantics on top.
"""

from __future__ import annotations

import socket
import ssl

from sqld.pgwire.client import (SSL_REQUEST, ClientConnection, ConnectError, Described, Result, ServerError,
                                tls_agreed, tls_context)
from sqld.pgwire.codec import NEED_DATA

__all__ = ["Described", "Result", "ServerError", "WireConnection", "WireError"]


class WireError(Exception):
    """The connection failed (refused, dropped, or the peer broke the protocol)."""


class OverCore:
    """What the blocking and the async wrapper of the core share: what the server reported
    (as the core keeps it), and how a connection's end is told (``lost``, the WireError's
    message). Subclasses set ``conn``, ``host``, ``port``."""

    conn: ClientConnection
    host: str
    port: int
    closed: bool = False
    lost: str | None = None  # why the connection ended, if the server or the network ended it

    @property
    def status(self) -> bytes:
        return self.conn.status

    @property
    def params(self) -> dict[str, str]:
        return self.conn.params

    @property
    def key(self):
        return self.conn.key

    @property
    def total_changes(self) -> int:
        return self.conn.total_changes

    def _ended_by_server(self, exc: ServerError) -> bool:
        """After a ServerError: whether it was FATAL (the server ends the session)."""
        if self.conn.ended is None:
            return False
        self.closed = True
        self.lost = f"the server ended the session: {exc.response.message}"
        return True

    def _lost_to(self, exc: BaseException | None) -> WireError:
        """The connection is gone (network, or a server that broke the protocol): say why."""
        self.closed = True
        where = f"sqld at {self.host}:{self.port}"
        if exc is None or isinstance(exc, (OSError, EOFError)) or type(exc).__module__.startswith("anyio"):
            reason = getattr(exc, "strerror", None) or str(exc or "") or (type(exc).__name__ if exc else "closed")
            self.lost = f"the connection to {where} was lost: {reason}"
        else:
            self.lost = f"{where} broke the protocol: {exc}"
        return WireError(self.lost)


class WireConnection(OverCore):
    def __init__(self, host: str, port: int, *, user: str, database: str, password: str | None = None,
                 timeout: float | None = 5.0, application_name: str = "sqld.client",
                 lock_timeout: float | None = None, cache_size: int = 128, options: dict | None = None,
                 sslmode: str = "prefer", sslrootcert: str | None = None) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            self._tls(host, sslmode, sslrootcert)
        except ssl.SSLError as exc:
            raise WireError(f"TLS with sqld at {host}:{port} failed: {exc}") from None
        except ConnectError as exc:
            self.sock.close()
            raise WireError(str(exc)) from None
        except OSError as exc:
            raise WireError(f"cannot connect to sqld at {host}:{port}: {exc.strerror or exc}") from None
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalive(self.sock)
        self.host, self.port = host, port
        startup = {"application_name": application_name}
        if lock_timeout is not None:  # sqlite3's timeout=0: do not wait at all (1 ms here)
            startup["lock_timeout"] = f"{max(1, int(lock_timeout * 1000))}ms"
        startup.update(options or {})
        self.conn = ClientConnection(user, database, password=password, tls=isinstance(self.sock, ssl.SSLSocket),
                                     params=startup, cache_size=cache_size, where=f"{host}:{port}")
        try:
            self._send(self.conn.data_to_send())  # the StartupMessage
            while not self.conn.handshake():
                self._send(self.conn.data_to_send())  # the answer to an Authentication request
                self._feed()
        except ConnectError as exc:
            self.close()
            raise WireError(str(exc)) from None
        except ServerError:
            self.close()
            raise

    def _tls(self, host: str, sslmode: str, root_cert: str | None) -> None:
        """SSLRequest, and TLS if the server agrees (libpq's sslmode semantics)."""
        context = tls_context(sslmode, root_cert)
        if context is None:
            return
        self.sock.sendall(SSL_REQUEST)
        if tls_agreed(self.sock.recv(1), sslmode, f"sqld at {host}"):
            self.sock = context.wrap_socket(self.sock, server_hostname=host)

    # -- bytes ------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if not data:
            return
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._broken(exc)

    def _feed(self) -> None:
        try:
            data = self.sock.recv(262144)
        except OSError as exc:
            self._broken(exc)
        if not data:
            self._broken(None)
        self.conn.receive_data(data)

    def _answer(self):
        """Send what the core has queued, then read until the oldest request is answered."""
        self._send(self.conn.data_to_send())
        while True:
            try:
                result = self.conn.next_result()
            except ServerError as exc:
                if self._ended_by_server(exc):
                    self._close_socket()
                raise
            except Exception as exc:  # a server that breaks the protocol
                self._broken(exc)
            if result is not NEED_DATA:
                return result
            self._feed()

    def _broken(self, exc):
        error = self._lost_to(exc)
        self._close_socket()
        raise error from None

    def _close_socket(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- statements -------------------------------------------------------------------------

    def run(self, sql: str, params: tuple = ()) -> Result:
        """One statement with bound parameters, all its rows, one round trip (prepared once
        per SQL and parameter types: ``ClientConnection.run``)."""
        self.conn.run(sql, params)
        return self._answer()

    def describe(self, sql: str) -> Described:
        """Prepare ``sql`` unnamed and say its parameter types and result fields (None: no
        rows) and the columns' declared types, without running it."""
        self.conn.describe(sql)
        return self._answer()

    def script(self, sql: str) -> list[Result]:
        """A simple Query: several statements, each committed as it runs (no parameters)."""
        self.conn.script(sql)
        return self._answer()

    def cancel(self) -> None:
        """Ask the server to interrupt what this connection runs (from any thread)."""
        request = self.conn.cancel_request()
        if request is None:
            return
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as s:
                s.sendall(request)
                s.recv(1)
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.sendall(self.conn.terminate())
        except (OSError, AttributeError):
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

