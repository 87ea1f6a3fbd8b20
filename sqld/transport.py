"""A lean byte stream for client sockets: an asyncio Protocol behind anyio's ByteStream API.

anyio's own asyncio SocketStream pauses reading after every receive and resumes it before
the next (two epoll_ctl calls per request) and yields to the event loop on every send. At
tens of thousands of small requests a second that is a large share of a query's cost, so
client connections use this instead: reading stays on while less than ``HIGH_WATER``
bytes wait unread (then it pauses: backpressure on a client that floods us), and a send
waits only when the socket's buffer is full (backpressure on a client that stops reading).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import ssl
import termios
from collections import deque

import anyio
import anyio.abc
import anyio.lowlevel

log = logging.getLogger(__name__)

HIGH_WATER = 256 * 1024
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds
LOW_WATER = 64 * 1024
_TCP_INFO = getattr(socket, "TCP_INFO", None)
# Linux TCP states once the peer has sent its FIN: TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING
_PEER_CLOSED = frozenset({6, 7, 8, 9, 11})
_TCP_CLOSE = 7


class SendTimeout(anyio.BrokenResourceError):
    """The client did not read what was sent to it within the time allowed."""

    def __init__(self, limit: float) -> None:
        super().__init__(f"the client read nothing for {limit:g} s")
        self.limit = limit


class StreamProtocol(asyncio.Protocol):
    """Collects received chunks for one ``ProtocolStream``; wakes it when data or EOF comes."""

    def __init__(self, on_connect) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.eof = False
        self.exc: BaseException | None = None
        self.reading_paused = False
        self.read_waiter: asyncio.Future | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self.tls = False  # set once start_tls switched the stream to TLS
        self.on_gone = None  # on_gone(broken): the client closed its side (False) or the connection ended (True)

    def _gone(self, broken: bool) -> None:
        callback = self.on_gone
        if callback is not None:
            if broken:
                self.on_gone = None
            callback(broken)

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        self._on_connect(ProtocolStream(self))

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self):
        self.eof = True
        self._wake_reader()
        self._gone(False)
        # A half-close: the client may still read the answers to what it sent. Not over TLS:
        # asyncio's TLS transport closes at the end of the stream whatever is returned.
        return not self.tls

    def connection_lost(self, exc) -> None:
        self.eof = True
        self.exc = exc
        self._wake_reader()
        self._gone(True)
        self.write_paused = False
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        w, self.drain_waiter = self.drain_waiter, None
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_reader(self) -> None:
        w, self.read_waiter = self.read_waiter, None
        if w is not None and not w.done():
            w.set_result(None)


class ProtocolStream(anyio.abc.ByteStream):
    """The client's socket as PgConnection drives it: an anyio ByteStream (``receive``,
    ``send`` with a stall limit, ``send_eof``, ``aclose``) plus what the protocol asks of
    the transport and the kernel: ``start_tls`` (after SSLRequest), ``watch_close`` (a
    client that goes away while its statement runs), ``unread``, ``probe``,
    ``reset_by_peer``, ``peer_closed`` and ``peek_unread`` (COPY's end, a half-close)."""

    def __init__(self, protocol: StreamProtocol) -> None:
        self._p = protocol
        self._closed = False
        self._eof_sent = False

    @property
    def extra_attributes(self):
        transport = self._p.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return {anyio.abc.SocketAttribute.raw_socket: lambda: sock}

    async def receive(self, max_bytes: int = 65536) -> bytes:
        p = self._p
        while not p.chunks:
            if self._closed:
                raise anyio.ClosedResourceError
            if p.eof:
                if p.exc is not None:
                    raise anyio.BrokenResourceError from p.exc
                raise anyio.EndOfStream
            p.read_waiter = asyncio.get_running_loop().create_future()
            await p.read_waiter
        # Whole chunks up to max_bytes, only the last one split: joining everything buffered
        # and putting the rest back copied each byte again at every call (a COPY of many
        # rows spent a third of its time there).
        chunks = p.chunks
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        elif chunks and len(data) + len(chunks[0]) <= max_bytes:
            parts, size = [data], len(data)
            while chunks and size + len(chunks[0]) <= max_bytes:
                part = chunks.popleft()
                parts.append(part)
                size += len(part)
            data = b"".join(parts)
        p.size -= len(data)
        if p.reading_paused and p.size <= LOW_WATER:
            p.reading_paused = False
            p.transport.resume_reading()
        return data

    async def start_tls(self, context) -> None:
        """Switch to TLS (after answering SSLRequest 'S'): the handshake, then every byte
        through the TLS transport; the protocol object stays. A handshake that stalls (10 s)
        or fails is one line in the log and a broken stream, never a traceback."""
        p = self._p
        loop = asyncio.get_running_loop()
        transport = p.transport
        try:
            p.tls = True
            with anyio.fail_after(TLS_HANDSHAKE_TIMEOUT):  # a client that never finishes its handshake
                p.transport = await loop.start_tls(transport, p, context, server_side=True)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError) as exc:
            peer = transport.get_extra_info("peername") if transport is not None else None
            what = "did not finish within %g s" % TLS_HANDSHAKE_TIMEOUT if isinstance(exc, TimeoutError) else \
                f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            log.info("TLS handshake with %s %s", peer[0] if peer else "?", what)
            if transport is not None:
                transport.abort()
            raise anyio.BrokenResourceError from None

    def watch_close(self, callback) -> None:
        """Call ``callback(broken)`` on the event loop when the client closes its sending
        side (``False``: it may still read) and when the connection ends (``True``), even
        while nobody is receiving: a running statement of a client that went away can then
        be cancelled."""
        p = self._p
        p.on_gone = callback
        if p.exc is not None or p.transport is None or p.transport.is_closing():
            p._gone(True)
        elif p.eof:
            p._gone(False)

    def _socket(self):
        transport = self._p.transport
        return transport.get_extra_info("socket") if transport is not None else None

    def peer_closed(self) -> bool:
        """Whether the client has closed its sending side, asked of the kernel: while reading
        is paused (much unread input) the stream's end is not seen until all before it is
        read, but TCP's state tells at once (Linux TCP_INFO; elsewhere: as far as read)."""
        p = self._p
        if p.eof:
            return True
        sock = self._socket()
        if sock is None or _TCP_INFO is None:
            return False
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0] in _PEER_CLOSED
        except (OSError, IndexError):
            return False

    def reset_by_peer(self) -> bool:
        """Whether the connection ended with a reset (a closed socket answers what reaches
        it so), asked of the kernel: asyncio hears of it only at the next read or write."""
        p = self._p
        if p.exc is not None:
            return True
        sock = self._socket()
        if sock is None or _TCP_INFO is None:
            return False
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0] == _TCP_CLOSE
        except (OSError, IndexError):
            return False

    def probe(self, data: bytes) -> None:
        """Write ``data`` (a whole message the client may get at any time) at once, ahead of
        nothing buffered by the caller: if the client's socket is closed, its kernel answers
        with a reset (``reset_by_peer``)."""
        transport = self._p.transport
        if transport is None or transport.is_closing() or self._eof_sent:
            return
        try:
            transport.write(data)
        except (RuntimeError, OSError):
            pass

    def peek_unread(self) -> bytes | None | bool:
        """Every byte received and not yet read — what this stream holds, then what the
        kernel holds for the socket (looked at, not taken) — or None where that cannot be
        seen (TLS: the kernel's bytes are still encrypted), False if the connection was
        reset (the kernel dropped what it held)."""
        p = self._p
        transport = p.transport
        if p.exc is not None:
            return False
        if transport is None or transport.get_extra_info("ssl_object") is not None:
            return None
        held = b"".join(p.chunks)
        sock = self._socket()
        if sock is None:
            return held
        if self.reset_by_peer():
            return False  # what the kernel held is gone, and nothing more comes
        try:
            queued = int.from_bytes(fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")
            if not queued:
                return held
            with sock.dup() as peer:  # asyncio's socket wrapper lends no recv; a dup reads the same queue
                return held + peer.recv(queued, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (OSError, ValueError):
            return None

    @property
    def unread(self) -> int:
        """Bytes received and not yet read from the stream."""
        return self._p.size if self._p.chunks else 0

    async def send(self, item: bytes, limit: float | None = None) -> None:
        """Send ``item``; wait while the socket's buffer is full, as long as the client
        reads, but at most ``limit`` seconds with nothing read (then the connection is
        dropped and ``SendTimeout`` raised): a slow reader is no stalled one."""
        p = self._p
        if self._closed:
            raise anyio.ClosedResourceError
        if p.exc is not None or p.transport is None or p.transport.is_closing():
            raise anyio.BrokenResourceError
        p.transport.write(item)
        if not p.write_paused:
            return
        if limit is None:
            await self._drain()
            return
        transport = p.transport
        loop = asyncio.get_running_loop()
        stalled_since = loop.time()
        left = self._unsent()
        while p.write_paused:
            with anyio.move_on_after(min(limit, 0.5)):
                await self._drain()
            if not p.write_paused:
                return
            now, size = loop.time(), self._unsent()
            if size < left:
                stalled_since, left = now, size  # it read some: the wait starts again
            elif now - stalled_since >= limit:
                transport.abort()  # what is buffered for a client that does not read is dropped
                raise SendTimeout(limit)

    def _unsent(self) -> int:
        """Bytes written and not yet taken by the client: asyncio's buffer, then the
        kernel's send queue (which moves as the client reads, while asyncio's buffer moves
        only once the kernel's has room for much of it)."""
        transport = self._p.transport
        size = transport.get_write_buffer_size()
        sock = self._socket()
        if sock is not None:
            try:
                size += int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"), "little")
            except (OSError, ValueError):
                pass
        return size

    async def _drain(self) -> None:
        p = self._p
        while p.write_paused:
            p.drain_waiter = asyncio.get_running_loop().create_future()
            await p.drain_waiter
            if p.exc is not None or p.transport.is_closing():
                raise anyio.BrokenResourceError

    async def send_eof(self) -> None:
        if self._p.transport is not None and self._p.transport.can_write_eof():
            self._eof_sent = True
            self._p.transport.write_eof()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            if self._p.transport is not None:
                self._p.transport.close()
        await anyio.lowlevel.checkpoint()
