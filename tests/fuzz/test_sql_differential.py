"""Differential SQL fuzzing: concurrent sessions through a real sqld, replayed on local apsw.

Each example draws a schema (tables with unique, not null and check constraints, an
immediate and a deferred foreign key, triggers that ``RAISE(ABORT | FAIL | ROLLBACK |
IGNORE)``, one that writes a log table and an AFTER INSERT one raising FAIL) and, for three sessions, a program of *units*:

* an autocommit statement (simple Query; or extended protocol when it has parameters),
  drawn from DML against the constraints (with every ``OR`` conflict clause), reads, DDL,
  sqld's own SQL functions with bad arguments (``current_setting`` of unknown names, NULL,
  wrong counts), and type and NULL edge cases (integer overflow, bad JSON, blobs, '');
* an explicit transaction ``BEGIN … COMMIT`` (or ``ROLLBACK``) of a few statements;
* a multi-statement simple Query (PostgreSQL runs it as one implicit transaction);
* a psycopg pipeline (extended protocol up to one Sync: one implicit transaction).

The three sessions run their programs at the same time against one sqld (so autocommit
writes meet in group commits), recording for each unit when it was sent, when its answer
came, and the answer (rows, row counts, or the SQLSTATE of its error).

The oracle is SQLite itself, through apsw in this process, with sqld's SQL functions, and
PostgreSQL's rule for errors: a unit that fails leaves nothing (an autocommit statement, a
transaction block, an implicit transaction of a Query or a pipeline are all-or-nothing; in
a block, statements after the error answer 25P02 and COMMIT answers ``ROLLBACK``). The
checker searches for a serial order of the units that respects real time (a unit may go
before another only if it was sent before the other's answer came: Wing & Gong's
linearizability check, with SQLite as the model) in which the oracle gives every unit the
answer sqld gave, and ends in sqld's final database. Properties per example:

* such an order exists: same answers, same final database, nothing acknowledged missing,
  nothing of a failed unit kept;
* the server is alive and answers ``select 1``; no error is XX000 and its log has no
  traceback.

* after every session of the example disconnected, none holds the writer.

A unit that ended in 40001 (serialization failure: its snapshot went stale) is allowed to
have had no effect and its answers are not compared (no serial order gives them). A
pipeline's reads before its first write run each on its own, seeing the newest data (as
under PostgreSQL's read committed): each is a unit of its own in the search. Columns that
may hold values of several types are read through ``quote()`` (sqld announces a column's
type from its declared type or first value; another type in a later row is 22000).

Budget: ``SQLD_FUZZ_EXAMPLES`` (default 150 examples of three sessions; each example tries
about 30 statements); ``SQLD_FUZZ_NO_SHRINK=1`` reports a failure unshrunk; ``SQLD_TEST_BACKEND=mvsqlite`` runs it on mvsqlite. The count of
statements sqld ran is printed at the end of the module (``fuzz[sql-differential]: …``)
and recorded in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter

import apsw
import attrs
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sqld.backends.libsql import _raised_in_python
from sqld.errors import SqldError, from_sqlite
from sqld.services.compat import sql_functions
from tests.fuzz import TRIED, fuzz, report_fixture

SUITE = "sql-differential"
SESSIONS = 3
HANG = 30.0  # seconds an example may take before its sessions count as hung
STATEMENTS: Counter = Counter()  # statements sqld ran, by kind of unit
_report = report_fixture(SUITE, lambda: f"{sum(STATEMENTS.values())} statements sent ("
                         + ", ".join(f"{k} {v}" for k, v in sorted(STATEMENTS.items())) + ")")

# --- the schema -------------------------------------------------------------------------


@attrs.frozen
class Schema:
    guard: str  # the RAISE action of p's update trigger
    keep: str  # the RAISE action of p's delete trigger
    check: bool  # p.n has check (n >= 0)

    def ddl(self) -> list[str]:
        check = " check (n >= 0)" if self.check else ""
        return [
            f"create table p (id integer primary key, name text unique, n integer not null default 0{check})",
            "create table c (id integer primary key, pid integer references p(id), v)",
            "create table d (id integer primary key, pid integer references p(id) "
            "deferrable initially deferred, v)",
            "create table log (id integer primary key autoincrement, what text not null)",
            f"create trigger p_guard before update on p when new.n > 50 "
            f"begin select raise({self.guard}{'' if self.guard == 'ignore' else ', ' + repr('n over 50')}); end",
            f"create trigger p_keep before delete on p when old.name = 'keep' "
            f"begin select raise({self.keep}{'' if self.keep == 'ignore' else ', ' + repr('keep stays')}); end",
            "create trigger c_log after insert on c begin insert into log(what) values ('c' || new.id); end",
            # FAIL keeps, in SQLite, what the statement did before the error: sqld must not
            "create trigger c_fail after insert on c when new.v = 'bad' begin select raise(fail, 'bad'); end",
            "insert into p (id, name, n) values (1, 'keep', 1), (2, 'two', 2)",
        ]


TABLES = ("p", "c", "d", "log", "x")  # (and "probe", the writer check after each example)
DROP = ["drop table if exists x", "drop table if exists d", "drop table if exists c",
        "drop table if exists log", "drop table if exists p"]

schemas = st.builds(Schema, guard=st.sampled_from(["abort", "fail", "rollback", "ignore"]),
                    keep=st.sampled_from(["abort", "fail", "rollback", "ignore"]), check=st.booleans())

# --- statements -------------------------------------------------------------------------

ids = st.integers(1, 6)
small = st.integers(-3, 60)
INT_EDGES = [0, -1, 2**31, -(2**31), 2**63 - 1, -(2**63)]
text_values = st.sampled_from(["''", "'a'", "'bad'", "'keep'", "'two'", "'ü€'", "'it''s'", "NULL", "x'00ff'", "1.5",
                               "9223372036854775807", "-9223372036854775808", "'9'", "zeroblob(2)"])
conflict = st.sampled_from(["", " or replace", " or ignore", " or fail", " or abort", " or rollback"])
names = st.sampled_from(["'keep'", "'two'", "'three'", "'four'", "NULL", "''"])

# sqld's SQL functions with bad or odd arguments, and SQLite's edge cases.
odd_exprs = st.sampled_from([
    "current_setting('nope')", "current_setting(NULL)", "current_setting('server_version')",
    "current_setting('nope', 1)", "current_setting('nope', 0)", "current_setting(x'00')",
    "current_setting(42)", "current_database()", "current_schema()", "version() is not null",
    "abs(-9223372036854775808)", "json('{bad')", "json_extract('[1]', '$[')",
    "printf('%d')", "substr(NULL, 1)", "cast('x' as integer)", "1 / 0", "hex(zeroblob(3))",
    "char(1114112)", "length(randomblob(0))", "coalesce(NULL, NULL)", "typeof(1e308 * 10)",
    "'a' || NULL", "unicode('')", "instr(NULL, 'a')", "round(2.5)", "nullif(1, 1)",
])
bad_arity = st.sampled_from(["current_setting()", "current_setting('a', 1, 2)", "version(1)",
                             "current_database(1)", "abs()", "substr()"])


def _dml(draw) -> str:
    kind = draw(st.integers(0, 14))
    k, v = draw(ids), draw(small)
    if kind == 0:
        return f"insert{draw(conflict)} into p (id, name, n) values ({k}, {draw(names)}, {v})"
    if kind == 1:
        return f"insert{draw(conflict)} into p (name, n) values ({draw(names)}, {v})"
    if kind == 2:
        return f"update{draw(conflict)} p set n = n + {v} where id = {k}"
    if kind == 3:
        return f"update p set n = n + {draw(st.integers(-2, 30))}"
    if kind == 4:
        return f"update{draw(conflict)} p set name = {draw(names)} where id = {k}"
    if kind == 5:
        return f"delete from p where id = {k}"
    if kind == 6:
        return f"insert{draw(conflict)} into c (id, pid, v) values ({draw(ids)}, {k}, {draw(text_values)})"
    if kind == 7:
        return f"insert into c (pid, v) values ({draw(st.sampled_from([str(k), 'NULL', '99']))}, {draw(odd_exprs)})"
    if kind == 8:
        return f"insert into d (pid, v) values ({draw(st.sampled_from([str(k), '99', 'NULL']))}, {draw(text_values)})"
    if kind == 9:
        if draw(st.booleans()):  # two rows, the second maybe failing (c_fail, OR FAIL)
            # (OR ROLLBACK is never grouped: it runs alone, outside the group's savepoints)
            how = draw(st.sampled_from(["", " or fail", " or rollback", " or ignore"]))
            second = draw(st.one_of(st.just("'bad'"), text_values))
            return f"insert{how} into c (id, pid, v) values ({draw(ids)}, {k}, 'a'), ({draw(ids)}, {k}, {second})"
        return f"delete from c where pid = {k}"
    if kind == 10:
        return f"update d set pid = {draw(st.sampled_from([str(k), '99']))} where id = (select max(id) from d)"
    if kind == 11:
        return f"insert into p (id, name, n) values ({draw(st.integers(10, 40))}, NULL, {v}) returning id, n"
    if kind == 12:
        return f"delete from d where pid = {k} returning pid"
    if kind == 13:
        return f"insert into p (id, name, n) values ({draw(st.integers(10, 40))}, {draw(names)}, {draw(odd_exprs)})"
    return f"update p set n = {draw(st.sampled_from([str(x) for x in INT_EDGES] + ['NULL', repr('x')]))} where id = {k}"


def _read(draw) -> str:
    return draw(st.sampled_from([
        # A column holding values of several types (c.v, d.v, and p.n, whose integer affinity
        # keeps 'x') is read through quote(): sqld announces a column's type from its declared
        # type or first value, and a row of another type is an error (22000), by design.
        "select id, name, quote(n) from p order by id", "select count(*), max(id) from p",
        "select id, pid, quote(v), typeof(v) from c order by id", "select id, what from log order by id",
        "select id, pid, quote(v) from d order by id", "select p.id, count(c.id) from p left join c on c.pid = p.id "
        "group by p.id order by p.id", "select a, b from x order by 1",
    ]))


def _ddl(draw) -> str:
    return draw(st.sampled_from([
        "create table if not exists x (a integer primary key, b text unique)",
        "create table x (a integer primary key, b text unique)",
        "drop table if exists x", "drop table x", "insert into x (b) values ('b')",
        "create index if not exists p_n on p (n)", "drop index if exists p_n",
        "alter table x add column z default 3", "create unique index if not exists c_v on c (v)",
        "drop index if exists c_v",
    ]))


@st.composite
def statements(draw) -> str:
    kind = draw(st.sampled_from(["dml"] * 6 + ["read"] * 2 + ["ddl", "odd", "arity"]))
    if kind == "dml":
        return _dml(draw)
    if kind == "read":
        return _read(draw)
    if kind == "ddl":
        return _ddl(draw)
    if kind == "odd":
        return f"select {draw(odd_exprs)}"
    return f"select {draw(bad_arity)}"


# Parameterized forms (extended protocol, values bound by psycopg and by apsw alike).
@st.composite
def parameterized(draw) -> tuple[str, tuple]:
    value = draw(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.sampled_from(["", "keep", "ü"]),
                           st.binary(max_size=3), st.floats(allow_nan=False, allow_infinity=False, width=64)))
    k = draw(ids)
    return draw(st.sampled_from([
        ("insert into c (id, pid, v) values (?, ?, ?)", (draw(ids), k, value)),
        ("insert into p (id, name, n) values (?, ?, ?)", (k, value if isinstance(value, str) else None, draw(small))),
        ("update p set n = ? where id = ?", (value if isinstance(value, int) else draw(small), k)),
        ("select id, quote(n) from p where id >= ? order by id", (k,)),
    ]))


@attrs.frozen
class Unit:
    kind: str  # "auto", "param", "block", "query", "pipeline"
    statements: tuple  # SQL texts (for "param": one (sql, params) pair)
    end: str = "commit"  # of a block: "commit" or "rollback"


@st.composite
def units(draw) -> Unit:
    kind = draw(st.sampled_from(["auto"] * 5 + ["param", "block", "block", "query", "pipeline"]))
    if kind == "auto":
        return Unit("auto", (draw(statements()),))
    if kind == "param":
        return Unit("param", (draw(parameterized()),))
    body = tuple(draw(st.lists(statements(), min_size=1, max_size=4)))
    if kind == "block":
        return Unit("block", body, end=draw(st.sampled_from(["commit"] * 4 + ["rollback"])))
    return Unit(kind, body)


programs = st.lists(st.lists(units(), min_size=2, max_size=10), min_size=SESSIONS, max_size=SESSIONS)

# --- answers ----------------------------------------------------------------------------


def _norm(value):
    if isinstance(value, float):
        return ("real", repr(value))
    if isinstance(value, (bytes, memoryview, bytearray)):
        return ("blob", bytes(value).hex())
    if isinstance(value, bool):
        return int(value)
    return value


def _rows(rows) -> tuple:
    return tuple(tuple(_norm(v) for v in row) for row in rows)


@attrs.frozen
class Done:
    rows: tuple | None  # a result set, or None for a command
    count: int | None  # rows a DML changed (None for others)


@attrs.frozen
class Failed:
    sqlstate: str


CLIENT_LOST = "client lost the answer"  # a pipeline psycopg could not follow (see _run_unit)
SKIPPED = "skipped"  # a statement after the error in a pipeline or Query: not run


def _sqlstate(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate or "?????"
    if isinstance(exc, apsw.Error):
        return from_sqlite(exc).sqlstate
    if isinstance(exc, SqldError):
        return exc.sqlstate
    return _raised_in_python(exc).sqlstate


def _is_dml(sql: str) -> bool:
    return re.match(r"\s*(insert|update|delete)\b", sql, re.I) is not None


def _returns(sql: str) -> bool:
    return re.match(r"\s*select\b", sql, re.I) is not None or " returning " in sql


@attrs.define
class Record:
    session: int
    index: int | str
    unit: Unit
    sent: float = 0.0
    answered: float = 0.0
    answers: list = attrs.field(factory=list)  # per statement: Done | Failed | SKIPPED; then the end's
    error: str | None = None  # SQLSTATE that failed the unit

    @property
    def stale(self) -> bool:
        return self.error == "40001"


# --- running on sqld --------------------------------------------------------------------


def _answer(cur, sql: str) -> Done:
    rows = _rows(cur.fetchall()) if cur.description is not None else None
    count = cur.rowcount if _is_dml(sql) and rows is None else None
    return Done(rows, count)


def _run_unit(conn: psycopg.Connection, rec: Record) -> None:
    unit = rec.unit
    STATEMENTS[unit.kind] += len(unit.statements) + (2 if unit.kind == "block" else 0)
    try:
        if unit.kind == "auto":
            cur = conn.execute(unit.statements[0])
            rec.answers.append(_answer(cur, unit.statements[0]))
        elif unit.kind == "param":
            sql, params = unit.statements[0]
            cur = conn.execute(sql.replace("?", "%s"), params)
            rec.answers.append(_answer(cur, sql))
        elif unit.kind == "query":
            cur = conn.execute("; ".join(unit.statements))
            for sql in unit.statements:
                rec.answers.append(_answer(cur, sql))
                cur.nextset()
        elif unit.kind == "pipeline":
            curs = []
            try:
                with conn.pipeline():
                    for sql in unit.statements:
                        curs.append(conn.execute(sql))
            except (psycopg.OperationalError, IndexError) as exc:
                if isinstance(exc, psycopg.Error) and exc.sqlstate:
                    raise
                # psycopg loses track of a pipeline whose error comes at Sync (a deferred
                # constraint at the implicit COMMIT): "cannot exit pipeline mode while busy",
                # or an IndexError — against PostgreSQL 15 too, for the same messages. The
                # protocol says the batch was rolled back: any error of the oracle's agrees,
                # and the final state checks that nothing of it is left.
                rec.error, rec.answers = CLIENT_LOST, [Failed(CLIENT_LOST)]
                return
            rec.answers.extend(_answer(cur, sql) for cur, sql in zip(curs, unit.statements))
        else:
            _run_block(conn, rec)
    except psycopg.Error as exc:
        rec.error = _sqlstate(exc)
        rec.answers = [Failed(rec.error)]  # where inside the unit is compared through the oracle's state


def _run_block(conn: psycopg.Connection, rec: Record) -> None:
    conn.execute("begin")
    for sql in rec.unit.statements:
        try:
            rec.answers.append(_answer(conn.execute(sql), sql))
        except psycopg.Error as exc:
            rec.answers.append(Failed(_sqlstate(exc)))
            if rec.error is None:
                rec.error = _sqlstate(exc)
    try:
        cur = conn.execute(rec.unit.end)
        rec.answers.append(cur.statusmessage)
    except psycopg.Error as exc:  # a deferred constraint at COMMIT; 40001
        state = _sqlstate(exc)
        rec.answers.append(Failed(state))
        rec.error = rec.error or state
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("rollback")


def _session(conn, program: list[Unit], session: int, start: threading.Barrier, out: list[Record],
             running: dict, conn_info: str = "", opened: list | None = None) -> None:
    opened = opened if opened is not None else []
    start.wait(10)
    for i, unit in enumerate(program):
        rec = Record(session, i, unit)
        running[session] = unit
        rec.sent = time.monotonic()
        _run_unit(conn, rec)
        rec.answered = time.monotonic()
        out.append(rec)
        if rec.error == CLIENT_LOST:  # that connection is stuck in pipeline mode: a new one
            conn.close()
            conn = psycopg.connect(conn_info, autocommit=True, connect_timeout=10)
            opened.append(conn)
    running.pop(session, None)


# --- the oracle -------------------------------------------------------------------------


class _FakeSession:
    settings: dict = {}
    process_id = 0
    database = "main"
    user = "tester"


class Oracle:
    """SQLite in this process, with sqld's SQL functions and PostgreSQL's error rule. A state
    is the database's bytes (apsw serialize), so the search can go back."""

    def __init__(self) -> None:
        self.conn = apsw.Connection(":memory:")
        self.conn.execute("pragma foreign_keys = on")
        for name, nargs, fn in sql_functions():
            self.conn.create_scalar_function(name, (lambda fn: lambda *a: fn(_FakeSession, *a))(fn), nargs)

    def load(self, state: bytes) -> None:
        self.conn.deserialize("main", state)
        self.conn.execute("pragma foreign_keys = on")

    def state(self) -> bytes:
        return self.conn.serialize("main")

    def _one(self, sql: str, params=()) -> Done:
        rows = self.conn.execute(sql, params).fetchall()
        if _returns(sql):
            return Done(_rows(rows), None)
        return Done(None, self.conn.changes() if _is_dml(sql) else None)

    def run(self, unit: Unit) -> tuple[list, str | None]:
        """Run ``unit`` as sqld would be expected to; its answers and its error's SQLSTATE."""
        conn = self.conn
        answers: list = []
        error = None
        conn.execute("begin")
        try:
            if unit.kind == "param":
                sql, params = unit.statements[0]
                answers.append(self._one(sql, params))
            elif unit.kind in ("auto", "query", "pipeline"):
                for sql in unit.statements:
                    answers.append(self._one(sql))
            else:
                for sql in unit.statements:
                    if error is not None:
                        answers.append(Failed("25P02"))
                        continue
                    try:
                        answers.append(self._one(sql))
                    except Exception as exc:  # noqa: BLE001 - any error of the statement is its answer
                        error = _sqlstate(exc)
                        answers.append(Failed(error))
                        if not conn.in_transaction:  # RAISE(ROLLBACK) / OR ROLLBACK ended it
                            conn.execute("begin")
        except Exception as exc:  # noqa: BLE001
            error = _sqlstate(exc)
            answers = [Failed(error)]
        if unit.kind == "block":
            if error is None and unit.end == "commit":
                try:
                    conn.execute("commit")
                    answers.append("COMMIT")
                    return answers, None
                except apsw.Error as exc:
                    error = _sqlstate(exc)
                    answers.append(Failed(error))
            else:
                answers.append("ROLLBACK")
        elif error is None:
            try:
                conn.execute("commit")
                return answers, None
            except apsw.Error as exc:
                error = _sqlstate(exc)
                answers = [Failed(error)]
        if conn.in_transaction:
            conn.execute("rollback")
        return answers, error

    def dump(self) -> dict:
        return _dump(self.conn.execute)


