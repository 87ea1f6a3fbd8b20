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
    "create temp table shadow(id, v)",  # would catch other sessions' writes to a table of that name
    "create temp view shadow_v as select 1",
    "pragma ignore_check_constraints = 1",  # connection settings reach every session of that connection
    "pragma max_page_count = 1",
    "pragma foreign_keys = off",
    "pragma recursive_triggers = on",
    "pragma main.journal_mode = delete",
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
