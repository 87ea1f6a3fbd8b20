"""The server: listens on TCP, hands each accepted socket to a connection factory, stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import socket

import anyio
import anyio.abc
import attrs

from sqld.transport import StreamProtocol

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class Server:
    """Accepts sockets on ``host:port`` and runs ``factory(stream)`` for each, in one task group.

    ``listen`` binds (so a taken port is an error before anything else starts, and port 0
    works); ``serve`` runs until cancelled, and cancelling it cancels every connection task,
    which then rolls back and closes. Sockets are bound by anyio and served through
    ``sqld.transport`` (see there why).
    """

    host: str
    port: int
    bound: list[tuple[str, int]] = attrs.field(init=False, factory=list)
    _sockets: list[socket.socket] = attrs.field(init=False, factory=list)

    async def listen(self) -> list[tuple[str, int]]:
        """Bind the listening sockets (raises OSError, e.g. when the port is taken)."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self._sockets = [sub.extra(anyio.abc.SocketAttribute.raw_socket) for sub in listener.listeners]
        self.bound = [tuple(sock.getsockname()[:2]) for sock in self._sockets]
        return self.bound

    async def serve(self, factory) -> None:
        """Serve until cancelled (``listen`` first)."""
        assert self._sockets, "listen() first"

        async def handle(stream) -> None:
            try:
                await factory(stream)
            except Exception:
                log.exception("connection handler failed")

        loop = asyncio.get_running_loop()
        servers = []
        async with anyio.create_task_group() as tg:

            def on_connect(stream) -> None:
                tg.start_soon(handle, stream)

            try:
                for sock in self._sockets:
                    servers.append(await loop.create_server(lambda: StreamProtocol(on_connect), sock=sock))
                await anyio.sleep_forever()
            finally:
                for server in servers:
                    server.close()
