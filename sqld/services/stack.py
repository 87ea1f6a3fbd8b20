"""The one place the session stack is put together, outermost layer first.

A request from ``PgConnection`` passes through, in order:

1. ``LoggingService``  – times and logs each statement;
2. ``CompatService``   – answers SET/SHOW/RESET/DISCARD… itself;
3. ``SchedulerService`` – runs the statement on the right SQLite connection; on a replica,
   ``ReplicaService`` over it runs reads locally and forwards writes to the primary.
"""

from __future__ import annotations

from sqld.services.base import SessionState
from sqld.services.compat import CompatService, parse_timeout
from sqld.services.databases import PRIVATE, Databases
from sqld.services.logging import LoggingService
from sqld.services.replica import ReplicaSessions
from sqld.services.scheduler import Scheduler


class SessionStackFactory:
    """Builds each session's service stack over the Scheduler of the database it names
    (a ``Databases`` registry), or over one Scheduler for every session."""

    def __init__(self, databases: Databases | Scheduler, *, statement_timeout: float | None = None,
                 idle_tx_timeout: float | None = None) -> None:
        self.databases = databases
        self.statement_timeout = statement_timeout
        self.idle_tx_timeout = idle_tx_timeout

    async def __call__(self, state: SessionState):
        state.statement_timeout = self.statement_timeout
        if state.settings.get("lock_timeout", "0") != "0":  # a startup parameter, as PostgreSQL allows
            state.lock_timeout = parse_timeout(state.settings["lock_timeout"], "lock_timeout")
        state.idle_tx_timeout = self.idle_tx_timeout
        if self.idle_tx_timeout:
            state.settings["idle_in_transaction_session_timeout"] = f"{int(self.idle_tx_timeout * 1000)}ms"
        if state.settings.get("idle_in_transaction_session_timeout", "0") != "0":
            state.idle_tx_timeout = parse_timeout(state.settings["idle_in_transaction_session_timeout"],
                                                  "idle_in_transaction_session_timeout")
        if self.statement_timeout:
            state.settings["statement_timeout"] = f"{int(self.statement_timeout * 1000)}ms"
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
        service = CompatService(service, state, self.statement_timeout, self.idle_tx_timeout)
        return LoggingService(service, state)
