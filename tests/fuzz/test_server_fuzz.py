"""Fuzzing a real sqld process over raw sockets with hypothesis-drawn message sequences.

Each example opens one connection (a valid startup, or for the startup fuzz a drawn one),
sends a drawn sequence of frontend messages — valid, out of order (Bind before Parse,
Execute of unknown portals, Sync storms, CopyData outside COPY, Describe/Close of missing
names), malformed (lying lengths, truncated frames, invalid UTF-8, Binds with wrong counts
and format codes, 2 GB declared lengths) — and ends with a marker query (Sync + a Query
whose answer must come), nothing more (the ReadyForQuery owed for each Sync must come), a
half close (the close must come), or an abrupt close/reset. Properties per connection:

* the server never hangs: what is owed comes, or the connection is closed, within the
  socket timeout (5 s), whenever the bytes sent frame completely (if they end inside a
  message the server rightly waits: the test then half-closes and wants the close);
* it never closes silently: a close we did not ask for (Terminate, EOF) comes after a
  FATAL ErrorResponse; bytes the decoder refuses always get FATAL and a close;
* every Sync is answered by a ReadyForQuery; everything the server sends decodes;
* no ErrorResponse is XX000 (internal error: a bug), and the server log gets no traceback,
  "internal error" or XX000 line;

and after each example a separate psycopg connection still runs ``select 1`` and the
process is alive. A failure prints the exact bytes sent (startup, stream, ending) and the
last replies. Inputs that hit a bug already reported can be told apart by its signature
(``KNOWN_BUGS``) so that CI stays green while the bug shows in its own ``xfail(strict=True)``
reproduction; the bugs found so far are fixed and kept as ``test_regression_*`` tests.

Budget: ``SQLD_FUZZ_EXAMPLES`` (default 200 per property); see tests/fuzz/__init__.py.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections import Counter

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqld.errors import ProtocolViolation
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder
from tests.conftest import SqldProcess
from tests.fuzz import TRIED, fuzz, report_fixture
from tests.fuzz.strategies import (
    BAD_UTF8, I16, I32, TEXT, U32, Framing, bad_cstring, cstr, encode_any, frontend_message,
    length_value, raw_bind_payload,
)
from tests.rawclient import RawClient

SUITE = "server"
EXAMPLES = 200
TIMEOUT = 5.0  # seconds a socket read may wait before the server counts as hung
_report = report_fixture(SUITE, lambda: f"known bugs hit: {dict(KNOWN_HITS) or 'none'}")

# Bugs reported but not yet fixed (each reproduced by an xfail test at the end): (regex on
# the XX000 message or the traceback's exception line, short name). Hits are counted, not failed.
KNOWN_BUGS: list[tuple[re.Pattern, str]] = [
    # (pattern, name): none open at the moment. Every bug the fuzzer found so far is fixed and
    # kept as a test_regression_* below: numeric binary OverflowError (XX000); a client gone
    # mid-query or mid-COPY logged as an internal error; a bad last COPY line hanging the COPY;
    # FATAL errors inside COPY swallowed (session and transaction went on); a bad startup
    # setting answered ERROR (not FATAL); answers held back for a pipeline never sent (hang);
    # answers dropped at Terminate or after a half close; COPY options the csv module refuses
    # (XX000, transaction left open); quadratic binary NUMERIC decoding stalling every session;
    # ErrorResponse fields over 4300 digits crashing the client decoder.
]
KNOWN_HITS: Counter = Counter()


# ---------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """This module's own sqld (as ``start_sqld`` starts them), with a table to play with."""
    proc = SqldProcess(tmp_path_factory.mktemp("sqld-fuzz") / "data", [], log_name="sqld-fuzz.log").start()
    c = RawClient(proc.host, proc.port, timeout=TIMEOUT)
    c.query("create table if not exists fz(a integer, b text, c blob)")
    c.close()
    yield proc
    alive = proc.proc.poll() is None
    proc.stop()
    assert alive, f"sqld died during the fuzz run:\n{proc.log()[-4000:]}"