def _dump(execute) -> dict:
    """Every table's rows, each value as quote() writes it (type and value, as text)."""
    names = [r[0] for r in execute("select name from sqlite_schema where type = 'table' and name in "
                                   f"({', '.join(repr(t) for t in TABLES)}) order by name").fetchall()]
    out = {}
    for t in names:
        cols = [r[0] for r in execute(f"select name from pragma_table_info('{t}') order by cid").fetchall()]
        out[t] = _rows(execute(f"select {', '.join(f'quote({c})' for c in cols)} from {t} order by 1").fetchall())
    return out


def _split_pipelines(records: list[list[Record]]) -> list[list[Record]]:
    """A pipeline's reads before its first write run each on its own, seeing the newest data
    (sqld's implicit transaction starts at the first write, as PostgreSQL's read committed
    takes a snapshot per statement): each such read of a pipeline that succeeded becomes a
    unit of its own, placed anywhere in the pipeline's time; the rest stays one unit."""
    out = []
    for recs in records:
        mine = []
        for rec in recs:
            unit = rec.unit
            if unit.kind != "pipeline" or rec.error is not None:
                mine.append(rec)
                continue
            k = 0
            while k < len(unit.statements) and not _is_dml(unit.statements[k]) and _returns(unit.statements[k]):
                k += 1
            for j in range(k):
                mine.append(Record(rec.session, f"{rec.index}.{j}", Unit("auto", (unit.statements[j],)),
                                   rec.sent, rec.answered, [rec.answers[j]]))
            if k < len(unit.statements):
                mine.append(Record(rec.session, f"{rec.index}.{k}", Unit("pipeline", unit.statements[k:]),
                                   rec.sent, rec.answered, rec.answers[k:]))
        out.append(mine)
    return out


