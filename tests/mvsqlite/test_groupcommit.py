"""Group commit on mvsqlite: two backends (two sqld processes) on one simulated FDB database."""

from __future__ import annotations

import anyio
import pytest

from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.errors import SqldError
from sqld.services.compat import sql_functions
from sqld.services.scheduler import Scheduler
from tests.services.conftest import run, session

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_defect7_autocommit_conflicts_between_processes_are_retried_not_answered_40001():
    """Grouped autocommit writes run inside BEGIN … COMMIT, where the backend's own retry of
    autocommit statements never happens: a conflict with the other process reached clients
    as 40001, though the docs promise autocommit statements are retried."""
    fdb = SimDatabase(seed=7, backoff=False, conflict=0.3)  # and injected 1020s beside the real ones
    backends = [MvsqliteBackend(fdb, b"test/gc/") for _ in range(2)]
    for b in backends:
        b.open()
    schedulers = [Scheduler(b, functions=sql_functions()) for b in backends]
    try:
        admin = await session(schedulers[0])
        await run(admin, "create table c(id integer primary key, n integer)")
        await run(admin, "insert into c values (1, 0)")
        outcomes: list[str] = []

        async def bump(scheduler) -> None:
            s = await session(scheduler)
            for _ in range(15):
                try:
                    outcomes.append((await run(s, "update c set n = n + 1 where id = 1"))[1])
                except SqldError as exc:
                    outcomes.append(exc.sqlstate)

        async with anyio.create_task_group() as loops:
            for scheduler in schedulers:
                loops.start_soon(scheduler.run)
            async with anyio.create_task_group() as tg:
                for k in range(8):
                    tg.start_soon(bump, schedulers[k % 2])
            loops.cancel_scope.cancel()
        assert outcomes.count("UPDATE 1") == len(outcomes), sorted(set(outcomes))
        reader = await session(schedulers[1])
        assert (await run(reader, "select n from c"))[0] == [(len(outcomes),)]
        assert sum(s.group.groups for s in schedulers) < len(outcomes), "writes were not grouped"
    finally:
        for b in backends:
            b.close()