class LogWatch:
    """The part of the server log written since the last look."""

    def __init__(self, server: SqldProcess) -> None:
        self.path = server.log_path
        self.offset = self.path.stat().st_size

    def new(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


def known_bug(text: str) -> str | None:
    for pattern, name in KNOWN_BUGS:
        if pattern.search(text):
            return name
    return None


def log_problems(text: str) -> list[str]:
    """Lines of a log excerpt that show a bug: each traceback's exception line, XX000 lines,
    ERROR/CRITICAL records other than the "internal error" ones (judged by their traceback)."""
    problems = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (not lines[j] or lines[j][0].isspace()):
                j += 1
            problems.append(lines[j] if j < len(lines) else line)
        elif "XX000" in line:
            problems.append(line)
        elif re.search(r" (ERROR|CRITICAL) ", line) and "internal error handling" not in line \
                and "connection handler failed" not in line:
            problems.append(line)
    return problems


def check_log(watch: LogWatch, repro: str) -> None:
    for problem in log_problems(watch.new()):
        name = known_bug(problem)
        if name is None:
            pytest.fail(f"server log shows a bug: {problem}\n{repro}")


def check_health(server: SqldProcess, repro: str) -> None:
    """A separate, ordinary client still gets an answer; the process still runs."""
    assert server.proc.poll() is None, f"sqld exited with {server.proc.returncode}\n{repro}"
    try:
        with psycopg.connect(server.dsn(), connect_timeout=int(TIMEOUT), autocommit=True) as conn:
            timer = threading.Timer(TIMEOUT, _shutdown_fd, (conn.fileno(),))
            timer.start()
            try:
                assert conn.execute("select 1").fetchone() == (1,)
            finally:
                timer.cancel()
    except psycopg.Error as exc:
        pytest.fail(f"a healthy client cannot run select 1 after the example: {exc}\n{repro}")


def _shutdown_fd(fd: int) -> None:
    """Break a psycopg connection that waits for a hung server."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        s.close()


# ---------------------------------------------------------------------------------------
# Talking to it
# ---------------------------------------------------------------------------------------


class Hang(Exception):
    pass


class Reply:
    def __init__(self) -> None:
        self.messages: list = []
        self.eof = False        # the server closed (FIN)
        self.reset = False      # the connection was reset (then an error sent just before may be lost)
        self.garbage: ProtocolViolation | None = None

    def after_fatal(self) -> tuple[m.ErrorResponse | None, list]:
        """The first FATAL ErrorResponse and whatever the server still sent after it."""
        for i, x in enumerate(self.messages):
            if type(x) is m.ErrorResponse and x.severity == "FATAL":
                return x, self.messages[i + 1 :]
        return None, []

    def known_fatal_bug(self) -> str | None:
        """The known bug that explains a session going on after its FATAL, if one does."""
        fatal, after = self.after_fatal()
        return known_bug(fatal.message) if fatal is not None and after else None

    @property
    def last_is_fatal(self) -> bool:
        return bool(self.messages) and isinstance(self.messages[-1], m.ErrorResponse) \
            and self.messages[-1].severity == "FATAL"

    def closed_with_fatal(self) -> bool:
        """Whether the close came after a FATAL ErrorResponse (or a known bug's ERROR)."""
        if self.last_is_fatal:
            return True
        last = self.messages[-1] if self.messages else None
        name = known_bug(last.message) if type(last) is m.ErrorResponse else None
        if name is not None:
            KNOWN_HITS[name] += 1
            return True
        return False

    def errors(self) -> list[m.ErrorResponse]:
        return [x for x in self.messages if type(x) is m.ErrorResponse]


def read_reply(sock: socket.socket, decoder: Decoder, reply: Reply, stop=None, quiet: float | None = None) -> Reply:
    """Messages until ``stop(msg)`` is true or the server closes; Hang after TIMEOUT of silence
    (or, with ``quiet``, just return after that many seconds of silence)."""
    sock.settimeout(quiet or TIMEOUT)
    deadline = time.monotonic() + 6 * TIMEOUT
    while True:
        try:
            while (msg := decoder.next_message()) is not NEED_DATA:
                reply.messages.append(msg)
                if stop is not None and stop(msg):
                    return reply
        except ProtocolViolation as exc:  # the server sent bytes its own codec does not read
            reply.garbage = exc
            return reply
        if time.monotonic() > deadline:
            raise Hang(f"still sending after {6 * TIMEOUT} s")
        try:
            data = sock.recv(65536)
        except socket.timeout:
            if quiet:
                return reply
            raise Hang(f"no answer and no close in {TIMEOUT} s") from None
        except ConnectionResetError:
            reply.eof = reply.reset = True
            return reply
        if not data:
            reply.eof = True
            return reply
        decoder.feed(data)


def send(sock: socket.socket, data: bytes) -> bool:
    """Send all of ``data``; False if the server closed first (it may, after FATAL)."""
    try:
        sock.sendall(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def repro_text(title: str, startup: bytes, stream: bytes, ending: str, reply: Reply | None) -> str:
    got = "" if reply is None else "\n".join(f"  {x!r}" for x in reply.messages[-8:])
    return (f"--- reproduction ({title}) ---\nstartup: {startup!r}\nthen:    {stream!r}\n"
            f"ending:  {ending}\nlast replies:\n{got}")


# ---------------------------------------------------------------------------------------
# What to send
# ---------------------------------------------------------------------------------------

NAMES = st.sampled_from(["", "s1", "s2"])
PORTALS = st.sampled_from(["", "p1", "p2"])
OIDS = st.one_of(st.sampled_from([0, 16, 17, 20, 21, 23, 25, 26, 114, 700, 701, 705, 1043, 1082, 1114, 1700,
                                  2950, 3802, 2**32 - 1]), U32)

SQL_POOL = [
    "select 1", "select $1", "select $1, $2", "select ?", "select :a, ?", "select $2", "select $1::int8",
    "select $1::numeric", "select $1::bytea", "select $1::float4", "select $1::bool", "select $1::text || 'x'",
    "select * from fz limit 3", "select a, b, c from fz where a = $1", "insert into fz values ($1, $2, $3)",
    "insert into fz(a, b) values (1, 'one')", "update fz set b = 'x' where a = 1", "delete from fz where a > 3",
    "delete from fz", "begin", "commit", "rollback", "savepoint s", "release s", "rollback to s", "end",
    "start transaction", "", ";", "  ", "-- nothing", "select 1; select 2", "select 1; select nope",
    "begin; select 1", "select nope", "selec 1", "select 1/0", "select zeroblob(16)", "select x'00ff'",
    "select 9223372036854775807 + 1", "select 1e308 * 10", "select char(0)", "select 'a\u0000b'",
    "create table if not exists fz(a integer, b text, c blob)", "create table fz(a)", "drop table if exists fz_tmp",
    "create table if not exists fz_tmp(x); insert into fz_tmp values (1); drop table fz_tmp",
    "show server_version", "show nope", "set statement_timeout = '5s'", "set statement_timeout = 'x'",
    "set lock_timeout = '1ms'", "set application_name = 'fz'", "set search_path = public", "reset all",
    "discard all", "deallocate all", "deallocate s1", "prepare q as select 1", "execute q",
    "with recursive r(i) as (select 1 union all select i + 1 from r where i < 600) select i from r",
    "pragma user_version", "pragma table_info(fz)", "select sqlite_version()", "explain select 1",
    "select * from pg_catalog.pg_type limit 2", "select version()", "select current_setting('TimeZone')",
    "copy fz to stdout", "copy (select * from fz limit 3) to stdout", "copy fz from stdin",
]
COPY_OPTIONS = st.lists(st.sampled_from([
    "format csv", "format text", "format binary", "csv", "header", "header false", "delimiter ','",
    "delimiter '|'", "delimiter E'\\t'", "delimiter '||'", "delimiter ''", "null 'x'", "null ''",
    "quote '\"'", "quote ''", "quote 'ab'", "quote '|'", "encoding 'utf8'", "freeze",
]), max_size=3)
copy_sql = st.builds(
    lambda target, direction, opts: f"copy {target} {direction}" + (f" with ({', '.join(opts)})" if opts else ""),
    st.sampled_from(["fz", "fz(a, b)", "fz(c)", "fz(a, a)", "nope", "(select * from fz limit 3)", '"fz"']),
    st.sampled_from(["from stdin", "to stdout", "from stdin", "to stdin", "from '/etc/passwd'"]),
    COPY_OPTIONS,
)
sql = st.one_of(st.sampled_from(SQL_POOL), st.sampled_from(SQL_POOL), copy_sql, TEXT)

COPY_FIELD = st.one_of(st.sampled_from(["1", "x", "\\N", "", "\\x41", "\\\\", "\\101", "\\x", "a,b", '"q"',
                                        '"a""b"', '"open', "\\.", "2.5", "-7"]), TEXT)
copy_line = st.builds(lambda fields, sep, end: sep.join(fields) + end,
                      st.lists(COPY_FIELD, max_size=4), st.sampled_from(["\t", ",", "|"]),
                      st.sampled_from(["\n", "\r\n", ""]))
copy_data = st.one_of(copy_line.map(str.encode), st.binary(max_size=40),
                      st.sampled_from([b"\\.\n", b"1\t2\t3\n", b"\xff\n"]))


def numeric_binary(ndigits, weight, sign, dscale, digits) -> bytes:
    return struct.pack("!hhHh", ndigits, weight, sign, dscale) + b"".join(struct.pack("!h", d) for d in digits)


NUMERIC_BINARY = st.one_of(
    st.builds(lambda w, s, ds, digits: numeric_binary(len(digits), w, s, ds, digits),
              I16, st.sampled_from([0, 0x4000, 0xC000, 0xD000, 0xF000, 1]), I16,
              st.lists(st.one_of(st.integers(0, 9999), I16), max_size=4)),
    st.builds(numeric_binary, I16, I16, st.integers(0, 0xFFFF), I16, st.lists(I16, max_size=4)),
)
TEXT_PARAM = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), TEXT,
    st.sampled_from(["t", "false", "yes", "nan", "-inf", "1e400", "\\x4142", "\\x4", "\\\\", "\\101", "\\9",
                     " 12 ", "1_000", "0x10", "٣", "2024-01-01", "{}"]),
).map(str.encode)
PARAM = st.one_of(
    st.none(), TEXT_PARAM, st.binary(max_size=12), NUMERIC_BINARY,
    st.sampled_from([b"\x00" * 8, b"\xff" * 8, b"\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\x00\x00\x00\x01",
                     b"\x00\x01", b"\x01", b"\x00"]),
    BAD_UTF8,
)

# SQL with parameters, and the parameter types a careful client would declare.
PARAM_SQL = st.sampled_from([
    ("select $1", (0,)), ("select $1", (1700,)), ("select $1::numeric", (1700,)), ("select $1", (20,)),
    ("select $1", (23,)), ("select $1", (21,)), ("select $1", (26,)), ("select $1", (700,)), ("select $1", (701,)),
    ("select $1", (16,)), ("select $1", (17,)), ("select $1", (25,)), ("select $1", (2950,)), ("select $1", (1082,)),
    ("select $1, $2", (20, 25)), ("insert into fz values ($1, $2, $3)", (23, 25, 17)),
    ("select a, b, c from fz where a = $1", (20,)), ("select ?", ()), ("select $1::int8 + $2", (20, 20)),
    ("select length($1)", (17,)), ("select $1", (2**32 - 1,)), ("select $1", (114,)),
])


def frames(*msgs) -> bytes:
    return b"".join(encode_any(x) for x in msgs)


def op(label: str):
    return lambda data: (label, data)


@st.composite
def extended_query(draw):
    """Parse, Bind, Describe, Execute with as many parameters as the SQL takes, drawn values."""
    text, types = draw(PARAM_SQL)
    n = max(len(types), text.count("$") + text.count("?"))
    name, portal = draw(NAMES), draw(PORTALS)
    params = tuple(draw(st.lists(PARAM, min_size=n, max_size=n)))
    formats = draw(st.one_of(st.just(()), st.lists(st.sampled_from([0, 1]), min_size=1, max_size=1),
                             st.lists(st.sampled_from([0, 1]), min_size=n, max_size=n)))
    results = draw(st.one_of(st.just(()), st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=1),
                             st.lists(st.sampled_from([0, 1]), max_size=3)))
    msgs = [m.Parse(name, text, types), m.Bind(portal, name, tuple(formats), params, tuple(results)),
            m.Describe(draw(st.sampled_from([b"P", b"S"])), draw(st.sampled_from([portal, name]))),
            m.Execute(portal, draw(st.sampled_from([0, 0, 1, 2, -1])))]
    if draw(st.booleans()):
        msgs.append(m.SYNC)
    return ("extended", frames(*msgs))


