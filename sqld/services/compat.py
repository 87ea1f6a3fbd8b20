"""What PostgreSQL clients send on their own, answered: SET, SHOW, RESET, DISCARD, and friends.

Not a translator: user SQL passes through to SQLite untouched. This layer answers the
statements that have no SQLite meaning (session settings, cursors, LISTEN) and provides
the SQL functions drivers call (``version()``, ``current_setting()``…) to every connection.
"""

from __future__ import annotations

import re

import attrs

from sqld import __version__
from sqld.backends.base import Column, StatementInfo
from sqld.errors import FeatureNotSupported, InvalidParameterValue, SqldError, UndefinedObject
from sqld.pgwire import types as t
from sqld.services import catalog
from sqld.services.base import After, Describe, DescribeResult, Execute, Peek, SessionState, StaticCursor
from sqld.sqltext import Statement, parse_one
from sqld.verbs import COMPAT_VERBS

SERVER_VERSION = f"15.0 (sqld {__version__})"
SERVER_VERSION_NUM = "150000"

# Settings a client sees and their start values. Those PostgreSQL reports with
# ParameterStatus (protocol 55.2.6 "GUC_REPORT") are marked True.
DEFAULTS: dict[str, tuple[str, bool]] = {
    "server_version": (SERVER_VERSION, True),
    "server_version_num": (SERVER_VERSION_NUM, False),
    "server_encoding": ("UTF8", True),
    "client_encoding": ("UTF8", True),
    "datestyle": ("ISO, MDY", True),
    "timezone": ("UTC", True),
    "intervalstyle": ("postgres", True),
    "integer_datetimes": ("on", True),
    "standard_conforming_strings": ("on", True),
    "application_name": ("", True),
    "is_superuser": ("on", True),
    "session_authorization": ("", True),
    "default_transaction_read_only": ("off", True),
    "in_hot_standby": ("off", True),
    "search_path": ('"$user", public', False),
    "transaction_isolation": ("serializable", False),
    "default_transaction_isolation": ("serializable", False),
    "transaction_read_only": ("off", False),
    "max_identifier_length": ("63", False),
    "extra_float_digits": ("1", False),
    "statement_timeout": ("0", False),
    "lock_timeout": ("0", False),
    "idle_in_transaction_session_timeout": ("0", False),
    "lc_collate": ("C", False),
    "lc_ctype": ("C", False),
    "bytea_output": ("hex", False),
    "client_min_messages": ("notice", False),
}

# How PostgreSQL spells the names it reports (ParameterStatus is case-sensitive to libpq).
CANONICAL = {"datestyle": "DateStyle", "timezone": "TimeZone", "intervalstyle": "IntervalStyle"}


_SET = re.compile(
    r"^\s*SET\s+(?:(?P<scope>SESSION|LOCAL)\s+)?(?P<name>[A-Za-z_][\w.]*|TIME\s+ZONE)\s*(?:TO|=|\s)\s*(?P<value>.*?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def reported_name(name: str) -> str:
    return CANONICAL.get(name, name)


def initial_settings(user: str, params: dict[str, str]) -> dict[str, str]:
    """A new session's settings: defaults, then what the startup message asked for."""
    settings = {name: value for name, (value, _) in DEFAULTS.items()}
    settings["session_authorization"] = user
    for key, value in params.items():
        k = key.lower()
        if k in ("user", "database", "options", "replication") or k.startswith("_pq_."):
            continue
        settings[k] = value
    # libpq's options="-c name=value --name=value" (backslash escapes a space), as PostgreSQL
    for name, value in _command_line_settings(params.get("options", "")):
        settings[name.lower().replace("-", "_")] = value
    return settings


def _command_line_settings(options: str):
    """(name, value) of each ``-c name=value`` / ``--name=value`` in a startup ``options``."""
    words, word, escaped = [], [], False
    for ch in options:
        if escaped:
            word.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(ch)
    if word:
        words.append("".join(word))
    i = 0
    while i < len(words):
        w = words[i]
        if w == "-c" and i + 1 < len(words):
            w, i = words[i + 1], i + 1
        elif w.startswith("-c"):
            w = w[2:]
        elif w.startswith("--"):
            w = w[2:]
        else:
            i += 1
            continue  # other postgres switches mean nothing here
        name, eq, value = w.partition("=")
        if eq and name:
            yield name, value
        i += 1


def is_reported(name: str) -> bool:
    d = DEFAULTS.get(name)
    return bool(d and d[1])


def parse_timeout(value: str, name: str = "statement_timeout") -> float | None:
    """A PostgreSQL time setting (milliseconds by default, or with a unit) as seconds."""
    v = value.strip().strip("'\"").strip().lower()
    m = re.fullmatch(r"(-?\d{1,15}(?:\.\d{1,15})?)\s*(us|ms|s|min|h|d)?", v)
    if not m:
        raise InvalidParameterValue(f'invalid value for parameter "{name}": "{value[:100]}"',
                                    hint="Valid units for this parameter are \"us\", \"ms\", \"s\", \"min\", \"h\", and \"d\".")
    n = float(m.group(1))
    unit = m.group(2) or "ms"
    seconds = n * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}[unit]
    return seconds if seconds > 0 else None


