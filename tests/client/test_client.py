"""sqld.client against a real server, checked against what the stdlib sqlite3 does on a local file."""

from __future__ import annotations

import datetime
import math
import sqlite3
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqld.client as client


@pytest.fixture
def conn(sqld_url):
    c = client.connect(":memory:")
    yield c
    c.close()


@pytest.fixture
def local():
    c = sqlite3.connect(":memory:")
    yield c
    c.close()


values = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=False),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, math.inf, -math.inf]),
    st.text(alphabet=st.characters(exclude_categories=("Cs",))),
    st.sampled_from(["", "\x00", "a\x00b", "🎉𝄞", "\U0010ffff"]),
    st.binary(),
    st.just(b""),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=st.lists(values, min_size=1, max_size=6))
def test_values_round_trip_like_local_sqlite3(conn, local, row):
    cols = ", ".join(f"c{i}" for i in range(len(row)))
    marks = ", ".join("?" for _ in row)
    for c in (conn, local):
        c.execute("drop table if exists v")
        c.execute(f"create table v({cols})")
        c.execute(f"insert into v values ({marks})", row)
    got = conn.execute(f"select {cols} from v").fetchall()
    want = local.execute(f"select {cols} from v").fetchall()
    assert got == want
    for g, w in zip(got[0], want[0]):
        assert type(g) is type(w)
        if isinstance(g, float):
            assert math.copysign(1, g) == math.copysign(1, w)
    # expression columns and typeof keep each value's storage class too
    got_types = conn.execute(f"select {', '.join(f'typeof(c{i}), c{i}' for i in range(len(row)))} from v").fetchall()
    want_types = local.execute(f"select {', '.join(f'typeof(c{i}), c{i}' for i in range(len(row)))} from v").fetchall()
    assert got_types == want_types


def test_mixed_types_in_one_column(conn):
    conn.execute("create table m(x)")
    conn.executemany("insert into m values (?)", [(1,), ("1",), (1.0,), (b"1",), (None,)])
    assert conn.execute("select x from m order by rowid").fetchall() == [(1,), ("1",), (1.0,), (b"1",), (None,)]


def test_implicit_transactions_like_python_311(sqld_url):
    a = client.connect("shared_tx_test.db")
    b = client.connect("shared_tx_test.db")
    a.execute("drop table if exists t")
    a.execute("create table t(v)")
    assert not a.in_transaction
    a.execute("insert into t values (1)")      # implicit BEGIN
    assert a.in_transaction
    assert b.execute("select count(*) from t").fetchone() == (0,)
    a.commit()
    assert not a.in_transaction
    assert b.execute("select count(*) from t").fetchone() == (1,)
    a.execute("insert into t values (2)")
    a.rollback()
    assert b.execute("select count(*) from t").fetchone() == (1,)
    a.commit()
    a.rollback()                                  # no-ops outside a transaction
    a.isolation_level = None                      # autocommit
    a.execute("insert into t values (3)")
    assert not a.in_transaction
    assert b.execute("select count(*) from t").fetchone() == (2,)
    with a:                                       # the context manager commits
        a.execute("begin")
        a.execute("insert into t values (4)")
    assert b.execute("select count(*) from t").fetchone() == (3,)
    a.close()
    b.close()


def test_errors_keep_the_transaction_as_sqlite_does(conn):
    conn.execute("create table u(id integer primary key, n not null)")
    conn.execute("insert into u values (1, 1)")
    with pytest.raises(client.IntegrityError) as info:
        conn.execute("insert into u values (1, 2)")
    assert info.value.sqlite_errorcode == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
    assert info.value.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert conn.in_transaction
    conn.execute("insert into u values (2, 2)")
    conn.commit()
    assert conn.execute("select count(*) from u").fetchone() == (2,)
    with pytest.raises(client.IntegrityError) as info:
        conn.execute("insert into u values (3, null)")
    assert info.value.sqlite_errorname == "SQLITE_CONSTRAINT_NOTNULL"
    with pytest.raises(client.OperationalError, match="no such table"):
        conn.execute("select * from nowhere")
    with pytest.raises(client.OperationalError):
        conn.execute("selec 1")
    with pytest.raises(client.ProgrammingError, match="one statement at a time"):
        conn.execute("select 1; select 2")
    assert issubclass(client.IntegrityError, client.DatabaseError)
    assert issubclass(client.DatabaseError, client.Error)


def test_parameters_styles_and_binding_errors(conn):
    assert conn.execute("select ?, ?", (1, "a")).fetchone() == (1, "a")
    assert conn.execute("select ?2, ?1", (1, 2)).fetchone() == (2, 1)
    assert conn.execute("select :a, @b, $c, :a", {"a": 1, "b": 2, "c": 3}).fetchone() == (1, 2, 3, 1)
    with pytest.raises(client.ProgrammingError, match="Incorrect number of bindings"):
        conn.execute("select ?", (1, 2))
    with pytest.raises(client.ProgrammingError, match="supply a value for binding parameter :b"):
        conn.execute("select :a, :b", {"a": 1})
    with pytest.raises(client.ProgrammingError):
        conn.execute("select ?", (object(),))
    with pytest.raises(OverflowError):
        conn.execute("select ?", (2**63,))
    # the SQL is never built from values: quotes and semicolons stay data
    assert conn.execute("select ?", ("'); drop table x; --",)).fetchone() == ("'); drop table x; --",)


