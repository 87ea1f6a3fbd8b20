"""Serializable across processes: two mvsqlite backends (two sqld processes) on one simulated
FDB database, through the scheduler (reads on a reader, the first write moves to the writer)."""

from __future__ import annotations

import random
import threading

import anyio
import pytest

from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.errors import SqldError
from sqld.services.compat import sql_functions
from sqld.services.scheduler import Scheduler
from tests.services.conftest import run, session

pytestmark = pytest.mark.anyio

ACCOUNTS = 10
START = 1000


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def two():
    """Two backends (two processes) on one simulated database, each with its scheduler."""
    fdb = SimDatabase(seed=4, backoff=False)
    backends = [MvsqliteBackend(fdb, b"test/ser/", gc_interval=None) for _ in range(2)]
    for b in backends:
        b.open()
    yield fdb, backends, [Scheduler(b, functions=sql_functions()) for b in backends]
    for b in backends:
        b.close()


async def _sqlstate(coro) -> str | None:
    try:
        await coro
    except SqldError as exc:
        return exc.sqlstate
    return None


async def test_defect4_a_read_then_write_transaction_does_not_lose_another_process_update(two):
    """Process A: BEGIN; SELECT n (0). Process B: n = n + 1. A writes what it read plus one and
    commits: B's update was lost, because A's write started a fresh FDB snapshot and only this
    process's commits were checked. Now A continues its reader's snapshot: 40001."""
    _, _, (sa, sb) = two
    admin = await session(sa)
    await run(admin, "create table c(id integer primary key, n integer)")
    await run(admin, "insert into c values (1, 0)")
    a, b = await session(sa), await session(sb)
    await run(a, "begin")
    (n,), = (await run(a, "select n from c where id = 1"))[0]
    assert n == 0
    await run(b, "update c set n = n + 1 where id = 1")
    state = await _sqlstate(run(a, "update c set n = ? where id = 1", n + 1))
    if state is None:
        state = await _sqlstate(run(a, "commit"))
    else:
        await run(a, "rollback")
    assert state == "40001"
    assert (await run(await session(sb), "select n from c"))[0] == [(1,)]


async def test_defect4_write_skew_across_processes_through_a_warm_reader_cache(two):
    """A reads x and writes y; B reads y and writes x, both from snapshots before either
    committed: one of them must fail. B's read of y is served from its reader's SQLite page
    cache (warmed before, nothing changed since), so the VFS never saw it: it counts as read."""
    _, _, (sa, sb) = two
    admin = await session(sa)
    await run(admin, "create table x(id integer primary key, v integer)")
    await run(admin, "create table y(id integer primary key, v integer)")
    await run(admin, "insert into x values (1, 0)")
    await run(admin, "insert into y values (1, 0)")
    a, b = await session(sa), await session(sb)
    assert (await run(b, "select v from y"))[0] == [(0,)]  # warms B's reader
    await run(b, "begin")
    (y,), = (await run(b, "select v from y"))[0]
    await run(a, "begin")
    (x,), = (await run(a, "select v from x"))[0]
    await run(a, "update y set v = ?", x + 1)
    await run(a, "commit")
    state = await _sqlstate(run(b, "update x set v = ?", y + 1))
    if state is None:
        state = await _sqlstate(run(b, "commit"))
    else:
        await run(b, "rollback")
    assert state == "40001"
    reader = await session(sa)
    assert (await run(reader, "select (select v from x), (select v from y)"))[0] == [(0, 1)]


async def test_defect4_a_read_snapshot_past_fdbs_5s_cannot_become_a_write(two):
    """A read transaction older than 5 s read on in fresh FDB transactions (its conflict
    ranges are gone): its first write is refused at once with 40001, not committed blind."""
    fdb, _, (sa, sb) = two
    admin = await session(sb)  # the other process: A's page cache does not hold these pages
    await run(admin, "create table c(id integer primary key, n integer)")
    await run(admin, "insert into c values (1, 0)")
    await run(admin, "create table d(id integer primary key, n integer)")
    a = await session(sa)
    await run(a, "begin")
    await run(a, "select n from c")
    fdb.advance(6)
    assert (await run(a, "select count(*) from d"))[0] == [(0,)]  # a page not read yet: FDB's 1007
    assert await _sqlstate(run(a, "update c set n = 5")) == "40001"
    await run(a, "rollback")
    await run(a, "update c set n = 5")
    assert (await run(a, "select n from c"))[0] == [(5,)]


