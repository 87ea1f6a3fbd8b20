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


async def test_a_deferred_violation_is_not_repaired_by_a_groupmate(scheduler):
    """Found by the differential fuzzer: an insert of a child whose parent does not exist
    (deferred FK) and another session's update that points the child at a real parent, in
    one group, committed together — though the insert alone must fail (23503) in every
    serial order. With a deferred constraint in the schema, members commit one by one."""
    async def body():
        admin = await session(scheduler)
        await run(admin, "create table p(id integer primary key)")
        await run(admin, "create table c(id integer primary key, pid integer references p(id) "
                         "deferrable initially deferred)")
        await run(admin, "insert into p values (1)")
        outcomes = await _in_one_group(scheduler, [
            ("insert into c(pid) values (99)", ()),  # no parent: must fail at its COMMIT
            ("update c set pid = 1 where pid = 99", ()),  # would repair it, in the same transaction
        ])
        assert outcomes == ["23503", "UPDATE 0"]
        rows, _ = await run(admin, "select count(*) from c")
        assert rows == [(0,)]

    await with_group(scheduler, body)


async def test_without_the_loop_writes_commit_alone(scheduler):
    admin = await session(scheduler)
    await run(admin, "create table t(v integer)")
    _, tag = await run(admin, "insert into t values (1), (2)")
    assert tag == "INSERT 0 2"
    assert scheduler.group.statements == 0


async def test_defect1_a_sql_function_that_raises_fails_only_its_statement(scheduler):
    """current_setting('nope') inside a grouped INSERT once ended the loop (and the server),
    and its groupmates were told INSERT 0 1 for rows never committed."""

    def broken(st, x):
        raise RuntimeError("a bug in a SQL function")

    scheduler.functions.append(("broken", 1, broken))
    scheduler._install(scheduler.backend.writer())

    async def body():
        admin = await session(scheduler)
        await run(admin, "create table t(id integer primary key, v text)")
        outcomes: dict[int, str] = {}

        async def writer(k: int) -> None:
            s = await session(scheduler)
            value = {0: "current_setting('nope')", 1: "broken(1)"}.get(k % 5, "'ok'")
            try:
                _, tag = await run(s, f"insert into t values ($1, {value})", k)
                outcomes[k] = tag
            except SqldError as exc:
                outcomes[k] = exc.sqlstate

        for _ in range(3):  # the loop keeps going after each group
            outcomes.clear()
            await run(admin, "delete from t")
            async with anyio.create_task_group() as tg:
                for k in range(40):
                    tg.start_soon(writer, k)
            assert {k for k, o in outcomes.items() if o == "42704"} == {k for k in range(40) if k % 5 == 0}
            assert {k for k, o in outcomes.items() if o == "XX000"} == {k for k in range(40) if k % 5 == 1}
            acknowledged = {k for k, o in outcomes.items() if o == "INSERT 0 1"}
            assert acknowledged == {k for k in range(40) if k % 5 > 1}
            rows, _ = await run(admin, "select id from t order by id")
            assert {r[0] for r in rows} == acknowledged
            assert scheduler.group.running
        assert scheduler.group.groups < scheduler.group.statements, "writes were not grouped"

    await with_group(scheduler, body)


async def _in_one_group(scheduler, statements):
    """Run ``statements`` (sql, params) as autocommit writes of separate sessions, queued in
    this order and taken by the loop as one group; returns each one's tag or SQLSTATE."""
    outcomes: list[str | None] = [None] * len(statements)
    sessions = [await session(scheduler) for _ in statements]

    async def one(i: int) -> None:
        sql, params = statements[i]
        try:
            outcomes[i] = (await run(sessions[i], sql, *params))[1]
        except SqldError as exc:
            outcomes[i] = exc.sqlstate

    groups = scheduler.group.groups
    await scheduler.writer_lock.acquire()  # the loop waits here: every write joins the queue first
    async with anyio.create_task_group() as tg:
        for i in range(len(statements)):
            tg.start_soon(one, i)
            await anyio.sleep(0.01)
        scheduler.writer_lock.release()
    assert scheduler.group.groups == groups + 1, "the writes did not run as one group"
    return outcomes


async def test_defect2_a_group_failing_at_commit_reruns_every_member_alone(scheduler):
    """A member whose error came from a groupmate's row (rolled back when the group's COMMIT
    failed on that groupmate's deferred foreign key) kept that error: a valid INSERT got 23505."""

    async def body():
        admin = await session(scheduler)
        await run(admin, "create table p(id integer primary key)")
        await run(admin, "create table u(id integer unique, pid integer references p(id) "
                         "deferrable initially deferred)")
        await run(admin, "insert into p values (1)")
        outcomes = await _in_one_group(scheduler, [
            ("insert into u values (5, 99)", ()),  # breaks the foreign key, at COMMIT only
            ("insert into u values (5, 1)", ()),   # in the group: 23505 on the row above
            ("insert into u values (6, 1)", ()),
        ])
        assert outcomes == ["23503", "INSERT 0 1", "INSERT 0 1"]
        rows, _ = await run(admin, "select id, pid from u order by id")
        assert rows == [(5, 1), (6, 1)]

    await with_group(scheduler, body)