@st.composite
def copy_in(draw):
    """A COPY … FROM STDIN with data, ended by CopyDone, CopyFail or nothing."""
    text = draw(st.one_of(st.just("copy fz from stdin"), copy_sql, copy_sql, copy_sql))
    msgs = [m.Query(text)] + [m.CopyData(x) for x in draw(st.lists(copy_data, max_size=4))]
    end = draw(st.sampled_from(["done", "done", "fail", "none", "sync"]))
    msgs += {"done": [m.CopyDone()], "fail": [m.CopyFail("fuzz")], "none": [], "sync": [m.SYNC, m.CopyDone()]}[end]
    return ("copy-in", frames(*msgs))


@st.composite
def mutated(draw):
    """A valid message whose payload (never its header) is damaged: the frame still frames."""
    wire = bytearray(encode_any(draw(frontend_message.filter(lambda x: not isinstance(x, m.Terminate)))))
    if len(wire) > 5:
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(5, len(wire) - 1))
            wire[pos] = draw(st.integers(0, 255))
    return ("mutated", bytes(wire))


@st.composite
def lying_length(draw):
    wire = bytearray(encode_any(draw(frontend_message)))
    struct.pack_into("!I", wire, 1, draw(st.one_of(length_value, st.integers(0, len(wire) + 8))))
    return ("lying-length", bytes(wire))