def _unquote(value: str) -> str:
    value = value.strip()
    if value.upper() == "DEFAULT":
        return "DEFAULT"
    parts = [p.strip() for p in re.split(r",(?=(?:[^']*'[^']*')*[^']*$)", value)]
    out = []
    for p in parts:
        if len(p) >= 2 and p[0] == p[-1] and p[0] in "'\"":
            p = p[1:-1].replace(p[0] * 2, p[0])
        elif p.upper().startswith("E'") and p.endswith("'"):
            p = p[2:-1]
        out.append(p)
    return ", ".join(out)


# The session settings that are timeouts, and the SessionState attribute each sets.
TIMEOUTS = {"statement_timeout": "statement_timeout", "lock_timeout": "lock_timeout",
            "idle_in_transaction_session_timeout": "idle_tx_timeout"}


def show_timeout(seconds: float | None) -> str:
    """A timeout as PostgreSQL's SHOW writes it: 0, 500ms, 30s, 5min."""
    if not seconds:
        return "0"
    ms = round(seconds * 1000)
    if ms % 60000 == 0:
        return f"{ms // 60000}min"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


@attrs.frozen
class Limits:
    """The operator's timeouts (flags): ceilings a session may lower, never raise or lift."""

    statement_timeout: float | None = None
    lock_timeout: float | None = None
    idle_tx_timeout: float | None = None

    def apply(self, state: SessionState, name: str, value: str | None) -> None:
        """The session asks for timeout ``name`` = ``value`` (None or DEFAULT: the server's);
        it gets that, or the server's ceiling if it asked for more (or for none: 0)."""
        attr = TIMEOUTS[name]
        ceiling = getattr(self, attr)
        asked = parse_timeout(value, name) if value is not None and value.upper() != "DEFAULT" else ceiling
        if ceiling is not None and (asked is None or asked > ceiling):
            asked = ceiling
        setattr(state, attr, asked)
        state.settings[name] = show_timeout(asked)


