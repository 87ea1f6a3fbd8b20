"""Property fuzzing of the frontend decoder (``sqld.pgwire.codec.Decoder`` over ``FRONTEND``).

Extends tests/pgwire/test_codec.py (random frames of random bytes) with inputs that start
from valid encodings of every frontend message and are then chunked, truncated, mutated,
given lying lengths, invalid UTF-8, and Binds with inconsistent counts. Properties:

* the only exception peer bytes may cause is ``ProtocolViolation`` (SQLSTATE 08P01, or
  54000 for an oversized message), always FATAL;
* every call makes progress or asks for data (no hang): a decoded message consumed bytes;
* valid messages fed in any chunking decode to exactly the messages encoded, and
  ``has_message``/``wanted`` agree with what ``next_message`` does;
* a declared length is judged from the header: nothing of its size is allocated, and the
  buffer holds no more than was fed;
* what decodes is canonical: re-encoding a decoded message gives back the bytes it came from
  (except for the documented lenient ones: Execute's negative row limit, CopyFail/CopyDone/
  FunctionCall payloads, repeated startup parameters);
* Bind (hand-optimized) agrees with a plain reading of the protocol on every payload.

Budget: ``SQLD_FUZZ_EXAMPLES`` (default 1000 per property); see tests/fuzz/__init__.py.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m
from sqld.pgwire.codec import DEFAULT_MAX_MESSAGE_SIZE, NEED_DATA, Decoder
from tests.fuzz import TRIED, fuzz, report_fixture
from tests.fuzz.strategies import (
    BAD_UTF8, FRONTEND_STRATEGIES, I16, TEXT, U32, bad_cstring, chunked, cstr, encode_any,
    frontend_message, length_value, mutated_stream, raw_bind_payload, reference_bind,
    startup_message,
)

SUITE = "decoder"
EXAMPLES = 1000
_report = report_fixture(SUITE)

STARTUP_CLASSES = (m.StartupMessage, m.SSLRequest, m.GSSENCRequest, m.CancelRequest)
# Decoded messages whose re-encoding must give back the very bytes they were read from.
CANONICAL = (m.Query, m.Parse, m.Bind, m.Describe, m.Close, m.Sync, m.Flush, m.Terminate,
             m.PasswordMessage, m.CopyData, m.SSLRequest, m.GSSENCRequest, m.CancelRequest)


def _check_violation(exc: BaseException) -> None:
    assert type(exc) is ProtocolViolation, f"{type(exc).__name__}: {exc}"
    assert exc.severity == "FATAL"
    assert exc.sqlstate in ("08P01", "54000"), exc.sqlstate
    assert exc.message


def run_decoder(chunks: list[bytes], startup_first: bool, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE):
    """Feed ``chunks`` as a server would; return (messages with their bytes, error or None).

    Checks on the way: progress on every decoded message, buffer no larger than what was
    fed, ``has_message`` consistent with ``next_message``.
    """
    d = Decoder(m.FRONTEND, max_message_size)
    stream = b"".join(chunks)
    fed = 0
    first = startup_first
    out: list[tuple[object, bytes]] = []
    calls = 0
    for chunk in chunks:
        d.feed(chunk)
        fed += len(chunk)
        assert d.buffered <= fed and len(d._buf) <= fed
        while True:
            calls += 1
            assert calls <= len(stream) + len(chunks) + 2, "decoder loops without progress"
            before = d.buffered
            has = None if first else d.has_message()
            try:
                msg = d.next_startup() if first else d.next_message()
            except Exception as exc:  # noqa: BLE001 - the property is about which ones
                _check_violation(exc)
                return out, exc
            if msg is NEED_DATA:
                assert d.buffered == before, "NEED_DATA consumed bytes"
                if has is not None:
                    assert not has, "has_message() said a whole message was buffered"
                break
            if has is not None:
                assert has
            assert d.buffered < before, f"{msg!r} consumed nothing"
            start = fed - before
            out.append((msg, stream[start : fed - d.buffered]))
            if first:
                assert isinstance(msg, STARTUP_CLASSES)
                first = isinstance(msg, (m.SSLRequest, m.GSSENCRequest))  # startup follows those
            else:
                assert type(msg) in m.FRONTEND.values()
    return out, None


def _assert_canonical(msg, raw: bytes) -> None:
    if isinstance(msg, CANONICAL):
        assert encode_any(msg) == raw, f"{msg!r} was read from {raw!r}, re-encodes differently"
    elif isinstance(msg, m.StartupMessage):
        # Repeated parameter names collapse: re-encoding then decoding is stable, though.
        again = Decoder(m.FRONTEND)
        again.feed(msg.encode())
        assert again.next_startup() == msg
    elif isinstance(msg, m.Execute):
        assert msg.max_rows >= 0
        again = Decoder(m.FRONTEND)
        again.feed(msg.encode())
        assert again.next_message() == msg


def test_strategies_cover_every_frontend_message():
    assert set(FRONTEND_STRATEGIES) == set(m.FRONTEND.values())


# ---------------------------------------------------------------------------------------
# Valid messages, any chunking
# ---------------------------------------------------------------------------------------


@fuzz(EXAMPLES)
@given(startup=st.none() | startup_message, msgs=st.lists(frontend_message, max_size=8), data=st.data())
def test_valid_messages_decode_identically_in_any_chunking(startup, msgs, data):
    TRIED[SUITE] += 1
    first = [startup] if startup is not None else []
    if isinstance(startup, m.CancelRequest):
        msgs = []  # a cancel request connection carries nothing else
    parts = [x.encode() for x in first] + [encode_any(x) for x in msgs]
    if isinstance(startup, (m.SSLRequest, m.GSSENCRequest)):
        # after 'N' the client sends its StartupMessage
        follow = m.StartupMessage({"user": "u"})
        first.append(follow)
        parts.insert(1, follow.encode())
    wire = b"".join(parts)
    chunks = data.draw(chunked(wire), label="chunks")
    got, err = run_decoder(chunks, startup is not None)
    assert err is None
    assert [x for x, _ in got] == first + msgs
    assert [raw for _, raw in got] == parts


@fuzz(EXAMPLES)
@given(msgs=st.lists(frontend_message, min_size=1, max_size=6), data=st.data())
def test_wanted_tells_exactly_the_missing_bytes(msgs, data):
    TRIED[SUITE] += 1
    parts = [encode_any(x) for x in msgs]
    wire = b"".join(parts)
    ends = []
    total = 0
    for p in parts:
        total += len(p)
        ends.append(total)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts")))
    d = Decoder(m.FRONTEND)
    fed = 0
    got = []
    for cut in [*cuts, len(wire)]:
        d.feed(wire[fed:cut])
        fed = cut
        while (msg := d.next_message()) is not NEED_DATA:
            got.append(msg)
        consumed = fed - d.buffered
        if d.buffered >= 5:
            end = next(e for e in ends if e > consumed)
            assert d.wanted() == end - fed > 0
        else:
            assert d.wanted() == 0
    assert got == msgs


# ---------------------------------------------------------------------------------------
# Damaged streams
# ---------------------------------------------------------------------------------------


@fuzz(EXAMPLES)
@given(stream=mutated_stream(), data=st.data())
def test_mutated_streams_only_raise_protocol_violation(stream, data):
    TRIED[SUITE] += 1
    wire, startup_first, _notes = stream
    chunks = data.draw(chunked(wire), label="chunks")
    got, _err = run_decoder(chunks, startup_first)
    for msg, raw in got:
        _assert_canonical(msg, raw)


def _traced(call):
    """(result or exception, peak bytes allocated during the call), tracemalloc on for it only."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()  # only around the call: tracing slows every allocation down
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - judged by the caller
        result = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()
    return result, peak


