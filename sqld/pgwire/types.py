"""PostgreSQL types for SQLite values: OIDs, text and binary encoders and decoders.

SQLite has five storage classes; a column is announced as one PostgreSQL type (from its
declared type, else from its values) and every value of it is encoded as that type.
"""

from __future__ import annotations

import math
import struct

from sqld.errors import DataError, FeatureNotSupported, InvalidParameterValue, SqldError

BOOL = 16
BYTEA = 17
INT8 = 20
INT2 = 21
INT4 = 23
TEXT = 25
OID = 26
FLOAT4 = 700
FLOAT8 = 701
UNKNOWN = 705
VARCHAR = 1043
BPCHAR = 1042
NAME = 19
NUMERIC = 1700
JSON = 114
JSONB = 3802
DATE = 1082
TIMESTAMP = 1114
TIMESTAMPTZ = 1184
TIME = 1083
UUID = 2950

TYPE_NAMES = {
    BOOL: "bool", BYTEA: "bytea", INT8: "int8", INT2: "int2", INT4: "int4", TEXT: "text",
    OID: "oid", FLOAT4: "float4", FLOAT8: "float8", UNKNOWN: "unknown", VARCHAR: "varchar",
    BPCHAR: "bpchar", NAME: "name", NUMERIC: "numeric", JSON: "json", JSONB: "jsonb",
    DATE: "date", TIMESTAMP: "timestamp", TIMESTAMPTZ: "timestamptz", TIME: "time", UUID: "uuid",
}

# pg_type.typlen: the type size a RowDescription carries.
TYPE_SIZES = {BOOL: 1, INT2: 2, INT4: 4, INT8: 8, FLOAT4: 4, FLOAT8: 8, OID: 4, NAME: 64}

# Type names a user may write in a cast (`$1::int`, `'x'::bytea`) → OID.
CAST_NAMES = {
    "bool": BOOL, "boolean": BOOL, "bytea": BYTEA, "int8": INT8, "bigint": INT8,
    "int2": INT2, "smallint": INT2, "int4": INT4, "int": INT4, "integer": INT4,
    "text": TEXT, "float4": FLOAT4, "real": FLOAT4, "float8": FLOAT8, "float": FLOAT8,
    "double precision": FLOAT8, "varchar": VARCHAR, "character varying": VARCHAR,
    "char": BPCHAR, "character": BPCHAR, "bpchar": BPCHAR, "name": NAME, "numeric": NUMERIC,
    "decimal": NUMERIC, "json": JSON, "jsonb": JSONB, "date": DATE, "timestamp": TIMESTAMP,
    "timestamptz": TIMESTAMPTZ, "time": TIME, "uuid": UUID, "oid": OID, "regclass": OID,
    "unknown": UNKNOWN,
}

INTEGER_TYPES = frozenset((INT2, INT4, INT8, OID))
FLOAT_TYPES = frozenset((FLOAT4, FLOAT8))
TEXT_LIKE = frozenset((TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN, JSON, JSONB, DATE, TIMESTAMP,
                       TIMESTAMPTZ, TIME, UUID, NUMERIC))


def oid_for_decltype(decltype: str | None) -> int | None:
    """The type a declared column type announces, after SQLite's affinity rules (§3.1 of
    https://sqlite.org/datatype3.html), with BOOLEAN kept apart; None for no declared type
    or NUMERIC affinity, whose values decide."""
    if not decltype:
        return None
    d = decltype.upper()
    if "BOOL" in d:
        return BOOL
    if "INT" in d:
        return INT8
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return TEXT
    if "BLOB" in d or "BYTEA" in d:
        return BYTEA
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return FLOAT8
    if "JSON" in d or "DATE" in d or "TIME" in d or "UUID" in d:
        return TEXT
    return None


def oid_for_value(value) -> int | None:
    """The type of a column whose values decide: the first non-NULL value's storage class."""
    if value is None:
        return None
    t = type(value)
    if t is int:
        return INT8
    if t is float:
        return FLOAT8
    if t is str:
        return TEXT
    if t is bytes:
        return BYTEA
    return TEXT


# --- values out ---------------------------------------------------------------------------


