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

from typing import Callable

import apsw
import attrs

# Refused with any value (reading them is fine).
_SETTING_PRAGMAS = frozenset((
    "journal_mode", "synchronous", "locking_mode", "writable_schema", "mmap_size", "wal_autocheckpoint",
    "temp_store_directory", "data_store_directory", "journal_size_limit", "query_only", "trusted_schema",
    "hard_heap_limit", "soft_heap_limit", "threads",
))
# Refused a value even with --allow-unsafe-sql: setting the schema cookie makes other
# connections (the shared pool) run statements against a schema that is gone.
_ALWAYS_REFUSED = frozenset(("schema_version",))
# Connection settings: pooled connections are shared by sessions, so a session's setting
# would reach others (a CHECK bypass, a page limit for everyone…). A session that sets one
# gets a connection of its own for the rest of the session (SESSION_OWNED), where it is its
# own business, as it is for a PostgreSQL backend.
_CONNECTION_PRAGMAS = frozenset((
    "foreign_keys", "ignore_check_constraints", "max_page_count", "cache_size", "cache_spill",
    "recursive_triggers", "busy_timeout", "case_sensitive_like", "reverse_unordered_selects",
    "automatic_index", "temp_store", "legacy_alter_table", "analysis_limit", "count_changes",
    "full_column_names", "short_column_names", "empty_result_callbacks", "secure_delete",
    "cell_size_check", "checkpoint_fullfsync", "fullfsync", "read_uncommitted", "defer_foreign_keys",
))
# Settings of the database file itself (they change it at the next VACUUM): refused on every
# connection, as the file is everyone's.
_FILE_PRAGMAS = frozenset(("auto_vacuum", "page_size", "encoding"))
# Refused even without a value: running them acts.
_ACTING_PRAGMAS = frozenset(("wal_checkpoint",))
# Temporary objects live on their connection: on a pooled one, other sessions would see them.
_TEMP_OPS = frozenset((apsw.SQLITE_CREATE_TEMP_TABLE, apsw.SQLITE_CREATE_TEMP_INDEX, apsw.SQLITE_CREATE_TEMP_TRIGGER,
                       apsw.SQLITE_CREATE_TEMP_VIEW))
# What a backend needs kept, even with --allow-unsafe-sql: the WAL hook and WAL mode that the
# replication log relies on; the journal mode and syncs at which mvsqlite's VFS commits.
REPLICATION_LOG = frozenset(("journal_mode", "wal_autocheckpoint"))
MVSQLITE = frozenset(("journal_mode", "synchronous", "locking_mode"))


POOLED, SESSION_OWNED = "pooled", "session-owned"


@attrs.define(eq=False)
class Authorizer:
    """An apsw authorizer with a memory: ``wants_own`` is set when it refused something only
    because its connection is shared (a temp object, a connection pragma); the connection
    turns that refusal into ``NeedsOwnConnection``."""

    authorize: Callable[..., int]
    wants_own: bool = attrs.field(init=False, default=False)
    vacuum: bool = attrs.field(init=False, default=False)  # a plain VACUUM is about to run: its own ATTACH '' is allowed, once
    running: bool = attrs.field(init=False, default=False)  # the statement was prepared and runs: what is authorized now is SQLite's own

    def reset(self) -> None:
        """A new statement is about to be prepared (the connection calls this)."""
        self.vacuum = False
        self.running = False

    def __call__(self, op, p1, p2, dbname, trigger) -> int:
        return self.authorize(self, op, p1, p2, dbname, trigger)


def authorizer(unsafe_allowed: bool = False, guarded: frozenset = frozenset(), kind: str = POOLED) -> Authorizer:
    """An apsw authorizer for a session connection; ``guarded`` pragmas are refused a value
    whatever ``unsafe_allowed`` says. A SESSION_OWNED connection may hold temp objects and
    connection settings."""
    deny, ok = apsw.SQLITE_DENY, apsw.SQLITE_OK
    owned = kind == SESSION_OWNED
    PRAGMA, ATTACH, FUNCTION, READ = apsw.SQLITE_PRAGMA, apsw.SQLITE_ATTACH, apsw.SQLITE_FUNCTION, apsw.SQLITE_READ
    ignore = apsw.SQLITE_IGNORE

    def authorize(self, op, p1, p2, dbname, trigger) -> int:
        if op == PRAGMA:
            name = (p1 or "").lower()
            if p2 is not None and (name in guarded or name in _ALWAYS_REFUSED):
                return deny
            if name == "database_list" and (dbname is not None or not self.running):
                # PRAGMA main.database_list, EXPLAIN PRAGMA database_list: SQLite's answer has
                # the server's paths. The plain PRAGMA is answered with names (CompatService),
                # and the table-valued pragma_database_list, whose PRAGMA SQLite prepares while
                # the statement runs, reads its files as NULL (below).
                return deny
            if unsafe_allowed:
                return ok
            if name in _ACTING_PRAGMAS or (p2 is not None and (name in _SETTING_PRAGMAS or name in _FILE_PRAGMAS)):
                return deny
            if p2 is not None and name in _CONNECTION_PRAGMAS and not owned:
                self.wants_own = True
                return deny
            return ok
        if op == READ and p1 == "pragma_database_list" and p2 == "file":
            return ignore  # the server's file paths: read as NULL (PRAGMA database_list gives names)
        if unsafe_allowed:
            return ok
        if op == ATTACH:
            # A file (or a name SQLite only knows at run time: an expression or a parameter
            # reaches the authorizer as NULL), and VACUUM INTO a file; ':memory:' and '' too
            # (a temporary database), as they would stay attached to a connection other
            # sessions use. The one exception is plain VACUUM's own scratch database, which
            # SQLite attaches as '' while the VACUUM runs: the connection marks that moment
            # (``vacuum``, set after the VACUUM was prepared), and it is allowed once.
            if p1 == "" and self.vacuum:
                self.vacuum = False
                return ok
            return deny
        if op in _TEMP_OPS and not owned:
            self.wants_own = True
            return deny
        if op == FUNCTION and (p2 or "").lower() == "load_extension":
            return deny
        return ok

    return Authorizer(authorize)
