"""The SQL sandbox: nothing reaches the server's files or process through SQL (42501);
everything else SQLite offers keeps working."""

from __future__ import annotations

import psycopg
import pytest

REFUSED = [
    "attach '{tmp}/other.db' as other",
    "vacuum into '{tmp}/copy.db'",
    "select load_extension('{tmp}/evil.so')",
    "pragma journal_mode = delete",
    "pragma synchronous = off",
    "pragma locking_mode = exclusive",
    "pragma writable_schema = on",
    "pragma wal_checkpoint",
    "pragma wal_checkpoint(truncate)",
    "pragma mmap_size = 1000000",
    "pragma wal_autocheckpoint = 1",
    "pragma temp_store_directory = '{tmp}'",
    "attach '{tmp}/other.db' || '' as other",  # a name known only at run time reaches the authorizer as NULL
    "attach x'2f746d702f782e6462' as other",
    "attach ':memory:' as scratch",  # would stay attached to a shared connection
    "pragma main.journal_mode = delete",
    "pragma page_size = 8192",  # settings of the file, which is everyone's
    "pragma auto_vacuum = full",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused(sqld_server, tmp_path, sql):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(sql.format(tmp=tmp_path))
        if not sql.startswith("vacuum"):  # VACUUM cannot run in a transaction at all
            c.execute("begin")  # inside a transaction (on the writer) too
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql.format(tmp=tmp_path))
            c.execute("rollback")
    assert not list(tmp_path.iterdir())  # nothing was created


def test_everything_else_works(sqld_server, table_name):
    t = table_name
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {t}(id integer primary key, doc text, n integer)")
        c.execute(f"create view {t}_v as select id, json_extract(doc, '$.a') as a from {t}")
        c.execute(f"create table {t}_log(id)")
        c.execute(f"create trigger {t}_tr after insert on {t} begin insert into {t}_log values (new.id); end")
        c.execute(f"insert into {t}(doc, n) values ('{{\"a\": 1}}', 5), ('{{\"a\": 2}}', 7)")
        assert c.execute(f"select a from {t}_v order by id").fetchall() == [(1,), (2,)]
        assert c.execute(f"select count(*) from {t}_log").fetchone() == (2,)
        assert c.execute(f"with recursive r(i) as (select 1 union all select i + 1 from r where i < 5) "
                         f"select sum(i) from r").fetchone() == (15,)
        assert c.execute(f"select id, sum(n) over (order by id) from {t}").fetchall() == [(1, 5), (2, 12)]
        c.execute(f"create virtual table {t}_fts using fts5(body)")
        c.execute(f"insert into {t}_fts values ('the quick brown fox')")
        assert c.execute(f"select count(*) from {t}_fts where {t}_fts match 'quick'").fetchone() == (1,)
        assert [r[1] for r in c.execute(f"pragma table_info({t})")] == ["id", "doc", "n"]
        assert c.execute("pragma journal_mode").fetchone() == ("wal",)  # reading a pragma is fine
        assert c.execute("pragma foreign_keys").fetchone() == (1,)  # the server's --foreign-keys
        c.execute(f"vacuum")  # plain VACUUM (its scratch database is the one ATTACH allowed)