@fuzz(EXAMPLES)
@given(type_byte=st.integers(0, 255), length=length_value,
       limit=st.one_of(st.just(DEFAULT_MAX_MESSAGE_SIZE), st.integers(4, 1 << 20)),
       tail=st.binary(max_size=64), data=st.data())
def test_declared_length_is_judged_before_any_allocation(type_byte, length, limit, tail, data):
    """Any type byte, any uint32 length (a 2 GB one included), with or without body bytes."""
    TRIED[SUITE] += 1
    header = bytes([type_byte]) + struct.pack("!I", length)
    d = Decoder(m.FRONTEND, max_message_size=limit)
    for chunk in data.draw(chunked(header + tail), label="chunks"):
        d.feed(chunk)
    fed = len(header) + len(tail)
    assert len(d._buf) <= fed
    msg, peak = _traced(d.next_message)
    if isinstance(msg, BaseException):
        _check_violation(msg)
        if length < 4:
            assert msg.sqlstate == "08P01"
        elif length > limit:
            assert msg.sqlstate == "54000"
            assert d.buffered == fed  # refused from the header: nothing consumed
        else:
            assert 1 + length <= fed  # a whole frame, refused for its type or payload
    # The frame's payload is copied once at most: never anything of the declared size.
    assert peak < 4 * fed + 16384, f"next_message allocated {peak} bytes for {fed} fed"
    assert len(d._buf) <= fed
    if length < 4 or length > limit:
        assert isinstance(msg, ProtocolViolation)
    elif 1 + length > fed:
        assert msg is NEED_DATA
        assert d.buffered == fed and d.wanted() == 1 + length - fed and not d.has_message()


