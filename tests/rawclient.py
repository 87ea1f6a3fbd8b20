"""A minimal blocking pgwire client built on sqld's own codec, for byte-level protocol tests."""

from __future__ import annotations

import socket

from sqld.pgwire import messages as m
from sqld.pgwire.client import ClientConnection, ServerError
from sqld.pgwire.codec import NEED_DATA


class RawClient:
    """Starts up through the protocol core (``sqld.pgwire.client``), then sends and reads
    single messages as the test says."""

    def __init__(self, host: str, port: int, user: str = "tester", database: str = "main", timeout: float = 10,
                 params: dict | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.core = ClientConnection(user, database, params=params, extension=False, application_name=None)
        self.decoder = self.core.decoder
        self.sock.sendall(self.core.data_to_send())
        try:
            while not self.core.handshake():
                self._feed()
        except ServerError as exc:
            self.sock.close()
            raise RuntimeError(exc.response) from None
        self.params = self.core.params
        self.key = self.core.key

    def _feed(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.decoder.feed(data)

    def send(self, *messages) -> None:
        self.sock.sendall(b"".join(msg.encode() for msg in messages))

    def recv(self):
        while True:
            msg = self.decoder.next_message()
            if msg is not NEED_DATA:
                return msg
            self._feed()

    def until_ready(self) -> list:
        out = []
        while True:
            msg = self.recv()
            out.append(msg)
            if isinstance(msg, m.ReadyForQuery):
                return out

    def query(self, sql: str) -> list:
        self.send(m.Query(sql))
        return self.until_ready()

    def close(self) -> None:
        try:
            self.send(m.Terminate())
        finally:
            self.sock.close()


def kinds(messages) -> list[str]:
    return [type(msg).__name__ for msg in messages]


# Frontend COPY messages (sqld's codec decodes them but only the backend's side is encoded).
def copy_data(data: bytes) -> bytes:
    return m.copy_data(data)


COPY_DONE = m.COPY_DONE


def copy_fail(message: str = "client gave up") -> bytes:
    return m.frame(b"f", message.encode() + b"\x00")


def summary(messages) -> list[tuple]:
    """The messages of an answer as short tuples, notices left out: what a test compares
    with PostgreSQL's answer (E: SQLSTATE, C: tag, Z: status, D: values, d: CopyData …)."""
    out: list[tuple] = []
    for msg in messages:
        if isinstance(msg, m.NoticeResponse):
            continue
        if isinstance(msg, m.ErrorResponse):
            out.append(("E", msg.sqlstate))
        elif isinstance(msg, m.CommandComplete):
            out.append(("C", msg.tag))
        elif isinstance(msg, m.ReadyForQuery):
            out.append(("Z", msg.status.decode()))
        elif isinstance(msg, m.DataRow):
            out.append(("D", *(None if v is None else v.decode() for v in msg.values)))
        elif isinstance(msg, m.CopyData):
            out.append(("d", msg.data.decode()))
        else:
            out.append((type(msg).__name__,))
    return out
