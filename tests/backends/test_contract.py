"""The backend interface (sqld/backends/base.py), one suite over every backend: libsql (a
file), mvsqlite (on the FoundationDB simulator) and the replica backend (a read-only copy).

What the scheduler relies on, asked of each backend alike: statements and their handles,
what preparing tells, the stop conditions of ``guard``, readers that refuse writes before
running them, ``run_many``, and what a schema changed by another connection does.
"""

from __future__ import annotations

import time
import uuid

import pytest

from sqld.backends.base import BudgetExceeded, Interrupted, NeedsWriter
from sqld.backends.libsql import LibsqlBackend
from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.backends.replica import ReplicaBackend
from sqld.errors import FeatureNotSupported, SqldError

SCHEMA = ["create table t(id integer primary key, v text not null, n real, b blob)",
          "insert into t(v, n, b) values ('one', 1.5, x'01'), ('two', 2.5, null), ('three', null, x'')"]
ENDLESS = "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r"


class Side:
    """One backend under test, and how to make a second connection to the same database
    that changes its schema behind this backend's back (another process, or a session's own
    connection) — None where there is none."""

    def __init__(self, name, backend, other=None, writable=True):
        self.name, self.backend, self.other, self.writable = name, backend, other, writable


@pytest.fixture(params=["libsql", "mvsqlite", "replica"])
def side(request, tmp_path):
    opened = []

    def keep(b):
        b.open()
        opened.append(b)
        return b

    if request.param == "libsql":
        b = keep(LibsqlBackend(tmp_path / "main.db"))
        for sql in SCHEMA:
            b.writer().run(sql)
        yield Side("libsql", b, other=lambda: b.open_session_connection())
    elif request.param == "mvsqlite":
        db, prefix = SimDatabase(seed=1, backoff=False), f"test/{uuid.uuid4().hex}/".encode()
        b = keep(MvsqliteBackend(db, prefix))
        for sql in SCHEMA:
            b.writer().run(sql)
        yield Side("mvsqlite", b, other=lambda: keep(MvsqliteBackend(db, prefix)).writer())
    else:
        source = LibsqlBackend(tmp_path / "main.db")
        source.open()
        for sql in SCHEMA:
            source.writer().run(sql)
        source.close()
        yield Side("replica", keep(ReplicaBackend(tmp_path / "main.db")), writable=False)
    for b in reversed(opened):
        b.close()


def rows(conn, sql, params=()):
    _, got, handle = conn.start(sql, params, 1 << 30)
    assert handle is None
    return got


def test_a_statement_with_rows_and_its_handle(side):
    conn = side.backend.open_reader()
    columns, first, handle = conn.start("select id, v, n, b, v || '!' as e from t order by id", (), 2)
    assert [(c.name, c.decltype) for c in columns] == [("id", "INTEGER"), ("v", "TEXT"), ("n", "REAL"),
                                                       ("b", "BLOB"), ("e", None)]
    assert first == [(1, "one", 1.5, b"\x01", "one!"), (2, "two", 2.5, None, "two!")]
    assert handle is not None and conn.has_open_cursors
    more, done = conn.more(handle, 10)
    assert more == [(3, "three", None, b"", "three!")] and done
    assert not conn.has_open_cursors
    assert conn.more(handle, 10) == ([], True)  # a handle that is done stays done


def test_several_handles_are_open_at_once_and_finish_closes_them(side):
    conn = side.backend.open_reader()
    _, a, ha = conn.start("select id from t order by id", (), 1)
    _, b, hb = conn.start("select v from t order by id desc", (), 1)
    assert (a, b) == ([(1,)], [("three",)])
    assert conn.more(hb, 1) == ([("two",)], False)
    assert conn.more(ha, 1) == ([(2,)], False)
    conn.finish(ha)
    assert conn.more(ha, 5) == ([], True)
    conn.finish()
    assert not conn.has_open_cursors


def test_info_tells_without_running(side):
    conn = side.backend.open_reader()
    info = conn.info("select v, n from t where id = ?")
    assert [c.name for c in info.columns] == ["v", "n"] and info.param_count == 1 and info.readonly
    write = conn.info("delete from t where id = ?1 or id = ?2")
    assert write.columns == () and write.param_count == 2 and not write.readonly
    assert rows(conn, "select count(*) from t") == [(3,)]  # the delete did not run
    with pytest.raises(SqldError) as e:
        conn.info("select 1; select 2")
    assert e.value.sqlstate == "42601"
    assert conn.info("").columns == ()


def test_a_reader_refuses_a_write_before_running_it(side):
    conn = side.backend.open_reader()
    for sql in ("insert into t(v) values ('x')", "update t set v = 'y'", "create table u(a)",
                "with d as (select 1) delete from t"):
        with pytest.raises(NeedsWriter):
            conn.start(sql, (), 10)
    assert rows(conn, "select count(*) from t") == [(3,)]
    assert not conn.in_transaction()


def test_errors_carry_sqlstates(side):
    conn = side.backend.open_reader()
    cases = {"select * from nowhere": "42P01", "select nosuch from t": "42703", "selec 1": "42601",
             "select abs()": "42883"}
    for sql, state in cases.items():
        with pytest.raises(SqldError) as e:
            conn.start(sql, (), 1)
        assert e.value.sqlstate == state, (sql, e.value)