@attrs.define(eq=False)
class CompatService:
    """The compat layer: answers PostgreSQL-only statements, passes everything else inward."""

    inner: object
    state: SessionState
    limits: Limits = attrs.Factory(lambda: Limits())

    async def __call__(self, request):
        rt = type(request)
        if rt is Execute or rt is Describe or rt is Peek:
            stmt = request.statement
            if catalog.is_catalog(stmt):
                if rt is Execute:
                    return await catalog.answer_any(stmt, self.inner, self.state.user)
                if rt is Peek:
                    return None
                return DescribeResult(info=StatementInfo(columns=catalog.columns(stmt), param_count=0, readonly=True),
                                      param_decltypes=())
            if stmt.verb == "PRAGMA" and stmt.words[1:] == ("DATABASE_LIST",):
                # SQLite answers with the server's file paths; a client gets database names.
                request = attrs.evolve(request, statement=_database_list(self.state.database or "main"))
            elif stmt.verb in COMPAT_VERBS:
                if rt is Execute:
                    return self.execute(stmt)
                if rt is Peek:
                    return None
                return self.describe(stmt)
        return await self.inner(request)

    def describe(self, stmt: Statement) -> DescribeResult:
        cols: tuple[Column, ...] = ()
        if stmt.verb == "SHOW":
            cols = (Column(self._show_name(stmt), oid=t.TEXT),)
        return DescribeResult(info=StatementInfo(columns=cols, param_count=0, readonly=True), param_decltypes=())

    def _show_name(self, stmt: Statement) -> str:
        rest = stmt.sql.split(None, 1)[1] if len(stmt.sql.split(None, 1)) > 1 else ""
        name = " ".join(rest.strip().rstrip(";").strip().lower().split())
        if name == "time zone":
            return "TimeZone"
        if name == "transaction isolation level":
            return "transaction_isolation"
        return name.strip('"')

    def execute(self, stmt: Statement):
        verb = stmt.verb
        if verb == "SET":
            return self._set(stmt)
        if verb == "SHOW":
            name = self._show_name(stmt)
            if name == "all":
                rows = [(reported_name(k), v, "") for k, v in sorted(self.state.settings.items())]
                cols = (Column("name", oid=t.TEXT), Column("setting", oid=t.TEXT), Column("description", oid=t.TEXT))
                return StaticCursor(cols, rows, "SHOW")
            key = name.lower()
            if key not in self.state.settings:
                raise SqldError(f'unrecognized configuration parameter "{name}"', sqlstate="42704")
            return StaticCursor((Column(name, oid=t.TEXT),), [(self.state.settings[key],)], "SHOW")
        if verb == "RESET":
            target = stmt.sql.split(None, 1)[1].strip().rstrip(";").strip().lower() if len(stmt.sql.split()) > 1 else ""
            if target == "all":
                self._reset_all()
            else:
                self._assign(target, DEFAULTS.get(target, ("",))[0])
            return StaticCursor(None, [], "RESET")
        if verb == "DISCARD":
            self._reset_all()
            what = stmt.words[1] if len(stmt.words) > 1 else "ALL"
            return StaticCursor(None, [], f"DISCARD {what}", after=After(forget=("*",)))
        if verb == "DEALLOCATE":
            words = [w for w in stmt.words[1:] if w != "PREPARE"]
            name = "*" if words == ["ALL"] else stmt.sql.split()[-1].strip('";').rstrip(";")
            return StaticCursor(None, [], "DEALLOCATE ALL" if name == "*" else "DEALLOCATE",
                                after=After(forget=(name,)))
        if verb == "CLOSE":
            return StaticCursor(None, [], "CLOSE CURSOR ALL" if "ALL" in stmt.words else "CLOSE CURSOR")
        if verb == "UNLISTEN":
            return StaticCursor(None, [], "UNLISTEN")
        raise FeatureNotSupported(f"{verb} is not supported by sqld")

    def _reset_all(self) -> None:
        for name, (value, _) in DEFAULTS.items():
            if name in ("server_version", "server_version_num", "server_encoding", "session_authorization", "is_superuser"):
                continue
            if self.state.settings.get(name) != value:
                self._assign(name, value)

    def _set(self, stmt: Statement):
        words = stmt.words
        if len(words) > 1 and words[1] in ("TRANSACTION", "SESSION") and (
            words[1] == "TRANSACTION" or (len(words) > 2 and words[2] == "CHARACTERISTICS")
        ):
            return StaticCursor(None, [], "SET")  # SQLite transactions are serializable already
        m = _SET.match(stmt.sql)
        if not m:
            raise SqldError(f"syntax error in SET: {stmt.sql[:80]}", sqlstate="42601")
        name = re.sub(r"\s+", " ", m.group("name").lower())
        if name == "time zone":
            name = "timezone"
        if name.startswith("names"):
            name = "client_encoding"
        value = _unquote(m.group("value"))
        if value.upper() == "DEFAULT":
            value = DEFAULTS.get(name, ("",))[0]
        if name == "client_encoding" and value.upper().replace("-", "") not in ("UTF8", "UNICODE"):
            raise FeatureNotSupported(f'client encoding "{value}" is not supported: sqld speaks UTF8 only')
        self._assign(name, value)
        return StaticCursor(None, [], "SET")

    def _assign(self, name: str, value: str) -> None:
        if name in TIMEOUTS:
            self.limits.apply(self.state, name, value)
            return
        if name in ("server_version", "server_encoding", "integer_datetimes", "server_version_num"):
            raise SqldError(f'parameter "{name}" cannot be changed', sqlstate="55P02")
        self.state.settings[name] = value
        if is_reported(name):
            self.state.reported[reported_name(name)] = value


def _database_list(database: str) -> Statement:
    """``PRAGMA database_list`` with the session's database name where SQLite has a path."""
    name = database.replace("'", "''")
    return parse_one("select seq, name, case name when 'main' then '" + name + "' else '' end as file "
                     "from pragma_database_list")


# --- SQL functions drivers call --------------------------------------------------------------


def sql_functions():
    """(name, nargs, function) triples for every connection. Each function is called with
    the session running the statement (None outside one) before its SQL arguments."""

    def version(st):
        return f"PostgreSQL {SERVER_VERSION} on sqld, SQLite backend"

    def current_setting(st, name, missing_ok=0):
        if name is None:
            return None  # strict in PostgreSQL: NULL in, NULL out
        key = str(name).lower()
        if st is not None and key in st.settings:
            return st.settings[key]
        if key in DEFAULTS:
            return DEFAULTS[key][0]
        if missing_ok:
            return None
        raise UndefinedObject(f'unrecognized configuration parameter "{name}"')

    def pg_backend_pid(st):
        return st.process_id if st is not None else 0

    def current_database(st):
        return st.database if st is not None else "main"

    def current_user(st):
        return st.user if st is not None else ""

    def nothing(st, *args):
        return None

    return [
        ("version", 0, version),
        ("current_setting", 1, current_setting),
        ("current_setting", 2, current_setting),
        ("pg_backend_pid", 0, pg_backend_pid),
        ("current_database", 0, current_database),
        ("current_schema", 0, lambda st: "public"),
        ("current_user", 0, current_user),
        ("session_user", 0, current_user),
        # sqld has no advisory locks, so there are none to release (asyncpg's pool reset).
        ("pg_advisory_unlock_all", 0, nothing),
    ]