@st.composite
def truncated(draw):
    wire = encode_any(draw(frontend_message))
    return ("truncated", wire[: draw(st.integers(0, len(wire) - 1))])


valid_op = st.one_of(
    st.builds(lambda *a: ("parse", m.Parse(*a).encode()), NAMES, sql, st.lists(OIDS, max_size=3).map(tuple)),
    st.builds(lambda *a: ("bind", m.Bind(*a).encode()), PORTALS, NAMES,
              st.lists(st.sampled_from([0, 1]), max_size=3).map(tuple), st.lists(PARAM, max_size=3).map(tuple),
              st.lists(st.sampled_from([0, 1, 2]), max_size=3).map(tuple)),
    st.builds(lambda k, n: ("describe", m.Describe(k, n).encode()), st.sampled_from([b"S", b"P"]),
              st.one_of(NAMES, PORTALS)),
    st.builds(lambda p, n: ("execute", m.Execute(p, n).encode()), PORTALS, st.one_of(st.sampled_from([0, 1]), I32)),
    st.builds(lambda k, n: ("close", m.Close(k, n).encode()), st.sampled_from([b"S", b"P"]), st.one_of(NAMES, PORTALS)),
    st.just(("sync", m.SYNC.encode())),
    st.just(("flush", m.FLUSH.encode())),
    st.builds(lambda s: ("query", m.Query(s).encode()), sql),
    extended_query(), extended_query(), copy_in(),
)
odd_op = st.one_of(
    st.builds(lambda p: ("raw-bind", m.frame(b"B", p)),
              raw_bind_payload(names=st.sampled_from(["", "s1", "p1"]), allow_bad_strings=True)),
    st.integers(2, 300).map(lambda k: ("sync-storm", m.SYNC.encode() * k)),
    st.builds(lambda d: ("stray-copydata", m.copy_data(d)), copy_data),
    st.just(("stray-copydone", m.COPY_DONE)),
    st.builds(lambda s: ("stray-copyfail", m.frame(b"f", cstr(s))), TEXT),
    st.builds(lambda b: ("function-call", m.frame(b"F", b)), st.binary(max_size=16)),
    st.builds(lambda b: ("password", m.frame(b"p", b)), st.binary(max_size=16)),
    st.builds(lambda b: ("flush-with-payload", m.frame(b"H", b)), st.binary(min_size=1, max_size=4)),
    st.builds(lambda n, k: ("close-bad-kind", m.frame(b"C", k + cstr(n))), TEXT, st.sampled_from([b"X", b"\x00", b""])),
    st.builds(lambda p, n: ("execute-bad", m.frame(b"E", cstr(p) + n)), TEXT, st.binary(max_size=6)),
    st.just(("terminate", m.TERMINATE.encode())),
)
bad_op = st.one_of(
    mutated(), lying_length(), truncated(),
    st.builds(lambda t, body: ("bad-type", bytes([t]) + struct.pack("!I", len(body) + 4) + body),
              st.integers(0, 255).filter(lambda t: bytes([t]) not in m.FRONTEND), st.binary(max_size=16)),
    st.builds(lambda s: ("bad-utf8-query", m.frame(b"Q", s)), bad_cstring()),
    st.builds(lambda n, s: ("bad-utf8-parse", m.frame(b"P", n + s + b"\x00\x00")),
              st.one_of(st.just(b"\x00"), bad_cstring()), bad_cstring()),
    st.builds(lambda t, n: ("huge-length", t + struct.pack("!I", n)),
              st.sampled_from(sorted(m.FRONTEND)), st.sampled_from([2**31, 2 * 1024**3, 2**32 - 1, 2**26 + 1])),
)
any_op = st.one_of(valid_op, valid_op, valid_op, valid_op, odd_op, bad_op)
# marker: Sync + a Query whose answer must come; bare: nothing more, the answers owed must
# come; halfclose: shutdown(SHUT_WR), the close must come; close/reset: abrupt disconnect.
ENDINGS = st.sampled_from(["marker", "marker", "marker", "bare", "bare", "halfclose", "close", "reset"])

_tokens = iter(range(1, 10**9))


# ---------------------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------------------


EXTENDED = (m.Parse, m.Bind, m.Describe, m.Execute, m.Close)


def min_ready_for_query(framing: Framing) -> int:
    """ReadyForQuery messages owed for what was sent: one per Sync, and one per Query unless
    an extended-protocol error may have made the server skip it (until the next Sync)."""
    owed = framing.count(m.Sync)
    if not any(isinstance(x, EXTENDED) for x in framing.messages):
        owed += framing.count(m.Query)
    return owed