def test_guard_stops_a_run_at_its_deadline_or_cancel_and_a_reader_at_its_budget(side):
    conn = side.backend.open_reader()
    conn.guard(budget=None, deadline=time.monotonic() + 0.2, cancelled=None, context=None)
    started = time.monotonic()
    with pytest.raises(Interrupted) as e:
        conn.start(ENDLESS, (), 1)
    assert e.value.reason == "timeout" and time.monotonic() - started < 5
    flag = []
    conn.guard(budget=None, deadline=None, cancelled=lambda: bool(flag), context=None)
    flag.append(1)
    with pytest.raises(Interrupted) as e:
        conn.start(ENDLESS, (), 1)
    assert e.value.reason == "cancel"
    conn.guard(budget=5, deadline=None, cancelled=None, context=None)
    with pytest.raises(BudgetExceeded):
        conn.start(ENDLESS, (), 1)
    conn.guard(budget=None, deadline=None, cancelled=None, context=None)
    assert rows(conn, "select count(*) from t") == [(3,)]  # and it goes on


def test_writes_changes_rowid_and_transactions(side):
    w = side.backend.writer()
    if not side.writable:
        with pytest.raises(NeedsWriter):
            w.start("insert into t(v) values ('x')", (), 1)
        return
    columns, got, handle = w.start("insert into t(v) values (?)", ("four",), 1)
    assert (columns, got, handle) == (None, [], None)
    assert w.changes() == 1 and w.last_insert_rowid() == 4
    w.run("begin")
    assert w.in_transaction()
    w.start("update t set n = 0", (), 1)
    assert w.changes() == 4
    w.run("rollback")
    assert not w.in_transaction()
    reader = side.backend.open_reader()
    assert rows(reader, "select v from t where id = 4") == [("four",)]  # committed: readers see it
    assert rows(reader, "select count(*) from t where n = 0") == [(0,)]  # rolled back: nobody sees it
    assert w.column_decltypes("t") == {"id": "INTEGER", "v": "TEXT", "n": "REAL", "b": "BLOB"}


def test_run_many_counts_and_stops_at_the_first_error(side):
    w = side.backend.writer()
    if not side.writable:
        pytest.skip("a replica's connections are read-only: run_many is the primary's (COPY FROM STDIN)")
    w.run("begin")
    assert w.run_many("insert into t(v, n) values (?, ?)", [("a", 1), ("b", 2), ("c", 3)]) == 3
    with pytest.raises(SqldError) as e:
        w.run_many("insert into t(v) values (?)", [("d",), (None,), ("e",)])
    assert e.value.sqlstate == "23502"
    assert rows(w, "select count(*) from t where v in ('d', 'e')") == [(1,)]  # 'd' ran, 'e' did not
    w.run("rollback")


def test_open_session_connection_or_a_clear_refusal(side):
    if side.name == "libsql":
        own = side.backend.open_session_connection()
        assert own.readonly  # read-only until its session holds the writer
        with pytest.raises(NeedsWriter):
            own.start("create temp table mine(a)", (), 1)
        own.readonly = False
        own.run("create temp table mine(a)")
        with pytest.raises(SqldError):
            side.backend.open_reader().start("select * from mine", (), 1)  # others never see it
    else:
        with pytest.raises(FeatureNotSupported):
            side.backend.open_session_connection()


def test_drop_if_exists_once_a_no_op_still_drops(side):
    """DROP … IF EXISTS of nothing prepares as a read; once the object exists a reader must
    send it to the writer, not run a cached read-only plan (25006 before the fix)."""
    if not side.writable:
        pytest.skip("a replica has no writer to send it to")
    w, reader = side.backend.writer(), side.backend.open_reader()
    for _ in range(2):
        reader.start("drop trigger if exists tr", (), 1)  # nothing to drop: a read
    w.run("create trigger tr after insert on t begin select 1; end")
    rows(reader, "select 1")  # the reader's snapshot moves on
    with pytest.raises(NeedsWriter):
        reader.start("drop trigger if exists tr", (), 1)
    w.run("drop trigger if exists tr")
    assert rows(w, "select count(*) from sqlite_schema where name = 'tr'") == [(0,)]


def test_create_of_a_name_another_connection_dropped(side):
    """A CREATE is prepared against the schema its connection last read: after another
    connection (another process, a session's own connection) dropped the name, the first
    CREATE used to fail with "already exists"."""
    if side.other is None:
        pytest.skip("a replica has no second connection that writes")
    w, other = side.backend.writer(), side.other()
    w.run("create index ix on t(v)")
    other.readonly = False
    other.run("drop index ix")
    w.start("create index ix on t(v)", (), 1)
    other.run("drop index ix")
    w.run("create index ix on t(v)")
    assert rows(w, "select count(*) from sqlite_schema where name = 'ix'") == [(1,)]


def test_optional_abilities_are_attributes_not_probes(side):
    """Callers test ``is None``: every backend has every attribute of the protocol."""
    b = side.backend
    for name in ("capture", "begin_write_after", "backup_source"):
        assert hasattr(b, name), name
    assert (b.begin_write_after is not None, b.backup_source is not None) == \
        {"libsql": (False, False), "mvsqlite": (True, True), "replica": (False, False)}[side.name]
    assert b.writer().epoch == 0 and b.open_reader().epoch == 0
