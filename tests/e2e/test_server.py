"""The server process as a whole: signals, flags, cancel, timeouts, disconnects, concurrency, streaming."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import psutil
import psycopg

from tests.conftest import libsql_only
import pytest

LONG_QUERY = "with recursive s(n) as (select 1 union all select n + 1 from s where n < 2000000000) select count(*) from s"


def test_cancel_request_interrupts_running_query(sqld_server):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            c.execute(LONG_QUERY)
        assert time.monotonic() - start < 10
        assert info.value.sqlstate == "57014"
        assert c.execute("select 1").fetchone() == (1,)


def test_statement_timeout_flag_and_setting(start_sqld):
    server = start_sqld("--statement-timeout", "300ms")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("show statement_timeout").fetchone() == ("300ms",)
        start = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            c.execute(LONG_QUERY)
        assert time.monotonic() - start < 5
        c.execute("set statement_timeout = 0")
        assert c.execute("select 42").fetchone() == (42,)
        c.execute("set statement_timeout = '100ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute(LONG_QUERY)


def test_disconnect_mid_transaction_rolls_back_at_once(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(v integer)")
    a = psycopg.connect(sqld_server.dsn())
    a.execute(f"insert into {table_name} values (1)")  # holds the writer, uncommitted
    # drop the socket without a Terminate message, as a crashed client would
    dup = socket.socket(fileno=os.dup(a.pgconn.socket))
    dup.shutdown(socket.SHUT_RDWR)
    dup.close()
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as b:
        b.execute("set statement_timeout = '5s'")
        b.execute(f"insert into {table_name} values (2)")  # the writer is free again
        assert b.execute(f"select v from {table_name}").fetchall() == [(2,)]
    try:
        a.close()
    except psycopg.Error:
        pass


@libsql_only
def test_sigterm_rolls_back_checkpoints_and_exits_zero(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table kept(v integer)")
        c.execute("insert into kept values (1)")
    open_tx = psycopg.connect(server.dsn())
    open_tx.execute("insert into kept values (2)")
    assert server.stop(signal.SIGTERM) == 0
    with pytest.raises(psycopg.OperationalError):
        open_tx.execute("select 1")
    wal = tmp_path / "db" / "main.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, "WAL not checkpointed at shutdown"
    log = server.log()
    assert "Traceback" not in log
    restarted = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(restarted.dsn(), autocommit=True) as c:
        assert c.execute("select v from kept").fetchall() == [(1,)]


def test_sigint_stops_cleanly(start_sqld):
    server = start_sqld()
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table t(v integer)")
    assert server.stop(signal.SIGINT) == 0
    assert "Traceback" not in server.log()
    assert "stopped" in server.log()


def run_sqld(*args, timeout=20):
    return subprocess.run([sys.executable, "-m", "sqld", *args], capture_output=True, text=True, timeout=timeout)


def test_taken_port_is_one_clear_line(sqld_server, tmp_path):
    res = run_sqld("--db-path", str(tmp_path / "x"), "--listen-addr", f"127.0.0.1:{sqld_server.port}")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert f"cannot listen on 127.0.0.1:{sqld_server.port}" in res.stderr


def test_corrupt_database_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database at all" * 200)
    res = run_sqld("--db-path", str(bad), "--listen-addr", "127.0.0.1:0")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert "not a database" in res.stderr


def test_bad_flags_are_usage_errors(tmp_path):
    res = run_sqld("--listen-addr", "nonsense", "--db-path", str(tmp_path / "x"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--listen-addr" in res.stderr
    res = run_sqld("--synchronous", "sometimes")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = run_sqld("--statement-timeout", "soon")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_flags_from_environment(start_sqld):
    server = start_sqld(env={"SQLD_STATEMENT_TIMEOUT": "2s"})
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("show statement_timeout").fetchone() == ("2s",)


def test_settings_from_the_startup_options(sqld_server):
    """libpq's options="-c name=value" (found by the attack review: it was ignored)."""
    with psycopg.connect(sqld_server.dsn(), autocommit=True,
                         options=r"-c statement_timeout=5s -clock_timeout=2s --application-name=my\ app") as c:
        assert c.execute("show statement_timeout").fetchone() == ("5s",)
        assert c.execute("show lock_timeout").fetchone() == ("2s",)
        assert c.execute("show application_name").fetchone() == ("my app",)
    with pytest.raises(psycopg.OperationalError, match="statement_timeout"):
        psycopg.connect(sqld_server.dsn(), options="-c statement_timeout=soon")


def test_max_connections(start_sqld):
    server = start_sqld("--max-connections", "2")
    a = psycopg.connect(server.dsn())
    b = psycopg.connect(server.dsn())
    with pytest.raises(psycopg.OperationalError, match="too many clients"):
        psycopg.connect(server.dsn())
    a.close()
    with psycopg.connect(server.dsn()) as c:
        assert c.execute("select 1").fetchone() == (1,)
    b.close()