async def test_bank_transfers_read_then_write_across_two_processes_through_the_scheduler(two):
    """BEGIN; SELECT both balances; UPDATE both; INSERT into the ledger; COMMIT, from sessions
    of two processes at once, retried on 40001: the total never changes, the ledger holds
    every acknowledged transfer once and nothing else, and the balances are its sum."""
    fdb, _, (sa, sb) = two
    admin = await session(sa)
    await run(admin, "create table acct(id integer primary key, balance integer not null)")
    await run(admin, "create table ledger(id integer primary key, src, dst, amount)")
    await run(admin, "begin")
    for i in range(ACCOUNTS):
        await run(admin, "insert into acct values (?, ?)", i, START)
    await run(admin, "commit")
    done: list[tuple] = []
    retries = 0

    async def transfers(scheduler, seed: int, n: int) -> None:
        nonlocal retries
        rng = random.Random(seed)
        s = await session(scheduler)
        for _ in range(n):
            src, dst = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            while True:
                try:
                    await run(s, "begin")
                    (bal_src,), = (await run(s, "select balance from acct where id = ?", src))[0]
                    await anyio.sleep(0)  # let the other process in between the read and the write
                    (bal_dst,), = (await run(s, "select balance from acct where id = ?", dst))[0]
                    await run(s, "update acct set balance = ? where id = ?", bal_src - amount, src)
                    await run(s, "update acct set balance = ? where id = ?", bal_dst + amount, dst)
                    await run(s, "insert into ledger(src, dst, amount) values (?, ?, ?)", src, dst, amount)
                    await run(s, "commit")
                    done.append((src, dst, amount))
                    break
                except SqldError as exc:
                    assert exc.sqlstate == "40001", exc
                    retries += 1
                    await run(s, "rollback")

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for k in range(6):
                tg.start_soon(transfers, (sa, sb)[k % 2], k, 40)
    assert len(done) == 240 and retries > 0
    for scheduler in (sa, sb):
        check = await session(scheduler)
        balances = dict((await run(check, "select id, balance from acct"))[0])
        assert sum(balances.values()) == ACCOUNTS * START
        ledger = (await run(check, "select src, dst, amount from ledger"))[0]
        assert sorted(ledger) == sorted(done)
        expected = {i: START for i in range(ACCOUNTS)}
        for src, dst, amount in ledger:
            expected[src] -= amount
            expected[dst] += amount
        assert balances == expected


def test_defect5_own_commit_never_moves_a_cached_page_back_in_time():
    """Process A commits page P at C1; before A records that in its page cache, process B
    commits P at C2 > C1 and another thread of A reads P at C2 (the cache holds C2). A then
    overwrote the entry with its own older C1 image: a later write based on it committed
    without conflict, and B's update was lost."""
    fdb = SimDatabase(seed=5, backoff=False)
    a = MvsqliteBackend(fdb, b"test/cache/", gc_interval=None)
    b = MvsqliteBackend(fdb, b"test/cache/", gc_interval=None)
    a.open()
    b.open()
    try:
        w = a.writer()
        w.run("create table c(id integer primary key, n integer)")
        w.start("insert into c values (1, 0)", (), 10)
        cache = a.store.cache
        original = cache.own_commit
        armed = [True]

        def late_own_commit(pages, commit):
            if armed[0]:
                armed[0] = False

                def meanwhile():  # B commits, and another thread of A reads the newer page
                    b.writer().start("update c set n = n + 10 where id = 1", (), 10)
                    _, got, _ = a.open_reader().start("select n from c", (), 10)
                    assert got == [(11,)]

                t = threading.Thread(target=meanwhile)
                t.start()
                t.join(30)
            original(pages, commit)

        cache.own_commit = late_own_commit
        w.start("update c set n = n + 1 where id = 1", (), 10)  # C1: n = 1, then B: n = 11
        assert not armed[0]
        w.start("update c set n = n + 100 where id = 1", (), 10)
        _, got, _ = b.open_reader().start("select n from c", (), 10)
        assert got == [(111,)]
    finally:
        a.close()
        b.close()
