"""What a statement's first word (``Statement.verb``, from ``sqltext``) says about it: the
one table the layers decide by. Each set names a question a layer asks; a verb may be in
several. A new statement kind is added here, not in the layer that meets it first.
"""

from __future__ import annotations

# Transaction control: the scheduler runs these itself (BEGIN takes no connection yet).
TX_VERBS = frozenset(("BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE"))

# Schema changes: after one, cached descriptions and idle readers' schemas are stale.
# A tuple, for ``verb.startswith(DDL_VERBS)``.
DDL_VERBS = ("CREATE", "DROP", "ALTER", "VACUUM", "REINDEX", "ANALYZE")

# Statements that always write: they go straight to the writer (on a replica: forwarded to
# the primary); any other statement tries a reader first, and SQLite says if it writes.
WRITE_VERBS = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "VACUUM",
                         "REINDEX", "ATTACH", "DETACH"))

# Statements that never write: on the writer too they may run inline under a step budget
# (an interrupted read leaves the transaction as it was; an interrupted write would not).
READ_VERBS = frozenset(("SELECT", "VALUES", "EXPLAIN"))

# Row changes (and WITH … INSERT/UPDATE/DELETE, which reach the writer when a reader refuses
# them): an autocommit one running alone runs in a transaction of its own, all or nothing.
ATOMIC_VERBS = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE", "WITH"))

# Row changes that group commit may run in one transaction with other sessions' ones.
GROUPABLE_VERBS = frozenset(("INSERT", "UPDATE", "DELETE", "REPLACE"))

# Inserts: their tag is INSERT 0 n and they set the last rowid; COPY FROM STDIN's rows run
# as one of them, many at a time.
INSERT_VERBS = frozenset(("INSERT", "REPLACE"))

# PostgreSQL's session commands, answered by the compatibility layer, never by SQLite.
COMPAT_VERBS = frozenset(("SET", "SHOW", "RESET", "DISCARD", "DEALLOCATE", "CLOSE", "UNLISTEN", "LISTEN", "NOTIFY"))

# Statements that end or must be outside a transaction: a simple Query holding one of them
# runs its statements one by one (no implicit transaction), as PostgreSQL does.
OWN_TRANSACTION_VERBS = TX_VERBS | frozenset(("VACUUM", "PRAGMA", "ATTACH", "DETACH", "COPY"))
