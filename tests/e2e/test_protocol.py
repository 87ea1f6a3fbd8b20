"""The extended protocol message by message, with sqld's own codec as the client."""

from __future__ import annotations

import socket
import struct

import pytest

from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from tests.rawclient import RawClient, kinds


@pytest.fixture
def client(sqld_server):
    c = RawClient(sqld_server.host, sqld_server.port)
    yield c
    c.close()


def test_startup_parameters(client):
    assert client.params["server_version"].startswith("15.0")
    for name in ("server_encoding", "client_encoding", "DateStyle", "TimeZone", "integer_datetimes",
                 "standard_conforming_strings", "application_name"):
        assert name in client.params
    assert client.key is not None


def test_ssl_and_gssenc_requests_answered_n(sqld_server):
    with socket.create_connection((sqld_server.host, sqld_server.port), timeout=5) as s:
        s.sendall(m.GSSENCRequest().encode())
        assert s.recv(1) == b"N"
        s.sendall(m.SSLRequest().encode())
        assert s.recv(1) == b"N"
        s.sendall(m.StartupMessage({"user": "x"}).encode())
        assert s.recv(1) == b"R"


def test_simple_query_several_statements(client, table_name):
    msgs = client.query(f"create table {table_name}(a integer); insert into {table_name} values (1), (2); "
                        f"select a from {table_name} order by a; update {table_name} set a = a + 1; "
                        f"delete from {table_name} where a = 3;")
    tags = [x.tag for x in msgs if isinstance(x, m.CommandComplete)]
    assert tags == ["CREATE TABLE", "INSERT 0 2", "SELECT 2", "UPDATE 2", "DELETE 1"]
    assert msgs[-1] == m.ReadyForQuery(b"I")


def test_simple_query_stops_at_first_error(client, table_name):
    msgs = client.query(f"create table {table_name}(a integer); select * from nowhere_xyz; "
                        f"insert into {table_name} values (1)")
    assert kinds(msgs) == ["CommandComplete", "ErrorResponse", "ReadyForQuery"]
    assert msgs[1].sqlstate == "42P01"
    # the implicit transaction took the CREATE TABLE back with it, as in PostgreSQL
    msgs = client.query(f"select count(*) from {table_name}")
    assert msgs[0].sqlstate == "42P01"


def test_empty_query(client):
    assert kinds(client.query("")) == ["EmptyQueryResponse", "ReadyForQuery"]
    assert kinds(client.query(" ; -- nothing")) == ["EmptyQueryResponse", "ReadyForQuery"]


