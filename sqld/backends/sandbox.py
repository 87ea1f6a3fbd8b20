"""The SQL sandbox: what no client may do through SQL, decided by SQLite's authorizer.

SQLite can reach the server's file system and process through SQL: ATTACH opens any file
(and VACUUM INTO writes one, as an ATTACH), load_extension runs native code, and a handful of
pragmas change how the server's own files are written (journal mode, synchronous, locking,
the WAL hook and checkpoints that the replication log relies on, memory mapping, where
temporary files go) or let a schema be edited by hand. The authorizer refuses those
(SQLITE_DENY: the client gets 42501 "not authorized"), after SQLite parsed the statement and
before it runs: no regex on SQL text. Everything else SQLite offers keeps working, reading
pragmas included (``PRAGMA journal_mode`` answers; ``PRAGMA journal_mode=delete`` does not).

``--allow-unsafe-sql`` (an administrator's choice) turns the sandbox off, except what the
backend itself needs (the replication log's WAL hook; mvsqlite's journal and syncs).
"""

from __future__ import annotations

import apsw

# Refused with any value (reading them is fine).
_SETTING_PRAGMAS = frozenset((
    "journal_mode", "synchronous", "locking_mode", "writable_schema", "mmap_size", "wal_autocheckpoint",
    "temp_store_directory", "data_store_directory", "journal_size_limit", "query_only", "trusted_schema",
    "hard_heap_limit", "soft_heap_limit", "threads",
))
# Refused even without a value: running them acts.
_ACTING_PRAGMAS = frozenset(("wal_checkpoint",))
# What a backend needs kept, even with --allow-unsafe-sql: the WAL hook and WAL mode that the
# replication log relies on; the journal mode and syncs at which mvsqlite's VFS commits.
REPLICATION_LOG = frozenset(("journal_mode", "wal_autocheckpoint"))
MVSQLITE = frozenset(("journal_mode", "synchronous", "locking_mode"))
_MEMORY = ("", ":memory:")


def authorizer(unsafe_allowed: bool = False, guarded: frozenset = frozenset()):
    """An apsw authorizer for a session connection; ``guarded`` pragmas are refused a value
    whatever ``unsafe_allowed`` says."""
    deny, ok = apsw.SQLITE_DENY, apsw.SQLITE_OK
    PRAGMA, ATTACH, FUNCTION = apsw.SQLITE_PRAGMA, apsw.SQLITE_ATTACH, apsw.SQLITE_FUNCTION

    def authorize(op, p1, p2, dbname, trigger) -> int:
        if op == PRAGMA:
            name = (p1 or "").lower()
            if p2 is not None and name in guarded:
                return deny
            if not unsafe_allowed and ((p2 is not None and name in _SETTING_PRAGMAS) or name in _ACTING_PRAGMAS):
                return deny
            return ok
        if unsafe_allowed:
            return ok
        if op == ATTACH and (p1 or "") not in _MEMORY:
            return deny  # files, and VACUUM INTO a file
        if op == FUNCTION and (p2 or "").lower() == "load_extension":
            return deny
        return ok

    return authorize
