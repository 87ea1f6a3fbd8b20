"""Limits a client cannot push past: a client that stops reading, a 2 GB length field."""

from __future__ import annotations

import socket
import struct
import time

import psutil
import pytest
import psycopg

from sqld.pgwire import messages as m
from tests.rawclient import RawClient

BIG = ("with recursive r(i) as (select 1 union all select i + 1 from r where i < 200000) "
       "select randomblob(1000) from r")  # ~200 MB of rows


def rss(server) -> int:
    return psutil.Process(server.pid).memory_info().rss


def test_a_client_that_stops_reading_cannot_make_the_server_buffer(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn()) as c:
        c.execute("select 1")
    before = rss(server)
    rc = RawClient(server.host, server.port)
    rc.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    rc.send(m.Query(BIG))  # then read nothing
    time.sleep(3)
    grown = rss(server) - before
    with psycopg.connect(server.dsn(), autocommit=True) as c:  # everyone else is served meanwhile
        assert c.execute("select 42").fetchone() == (42,)
    assert grown < 64 << 20, f"the server grew by {grown >> 20} MB for a client that reads nothing"
    rc.sock.close()
    time.sleep(0.5)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select 43").fetchone() == (43,)
    assert "Traceback" not in server.log()


def test_a_2gb_length_field_is_refused_without_allocating(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    before = rss(server)
    rc = RawClient(server.host, server.port)
    rc.sock.sendall(b"Q" + struct.pack("!I", 0x7FFFFFF0) + b"select 1")
    err = rc.recv()
    assert isinstance(err, m.ErrorResponse) and err.severity == "FATAL"
    assert rc.sock.recv(1) == b""  # and the connection is closed
    assert rss(server) - before < 16 << 20
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_a_connection_that_never_starts_up_is_closed(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db", env={"SQLD_STARTUP_TIMEOUT": "1s"})
    silent = socket.create_connection((server.host, server.port), timeout=10)
    half = socket.create_connection((server.host, server.port), timeout=10)
    half.sendall(b"\x00\x00\x00\x50\x00\x03")  # a startup packet that never ends
    for sock in (silent, half):
        assert sock.recv(1) == b""  # closed by the server, after the startup timeout
        sock.close()


def test_statements_longer_than_the_limit_are_refused(start_sqld, tmp_path):
    server = start_sqld("--max-sql-length", "1000", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        long_sql = "select " + " + ".join(["1"] * 600)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(long_sql)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(long_sql + " where %s = %s", (1, 1))  # the extended protocol too
        assert c.execute("select 1 + %s", (1,)).fetchone() == (2,)


def test_defect12_a_huge_value_is_refused_and_everyone_keeps_serving(start_sqld, tmp_path):
    """select length(randomblob(900000000)) once built 900 MB on the server for one client;
    a few dozen at once would have taken the host."""
    import threading

    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("select 1")
    before = rss(server)
    errors: list[str] = []

    def huge(sql: str) -> None:
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            try:
                c.execute(sql)
                errors.append("ran")
            except psycopg.Error as exc:
                errors.append(exc.sqlstate)

    queries = ["select length(randomblob(900000000))", "select length(zeroblob(900000000))",
               "select length(printf('%.*c', 900000000, 'x'))"] * 4
    threads = [threading.Thread(target=huge, args=(q,)) for q in queries]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == ["54000"] * len(queries)
    assert rss(server) - before < 100 << 20
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        err = None
        try:
            c.execute("select randomblob(70000000)")
        except psycopg.Error as exc:
            err = exc
        assert err is not None and err.sqlstate == "54000" and "--max-value-mb" in err.diag.message_hint
        assert c.execute("select length(randomblob(1000000))").fetchone() == (1000000,)


def test_sqlite_memory_is_bounded_server_wide(start_sqld, tmp_path):
    server = start_sqld("--max-memory-mb", "48", "--max-value-mb", "30", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.Error) as err:
            c.execute("select length(a), length(b) from (select randomblob(25000000) a, randomblob(25000000) b)")
        assert err.value.sqlstate == "53200"
        assert c.execute("select length(randomblob(20000000))").fetchone() == (20000000,)
        assert c.execute("select 1").fetchone() == (1,)


def test_database_list_names_databases_not_server_paths(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(dbname="shop"), autocommit=True) as c:
        rows = c.execute("pragma database_list").fetchall()
        assert rows == [(0, "main", "shop")]
        assert c.execute("select name, file from pragma_database_list").fetchall() == [("main", None)]
        assert str(tmp_path) not in repr(rows)