def float_text(v: float) -> str:
    # repr is the shortest string that round-trips, as PostgreSQL 12+ prints float8
    # with extra_float_digits >= 1.
    if v != v:
        return "NaN"
    if v == math.inf:
        return "Infinity"
    if v == -math.inf:
        return "-Infinity"
    r = repr(v)
    if r.endswith(".0"):
        r = r[:-2]
    return r


def _mismatch(value, oid: int) -> DataError:
    kind = type(value).__name__
    shown = repr(value) if not isinstance(value, bytes) else f"<{len(value)} bytes>"
    return DataError(
        f"value {shown[:60]} ({kind}) cannot be sent as {TYPE_NAMES.get(oid, oid)}",
        detail="The column was announced with the type of its declared type or first value; "
        "SQLite let this row store another type.",
        hint="CAST the column in the query to the type you want.",
    )


def _out_of_range(value, oid: int) -> DataError:
    """An integer column's value past its type's range: SQLite's integer arithmetic turns a
    result past 64 bits into a REAL (9223372036854775807 + 1), PostgreSQL says 22003."""
    err = DataError(f"{TYPE_NAMES.get(oid, oid)} out of range: {str(value)[:40]}",
                    hint="SQLite made the result a REAL: CAST it (AS REAL) to receive it.")
    err.sqlstate = "22003"
    return err


_INT_RANGES = {INT8: (-(2**63), 2**63 - 1), INT4: (-(2**31), 2**31 - 1), INT2: (-(2**15), 2**15 - 1),
               OID: (0, 2**32 - 1)}


def _text_int_for(oid: int):
    lo, hi = _INT_RANGES[oid]

    def encode(v) -> bytes:
        n = _int_value(v, oid)
        if not lo <= n <= hi:
            raise _out_of_range(v, oid)
        return str(n).encode()

    return encode


def _text_float(v) -> bytes:
    t = type(v)
    if t is float:
        return float_text(v).encode()
    if t is int:
        return float_text(float(v)).encode() if abs(v) < 2**53 else str(v).encode()
    if t is str:
        try:
            return float_text(float(v)).encode()
        except ValueError:
            pass
    raise _mismatch(v, FLOAT8)


def _text_text(v) -> bytes:
    t = type(v)
    if t is str:
        return v.encode("utf-8", "surrogatepass")
    if t is int:
        return str(v).encode()
    if t is float:
        return float_text(v).encode()
    if t is bytes:
        try:
            v.decode("utf-8")
        except UnicodeDecodeError:
            raise _mismatch(v, TEXT) from None
        return v
    return str(v).encode()


def _text_bytea(v) -> bytes:
    t = type(v)
    if t is bytes:
        return b"\\x" + v.hex().encode()
    if t is str:
        return b"\\x" + v.encode("utf-8").hex().encode()
    return b"\\x" + _text_text(v).hex().encode()


def _text_bool(v) -> bytes:
    if type(v) in (int, float):
        return b"t" if v else b"f"
    if type(v) is str and v.lower() in ("t", "true", "f", "false", "1", "0"):
        return b"t" if v.lower() in ("t", "true", "1") else b"f"
    raise _mismatch(v, BOOL)


_Q = struct.Struct("!q")
_D = struct.Struct("!d")
_F = struct.Struct("!f")
_H = struct.Struct("!h")
_L = struct.Struct("!i")


def _int_value(v, oid: int) -> int:
    t = type(v)
    if t is int:
        return v
    if t is float and v.is_integer():
        return int(v)
    if t is str:
        try:
            return int(v)
        except ValueError:
            pass
    raise _mismatch(v, oid)


def _bin_int_for(oid: int, layout: struct.Struct):
    def encode(v) -> bytes:
        try:
            return layout.pack(_int_value(v, oid))
        except struct.error:
            raise _out_of_range(v, oid) from None

    return encode


_bin_int8 = _bin_int_for(INT8, _Q)
_bin_int4 = _bin_int_for(INT4, _L)
_bin_int2 = _bin_int_for(INT2, _H)
_bin_oid = _bin_int_for(OID, struct.Struct("!I"))


def _bin_float8(v) -> bytes:
    if type(v) in (float, int):
        return _D.pack(v)
    raise _mismatch(v, FLOAT8)