def run_sequence(server: SqldProcess, ops: list[tuple[str, bytes]], ending: str) -> None:
    TRIED[SUITE] += 1
    watch = LogWatch(server)
    token = f"fuzz-end-{next(_tokens)}"
    body = b"".join(data for _, data in ops)
    # The marker answers in any session state: ROLLBACK first leaves a failed transaction.
    marker_sql = f"rollback; select '{token}'"
    marker = m.SYNC.encode() + m.Query(marker_sql).encode()
    framing = Framing(body + marker if ending == "marker" else body)
    if ending in ("marker", "bare") and framing.status == "incomplete":
        ending = "halfclose"  # the server rightly waits for the rest of the last message
    stream = body + marker if ending == "marker" else body
    labels = [label for label, _ in ops]
    client = RawClient(server.host, server.port, timeout=TIMEOUT)
    startup = m.StartupMessage({"user": "tester", "database": "main"}).encode()
    repro = f"ops: {labels}\n" + repro_text("message sequence", startup, stream, ending, None)
    sock = client.sock
    reply = Reply()
    try:
        send(sock, stream)
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        if ending in ("close", "reset"):
            sock.close()
            check_health(server, repro)
            check_log(watch, repro)
            return
        if ending == "halfclose":
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        def is_marker_end(msg, seen=[]):  # noqa: B006 - per call state
            if isinstance(msg, m.DataRow) and msg.values == (token.encode(),):
                seen.append(True)
            return bool(seen) and isinstance(msg, m.ReadyForQuery)

        must_close = framing.status in ("violation", "terminated")
        # How to wait: for the marker's answer only if the marker frames as sent (a lying
        # length before it may swallow its Sync, and the server then rightly skips its Query);
        # else for the ReadyForQuery owed, as with no marker at all.
        marker_msgs = [m.SYNC, m.Query(marker_sql)]
        mode = ending
        if ending == "marker" and (must_close or framing.messages[-2:] != marker_msgs):
            mode = "bare"
        need = min_ready_for_query(framing) if mode == "bare" and not must_close else 0

        def enough_ready(msg) -> bool:
            return sum(isinstance(x, m.ReadyForQuery) for x in reply.messages) >= need

        try:
            if mode == "marker":
                read_reply(sock, client.decoder, reply, is_marker_end)
            elif mode == "bare" and need:
                # A first look after 1 s of silence: a COPY the client never ended rightly
                # waits, and a Flush tells whether sqld merely held the answers back.
                read_reply(sock, client.decoder, reply, enough_ready, quiet=1.0)
                if not (reply.eof or enough_ready(None)):
                    if any(isinstance(x, m.CopyInResponse) for x in reply.messages):
                        raise Hang("in COPY")
                    send(sock, m.FLUSH.encode())
                    read_reply(sock, client.decoder, reply, enough_ready, quiet=TIMEOUT - 1.0)
                    if not (reply.eof or enough_ready(None)):
                        raise Hang(f"no answer and no close in {TIMEOUT} s")
                    if enough_ready(None):  # the Flush brought them (else it closed: judged below)
                        pytest.fail("the answers owed came only after an extra Flush: output held back "
                                    "for a pipeline was never sent\n"
                                    + repro_text("held back", startup, stream, ending, reply))
            else:  # a close owed, or a half close: until the close; nothing owed: until silence
                read_reply(sock, client.decoder, reply,
                           quiet=0.3 if mode == "bare" and not must_close else None)
        except Hang as exc:
            name = reply.known_fatal_bug()  # that bug may have eaten the marker
            if name is None and any(isinstance(x, m.CopyInResponse) for x in reply.messages):
                name = "in-copy"  # Syncs are ignored during COPY: the count owed is unknown
            if name is None:
                pytest.fail(f"server hung ({exc}); framing of what was sent: {framing.status}\n"
                            + repro_text("hang", startup, stream, ending, reply) + f"\nops: {labels}")
            reply.eof = True  # the connection is of no further use
            reply.reset = True  # (and nothing more can be said of how it would have ended)
    finally:
        sock.close()
    repro = f"ops: {labels}\n" + repro_text("message sequence", startup, stream, ending, reply)
    assert reply.garbage is None, f"server output does not decode: {reply.garbage}\n{repro}"
    fatal, after = reply.after_fatal()
    if fatal is not None and after:
        name = reply.known_fatal_bug()
        if name is None:
            pytest.fail(f"the session went on after FATAL {fatal.sqlstate} {fatal.message!r}: {after[:3]}\n{repro}")
        KNOWN_HITS[name] += 1
        check_health(server, repro)
        check_log(watch, repro)
        return  # what the session did afterwards is beside the point
    for err in reply.errors():
        if err.sqlstate == "XX000":
            name = known_bug(err.message)
            if name is None:
                pytest.fail(f"internal error (XX000): {err.message}\n{repro}")
            KNOWN_HITS[name] += 1
    terminated = framing.status == "terminated"
    if reply.eof and not reply.reset and not terminated and ending != "halfclose":
        assert reply.closed_with_fatal(), f"server closed the connection without a FATAL ErrorResponse\n{repro}"
    if framing.status == "violation":
        assert reply.eof, f"server accepted bytes its decoder refuses ({framing.error})\n{repro}"
        if not reply.reset:
            assert reply.closed_with_fatal(), f"refused bytes ({framing.error}) closed without FATAL\n{repro}"
    # Every Sync the server read is answered (before a half close or Terminate ends it, too),
    # unless COPY ignored some or a FATAL ended the session before it got there.
    if not reply.reset and fatal is None and not any(isinstance(x, m.CopyInResponse) for x in reply.messages) \
            and (mode != "bare" or need or must_close):
        rfq = sum(isinstance(x, m.ReadyForQuery) for x in reply.messages)
        syncs, queries = framing.count(m.Sync), framing.count(m.Query)
        assert syncs <= rfq <= syncs + queries, f"{rfq} ReadyForQuery for {syncs} Sync, {queries} Query\n{repro}"
    check_health(server, repro)
    check_log(watch, repro)


