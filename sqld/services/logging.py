"""The logging layer: one line per statement at DEBUG, errors at INFO, slow ones at WARNING."""

from __future__ import annotations

import logging
import time

from sqld.errors import SqldError
from sqld.services.base import Execute, SessionState

log = logging.getLogger("sqld.query")


class LoggingService:
    def __init__(self, inner, state: SessionState, slow_seconds: float = 1.0) -> None:
        self.inner = inner
        self.state = state
        self.slow = slow_seconds

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