def _bin_float4(v) -> bytes:
    if type(v) in (float, int):
        try:
            return _F.pack(v)
        except (OverflowError, struct.error):
            pass
    raise _mismatch(v, FLOAT4)


def _bin_bytea(v) -> bytes:
    if type(v) is bytes:
        return v
    return _text_text(v)


def _bin_bool(v) -> bytes:
    return b"\x01" if _text_bool(v) == b"t" else b"\x00"


_TEXT_ENCODERS = {
    INT8: _text_int_for(INT8), INT4: _text_int_for(INT4), INT2: _text_int_for(INT2), OID: _text_int_for(OID),
    FLOAT8: _text_float, FLOAT4: _text_float, BYTEA: _text_bytea, BOOL: _text_bool,
}
_BINARY_ENCODERS = {
    INT8: _bin_int8, INT4: _bin_int4, INT2: _bin_int2, OID: _bin_oid,
    FLOAT8: _bin_float8, FLOAT4: _bin_float4, BYTEA: _bin_bytea, BOOL: _bin_bool,
}


def encoder(oid: int, fmt: int):
    """The function that turns a SQLite value (never None) into the bytes of a DataRow."""
    if fmt == 2:
        return encode_typed
    if fmt == 0:
        return _TEXT_ENCODERS.get(oid, _text_text)
    enc = _BINARY_ENCODERS.get(oid)
    if enc is not None:
        return enc
    if oid in TEXT_LIKE and oid not in (NUMERIC, DATE, TIMESTAMP, TIMESTAMPTZ, TIME, UUID):
        return _text_text  # the binary form of text types is their UTF-8 text
    raise FeatureNotSupported(f"binary format for type {TYPE_NAMES.get(oid, oid)} is not supported")


# --- parameters in --------------------------------------------------------------------------


def _bad_param(i: int, oid: int, raw: bytes, why: str) -> InvalidParameterValue:
    err = InvalidParameterValue(
        f"invalid input for parameter ${i + 1} of type {TYPE_NAMES.get(oid, oid)}: {why}"
    )
    err.sqlstate = "22P02"
    return err


def decode_param(i: int, raw: bytes | None, oid: int, fmt: int):
    """A bound parameter as the SQLite value it stands for."""
    if raw is None:
        return None
    if fmt == 0:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_param(i, oid, raw, "not valid UTF-8") from None
        if oid in INTEGER_TYPES:
            try:
                n = int(text)
            except ValueError:
                raise _bad_param(i, oid, raw, f"{text[:40]!r} is not an integer") from None
            lo, hi = _INT_RANGES[oid]
            if not lo <= n <= hi:
                err = _bad_param(i, oid, raw, f"value {text[:40]} is out of range")
                err.sqlstate = "22003"
                raise err
            return n
        if oid in FLOAT_TYPES:
            try:
                return float(text)
            except ValueError:
                raise _bad_param(i, oid, raw, f"{text[:40]!r} is not a number") from None
        if oid == BOOL:
            low = text.strip().lower()
            if low in ("t", "true", "yes", "on", "1", "y"):
                return 1
            if low in ("f", "false", "no", "off", "0", "n"):
                return 0
            raise _bad_param(i, oid, raw, f"{text[:40]!r} is not a boolean")
        if oid == BYTEA:
            return bytea_from_text(text, i)
        return text
    # binary format
    n = len(raw)
    if oid == INT8 and n == 8:
        return _Q.unpack(raw)[0]
    if oid in (INT4, OID) and n == 4:
        return _L.unpack(raw)[0] if oid == INT4 else struct.unpack("!I", raw)[0]
    if oid == INT2 and n == 2:
        return _H.unpack(raw)[0]
    if oid == FLOAT8 and n == 8:
        return _D.unpack(raw)[0]
    if oid == FLOAT4 and n == 4:
        return _F.unpack(raw)[0]
    if oid == BOOL and n == 1:
        return 1 if raw != b"\x00" else 0
    if oid == BYTEA:
        return bytes(raw)
    if oid in TEXT_LIKE and oid not in (NUMERIC, DATE, TIMESTAMP, TIMESTAMPTZ, TIME, UUID):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_param(i, oid, raw, "not valid UTF-8") from None
    if oid == NUMERIC:
        return _numeric_from_binary(i, raw)
    if oid in (INT8, INT4, INT2, FLOAT8, FLOAT4, BOOL, OID):
        raise _bad_param(i, oid, raw, f"binary value has {n} bytes")
    raise FeatureNotSupported(
        f"binary format for parameter ${i + 1} of type {TYPE_NAMES.get(oid, oid)} is not supported",
        hint="Send this parameter in text format.",
    )


