"""Service-layer fixtures: a real libsql backend in a temp folder, a Scheduler over it."""

from __future__ import annotations

import anyio
import pytest

from sqld.backends.libsql import LibsqlBackend
from sqld.services.base import Execute, SessionState
from sqld.services.compat import sql_functions
from sqld.services.scheduler import Scheduler
from sqld.sqltext import parse_one


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def backend(tmp_path):
    b = LibsqlBackend(tmp_path / "db")
    b.open()
    yield b
    b.close()


@pytest.fixture
def scheduler(backend):
    return Scheduler(backend, functions=sql_functions())


_pid = iter(range(1, 10**6))


async def session(scheduler: Scheduler):
    return await scheduler(SessionState(process_id=next(_pid), secret_key=0))


async def run(service, sql: str, *params):
    """Execute one statement through a service; return (rows, tag)."""
    cur = await service(Execute(parse_one(sql), tuple(params)))
    rows = list(cur.rows)
    while not cur.done:
        await cur.fetch(100)
        rows += cur.rows
    tag = cur.tag()
    await cur.close()
    return rows, tag


__all__ = ["anyio", "session", "run"]