@fuzz(EXAMPLES)
@given(length=length_value, code=st.one_of(U32, st.sampled_from([
    m.PROTOCOL_3_0, m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE, m.CANCEL_REQUEST_CODE, 2 << 16, 4 << 16])),
    body=st.binary(max_size=40), data=st.data())
def test_startup_length_and_code(length, code, body, data):
    TRIED[SUITE] += 1
    wire = struct.pack("!II", length, code) + body
    chunks = data.draw(chunked(wire), label="chunks")
    got, err = run_decoder(chunks, True)
    if length < 8 or length > 10000:
        assert isinstance(err, ProtocolViolation) and not got
    elif length > len(wire):
        assert err is None and not got  # waits for the rest of the packet
    for msg, raw in got:
        _assert_canonical(msg, raw)


# ---------------------------------------------------------------------------------------
# Field-level damage: invalid UTF-8 in every string field, Bind with inconsistent counts
# ---------------------------------------------------------------------------------------


def _with_bad(draw, kind: str) -> tuple[bytes, bool]:
    """A frame (or startup packet) of ``kind`` with invalid UTF-8 in one of its strings."""
    bad = draw(bad_cstring())
    good = cstr(draw(TEXT))
    if kind == "Q":
        return m.frame(b"Q", bad), False
    if kind == "P":
        name, sql = draw(st.sampled_from([(bad, good), (good, bad)]))
        return m.frame(b"P", name + sql + b"\x00\x00"), False
    if kind == "B":
        portal, stmt = draw(st.sampled_from([(bad, good), (good, bad)]))
        return m.frame(b"B", portal + stmt + b"\x00\x00" * 3), False
    if kind in "DC":
        return m.frame(kind.encode(), draw(st.sampled_from([b"S", b"P"])) + bad), False
    if kind == "E":
        return m.frame(b"E", bad + struct.pack("!i", draw(st.integers(-5, 5)))), False
    if kind == "f":
        return m.frame(b"f", bad), False
    # startup: a bad parameter name or value
    key, value = draw(st.sampled_from([(bad, b"x\x00"), (b"user\x00", bad)]))
    body = struct.pack("!i", m.PROTOCOL_3_0) + key + value + b"\x00"
    return struct.pack("!i", len(body) + 4) + body, True


@fuzz(EXAMPLES)
@given(kind=st.sampled_from(["Q", "P", "B", "D", "C", "E", "f", "startup"]), data=st.data())
def test_invalid_utf8_in_any_string_field_is_refused(kind, data):
    TRIED[SUITE] += 1
    wire, startup = _with_bad(data.draw, kind)
    got, err = run_decoder(data.draw(chunked(wire), label="chunks"), startup)
    assert isinstance(err, ProtocolViolation) and err.sqlstate == "08P01", got


