"""The logging layer: one line per statement at DEBUG, errors at INFO, slow ones at WARNING."""

from __future__ import annotations

import logging
import time

import attrs

from sqld.errors import SqldError
from sqld.services.base import Execute, SessionState

log = logging.getLogger("sqld.query")


@attrs.define(eq=False)
class LoggingService:
    """The logging layer: a failed statement at INFO, a slow one (``slow`` seconds to its
    first rows) at WARNING, with the session's number."""

    inner: object
    state: SessionState
    slow: float = 1.0

    async def __call__(self, request):
        if type(request) is not Execute:
            return await self.inner(request)
        start = time.perf_counter()
        try:
            result = await self.inner(request)
        except SqldError as exc:
            log.info("session %d: %s failed: %s %s", self.state.process_id,
                     request.statement.sql[:200], exc.sqlstate, exc.message)
            raise
        elapsed = time.perf_counter() - start
        if elapsed >= self.slow:
            log.warning("session %d: slow statement (%.3f s to first rows): %s",
                        self.state.process_id, elapsed, request.statement.sql[:200])
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("session %d: %.3f ms: %s", self.state.process_id, elapsed * 1000,
                      request.statement.sql[:200])
        return result
