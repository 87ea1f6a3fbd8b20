"""Memory bounds for every SQLite connection of the process: the largest value, SQLite's heap.

One statement must not be able to take the host's memory: ``randomblob(900000000)`` would
otherwise build a 900 MB value for one client. SQLite has both bounds built in:
``SQLITE_LIMIT_LENGTH`` (per connection: the largest string, BLOB or row; past it the
statement fails with "string or blob too big", 54000) and the hard heap limit (process-wide:
every allocation SQLite makes; past it the statement that asked fails with "out of memory",
53200). The soft limit, below the hard one, makes SQLite give back cache memory first.
"""

from __future__ import annotations

import apsw

DEFAULT_MAX_VALUE_BYTES = 64 << 20  # as large as the biggest message the codec accepts
DEFAULT_MAX_MEMORY_BYTES = 1 << 30

max_value_bytes = DEFAULT_MAX_VALUE_BYTES


def configure(*, max_value: int = DEFAULT_MAX_VALUE_BYTES, max_memory: int = DEFAULT_MAX_MEMORY_BYTES) -> None:
    """Set the bounds for connections opened from now on and SQLite's heap (0: no heap limit)."""
    global max_value_bytes
    max_value_bytes = max_value
    apsw.hard_heap_limit(max_memory)
    apsw.soft_heap_limit(max_memory * 3 // 4)


def apply(conn: apsw.Connection) -> None:
    """Bound one connection's values (its SQL text has its own limit, --max-sql-length)."""
    conn.limit(apsw.SQLITE_LIMIT_LENGTH, max_value_bytes)
