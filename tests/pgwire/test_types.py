"""Unit tests for sqld.pgwire.types: value encoders (text and binary) and parameter decoding."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqld.errors import DataError, FeatureNotSupported, InvalidParameterValue, SqldError
from sqld.pgwire import types as t


def enc(oid, fmt, value):
    return t.encoder(oid, fmt)(value)


# ---------------------------------------------------------------------------------------
# Type announcement
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "decl,oid",
    [
        (None, None), ("", None), ("INTEGER", t.INT8), ("int", t.INT8), ("BIGINT", t.INT8),
        ("SMALLINT", t.INT8), ("VARCHAR(20)", t.TEXT), ("text", t.TEXT), ("CLOB", t.TEXT),
        ("BLOB", t.BYTEA), ("bytea", t.BYTEA), ("REAL", t.FLOAT8), ("double precision", t.FLOAT8),
        ("FLOAT", t.FLOAT8), ("BOOLEAN", t.BOOL), ("bool", t.BOOL), ("NUMERIC", None),
        ("DECIMAL(10,2)", None), ("json", t.TEXT), ("DATE", t.TEXT), ("TIMESTAMP", t.TEXT),
        ("uuid", t.TEXT),
    ],
)
def test_oid_for_decltype(decl, oid):
    assert t.oid_for_decltype(decl) == oid


@pytest.mark.parametrize(
    "value,oid", [(None, None), (1, t.INT8), (1.5, t.FLOAT8), ("x", t.TEXT), (b"x", t.BYTEA)]
)
def test_oid_for_value(value, oid):
    assert t.oid_for_value(value) == oid


# ---------------------------------------------------------------------------------------
# Text encoders
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [t.INT8, t.INT4, t.INT2])
@pytest.mark.parametrize("value,expected", [(0, b"0"), (1, b"1"), (-42, b"-42"), (3.0, b"3"), ("17", b"17")])
def test_text_int(oid, value, expected):
    assert enc(oid, 0, value) == expected


def test_text_int8_extremes():
    assert enc(t.INT8, 0, 2**63 - 1) == b"9223372036854775807"
    assert enc(t.INT8, 0, -(2**63)) == b"-9223372036854775808"


@pytest.mark.parametrize("value", ["abc", "1.5", 1.5, math.nan, math.inf, b"\x01"])
def test_text_int_mismatch_is_data_error(value):
    with pytest.raises(DataError) as exc_info:
        enc(t.INT8, 0, value)
    assert exc_info.value.sqlstate == "22000"


@pytest.mark.parametrize(
    "oid,value",
    [
        (t.INT4, 2**31), (t.INT4, -(2**31) - 1), (t.INT4, 2**40), (t.INT2, 2**15), (t.INT2, -(2**15) - 1),
        # an INTEGER column holding 1e20: SQLite stores it as REAL, _text_int prints 21 digits
        (t.INT8, 1e20), (t.INT8, "99999999999999999999"),
    ],
)
def test_text_int_out_of_range_for_announced_type_is_data_error(oid, value):
    # The binary encoders refuse these (DataError); the text form must not send a value the
    # announced type cannot hold either (a client reading int4/int8 would overflow).
    with pytest.raises(DataError):
        enc(oid, 0, value)


@pytest.mark.parametrize(
    "value,expected",
    [
        (0.0, b"0"),
        (-0.0, b"-0"),
        (1.5, b"1.5"),
        (-2.25, b"-2.25"),
        (3.0, b"3"),
        (0.1, b"0.1"),
        (1e-05, b"1e-05"),
        (1e16, b"1e+16"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        (5e-324, b"5e-324"),  # smallest subnormal
        (2.2250738585072014e-308, b"2.2250738585072014e-308"),  # smallest normal
        (math.nan, b"NaN"),
        (math.inf, b"Infinity"),
        (-math.inf, b"-Infinity"),
        (7, b"7"),
        (2**53 + 1, b"9007199254740993"),  # an int too large for a float keeps its digits
        ("2.5", b"2.5"),
    ],
)
def test_text_float8(value, expected):
    assert enc(t.FLOAT8, 0, value) == expected


def test_text_float8_special_values_roundtrip():
    for v in (math.inf, -math.inf, -0.0, 5e-324, -5e-324, 1e-310, 1.7976931348623157e308):
        out = float(enc(t.FLOAT8, 0, v))
        assert out == v and math.copysign(1, out) == math.copysign(1, v)
    assert math.isnan(float(enc(t.FLOAT8, 0, math.nan)))


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float8_text_roundtrips_every_finite_float(v):
    text = enc(t.FLOAT8, 0, v)
    back = float(text)
    assert back == v
    assert math.copysign(1.0, back) == math.copysign(1.0, v)
    assert text == t.float_text(v).encode()
    # the same through parameter decoding
    assert t.decode_param(0, text, t.FLOAT8, 0) == v


@pytest.mark.parametrize("value", ["abc", b"\x00"])
def test_text_float_mismatch(value):
    with pytest.raises(DataError):
        enc(t.FLOAT8, 0, value)


@pytest.mark.parametrize(
    "value,expected",
    [(b"", b"\\x"), (b"\x00\x01\xff", b"\\x0001ff"), (b"AB", b"\\x4142"), ("é", b"\\xc3a9"), (5, b"\\x35")],
)
def test_text_bytea_hex(value, expected):
    assert enc(t.BYTEA, 0, value) == expected


@pytest.mark.parametrize(
    "value,expected",
    [(1, b"t"), (0, b"f"), (1.0, b"t"), (0.0, b"f"), ("t", b"t"), ("true", b"t"), ("1", b"t"),
     ("f", b"f"), ("FALSE", b"f"), ("0", b"f")],
)
def test_text_bool(value, expected):
    assert enc(t.BOOL, 0, value) == expected


@pytest.mark.parametrize("value", ["maybe", b"\x01", ""])
def test_text_bool_mismatch(value):
    with pytest.raises(DataError):
        enc(t.BOOL, 0, value)


@pytest.mark.parametrize(
    "value,expected",
    [("hello", b"hello"), ("", b""), ("ü☃😀", "ü☃😀".encode()), (12, b"12"), (1.5, b"1.5"),
     (b"utf8 bytes \xc3\xa9", b"utf8 bytes \xc3\xa9")],
)
@pytest.mark.parametrize("oid", [t.TEXT, t.VARCHAR, t.UNKNOWN, t.JSON, t.NUMERIC, t.DATE])
def test_text_text(oid, value, expected):
    assert enc(oid, 0, value) == expected


def test_text_text_invalid_utf8_blob_is_data_error():
    with pytest.raises(DataError):
        enc(t.TEXT, 0, b"\xff\xfe")


# ---------------------------------------------------------------------------------------
# Binary encoders
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oid,value,expected",
    [
        (t.INT8, 1, b"\x00\x00\x00\x00\x00\x00\x00\x01"),
        (t.INT8, -1, b"\xff" * 8),
        (t.INT8, 2**63 - 1, b"\x7f" + b"\xff" * 7),
        (t.INT8, 4.0, struct.pack("!q", 4)),
        (t.INT8, "12", struct.pack("!q", 12)),
        (t.INT4, -2, b"\xff\xff\xff\xfe"),
        (t.INT4, 2**31 - 1, b"\x7f\xff\xff\xff"),
        (t.INT2, 258, b"\x01\x02"),
        (t.INT2, -(2**15), b"\x80\x00"),
        (t.FLOAT8, 1.5, struct.pack("!d", 1.5)),
        (t.FLOAT8, 2, struct.pack("!d", 2.0)),
        (t.FLOAT8, -0.0, b"\x80" + b"\x00" * 7),
        (t.FLOAT8, math.inf, struct.pack("!d", math.inf)),
        (t.FLOAT8, 5e-324, b"\x00" * 7 + b"\x01"),
        (t.FLOAT4, 1.5, struct.pack("!f", 1.5)),
        (t.BYTEA, b"\x00\xff", b"\x00\xff"),
        (t.BYTEA, "é", b"\xc3\xa9"),
        (t.BOOL, 1, b"\x01"),
        (t.BOOL, 0, b"\x00"),
        (t.BOOL, "true", b"\x01"),
        (t.TEXT, "héllo", "héllo".encode()),
        (t.VARCHAR, 5, b"5"),
        (t.NAME, "n", b"n"),
        (t.UNKNOWN, "u", b"u"),
        (t.JSON, '{"a": 1}', b'{"a": 1}'),
    ],
)
def test_binary_encoders(oid, value, expected):
    assert enc(oid, 1, value) == expected


def test_binary_float8_nan():
    out = enc(t.FLOAT8, 1, math.nan)
    assert len(out) == 8 and math.isnan(struct.unpack("!d", out)[0])


def test_binary_oid_is_unsigned():
    # OIDs are unsigned 32-bit (decode_param already reads them with "!I").
    assert enc(t.OID, 1, 3_000_000_000) == struct.pack("!I", 3_000_000_000)
    assert enc(t.OID, 1, 16384) == struct.pack("!I", 16384)


@pytest.mark.parametrize(
    "oid,value",
    [
        (t.INT8, 2**63),
        (t.INT8, -(2**63) - 1),
        (t.INT4, 2**31),
        (t.INT2, 2**15),
        (t.INT2, -(2**15) - 1),
        (t.INT8, "abc"),
        (t.INT4, 1.5),
        (t.INT8, b"\x00"),
        (t.FLOAT8, "abc"),
        (t.FLOAT8, b"\x00"),
        (t.FLOAT4, "x"),
        (t.BOOL, "maybe"),
    ],
)
def test_binary_mismatch_is_data_error(oid, value):
    with pytest.raises(DataError) as exc_info:
        enc(oid, 1, value)
    err = exc_info.value
    # an integer past its type's range is PostgreSQL's 22003; another type is 22000
    assert err.sqlstate == ("22003" if isinstance(value, int) and oid in (t.INT8, t.INT4, t.INT2) else "22000")
    assert err.hint


def test_binary_float4_overflow_is_data_error():
    # 1e300 cannot be represented as a float4: struct raises OverflowError, which must
    # become the DataError every other unrepresentable value gets.
    with pytest.raises(DataError):
        enc(t.FLOAT4, 1, 1e300)


@pytest.mark.parametrize("oid", [t.NUMERIC, t.DATE, t.TIMESTAMP, t.TIMESTAMPTZ, t.TIME, t.UUID, 999999])
def test_binary_unsupported_types(oid):
    with pytest.raises(FeatureNotSupported) as exc_info:
        t.encoder(oid, 1)
    assert exc_info.value.sqlstate == "0A000"


def test_unknown_oid_text_encodes_as_text():
    assert enc(999999, 0, "x") == b"x"


def test_data_error_message_does_not_dump_blobs():
    with pytest.raises(DataError) as exc_info:
        enc(t.INT8, 0, b"\x00" * 10_000)
    assert "10000 bytes" in exc_info.value.message
    assert len(exc_info.value.message) < 200


# ---------------------------------------------------------------------------------------
# Parameters: text format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [t.INT8, t.INT4, t.INT2, t.OID, t.TEXT, t.FLOAT8, t.BOOL, t.BYTEA, t.UNKNOWN])
@pytest.mark.parametrize("fmt", [0, 1])
def test_null_param(oid, fmt):
    assert t.decode_param(0, None, oid, fmt) is None


@pytest.mark.parametrize(
    "oid,raw,expected",
    [
        (t.INT8, b"42", 42),
        (t.INT8, b"-9223372036854775808", -(2**63)),
        (t.INT8, b" 7 ", 7),
        (t.INT4, b"-5", -5),
        (t.INT2, b"12", 12),
        (t.OID, b"3000000000", 3_000_000_000),
        (t.FLOAT8, b"1.5", 1.5),
        (t.FLOAT8, b"-0", -0.0),
        (t.FLOAT8, b"1e-310", 1e-310),
        (t.FLOAT8, b"Infinity", math.inf),
        (t.FLOAT8, b"-Infinity", -math.inf),
        (t.FLOAT4, b"2.5", 2.5),
        (t.BOOL, b"t", 1),
        (t.BOOL, b"true", 1),
        (t.BOOL, b"TRUE", 1),
        (t.BOOL, b"on", 1),
        (t.BOOL, b"yes", 1),
        (t.BOOL, b"1", 1),
        (t.BOOL, b"f", 0),
        (t.BOOL, b"false", 0),
        (t.BOOL, b"off", 0),
        (t.BOOL, b"no", 0),
        (t.BOOL, b"0", 0),
        (t.BOOL, b" true ", 1),
        (t.TEXT, b"h\xc3\xa9llo", "héllo"),
        (t.TEXT, b"", ""),
        (t.VARCHAR, b"v", "v"),
        (t.UNKNOWN, b"42", "42"),
        (t.JSON, b'{"a":1}', '{"a":1}'),
        (t.DATE, b"2024-01-02", "2024-01-02"),
        (t.NUMERIC, b"1.50", "1.50"),
        (t.BYTEA, b"\\x", b""),
        (t.BYTEA, b"\\x0001ff", b"\x00\x01\xff"),
        (t.BYTEA, b"\\xDEADbeef", b"\xde\xad\xbe\xef"),
        (t.BYTEA, b"plain", b"plain"),
        (t.BYTEA, b"", b""),
    ],
)
def test_decode_text_param(oid, raw, expected):
    got = t.decode_param(0, raw, oid, 0)
    assert got == expected and type(got) is type(expected)


def test_decode_text_float_nan():
    assert math.isnan(t.decode_param(0, b"NaN", t.FLOAT8, 0))


@pytest.mark.parametrize(
    "raw,expected",
    [
        (b"abc", b"abc"),
        (b"a\\\\b", b"a\\b"),  # \\ → one backslash
        (b"\\000", b"\x00"),
        (b"\\001\\377", b"\x01\xff"),
        (b"x\\047y", b"x'y"),
        (b"caf\xc3\xa9", b"caf\xc3\xa9"),  # non-ASCII stays its UTF-8 bytes
        (b"\\\\x41", b"\\x41"),  # an escaped backslash then x41: not hex format
    ],
)
def test_decode_bytea_escape_format(raw, expected):
    assert t.decode_param(0, raw, t.BYTEA, 0) == expected


@pytest.mark.parametrize("raw", [b"\\", b"a\\", b"\\9", b"\\01", b"\\0a1", b"\\q"])
def test_decode_bytea_bad_escape(raw):
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(0, raw, t.BYTEA, 0)
    assert exc_info.value.sqlstate == "22P02"


@pytest.mark.parametrize("raw", [b"\\400", b"\\777"])
def test_decode_bytea_octal_escape_above_377_refused(raw):
    # PostgreSQL's byteain takes \ooo only with a first digit 0-3 (at most \377); \400 is
    # "invalid input syntax for type bytea", not a byte silently wrapped to 0x00.
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(0, raw, t.BYTEA, 0)
    assert exc_info.value.sqlstate == "22P02"


@pytest.mark.parametrize("raw", [b"\\x0", b"\\xzz", b"\\x0g"])
def test_decode_bytea_bad_hex(raw):
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(0, raw, t.BYTEA, 0)
    assert exc_info.value.sqlstate == "22P02"


@pytest.mark.parametrize(
    "oid,raw",
    [
        (t.INT8, b"abc"),
        (t.INT8, b"1.5"),
        (t.INT8, b""),
        (t.INT4, b"12abc"),
        (t.INT2, b"--1"),
        (t.OID, b"x"),
        (t.FLOAT8, b"abc"),
        (t.FLOAT8, b""),
        (t.FLOAT4, b"1,5"),
        (t.BOOL, b"maybe"),
        (t.BOOL, b""),
        (t.BOOL, b"2"),
        (t.TEXT, b"\xff"),
        (t.INT8, b"\xff"),
        (t.BYTEA, b"\\x\xff"),
    ],
)
def test_decode_text_param_errors(oid, raw):
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(2, raw, oid, 0)
    err = exc_info.value
    assert err.sqlstate == "22P02"
    assert "$3" in err.message


def test_non_integer_text_for_int8_names_parameter_and_type():
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(0, b"twelve", t.INT8, 0)
    assert exc_info.value.sqlstate == "22P02"
    assert "$1" in exc_info.value.message and "int8" in exc_info.value.message


@pytest.mark.parametrize(
    "oid,raw",
    [
        (t.INT8, b"9223372036854775808"),
        (t.INT8, b"-9223372036854775809"),
        (t.INT8, b"99999999999999999999999"),
        (t.INT4, b"2147483648"),
        (t.INT2, b"32768"),
    ],
)
def test_decode_text_integer_out_of_range(oid, raw):
    # PostgreSQL: 22003 'value "…" is out of range for type bigint'. Returning the Python
    # int lets it reach SQLite, which cannot bind it (apsw raises OverflowError).
    with pytest.raises(SqldError) as exc_info:
        t.decode_param(0, raw, oid, 0)
    assert exc_info.value.sqlstate == "22003"


# ---------------------------------------------------------------------------------------
# Parameters: binary format
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "oid,raw,expected",
    [
        (t.INT8, struct.pack("!q", -(2**63)), -(2**63)),
        (t.INT8, struct.pack("!q", 123456789012), 123456789012),
        (t.INT4, struct.pack("!i", -7), -7),
        (t.INT2, struct.pack("!h", -300), -300),
        (t.OID, struct.pack("!I", 4_000_000_000), 4_000_000_000),
        (t.FLOAT8, struct.pack("!d", 0.1), 0.1),
        (t.FLOAT8, struct.pack("!d", -0.0), -0.0),
        (t.FLOAT8, struct.pack("!d", math.inf), math.inf),
        (t.FLOAT4, struct.pack("!f", 0.5), 0.5),
        (t.BOOL, b"\x01", 1),
        (t.BOOL, b"\x00", 0),
        (t.BYTEA, b"\x00\xff", b"\x00\xff"),
        (t.BYTEA, b"", b""),
        (t.TEXT, "é".encode(), "é"),
        (t.VARCHAR, b"v", "v"),
        (t.NAME, b"n", "n"),
        (t.UNKNOWN, b"u", "u"),
        (t.JSON, b"{}", "{}"),
        (t.BPCHAR, b"c", "c"),
    ],
)
def test_decode_binary_param(oid, raw, expected):
    got = t.decode_param(0, raw, oid, 1)
    assert got == expected and type(got) is type(expected)


def test_decode_binary_float8_nan_and_sign():
    assert math.isnan(t.decode_param(0, struct.pack("!d", math.nan), t.FLOAT8, 1))
    assert math.copysign(1, t.decode_param(0, struct.pack("!d", -0.0), t.FLOAT8, 1)) == -1


@pytest.mark.parametrize(
    "oid,raw",
    [
        (t.INT8, b"\x00" * 4),
        (t.INT8, b"\x00" * 9),
        (t.INT4, b"\x00" * 8),
        (t.INT4, b""),
        (t.INT2, b"\x00" * 4),
        (t.OID, b"\x00" * 2),
        (t.FLOAT8, b"\x00" * 4),
        (t.FLOAT4, b"\x00" * 8),
        (t.BOOL, b""),
        (t.BOOL, b"\x00\x01"),
    ],
)
def test_decode_binary_wrong_length(oid, raw):
    with pytest.raises(InvalidParameterValue) as exc_info:
        t.decode_param(0, raw, oid, 1)
    assert exc_info.value.sqlstate == "22P02"
    assert f"{len(raw)} bytes" in exc_info.value.message


def test_decode_binary_text_invalid_utf8():
    with pytest.raises(InvalidParameterValue):
        t.decode_param(0, b"\xff", t.TEXT, 1)


def test_decode_binary_numeric():
    # ndigits, weight, sign, dscale, then base-10000 digits: 12.3400 and -50000 (JDBC sends these)
    assert t.decode_param(0, struct.pack("!hhHhhh", 2, 0, 0, 2, 12, 3400), t.NUMERIC, 1) == 12.34
    assert t.decode_param(0, struct.pack("!hhHhh", 1, 1, 0x4000, 0, 5), t.NUMERIC, 1) == -50000
    assert t.decode_param(0, struct.pack("!hhHh", 0, 0, 0, 0), t.NUMERIC, 1) == 0
    with pytest.raises(InvalidParameterValue):
        t.decode_param(0, struct.pack("!hhHhh", 3, 0, 0, 0, 1), t.NUMERIC, 1)


@pytest.mark.parametrize("oid", [t.DATE, t.TIMESTAMP, t.TIMESTAMPTZ, t.TIME, t.UUID])
def test_decode_binary_unsupported(oid):
    with pytest.raises(FeatureNotSupported) as exc_info:
        t.decode_param(0, b"\x00" * 16, oid, 1)
    assert exc_info.value.hint


# ---------------------------------------------------------------------------------------
# Round trips: what the server sends, a client would send back
# ---------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1]))
def test_int8_roundtrip(v, fmt):
    assert t.decode_param(0, enc(t.INT8, fmt, v), t.INT8, fmt) == v


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([0, 1]))
def test_bytea_roundtrip(v, fmt):
    assert t.decode_param(0, enc(t.BYTEA, fmt, v), t.BYTEA, fmt) == v


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=32), st.sampled_from([0, 1]))
def test_text_roundtrip(v, fmt):
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates are not text SQLite hands out
    assert t.decode_param(0, enc(t.TEXT, fmt, v), t.TEXT, fmt) == v


@pytest.mark.parametrize("v", [0, 1])
@pytest.mark.parametrize("fmt", [0, 1])
def test_bool_roundtrip(v, fmt):
    assert t.decode_param(0, enc(t.BOOL, fmt, v), t.BOOL, fmt) == v