@fuzz(EXAMPLES, seconds_per_example=1.0)
@given(ops=st.lists(any_op, min_size=1, max_size=10), ending=ENDINGS)
def test_message_sequences(server, ops, ending):
    run_sequence(server, ops, ending)


@fuzz(EXAMPLES // 2, seconds_per_example=1.0)
@given(ops=st.lists(st.one_of(valid_op, valid_op, odd_op), min_size=1, max_size=14),
       ending=st.sampled_from(["marker", "bare"]))
def test_valid_and_out_of_order_sequences(server, ops, ending):
    """No malformed frames: the session lives through every drawn sequence (deeper states)."""
    run_sequence(server, ops, ending)


# ---------------------------------------------------------------------------------------
# The startup phase
# ---------------------------------------------------------------------------------------

STARTUP_PARAMS = st.dictionaries(
    st.sampled_from(["user", "database", "options", "application_name", "client_encoding", "DateStyle",
                     "lock_timeout", "idle_in_transaction_session_timeout", "statement_timeout", "replication",
                     "_pq_.sqld", "_pq_.other", "search_path", "TimeZone", "extra_float_digits", "sqld.report_frame"]),
    st.one_of(st.sampled_from(["", "main", "tester", "1", "on", "0", "true", "sqld", "database", "5s", "1ms",
                               "-1", "99999999999999999999d", "1e400", "x", ":memory:", "../x", "a/b", ".x",
                               "\x01", "UTF8", "-c statement_timeout=1", "ü" * 70]), TEXT),
    max_size=6,
)


@st.composite
def startup_packet(draw):
    kind = draw(st.sampled_from(["params", "params", "params", "params", "cancel", "garbage", "mutated", "length"]))
    if kind == "cancel":
        return kind, m.CancelRequest(draw(I32), draw(I32)).encode()
    if kind == "garbage":
        return kind, draw(st.binary(max_size=40))
    if kind == "length":
        return kind, struct.pack("!I", draw(length_value)) + draw(st.binary(max_size=12))
    params = draw(STARTUP_PARAMS)
    if draw(st.integers(0, 3)):
        params.setdefault("user", "tester")
    if params.get("database") not in ("main", ":memory:", None) and draw(st.booleans()):
        params["database"] = "main"  # keep the number of databases created small
    if "database" not in params and params.get("user") not in ("tester", "main", "", None):
        params["database"] = "main"
    wire = bytearray(m.StartupMessage(params, draw(st.sampled_from([m.PROTOCOL_3_0] * 3 + [(3 << 16) | 2, 2 << 16]))
                                      ).encode())
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            pos = draw(st.integers(0, len(wire) - 1))
            wire[pos] = draw(st.one_of(st.integers(0, 255), st.just(0)))
    return kind, bytes(wire)


REPLICATION_COMMANDS = st.sampled_from(["IDENTIFY_SYSTEM", "START_REPLICATION 00 0", "START_REPLICATION zz x",
                                        "START_REPLICATION", "BASE_BACKUP x", "", "select 1"])


@fuzz(EXAMPLES, seconds_per_example=1.0)
@given(pre=st.lists(st.sampled_from([m.SSLRequest(), m.GSSENCRequest()]), max_size=2), packet=startup_packet(),
       after=st.lists(st.one_of(st.builds(m.Query, st.one_of(st.sampled_from(SQL_POOL), REPLICATION_COMMANDS)),
                                st.just(m.SYNC)), max_size=3),
       close=st.sampled_from(["terminate", "terminate", "halfclose", "close"]))
def test_startup_phase(server, pre, packet, after, close):
    """SSL/GSS requests, then a drawn startup packet (any parameters, bad lengths, cancel
    requests, garbage), then a few queries: answered or closed, never hung, never XX000."""
    TRIED[SUITE] += 1
    watch = LogWatch(server)
    kind, wire = packet
    first = b"".join(x.encode() for x in pre) + wire
    rest = frames(*after) + (m.TERMINATE.encode() if close == "terminate" else b"")
    repro = repro_text(f"startup {kind}", first, rest, close, None)
    # What the server's decoder makes of it: how many 'N' answers, then what.
    d = Decoder(m.FRONTEND)
    d.feed(first + rest)
    n_answers = 0
    outcome = None
    while outcome is None:
        try:
            msg = d.next_startup()
        except ProtocolViolation as exc:
            outcome = exc
            break
        if isinstance(msg, (m.SSLRequest, m.GSSENCRequest)):
            n_answers += 1
            continue
        outcome = msg
    sock = socket.create_connection((server.host, server.port), timeout=TIMEOUT)
    reply = Reply()
    try:
        send(sock, first + rest)
        if close == "close":
            sock.close()
            check_health(server, repro)
            check_log(watch, repro)
            return
        # A startup that is still incomplete (or a drawn half close): the server can only end
        # it when it sees EOF. Otherwise the Terminate at the end (or an error) closes it.
        half_closed = close == "halfclose" or outcome is NEED_DATA
        if half_closed:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        got = b""
        try:
            while len(got) < n_answers:
                chunk = sock.recv(n_answers - len(got))
                if not chunk:
                    break
                got += chunk
            assert got == b"N" * len(got), f"SSL/GSS request answered {got!r}\n{repro}"
            if len(got) == n_answers:
                read_reply(sock, Decoder(m.BACKEND), reply)
            else:
                reply.eof = True
        except socket.timeout:
            pytest.fail(f"server hung in the startup phase\n{repro}")
        except Hang as exc:
            pytest.fail(f"server hung after startup ({exc})\n{repro}")
        except ConnectionResetError:
            reply.eof = reply.reset = True
    finally:
        sock.close()
    repro = repro_text(f"startup {kind}", first, rest, close, reply)
    assert reply.garbage is None, f"server output does not decode: {reply.garbage}\n{repro}"
    for err in reply.errors():
        if err.sqlstate == "XX000":
            name = known_bug(err.message)
            if name is None:
                pytest.fail(f"internal error (XX000): {err.message}\n{repro}")
            KNOWN_HITS[name] += 1
    if isinstance(outcome, ProtocolViolation) and not reply.reset:
        assert reply.closed_with_fatal(), f"bad startup packet ({outcome}) closed without FATAL\n{repro}"
    started = any(isinstance(x, m.Authentication) for x in reply.messages)
    if isinstance(outcome, m.StartupMessage) and not started and not reply.reset:
        assert reply.closed_with_fatal(), f"startup refused without FATAL\n{repro}"
    if isinstance(outcome, m.CancelRequest):
        assert not reply.messages, f"a cancel request was answered\n{repro}"
    check_health(server, repro)
    check_log(watch, repro)


# ---------------------------------------------------------------------------------------
# Bugs the fuzzer found, with their exact bytes. While a bug is open its test is marked
# xfail(strict=True) and its signature is in KNOWN_BUGS (so CI stays green and a fix shows
# as XPASS); once fixed, the marker and the signature go and the test stays as a regression.
# ---------------------------------------------------------------------------------------


def _read_until(sock: socket.socket, ready: int = 1, timeout: float = 2.0) -> tuple[list, str]:
    """Backend messages until ``ready`` ReadyForQuery (0: until the close), or EOF, or silence.
    The second item says how it ended: 'ready', 'eof', 'reset' or 'timeout'."""
    sock.settimeout(timeout)
    d = Decoder(m.BACKEND)
    out = []
    while True:
        while (msg := d.next_message()) is not NEED_DATA:
            out.append(msg)
            if ready and sum(isinstance(x, m.ReadyForQuery) for x in out) >= ready:
                return out, "ready"
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return out, "timeout"
        except ConnectionResetError:
            return out, "reset"
        if not data:
            return out, "eof"
        d.feed(data)


def _send_after_startup(server: SqldProcess, wire: bytes, *, ready: int = 1, timeout: float = 2.0,
                        half_close: bool = False, close: bool = False):
    c = RawClient(server.host, server.port, timeout=TIMEOUT)
    try:
        c.sock.sendall(wire)
        if close:
            return [], "closed"
        if half_close:
            c.sock.shutdown(socket.SHUT_WR)
        return _read_until(c.sock, ready, timeout)
    finally:
        c.sock.close()


SLOW_SQL = "with recursive r(i) as (select 1 union all select i + 1 from r where i < 2000000) select count(*) from r"


def test_regression_numeric_binary_huge_weight(server):
    """Was XX000 (OverflowError in _numeric_from_binary): Parse("", "select $1::numeric", (1700,)),
    Bind with one binary NUMERIC: ndigits 1, weight 100, sign +, dscale 0, digit 1 (10**400)."""
    parse = b"P\x00\x00\x00\x1e\x00select $1::numeric\x00\x00\x01\x00\x00\x06\xa4"
    bind = (b"B\x00\x00\x00\x1c\x00\x00\x00\x01\x00\x01\x00\x01\x00\x00\x00\x0a"
            b"\x00\x01\x00\x64\x00\x00\x00\x00\x00\x01\x00\x00")
    assert parse == m.Parse("", "select $1::numeric", (1700,)).encode()
    assert bind == m.Bind("", "", (1,), (struct.pack("!hhHhh", 1, 100, 0, 0, 1),), ()).encode()
    msgs, how = _send_after_startup(server, parse + bind + m.Execute("").encode() + m.SYNC.encode())
    errors = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert how == "ready" and not [e for e in errors if e.sqlstate == "XX000"], msgs


def test_regression_copy_done_with_bad_last_line(server):
    """Was a hang: Q "copy fz from stdin", d "1\\tx" (2 fields for 3 columns, no newline), c."""
    wire = b"Q\x00\x00\x00\x17copy fz from stdin\x00" b"d\x00\x00\x00\x071\tx" b"c\x00\x00\x00\x04"
    assert wire == m.Query("copy fz from stdin").encode() + m.copy_data(b"1\tx") + m.COPY_DONE
    msgs, how = _send_after_startup(server, wire)
    assert how == "ready", (how, msgs)
    assert isinstance(msgs[-2], m.ErrorResponse) and msgs[-2].sqlstate == "22P04", msgs
    assert msgs[-1] == m.ReadyForQuery(b"I")


def test_regression_fatal_during_copy_ends_session(server):
    """Was: FATAL written, then ReadyForQuery('T') and the session (with the COPY's transaction
    and the writer) went on. Q "copy fz from stdin", d "7\\tx\\t\\\\x00\\n", Q "select 1"."""
    wire = (b"Q\x00\x00\x00\x17copy fz from stdin\x00" b"d\x00\x00\x00\x0d7\tx\t\\x00\n"
            b"Q\x00\x00\x00\x0dselect 1\x00")
    assert wire == (m.Query("copy fz from stdin").encode() + m.copy_data(b"7\tx\t\\x00\n")
                    + m.Query("select 1").encode())
    msgs, how = _send_after_startup(server, wire, ready=0)
    assert how in ("eof", "reset") and isinstance(msgs[-1], m.ErrorResponse), (how, msgs)
    assert msgs[-1].severity == "FATAL" and msgs[-1].sqlstate == "08P01"


@pytest.mark.parametrize("what", ["eof-during-copy", "close-during-query"])
def test_regression_client_gone_is_not_an_internal_error(server, what):
    """Was 'internal error handling Query' + a traceback (_Gone / anyio.BrokenResourceError)."""
    watch = LogWatch(server)
    if what == "eof-during-copy":
        _send_after_startup(server, m.Query("copy fz from stdin").encode(), ready=0, half_close=True)
    else:
        _send_after_startup(server, m.Query(SLOW_SQL).encode(), close=True)
        time.sleep(1.0)  # the query ends, its answer finds the socket gone
    time.sleep(0.2)
    assert not log_problems(watch.new())


def test_regression_startup_setting_error_is_fatal(server):
    """Was an ERROR (not FATAL) naming statement_timeout: StartupMessage {user: main, lock_timeout: ''}."""
    wire = b"\x00\x00\x00!\x00\x03\x00\x00user\x00main\x00lock_timeout\x00\x00\x00"
    assert wire == m.StartupMessage({"user": "main", "lock_timeout": ""}).encode()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(wire)
        msgs, how = _read_until(sock, ready=0)
    assert msgs and isinstance(msgs[-1], m.ErrorResponse), (how, msgs)
    assert msgs[-1].severity == "FATAL" and "lock_timeout" in msgs[-1].message, msgs[-1]


@pytest.mark.parametrize("wire, encoded", [
    # Q "select 1", c (CopyDone outside COPY)
    (b"Q\x00\x00\x00\x0dselect 1\x00" b"c\x00\x00\x00\x04", m.Query("select 1").encode() + m.COPY_DONE),
    # S, d "x"
    (b"S\x00\x00\x00\x04" b"d\x00\x00\x00\x05x", m.SYNC.encode() + m.copy_data(b"x")),
    # Q "copy nope from stdin" (no such table: refused), d "1\n", c (the client streamed anyway)
    (b"Q\x00\x00\x00\x19copy nope from stdin\x00" b"d\x00\x00\x00\x061\n" b"c\x00\x00\x00\x04",
     m.Query("copy nope from stdin").encode() + m.copy_data(b"1\n") + m.COPY_DONE),
], ids=["query+stray-copydone", "sync+stray-copydata", "refused-copy+data"])
def test_regression_pipelined_answers_are_flushed(server, wire, encoded):
    """Was a hang: output held back for a pipeline was never sent when the messages that
    followed produced none (sync_point skipped the flush, receive() waited without one)."""
    assert wire == encoded
    msgs, how = _send_after_startup(server, wire)
    assert how == "ready", (how, msgs)


@pytest.mark.parametrize("sql", [
    "copy fz from stdin with (format csv, delimiter '||')",
    "copy fz from stdin with (format csv, quote '')",
    "copy (select 1, 'x') to stdout with (format csv, quote 'ab')",
], ids=["csv-delimiter-||", "csv-quote-empty", "to-stdout-quote-ab"])
def test_regression_copy_options_python_csv_refuses(server, sql):
    """Was XX000 (TypeError from the csv module), and the COPY's own transaction left open."""
    msgs, how = _send_after_startup(server, m.Query(sql).encode() + m.copy_data(b"1,x,\n"))
    errors = [x for x in msgs if isinstance(x, m.ErrorResponse)]
    assert how == "ready" and errors and errors[0].sqlstate not in ("XX000", "08P01"), (how, msgs)
    assert msgs[-1] == m.ReadyForQuery(b"I"), msgs


def test_regression_copy_csv_field_over_csv_module_limit(server):
    """Was XX000 (_csv.Error: field larger than field limit (131072))."""
    wire = (m.Query("copy fz(a, b) from stdin with (format csv)").encode()
            + m.copy_data(b"-140000," + b"y" * 140000 + b"\n") + m.COPY_DONE)
    msgs, how = _send_after_startup(server, wire)
    assert how == "ready" and m.CommandComplete("COPY 1") in msgs and msgs[-1] == m.ReadyForQuery(b"I"), msgs
    msgs, how = _send_after_startup(server, m.Query("delete from fz where a = -140000").encode())
    assert m.CommandComplete("DELETE 1") in msgs, msgs


def test_regression_half_close_keeps_answers(server):
    """Was: shutdown(SHUT_WR) right after a request lost its answer (the transport closed at EOF)."""
    msgs, how = _send_after_startup(server, m.Query(SLOW_SQL).encode(), ready=0, half_close=True, timeout=TIMEOUT)
    assert how == "eof" and m.CommandComplete("SELECT 1") in msgs, (how, msgs)


def test_regression_terminate_after_pipelined_query(server):
    """Was: answers held back for the pipeline were dropped at Terminate. Q "select 1", X."""
    wire = b"Q\x00\x00\x00\x0dselect 1\x00" b"X\x00\x00\x00\x04"
    assert wire == m.Query("select 1").encode() + m.TERMINATE.encode()
    msgs, how = _send_after_startup(server, wire, ready=0)
    assert how == "eof" and m.CommandComplete("SELECT 1") in msgs, (how, msgs)


def test_regression_huge_binary_numeric_does_not_stall_other_sessions(server):
    """Was a denial of service: binary NUMERIC digits were folded into a Python int one by one
    (quadratic) on the event loop: 8 parameters of 32767 digits stalled every session ~4 s."""
    n = 8
    huge = struct.pack("!hhHh", 32767, 0, 0, 0) + struct.pack("!h", 9999) * 32767  # 65542 bytes
    wire = (m.Parse("", "select " + ", ".join(f"${i + 1}::numeric" for i in range(n)), (1700,) * n).encode()
            + m.Bind("", "", (1,), (huge,) * n, ()).encode() + m.Execute("").encode() + m.SYNC.encode())
    c = RawClient(server.host, server.port, timeout=120)
    try:
        c.sock.sendall(wire)
        time.sleep(0.2)  # the server is decoding the Bind now
        start = time.monotonic()
        check_health(server, "another session, while a Bind with huge NUMERIC parameters is decoded")
        waited = time.monotonic() - start
        answer = c.until_ready()
    finally:
        c.sock.close()
    assert waited < 1.0, f"another session waited {waited:.1f} s for select 1"
    assert not [x for x in answer if isinstance(x, m.ErrorResponse) and x.sqlstate == "XX000"], answer
