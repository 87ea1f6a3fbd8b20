"""The server: listens on TCP, hands each accepted socket to a connection factory, stops cleanly."""

from __future__ import annotations

import logging
import socket

import anyio
import anyio.abc

log = logging.getLogger(__name__)


class Server:
    """Accepts sockets on ``host:port`` and runs ``factory(stream)`` for each, in one task group.

    ``serve`` reports the bound port through ``task_status`` (so port 0 works) and runs until
    cancelled; cancelling it cancels every connection task, which then rolls back and closes.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.bound: list[tuple[str, int]] = []
        self._listener = None

    async def listen(self) -> list[tuple[str, int]]:
        """Bind the listening sockets (raises OSError, e.g. when the port is taken)."""
        self._listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.bound = [
            tuple(sub.extra(anyio.abc.SocketAttribute.local_address)[:2]) for sub in self._listener.listeners
        ]
        return self.bound

    async def serve(self, factory) -> None:
        """Serve until cancelled (``listen`` first)."""
        listener = self._listener
        assert listener is not None, "listen() first"

        async def handle(stream: anyio.abc.SocketStream) -> None:
            try:
                sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, anyio.TypedAttributeLookupError):
                pass
            try:
                await factory(stream)
            except Exception:
                log.exception("connection handler failed")

        async with listener:
            await listener.serve(handle)
