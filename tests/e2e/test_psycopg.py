"""psycopg 3 against a real sqld: the extended protocol with server-side parameters."""

from __future__ import annotations

import math

import psycopg
import pytest
from psycopg import sql as psql


@pytest.fixture
def conn(sqld_server):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        yield c


EDGE_INTS = [0, 1, -1, 2**31 - 1, -(2**31), 2**63 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, 0.1 + 0.2, math.pi, math.inf, -math.inf]


def test_connect_reports_server_parameters(conn):
    assert conn.info.server_version >= 150000
    assert conn.info.parameter_status("server_encoding") == "UTF8"
    assert conn.info.parameter_status("standard_conforming_strings") == "on"
    assert conn.info.parameter_status("DateStyle") == "ISO, MDY"
    assert conn.info.backend_pid > 0


def test_types_round_trip_text_and_binary(conn, table_name):
    conn.execute(f"create table {table_name}(id integer primary key, i integer, r real, s text, b blob, ok boolean)")
    rows = [(i, f, s, b, flag) for i, f, s, b, flag in zip(
        EDGE_INTS, FLOATS, ["", "a", "hé", "日本", "🎉", "x'y", "new\nline"],
        [b"", b"\x00", b"\xff\x00\x01", b"abc", b"\x00" * 100, b"'", b"\\"],
        [True, False, True, False, True, False, True])]
    with conn.cursor() as cur:
        cur.executemany(f"insert into {table_name}(i, r, s, b, ok) values (%s, %s, %s, %s, %s)", rows)
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            got = cur.execute(f"select i, r, s, b, ok from {table_name} order by id").fetchall()
        assert [tuple(r) for r in got] == rows, f"binary={binary}"
    assert conn.execute(f"select i from {table_name} where s is null").fetchall() == []
    conn.execute(f"insert into {table_name}(i, s) values (%s, %s)", (None, None))
    assert conn.execute(f"select i, s, b from {table_name} where i is null").fetchone() == (None, None, None)


def test_expression_columns_get_types_from_values(conn):
    row = conn.execute("select 1+1, 'a', x'00', 1.5, null").fetchone()
    assert row == (2, "a", b"\x00", 1.5, None)
    assert type(row[0]) is int and type(row[3]) is float


@pytest.mark.parametrize("binary", [False, True])
def test_integer_overflow_is_out_of_range_as_in_postgresql(conn, binary):
    """SQLite turns 9223372036854775807 + 1 into a REAL; announced as an integer (the
    operands' type, at Describe) it is 22003, as PostgreSQL answers, and a CAST gets it."""
    with pytest.raises(psycopg.errors.NumericValueOutOfRange) as err:
        conn.execute("select 9223372036854775807 + 1", prepare=True, binary=binary).fetchone()
    assert "out of range" in str(err.value)
    assert conn.execute("select cast(9223372036854775807 + 1 as real)", prepare=True,
                        binary=binary).fetchone() == (2.0**63,)


def test_nan_round_trips(conn):
    assert math.isnan(conn.execute("select %s + 0.0", (math.nan,)).fetchone()[0] or math.nan)


