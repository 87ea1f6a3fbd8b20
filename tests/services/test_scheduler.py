"""The scheduler on a real SQLite file: routing, transactions, snapshots, peeks, cancels."""

from __future__ import annotations

import anyio
import pytest

from sqld.errors import SqldError
from sqld.services.base import Describe, Peek, Terminate
from sqld.sqltext import parse_one
from tests.services.conftest import run, session

pytestmark = pytest.mark.anyio


async def test_reads_run_on_readers_while_a_transaction_holds_the_writer(scheduler):
    a = await session(scheduler)
    b = await session(scheduler)
    await run(a, "create table t(v integer)")
    await run(a, "begin")
    await run(a, "insert into t values (1)")
    assert scheduler.writer_lock.locked()
    with anyio.fail_after(2):
        assert (await run(b, "select count(*) from t"))[0] == [(0,)]  # not blocked, old snapshot
    await run(a, "commit")
    assert not scheduler.writer_lock.locked()
    assert (await run(b, "select count(*) from t"))[0] == [(1,)]


async def test_autocommit_write_waits_for_a_writing_transaction(scheduler):
    a = await session(scheduler)
    b = await session(scheduler)
    await run(a, "create table t(v integer)")
    await run(a, "begin")
    await run(a, "insert into t values (1)")
    done = anyio.Event()

    async def write() -> None:
        await run(b, "insert into t values (2)")
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        await anyio.sleep(0.2)
        assert not done.is_set()
        await run(a, "commit")
    assert (await run(b, "select v from t order by v"))[0] == [(1,), (2,)]


async def test_terminate_rolls_back_and_frees_the_writer(scheduler):
    a = await session(scheduler)
    await run(a, "create table t(v integer)")
    await run(a, "begin")
    await run(a, "insert into t values (1)")
    await a(Terminate())
    assert not scheduler.writer_lock.locked()
    b = await session(scheduler)
    assert (await run(b, "select count(*) from t"))[0] == [(0,)]


async def test_stale_read_then_write_is_a_serialization_failure(scheduler):
    a = await session(scheduler)
    b = await session(scheduler)
    await run(a, "create table t(v integer)")
    await run(a, "begin")
    await run(a, "select count(*) from t")
    await run(b, "insert into t values (1)")
    with pytest.raises(SqldError) as info:
        await run(a, "insert into t values (2)")
    assert info.value.sqlstate == "40001"
    assert a.status == b"E"
    await run(a, "rollback")
    # without a commit in between, the same transaction moves to the writer
    await run(a, "begin")
    assert (await run(a, "select count(*) from t"))[0] == [(1,)]
    await run(a, "insert into t values (2)")
    await run(a, "commit")
    assert (await run(b, "select count(*) from t"))[0] == [(2,)]


async def test_describe_resolves_parameter_and_expression_types(scheduler):
    a = await session(scheduler)
    await run(a, "create table t(id integer primary key, name text, score real)")
    desc = await a(Describe(parse_one("select id * 2, name || '!', score + 1, count(*) from t where name = $1 and id > $2")))
    assert desc.param_decltypes == ("TEXT", "INTEGER")
    assert [c.decltype for c in desc.info.columns] == ["INTEGER", "TEXT", "REAL", "INTEGER"]
    assert await a(Peek(parse_one("select 1 + 1, 'x'"))) == (2, "x")
    assert await a(Peek(parse_one("insert into t(name) values ('no')"))) is None


async def test_cancel_flag_interrupts_a_read_on_a_thread(scheduler):
    a = await session(scheduler)
    slow = "with recursive s(n) as (select 1 union all select n + 1 from s where n < 100000000) select count(*) from s"

    async def cancel_soon() -> None:
        await anyio.sleep(0.2)
        assert a.state.executing
        a.state.cancel_requested = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_soon)
        with pytest.raises(SqldError) as info:
            await run(a, slow)
    assert info.value.sqlstate == "57014"
    assert (await run(a, "select 5"))[0] == [(5,)]