class _FaultyWriter:
    """The writer connection with injected failures: COMMIT failing before it commits (an I/O
    error), and a bug (a Python exception) in the group's own savepoint handling."""

    def __init__(self, conn, rng) -> None:
        self._conn = conn
        self._rng = rng

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def run(self, sql: str) -> None:
        if sql == "commit" and self._rng.random() < 0.15:
            raise SqldError("disk I/O error (injected)", sqlstate="58030")
        if sql == "release sqld_group" and self._rng.random() < 0.01:
            raise RuntimeError("a bug in the group (injected)")
        self._conn.run(sql)


async def test_group_commit_faults_acknowledged_equals_committed(scheduler, backend):
    """Members failing every way at once — a Python exception in a SQL function, its own
    constraint, a groupmate's deferred foreign key at COMMIT, an interrupt, the disk full,
    COMMIT itself failing, a bug in the loop — and still: every write answered INSERT 0 1 is
    in the table, and every write answered with an error is not."""
    import random

    rng = random.Random(1234)

    def broken(st, x):
        raise RuntimeError("a bug in a SQL function")

    scheduler.functions.append(("broken", 1, broken))
    scheduler._install(backend.writer())
    scheduler.group.writer = _FaultyWriter(backend.writer(), rng)

    async def body():
        admin = await session(scheduler)
        await run(admin, "create table p(id integer primary key)")
        await run(admin, "insert into p values (1)")
        await run(admin, "create table t(id integer primary key, pid integer references p(id) "
                         "deferrable initially deferred, b blob)")
        pages = backend.writer().apsw.execute("pragma page_count").fetchall()[0][0]
        authorizer, backend.writer().apsw.authorizer = backend.writer().apsw.authorizer, None  # the sandbox refuses it
        backend.writer().apsw.execute(f"pragma max_page_count = {pages + 400}").fetchall()
        backend.writer().apsw.authorizer = authorizer
        kinds = ["ok"] * 6 + ["dup", "function", "bug", "fk", "timeout", "full"]
        outcomes: dict[int, str] = {}
        next_id = iter(range(1, 10**6))

        async def writer(kind: str) -> None:
            k = next(next_id)
            s = await session(scheduler)
            sql, params = {
                "ok": ("insert into t values ($1, 1, null)", (k,)),
                "dup": ("insert into t values ((select min(id) from t), 1, null)", ()),
                "function": ("insert into t values ($1, 1, current_setting('nope'))", (k,)),
                "bug": ("insert into t values ($1, 1, broken(1))", (k,)),
                "fk": ("insert into t values ($1, 99, null)", (k,)),
                "timeout": ("insert into t select $1, 1, null from (with recursive s(n) as (select 1 union all "
                            "select n + 1 from s where n < 50000000) select n from s) limit 1 offset 40000000", (k,)),
                "full": ("insert into t values ($1, 1, randomblob(3000000))", (k,)),
            }[kind]
            if kind == "timeout":
                s.state.statement_timeout = 0.02
            try:
                _, tag = await run(s, sql, *params)
                outcomes[k] = tag
            except SqldError as exc:
                outcomes[k] = exc.sqlstate

        for _ in range(6):
            async with anyio.create_task_group() as tg:
                for _ in range(30):
                    tg.start_soon(writer, rng.choice(kinds))
                    if rng.random() < 0.2:
                        await anyio.sleep(0.001)
        scheduler.group.writer = backend.writer()
        rows, _ = await run(admin, "select id from t where id > 0")
        committed = {r[0] for r in rows if r[0] in outcomes}
        acknowledged = {k for k, o in outcomes.items() if o == "INSERT 0 1"}
        assert acknowledged == committed
        assert set(outcomes.values()) >= {"INSERT 0 1", "23503", "23505", "42704", "XX000", "57014",
                                          "53100", "58030"}
        assert len(acknowledged) > len(outcomes) / 3
        assert scheduler.group.running
        assert not backend.writer().in_transaction()

    await with_group(scheduler, body)


async def test_defect9_a_failing_replication_capture_never_makes_a_commit_look_failed(tmp_path, monkeypatch):
    """An unexpected exception in the capture's WAL hook made SQLite report the COMMIT that had
    happened as failed, and the group ran its statements again: applied twice."""
    from sqld.backends.libsql import LibsqlBackend
    from sqld.replication.capture import Capture
    from sqld.services.compat import sql_functions
    from sqld.services.scheduler import Scheduler

    backend = LibsqlBackend(tmp_path / "db", replication_log=True)
    backend.open()
    scheduler = Scheduler(backend, functions=sql_functions())

    def fails(self, wal_pages=None):
        raise RuntimeError("a bug in the capture")

    async def body():
        admin = await session(scheduler)
        await run(admin, "create table t(v integer)")
        monkeypatch.setattr(Capture, "capture", fails)
        outcomes = await _in_one_group(scheduler, [("insert into t values ($1)", (k,)) for k in range(5)])
        assert outcomes == ["INSERT 0 1"] * 5
        rows, _ = await run(admin, "select v from t order by v")
        assert rows == [(k,) for k in range(5)]  # each once
        assert backend.capture.broken  # and the log said it cannot follow

    try:
        await with_group(scheduler, body)
    finally:
        backend.close()
