"""sqld's errors: each carries a SQLSTATE; the one SQLite → SQLSTATE mapping lives here."""

from __future__ import annotations

import apsw


class SqldError(Exception):
    """An error a client is told about, as an ErrorResponse.

    ``sqlstate`` is the PostgreSQL error code (appendix A of the PostgreSQL manual);
    ``severity`` is ERROR unless the session cannot go on (FATAL).
    """

    sqlstate = "XX000"  # internal_error: a bug in sqld
    severity = "ERROR"
    sqlite_code: int | None = None  # SQLite's extended result code, when SQLite raised it

    def __init__(
        self,
        message: str,
        *,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        severity: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if severity is not None:
            self.severity = severity
        self.detail = detail
        self.hint = hint


class ProtocolViolation(SqldError):
    """The client broke the wire protocol: its connection is closed after the error."""

    sqlstate = "08P01"
    severity = "FATAL"


class FeatureNotSupported(SqldError):
    sqlstate = "0A000"


class SyntaxError_(SqldError):
    sqlstate = "42601"


class UndefinedObject(SqldError):
    """A prepared statement, portal or setting that does not exist."""

    sqlstate = "42704"


class InvalidParameterValue(SqldError):
    sqlstate = "22023"


class DataError(SqldError):
    """A value that cannot be represented in the type the client was promised."""

    sqlstate = "22000"


class InFailedTransaction(SqldError):
    sqlstate = "25P02"

    def __init__(self) -> None:
        super().__init__(
            "current transaction is aborted, commands ignored until end of transaction block",
            hint="Send ROLLBACK to leave the failed transaction.",
        )


class QueryCanceled(SqldError):
    sqlstate = "57014"

    @classmethod
    def because(cls, reason: str) -> QueryCanceled:
        """The error for a statement stopped by a statement timeout or a cancel request."""
        if reason == "timeout":
            return cls("canceling statement due to statement timeout")
        return cls("canceling statement due to user request")


class SerializationFailure(SqldError):
    """SQLite said BUSY or LOCKED, or a transaction conflicted: retry the transaction."""

    sqlstate = "40001"


class LockNotAvailable(SqldError):
    """A statement waited for the writer longer than lock_timeout (SQLite: SQLITE_BUSY)."""

    sqlstate = "55P03"
    sqlite_code = 5  # SQLITE_BUSY: sqlite3 clients see "database is locked"

    def __init__(self, hint: str = "Another session's transaction holds the writer.") -> None:
        super().__init__("database is locked", detail="canceling statement due to lock timeout", hint=hint)


class TooManyConnections(SqldError):
    sqlstate = "53300"
    severity = "FATAL"


class AdminShutdown(SqldError):
    sqlstate = "57P01"
    severity = "FATAL"


class ReadOnlyTransaction(SqldError):
    sqlstate = "25006"


# SQLite primary result codes → SQLSTATE (https://sqlite.org/rescode.html).
_PRIMARY = {
    apsw.SQLITE_ERROR: "42000",  # refined from the message below
    apsw.SQLITE_PERM: "42501",
    apsw.SQLITE_ABORT: "40000",
    apsw.SQLITE_BUSY: "40001",
    apsw.SQLITE_LOCKED: "40001",
    apsw.SQLITE_NOMEM: "53200",
    apsw.SQLITE_READONLY: "25006",
    apsw.SQLITE_INTERRUPT: "57014",
    apsw.SQLITE_IOERR: "58030",
    apsw.SQLITE_CORRUPT: "XX001",
    apsw.SQLITE_FULL: "53100",
    apsw.SQLITE_CANTOPEN: "58030",
    apsw.SQLITE_CONSTRAINT: "23000",
    apsw.SQLITE_MISMATCH: "22000",
    apsw.SQLITE_TOOBIG: "54000",
    apsw.SQLITE_RANGE: "22023",
    apsw.SQLITE_AUTH: "42501",
    apsw.SQLITE_NOTADB: "XX001",
}

# Extended constraint codes → the class-23 code PostgreSQL uses for the same violation.
_CONSTRAINT = {
    apsw.SQLITE_CONSTRAINT_UNIQUE: "23505",
    apsw.SQLITE_CONSTRAINT_PRIMARYKEY: "23505",
    apsw.SQLITE_CONSTRAINT_ROWID: "23505",
    apsw.SQLITE_CONSTRAINT_NOTNULL: "23502",
    apsw.SQLITE_CONSTRAINT_FOREIGNKEY: "23503",
    apsw.SQLITE_CONSTRAINT_CHECK: "23514",
    apsw.SQLITE_CONSTRAINT_DATATYPE: "22P02",
}

# SQLITE_ERROR covers every compile-time error; the message is the only thing that tells
# them apart (SQLite has no finer code for these). Checked in order, first match wins.
_MESSAGE_PREFIXES = (
    ("not authorized", "42501"),  # the SQL sandbox (backends/sandbox.py) refused it
    ("no such table", "42P01"),
    ("no such view", "42P01"),
    ("no such column", "42703"),
    ("no such function", "42883"),
    ("no such index", "42704"),
    ("no such collation", "42704"),
    ("no such savepoint", "3B001"),
    ("table ", "42P07"),  # "table x already exists"
    ("index ", "42P07"),
    ("view ", "42P07"),
    ("trigger ", "42P07"),
    ("ambiguous column name", "42702"),
    ("wrong number of arguments", "42883"),
    ("near ", "42601"),
    ("incomplete input", "42601"),
    ("unrecognized token", "42601"),
    ("cannot start a transaction within a transaction", "25001"),
    ("cannot commit - no transaction is active", "25P01"),
    ("cannot rollback - no transaction is active", "25P01"),
    ("integer overflow", "22003"),
    ("too many terms", "54001"),
    ("parser stack overflow", "54001"),
    ("string or blob too big", "54000"),
    ("datatype mismatch", "42804"),
)


_HINTS = {
    apsw.SQLITE_TOOBIG: "A value or row is larger than the server allows (--max-value-mb).",
    apsw.SQLITE_NOMEM: "The server's SQLite memory limit (--max-memory-mb) was reached; try again, or "
                       "make the statement need less (smaller values, LIMIT).",
}


def sqlstate_for_sqlite(code: int, extended: int | None, message: str) -> str:
    """The SQLSTATE for a SQLite result code and message."""
    if code == apsw.SQLITE_CONSTRAINT:
        return _CONSTRAINT.get(extended or 0, "23000")
    if code == apsw.SQLITE_ERROR:
        for prefix, state in _MESSAGE_PREFIXES:
            if message.startswith(prefix):
                if prefix in ("table ", "index ", "view ", "trigger ") and "already exists" not in message:
                    continue
                return state
        return "42000"
    return _PRIMARY.get(code, "XX000")


def from_sqlite(exc: apsw.Error) -> SqldError:
    """Turn an apsw exception into the SqldError a client is told about."""
    message = str(exc)
    # apsw prefixes messages with the exception class ("SQLError: no such table: x").
    head, sep, rest = message.partition(": ")
    if sep and head.endswith("Error"):
        message = rest
    code = getattr(exc, "result", None)
    extended = getattr(exc, "extendedresult", None)
    if code is None or code < 0:
        if isinstance(exc, apsw.BindingsError):
            return SqldError(message, sqlstate="08P01")
        return SqldError(message, sqlstate="XX000")
    state = sqlstate_for_sqlite(code, extended, message)
    err = SqldError(message, sqlstate=state, hint=_HINTS.get(code))
    err.sqlite_code = extended if extended is not None else code
    return err
