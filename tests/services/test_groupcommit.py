"""Group commit on a real SQLite file: batching, per-statement errors, interrupts, deferred FKs."""

from __future__ import annotations

import anyio
import pytest

from sqld.errors import SqldError
from tests.services.conftest import run, session

pytestmark = pytest.mark.anyio

LONG_INSERT = ("insert into t(v) select n from (with recursive s(n) as (select 1 union all select n + 1 "
               "from s where n < 50000000) select n from s)")


async def with_group(scheduler, body):
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        await anyio.sleep(0)
        try:
            await body()
        finally:
            tg.cancel_scope.cancel()


async def test_concurrent_writes_share_commits_and_fail_alone(scheduler):
    async def body():
        admin = await session(scheduler)
        await run(admin, "create table t(id integer primary key, v integer)")
        await run(admin, "insert into t values (1000, 0)")
        outcomes: dict[int, str] = {}

        async def writer(k: int) -> None:
            s = await session(scheduler)
            key = 1000 if k % 7 == 0 else k  # every 7th collides with the existing row
            try:
                _, tag = await run(s, "insert into t values ($1, $2)", key, k)
                outcomes[k] = tag
            except SqldError as exc:
                outcomes[k] = exc.sqlstate

        async with anyio.create_task_group() as tg:
            for k in range(1, 61):
                tg.start_soon(writer, k)
        failed = [k for k, o in outcomes.items() if o == "23505"]
        assert failed == [k for k in range(1, 61) if k % 7 == 0]
        assert all(outcomes[k] == "INSERT 0 1" for k in range(1, 61) if k % 7)
        rows, _ = await run(admin, "select count(*) from t")
        assert rows == [(1 + 60 - len(failed),)]
        assert scheduler.group.groups < scheduler.group.statements, "writes were not grouped"

    await with_group(scheduler, body)


async def test_interrupted_statement_does_not_lose_its_group(scheduler):
    async def body():
        admin = await session(scheduler)
        await run(admin, "create table t(id integer primary key, v integer)")
        victim = await session(scheduler)
        results: dict[str, object] = {}

        async def long_one() -> None:
            victim.state.statement_timeout = 0.05
            try:
                await run(victim, LONG_INSERT)
                results["long"] = "ran"
            except SqldError as exc:
                results["long"] = exc.sqlstate

        async def short_one(k: int) -> None:
            s = await session(scheduler)
            _, tag = await run(s, "insert into t(v) values ($1)", k)
            results[k] = tag

        async with anyio.create_task_group() as tg:
            tg.start_soon(short_one, 1)
            tg.start_soon(long_one)
            for k in range(2, 6):
                tg.start_soon(short_one, k)
        assert results["long"] == "57014"
        assert all(results[k] == "INSERT 0 1" for k in range(1, 6))
        rows, _ = await run(admin, "select v from t order by v")
        assert rows == [(k,) for k in range(1, 6)]

    await with_group(scheduler, body)


async def test_deferred_foreign_key_failure_at_commit_fails_only_its_statement(scheduler):
    async def body():
        admin = await session(scheduler)
        await run(admin, "create table p(id integer primary key)")
        await run(admin, "create table c(pid integer references p(id) deferrable initially deferred)")
        await run(admin, "insert into p values (1)")
        results: dict[int, str] = {}

        async def child(k: int, pid: int) -> None:
            s = await session(scheduler)
            try:
                _, tag = await run(s, "insert into c values ($1)", pid)
                results[k] = tag
            except SqldError as exc:
                results[k] = exc.sqlstate

        async with anyio.create_task_group() as tg:
            for k in range(6):
                tg.start_soon(child, k, 99 if k == 3 else 1)
        assert results[3] == "23503"
        assert [results[k] for k in (0, 1, 2, 4, 5)] == ["INSERT 0 1"] * 5
        rows, _ = await run(admin, "select count(*) from c")
        assert rows == [(5,)]

    await with_group(scheduler, body)


async def test_without_the_loop_writes_commit_alone(scheduler):
    admin = await session(scheduler)
    await run(admin, "create table t(v integer)")
    _, tag = await run(admin, "insert into t values (1), (2)")
    assert tag == "INSERT 0 2"
    assert scheduler.group.statements == 0
