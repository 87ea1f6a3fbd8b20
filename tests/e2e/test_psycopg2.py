"""psycopg2 against a real sqld: simple queries with parameters bound on the client side."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest


@pytest.fixture
def conn(sqld_server):
    c = psycopg2.connect(sqld_server.dsn())
    yield c
    c.close()


def test_types_and_literal_forms(conn, table_name):
    cur = conn.cursor()
    cur.execute(f"create table {table_name}(id integer primary key, i integer, r real, s text, b blob, ok boolean)")
    values = [
        (2**63 - 1, 1.25, "it's", b"\x00\xff'\\", True),
        (-(2**63), -0.5, "back\\slash\nnewline", b"", False),
        (None, None, None, None, None),
        (0, 1e-300, "ünï€ode 🎉", bytes(range(256)), True),
    ]
    for v in values:
        cur.execute(f"insert into {table_name}(i, r, s, b, ok) values (%s, %s, %s, %s, %s)",
                    (v[0], v[1], v[2], psycopg2.Binary(v[3]) if v[3] is not None else None, v[4]))
    conn.commit()
    cur.execute(f"select i, r, s, b, ok from {table_name} order by id")
    got = [(i, r, s, bytes(b) if b is not None else None, ok) for i, r, s, b, ok in cur.fetchall()]
    assert got == values


def test_executemany_and_transactions(sqld_server, conn, table_name):
    cur = conn.cursor()
    cur.execute(f"create table {table_name}(v integer)")
    conn.commit()
    cur.executemany(f"insert into {table_name} values (%s)", [(i,) for i in range(100)])
    other = psycopg2.connect(sqld_server.dsn())
    other.autocommit = True
    ocur = other.cursor()
    ocur.execute(f"select count(*) from {table_name}")
    assert ocur.fetchone() == (0,)
    conn.commit()
    ocur.execute(f"select count(*), sum(v) from {table_name}")
    assert ocur.fetchone() == (100, 4950)
    cur.execute(f"delete from {table_name}")
    conn.rollback()
    ocur.execute(f"select count(*) from {table_name}")
    assert ocur.fetchone() == (100,)
    other.close()


def test_errors_with_sqlstate(conn, table_name):
    cur = conn.cursor()
    cur.execute(f"create table {table_name}(id integer primary key)")
    cur.execute(f"insert into {table_name} values (1)")
    with pytest.raises(psycopg2.errors.UniqueViolation) as info:
        cur.execute(f"insert into {table_name} values (1)")
    assert info.value.pgcode == "23505"
    with pytest.raises(psycopg2.errors.InFailedSqlTransaction):
        cur.execute("select 1")
    conn.rollback()
    cur.execute("select 2")
    assert cur.fetchone() == (2,)


def test_dict_cursor_and_execute_values(conn, table_name):
    cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
    cur.execute(f"create table {table_name}(a integer, b text)")
    psycopg2.extras.execute_values(cur, f"insert into {table_name} values %s", [(1, "x"), (2, "y")])
    cur.execute(f"select a, b from {table_name} order by a")
    assert cur.fetchall() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert cur.rowcount == 2


def test_multiple_statements_in_one_query(conn, table_name):
    cur = conn.cursor()
    cur.execute(f"create table {table_name}(a integer); insert into {table_name} values (1); "
                f"insert into {table_name} values (2); select sum(a) from {table_name}")
    assert cur.fetchone() == (3,)