def test_an_administrator_may_allow_it(start_sqld, tmp_path):
    server = start_sqld("--allow-unsafe-sql", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table t(x)")
        c.execute(f"vacuum into '{tmp_path}/copy.db'")
        c.execute("pragma mmap_size = 0")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the replication log still needs WAL
            c.execute("begin")
            c.execute("pragma journal_mode = delete")
    assert (tmp_path / "copy.db").exists()


def test_attach_by_parameter_is_refused(sqld_server, tmp_path):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("attach %s as other", (str(tmp_path / "p.db"),))
    assert not list(tmp_path.iterdir())


INTROSPECTION = ["pragma table_info({t})", "pragma table_xinfo({t})", "pragma index_list({t})",
                 "pragma foreign_key_list({t})", "pragma foreign_key_check", "pragma integrity_check",
                 "pragma quick_check", "pragma compile_options", "pragma function_list", "pragma pragma_list",
                 "pragma collation_list", "pragma module_list", "pragma schema_version", "pragma user_version",
                 "pragma data_version", "pragma freelist_count", "pragma page_count", "pragma page_size",
                 "pragma encoding", "pragma application_id", "pragma foreign_keys", "pragma cache_size",
                 "pragma journal_mode", "pragma synchronous", "pragma auto_vacuum", "pragma database_list"]


def test_introspection_pragmas_answer(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text)")
        for sql in INTROSPECTION:
            c.execute(sql.format(t=table_name)).fetchall()


def test_defect11_temp_objects_and_connection_pragmas_get_a_connection_of_their_own(sqld_server, table_name):
    """Temp tables, temp views and connection pragmas were refused (42501) because sessions
    share pooled connections; a session that makes one now gets a connection of its own, and
    SQLite's semantics hold: the object or setting is the session's, nobody else's."""
    t = table_name
    dsn = sqld_server.dsn()
    with psycopg.connect(dsn, autocommit=True) as a, psycopg.connect(dsn, autocommit=True) as b:
        b.execute(f"create table {t}(id integer primary key, v text)")
        b.execute(f"create table {t}_p(id integer primary key)")
        b.execute(f"create table {t}_c(pid integer references {t}_p(id))")
        a.execute(f"create temp table {t}(id integer primary key, v text)")  # shadows the main one, for a only
        a.execute(f"insert into {t} values (1, 'temp')")
        b.execute(f"insert into {t} values (1, 'main')")
        assert a.execute(f"select v from {t}").fetchall() == [("temp",)]
        assert a.execute(f"select v from main.{t}").fetchall() == [("main",)]
        assert b.execute(f"select v from {t}").fetchall() == [("main",)]
        a.execute(f"create temp view {t}_v as select 42 as answer")  # sqllogictest's slt_lang_createview
        assert a.execute(f"select answer from {t}_v").fetchone() == (42,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute(f"select * from {t}_v")
        a.execute("pragma foreign_keys = off")
        a.execute(f"insert into {t}_c values (99)")  # a's setting …
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            b.execute(f"insert into {t}_c values (98)")  # … not b's
        assert a.execute("pragma foreign_keys").fetchone() == (0,)
        assert b.execute("pragma foreign_keys").fetchone() == (1,)
        # a writes to main tables on its own connection, in turn with everyone else's writes
        with a.transaction():
            a.execute(f"insert into main.{t} values (2, 'from a')")
        assert b.execute(f"select v from {t} where id = 2").fetchone() == ("from a",)
        # a transaction on it that read, then another session committed: 40001, as elsewhere
        a.execute("begin")
        a.execute(f"select count(*) from main.{t}").fetchone()
        b.execute(f"insert into {t} values (3, 'b')")
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute(f"insert into main.{t} values (4, 'a')")
        a.execute("rollback")
    with psycopg.connect(dsn, autocommit=True) as c:  # the session's objects end with it
        assert c.execute(f"select v from {t} order by id").fetchall() == [("main",), ("from a",), ("b",)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute(f"select * from {t}_v")
        c.execute("begin")  # the first statement of a transaction may be the one
        c.execute(f"create temp table {t}_tx(x)")
        c.execute(f"insert into {t}_tx values (1)")
        c.execute("commit")
        assert c.execute(f"select count(*) from {t}_tx").fetchone() == (1,)


def test_a_session_on_its_own_connection_writes_alongside_group_commits(sqld_server, table_name):
    import threading

    t = table_name
    dsn = sqld_server.dsn()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"create table {t}(who text, k integer)")
    errors: list[Exception] = []

    def write(who: str, own: bool) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                if own:
                    c.execute("pragma recursive_triggers = on")
                for k in range(40):
                    c.execute(f"insert into {t} values (%s, %s)", (who, k))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"w{i}", i % 2 == 0)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute(f"select count(*) from {t}").fetchone() == (240,)


def test_writes_on_a_sessions_own_connection_reach_replicas(start_sqld, tmp_path):
    from tests.replication.test_replica import replica_of, wait_caught_up

    primary = start_sqld(db_path=tmp_path / "p")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table t(k integer primary key, v text)")
        c.execute("pragma recursive_triggers = on")  # from here on, this session's own connection
        c.execute("create temp table scratch(x)")
        for k in range(50):
            c.execute("insert into t values (%s, %s)", (k, "x" * (k * 50)))
        with c.transaction():
            c.execute("update t set v = v || '!' where k % 3 = 0")
            c.execute("insert into scratch values (1)")
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "r")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("pragma foreign_keys = on")
        c.execute("delete from t where k >= 40")  # streamed, not in the bootstrap snapshot
    import time

    deadline = time.monotonic() + 10  # no other commit follows: the own connection's reached the log itself
    with psycopg.connect(replica.dsn(), autocommit=True) as r:
        while r.execute("select count(*) from t").fetchone() != (40,) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.execute("select count(*) from t").fetchone() == (40,)
    wait_caught_up(replica, primary)
    q = "select k, v from t order by k"
    with psycopg.connect(primary.dsn()) as p, psycopg.connect(replica.dsn()) as r:
        assert r.execute(q).fetchall() == p.execute(q).fetchall()
        assert len(r.execute(q).fetchall()) == 40
