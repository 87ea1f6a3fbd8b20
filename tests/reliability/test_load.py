"""A bounded soak: 500 connections held at once, 100 of them busy for 20 s with point selects
and single-row writes; the server's open files and memory are sampled every second; then
the connections past --max-connections are refused with 53300.

All clients are asyncpg connections in one event loop (no 500 threads). The figures are
printed (run with -s) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import time

import asyncpg
import psutil
import pytest

from tests.conftest import TEST_BACKEND

HELD = 500
ACTIVE = 100
MAX_CONNECTIONS = 600
ACTIVE_SECONDS = 20.0
WARMUP_SECONDS = 5.0          # RSS growth is measured from here to the end of the active phase
ROWS = 10_000
WRITE_SHARE = 0.3
FD_SLACK = 16                 # fds beside the sockets: readers' files opened late, a log rotated...
RSS_GROWTH_LIMIT_MB = 50
NEEDED_FDS = 2 * MAX_CONNECTIONS + 200  # this process's sockets + the server's (it inherits the limit)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NEEDED_FDS if hard == resource.RLIM_INFINITY else min(hard, max(soft, NEEDED_FDS))
    if want < NEEDED_FDS:
        pytest.skip(f"needs {NEEDED_FDS} open files; the hard limit (ulimit -Hn) is {hard}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Sampler:
    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[tuple[float, int, int]] = []  # (seconds, fds, rss bytes)

    def now(self) -> tuple[int, int]:
        return self.proc.num_fds(), self.proc.memory_info().rss

    async def run(self, started: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            fds, rss = self.now()
            self.samples.append((time.monotonic() - started, fds, rss))
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


async def settle_fds(sampler: Sampler, target: int, timeout: float = 10.0) -> int:
    """The server's fd count once it has dropped to ``target`` (or the timeout passed)."""
    deadline = time.monotonic() + timeout
    fds = sampler.now()[0]
    while fds > target and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        fds = sampler.now()[0]
    return fds


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_500_connections_held_100_busy(start_sqld):
    raise_fd_limit()
    server = start_sqld("--max-connections", str(MAX_CONNECTIONS))
    sampler = Sampler(server.pid)
    figures: dict = {}

    async def connect():
        return await asyncpg.connect(host=server.host, port=server.port, user="tester", database="main",
                                     timeout=30)

    async def one_op(c, rng: random.Random, n: int) -> bool:
        key = rng.randint(1, ROWS)
        if rng.random() < WRITE_SHARE:
            if rng.random() < 0.5:
                await c.execute("update kv set v = $1, n = n + 1 where id = $2", f"w{n}-{rng.random()}", key)
            else:
                await c.execute("insert into events(conn, v) values ($1, $2)", n, "x" * rng.randint(10, 200))
            return True
        row = await c.fetchrow("select id, v, n from kv where id = $1", key)
        assert row["id"] == key
        return False

    async def main():
        c = await connect()
        await c.execute("create table kv(id integer primary key, v text, n integer not null default 0)")
        await c.execute("create table events(id integer primary key, conn integer, v text)")
        await c.execute(f"insert into kv(id, v) with recursive s(i) as (select 1 union all select i + 1 from s where i < {ROWS}) "
                        "select i, 'row ' || i from s")
        await c.close()

        # Warm-up: enough concurrent sessions for every reader connection and the writer to
        # be open (their database files count in the fds), and the server's code paths used.
        warm = [await connect() for _ in range(16)]

        async def warm_up(i: int) -> None:
            rng = random.Random(-i)
            for _ in range(50):
                await one_op(warm[i], rng, i)
        await asyncio.gather(*(warm_up(i) for i in range(len(warm))))
        for w in warm:
            await w.close()
        idle_fds = await settle_fds(sampler, 0, timeout=0.5)
        await asyncio.sleep(0.5)
        idle_fds, idle_rss = sampler.now()

        # 500 connections, held
        started = time.monotonic()
        sem = asyncio.Semaphore(50)

        async def bounded_connect():
            async with sem:
                return await connect()
        conns = await asyncio.gather(*(bounded_connect() for _ in range(HELD)))
        connect_seconds = time.monotonic() - started
        await asyncio.sleep(0.5)
        held_fds, held_rss = sampler.now()

        # 100 of them busy for ACTIVE_SECONDS, sampled every second
        latencies: dict[str, list[float]] = {"read": [], "write": []}
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def worker(n: int) -> None:
            rng = random.Random(n)
            c = conns[n]
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    wrote = await one_op(c, rng, n)
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                    await asyncio.sleep(0.1)
                    continue
                latencies["write" if wrote else "read"].append(time.perf_counter() - t0)

        active_started = time.monotonic()
        sampling = asyncio.create_task(sampler.run(active_started, stop))
        workers = [asyncio.create_task(worker(n)) for n in range(ACTIVE)]
        await asyncio.sleep(ACTIVE_SECONDS)
        stop.set()
        await asyncio.gather(*workers, sampling)
        active_seconds = time.monotonic() - active_started
        end_fds, end_rss = sampler.now()

        # every held connection still answers
        answers = await asyncio.gather(*(c.fetchval("select $1::int8", i) for i, c in enumerate(conns)))
        assert answers == list(range(HELD))

        # connections 501..600 are served; the 601st is refused with 53300
        extra = await asyncio.gather(*(bounded_connect() for _ in range(MAX_CONNECTIONS - HELD)))
        with pytest.raises(asyncpg.exceptions.TooManyConnectionsError) as refused:
            await connect()
        err = refused.value
        # one closed, its slot is free again
        await extra.pop().close()
        deadline = time.monotonic() + 5
        while True:
            try:
                extra.append(await connect())
                break
            except asyncpg.exceptions.TooManyConnectionsError:
                assert time.monotonic() < deadline, "a closed connection's slot was not freed"
                await asyncio.sleep(0.05)
        full_fds, _ = sampler.now()

        for c in conns + extra:
            await c.close()
        closed_fds = await settle_fds(sampler, idle_fds + FD_SLACK)
        closed_rss = sampler.now()[1]

        figures.update(
            idle_fds=idle_fds, idle_rss=idle_rss, held_fds=held_fds, held_rss=held_rss, end_fds=end_fds,
            end_rss=end_rss, closed_fds=closed_fds, closed_rss=closed_rss, full_fds=full_fds,
            connect_seconds=connect_seconds, active_seconds=active_seconds, latencies=latencies,
            errors=errors, refused=err,
        )

    asyncio.run(asyncio.wait_for(main(), 150))

    f = figures
    samples = sampler.samples
    after_warmup = [s for s in samples if s[0] >= WARMUP_SECONDS]
    rss_warm = after_warmup[0][2]
    rss_peak = max(s[2] for s in samples)
    rss_growth_mb = (max(s[2] for s in after_warmup) - rss_warm) / 1e6
    fds_seen = [s[1] for s in samples]
    reads, writes = f["latencies"]["read"], f["latencies"]["write"]
    ops = reads + writes
    mb = 1e6
    print(
        f"\nsqld load test: {HELD} connections held ({f['connect_seconds']:.1f} s to open), {ACTIVE} active for "
        f"{f['active_seconds']:.1f} s: {len(ops)} operations ({len(ops) / f['active_seconds']:.0f}/s; "
        f"{len(reads)} point selects, {len(writes)} single-row writes), errors {len(f['errors'])}\n"
        f"  latency all p50 {statistics.median(ops) * 1e3:.1f} ms p99 {pct(ops, 0.99) * 1e3:.1f} ms; "
        f"selects p50 {statistics.median(reads) * 1e3:.1f} p99 {pct(reads, 0.99) * 1e3:.1f} ms; "
        f"writes p50 {statistics.median(writes) * 1e3:.1f} p99 {pct(writes, 0.99) * 1e3:.1f} ms\n"
        f"  fds: idle {f['idle_fds']}, {HELD} connected {f['held_fds']}, during the active phase "
        f"{min(fds_seen)}..{max(fds_seen)}, end of it {f['end_fds']}, {MAX_CONNECTIONS} connected {f['full_fds']}, "
        f"all closed {f['closed_fds']}\n"
        f"  RSS: idle {f['idle_rss'] / mb:.1f} MB, {HELD} connected {f['held_rss'] / mb:.1f} MB, "
        f"after {WARMUP_SECONDS:.0f} s warm-up {rss_warm / mb:.1f} MB, peak {rss_peak / mb:.1f} MB, end of active "
        f"{f['end_rss'] / mb:.1f} MB (growth after warm-up {rss_growth_mb:.1f} MB), all closed "
        f"{f['closed_rss'] / mb:.1f} MB\n"
        f"  connection {MAX_CONNECTIONS + 1}: {f['refused'].sqlstate} {f['refused'].message!r} "
        f"(detail {f['refused'].detail!r})"
    )
    assert not f["errors"], f"{len(f['errors'])} errors, e.g. {f['errors'][:3]}"
    assert len(ops) > 1000
    # each held connection is one socket in the server, and nothing more
    assert HELD <= f["held_fds"] - f["idle_fds"] <= HELD + FD_SLACK
    assert max(fds_seen) - f["held_fds"] <= FD_SLACK, "fds grew during the active phase"
    assert abs(f["end_fds"] - f["held_fds"]) <= FD_SLACK
    assert f["closed_fds"] <= f["idle_fds"] + FD_SLACK, "fds not released after the connections closed"
    # SQLite's caches are bounded (2 MB page cache per connection: the writer + 8 readers) and
    # the working set (10,000 rows, a few MB of events) is in them after the warm-up, so a
    # steady state shows ~no growth (1 MB measured). 50 MB leaves room for allocator noise yet
    # catches a leak per operation: the phase runs 100,000+ operations (227,000 measured),
    # so a leak of 500 bytes per operation (or one of 100 KB per connection) would cross it.
    # (On the mvsqlite backend the tests run FoundationDB's simulator inside the server process:
    # it keeps every written page version in memory, so RSS grows with the writes by design.)
    if TEST_BACKEND != "mvsqlite":
        assert rss_growth_mb < RSS_GROWTH_LIMIT_MB, f"server RSS grew {rss_growth_mb:.1f} MB after warm-up"
    assert pct(ops, 0.99) < 5.0, "an operation stalled for seconds"
    err = f["refused"]
    assert err.sqlstate == "53300"
    assert err.message == "sorry, too many clients already"
    assert "--max-connections" in (err.detail or "")
