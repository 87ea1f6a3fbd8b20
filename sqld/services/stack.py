"""The one place the session stack is put together, outermost layer first.

A request from ``PgConnection`` passes through, in order:

1. ``LoggingService``  – times and logs each statement;
2. ``CompatService``   – answers SET/SHOW/RESET/DISCARD… itself;
3. ``SchedulerService`` – runs the statement on the right SQLite connection.
"""

from __future__ import annotations

from sqld.services.base import SessionState
from sqld.services.compat import CompatService
from sqld.services.logging import LoggingService
from sqld.services.scheduler import Scheduler


class SessionStackFactory:
    """Builds each session's service stack over one shared Scheduler."""

    def __init__(self, scheduler: Scheduler, *, statement_timeout: float | None = None) -> None:
        self.scheduler = scheduler
        self.statement_timeout = statement_timeout

    async def __call__(self, state: SessionState):
        state.statement_timeout = self.statement_timeout
        if self.statement_timeout:
            state.settings["statement_timeout"] = f"{int(self.statement_timeout * 1000)}ms"
        service = await self.scheduler(state)
        service = CompatService(service, state, self.statement_timeout)
        return LoggingService(service, state)
