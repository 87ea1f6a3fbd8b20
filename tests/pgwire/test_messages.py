"""Unit tests for sqld.pgwire.messages: every message encodes and decodes back, byte layouts
match the PostgreSQL protocol documentation, and malformed payloads are ProtocolViolations."""

from __future__ import annotations

import struct

import pytest

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder


def _split(wire: bytes) -> tuple[bytes, bytes]:
    """A typed message's (type byte, payload), checking its length field on the way."""
    assert len(wire) >= 5
    type_byte, length = struct.unpack("!cI", wire[:5])
    assert length == len(wire) - 1, "length field must count itself and the payload, not the type"
    return type_byte, wire[5:]


def _roundtrip(msg, table):
    wire = msg.encode()
    type_byte, payload = _split(wire)
    assert type_byte == msg.type
    assert table[type_byte] is type(msg)
    return type(msg).decode_untrusted(payload)


# ---------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------

FRONTEND_MESSAGES = [
    m.Query("select 1"),
    m.Query(""),
    m.Query("select 'héllo ☃ 😀'"),
    m.Parse("", "select $1", ()),
    m.Parse("stmt_1", "insert into t values ($1, $2)", (20, 25)),
    m.Parse("s", "select $1", (0,)),
    m.Parse("big", "select $1", (0xFFFFFFFF,)),  # OIDs are unsigned
    m.Bind("", "", (), (), ()),
    m.Bind("p", "s", (0,), (b"1",), (1,)),
    m.Bind("p", "s", (0, 1), (b"abc", None), (0, 1, 0)),
    m.Bind("", "s", (1,), (b"", b"\x00\x01\xff"), ()),
    m.Describe(b"S", "stmt"),
    m.Describe(b"P", ""),
    m.Execute("", 0),
    m.Execute("portal", 100),
    m.Close(b"S", "stmt"),
    m.Close(b"P", "portal"),
    m.Sync(),
    m.Flush(),
    m.Terminate(),
    m.PasswordMessage(b"secret\x00"),
    m.PasswordMessage(b""),
    m.PasswordMessage(b"n,,n=user,r=abc\xff"),  # SASL data is arbitrary bytes
]


@pytest.mark.parametrize("msg", FRONTEND_MESSAGES, ids=repr)
def test_frontend_roundtrip(msg):
    assert _roundtrip(msg, m.FRONTEND) == msg


BACKEND_MESSAGES = [
    m.CopyInResponse(3),
    m.CopyOutResponse(2),
    m.Authentication(0),
    m.Authentication(3),
    m.Authentication(5, b"salt"),
    m.Authentication(10, b"SCRAM-SHA-256\x00\x00"),
    m.Authentication(11, b"r=nonce,s=salt,i=4096"),
    m.Authentication(12, b"v=signature"),
    m.ParameterStatus("server_version", "16.0"),
    m.ParameterStatus("client_encoding", "UTF8"),
    m.BackendKeyData(1234, -5678),
    m.ReadyForQuery(b"I"),
    m.ReadyForQuery(b"T"),
    m.ReadyForQuery(b"E"),
    m.RowDescription(()),
    m.RowDescription((m.Field("a", 23, 4),)),
    m.RowDescription(
        (
            m.Field("id", 20, 8, 1, table_oid=16384, column=1, type_modifier=-1),
            m.Field("name", 1043, -1, 0, table_oid=16384, column=2, type_modifier=24),
            m.Field("ünïcode ☃", 25),
        )
    ),
    m.DataRow(()),
    m.DataRow((b"1",)),
    m.DataRow((b"1", None, b"", b"\x00\xff")),
    m.CommandComplete("SELECT 1"),
    m.CommandComplete("INSERT 0 5"),
    m.EmptyQueryResponse(),
    m.ParseComplete(),
    m.BindComplete(),
    m.CloseComplete(),
    m.NoData(),
    m.PortalSuspended(),
    m.ParameterDescription(()),
    m.ParameterDescription((20, 25, 0xFFFFFFFF)),
    m.ErrorResponse("ERROR", "42P01", 'relation "x" does not exist'),
    m.ErrorResponse("FATAL", "08P01", "bad", detail="some detail", hint="a hint", position=17),
    m.ErrorResponse("ERROR", "22P02", "x", position=0),
    m.NoticeResponse("NOTICE", "00000", "hello", detail="d"),
    m.NoticeResponse("WARNING", "01000", "w", hint="h"),
]


@pytest.mark.parametrize("msg", BACKEND_MESSAGES, ids=repr)
def test_backend_roundtrip(msg):
    assert _roundtrip(msg, m.BACKEND) == msg