def test_transactions_seen_by_other_connection(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as setup:
        setup.execute(f"create table {table_name}(v integer)")
    with psycopg.connect(sqld_server.dsn()) as a, psycopg.connect(sqld_server.dsn(), autocommit=True) as b:
        a.execute(f"insert into {table_name} values (1)")
        assert a.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert b.execute(f"select count(*) from {table_name}").fetchone() == (0,)
        a.commit()
        assert b.execute(f"select count(*) from {table_name}").fetchone() == (1,)
        a.execute(f"insert into {table_name} values (2)")
        a.rollback()
        assert b.execute(f"select v from {table_name}").fetchall() == [(1,)]
        with a.transaction():
            a.execute(f"insert into {table_name} values (3)")
        assert b.execute(f"select count(*) from {table_name}").fetchone() == (2,)


def test_errors_carry_sqlstate_and_connection_stays_usable(conn, table_name):
    conn.execute(f"create table {table_name}(id integer primary key, name text not null unique, "
                 f"n integer check (n > 0))")
    conn.execute(f"insert into {table_name} values (1, 'a', 1)")
    cases = [
        (f"insert into {table_name} values (2, 'a', 1)", psycopg.errors.UniqueViolation),
        (f"insert into {table_name} values (1, 'b', 1)", psycopg.errors.UniqueViolation),
        (f"insert into {table_name} values (3, null, 1)", psycopg.errors.NotNullViolation),
        (f"insert into {table_name} values (4, 'd', 0)", psycopg.errors.CheckViolation),
        ("select * from no_such_table_here", psycopg.errors.UndefinedTable),
        (f"select no_such_column from {table_name}", psycopg.errors.UndefinedColumn),
        ("selec 1", psycopg.errors.SyntaxError),
    ]
    for statement, error in cases:
        with pytest.raises(error):
            conn.execute(statement)
        assert conn.execute("select 1").fetchone() == (1,)


def test_foreign_key_violation(conn, table_name):
    conn.execute(f"create table {table_name}_p(id integer primary key)")
    conn.execute(f"create table {table_name}_c(pid integer references {table_name}_p(id))")
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        conn.execute(f"insert into {table_name}_c values (42)")


def test_failed_transaction_until_rollback(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn()) as c:
        c.execute(f"create table {table_name}(v integer primary key)")
        c.commit()
        c.execute(f"insert into {table_name} values (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute(f"insert into {table_name} values (1)")
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (0,)


def test_prepared_statements_reused(conn, table_name):
    conn.execute(f"create table {table_name}(id integer primary key, v text)")
    for i in range(20):
        conn.execute(f"insert into {table_name} values (%s, %s)", (i, str(i)), prepare=True)
    for i in range(20):
        assert conn.execute(f"select v from {table_name} where id = %s", (i,), prepare=True).fetchone() == (str(i),)


def test_sql_composition_and_identifiers(conn, table_name):
    conn.execute(psql.SQL("create table {} ({} integer)").format(psql.Identifier(table_name), psql.Identifier("Odd Name")))
    conn.execute(psql.SQL("insert into {} values (%s)").format(psql.Identifier(table_name)), (7,))
    assert conn.execute(psql.SQL("select {} from {}").format(psql.Identifier("Odd Name"), psql.Identifier(table_name))).fetchone() == (7,)


def test_many_rows_and_fetchmany(conn, table_name):
    conn.execute(f"create table {table_name}(n integer)")
    conn.execute(f"with recursive s(n) as (select 1 union all select n + 1 from s where n < 5000) "
                 f"insert into {table_name} select n from s")
    with conn.cursor() as cur:
        cur.execute(f"select n from {table_name} order by n")
        assert cur.rowcount == 5000
        assert cur.fetchmany(3) == [(1,), (2,), (3,)]
        assert len(cur.fetchall()) == 4997
    assert conn.execute(f"update {table_name} set n = n + 1 where n <= 10").rowcount == 10
    assert conn.execute(f"delete from {table_name} where n <= 100").rowcount == 100


def test_client_side_binding_cursor(conn, table_name):
    conn.execute(f"create table {table_name}(s text, b blob, i integer)")
    with psycopg.ClientCursor(conn) as cur:
        cur.execute(f"insert into {table_name} values (%s, %s, %s)", ("it's \\ ok", b"\x00\x01'", -5))
        cur.execute(f"select s, b, i from {table_name}")
        assert cur.fetchone() == ("it's \\ ok", b"\x00\x01'", -5)


def test_set_show_and_settings(conn):
    conn.execute("set application_name = 'psy-test'")
    assert conn.info.parameter_status("application_name") == "psy-test"
    assert conn.execute("show application_name").fetchone() == ("psy-test",)
    assert conn.execute("select current_setting('application_name')").fetchone() == ("psy-test",)
    conn.execute("set statement_timeout to '5s'")
    assert conn.execute("show statement_timeout").fetchone() == ("5s",)
    conn.execute("reset all")
    assert conn.execute("show statement_timeout").fetchone() == ("0",)
    assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL 15")
    with pytest.raises(psycopg.errors.UndefinedObject):
        conn.execute("show no_such_setting")
