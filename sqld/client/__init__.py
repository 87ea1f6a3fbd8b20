"""sqld.client: Python's ``sqlite3`` module, speaking to a sqld server instead of opening a file.

Change the import and the connect argument; the rest behaves as with a local file::

    import sqld.client as sqlite3
    conn = sqlite3.connect("sqld://me@127.0.0.1:5432/app")   # or connect("app.db"), connect(":memory:")

``connect("name.db")`` opens the server's database ``name``; ``connect(":memory:")`` a private
one dropped when the connection closes. The server is ``SQLD_URL`` (``sqld://user@host:port``)
or 127.0.0.1:5432. Parameters are always sent bound, never put into SQL text; every value
comes back with its SQLite storage class (the sqld protocol extension, docs/protocol.md).
"""

from __future__ import annotations

import datetime
import functools
import getpass
import os
import sqlite3 as _std
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from sqld import sqltext
from sqld.client.wire import Result, ServerError, WireConnection, WireError

# --- module attributes, as sqlite3 has them ---------------------------------------------------

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"
sqlite_version = _std.sqlite_version
sqlite_version_info = _std.sqlite_version_info
version = "2.6.0"
version_info = (2, 6, 0)
PARSE_DECLTYPES = _std.PARSE_DECLTYPES
PARSE_COLNAMES = _std.PARSE_COLNAMES

_ERRORCODES: dict[int, str] = {}
for _name in dir(_std):
    if _name.startswith("SQLITE_"):
        globals()[_name] = getattr(_std, _name)
        _value = getattr(_std, _name)
        if isinstance(_value, int) and not _name.startswith(("SQLITE_DBCONFIG", "SQLITE_LIMIT")):
            _ERRORCODES.setdefault(_value, _name)
del _name, _value
# sqlite3's result-code names win over the authorizer constants that share their numbers
for _code in ("SQLITE_OK", "SQLITE_ERROR", "SQLITE_INTERNAL", "SQLITE_PERM", "SQLITE_ABORT", "SQLITE_BUSY",
              "SQLITE_LOCKED", "SQLITE_NOMEM", "SQLITE_READONLY", "SQLITE_INTERRUPT", "SQLITE_IOERR",
              "SQLITE_CORRUPT", "SQLITE_NOTFOUND", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL",
              "SQLITE_EMPTY", "SQLITE_SCHEMA", "SQLITE_TOOBIG", "SQLITE_CONSTRAINT", "SQLITE_MISMATCH",
              "SQLITE_MISUSE", "SQLITE_NOLFS", "SQLITE_AUTH", "SQLITE_FORMAT", "SQLITE_RANGE", "SQLITE_NOTADB"):
    if hasattr(_std, _code):
        _ERRORCODES[getattr(_std, _code)] = _code

# --- exceptions (the same hierarchy; not the same classes as sqlite3's) -----------------------


class Warning(Exception):  # noqa: A001 - the DB-API name
    pass


class Error(Exception):
    sqlite_errorcode: int | None = None
    sqlite_errorname: str | None = None


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


def _class_for_code(code: int):
    primary = code & 0xFF
    if primary in (_std.SQLITE_CONSTRAINT, _std.SQLITE_MISMATCH):
        return IntegrityError
    if primary in (_std.SQLITE_INTERNAL, _std.SQLITE_NOTFOUND):
        return InternalError
    if primary == _std.SQLITE_TOOBIG:
        return DataError
    if primary in (_std.SQLITE_MISUSE, _std.SQLITE_RANGE):
        return InterfaceError
    if primary in (_std.SQLITE_CORRUPT, _std.SQLITE_NOTADB):
        return DatabaseError
    return OperationalError


def _class_for_sqlstate(state: str):
    if state == "22021":  # text that is not UTF-8: sqlite3 raises OperationalError on decoding
        return OperationalError
    cls = state[:2]
    if cls == "23":
        return IntegrityError
    if cls == "22":
        return DataError
    if cls == "0A":
        return NotSupportedError
    if cls in ("42", "40", "57", "08", "53", "54", "55", "25", "3D", "3B", "28"):
        return OperationalError
    if cls == "XX":
        return InternalError
    return DatabaseError