def test_every_table_class_is_covered():
    covered = {type(msg) for msg in FRONTEND_MESSAGES + BACKEND_MESSAGES}
    no_encoder = {m.CopyData, m.CopyDone, m.CopyFail, m.FunctionCall}
    assert set(m.FRONTEND.values()) - covered == no_encoder
    assert set(m.BACKEND.values()) - covered == {m.CopyData, m.CopyDone}  # encoded by copy_data, COPY_DONE


def test_encode_data_row_matches_datarow():
    values = (b"abc", None, b"")
    assert m.encode_data_row(values) == m.DataRow(values).encode()
    assert m.encode_data_row([]) == b"D\x00\x00\x00\x06\x00\x00"


def test_rowdescription_type_oid_above_2_31_roundtrips():
    # OIDs are unsigned 32-bit; decode already masks type_oid to unsigned, so encode must
    # accept what decode produces (user-defined types can have OIDs >= 2**31).
    rd = m.RowDescription((m.Field("c", 3_000_000_000),))
    assert _roundtrip(rd, m.BACKEND) == rd


# Messages with no encoder: build their frames by hand.


def test_copy_and_function_call_decode():
    assert m.CopyData.decode_untrusted(b"1\t2\n") == m.CopyData(b"1\t2\n")
    assert m.CopyDone.decode_untrusted(b"") == m.CopyDone()
    assert m.CopyFail.decode_untrusted(b"aborted by user\x00") == m.CopyFail("aborted by user")
    assert isinstance(m.FunctionCall.decode_untrusted(b"\x00\x00\x00\x01"), m.FunctionCall)
    with pytest.raises(ProtocolViolation):
        m.CopyFail.decode_untrusted(b"no terminator")


def test_startup_messages_encode_decode():
    d = Decoder(m.FRONTEND)
    for msg in (
        m.StartupMessage({"user": "alice", "database": "db", "application_name": "ünï"}),
        m.StartupMessage({}),
        m.SSLRequest(),
        m.GSSENCRequest(),
        m.CancelRequest(42, -7),
        m.StartupMessage({"user": "u"}, protocol=(3 << 16) | 2),  # 3.2 minor versions are 3.x
    ):
        d.feed(msg.encode())
        assert d.next_startup() == msg
        assert d.buffered == 0


def test_singletons():
    assert m.Sync.decode_untrusted(b"") is m.SYNC
    assert m.Flush.decode_untrusted(b"") is m.FLUSH
    assert m.Terminate.decode_untrusted(b"") is m.TERMINATE


def test_execute_negative_max_rows_means_no_limit():
    payload = b"p\x00" + struct.pack("!i", -5)
    assert m.Execute.decode_untrusted(payload) == m.Execute("p", 0)


def test_bind_repr_hides_large_values():
    r = repr(m.Bind("", "", (), (b"x" * 100, None), ()))
    assert "NULL" in r and "…" in r and len(r) < 200
    assert "secret" not in repr(m.PasswordMessage(b"secret"))


# ---------------------------------------------------------------------------------------
# Byte-exact layouts (from the "Message Formats" chapter of the PostgreSQL docs)
# ---------------------------------------------------------------------------------------