def test_garbage_bytes_get_an_error_and_others_keep_working(sqld_server):
    with socket.create_connection((sqld_server.host, sqld_server.port), timeout=5) as s:
        s.sendall(struct.pack("!ii", 8, 1234) + b"garbage")
        data = s.recv(1000)
        assert data[:1] == b"E" and b"08P01" in data
    with socket.create_connection((sqld_server.host, sqld_server.port), timeout=5) as s:
        s.sendall(struct.pack("!ii", 0x7FFFFFFF, 196608))  # a 2 GB startup packet
        assert b"08P01" in s.recv(1000)
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_concurrent_clients_exact_counts(sqld_server, table_name):
    clients, per_client = 16, 40
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, n integer not null)")
        c.execute(f"create table {table_name}_log(client integer, i integer)")
        c.execute(f"insert into {table_name} values (1, 0)")
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with psycopg.connect(sqld_server.dsn(), autocommit=True) as conn:
                for i in range(per_client):
                    if i % 4 == 0:
                        with conn.transaction():
                            conn.execute(f"update {table_name} set n = n + 1 where id = 1")
                            conn.execute(f"insert into {table_name}_log values (%s, %s)", (k, i))
                    elif i % 4 == 1:
                        conn.execute(f"update {table_name} set n = n + 1 where id = 1")
                        conn.execute(f"insert into {table_name}_log values (%s, %s)", (k, i))
                    else:
                        conn.execute(f"select n from {table_name} where id = 1").fetchone()
                        conn.execute(f"select count(*) from {table_name}_log where client = %s", (k,)).fetchone()
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[:3]
    writes = clients * per_client // 2
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        assert c.execute(f"select n from {table_name}").fetchone() == (writes,)
        assert c.execute(f"select count(*), count(distinct client) from {table_name}_log").fetchone() == (writes, clients)