def _error(exc: ServerError) -> Error:
    r = exc.response
    if r.sqlite_code is not None:
        err = _class_for_code(r.sqlite_code)(r.message)
        err.sqlite_errorcode = r.sqlite_code
        err.sqlite_errorname = _ERRORCODES.get(r.sqlite_code, _ERRORCODES.get(r.sqlite_code & 0xFF))
    else:
        err = _class_for_sqlstate(r.sqlstate)(r.message)
    err.sqlstate = r.sqlstate  # type: ignore[attr-defined]
    return err


# --- adapters and converters ------------------------------------------------------------------


class PrepareProtocol:
    pass


adapters: dict = {}
converters: dict[str, object] = {}


def register_adapter(type_, adapter) -> None:
    adapters[(type_, PrepareProtocol)] = adapter


def register_converter(name: str, converter) -> None:
    converters[name.upper()] = converter


def adapt(obj, proto=PrepareProtocol, alt=None):
    """sqlite3's adaptation (PEP 246): a registered adapter, the protocol's __adapt__,
    the object's __conform__, else ``alt``."""
    adapter = adapters.get((type(obj), proto))
    if adapter is not None:
        return adapter(obj)
    adapt_ = getattr(proto, "__adapt__", None)
    if adapt_ is not None:
        adapted = adapt_(obj)
        if adapted is not None:
            return adapted
    conform = getattr(obj, "__conform__", None)
    if conform is not None:
        adapted = conform(proto)
        if adapted is not None:
            return adapted
    if alt is not None:
        return alt
    raise ProgrammingError("can't adapt")


def _register_default_adapters() -> None:
    # Python 3.11's sqlite3 defaults (deprecated there in 3.12, still present in 3.11)
    register_adapter(datetime.date, lambda v: v.isoformat())
    register_adapter(datetime.datetime, lambda v: v.isoformat(" "))

    def convert_date(val: bytes):
        return datetime.date(*map(int, val.split(b"-")))

    def convert_timestamp(val: bytes):
        datepart, timepart = val.split(b" ")
        year, month, day = map(int, datepart.split(b"-"))
        timepart_full = timepart.split(b".")
        hours, minutes, seconds = map(int, timepart_full[0].split(b":"))
        microseconds = int("{:0<6.6}".format(timepart_full[1].decode())) if len(timepart_full) == 2 else 0
        return datetime.datetime(year, month, day, hours, minutes, seconds, microseconds)

    register_converter("date", convert_date)
    register_converter("timestamp", convert_timestamp)


_register_default_adapters()

Binary = memoryview
Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime


def DateFromTicks(ticks):
    return Date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks):
    return Time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks):
    return Timestamp(*time.localtime(ticks)[:6])


def complete_statement(statement: str) -> bool:
    return _std.complete_statement(statement)


def enable_callback_tracebacks(flag: bool) -> None:
    """Accepted for compatibility: callbacks (user functions) do not run in the client."""


# --- parameters ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _placeholders(sql: str) -> tuple[int, dict[str, int]]:
    """SQLite's numbering of a statement's parameters: (count, name → index)."""
    count = 0
    names: dict[str, int] = {}
    for tok in sqltext.tokenize(sql):
        if tok.kind != "param":
            continue
        text = tok.text
        if text == "?":
            count += 1
        elif text[0] == "?":
            count = max(count, int(text[1:]))
        elif text[0] == "$" and text[1:].isdigit():
            count = max(count, int(text[1:]))
        elif text[1:] not in names:
            count += 1
            names[text[1:]] = count
    return count, names