EXACT = [
    # StartupMessage: Int32 len, Int32 196608, "user\0postgres\0database\0test\0" "\0"
    (
        m.StartupMessage({"user": "postgres", "database": "test"}),
        "00000025 00030000 7573657200 706f737467726573 00 646174616261736500 7465737400 00",
    ),
    # SSLRequest: Int32 8, Int32 80877103
    (m.SSLRequest(), "00000008 04d2162f"),
    (m.GSSENCRequest(), "00000008 04d21630"),
    # CancelRequest: Int32 16, Int32 80877102, pid, key
    (m.CancelRequest(1, 2), "00000010 04d2162e 00000001 00000002"),
    # Query: 'Q', Int32 len, String
    (m.Query("select 1"), "51 0000000d 73656c6563742031 00"),
    (m.Sync(), "53 00000004"),
    (m.Flush(), "48 00000004"),
    (m.Terminate(), "58 00000004"),
    (m.Parse("", "select $1", (23,)), "50 00000015 00 73656c65637420243100 0001 00000017"),
    (
        m.Bind("", "", (1,), (b"\x00\x00\x00\x01", None), (0,)),
        "42 0000001c 00 00 0001 0001 0002 00000004 00000001 ffffffff 0001 0000",
    ),
    (m.Describe(b"P", ""), "44 00000006 50 00"),
    (m.Execute("", 0), "45 00000009 00 00000000"),
    (m.Close(b"S", "a"), "43 00000007 53 6100"),
    (m.PasswordMessage(b"pw\x00"), "70 00000007 707700"),
    # ReadyForQuery 'I'
    (m.ReadyForQuery(b"I"), "5a 00000005 49"),
    # AuthenticationOk
    (m.Authentication(0), "52 00000008 00000000"),
    # AuthenticationMD5Password with salt
    (m.Authentication(5, b"\x01\x02\x03\x04"), "52 0000000c 00000005 01020304"),
    (m.BackendKeyData(7, 9), "4b 0000000c 00000007 00000009"),
    (m.ParameterStatus("a", "b"), "53 00000008 6100 6200"),
    # DataRow ('1', NULL): Int16 2 columns, Int32 1 + '1', Int32 -1
    (m.DataRow((b"1", None)), "44 0000000f 0002 00000001 31 ffffffff"),
    (m.CommandComplete("SELECT 1"), "43 0000000d 53454c4543542031 00"),
    (m.EmptyQueryResponse(), "49 00000004"),
    (m.ParseComplete(), "31 00000004"),
    (m.BindComplete(), "32 00000004"),
    (m.CloseComplete(), "33 00000004"),
    (m.NoData(), "6e 00000004"),
    (m.PortalSuspended(), "73 00000004"),
    (m.ParameterDescription((25,)), "74 0000000a 0001 00000019"),
    # RowDescription: 1 field "a": table oid 0, attnum 0, type 23, size 4, typmod -1, format 0
    (m.RowDescription((m.Field("a", 23, 4),)), "54 0000001a 0001 6100 00000000 0000 00000017 0004 ffffffff 0000"),
    # ErrorResponse: S ERROR, V ERROR, C 42P01, M relation "x" does not exist, terminator
    (
        m.ErrorResponse("ERROR", "42P01", 'relation "x" does not exist'),
        "45 00000037"
        " 53 4552524f5200"
        " 56 4552524f5200"
        " 43 343250303100"
        " 4d 72656c6174696f6e2022782220646f6573206e6f7420657869737400"
        " 00",
    ),
    (m.NoticeResponse("NOTICE", "00000", "hi", position=3), "4e 00000023 53 4e4f5449434500 56 4e4f5449434500 43 303030303000 4d 686900 50 3300 00"),
]


@pytest.mark.parametrize("msg,hexstr", EXACT, ids=[type(e[0]).__name__ for e in EXACT])
def test_byte_exact(msg, hexstr):
    expected = bytes.fromhex(hexstr.replace(" ", ""))
    assert msg.encode() == expected


@pytest.mark.parametrize(
    "msg,hexstr",
    [e for e in EXACT if hasattr(e[0], "type")],
    ids=[type(e[0]).__name__ for e in EXACT if hasattr(e[0], "type")],
)
def test_byte_exact_decodes(msg, hexstr):
    wire = bytes.fromhex(hexstr.replace(" ", ""))
    table = m.FRONTEND if m.FRONTEND.get(wire[:1]) is type(msg) else m.BACKEND
    d = Decoder(table)
    d.feed(wire)
    assert d.next_message() == msg
    assert d.next_message() is NEED_DATA


def test_frame():
    assert m.frame(b"Q", b"x\x00") == b"Q\x00\x00\x00\x06x\x00"


# ---------------------------------------------------------------------------------------
# Malformed payloads
# ---------------------------------------------------------------------------------------

