"""An async pgwire connection (anyio): a stream around the protocol core
(``sqld.pgwire.client.ClientConnection``), for the server's own clients — the replica's
follower and the sessions whose writes a replica forwards to its primary. No thread per
connection: a statement waits on the event loop, and a cancel request goes out on a
connection of its own while the answer is awaited.
"""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import attrs
from anyio.streams.tls import TLSStream

from sqld.client.wire import OverCore, WireError
from sqld.pgwire.client import (SSL_REQUEST, ClientConnection, ConnectError, Described, Result, ServerError,
                                tls_agreed, tls_context)
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA

__all__ = ["AsyncWire", "Described", "Result", "ServerError", "WireError"]

_LOST = (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError)
READ_SIZE = 1 << 20


@attrs.define(eq=False)
class AsyncWire(OverCore):
    """Made by ``connect``; one request at a time."""

    stream: anyio.abc.ByteStream
    conn: ClientConnection
    host: str
    port: int
    closed: bool = attrs.field(init=False, default=False)
    lost: str | None = attrs.field(init=False, default=None)  # OverCore's

    @classmethod
    async def connect(cls, host: str, port: int, *, user: str, database: str, password: str | None = None,
                      sslmode: str = "prefer", sslrootcert: str | None = None, params: dict | None = None,
                      extension: bool = True, timeout: float = 5.0) -> AsyncWire:
        """Connect, negotiate TLS as libpq's ``sslmode`` says, start up and authenticate
        within ``timeout`` seconds. Raises WireError (unreachable, refused TLS, not sqld, an
        authentication this client cannot do) or ServerError (the server refused: 28P01 …)."""
        where = f"{host}:{port}"
        stream = None
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port)
                stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                context = tls_context(sslmode, sslrootcert)
                if context is not None:
                    await stream.send(SSL_REQUEST)
                    if tls_agreed(await stream.receive(1), sslmode, where):
                        stream = await TLSStream.wrap(stream, hostname=host, ssl_context=context,
                                                      standard_compatible=False)
                conn = ClientConnection(user, database, password=password, tls=isinstance(stream, TLSStream),
                                        params=params, extension=extension, where=where)
                await stream.send(conn.data_to_send())
                while not conn.handshake():
                    reply = conn.data_to_send()
                    if reply:
                        await stream.send(reply)
                    conn.receive_data(await stream.receive(READ_SIZE))
        except BaseException as exc:
            if stream is not None:
                await _close_quietly(stream)
            if isinstance(exc, ConnectError):
                raise WireError(str(exc)) from None
            if isinstance(exc, TimeoutError):
                raise WireError(f"cannot connect to {where}: no answer within {timeout:g} s") from None
            if isinstance(exc, _LOST):
                why = getattr(exc, "strerror", None) or exc or type(exc).__name__
                raise WireError(f"cannot connect to {where}: {why}") from None
            raise
        return cls(stream, conn, host, port)

    # -- bytes ------------------------------------------------------------------------------

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send(data)

    async def _receive(self, timeout: float | None) -> None:
        if timeout is None:
            data = await self.stream.receive(READ_SIZE)
        else:
            with anyio.fail_after(timeout):
                data = await self.stream.receive(READ_SIZE)
        self.conn.receive_data(data)

    async def _broken(self, why: str) -> None:
        self.closed = True
        self.lost = why
        await _close_quietly(self.stream)

    async def _answer(self):
        """Send what the core queued, then read until the oldest request is answered. A
        request cut short (the network, a FATAL error, the caller cancelled) ends the
        connection: what it would have read next is unknown."""
        done = False
        try:
            await self._flush()
            while True:
                result = self.conn.next_result()
                if result is not NEED_DATA:
                    done = True
                    return result
                await self._receive(None)
        except ServerError as exc:
            if self._ended_by_server(exc):
                await _close_quietly(self.stream)
            done = True
            raise
        except Exception as exc:  # the network, or a server that breaks the protocol
            error = self._lost_to(exc)
            await _close_quietly(self.stream)
            done = True
            raise error from None
        finally:
            if not done and not self.closed:
                with anyio.CancelScope(shield=True):
                    await self._broken(self.lost or "a request was cut short")

    # -- requests ---------------------------------------------------------------------------

    async def run(self, sql: str, params: tuple = ()) -> Result:
        """One statement with bound parameters (``ClientConnection.run``)."""
        self.conn.run(sql, params)
        return await self._answer()

    async def describe(self, sql: str) -> Described:
        self.conn.describe(sql)
        return await self._answer()

    async def query(self, sql: str) -> list[Result]:
        """A simple Query, its rows as the server sent them."""
        self.conn.query(sql)
        return await self._answer()

    async def send_query(self, sql: str) -> None:
        """A simple Query whose answer the caller reads message by message (a stream)."""
        await self.stream.send(m.Query(sql).encode())

    async def next_message(self, timeout: float | None = None):
        """The server's next message, raw (for the replication sub-protocol's streams); a
        server silent for ``timeout`` seconds raises TimeoutError."""
        while True:
            msg = self.conn.next_message()
            if msg is not NEED_DATA:
                return msg
            await self.receive(timeout)

    def next_buffered(self):
        """The next message if it is here already, else NEED_DATA (then ``receive``)."""
        return self.conn.next_message()

    async def receive(self, timeout: float | None = None) -> None:
        """Read what the server sent next (TimeoutError after ``timeout`` seconds of silence)."""
        await self._flush()
        await self._receive(timeout)

    async def cancel(self) -> None:
        """Ask the server, on a connection of its own, to interrupt this one's statement."""
        request = self.conn.cancel_request()
        if request is None:
            return
        try:
            with anyio.fail_after(5):
                async with await anyio.connect_tcp(self.host, self.port) as s:
                    await s.send(request)
                    try:
                        await s.receive(1)
                    except anyio.EndOfStream:
                        pass
        except (OSError, TimeoutError, anyio.BrokenResourceError):
            pass

    def alive(self) -> bool:
        """Whether the idle connection is still usable (the server may have restarted
        since): a peek that does not wait; anything to read means it is not — EOF, or a
        FATAL error sent before the server closed it."""
        if self.closed or self.conn.decoder.buffered:
            return False
        raw = self.stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if raw is None:
            return True
        # The event loop's socket object may refuse recv (uvloop's): peek through a socket
        # object of our own on the same descriptor, detached before it could close it.
        sock = socket.socket(fileno=raw.fileno())
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            sock.detach()
        return False

    async def __aenter__(self) -> AsyncWire:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        with anyio.move_on_after(1, shield=True):
            try:
                await self.stream.send(self.conn.terminate())
            except _LOST:
                pass
            await _close_quietly(self.stream)


async def _close_quietly(stream) -> None:
    try:
        await stream.aclose()
    except Exception:
        pass
