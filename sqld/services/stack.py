"""The one place the session stack is put together, outermost layer first.

A request from ``PgConnection`` passes through, in order:

1. ``LoggingService``  – times and logs each statement;
2. ``CompatService``   – answers SET/SHOW/RESET/DISCARD… itself;
3. ``SchedulerService`` – runs the statement on the right SQLite connection; on a replica,
   ``ForwardingService`` over it runs reads locally and forwards writes to the primary.
"""

from __future__ import annotations

from sqld.services.base import SessionState
from sqld.services.compat import TIMEOUTS, CompatService, Limits
from sqld.services.databases import PRIVATE, Databases
from sqld.services.logging import LoggingService
from sqld.services.forward import ReplicaSessions
from sqld.services.scheduler import Scheduler


class SessionStackFactory:
    """Builds each session's service stack over the Scheduler of the database it names
    (a ``Databases`` registry), or over one Scheduler for every session."""

    def __init__(self, databases: Databases | Scheduler, *, statement_timeout: float | None = None,
                 lock_timeout: float | None = None, idle_tx_timeout: float | None = None) -> None:
        self.databases = databases
        # The operator's limits are ceilings: a session may lower them (SET, or a startup
        # parameter as PostgreSQL allows), never raise or lift them (sqld.services.compat).
        self.limits = Limits(statement_timeout, lock_timeout, idle_tx_timeout)

    async def __call__(self, state: SessionState):
        limits = self.limits
        for name in TIMEOUTS:
            limits.apply(state, name, state.settings.get(name))  # a startup parameter, or the server's
        if isinstance(self.databases, (Scheduler, ReplicaSessions)):
            service = await self.databases(state)
        elif state.database == PRIVATE:
            scheduler, drop = await self.databases.private()
            service = await scheduler(state)
            service.on_close = drop
        else:
            # Only read-write users (or anyone, with no users configured) create databases.
            scheduler, release = await self.databases.acquire(state.database, create=not state.read_only_user)
            try:
                service = await scheduler(state)
            except BaseException:
                release()
                raise
            service.on_close = release  # the database may close once no session uses it
        service = CompatService(service, state, limits)
        return LoggingService(service, state)