def _numeric_from_binary(i: int, raw: bytes):
    """PostgreSQL's binary numeric (ndigits, weight, sign, dscale, base-10000 digits) as an
    int when it is whole and fits SQLite's INTEGER, else a float (SQLite has no decimal)."""
    if len(raw) < 8:
        raise _bad_param(i, NUMERIC, raw, f"binary value has {len(raw)} bytes")
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", raw)
    if ndigits < 0 or len(raw) != 8 + 2 * ndigits:
        raise _bad_param(i, NUMERIC, raw, "binary value has the wrong length")
    if sign == 0xC000:
        return math.nan
    digits = struct.unpack_from(f"!{ndigits}h", raw, 8)
    if any(not 0 <= d < 10000 for d in digits):
        raise _bad_param(i, NUMERIC, raw, "binary digits must be 0 to 9999")
    from decimal import Decimal

    # One decimal string, linear in the digits (a digit-by-digit int is quadratic: a legal
    # 32767-digit value would hold the event loop for half a second).
    text = "".join(f"{d:04d}" for d in digits) or "0"
    exp4 = weight - ndigits + 1  # power of 10000 of the last digit
    if ndigits <= 20:
        value = int(text)
    else:
        value = Decimal(text)
    if sign == 0x4000:
        value = -value
    if exp4 >= 0 and isinstance(value, int) and weight < 20:  # small enough to compute exactly as an int
        whole = value * 10000**exp4
        if -(2**63) <= whole < 2**63:
            return whole
    result = float(Decimal(value).scaleb(4 * exp4))
    if math.isinf(result):
        raise SqldError(f"numeric value out of range for parameter ${i + 1}: SQLite's REAL holds up to about 1.8e308",
                        sqlstate="22003")
    return result


def bytea_from_text(text: str, i: int = 0) -> bytes:
    """PostgreSQL's bytea input: `\\x` hex, or the escape format."""
    if text.startswith("\\x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise _bad_param(i, BYTEA, b"", "invalid hexadecimal digits") from None
    if "\\" not in text:
        return text.encode("utf-8")
    out = bytearray()
    j = 0
    while j < len(text):
        ch = text[j]
        if ch != "\\":
            out += ch.encode("utf-8")
            j += 1
        elif text[j + 1 : j + 2] == "\\":
            out.append(0x5C)
            j += 2
        elif len(text) >= j + 4 and text[j + 1] in "0123" and all(c in "01234567" for c in text[j + 2 : j + 4]):
            out.append(int(text[j + 1 : j + 4], 8))
            j += 4
        else:
            raise _bad_param(i, BYTEA, b"", "invalid escape sequence")
    return bytes(out)


# --- sqld's typed format (result format code 2, docs/protocol.md) ---------------------------------
# Each value carries its SQLite storage class: one tag byte, then the value.
TYPED_FORMAT = 2


def encode_typed(v) -> bytes:
    t = type(v)
    if t is int:
        return b"i" + _Q.pack(v)
    if t is float:
        return b"f" + _D.pack(v)
    if t is str:
        return b"t" + v.encode("utf-8", "surrogatepass")
    if t is bytes:
        return b"b" + v
    raise _mismatch(v, TEXT)


def decode_typed(raw: bytes):
    """A typed value back; raises ValueError on a malformed one (peer input)."""
    tag = raw[:1]
    if tag == b"i" and len(raw) == 9:
        return _Q.unpack_from(raw, 1)[0]
    if tag == b"f" and len(raw) == 9:
        return _D.unpack_from(raw, 1)[0]
    if tag == b"t":
        return raw[1:].decode("utf-8", "surrogatepass")
    if tag == b"b":
        return bytes(raw[1:])
    raise ValueError(f"malformed typed value {raw[:16]!r}")
