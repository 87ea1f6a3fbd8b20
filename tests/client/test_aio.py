"""The async client: the same semantics as the sync one, from anyio tasks."""

from __future__ import annotations

import anyio
import pytest

import sqld.client as client
from sqld.client import aio

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_async_round_trip_and_transactions(sqld_url):
    conn = await aio.connect(":memory:")
    await conn.execute("create table t(id integer primary key, v)")
    async with conn:
        await conn.executemany("insert into t(v) values (?)", [(1,), (2.5,), ("x",), (b"\x00",), (None,)])
        assert conn.in_transaction
    assert not conn.in_transaction
    cur = await conn.execute("select v from t order by id")
    assert [row async for row in cur] == [(1,), (2.5,), ("x",), (b"\x00",), (None,)]
    await conn.execute("insert into t(v) values (?)", ("rolled back",))
    await conn.rollback()
    assert await (await conn.execute("select count(*) from t")).fetchone() == (5,)
    with pytest.raises(client.IntegrityError):
        await conn.execute("insert into t(id) values (1)")
    await conn.close()


async def test_many_tasks_share_a_database(sqld_url):
    setup = await aio.connect("aio_shared.db", isolation_level=None)
    await setup.execute("drop table if exists n")
    await setup.execute("create table n(task integer, i integer)")

    async def worker(k: int) -> None:
        conn = await aio.connect("aio_shared.db", isolation_level=None)
        for i in range(10):
            await conn.execute("insert into n values (?, ?)", (k, i))
        await conn.close()

    async with anyio.create_task_group() as tg:
        for k in range(8):
            tg.start_soon(worker, k)
    assert await (await setup.execute("select count(*), count(distinct task) from n")).fetchone() == (80, 8)
    await setup.close()