def test_cursor_attributes(conn):
    cur = conn.cursor()
    cur.execute("create table c(id integer primary key, v)")
    assert cur.rowcount == -1 and cur.lastrowid is None and cur.description is None
    cur.execute("insert into c(v) values ('a')")
    assert cur.rowcount == 1 and cur.lastrowid == 1
    cur.executemany("insert into c(v) values (?)", [("b",), ("c",)])
    assert cur.rowcount == 2 and cur.lastrowid == 1  # executemany leaves lastrowid
    cur.execute("update c set v = v || '!'")
    assert cur.rowcount == 3
    cur.execute("select id, v as value from c order by id")
    assert [d[0] for d in cur.description] == ["id", "value"]
    assert cur.fetchone() == (1, "a!")
    cur.arraysize = 2
    assert cur.fetchmany() == [(2, "b!"), (3, "c!")]
    assert cur.fetchall() == []
    assert list(conn.execute("select v from c order by id")) == [("a!",), ("b!",), ("c!",)]
    with pytest.raises(client.ProgrammingError, match="executemany"):
        cur.executemany("select ?", [(1,)])
    cur.close()
    with pytest.raises(client.ProgrammingError, match="closed cursor"):
        cur.fetchone()


def test_row_factory_and_text_factory(conn):
    conn.row_factory = client.Row
    row = conn.execute("select 1 as a, 'x' as B").fetchone()
    assert row["A"] == 1 and row["b"] == "x" and row[0] == 1 and row.keys() == ["a", "B"]
    assert tuple(row) == (1, "x")
    conn.row_factory = None
    conn.text_factory = bytes
    assert conn.execute("select 'héllo'").fetchone() == ("héllo".encode(),)


def test_executescript_runs_statements_one_by_one(conn):
    conn.execute("create table s(v)")
    conn.execute("insert into s values (0)")  # pending transaction: executescript commits it
    with pytest.raises(client.OperationalError):
        conn.executescript("insert into s values (1); insert into nowhere values (2); insert into s values (3);")
    assert conn.execute("select v from s order by v").fetchall() == [(0,), (1,)]


def test_detect_types_and_adapters(conn):
    c = client.connect(":memory:", detect_types=client.PARSE_DECLTYPES | client.PARSE_COLNAMES)
    c.execute("create table d(day date, at timestamp, n integer)")
    day, at = datetime.date(2026, 11, 24), datetime.datetime(2026, 11, 24, 12, 30, 1, 250000)
    c.execute("insert into d values (?, ?, ?)", (day, at, 5))
    assert c.execute("select day, at, n from d").fetchone() == (day, at, 5)
    cur = c.execute('select day as "d [date]" from d')
    assert cur.description[0][0] == "d" and cur.fetchone() == (day,)
    client.register_converter("upper", lambda b: b.decode().upper())
    assert c.execute("select 'abc' as \"v [upper]\"").fetchone() == ("ABC",)
    c.close()


def test_named_databases_are_shared_and_memory_is_private(sqld_url):
    a = client.connect("shared_named.db")
    a.execute("create table if not exists n(v)")
    a.execute("delete from n")
    a.execute("insert into n values (1)")
    a.commit()
    b = client.connect("/some/where/shared_named.db")
    assert b.execute("select v from n").fetchall() == [(1,)]
    m1, m2 = client.connect(":memory:"), client.connect(":memory:")
    m1.execute("create table p(v)")
    with pytest.raises(client.OperationalError, match="no such table"):
        m2.execute("select * from p")
    for c in (a, b, m1, m2):
        c.close()


def test_url_and_errors_connecting(sqld_server):
    c = client.connect(f"sqld://tester@{sqld_server.host}:{sqld_server.port}/url_db")
    assert c.execute("select 1").fetchone() == (1,)
    c.close()
    with pytest.raises(client.ProgrammingError, match="closed database"):
        c.execute("select 1")
    with pytest.raises(client.OperationalError, match="cannot connect"):
        client.connect(f"sqld://tester@{sqld_server.host}:1/x")


def test_interrupt_cancels_a_running_statement(conn):
    threading.Timer(0.5, conn.interrupt).start()
    with pytest.raises(client.OperationalError, match="cancel"):
        conn.execute("with recursive s(n) as (select 1 union all select n + 1 from s where n < 1000000000) "
                      "select count(*) from s")
    assert conn.execute("select 1").fetchone() == (1,)


def test_same_thread_check(conn):
    errors = []
    th = threading.Thread(target=lambda: errors.append(pytest.raises(client.ProgrammingError, conn.execute, "select 1")))
    th.start()
    th.join()
    assert errors and errors[0].match("same thread")


def test_module_attributes():
    assert client.apilevel == "2.0" and client.paramstyle == "qmark"
    assert client.SQLITE_CONSTRAINT == sqlite3.SQLITE_CONSTRAINT
    assert client.complete_statement("select 1;") and not client.complete_statement("select 1")
    assert client.Binary(b"x") == b"x"


def test_server_gone_mid_query_raises_and_nothing_is_retried(start_sqld):
    server = start_sqld()
    c = client.connect(f"sqld://tester@{server.host}:{server.port}/gone", isolation_level=None)
    c.execute("create table t(v)")
    c.execute("insert into t values (1)")
    threading.Timer(0.5, lambda: server.stop()).start()
    with pytest.raises(client.OperationalError):
        c.execute("with recursive s(n) as (select 1 union all select n + 1 from s where n < 1000000000) "
                  "select count(*) from s")
    server.proc.wait(20)  # the server is gone now
    with pytest.raises(client.OperationalError):  # … and the connection says so
        c.execute("select 1")
