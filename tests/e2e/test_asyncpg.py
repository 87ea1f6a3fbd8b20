"""asyncpg against a real sqld: binary formats, statements described before binding."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connect(server):
    return await asyncpg.connect(host=server.host, port=server.port, user="tester", database="main")


def test_types_and_parameter_inference(sqld_server, table_name):
    async def main():
        c = await connect(sqld_server)
        await c.execute(f"create table {table_name}(id integer primary key, i integer, r real, s text, b blob, ok boolean)")
        rows = [(2**63 - 1, 1.5, "hé", b"\x00\x01", True), (-(2**63), -0.0, "", b"", False), (None, None, None, None, None)]
        await c.executemany(f"insert into {table_name}(i, r, s, b, ok) values ($1, $2, $3, $4, $5)", rows)
        got = await c.fetch(f"select i, r, s, b, ok from {table_name} order by id")
        assert [tuple(r) for r in got] == rows
        assert await c.fetchval(f"select s from {table_name} where i = $1", 2**63 - 1) == "hé"
        assert await c.fetchval(f"select count(*) from {table_name} where r > $1", 0.0) == 1
        assert await c.fetchval(f"select i from {table_name} where s = $1 and b = $2", "", b"") == -(2**63)
        assert await c.fetchval(f"select count(*) from {table_name} where id < $1 limit $2", 10, 5) == 3
        assert await c.fetchval("select $1::int8 + 1", 41) == 42
        assert await c.fetchrow("select 1+1 as two, 'a' as a, x'00' as z, 2.5 as f") == (2, "a", b"\x00", 2.5)
        await c.close()
    run(main())


def test_transactions_and_errors(sqld_server, table_name):
    async def main():
        a = await connect(sqld_server)
        b = await connect(sqld_server)
        await a.execute(f"create table {table_name}(id integer primary key)")
        async with a.transaction():
            await a.execute(f"insert into {table_name} values (1)")
            assert await b.fetchval(f"select count(*) from {table_name}") == 0
        assert await b.fetchval(f"select count(*) from {table_name}") == 1
        with pytest.raises(asyncpg.exceptions.UniqueViolationError):
            async with a.transaction():
                await a.execute(f"insert into {table_name} values (2)")
                await a.execute(f"insert into {table_name} values (1)")
        assert await b.fetchval(f"select count(*) from {table_name}") == 1
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            await a.fetch("select * from missing_table_xyz")
        assert await a.fetchval("select 7") == 7
        await a.close()
        await b.close()
    run(main())


def test_prepared_statement_reuse_and_cursor(sqld_server, table_name):
    async def main():
        c = await connect(sqld_server)
        await c.execute(f"create table {table_name}(n integer)")
        ins = await c.prepare(f"insert into {table_name} values ($1)")
        for i in range(50):
            await ins.fetch(i)
        sel = await c.prepare(f"select n from {table_name} where n >= $1 order by n")
        assert [r[0] for r in await sel.fetch(45)] == [45, 46, 47, 48, 49]
        async with c.transaction():
            seen = [r[0] async for r in c.cursor(f"select n from {table_name} order by n", prefetch=7)]
        assert seen == list(range(50))
        await c.close()
    run(main())


def test_pool_reset_and_settings(sqld_server):
    async def main():
        pool = await asyncpg.create_pool(host=sqld_server.host, port=sqld_server.port, user="tester",
                                         database="main", min_size=1, max_size=2)
        for _ in range(5):
            async with pool.acquire() as c:
                await c.execute("set application_name = 'pooled'")
                assert await c.fetchval("select current_setting('application_name')") == "pooled"
        async with pool.acquire() as c:
            # the pool's reset (RESET ALL) ran when the connection was released
            assert await c.fetchval("show application_name") == ""
        await pool.close()
    run(main())