def _bindable(value, i):
    tp = type(value)
    adapter = adapters.get((tp, PrepareProtocol)) if adapters else None
    if adapter is not None:  # registered adapters win, for base types too (as in sqlite3)
        value = adapter(value)
        return _bindable(value, i) if type(value) is not tp else value
    if value is None or tp in (int, float, str, bytes):
        return value
    if tp in (bytearray, memoryview):
        return bytes(value)
    if hasattr(value, "__conform__"):
        try:
            conformed = value.__conform__(PrepareProtocol)
        except Exception:
            raise ProgrammingError(f"Error binding parameter {i}: type '{tp.__name__}' is not supported") from None
        if conformed is not None:
            return _bindable(conformed, i)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise ProgrammingError(f"Error binding parameter {i} - probably unsupported type.")


def _bind(sql: str, parameters) -> tuple:
    count, names = _placeholders(sql)
    if isinstance(parameters, Mapping) and not isinstance(parameters, (tuple, list)):
        if count and len(names) < count:
            raise ProgrammingError("Binding 1 has no name, but you supplied a dictionary (which has only names).")
        values = [None] * count
        for name, index in names.items():
            if name in parameters:
                values[index - 1] = parameters[name]
            elif hasattr(parameters, "__missing__"):
                values[index - 1] = parameters[name]
            else:
                raise ProgrammingError(f"You did not supply a value for binding parameter :{name}.")
        return tuple(_bindable(v, i + 1) for i, v in enumerate(values))
    if not isinstance(parameters, Sequence) and not (hasattr(parameters, "__len__")
                                                     and hasattr(parameters, "__getitem__")):
        raise ProgrammingError("parameters are of unsupported type")
    supplied = len(parameters)
    if supplied != count:
        raise ProgrammingError(
            f"Incorrect number of bindings supplied. The current statement uses {count}, and there are "
            f"{supplied} supplied."
        )
    # one by one, as sqlite3 does: an adapter may change the sequence under us
    return tuple(_bindable(parameters[i], i + 1) for i in range(count))


# --- rows ---------------------------------------------------------------------------------------


class Row:
    """sqlite3.Row: a tuple addressable by column name (case-insensitive)."""

    __slots__ = ("_names", "_values")

    def __init__(self, cursor, values) -> None:
        if not issubclass(type(cursor), Cursor):
            raise TypeError("Row() argument 1 must be a Cursor")
        self._names = [d[0] for d in cursor.description]
        self._values = tuple(values)

    def keys(self) -> list[str]:
        return list(self._names)

    def __getitem__(self, key):
        if isinstance(key, str):
            for i, name in enumerate(self._names):
                if name == key or _ascii_lower(name) == _ascii_lower(key):
                    return self._values[i]
            raise IndexError("No item with that key")
        if isinstance(key, (int, slice)):
            return self._values[key]
        raise IndexError("Index must be int or string")

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self):
        return iter(self._values)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._names == other._names and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._names)) ^ hash(self._values)

    def __repr__(self) -> str:
        return f"<sqld.client.Row object at {id(self):#x}>"


def _ascii_lower(text: str) -> str:
    # sqlite3 compares column names case-insensitively in ASCII only
    return "".join(c.lower() if c.isascii() else c for c in text)


Sequence.register(Row)

# --- cursor -------------------------------------------------------------------------------------

_DML = ("INSERT", "UPDATE", "DELETE", "REPLACE")