class NoSerialOrder(AssertionError):
    pass


def check(records: list[list[Record]], initial: bytes, final: dict, budget: int = 20000) -> list[Record]:
    """A serial order of every session's records that the oracle agrees with (answers, final
    database), respecting real time; raise NoSerialOrder with the longest agreeing prefix."""
    oracle = Oracle()
    seen: set = set()
    steps = 0
    best: list = []
    mismatch: list = []

    def search(pos: tuple, state: bytes, order: list) -> list | None:
        nonlocal steps, best
        if len(order) > len(best):
            best = list(order)
        key = (pos, hashlib.sha1(state).digest())
        if key in seen:
            return None
        seen.add(key)
        pending = [records[s][pos[s]] for s in range(len(records)) if pos[s] < len(records[s])]
        if not pending:
            oracle.load(state)
            got = oracle.dump()
            if got == final:
                return order
            mismatch.append((len(order), ("final database", got)))
            return None
        horizon = min(r.answered for r in pending)
        for rec in pending:
            if rec.sent > horizon:
                continue  # something else was answered before this was sent
            steps += 1
            if steps > budget:
                raise NoSerialOrder(f"search budget of {budget} steps spent")
            nxt = tuple(p + 1 if s == rec.session else p for s, p in enumerate(pos))
            if rec.stale:  # no effect allowed, answers not comparable
                found = search(nxt, state, order + [rec])
                if found is not None:
                    return found
            oracle.load(state)
            answers, error = oracle.run(rec.unit)
            if not _agrees(rec, answers, error):
                mismatch.append((len(order), (rec, answers, error)))
                continue
            found = search(nxt, oracle.state(), order + [rec])
            if found is not None:
                return found
        return None

    order = search(tuple(0 for _ in records), initial, [])
    if order is None:
        lines = [f"no serial order of {sum(map(len, records))} units agrees with SQLite "
                 f"(longest agreeing prefix: {len(best)} units):"]
        lines += [f"  ok  s{r.session}#{r.index} {r.unit} -> {r.answers}" for r in best]
        done = {(r.session, r.index) for r in best}
        lines += [f"  not placed: s{r.session}#{r.index} {r.unit} -> {r.answers} / {r.error}"
                  for recs in records for r in recs if (r.session, r.index) not in done]
        deepest = max((d for d, _ in mismatch), default=0)
        for m in [m for d, m in mismatch if d == deepest][:6]:
            if m[0] == "final database":
                lines.append(f"  final database differs: sqld {final} vs oracle {m[1]}")
            else:
                rec, answers, error = m
                lines.append(f"  BAD s{rec.session}#{rec.index} {rec.unit}: sqld {rec.answers} / {rec.error}, "
                             f"SQLite {answers} / {error}")
        raise NoSerialOrder("\n".join(lines))
    return order


