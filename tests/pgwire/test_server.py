"""The server's protocol state alone (sqld.pgwire.server): the phase table, with bytes in and
messages out, no socket and no session behind it."""

from __future__ import annotations

import pytest

from sqld.errors import ProtocolViolation, SqldError
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder
from sqld.pgwire.server import TABLE, Action, Phase, ServerConnection


def server(phase: Phase = Phase.READY) -> ServerConnection:
    conn = ServerConnection(1 << 20)
    conn._enter(phase)  # as if the conversation had got there
    return conn


def feed(conn: ServerConnection, *messages) -> list:
    """The messages the driver is handed for ``messages`` sent in one go."""
    conn.receive_data(b"".join(msg if isinstance(msg, bytes) else msg.encode() for msg in messages))
    out = []
    while (msg := conn.next_message()) is not NEED_DATA:
        out.append(msg)
    return out


def replies(conn: ServerConnection) -> list:
    dec = Decoder(m.BACKEND)
    dec.feed(conn.data_to_send())
    out = []
    while (msg := dec.next_message()) is not NEED_DATA:
        out.append(msg)
    return out


PARSE = m.Parse("", "select 1", ())
BIND = m.Bind("", "", (), (), ())
EXECUTE = m.Execute("", 0)


def test_a_batch_is_extended_until_its_sync_and_ready_after():
    conn = server()
    assert [type(x) for x in feed(conn, PARSE, BIND)] == [m.Parse, m.Bind]
    assert conn.phase is Phase.EXTENDED and conn.busy
    assert feed(conn, m.SYNC) == [m.SYNC]
    assert conn.phase is Phase.EXTENDED  # until the driver answers it
    conn.ready(b"T")
    assert conn.phase is Phase.READY and not conn.busy and conn.status == b"T"
    assert replies(conn) == [m.ReadyForQuery(b"T")]


def test_after_an_error_the_batch_is_skipped_to_sync_and_flush_still_counts():
    conn = server()
    feed(conn, PARSE)
    conn.failed()
    assert conn.phase is Phase.SKIP and conn.busy
    # Bind, Execute, a Query and stray COPY data are dropped; Flush and Sync come through.
    got = feed(conn, BIND, EXECUTE, m.Query("select 2"), m.copy_data(b"x"), m.FLUSH, EXECUTE, m.SYNC)
    assert got == [m.FLUSH, m.SYNC]
    conn.ready(b"I")
    assert [type(x) for x in feed(conn, BIND)] == [m.Bind]  # the next batch is handled again


def test_an_error_of_a_simple_query_skips_nothing():
    conn = server()
    assert [type(x) for x in feed(conn, m.Query("bad"))] == [m.Query]
    assert conn.phase is Phase.QUERY and conn.busy
    conn.error(SqldError("syntax error", sqlstate="42601"))
    conn.ready(b"I")
    assert [type(x) for x in feed(conn, m.Query("select 1"))] == [m.Query]
    assert [type(x) for x in replies(conn)] == [m.ErrorResponse, m.ReadyForQuery]


def test_terminate_ends_the_session_in_every_phase_that_allows_it():
    for phase in (Phase.READY, Phase.EXTENDED, Phase.SKIP, Phase.REPLICATION):
        conn = server(phase)
        assert feed(conn, m.TERMINATE) == [m.TERMINATE]
        assert conn.phase is Phase.ENDED


def test_copy_in_takes_copy_messages_drops_flush_and_sync_and_returns_to_its_phase():
    for before in (Phase.QUERY, Phase.EXTENDED):
        conn = server(before)
        conn.copy_in()
        assert conn.busy
        got = feed(conn, m.copy_data(b"1\n"), m.FLUSH, m.SYNC, m.COPY_DONE)
        assert [type(x) for x in got] == [m.CopyData, m.CopyDone]
        conn.copy_done()
        assert conn.phase is before


def test_outside_copy_copy_messages_are_ignored_as_postgresql_does():
    conn = server()
    assert feed(conn, m.copy_data(b"late"), m.COPY_DONE, m.frame(b"f", b"gave up\x00")) == []
    assert conn.phase is Phase.READY


@pytest.mark.parametrize("phase, msg, says", [
    (Phase.READY, m.PasswordMessage(b"secret\x00"), "unexpected message PasswordMessage in this state"),
    (Phase.COPY_IN, m.Query("select 1"), "unexpected message Query during COPY from stdin"),
    (Phase.COPY_IN, m.TERMINATE, "unexpected message Terminate during COPY from stdin"),
    (Phase.AUTH, m.Query("select 1"), "expected a password message, got Query"),
    (Phase.REPLICATION, PARSE, "unexpected message Parse on a replication connection"),
])
def test_a_message_the_phase_does_not_allow_is_a_protocol_violation(phase, msg, says):
    conn = server(phase)
    with pytest.raises(ProtocolViolation, match=says):
        feed(conn, msg)


def test_every_frontend_message_has_a_meaning_in_the_phases_between_queries():
    """No message type falls through: in READY, EXTENDED and SKIP each one is handled,
    dropped or ends the session, except the two that belong to other phases."""
    for phase in (Phase.READY, Phase.EXTENDED, Phase.SKIP):
        for kind in m.FRONTEND.values():
            action = TABLE.get((phase, kind))
            assert (action is None) == (kind not in phase.allowed)
            if phase is not Phase.SKIP and kind in (m.PasswordMessage, m.FunctionCall):
                assert action is None
            else:
                assert action in Action, (phase, kind)


def test_startup_messages_come_untyped_and_a_pipeline_is_seen_ahead():
    conn = ServerConnection(1 << 20)
    conn.receive_data(m.SSLRequest().encode() + m.StartupMessage({"user": "u"}).encode())
    assert isinstance(conn.next_startup(), m.SSLRequest)
    assert conn.next_startup().params == {"user": "u"}
    conn.started()
    conn.receive_data(BIND.encode() + EXECUTE.encode())
    assert conn.has_message() and conn.batch_continues()  # no Sync here yet
    conn.receive_data(m.SYNC.encode())
    conn.next_message()
    conn.next_message()
    assert not conn.batch_continues()  # Sync is next


def test_replies_are_buffered_until_taken():
    conn = server()
    conn.write(m.ParseComplete().encode())
    conn.error(SqldError("boom", sqlstate="XX000"), ext=True)
    assert conn.has_output and conn.out_size > 0
    got = replies(conn)
    assert [type(x) for x in got] == [m.ParseComplete, m.ErrorResponse]
    assert not conn.has_output and conn.out_size == 0