def test_extended_describe_statement_and_portal(client, table_name):
    client.query(f"create table {table_name}(id integer primary key, name text, score real, data blob)")
    client.send(
        m.Parse("s1", f"select id, name, score, data, id * 2 from {table_name} where id = $1", ()),
        m.Describe(b"S", "s1"),
        m.Sync(),
    )
    msgs = client.until_ready()
    assert kinds(msgs) == ["ParseComplete", "ParameterDescription", "RowDescription", "ReadyForQuery"]
    assert msgs[1].type_oids == (t.INT8,)
    assert [f.type_oid for f in msgs[2].fields] == [t.INT8, t.TEXT, t.FLOAT8, t.BYTEA, t.INT8]
    client.query(f"insert into {table_name} values (7, 'seven', 7.5, x'0707')")
    client.send(
        m.Bind("", "s1", (1,), (struct.pack("!q", 7),), (1,)),
        m.Describe(b"P", ""),
        m.Execute("", 0),
        m.Sync(),
    )
    msgs = client.until_ready()
    assert kinds(msgs) == ["BindComplete", "RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]
    assert all(f.format == 1 for f in msgs[1].fields)
    assert msgs[2].values == (struct.pack("!q", 7), b"seven", struct.pack("!d", 7.5), b"\x07\x07", struct.pack("!q", 14))
    assert msgs[3].tag == "SELECT 1"


def test_execute_row_limit_suspends_portal(client, table_name):
    client.query(f"create table {table_name}(n integer); insert into {table_name} values (1),(2),(3),(4),(5)")
    client.send(m.Query("begin"))
    client.until_ready()
    client.send(
        m.Parse("", f"select n from {table_name} order by n", ()),
        m.Bind("cur", "", (), (), ()),
        m.Execute("cur", 2),
        m.Execute("cur", 2),
        m.Execute("cur", 2),
        m.Sync(),
    )
    msgs = client.until_ready()
    assert kinds(msgs) == ["ParseComplete", "BindComplete", "DataRow", "DataRow", "PortalSuspended",
                           "DataRow", "DataRow", "PortalSuspended", "DataRow", "CommandComplete", "ReadyForQuery"]
    assert [x.values[0] for x in msgs if isinstance(x, m.DataRow)] == [b"1", b"2", b"3", b"4", b"5"]
    assert msgs[-2].tag == "SELECT 5"
    assert msgs[-1].status == b"T"
    client.query("commit")


def test_error_skips_to_sync_and_flush(client):
    client.send(
        m.Parse("", "select * from nowhere_abc", ()),
        m.Bind("", "", (), (), ()),
        m.Execute("", 0),
        m.Sync(),
    )
    msgs = client.until_ready()
    assert kinds(msgs) == ["ErrorResponse", "ReadyForQuery"]
    client.send(m.Parse("named", "select 1", ()), m.Flush())
    assert isinstance(client.recv(), m.ParseComplete)
    client.send(m.Bind("", "named", (), (), ()), m.Execute("", 0), m.Close(b"S", "named"), m.Sync())
    msgs = client.until_ready()
    assert kinds(msgs) == ["BindComplete", "DataRow", "CommandComplete", "CloseComplete", "ReadyForQuery"]
    client.send(m.Bind("", "named", (), (), ()), m.Sync())
    msgs = client.until_ready()
    assert msgs[0].sqlstate == "26000"


def test_wrong_parameter_count_and_bad_values(client):
    client.send(m.Parse("p", "select $1::int8", ()), m.Bind("", "p", (), (), ()), m.Sync())
    msgs = client.until_ready()
    assert kinds(msgs) == ["ParseComplete", "ErrorResponse", "ReadyForQuery"]
    assert msgs[1].sqlstate == "08P01"
    client.send(m.Bind("", "p", (), (b"twelve",), ()), m.Sync())
    msgs = client.until_ready()
    assert msgs[0].sqlstate == "22P02"
    client.send(m.Bind("", "p", (), (b"12",), ()), m.Execute("", 0), m.Sync())
    msgs = client.until_ready()
    assert [x.values for x in msgs if isinstance(x, m.DataRow)] == [(b"12",)]


def test_transaction_status_and_notices(client, table_name):
    client.query(f"create table {table_name}(id integer primary key)")
    assert client.query("begin")[-1].status == b"T"
    msgs = client.query("begin")
    assert kinds(msgs) == ["NoticeResponse", "CommandComplete", "ReadyForQuery"]
    client.query(f"insert into {table_name} values (1)")
    msgs = client.query(f"insert into {table_name} values (1)")
    assert msgs[0].sqlstate == "23505" and msgs[-1].status == b"E"
    assert client.query("select 1")[0].sqlstate == "25P02"
    msgs = client.query("commit")
    assert msgs[0].tag == "ROLLBACK" and msgs[-1].status == b"I"
    msgs = client.query("commit")
    assert kinds(msgs) == ["NoticeResponse", "CommandComplete", "ReadyForQuery"]


def test_savepoints_recover_failed_transaction(client, table_name):
    client.query(f"create table {table_name}(id integer primary key)")
    client.query("begin")
    client.query(f"insert into {table_name} values (1)")
    client.query("savepoint s1")
    assert client.query(f"insert into {table_name} values (1)")[-1].status == b"E"
    assert client.query("rollback to savepoint s1")[-1].status == b"T"
    client.query(f"insert into {table_name} values (2)")
    assert client.query("commit")[0].tag == "COMMIT"
    rows = client.query(f"select id from {table_name} order by id")
    assert [x.values for x in rows if isinstance(x, m.DataRow)] == [(b"1",), (b"2",)]


def test_compat_statements(client):
    for sql, tag in [
        ("BEGIN ISOLATION LEVEL SERIALIZABLE", "BEGIN"), ("COMMIT", "COMMIT"),
        ("START TRANSACTION READ WRITE", "BEGIN"), ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "SET"),
        ("ROLLBACK", "ROLLBACK"), ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED", "SET"),
        ("DISCARD ALL", "DISCARD ALL"), ("RESET ALL", "RESET"), ("CLOSE ALL", "CLOSE CURSOR ALL"),
        ("UNLISTEN *", "UNLISTEN"), ("SET TIME ZONE 'UTC'", "SET"), ("SET extra_float_digits = 3", "SET"),
    ]:
        msgs = client.query(sql)
        assert [x.tag for x in msgs if isinstance(x, m.CommandComplete)] == [tag], sql
    msgs = client.query("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL")
    assert kinds(msgs)[-1] == "ReadyForQuery" and "ErrorResponse" not in kinds(msgs)
    msgs = client.query("set DateStyle = 'ISO, DMY'")
    assert m.ParameterStatus("DateStyle", "ISO, DMY") in msgs
    msgs = client.query("select current_setting('server_version_num')::int, pg_backend_pid()")
    assert [x.values[0] for x in msgs if isinstance(x, m.DataRow)] == [b"150000"]


def test_read_only_transaction_refuses_writes(client, table_name):
    client.query(f"create table {table_name}(v integer)")
    client.query("begin read only")
    msgs = client.query(f"insert into {table_name} values (1)")
    assert msgs[0].sqlstate == "25006"
    client.query("rollback")


def test_discard_all_drops_prepared_statements(client):
    client.send(m.Parse("keep", "select 1", ()), m.Sync())
    client.until_ready()
    client.query("DISCARD ALL")
    client.send(m.Bind("", "keep", (), (), ()), m.Sync())
    assert client.until_ready()[0].sqlstate == "26000"


def test_cancel_request_with_wrong_key_is_ignored(client, sqld_server):
    with socket.create_connection((sqld_server.host, sqld_server.port), timeout=5) as s:
        s.sendall(m.CancelRequest(client.key.process_id, client.key.secret_key ^ 1).encode())
        assert s.recv(10) == b""
    assert kinds(client.query("select 1")) == ["RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]


def test_statements_of_one_query_are_one_implicit_transaction(client, table_name):
    client.query(f"create table {table_name}(id integer primary key)")
    msgs = client.query(f"insert into {table_name} values (1); insert into {table_name} values (1); "
                        f"insert into {table_name} values (2)")
    assert kinds(msgs) == ["CommandComplete", "ErrorResponse", "ReadyForQuery"]
    assert msgs[1].sqlstate == "23505" and msgs[-1].status == b"I"
    rows = client.query(f"select count(*) from {table_name}")
    assert [x.values for x in rows if isinstance(x, m.DataRow)] == [(b"0",)], "the first insert was kept"
    # statements that manage transactions themselves run one by one
    msgs = client.query(f"insert into {table_name} values (5); vacuum; select count(*) from {table_name}")
    assert [x.tag for x in msgs if isinstance(x, m.CommandComplete)] == ["INSERT 0 1", "VACUUM", "SELECT 1"]