def _agrees(rec: Record, answers: list, error: str | None) -> bool:
    if rec.error == CLIENT_LOST:
        return error is not None
    if rec.error != error:
        return False
    if rec.unit.kind == "block":
        return rec.answers == answers
    if error is not None:
        return True  # the unit failed with the same SQLSTATE; its effect (none) is checked by the state
    return rec.answers == answers


# --- the property -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.conftest import SqldProcess

    proc = SqldProcess(tmp_path_factory.mktemp("sql-differential") / "data", []).start()
    yield proc
    proc.stop()


def _reset(admin: psycopg.Connection, schema: Schema) -> None:
    for sql in DROP + schema.ddl():
        admin.execute(sql)


def _final(admin: psycopg.Connection) -> dict:
    return _dump(admin.execute)


@fuzz(150, seconds_per_example=0.5)
@given(schema=schemas, program=programs)
def test_concurrent_sessions_agree_with_sqlite(server, schema, program):
    TRIED[SUITE] += 1
    conns = [psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) for _ in range(SESSIONS + 1)]
    try:
        _example(server, conns, schema, program)
    finally:
        for conn in conns:
            conn.cancel()
            conn.close()
    # Every session of the example has disconnected: none may still hold the writer.
    with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=10) as probe:
        probe.execute("set lock_timeout = '10s'")
        try:
            probe.execute("create table if not exists probe (a)")
        except psycopg.errors.LockNotAvailable:
            raise AssertionError("a disconnected session still holds the writer:\n"
                                 f"{server.log()[-4000:]}") from None


def _example(server, conns, schema: Schema, program: list[list[Unit]]) -> None:
    admin, clients = conns[0], conns[1:]
    _reset(admin, schema)
    oracle = Oracle()
    for sql in schema.ddl():
        oracle.conn.execute(sql)
    initial = oracle.state()

    barrier = threading.Barrier(SESSIONS)
    out: list[list[Record]] = [[] for _ in range(SESSIONS)]
    running: dict = {}
    threads = [threading.Thread(target=_session, args=(clients[s], program[s], s, barrier, out[s], running,
                                                       server.dsn(), conns), daemon=True) for s in range(SESSIONS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + HANG
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), (
        f"sessions got no answer for {HANG} s, running: {running}\ndone: {out}\n"
        f"server log:\n{server.log()[-3000:]}")
    assert server.proc.poll() is None, f"sqld exited:\n{server.log()[-3000:]}"
    assert admin.execute("select 1").fetchone() == (1,)
    internal = [r for recs in out for r in recs if r.error and r.error.startswith("XX")]
    assert not internal, f"internal errors: {internal}"
    for line in server.log().splitlines():
        assert "Traceback" not in line and "internal error" not in line, line

    check(_split_pipelines(out), initial, _final(admin))