BAD_PAYLOADS = [
    (m.Query, b"select 1"),  # no terminator
    (m.Query, b"select 1\x00extra"),  # trailing bytes
    (m.Query, b"select \xff\xfe\x00"),  # invalid UTF-8
    (m.Query, b"\xc3\x00"),  # truncated UTF-8 sequence
    (m.Query, b"\xed\xa0\x80\x00"),  # a UTF-8-encoded surrogate
    (m.Query, b""),
    (m.Parse, b"\x00select\x00"),  # no type count
    (m.Parse, b"\x00select\x00\x00\x02\x00\x00\x00\x17"),  # two types announced, one given
    (m.Parse, b"\x00select\x00\xff\xff"),  # negative count
    (m.Parse, b"\x00select\x00\x00\x00junk"),
    # Bind: parameter length runs past the end
    (m.Bind, b"\x00\x00" b"\x00\x00" b"\x00\x01" b"\x00\x00\x00\x10abc" b"\x00\x00"),
    # Bind: parameter length -2
    (m.Bind, b"\x00\x00" b"\x00\x00" b"\x00\x01" b"\xff\xff\xff\xfe" b"\x00\x00"),
    # Bind: huge parameter length
    (m.Bind, b"\x00\x00" b"\x00\x00" b"\x00\x01" b"\x7f\xff\xff\xff" b"\x00\x00"),
    # Bind: negative count of parameters
    (m.Bind, b"\x00\x00" b"\x00\x00" b"\xff\xff"),
    # Bind: no result format count
    (m.Bind, b"\x00\x00" b"\x00\x00" b"\x00\x00"),
    (m.Bind, b"\x00"),
    (m.Describe, b"X\x00"),
    (m.Describe, b""),
    (m.Describe, b"S"),
    (m.Describe, b"Sname\x00x"),
    (m.Close, b"Q\x00"),
    (m.Close, b""),
    (m.Execute, b"\x00\x00\x00"),
    (m.Execute, b"p\x00\x00\x00\x00\x00\x00"),
    (m.Sync, b"x"),
    (m.Flush, b"x"),
    (m.Terminate, b"x"),
    (m.ReadyForQuery, b"X"),
    (m.ReadyForQuery, b""),
    (m.ReadyForQuery, b"II"),
    (m.ParameterStatus, b"a\x00"),
    (m.BackendKeyData, b"\x00\x00\x00\x01"),
    (m.RowDescription, b"\x00\x01a\x00\x00\x00"),
    (m.RowDescription, b"\x00\x01a"),
    (m.DataRow, b"\x00\x01\x00\x00\x00\x05ab"),
    (m.DataRow, b"\x00\x01\xff\xff\xff\xfe"),
    (m.DataRow, b"\x00\x02\xff\xff\xff\xff"),
    (m.CommandComplete, b"SELECT 1"),
    (m.ParameterDescription, b"\x00\x02\x00\x00\x00\x17"),
    (m.ErrorResponse, b"SERROR"),
    (m.ErrorResponse, b"SERROR\x00"),
    (m.ErrorResponse, b""),
    (m.ParseComplete, b"x"),
    (m.Authentication, b"\x00\x00"),
    (m.StartupMessage, b"user\x00u\x00"),  # list not terminated
    (m.StartupMessage, b"user\x00"),
    (m.StartupMessage, b"user\x00u\x00\x00extra"),
    (m.StartupMessage, b"us\xffer\x00u\x00\x00"),
]


@pytest.mark.parametrize("cls,payload", BAD_PAYLOADS, ids=lambda x: x.__name__ if isinstance(x, type) else repr(x)[:40])
def test_malformed_payload_is_protocol_violation(cls, payload):
    with pytest.raises(ProtocolViolation) as exc_info:
        if cls is m.StartupMessage:
            cls.decode_untrusted(m.PROTOCOL_3_0, payload)
        else:
            cls.decode_untrusted(payload)
    err = exc_info.value
    assert err.sqlstate == "08P01"
    assert err.severity == "FATAL"


def test_error_response_unknown_fields_are_ignored():
    payload = b"SERROR\x00VERROR\x00C23505\x00Mdup\x00Ffile.c\x00L42\x00Rfn\x00nnewcode\x00\x00"
    err = m.ErrorResponse.decode_untrusted(payload)
    assert err == m.ErrorResponse("ERROR", "23505", "dup")


def test_error_response_missing_fields_defaults():
    err = m.ErrorResponse.decode_untrusted(b"\x00")
    assert (err.severity, err.sqlstate, err.message) == ("ERROR", "XX000", "")


@pytest.mark.parametrize("position", ["abc", "-1", "", "²", "1.5"])
def test_error_response_odd_position_is_not_a_crash(position):
    # A client decoding an untrusted server's ErrorResponse must not crash on a position
    # that is not a plain ASCII integer: "²".isdigit() is True but int("²") raises.
    payload = b"SERROR\x00C42000\x00Mm\x00P" + position.encode() + b"\x00\x00"
    try:
        err = m.ErrorResponse.decode_untrusted(payload)
    except ProtocolViolation:
        return
    assert err.position is None


def test_bind_with_unknown_format_codes_decodes():
    # An unknown format code is the statement's error (22023, as PostgreSQL answers), not a
    # malformed message: the decoder keeps the codes for the server to refuse (issue 15).
    assert m.Bind.decode_untrusted(b"\x00\x00" b"\x00\x01\x00\x02" b"\x00\x00" b"\x00\x00") == \
        m.Bind("", "", (2,), (), ())
    assert m.Bind.decode_untrusted(b"\x00\x00" b"\x00\x00" b"\x00\x00" b"\x00\x01\xff\xff") == \
        m.Bind("", "", (), (), (-1,))
