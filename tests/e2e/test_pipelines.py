"""Extended-query batches outside a transaction block are all or nothing (protocol 55.2.3).

PostgreSQL runs the messages up to Sync as one implicit transaction: an error rolls back
everything the batch did, a COMMIT that fails at Sync (a deferred constraint) too, and a
BEGIN inside the batch makes it an explicit transaction holding what ran before it.
asyncpg's executemany, psycopg's pipeline mode and pgjdbc batches rely on it.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from sqld.pgwire import messages as m
from tests.rawclient import RawClient, kinds


def _count(server, table) -> int:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        return c.execute(f"select count(*) from {table}").fetchone()[0]


def test_defect3_asyncpg_executemany_is_all_or_nothing(sqld_server, table_name):
    async def main():
        c = await asyncpg.connect(host=sqld_server.host, port=sqld_server.port, user="tester", database="main")
        try:
            await c.execute(f"create table {table_name}(v integer primary key)")
            with pytest.raises(asyncpg.UniqueViolationError):
                await c.executemany(f"insert into {table_name} values ($1)", [(1,), (2,), (2,), (3,)])
            assert await c.fetchval(f"select count(*) from {table_name}") == 0  # PostgreSQL leaves 0
            await c.executemany(f"insert into {table_name} values ($1)", [(k,) for k in range(1000)])
            assert await c.fetchval(f"select count(*) from {table_name}") == 1000
        finally:
            await c.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_psycopg_pipeline_error_rolls_back_the_batch(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(v integer primary key)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with c.pipeline():
                c.execute(f"insert into {table_name} values (%s)", (1,))
                c.execute(f"insert into {table_name} values (%s)", (1,))
                c.execute(f"insert into {table_name} values (%s)", (2,))
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (0,)
        with c.pipeline():
            for k in range(50):
                c.execute(f"insert into {table_name} values (%s)", (k,))
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (50,)


def _insert(name: str, table: str, value: int):
    return (m.Parse(name, f"insert into {table} values ({value})"), m.Bind("", name, (), (), ()), m.Execute(""))


@pytest.fixture
def raw(sqld_server):
    c = RawClient(sqld_server.host, sqld_server.port)
    yield c
    c.close()


def test_an_error_in_a_raw_batch_undoes_what_ran_before_it(raw, sqld_server, table_name):
    raw.query(f"create table {table_name}(v integer primary key)")
    raw.send(*_insert("", table_name, 1), *_insert("", table_name, 1), *_insert("", table_name, 2), m.Sync())
    out = raw.until_ready()
    assert kinds(out) == ["ParseComplete", "BindComplete", "CommandComplete", "ParseComplete", "BindComplete",
                          "ErrorResponse", "ReadyForQuery"]
    assert out[-2].sqlstate == "23505"
    assert out[-1].status == b"I"
    assert _count(sqld_server, table_name) == 0
    raw.send(*_insert("", table_name, 7), m.Sync())  # a lone statement still commits alone
    assert kinds(raw.until_ready())[-1] == "ReadyForQuery"
    assert _count(sqld_server, table_name) == 1


def test_a_deferred_constraint_failing_at_sync_is_an_error_and_undoes_the_batch(raw, sqld_server, table_name):
    raw.query(f"create table {table_name}_p(id integer primary key)")
    raw.query(f"create table {table_name}(v integer references {table_name}_p(id) deferrable initially deferred)")
    raw.send(*_insert("", f"{table_name}_p", 1), *_insert("", table_name, 1), *_insert("", table_name, 2), m.Sync())
    out = raw.until_ready()
    assert kinds(out)[-2:] == ["ErrorResponse", "ReadyForQuery"]
    assert out[-2].sqlstate == "23503"
    assert out[-1].status == b"I"
    assert _count(sqld_server, table_name) == 0
    assert _count(sqld_server, f"{table_name}_p") == 0


def test_begin_inside_a_batch_makes_it_explicit(raw, sqld_server, table_name):
    raw.query(f"create table {table_name}(v integer)")
    raw.send(*_insert("", table_name, 1), m.Parse("", "begin"), m.Bind("", "", (), (), ()), m.Execute(""),
             *_insert("", table_name, 2), m.Sync())
    out = raw.until_ready()
    assert out[-1].status == b"T"  # still open after Sync, holding both inserts
    raw.query("rollback")
    assert _count(sqld_server, table_name) == 0


def test_a_batch_waits_for_its_sync_to_commit(raw, sqld_server, table_name):
    raw.query(f"create table {table_name}(v integer)")
    raw.send(*_insert("", table_name, 1), m.Flush())
    assert kinds([raw.recv() for _ in range(3)]) == ["ParseComplete", "BindComplete", "CommandComplete"]
    assert _count(sqld_server, table_name) == 0  # not committed before Sync
    raw.send(m.Sync())
    assert raw.until_ready()[-1].status == b"I"
    assert _count(sqld_server, table_name) == 1


def test_a_batch_through_a_replica_is_all_or_nothing_on_the_primary(start_sqld, tmp_path, table_name):
    from tests.replication.test_replica import replica_of, wait_caught_up

    primary = start_sqld("--replication-log", db_path=tmp_path / "p")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(v integer primary key)")
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "r")
    wait_caught_up(replica, primary)

    async def main():
        c = await asyncpg.connect(host=replica.host, port=replica.port, user="tester", database="main")
        try:
            with pytest.raises(asyncpg.UniqueViolationError):
                await c.executemany(f"insert into {table_name} values ($1)", [(1,), (2,), (2,), (3,)])
            await c.executemany(f"insert into {table_name} values ($1)", [(k,) for k in range(10, 20)])
            return await c.fetchval(f"select count(*) from {table_name}")  # read your writes
        finally:
            await c.close()

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 10
    assert _count(primary, table_name) == 10


def test_defect9_a_portal_read_after_its_transaction_committed_does_not_exist(raw, table_name):
    """A suspended portal executed after COMMIT in the same batch read on from a reader
    already back in the pool, and silently stopped short (SELECT 3 of 500 rows). PostgreSQL
    drops the portal at COMMIT: 34000."""
    raw.query(f"create table {table_name}(v integer)")
    raw.query(f"insert into {table_name} with recursive s(n) as (select 1 union all select n + 1 from s "
              "where n < 500) select n from s")
    raw.query("begin")
    raw.send(m.Parse("", f"select v from {table_name} order by v"), m.Bind("", "", (), (), ()), m.Execute("", 2),
             m.Parse("c", "commit"), m.Bind("c", "c", (), (), ()), m.Execute("c"), m.Execute("", 0), m.Sync())
    out = raw.until_ready()
    assert kinds(out) == ["ParseComplete", "BindComplete", "DataRow", "DataRow", "PortalSuspended",
                          "ParseComplete", "BindComplete", "CommandComplete", "ErrorResponse", "ReadyForQuery"]
    assert out[-2].sqlstate == "34000"
    assert out[-1].status == b"I"
    assert kinds(raw.query("select 1")) == ["RowDescription", "DataRow", "CommandComplete", "ReadyForQuery"]
