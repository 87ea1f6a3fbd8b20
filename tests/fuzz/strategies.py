"""Hypothesis strategies shared by the fuzz tests: frontend messages, their mutations, raw Binds."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m
from sqld.pgwire.codec import DEFAULT_MAX_MESSAGE_SIZE, NEED_DATA, Decoder

I16 = st.integers(-(2**15), 2**15 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
U32 = st.integers(0, 2**32 - 1)

# Strings a cstring can carry: any code point but NUL and lone surrogates (not UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
NAME = st.one_of(st.sampled_from(["", "s1", "p1", "x"]), TEXT)

# Byte sequences that are not UTF-8: stray continuation, truncated, overlong, surrogate,
# beyond U+10FFFF, 5-byte form, lone 0xFF/0xFE.
BAD_UTF8 = st.sampled_from([
    b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3", b"\xc3\x28", b"\xc0\x80", b"\xc1\xbf",
    b"\xe0\x80\x80", b"\xe2\x82", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80",
])

FORMAT_CODE = st.one_of(st.sampled_from([0, 1, 2]), I16)


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\x00"


@st.composite
def bad_cstring(draw) -> bytes:
    """A NUL-terminated string holding at least one invalid UTF-8 sequence."""
    return draw(TEXT).encode() + draw(BAD_UTF8) + draw(TEXT).encode() + b"\x00"


def encode_any(msg) -> bytes:
    """The wire bytes of any frontend message (a few classes have no ``encode``)."""
    if isinstance(msg, m.CopyData):
        return m.copy_data(msg.data)
    if isinstance(msg, m.CopyDone):
        return m.COPY_DONE
    if isinstance(msg, m.CopyFail):
        return m.frame(b"f", cstr(msg.message))
    if isinstance(msg, m.FunctionCall):
        return m.frame(b"F", b"")
    return msg.encode()


# One strategy per frontend message class: the test checks every class in FRONTEND is here.
FRONTEND_STRATEGIES = {
    m.Query: st.builds(m.Query, TEXT),
    m.Parse: st.builds(m.Parse, NAME, TEXT, st.lists(U32, max_size=6).map(tuple)),
    m.Bind: st.builds(
        m.Bind, NAME, NAME,
        st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple),
        st.lists(st.one_of(st.none(), st.binary(max_size=24)), max_size=5).map(tuple),
        st.lists(st.sampled_from([0, 1, 2]), max_size=4).map(tuple),
    ),
    m.Describe: st.builds(m.Describe, st.sampled_from([b"S", b"P"]), NAME),
    m.Execute: st.builds(m.Execute, NAME, st.integers(0, 2**31 - 1)),
    m.Close: st.builds(m.Close, st.sampled_from([b"S", b"P"]), NAME),
    m.Sync: st.just(m.SYNC),
    m.Flush: st.just(m.FLUSH),
    m.Terminate: st.just(m.TERMINATE),
    m.PasswordMessage: st.builds(m.PasswordMessage, st.binary(max_size=40)),
    m.CopyData: st.builds(m.CopyData, st.binary(max_size=40)),
    m.CopyDone: st.just(m.CopyDone()),
    m.CopyFail: st.builds(m.CopyFail, TEXT),
    m.FunctionCall: st.just(m.FunctionCall()),
}
frontend_message = st.one_of(*FRONTEND_STRATEGIES.values())

startup_message = st.one_of(
    st.builds(
        m.StartupMessage,
        st.dictionaries(TEXT.filter(bool), TEXT, max_size=5),
        st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor),
    ),
    st.just(m.SSLRequest()),
    st.just(m.GSSENCRequest()),
    st.builds(m.CancelRequest, I32, I32),
)

# Lengths worth trying in a length field (besides random ones).
INTERESTING_LENGTHS = [
    0, 1, 2, 3, 4, 5, 7, 8, 9, 10000, 10001, 65535, 65536,
    DEFAULT_MAX_MESSAGE_SIZE - 1, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_MESSAGE_SIZE + 1,
    2**31 - 1, 2**31, 2 * 1024**3, 2**32 - 4, 2**32 - 1,
]
length_value = st.one_of(st.sampled_from(INTERESTING_LENGTHS), U32)


# ---------------------------------------------------------------------------------------
# Bind, built field by field with counts that may not match what follows
# ---------------------------------------------------------------------------------------


@st.composite
def raw_bind_payload(draw, names=NAME, allow_bad_strings: bool = True) -> bytes:
    """A Bind payload whose counts, lengths and format codes are drawn independently."""

    def string() -> bytes:
        if allow_bad_strings and draw(st.integers(0, 9)) == 0:
            return draw(st.one_of(bad_cstring(), st.just(b"")))  # invalid UTF-8, or no NUL at all
        return cstr(draw(names))

    def count(items: list) -> int:
        return draw(st.one_of(st.just(len(items)), st.just(len(items)), st.integers(0, 6), I16))

    portal, statement = string(), string()
    formats = draw(st.lists(FORMAT_CODE, max_size=5))
    params = draw(st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=5))
    results = draw(st.lists(FORMAT_CODE, max_size=4))
    out = [portal, statement, struct.pack("!h", count(formats))]
    out += [struct.pack("!h", f) for f in formats]
    out.append(struct.pack("!h", count(params)))
    for p in params:
        if p is None:
            out.append(struct.pack("!i", draw(st.sampled_from([-1, -1, -2, -(2**31)]))))
        else:
            n = draw(st.one_of(st.just(len(p)), st.just(len(p)), st.just(len(p) + 1),
                               st.just(max(len(p) - 1, 0)), I32))
            out.append(struct.pack("!i", n) + p)
    out.append(struct.pack("!h", count(results)))
    out += [struct.pack("!h", f) for f in results]
    payload = b"".join(out) + draw(st.one_of(st.just(b""), st.just(b""), st.binary(max_size=4)))
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(payload))))
    return payload if cut is None else payload[:cut]


class _Reject(Exception):
    pass


def reference_bind(p: bytes) -> m.Bind | None:
    """What the protocol says a Bind payload is, read plainly; None if it is not one.

    An independent reading of section 55.7 ("Bind") for a differential test of the hand
    optimized ``Bind.decode_untrusted``; format codes are any int16 (an unknown one is the
    statement's error, 22023, not the message's).
    """
    pos = 0

    def need(n: int) -> None:
        if pos + n > len(p):
            raise _Reject

    def string() -> str:
        nonlocal pos
        end = p.find(b"\x00", pos)
        if end < 0:
            raise _Reject
        raw, pos = p[pos:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject from None

    def i16() -> int:
        nonlocal pos
        need(2)
        pos += 2
        return struct.unpack("!h", p[pos - 2 : pos])[0]

    def i32() -> int:
        nonlocal pos
        need(4)
        pos += 4
        return struct.unpack("!i", p[pos - 4 : pos])[0]

    def counted(read):
        n = i16()
        if n < 0:
            raise _Reject
        return [read() for _ in range(n)]

    def param():
        nonlocal pos
        n = i32()
        if n == -1:
            return None
        if n < 0:
            raise _Reject
        need(n)
        pos += n
        return p[pos - n : pos]

    try:
        portal, statement = string(), string()
        formats = counted(i16)
        params = counted(param)
        results = counted(i16)
        if pos != len(p):
            raise _Reject
    except _Reject:
        return None
    return m.Bind(portal, statement, tuple(formats), tuple(params), tuple(results))


# ---------------------------------------------------------------------------------------
# Mutations of a valid stream
# ---------------------------------------------------------------------------------------


@st.composite
def mutated_stream(draw, with_startup: bool | None = None):
    """(bytes, startup_first, description): valid frontend messages, then damaged.

    Length fields are rewritten first (they are found by message offsets), then bytes are
    overwritten, inserted, deleted, replaced by invalid UTF-8, and the tail maybe cut.
    """
    startup_first = draw(st.booleans()) if with_startup is None else with_startup
    parts = []
    if startup_first:
        parts.append(draw(startup_message).encode())
    parts += [encode_any(x) for x in draw(st.lists(frontend_message, min_size=1, max_size=6))]
    wire = bytearray()
    length_at = []  # offsets of each message's length field
    for i, part in enumerate(parts):
        length_at.append(len(wire) + (0 if (startup_first and i == 0) else 1))
        wire += part
    notes = []
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.sampled_from(length_at))
        real = struct.unpack_from("!I", wire, at)[0]
        value = draw(st.one_of(length_value, st.integers(max(real - 8, 0), min(real + 8, 2**32 - 1))))
        struct.pack_into("!I", wire, at, value)
        notes.append(f"length@{at}={value}")
    for _ in range(draw(st.integers(0, 3))):
        if not wire:
            break
        kind = draw(st.sampled_from(["set", "set", "insert", "delete", "utf8", "type"]))
        pos = draw(st.integers(0, len(wire) - 1))
        if kind == "set":
            wire[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            wire[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del wire[pos : pos + draw(st.integers(1, 8))]
        elif kind == "utf8":
            wire[pos : pos + 1] = draw(BAD_UTF8)
        else:  # a type byte replaced by any other byte
            at = draw(st.sampled_from(length_at)) - 1
            if 0 <= at < len(wire):
                pos = at
                wire[at] = draw(st.integers(0, 255))
        notes.append(f"{kind}@{pos}")
    if draw(st.integers(0, 4)) == 0 and wire:
        cut = draw(st.integers(0, len(wire)))
        del wire[cut:]
        notes.append(f"cut@{cut}")
    return bytes(wire), startup_first, notes


@st.composite
def chunked(draw, data: bytes) -> list[bytes]:
    """``data`` split at drawn points (maybe none, maybe one byte at a time)."""
    if not data:
        return [data]
    how = draw(st.sampled_from(["whole", "points", "points", "bytes"]))
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------------------
# A model of how the server frames what it is sent
# ---------------------------------------------------------------------------------------


class Framing:
    """How a (post-startup) byte stream frames, read with the codec the server uses.

    ``status``: "clean" (whole messages only), "incomplete" (ends inside a message: the
    server rightly waits for more), "violation" (a frame or payload the decoder refuses:
    the server must answer FATAL and close), or "terminated" (a Terminate comes first).
    """

    def __init__(self, stream: bytes) -> None:
        d = Decoder(m.FRONTEND)
        d.feed(stream)
        self.messages: list = []
        self.error: ProtocolViolation | None = None
        self.status = "clean"
        while True:
            try:
                msg = d.next_message()
            except ProtocolViolation as exc:
                self.error = exc
                self.status = "violation"
                break
            if msg is NEED_DATA:
                if d.buffered:
                    self.status = "incomplete"
                break
            self.messages.append(msg)
            if isinstance(msg, m.Terminate):
                self.status = "terminated"
                break

    def count(self, cls) -> int:
        return sum(isinstance(x, cls) for x in self.messages)