def test_read_then_write_transaction_after_concurrent_commit_is_40001(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(v integer)")
    with psycopg.connect(sqld_server.dsn()) as a, psycopg.connect(sqld_server.dsn(), autocommit=True) as b:
        assert a.execute(f"select count(*) from {table_name}").fetchone() == (0,)
        b.execute(f"insert into {table_name} values (1)")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute(f"insert into {table_name} values (2)")
        a.rollback()
        # BEGIN IMMEDIATE takes the writer up front: a read then a write never fails, and a
        # concurrent writer waits for the transaction to end
        a.autocommit = True
        a.execute("begin immediate")
        assert a.execute(f"select count(*) from {table_name}").fetchone() == (1,)
        waiter = threading.Thread(target=b.execute, args=(f"insert into {table_name} values (3)",))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive(), "a write went ahead of a BEGIN IMMEDIATE transaction"
        a.execute(f"insert into {table_name} values (2)")
        a.execute("commit")
        waiter.join(10)
        assert b.execute(f"select v from {table_name} order by v").fetchall() == [(1,), (2,), (3,)]


@pytest.mark.slow
def test_million_rows_stream_with_bounded_memory(sqld_server):
    proc = psutil.Process(sqld_server.pid)
    base = proc.memory_info().rss
    peak = base
    count = 0
    query = ("with recursive s(n) as (select 1 union all select n + 1 from s where n < 1000000) "
             "select n, 'row number ' || n, n * 1.5 from s")
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        with c.cursor() as cur:
            for row in cur.stream(query):
                count += 1
                if count % 50000 == 0:
                    peak = max(peak, proc.memory_info().rss)
                    if count == 100000:
                        time.sleep(1)  # a slow reader: the server must wait, not buffer
                        peak = max(peak, proc.memory_info().rss)
    assert count == 1_000_000
    assert row == (1_000_000, "row number 1000000", 1_500_000.0)
    growth = (peak - base) / 1e6
    assert growth < 100, f"server RSS grew {growth:.0f} MB while streaming"


def test_lock_timeout_bounds_the_wait_for_the_writer(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(v integer)")
    with psycopg.connect(sqld_server.dsn()) as a, psycopg.connect(sqld_server.dsn(), autocommit=True) as b:
        a.execute(f"insert into {table_name} values (1)")  # holds the writer
        b.execute("set lock_timeout = '100ms'")
        start = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute(f"insert into {table_name} values (2)")
        assert time.monotonic() - start < 5
        a.commit()
        b.execute(f"insert into {table_name} values (3)")
        assert b.execute(f"select v from {table_name} order by v").fetchall() == [(1,), (3,)]


def test_idle_in_transaction_timeout_frees_the_writer(start_sqld):
    server = start_sqld("--idle-in-transaction-timeout", "300ms")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table t(v integer)")
    idle = psycopg.connect(server.dsn())
    idle.execute("insert into t values (1)")  # holds the writer, then sits idle
    with psycopg.connect(server.dsn(), autocommit=True) as other:
        other.execute("set statement_timeout = '10s'")
        start = time.monotonic()
        other.execute("insert into t values (2)")  # waits until the idle session is ended
        assert time.monotonic() - start < 5
        assert other.execute("select v from t").fetchall() == [(2,)]
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
        idle.execute("select 1")
    idle.close()
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        # the flag is a ceiling: 0 (none) cannot lift it, a lower value is taken
        c.execute("set idle_in_transaction_session_timeout = 0")
        assert c.execute("show idle_in_transaction_session_timeout").fetchone() == ("300ms",)
        c.execute("set idle_in_transaction_session_timeout = 200")
        assert c.execute("show idle_in_transaction_session_timeout").fetchone() == ("200ms",)


NO_OWN_CONNECTION = pytest.mark.skipif(
    os.environ.get("SQLD_TEST_BACKEND") == "mvsqlite",
    reason="mvsqlite refuses temporary objects (0A000): no session has a connection of its own there")


@pytest.mark.parametrize("kind, create", [
    ("trigger", "create trigger {o} after insert on {t} begin select 1; end"),
    ("index", "create index {o} on {t}(a)"),
    ("view", "create view {o} as select a from {t}"),
    ("table", "create table {o}(x)"),
])
@pytest.mark.parametrize("own_connection", [False, pytest.param(True, marks=NO_OWN_CONNECTION)])
def test_drop_if_exists_that_was_a_no_op_drops_once_there_is_something(sqld_server, table_name, kind, create,
                                                                        own_connection):
    """Found by the attack review: `DROP … IF EXISTS` of nothing is a read to SQLite; the
    prepared statement, cached by its text, kept that answer after the object was created,
    ran on a read-only reader and failed with 25006 (the object stayed). On a session with a
    connection of its own (a temporary table) it would have written without the writer."""
    obj = f"{table_name}_{kind}"
    drop = f"drop {kind} if exists {obj}"
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c, \
            psycopg.connect(sqld_server.dsn(), autocommit=True) as other:
        c.execute(f"create table {table_name}(a)")
        if own_connection:
            c.execute(f"create temp table {table_name}_tmp(a)")  # the session's own connection
        c.execute(drop)
        c.execute(drop)
        other.execute(create.format(o=obj, t=table_name))
        assert other.execute("select count(*) from sqlite_schema where name = %s", (obj,)).fetchone() == (1,)
        c.execute(drop)
        assert c.execute("select count(*) from sqlite_schema where name = %s", (obj,)).fetchone() == (0,)
        c.execute(create.format(o=obj, t=table_name))  # and CREATE … IF NOT EXISTS the other way round
        c.execute(f"drop {kind} {obj}")
        ine = create.format(o=obj, t=table_name).replace(f"{kind} {obj}", f"{kind} if not exists {obj}")
        other.execute(create.format(o=obj, t=table_name))
        c.execute(ine)  # a no-op: the object exists
        other.execute(f"drop {kind} {obj}")
        c.execute(ine)
        assert other.execute("select count(*) from sqlite_schema where name = %s", (obj,)).fetchone() == (1,)


@NO_OWN_CONNECTION
@pytest.mark.parametrize("kind, create", [("index", "create index {o} on {t}(a)"), ("table", "create table {o}(x)"),
                                          ("view", "create view {o} as select 1")])
def test_a_name_dropped_through_another_connection_can_be_created_again(sqld_server, table_name, kind, create):
    """Found while writing the test above: an object dropped by a session on a connection of
    its own (a temporary table) could not be created again by anyone ("already exists", yet
    DROP said "no such"): SQLite prepares a CREATE against the schema its connection last
    read, and the writer had not read it since. The schema is read again and the CREATE
    tried once more."""
    obj = f"{table_name}_{kind}"
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as own, \
            psycopg.connect(sqld_server.dsn(), autocommit=True) as other:
        own.execute(f"create table {table_name}(a)")
        own.execute(f"create temp table {table_name}_tmp(a)")  # a connection of its own
        other.execute(create.format(o=obj, t=table_name))  # on the writer
        own.execute(f"drop {kind} {obj}")
        other.execute(create.format(o=obj, t=table_name))
        own.execute(f"drop {kind} {obj}")
        own.execute(create.format(o=obj, t=table_name))
        other.execute(f"drop {kind} {obj}")
        other.execute(create.format(o=obj, t=table_name))
        assert own.execute("select count(*) from sqlite_schema where name = %s", (obj,)).fetchone() == (1,)
