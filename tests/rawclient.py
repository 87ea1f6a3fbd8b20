"""A minimal blocking pgwire client built on sqld's own codec, for byte-level protocol tests."""

from __future__ import annotations

import socket

from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder


class RawClient:
    def __init__(self, host: str, port: int, user: str = "tester", database: str = "main", timeout: float = 10,
                 params: dict | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.decoder = Decoder(m.BACKEND)
        self.params: dict[str, str] = {}
        self.key: m.BackendKeyData | None = None
        self.send(m.StartupMessage({"user": user, "database": database, **(params or {})}))
        while True:
            msg = self.recv()
            if isinstance(msg, m.ParameterStatus):
                self.params[msg.name] = msg.value
            elif isinstance(msg, m.BackendKeyData):
                self.key = msg
            elif isinstance(msg, m.ErrorResponse):
                self.sock.close()
                raise RuntimeError(msg)
            elif isinstance(msg, m.ReadyForQuery):
                break

    def send(self, *messages) -> None:
        self.sock.sendall(b"".join(msg.encode() for msg in messages))

    def recv(self):
        while True:
            msg = self.decoder.next_message()
            if msg is not NEED_DATA:
                return msg
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.decoder.feed(data)

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
