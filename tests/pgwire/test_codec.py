"""Unit tests for sqld.pgwire.codec.Decoder: framing, partial input, limits, startup phase."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m
from sqld.pgwire.codec import DEFAULT_MAX_MESSAGE_SIZE, NEED_DATA, Decoder


def drain(d: Decoder) -> list:
    out = []
    while (msg := d.next_message()) is not NEED_DATA:
        out.append(msg)
    return out


PIPELINE = [
    m.Parse("s1", "select $1::int8, 'ü'", (20,)),
    m.Bind("p1", "s1", (1,), (struct.pack("!q", 7),), (1,)),
    m.Describe(b"P", "p1"),
    m.Execute("p1", 0),
    m.Close(b"S", "s1"),
    m.Sync(),
    m.Query("select 1; select 2"),
    m.Flush(),
    m.Terminate(),
]
PIPELINE_BYTES = b"".join(msg.encode() for msg in PIPELINE)


def test_need_data_on_empty_and_short_header():
    d = Decoder(m.FRONTEND)
    assert d.next_message() is NEED_DATA
    d.feed(b"Q\x00\x00")
    assert d.next_message() is NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"


def test_several_messages_in_one_feed():
    d = Decoder(m.FRONTEND)
    d.feed(PIPELINE_BYTES)
    assert drain(d) == PIPELINE
    assert d.buffered == 0


def test_split_at_every_byte_boundary():
    wire = PIPELINE_BYTES
    for cut in range(len(wire) + 1):
        d = Decoder(m.FRONTEND)
        d.feed(wire[:cut])
        got = drain(d)
        d.feed(wire[cut:])
        got += drain(d)
        assert got == PIPELINE, cut


def test_one_byte_at_a_time():
    d = Decoder(m.FRONTEND)
    got = []
    for i in range(len(PIPELINE_BYTES)):
        d.feed(PIPELINE_BYTES[i : i + 1])
        got += drain(d)
    assert got == PIPELINE
    assert d.buffered == 0


def test_backend_stream_split_everywhere():
    msgs = [
        m.Authentication(0),
        m.ParameterStatus("server_version", "16.0"),
        m.BackendKeyData(1, 2),
        m.ReadyForQuery(b"I"),
        m.RowDescription((m.Field("a", 23, 4),)),
        m.DataRow((b"1", None)),
        m.CommandComplete("SELECT 1"),
        m.ErrorResponse("ERROR", "42601", "syntax error", position=3),
        m.ReadyForQuery(b"E"),
    ]
    wire = b"".join(x.encode() for x in msgs)
    for cut in range(len(wire) + 1):
        d = Decoder(m.BACKEND)
        d.feed(wire[:cut])
        got = drain(d)
        d.feed(wire[cut:])
        got += drain(d)
        assert got == msgs


def test_wanted_and_buffered():
    d = Decoder(m.FRONTEND)
    wire = m.Query("select 1").encode()  # 14 bytes
    assert d.wanted() == 0
    d.feed(wire[:3])
    assert d.wanted() == 0  # header incomplete: unknown
    d.feed(wire[3:6])
    assert d.buffered == 6
    assert d.wanted() == len(wire) - 6
    d.feed(wire[6:])
    assert d.wanted() == 0
    assert d.next_message() == m.Query("select 1")
    assert d.buffered == 0


def test_long_pipeline_does_not_grow_buffer_unboundedly():
    d = Decoder(m.FRONTEND)
    sync = m.Sync().encode()
    for _ in range(50):
        d.feed(sync * 5000)  # 25,000 bytes per feed
        assert len(drain(d)) == 5000
    # after draining everything, internal buffer is not holding all 1.25 MB consumed
    assert len(d._buf) <= 200_000
    assert d.buffered == 0


def test_partial_message_kept_across_feeds_after_compaction():
    d = Decoder(m.FRONTEND)
    q = m.Query("x" * 1000).encode()
    d.feed(q * 100 + q[:500])
    assert len(drain(d)) == 100
    d.feed(q[500:])
    assert drain(d) == [m.Query("x" * 1000)]


# ---------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------


def test_two_gigabyte_length_refused_from_header_alone():
    d = Decoder(m.FRONTEND)
    d.feed(b"Q" + struct.pack("!I", 2 * 1024**3))
    assert d.buffered == 5  # nothing but the header is buffered
    with pytest.raises(ProtocolViolation) as exc_info:
        d.next_message()
    assert exc_info.value.sqlstate == "54000"
    assert d.buffered == 5  # and nothing was allocated or consumed for the body


def test_length_just_over_limit_refused_but_at_limit_waits():
    d = Decoder(m.FRONTEND, max_message_size=100)
    d.feed(b"Q" + struct.pack("!I", 101))
    with pytest.raises(ProtocolViolation):
        d.next_message()
    d = Decoder(m.FRONTEND, max_message_size=100)
    d.feed(b"Q" + struct.pack("!I", 100))
    assert d.next_message() is NEED_DATA
    assert d.wanted() == 96


def test_default_limit():
    assert DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    d = Decoder(m.FRONTEND)
    d.feed(b"d" + struct.pack("!I", DEFAULT_MAX_MESSAGE_SIZE + 1))
    with pytest.raises(ProtocolViolation):
        d.next_message()


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_length_below_four_refused(length):
    d = Decoder(m.FRONTEND)
    d.feed(b"S" + struct.pack("!I", length))
    with pytest.raises(ProtocolViolation) as exc_info:
        d.next_message()
    assert exc_info.value.sqlstate == "08P01"


@pytest.mark.parametrize("length", [-1, -4, -(2**31)])
def test_negative_length_refused(length):
    d = Decoder(m.FRONTEND)
    d.feed(b"Q" + struct.pack("!i", length))
    with pytest.raises(ProtocolViolation):
        d.next_message()


def test_length_counts_itself_not_type_byte():
    # 'Q' with length 4 + payload: a Query whose payload is missing its terminator.
    d = Decoder(m.FRONTEND)
    d.feed(b"Q\x00\x00\x00\x05x")
    with pytest.raises(ProtocolViolation):
        d.next_message()


# ---------------------------------------------------------------------------------------
# Types and payloads
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_byte", [b"?", b"\x00", b"A", b"Z", b"T", b"R", b"K"])
def test_unknown_frontend_message_type(type_byte):
    d = Decoder(m.FRONTEND)
    d.feed(type_byte + b"\x00\x00\x00\x04")
    with pytest.raises(ProtocolViolation, match="invalid message type"):
        d.next_message()


def test_unknown_backend_message_type():
    d = Decoder(m.BACKEND)
    d.feed(b"Q\x00\x00\x00\x04")  # Query is frontend only
    with pytest.raises(ProtocolViolation):
        d.next_message()


def test_invalid_utf8_query():
    d = Decoder(m.FRONTEND)
    d.feed(m.frame(b"Q", b"select '\xff'\x00"))
    with pytest.raises(ProtocolViolation, match="UTF-8"):
        d.next_message()


def test_truncated_bind_parameter():
    payload = b"\x00\x00" + b"\x00\x00" + b"\x00\x01" + struct.pack("!i", 100) + b"abc" + b"\x00\x00"
    d = Decoder(m.FRONTEND)
    d.feed(m.frame(b"B", payload))
    with pytest.raises(ProtocolViolation):
        d.next_message()


def test_message_followed_by_garbage_payload_is_not_read_past_its_length():
    # A Query whose frame length stops before the terminator, followed by a Sync: the
    # decoder must not borrow the next message's bytes.
    d = Decoder(m.FRONTEND)
    d.feed(b"Q\x00\x00\x00\x06ab" + m.Sync().encode())
    with pytest.raises(ProtocolViolation):
        d.next_message()


def test_bind_with_binary_params_through_decoder():
    bind = m.Bind("", "", (1, 0), (b"\x00" * 8, b"hello", None), (1,))
    d = Decoder(m.FRONTEND)
    d.feed(bind.encode())
    assert d.next_message() == bind


# ---------------------------------------------------------------------------------------
# Startup phase
# ---------------------------------------------------------------------------------------


def test_startup_ssl_then_startup():
    d = Decoder(m.FRONTEND)
    startup = m.StartupMessage({"user": "u", "database": "d"})
    d.feed(m.SSLRequest().encode() + startup.encode())
    assert d.next_startup() == m.SSLRequest()
    assert d.next_startup() == startup
    assert d.next_startup() is NEED_DATA


def test_startup_split_at_every_byte():
    startup = m.StartupMessage({"user": "alice", "database": "db", "options": "-c x=1"})
    wire = startup.encode() + m.Query("select 1").encode()
    for cut in range(len(wire) + 1):
        d = Decoder(m.FRONTEND)
        d.feed(wire[:cut])
        first = d.next_startup()
        if first is NEED_DATA:
            d.feed(wire[cut:])
            assert d.next_startup() == startup
            assert d.next_message() == m.Query("select 1")
        else:
            assert first == startup
            q = d.next_message()
            if q is NEED_DATA:
                d.feed(wire[cut:])
                q = d.next_message()
            assert q == m.Query("select 1")


def test_gssenc_request():
    d = Decoder(m.FRONTEND)
    d.feed(bytes.fromhex("0000000804d21630"))
    assert d.next_startup() == m.GSSENCRequest()


def test_cancel_request():
    d = Decoder(m.FRONTEND)
    d.feed(bytes.fromhex("0000001004d2162e") + struct.pack("!ii", 4242, -99))
    assert d.next_startup() == m.CancelRequest(4242, -99)
    assert d.buffered == 0


@pytest.mark.parametrize(
    "code",
    [
        2 << 16,  # protocol 2.0
        (4 << 16) | 0,
        (1234 << 16) | 5686,  # an unknown special request code
        0,
    ],
)
def test_unsupported_protocol(code):
    d = Decoder(m.FRONTEND)
    body = struct.pack("!i", code) + b"user\x00u\x00\x00"
    d.feed(struct.pack("!i", len(body) + 4) + body)
    with pytest.raises(ProtocolViolation) as exc_info:
        d.next_startup()
    assert exc_info.value.sqlstate == "08P01"


def test_ssl_request_code_with_wrong_length_is_refused():
    d = Decoder(m.FRONTEND)
    d.feed(struct.pack("!ii", 12, m.SSL_REQUEST_CODE) + b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolViolation):
        d.next_startup()


def test_cancel_request_with_wrong_length_is_refused():
    d = Decoder(m.FRONTEND)
    d.feed(struct.pack("!iii", 12, m.CANCEL_REQUEST_CODE, 1))
    with pytest.raises(ProtocolViolation):
        d.next_startup()


@pytest.mark.parametrize("length", [0, 4, 7, 10001, 2**31 - 1, 2**32 - 1])
def test_startup_bad_length_refused_from_header(length):
    d = Decoder(m.FRONTEND)
    d.feed(struct.pack("!I", length) + struct.pack("!i", m.PROTOCOL_3_0))
    assert d.buffered == 8
    with pytest.raises(ProtocolViolation):
        d.next_startup()


def test_startup_needs_eight_bytes():
    d = Decoder(m.FRONTEND)
    d.feed(b"\x00\x00\x00")
    assert d.next_startup() is NEED_DATA


def test_startup_missing_terminator():
    body = struct.pack("!i", m.PROTOCOL_3_0) + b"user\x00u\x00"
    d = Decoder(m.FRONTEND)
    d.feed(struct.pack("!i", len(body) + 4) + body)
    with pytest.raises(ProtocolViolation):
        d.next_startup()


def test_startup_empty_parameter_list():
    d = Decoder(m.FRONTEND)
    d.feed(bytes.fromhex("00000009 00030000 00".replace(" ", "")))
    assert d.next_startup() == m.StartupMessage({})


# ---------------------------------------------------------------------------------------
# Property: untrusted bytes never cause anything but ProtocolViolation
# ---------------------------------------------------------------------------------------

_framed = st.builds(
    lambda tb, body: tb + struct.pack("!I", len(body) + 4) + body,
    st.sampled_from(sorted(m.FRONTEND) + [b"?"]),
    st.binary(max_size=48),
)


def _feed_all(table, chunks, startup_first):
    d = Decoder(table, max_message_size=4096)
    first = startup_first
    try:
        for chunk in chunks:
            d.feed(chunk)
            while True:
                msg = d.next_startup() if first else d.next_message()
                if msg is NEED_DATA:
                    break
                first = False
                assert msg is not None
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.one_of(st.binary(max_size=64), _framed), max_size=6), startup_first=st.booleans())
def test_fuzz_frontend_decoder(chunks, startup_first):
    _feed_all(m.FRONTEND, chunks, startup_first)


_framed_backend = st.builds(
    lambda tb, body: tb + struct.pack("!I", len(body) + 4) + body,
    st.sampled_from(sorted(m.BACKEND) + [b"?"]),
    st.binary(max_size=48),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.one_of(st.binary(max_size=64), _framed_backend), max_size=6))
def test_fuzz_backend_decoder(chunks):
    _feed_all(m.BACKEND, chunks, False)
