"""The client core (sqld.pgwire.client) against the server core (sqld.pgwire.server), wired
by handing bytes across: no socket, no process. The "server" here is a few lines of test
that answer what its ServerConnection hands over, with sqld.auth's SCRAM exchange."""

from __future__ import annotations

import pytest

from sqld.auth import ScramExchange, User, scram_verifier
from sqld.errors import SqldError
from sqld.pgwire import extension as ext
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.pgwire.client import AuthError, ClientConnection, ConnectError, Described, Result, ServerError
from sqld.pgwire.codec import NEED_DATA
from sqld.pgwire.server import Phase, ServerConnection


def pump(client: ClientConnection, server: ServerConnection) -> None:
    server.receive_data(client.data_to_send())


def answer(client: ClientConnection, server: ServerConnection) -> None:
    client.receive_data(server.data_to_send())


def start(client: ClientConnection, user: User | None = None, extension: bool = True) -> ServerConnection:
    """The server's side of a startup: SCRAM when ``user`` is given, else trust."""
    server = ServerConnection(1 << 20)
    pump(client, server)
    startup = server.next_startup()
    assert startup.params["user"] == "alice"
    if user is not None:
        server.authenticating()
        exchange = ScramExchange(user, "alice")
        server.write(m.Authentication(10, exchange.mechanisms()).encode())
        answer(client, server)
        assert client.handshake() is False
        pump(client, server)
        server.write(m.Authentication(11, exchange.first(server.next_message().data)).encode())
        answer(client, server)
        assert client.handshake() is False
        pump(client, server)
        server.write(m.Authentication(12, exchange.final(server.next_message().data)).encode())
    server.write(m.Authentication(m.AUTH_OK).encode())
    if extension and startup.params.get(ext.EXT_PARAM) == "1":
        server.write(m.ParameterStatus(ext.EXT_PARAM, "1").encode())
    server.write(m.BackendKeyData(1001, 42).encode())
    server.ready(b"I")
    server.started()
    answer(client, server)
    assert client.handshake() is True
    return server


def test_scram_startup_then_a_typed_statement_in_one_round_trip():
    client = ClientConnection("alice", "main", password="s3cret")
    server = start(client, User("alice", scram_verifier("s3cret", 4096)))
    assert client.ready and client.key == m.BackendKeyData(1001, 42) and client.params[ext.EXT_PARAM] == "1"

    client.run("select ?, ?", (7, "x"))
    pump(client, server)
    got = []
    while (msg := server.next_message()) is not NEED_DATA:
        got.append(msg)
    assert [type(x) for x in got] == [m.Parse, m.Bind, m.Describe, m.Execute, m.Sync]
    assert got[0].param_types == (t.INT8, t.TEXT) and got[1].result_formats == (t.TYPED_FORMAT,)
    assert server.phase is Phase.EXTENDED
    server.write(m.ParseComplete().encode() + m.BindComplete().encode())
    server.write(m.ParameterStatus(ext.DECLTYPES, ext.encode_decltypes(["INTEGER", None])).encode())
    server.write(m.RowDescription((m.Field("a", t.INT8), m.Field("b", t.TEXT))).encode())
    server.write(m.encode_data_row([t.encode_typed(7), t.encode_typed("x")]))
    server.write(m.ParameterStatus(ext.RESULT, ext.encode_result(0, 5, 9)).encode())
    server.write(m.CommandComplete("SELECT 1").encode())
    server.ready(b"I")
    answer(client, server)
    result = client.next_result()
    assert result == Result(names=["a", "b"], decltypes=["INTEGER", None], rows=[(7, "x")], has_rows=True,
                            tag="SELECT 1", changes=0, last_rowid=5, total_changes=9)
    assert client.total_changes == 9 and not client.busy

    client.run("select ?, ?", (8, "y"))  # prepared already: Bind/Execute only
    pump(client, server)
    assert type(server.next_message()) is m.Bind


def test_an_answer_split_anywhere_is_collected_whole():
    client = ClientConnection("alice", "main")
    server = start(client)
    client.script("create table t(x); insert into t values (1)")
    pump(client, server)
    assert server.next_message() == m.Query("create table t(x); insert into t values (1)")
    server.write(m.CommandComplete("CREATE TABLE").encode() + m.CommandComplete("INSERT 0 1").encode())
    server.ready(b"I")
    data = server.data_to_send()
    for i in range(len(data) - 1):
        client.receive_data(data[i:i + 1])
        assert client.next_result() is NEED_DATA
    client.receive_data(data[-1:])
    assert [r.tag for r in client.next_result()] == ["CREATE TABLE", "INSERT 0 1"]


