"""The one place the session stack is put together: an ordered list of layers, outermost
first, over the innermost service of the session's database.

A request from ``PgConnection`` passes through, in order:

1. ``LoggingService``  – times and logs each statement;
2. ``CompatService``   – answers SET/SHOW/RESET/DISCARD… itself, rewrites PostgreSQL-isms;
3. the innermost service: on a primary the ``SchedulerService`` of the session's database
   (``Databases.session``), which runs the statement on the right SQLite connection; on a
   replica the ``ForwardingService`` (``ReplicaSessions``), which runs reads on the local
   copy's scheduler and forwards writes to the primary.

A layer is a function from the service below to the service above (``services.base.Layer``);
what it wants done after a statement travels in its answer (``Cursor.after``).
"""

from __future__ import annotations

from sqld.services.base import Layer, SessionServiceFactory, SessionState
from sqld.services.compat import TIMEOUTS, CompatService, Limits
from sqld.services.logging import LoggingService


def layers(state: SessionState, limits: Limits) -> list[Layer]:
    """The session's layers, outermost first."""
    return [
        lambda inner: LoggingService(inner, state),
        lambda inner: CompatService(inner, state, limits),
    ]


def stack(innermost, outer: list[Layer]):
    """``innermost`` wrapped in ``outer`` (outermost first)."""
    service = innermost
    for layer in reversed(outer):
        service = layer(service)
    return service


class SessionStackFactory:
    """Builds each session's service stack over ``sessions``, which makes the innermost
    service for a session (``Databases.session``, ``ReplicaSessions``, a ``Scheduler``)."""

    def __init__(self, sessions: SessionServiceFactory, *, statement_timeout: float | None = None,
                 lock_timeout: float | None = None, idle_tx_timeout: float | None = None) -> None:
        self.sessions = sessions
        # The operator's limits are ceilings: a session may lower them (SET, or a startup
        # parameter as PostgreSQL allows), never raise or lift them (sqld.services.compat).
        self.limits = Limits(statement_timeout, lock_timeout, idle_tx_timeout)

    async def __call__(self, state: SessionState):
        limits = self.limits
        for name in TIMEOUTS:
            limits.apply(state, name, state.settings.get(name))  # a startup parameter, or the server's
        return stack(await self.sessions(state), layers(state, limits))