class Cursor:
    _initialized = False
    _closed = True
    connection = None

    def __init__(self, connection: Connection) -> None:
        if not issubclass(type(connection), Connection):
            raise TypeError("argument 1 must be sqld.client.Connection")
        self.connection = connection
        self.arraysize = 1
        self.row_factory = connection.row_factory
        self.description = None
        self.rowcount = -1
        self.lastrowid = None
        self._rows: list = []
        self._funcs: list = []
        self._pos = 0
        self._closed = False
        self._initialized = True

    def _check(self) -> None:
        if not self._initialized:
            raise ProgrammingError("Base Cursor.__init__ not called.")
        if self._closed:
            raise ProgrammingError("Cannot operate on a closed cursor.")
        self.connection._check()

    def close(self) -> None:
        if not self._initialized:
            raise ProgrammingError("Base Cursor.__init__ not called.")
        if self.connection is not None and self.connection._check_same_thread:
            self.connection._check_thread()
        self._closed = True
        self._rows = []

    def setinputsizes(self, sizes) -> None:
        pass

    def setoutputsize(self, size, column=None) -> None:
        pass

    def execute(self, sql: str, parameters=()):
        self._check()
        if not isinstance(sql, str):
            raise TypeError("execute() argument 1 must be str")
        self._run(sql, [parameters], many=False)
        return self

    def executemany(self, sql: str, seq_of_parameters):
        self._check()
        if not isinstance(sql, str):
            raise TypeError("executemany() argument 1 must be str")
        self._run(sql, seq_of_parameters, many=True)
        return self

    def executescript(self, sql_script):
        self._check()
        if not isinstance(sql_script, str):
            raise TypeError("script argument must be str")
        if "\x00" in sql_script:
            raise ValueError("embedded null character")
        conn = self.connection
        if conn.in_transaction:
            conn._call(lambda: conn._wire.run("COMMIT"))
        conn._call(lambda: conn._wire.script(sql_script))
        self.description = None
        self._rows = []
        return self

    def _run(self, sql: str, seq, many: bool) -> None:
        conn = self.connection
        if "\x00" in sql:
            raise ProgrammingError("the query contains a null character")
        statements = sqltext.parse(sql)
        if len(statements) > 1:
            raise ProgrammingError("You can only execute one statement at a time.")
        verb = statements[0].verb if statements else ""
        if many and verb not in _DML:
            raise ProgrammingError("executemany() can only execute DML statements.")
        self.description = None
        self._rows = []
        self._pos = 0
        self.rowcount = -1
        if verb in _DML and conn.isolation_level is not None and not conn.in_transaction:
            conn._call(lambda: conn._wire.run(f"BEGIN {conn.isolation_level}".strip()))
        total = 0
        result: Result | None = None
        for parameters in seq:
            params = _bind(sql, parameters)
            result = conn._call(lambda: conn._wire.run(sql, params))
            if verb in _DML:
                total += result.changes
        if result is None:  # executemany over nothing
            self.rowcount = 0 if verb in _DML else -1
            return
        if verb in _DML:
            self.rowcount = total
            if not many and verb in ("INSERT", "REPLACE"):
                self.lastrowid = result.last_rowid
        if result.has_rows:
            self.description = tuple((conn._column_name(n), None, None, None, None, None, None)
                                     for n in result.names)
            self._rows = result.rows
            self._funcs = conn._converters(result)

    def _make(self, values):
        values = self.connection._convert_row(values, self._funcs)
        factory = self.row_factory
        return factory(self, values) if factory is not None else values

    def fetchone(self):
        self._check()
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return self._make(row)

    def fetchmany(self, size: int | None = None):
        self._check()
        n = self.arraysize if size is None else size
        rows = self._rows[self._pos : self._pos + n]
        self._pos += len(rows)
        return [self._make(r) for r in rows]

    def fetchall(self):
        self._check()
        rows = self._rows[self._pos :]
        self._pos = len(self._rows)
        return [self._make(r) for r in rows]

    def __iter__(self):
        return self

    def __next__(self):
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row


# --- connection ---------------------------------------------------------------------------------

_LEVELS = ("", "DEFERRED", "IMMEDIATE", "EXCLUSIVE")
CONNECT_TIMEOUT = 10.0


def _target(database, uri: bool, host, port, user, password):
    """(host, port, user, password, database name) from connect()'s arguments."""
    env = urllib.parse.urlsplit(os.environ.get("SQLD_URL", "sqld://127.0.0.1:5432"))
    h, p = env.hostname or "127.0.0.1", env.port or 5432
    u, pw = env.username, env.password
    db = os.fspath(database) if isinstance(database, (str, PurePath)) else database
    if isinstance(db, bytes):
        db = db.decode()
    if isinstance(db, str) and db.startswith("sqld://"):
        url = urllib.parse.urlsplit(db)
        h, p = url.hostname or h, url.port or p
        u = urllib.parse.unquote(url.username) if url.username else u
        pw = urllib.parse.unquote(url.password) if url.password else pw
        name = urllib.parse.unquote(url.path.lstrip("/")) or "main"
    else:
        if uri and db.startswith("file:"):
            db = urllib.parse.unquote(db[5:].split("?", 1)[0]) or ":memory:"
        if db in ("", ":memory:"):
            name = ":memory:"
        else:
            stem = PurePath(db).name
            name = stem[: -len(PurePath(stem).suffix)] if PurePath(stem).suffix else stem
    return host or h, port or p, user or u or getpass.getuser(), password or pw, name