def test_an_error_raises_and_the_statement_it_prepared_is_forgotten_and_closed():
    client = ClientConnection("alice", "main")
    server = start(client)
    client.run("select nope")
    pump(client, server)
    parse = server.next_message()
    assert parse.name.startswith("sqld_client_")
    server.data_to_send()
    server.error(SqldError('no such column: nope', sqlstate="42703"))
    server.failed()
    assert feed_all(server) == [m.SYNC]  # Bind, Describe, Execute skipped to Sync
    server.ready(b"I")
    answer(client, server)
    with pytest.raises(ServerError) as err:
        client.next_result()
    assert err.value.response.sqlstate == "42703" and client.ended is None
    client.run("select nope")
    pump(client, server)
    # The failed name is closed (it may exist), and the statement prepared afresh.
    assert [type(x) for x in feed_all(server)[:2]] == [m.Close, m.Parse]


def feed_all(server: ServerConnection) -> list:
    out = []
    while (msg := server.next_message()) is not NEED_DATA:
        out.append(msg)
    return out


def test_pipelined_requests_are_answered_in_order_and_describe_tells_the_shape():
    client = ClientConnection("alice", "main")
    server = start(client)
    client.describe("select ?1 as a")
    client.query("IDENTIFY_SYSTEM")
    assert client.busy
    pump(client, server)
    assert [type(x) for x in feed_all(server)] == [m.Parse, m.Describe, m.Sync, m.Query]
    server.write(m.ParseComplete().encode() + m.ParameterDescription((t.INT8,)).encode())
    server.write(m.RowDescription((m.Field("a", t.INT8),)).encode())
    server.ready(b"I")
    server.write(m.RowDescription((m.Field("generation", t.TEXT),)).encode())
    server.write(m.DataRow((b"ab", None)).encode() + m.CommandComplete("IDENTIFY_SYSTEM").encode())
    server.ready(b"I")
    answer(client, server)
    described = client.next_result()
    assert isinstance(described, Described) and described.param_oids == (t.INT8,)
    assert [f.name for f in described.fields] == ["a"]
    assert client.next_result()[0].rows == [(b"ab", None)]  # a simple query's rows, as sent
    assert not client.busy


def test_a_fatal_error_ends_the_connection():
    client = ClientConnection("alice", "main")
    server = start(client)
    client.run("select 1")
    pump(client, server)
    server.error(SqldError("terminating connection due to administrator command", sqlstate="57P01",
                           severity="FATAL"))
    answer(client, server)
    with pytest.raises(ServerError):
        client.next_result()
    assert client.ended is not None and client.ended.sqlstate == "57P01" and not client.busy


def test_a_server_without_the_extension_or_asking_what_cannot_be_given_is_refused():
    client = ClientConnection("alice", "main")
    with pytest.raises(ConnectError, match="not a sqld server"):
        start(client, extension=False)
    no_password = ClientConnection("alice", "main")
    server = ServerConnection(1 << 20)
    pump(no_password, server)
    server.write(m.Authentication(10, ScramExchange.mechanisms()).encode())
    answer(no_password, server)
    with pytest.raises(AuthError, match="asks for a password"):
        no_password.handshake()
    cleartext = ClientConnection("alice", "main", password="pw")  # no TLS: the password stays here
    cleartext.receive_data(m.Authentication(3).encode())
    with pytest.raises(AuthError, match="without TLS"):
        cleartext.handshake()


def test_a_server_that_skips_scrams_proof_is_refused():
    client = ClientConnection("alice", "main", password="s3cret")
    server = ServerConnection(1 << 20)
    pump(client, server)
    server.next_startup()
    server.authenticating()
    exchange = ScramExchange(User("alice", scram_verifier("s3cret", 4096)), "alice")
    server.write(m.Authentication(10, exchange.mechanisms()).encode())
    answer(client, server)
    client.handshake()
    pump(client, server)
    server.write(m.Authentication(11, exchange.first(server.next_message().data)).encode())
    answer(client, server)
    client.handshake()
    server.write(m.Authentication(m.AUTH_OK).encode())  # no SASLFinal: it never proved the secret
    answer(client, server)
    with pytest.raises(AuthError, match="without proving itself"):
        client.handshake()
