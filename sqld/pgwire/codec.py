"""Framing: bytes in, whole messages out, with a size limit checked before any allocation."""

from __future__ import annotations

import struct

import attrs

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m


class _NeedData:
    """Sentinel: the buffer holds no whole message yet; feed more bytes."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()

_HDR = struct.Struct("!cI")
_LEN = struct.Struct("!I")

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


@attrs.define(eq=False)
class Decoder:
    """Splits a byte stream into messages of one direction.

    ``table`` maps type bytes to message classes (``messages.FRONTEND`` on the server,
    ``messages.BACKEND`` in a client). The first message of a server's connection has no
    type byte; ``next_startup`` reads that one.
    """

    _buf: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    _pos: int = attrs.field(init=False, default=0)
    _table: dict = attrs.field(repr=False)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def _compact(self) -> None:
        # Drop consumed bytes once they dominate, so a long pipeline does not grow the buffer.
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    def upcoming(self, wanted: bytes, more: bytes = b"") -> int | None:
        """The type byte of the first whole buffered message whose type is in ``wanted``, or
        None when none is buffered yet. It looks without consuming (the server asks whether
        a pipeline's Sync is already here, or another Execute comes first). ``more``: bytes
        received after the buffer, not fed yet, to look through as well."""
        buf, pos = self._buf, self._pos
        if more:
            buf, pos = bytes(buf[pos:]) + more, 0
        end = len(buf)
        while pos + 5 <= end:
            kind = buf[pos]
            if kind in wanted:
                return kind
            (length,) = _LEN.unpack_from(buf, pos + 1)
            if length < 4:
                return None  # next_message will refuse it
            pos += 1 + length
        return None

    def next_startup(self):
        """The untyped first message: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest."""
        if self.buffered < 8:
            return NEED_DATA
        (length,) = _LEN.unpack_from(self._buf, self._pos)
        if length < 8 or length > 10000:
            # PostgreSQL caps the startup packet at 10000 bytes too (MAX_STARTUP_PACKET_LENGTH).
            raise ProtocolViolation(f"invalid length of startup packet: {length}")
        if self.buffered < length:
            return NEED_DATA
        start = self._pos
        (code,) = _LEN.unpack_from(self._buf, start + 4)
        payload = bytes(self._buf[start + 8 : start + length])
        self._pos += length
        if code == m.SSL_REQUEST_CODE and length == 8:
            return m.SSLRequest()
        if code == m.GSSENC_REQUEST_CODE and length == 8:
            return m.GSSENCRequest()
        if code == m.CANCEL_REQUEST_CODE and length == 16:
            pid, key = struct.unpack("!ii", payload)
            return m.CancelRequest(pid, key)
        if code >> 16 == 3:
            return m.StartupMessage.decode_untrusted(code, payload)
        raise ProtocolViolation(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0"
        )

    def next_message(self):
        """The next whole typed message, or NEED_DATA."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 5:
            return NEED_DATA
        type_byte, length = _HDR.unpack_from(buf, pos)
        if length < 4:
            raise ProtocolViolation(f"invalid message length {length} for message type {type_byte!r}")
        if length > self.max_message_size:
            raise ProtocolViolation(
                f"message of {length} bytes exceeds the limit of {self.max_message_size} bytes",
                sqlstate="54000",
            )
        end = pos + 1 + length
        if len(buf) < end:
            return NEED_DATA
        if length == 4 and type_byte == b"S" and self._table is m.FRONTEND:
            self._pos = end  # Sync: one per query, no payload to copy
            self._compact()
            return m.SYNC
        cls = self._table.get(type_byte)
        if cls is None:
            self._pos = end
            raise ProtocolViolation(f"invalid message type {type_byte!r}")
        payload = bytes(buf[pos + 5 : end])
        self._pos = end
        self._compact()
        return cls.decode_untrusted(payload)

    def has_message(self) -> bool:
        """Whether a whole message is buffered (so reading more would not be needed)."""
        if self.buffered < 5:
            return False
        _, length = _HDR.unpack_from(self._buf, self._pos)
        return self.buffered >= 1 + length

    def front_length(self) -> int:
        """The whole length (type byte included) of the message at the front, once its
        header is buffered; 0 before."""
        if self.buffered < 5:
            return 0
        _, length = _HDR.unpack_from(self._buf, self._pos)
        return 1 + length

    def wanted(self) -> int:
        """How many more bytes the message at the front needs (0 if unknown or whole)."""
        if self.buffered < 5:
            return 0
        _, length = _HDR.unpack_from(self._buf, self._pos)
        return max(0, 1 + length - self.buffered)