@fuzz(EXAMPLES)
@given(payload=raw_bind_payload(), data=st.data())
def test_bind_agrees_with_a_plain_reading_of_the_protocol(payload, data):
    TRIED[SUITE] += 1
    expected = reference_bind(payload)
    got, err = run_decoder(data.draw(chunked(m.frame(b"B", payload)), label="chunks"), False)
    if expected is None:
        assert isinstance(err, ProtocolViolation), f"accepted {got}"
    else:
        assert err is None, err
        assert [x for x, _ in got] == [expected]
        _assert_canonical(*got[0])


@fuzz(EXAMPLES)
@given(n=I16, types=st.lists(U32, max_size=6), extra=st.binary(max_size=6),
       name=TEXT, sql=TEXT, bad=st.booleans(), utf=BAD_UTF8)
def test_parse_counts(n, types, extra, name, sql, bad, utf):
    """Parse with a parameter-type count that may not match the OIDs that follow."""
    TRIED[SUITE] += 1
    sql_b = (sql.encode() + utf if bad else sql.encode()) + b"\x00"
    payload = cstr(name) + sql_b + struct.pack("!h", n) + b"".join(struct.pack("!I", t) for t in types) + extra
    got, err = run_decoder([m.frame(b"P", payload)], False)
    tail = b"".join(struct.pack("!I", t) for t in types) + extra
    if bad or n < 0 or 4 * n != len(tail):
        assert isinstance(err, ProtocolViolation), got
    else:  # the extra bytes, if any, are more OIDs
        oids = struct.unpack(f"!{n}I", tail)
        assert err is None and [x for x, _ in got] == [m.Parse(name, sql, oids)]


# ---------------------------------------------------------------------------------------
# The client side: BACKEND decoding of a (possibly hostile) server's bytes
# ---------------------------------------------------------------------------------------

BACKEND_SAMPLES = [
    m.Authentication(0), m.Authentication(10, b"SCRAM-SHA-256\x00\x00"), m.ParameterStatus("a", "b"),
    m.BackendKeyData(1, -2), m.ReadyForQuery(b"T"), m.RowDescription((m.Field("a", 23, 4, 1),)),
    m.DataRow((b"1", None, b"")), m.CommandComplete("SELECT 1"), m.EmptyQueryResponse(),
    m.ParseComplete(), m.BindComplete(), m.CloseComplete(), m.NoData(), m.PortalSuspended(),
    m.ParameterDescription((23, 2**32 - 1)), m.ErrorResponse("ERROR", "42601", "x", "d", "h", 3, 1),
    m.NoticeResponse("WARNING", "01000", "n"), m.CopyInResponse(2), m.CopyOutResponse(1, 1),
]


@fuzz(EXAMPLES)
@given(msgs=st.lists(st.sampled_from(BACKEND_SAMPLES), min_size=1, max_size=5),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10**6)), data=st.data())
def test_backend_decoder_mutated(msgs, edits, cut, data):
    TRIED[SUITE] += 1
    wire = bytearray(b"".join(x.encode() for x in msgs))
    for pos, value in edits:
        wire[pos % len(wire)] = value
    if cut is not None:
        del wire[cut % (len(wire) + 1):]
    d = Decoder(m.BACKEND)
    try:
        for chunk in data.draw(chunked(bytes(wire)), label="chunks"):
            d.feed(chunk)
            while d.next_message() is not NEED_DATA:
                pass
    except Exception as exc:  # noqa: BLE001
        _check_violation(exc)


@pytest.mark.parametrize("field", [b"P", b"e"])
def test_error_response_with_huge_numeric_field(field):
    """Found by fuzzing (fixed): a P (position) or e (sqlite_code) field of more than 4300
    digits made int() raise ValueError (Python's integer string conversion limit)."""
    d = Decoder(m.BACKEND)
    d.feed(m.frame(b"E", b"SERROR\x00C42601\x00Mx\x00" + field + b"1" * 4301 + b"\x00\x00"))
    try:
        msg = d.next_message()
    except ProtocolViolation:
        return
    assert isinstance(msg, m.ErrorResponse)
