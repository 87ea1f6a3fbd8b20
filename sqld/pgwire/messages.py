"""PostgreSQL protocol 3.0 messages, one frozen class each, with their byte layouts.

Each message knows how to write itself (``encode``) and how to read its payload
(``decode_untrusted``). Decoders take the payload after the 5-byte type+length header
and raise ``ProtocolViolation`` on anything malformed: that is the one error peer input
can cause. Both directions are here so the server and ``sqld.client`` share one codec.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import attrs

from sqld.errors import ProtocolViolation

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")  # type byte, length (counting itself, not the type byte)

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


def frame(type_byte: bytes, payload: bytes) -> bytes:
    """A typed message: type byte, int32 length, payload."""
    return _HDR.pack(type_byte, len(payload) + 4) + payload


def _short_bytes(b: bytes | None) -> str:
    if b is None:
        return "NULL"
    return b[:32].hex() + ("…" if len(b) > 32 else "")


@attrs.define
class _Reader:
    """Reads fields out of one untrusted payload; any overrun is a ProtocolViolation."""

    buf: bytes = attrs.field(repr=_short_bytes)
    pos: int = attrs.field(init=False, default=0)
    what: str

    def _fail(self, why: str) -> ProtocolViolation:
        return ProtocolViolation(f"invalid {self.what} message: {why}")

    def int16(self) -> int:
        if self.pos + 2 > len(self.buf):
            raise self._fail("truncated")
        (v,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def int32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise self._fail("truncated")
        (v,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def uint32(self) -> int:
        if self.pos + 4 > len(self.buf):
            raise self._fail("truncated")
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def byte(self) -> bytes:
        if self.pos >= len(self.buf):
            raise self._fail("truncated")
        b = self.buf[self.pos : self.pos + 1]
        self.pos += 1
        return b

    def cstring(self) -> str:
        end = self.buf.find(b"\x00", self.pos)
        if end < 0:
            raise self._fail("string not terminated")
        raw = self.buf[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("string is not valid UTF-8") from None

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self._fail("truncated")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def rest(self) -> bytes:
        b = self.buf[self.pos :]
        self.pos = len(self.buf)
        return b

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self._fail(f"{len(self.buf) - self.pos} unexpected trailing bytes")

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise self._fail(f"negative count {n}")
        return n


def _cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


# ---------------------------------------------------------------------------------------
# Frontend (client → server) messages
# ---------------------------------------------------------------------------------------


@attrs.frozen
class _Empty:
    """Base for messages with no payload."""

    type: ClassVar[bytes] = b"?"

    def encode(self) -> bytes:
        return self.type + b"\x00\x00\x00\x04"

    @classmethod
    def decode_untrusted(cls, payload: bytes):
        _Reader(payload, cls.__name__).end()
        return _ONE.get(cls) or cls()


def _kind_and_name(payload: bytes, what: str) -> tuple[bytes, str]:
    """The payload of Describe and Close: 'S' or 'P', then a name."""
    r = _Reader(payload, what)
    kind = r.byte()
    if kind not in (b"S", b"P"):
        raise r._fail(f"kind must be 'S' or 'P', not {kind!r}")
    name = r.cstring()
    r.end()
    return kind, name


@attrs.frozen
class StartupMessage:
    # int32 length, int32 protocol version, then (name\0 value\0)* \0
    params: dict[str, str]
    protocol: int = PROTOCOL_3_0

    def encode(self) -> bytes:
        body = _I32.pack(self.protocol)
        for k, v in self.params.items():
            body += _cstr(k) + _cstr(v)
        body += b"\x00"
        return _I32.pack(len(body) + 4) + body

    @classmethod
    def decode_untrusted(cls, protocol: int, payload: bytes) -> StartupMessage:
        r = _Reader(payload, "startup")
        params: dict[str, str] = {}
        while True:
            if r.pos >= len(payload):
                raise r._fail("parameter list not terminated")
            if payload[r.pos] == 0:
                r.pos += 1
                break
            key = r.cstring()
            params[key] = r.cstring()
        r.end()
        return cls(params=params, protocol=protocol)


@attrs.frozen
class SSLRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@attrs.frozen
class GSSENCRequest:
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@attrs.frozen
class CancelRequest:
    # int32 16, int32 80877102, int32 process id, int32 secret key
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        return struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, self.process_id, self.secret_key)


@attrs.frozen
class Query:
    type: ClassVar[bytes] = b"Q"
    sql: str

    def encode(self) -> bytes:
        return frame(b"Q", _cstr(self.sql))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Query:
        r = _Reader(payload, "Query")
        sql = r.cstring()
        r.end()
        return cls(sql)


@attrs.frozen
class Parse:
    type: ClassVar[bytes] = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        body = _cstr(self.name) + _cstr(self.sql) + _I16.pack(len(self.param_types))
        body += b"".join(_U32.pack(t) for t in self.param_types)
        return frame(b"P", body)

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Parse:
        r = _Reader(payload, "Parse")
        name = r.cstring()
        sql = r.cstring()
        n = r.count()
        types = tuple(r.uint32() for _ in range(n))
        r.end()
        return cls(name, sql, types)


@attrs.frozen(repr=False)
class Bind:
    type: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def __repr__(self) -> str:
        ps = ", ".join(_short_bytes(p) for p in self.params)
        return (
            f"Bind(portal={self.portal!r}, statement={self.statement!r}, "
            f"param_formats={self.param_formats}, params=[{ps}], result_formats={self.result_formats})"
        )

    def encode(self) -> bytes:
        parts = [_cstr(self.portal), _cstr(self.statement), _I16.pack(len(self.param_formats))]
        parts += [_I16.pack(f) for f in self.param_formats]
        parts.append(_I16.pack(len(self.params)))
        for p in self.params:
            if p is None:
                parts.append(_I32.pack(-1))
            else:
                parts.append(_I32.pack(len(p)))
                parts.append(p)
        parts.append(_I16.pack(len(self.result_formats)))
        parts += [_I16.pack(f) for f in self.result_formats]
        return frame(b"B", b"".join(parts))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Bind:
        # The hot path of every prepared query: offsets and struct calls, no _Reader.
        try:
            end = payload.index(0)
            portal = payload[:end].decode("utf-8")
            pos = end + 1
            end = payload.index(0, pos)
            statement = payload[pos:end].decode("utf-8")
            pos = end + 1
            (n,) = _I16.unpack_from(payload, pos)
            param_formats = struct.unpack_from(f"!{n}h", payload, pos + 2)
            pos += 2 + 2 * n
            (n,) = _I16.unpack_from(payload, pos)
            pos += 2
            if n < 0:
                raise ValueError(f"negative parameter count {n}")
            params: list[bytes | None] = []
            size = len(payload)
            for _ in range(n):
                (length,) = _I32.unpack_from(payload, pos)
                pos += 4
                if length == -1:
                    params.append(None)
                elif length < -1 or pos + length > size:
                    raise ValueError(f"parameter length {length} runs past the message")
                else:
                    params.append(payload[pos : pos + length])
                    pos += length
            (n,) = _I16.unpack_from(payload, pos)
            result_formats = struct.unpack_from(f"!{n}h", payload, pos + 2)
            pos += 2 + 2 * n
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            raise ProtocolViolation(f"invalid Bind message: {exc}") from None
        if pos != size:
            raise ProtocolViolation(f"invalid Bind message: {size - pos} unexpected trailing bytes")
        # Format codes are not checked here: an unknown one is the statement's error (22023,
        # at Bind for parameters, when the rows are encoded for results), as in PostgreSQL,
        # not a malformed message that ends the session.
        return cls(portal, statement, param_formats, tuple(params), result_formats)


@attrs.frozen
class Describe:
    type: ClassVar[bytes] = b"D"
    kind: bytes  # b"S" statement or b"P" portal
    name: str

    def encode(self) -> bytes:
        return frame(b"D", self.kind + _cstr(self.name))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Describe:
        return cls(*_kind_and_name(payload, "Describe"))


@attrs.frozen
class Execute:
    type: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int = 0  # 0 = no limit

    def encode(self) -> bytes:
        return frame(b"E", _cstr(self.portal) + _I32.pack(self.max_rows))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Execute:
        end = payload.find(0)
        if end < 0 or len(payload) != end + 5:
            raise ProtocolViolation("invalid Execute message: malformed")
        try:
            portal = payload[:end].decode("utf-8") if end else ""
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid Execute message: string is not valid UTF-8") from None
        (max_rows,) = _I32.unpack_from(payload, end + 1)
        return cls(portal, max(max_rows, 0))


@attrs.frozen
class Close:
    type: ClassVar[bytes] = b"C"
    kind: bytes  # b"S" or b"P"
    name: str

    def encode(self) -> bytes:
        return frame(b"C", self.kind + _cstr(self.name))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Close:
        return cls(*_kind_and_name(payload, "Close"))


@attrs.frozen
class Sync(_Empty):
    type: ClassVar[bytes] = b"S"


@attrs.frozen
class Flush(_Empty):
    type: ClassVar[bytes] = b"H"


@attrs.frozen
class Terminate(_Empty):
    type: ClassVar[bytes] = b"X"


@attrs.frozen(repr=False)
class PasswordMessage:
    """'p': a password, a SASL initial response or a SASL response; the phase says which."""

    type: ClassVar[bytes] = b"p"
    data: bytes

    def __repr__(self) -> str:
        return f"PasswordMessage(<{len(self.data)} bytes>)"

    def encode(self) -> bytes:
        return frame(b"p", self.data)

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> PasswordMessage:
        return cls(payload)


@attrs.frozen
class CopyFail:
    type: ClassVar[bytes] = b"f"
    message: str

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> CopyFail:
        return cls(_Reader(payload, "CopyFail").cstring())


@attrs.frozen
class CopyData:
    type: ClassVar[bytes] = b"d"
    data: bytes

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> CopyData:
        return cls(payload)


@attrs.frozen
class CopyDone:
    type: ClassVar[bytes] = b"c"

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> CopyDone:
        return cls()


@attrs.frozen
class FunctionCall:
    type: ClassVar[bytes] = b"F"

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> FunctionCall:
        return cls()


SYNC = Sync()
FLUSH = Flush()
TERMINATE = Terminate()
_ONE = {Sync: SYNC, Flush: FLUSH, Terminate: TERMINATE}  # decoded without allocating

FRONTEND = {
    cls.type: cls
    for cls in (
        Query, Parse, Bind, Describe, Execute, Close, Sync, Flush, Terminate,
        PasswordMessage, CopyData, CopyDone, CopyFail, FunctionCall,
    )
}

# ---------------------------------------------------------------------------------------
# Backend (server → client) messages
# ---------------------------------------------------------------------------------------


@attrs.frozen
class Authentication:
    """'R': the code says which request (0 ok, 3 cleartext, 5 md5, 10 SASL, 11/12 SASL steps)."""

    type: ClassVar[bytes] = b"R"
    code: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(b"R", _I32.pack(self.code) + self.data)

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> Authentication:
        r = _Reader(payload, "Authentication")
        return cls(r.int32(), r.rest())


AUTH_OK = 0


@attrs.frozen
class ParameterStatus:
    type: ClassVar[bytes] = b"S"
    name: str
    value: str

    def encode(self) -> bytes:
        return frame(b"S", _cstr(self.name) + _cstr(self.value))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> ParameterStatus:
        r = _Reader(payload, "ParameterStatus")
        name, value = r.cstring(), r.cstring()
        r.end()
        return cls(name, value)


@attrs.frozen
class BackendKeyData:
    type: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        return frame(b"K", _I32.pack(self.process_id) + _I32.pack(self.secret_key))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> BackendKeyData:
        r = _Reader(payload, "BackendKeyData")
        pid, key = r.int32(), r.int32()
        r.end()
        return cls(pid, key)


@attrs.frozen
class ReadyForQuery:
    type: ClassVar[bytes] = b"Z"
    status: bytes  # b"I" idle, b"T" in transaction, b"E" failed transaction

    def encode(self) -> bytes:
        return b"Z\x00\x00\x00\x05" + self.status

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> ReadyForQuery:
        r = _Reader(payload, "ReadyForQuery")
        status = r.byte()
        r.end()
        if status not in (b"I", b"T", b"E"):
            raise r._fail(f"unknown status {status!r}")
        return cls(status)


@attrs.frozen
class Field:
    """One column of a RowDescription."""

    # name\0, int32 table oid, int16 column number, int32 type oid, int16 type size,
    # int32 type modifier, int16 format code
    name: str
    type_oid: int
    type_size: int = -1
    format: int = 0
    table_oid: int = 0
    column: int = 0
    type_modifier: int = -1


_FIELD = struct.Struct("!ihIhih")


@attrs.frozen
class RowDescription:
    type: ClassVar[bytes] = b"T"
    fields: tuple[Field, ...]

    def encode(self) -> bytes:
        parts = [_I16.pack(len(self.fields))]
        for f in self.fields:
            parts.append(_cstr(f.name))
            parts.append(
                _FIELD.pack(f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format)
            )
        return frame(b"T", b"".join(parts))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> RowDescription:
        r = _Reader(payload, "RowDescription")
        fields = []
        for _ in range(r.count()):
            name = r.cstring()
            table_oid, column, type_oid, size, mod, fmt = _FIELD.unpack(r.take(_FIELD.size))
            fields.append(Field(name, type_oid, size, fmt, table_oid, column, mod))
        r.end()
        return cls(tuple(fields))


@attrs.frozen(repr=False)
class DataRow:
    type: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def __repr__(self) -> str:
        return f"DataRow([{', '.join(_short_bytes(v) for v in self.values)}])"

    def encode(self) -> bytes:
        return encode_data_row(self.values)

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> DataRow:
        r = _Reader(payload, "DataRow")
        values: list[bytes | None] = []
        for _ in range(r.count()):
            n = r.int32()
            values.append(None if n == -1 else r.take(n))
        r.end()
        return cls(tuple(values))


def encode_data_row(values) -> bytes:
    """A DataRow from already-encoded column values (None for NULL): the hot path."""
    parts = [b"", _I16.pack(len(values))]
    total = 2
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
            total += 4
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
            total += 4 + len(v)
    parts[0] = _HDR.pack(b"D", total + 4)
    return b"".join(parts)


@attrs.frozen
class CommandComplete:
    type: ClassVar[bytes] = b"C"
    tag: str

    def encode(self) -> bytes:
        return frame(b"C", _cstr(self.tag))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> CommandComplete:
        r = _Reader(payload, "CommandComplete")
        tag = r.cstring()
        r.end()
        return cls(tag)


@attrs.frozen
class EmptyQueryResponse(_Empty):
    type: ClassVar[bytes] = b"I"


@attrs.frozen
class ParseComplete(_Empty):
    type: ClassVar[bytes] = b"1"


@attrs.frozen
class BindComplete(_Empty):
    type: ClassVar[bytes] = b"2"


@attrs.frozen
class CloseComplete(_Empty):
    type: ClassVar[bytes] = b"3"


@attrs.frozen
class NoData(_Empty):
    type: ClassVar[bytes] = b"n"


@attrs.frozen
class PortalSuspended(_Empty):
    type: ClassVar[bytes] = b"s"


@attrs.frozen
class CopyInResponse:
    """'G': the server is ready for CopyData (int8 overall format, int16 count, int16 formats)."""

    type: ClassVar[bytes] = b"G"
    columns: int
    format: int = 0

    def encode(self) -> bytes:
        return frame(self.type, struct.pack("!bh", self.format, self.columns)
                     + b"".join(_I16.pack(self.format) for _ in range(self.columns)))

    @classmethod
    def decode_untrusted(cls, payload: bytes):
        r = _Reader(payload, cls.__name__)
        fmt = r.byte()[0]
        n = r.count()
        for _ in range(n):
            r.int16()
        r.end()
        return cls(n, fmt)


@attrs.frozen
class CopyOutResponse(CopyInResponse):
    type: ClassVar[bytes] = b"H"


def copy_data(data: bytes) -> bytes:
    """A CopyData message (either direction)."""
    return frame(b"d", data)


COPY_DONE = b"c\x00\x00\x00\x04"


@attrs.frozen
class ParameterDescription:
    type: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def encode(self) -> bytes:
        return frame(b"t", _I16.pack(len(self.type_oids)) + b"".join(_U32.pack(t) for t in self.type_oids))

    @classmethod
    def decode_untrusted(cls, payload: bytes) -> ParameterDescription:
        r = _Reader(payload, "ParameterDescription")
        oids = tuple(r.uint32() for _ in range(r.count()))
        r.end()
        return cls(oids)


# ErrorResponse / NoticeResponse field codes (protocol "Error and Notice Message Fields").
FIELD_CODES = {
    "severity": b"S",
    "severity_nonlocalized": b"V",
    "sqlstate": b"C",
    "message": b"M",
    "detail": b"D",
    "hint": b"H",
    "position": b"P",
    "sqlite_code": b"e",  # sqld extension: the SQLite extended result code (docs/protocol.md)
}
_CODE_NAMES = {v: k for k, v in FIELD_CODES.items()}


@attrs.frozen
class ErrorResponse:
    type: ClassVar[bytes] = b"E"
    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None
    position: int | None = None
    sqlite_code: int | None = None

    def encode(self) -> bytes:
        body = b"S" + _cstr(self.severity) + b"V" + _cstr(self.severity)
        body += b"C" + _cstr(self.sqlstate) + b"M" + _cstr(self.message)
        if self.detail:
            body += b"D" + _cstr(self.detail)
        if self.hint:
            body += b"H" + _cstr(self.hint)
        if self.position is not None:
            body += b"P" + _cstr(str(self.position))
        if self.sqlite_code is not None:
            body += b"e" + _cstr(str(self.sqlite_code))
        return frame(self.type, body + b"\x00")

    @classmethod
    def decode_untrusted(cls, payload: bytes):
        r = _Reader(payload, cls.__name__)
        fields: dict[str, str] = {}
        while True:
            code = r.byte()
            if code == b"\x00":
                break
            value = r.cstring()
            name = _CODE_NAMES.get(code)
            if name:
                fields[name] = value
        r.end()
        pos = fields.get("position")
        code = fields.get("sqlite_code")
        return cls(
            severity=fields.get("severity", "ERROR"),
            sqlstate=fields.get("sqlstate", "XX000"),
            message=fields.get("message", ""),
            detail=fields.get("detail"),
            hint=fields.get("hint"),
            position=int(pos) if pos and pos.isascii() and pos.isdigit() and len(pos) < 12 else None,
            sqlite_code=int(code) if code and code.isascii() and code.isdigit() and len(code) < 12 else None,
        )


@attrs.frozen
class NoticeResponse(ErrorResponse):
    type: ClassVar[bytes] = b"N"


BACKEND = {
    cls.type: cls
    for cls in (
        Authentication, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription, DataRow,
        CommandComplete, EmptyQueryResponse, ParseComplete, BindComplete, CloseComplete, NoData,
        PortalSuspended, ParameterDescription, ErrorResponse, NoticeResponse, CopyInResponse,
        CopyOutResponse, CopyData, CopyDone,
    )
}