class Connection:
    """sqlite3.Connection over a sqld session."""

    _wire = None
    _initialized = False
    _isolation_level = ""
    _check_same_thread = False

    Warning = Warning
    Error = Error
    InterfaceError = InterfaceError
    DatabaseError = DatabaseError
    DataError = DataError
    OperationalError = OperationalError
    IntegrityError = IntegrityError
    InternalError = InternalError
    ProgrammingError = ProgrammingError
    NotSupportedError = NotSupportedError

    def __init__(self, database, timeout: float = 5.0, detect_types: int = 0, isolation_level: str | None = "",
                 check_same_thread: bool = True, factory=None, cached_statements: int = 128, uri: bool = False,
                 *, host: str | None = None, port: int | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        old, self._wire = self._wire, None
        self._initialized = False  # until this (re-)initialisation succeeds
        if old is not None:
            old.close()
        self._thread = threading.get_ident()
        self._check_same_thread = check_same_thread
        self.detect_types = detect_types
        self.row_factory = None
        self.text_factory = str
        self._isolation_level = ""
        self.isolation_level = isolation_level
        h, p, u, pw, name = _target(database, uri, host, port, user, password)
        try:
            # sqlite3's timeout is how long to wait for a lock: the server's lock_timeout.
            self._wire = WireConnection(h, p, user=u, database=name, password=pw, timeout=CONNECT_TIMEOUT,
                                        lock_timeout=timeout, cache_size=cached_statements)
        except WireError as exc:
            raise OperationalError(f"unable to open database: {exc}") from None
        except ServerError as exc:
            err = _error(exc)
            raise OperationalError(f"unable to open database: {err}") from None
        self._initialized = True

    # -- sqlite3 attributes -------------------------------------------------------------------

    @property
    def isolation_level(self):
        self._check_init()
        return self._isolation_level

    @isolation_level.setter
    def isolation_level(self, value) -> None:
        if value is not None:
            if not isinstance(value, str):
                raise TypeError("isolation_level must be str or None")
            if str.upper(value) not in _LEVELS:
                raise ValueError(
                    "isolation_level string must be '', 'DEFERRED', 'IMMEDIATE', or 'EXCLUSIVE'")
        if value is None and self._wire is not None and self.in_transaction:
            self.commit()
        self._isolation_level = value

    @property
    def in_transaction(self) -> bool:
        self._check()
        return self._wire.status != b"I"

    @property
    def total_changes(self) -> int:
        self._check()
        return self._wire.total_changes

    # -- plumbing -----------------------------------------------------------------------------

    def _check_init(self) -> None:
        if not self._initialized:
            raise ProgrammingError("Base Connection.__init__ not called.")

    def _check(self) -> None:
        self._check_init()
        if self._wire is None or self._wire.closed:
            if self._wire is not None and self._wire.lost:
                raise OperationalError(self._wire.lost)
            raise ProgrammingError("Cannot operate on a closed database.")
        self._check_thread()

    def _check_thread(self) -> None:
        if self._check_same_thread and threading.get_ident() != self._thread:
            raise ProgrammingError(
                "SQLite objects created in a thread can only be used in that same thread. The object was "
                f"created in thread id {self._thread} and this is thread id {threading.get_ident()}.")

    def _call(self, fn):
        try:
            return fn()
        except ServerError as exc:
            raise _error(exc) from None
        except WireError as exc:
            raise OperationalError(str(exc)) from None

    def _column_name(self, name: str) -> str:
        if self.detect_types & PARSE_COLNAMES and " [" in name:
            return name.split(" [", 1)[0]
        return name

    def _converters(self, result: Result) -> list:
        """Per column, the converter PARSE_DECLTYPES / PARSE_COLNAMES picks (or None)."""
        funcs = [None] * len(result.names)
        if self.detect_types:
            for i, name in enumerate(result.names):
                conv = None
                if self.detect_types & PARSE_COLNAMES and "[" in name and name.endswith("]"):
                    conv = converters.get(name[name.rindex("[") + 1 : -1].upper())
                if conv is None and self.detect_types & PARSE_DECLTYPES and result.decltypes[i]:
                    key = result.decltypes[i].split("(")[0].split()[0].upper()
                    conv = converters.get(key)
                funcs[i] = conv
        return funcs

    def _convert_row(self, row: tuple, funcs: list) -> tuple:
        """A row as sqlite3 returns it at fetch time: converters, then text_factory."""
        tf = self.text_factory
        if tf is str and not any(funcs):
            return row
        values = []
        for v, conv in zip(row, funcs):
            if conv is not None and v is not None:
                raw = v if isinstance(v, bytes) else str(v).encode("utf-8")
                # sqlite3 gets no pointer for an empty BLOB and gives None, not a conversion
                values.append(conv(raw) if raw or not isinstance(v, bytes) else None)
            elif type(v) is str and tf is not str:
                values.append(tf(v.encode("utf-8")) if tf is not None else v)
            else:
                values.append(v)
        return tuple(values)

    # -- sqlite3 methods ----------------------------------------------------------------------

    def cursor(self, factory=Cursor):
        self._check()
        cur = factory(self)
        if not issubclass(type(cur), Cursor):
            raise TypeError("factory must return a cursor, not " + type(cur).__name__)
        return cur

    def execute(self, sql: str, parameters=()):
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters):
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script):
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        self._check()
        if self.in_transaction:
            self._call(lambda: self._wire.run("COMMIT"))

    def rollback(self) -> None:
        self._check()
        if self.in_transaction:
            self._call(lambda: self._wire.run("ROLLBACK"))

    def close(self) -> None:
        self._check_init()
        self._check_thread()
        if self._wire is not None:
            self._wire.close()

    def interrupt(self) -> None:
        """Cancel the running statement (callable from any thread)."""
        if self._wire is None or self._wire.closed:
            raise ProgrammingError("Cannot operate on a closed database.")
        self._wire.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.rollback()
        return False

    def __del__(self) -> None:
        wire = getattr(self, "_wire", None)
        if wire is not None and not wire.closed:
            wire.close()

    # In-process features of sqlite3 a server cannot offer: user functions run in the client's
    # process, the database runs in the server's.
    def _not_supported(self, *args, **kwargs):
        self._check()
        raise NotSupportedError("not supported by sqld.client: the database runs in the server, not this process")

    create_function = create_aggregate = create_window_function = create_collation = _not_supported
    set_authorizer = set_progress_handler = set_trace_callback = _not_supported
    enable_load_extension = load_extension = backup = blobopen = serialize = deserialize = _not_supported
    setlimit = getlimit = iterdump = __call__ = _not_supported


def connect(*args, **kwargs):
    """Connect to a sqld server's database (see the module docstring for ``database``).

    Takes sqlite3.connect's arguments; like sqlite3, it hands them all to ``factory``."""
    factory = kwargs.get("factory", args[5] if len(args) > 5 else Connection)
    return factory(*args, **kwargs)


def __getattr__(name: str):
    if name == "OptimizedUnicode":
        import warnings

        warnings.warn("OptimizedUnicode is deprecated; use str", DeprecationWarning, stacklevel=2)
        return str
    raise AttributeError(f"module 'sqld.client' has no attribute {name!r}")


def enable_shared_cache(enable: int) -> None:
    """Accepted for compatibility (SQLite's shared cache is a server-side matter here)."""
    import warnings

    warnings.warn("enable_shared_cache is deprecated", DeprecationWarning, stacklevel=2)
