"""Unit tests for sqld.sqltext: statement splitting, PostgreSQL → SQLite literal rewriting,
verbs, parameter counts, tables and parameter hints; rewritten SQL is run through SQLite."""

from __future__ import annotations

import apsw
import pytest

from sqld.errors import SqldError, SyntaxError_
from sqld.pgwire import types as t
from sqld.sqltext import parse, parse_one, tokenize


@pytest.fixture(scope="module")
def db():
    conn = apsw.Connection(":memory:")
    yield conn
    conn.close()


def sqls(text: str) -> list[str]:
    return [s.sql for s in parse(text)]


def one(text: str):
    stmts = parse(text)
    assert len(stmts) == 1, stmts
    return stmts[0]


def run(db, text: str, *params):
    """The single row of the one rewritten statement, run in SQLite."""
    stmt = one(text)
    rows = db.execute(stmt.sql, params).fetchall()
    assert len(rows) == 1
    return rows[0]


def hints(text: str) -> dict[int, tuple]:
    return {n: (h.oid, h.column) for n, h in one(text).hints}


# ---------------------------------------------------------------------------------------
# Splitting
# ---------------------------------------------------------------------------------------


def test_split_simple():
    assert sqls("select 1; select 2") == ["select 1", "select 2"]
    assert sqls("select 1;") == ["select 1"]
    assert sqls("select 1") == ["select 1"]


@pytest.mark.parametrize("text", ["", ";", ";;;", " ; ;\n; ", "-- only a comment", "/* c */ ;", "-- a\n;-- b"])
def test_empty_statements_dropped(text):
    assert parse(text) == ()


def test_empty_statements_between_are_dropped():
    assert sqls(";select 1;;  ; select 2;;") == ["select 1", "select 2"]


def test_semicolons_inside_strings_comments_and_identifiers():
    text = (
        "select 'a;b', E'c\\';d', $$e;f$$, $q$g;h$q$, \"i;j\", [k;l], `m;n` /* o; p */ -- q; r\n"
        "; select 2"
    )
    stmts = parse(text)
    assert len(stmts) == 2
    assert stmts[1].sql == "select 2"
    assert "'a;b'" in stmts[0].sql and '"i;j"' in stmts[0].sql and "/* o; p */" in stmts[0].sql


def test_doubled_quote_in_string_does_not_end_it():
    assert sqls("select 'it''s; fine'; select 2") == ["select 'it''s; fine'", "select 2"]


def test_standard_string_backslash_is_literal():
    # standard_conforming_strings: 'a\' is a complete string
    assert sqls("select 'a\\'; select 2") == ["select 'a\\'", "select 2"]


def test_unterminated_string_swallows_the_rest():
    assert len(parse("select 'abc; select 2")) == 1


def test_create_trigger_keeps_inner_semicolons():
    trigger = (
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN "
        "UPDATE t SET a = CASE WHEN new.a > 0 THEN 1 ELSE CASE WHEN new.a < 0 THEN -1 ELSE 0 END END "
        "WHERE rowid = new.rowid; "
        "INSERT INTO log VALUES ('x;y'); "
        "END"
    )
    stmts = parse(trigger + "; select 1; " + trigger.replace("tr ", "tr2 ") + ";")
    assert [s.verb for s in stmts] == ["CREATE TRIGGER", "SELECT", "CREATE TRIGGER"]
    assert stmts[0].sql == trigger


def test_create_trigger_body_runs_in_sqlite(db):
    text = (
        "create table trg_t(a integer); create table trg_log(v text);"
        "create temp trigger if not exists trg after insert on trg_t begin "
        "insert into trg_log values (case when new.a > 0 then 'pos' else 'neg' end); "
        "insert into trg_log values ('second;'); end;"
        "insert into trg_t values (5)"
    )
    stmts = parse(text)
    assert [s.verb for s in stmts] == ["CREATE TABLE", "CREATE TABLE", "CREATE TRIGGER", "INSERT"]
    for s in stmts:
        db.execute(s.sql)
    assert db.execute("select v from trg_log order by rowid").fetchall() == [("pos",), ("second;",)]


def test_begin_transaction_is_not_a_trigger_body():
    assert [s.verb for s in parse("BEGIN; INSERT INTO t VALUES (1); COMMIT")] == ["BEGIN", "INSERT", "COMMIT"]


def test_parse_one():
    assert parse_one("select 1").sql == "select 1"
    assert parse_one("select 1;").sql == "select 1"
    assert parse_one("").is_empty
    assert parse_one(" ; ").is_empty
    with pytest.raises(SyntaxError_) as exc_info:
        parse_one("select 1; select 2")
    assert exc_info.value.sqlstate == "42601"


def test_comments_preserved_and_line_comment_terminated():
    stmt = one("select 1 -- one\n + 2")
    assert stmt.sql.startswith("select 1 -- one\n")
    assert stmt.sql.endswith("+ 2")


def test_comment_is_terminated_in_rewritten_sql(db):
    # a -- comment must still end at its newline after whitespace is normalised
    assert run(db, "select 1 -- one\n + 2") == (3,)
    assert run(db, "select /* c */ 4") == (4,)


# ---------------------------------------------------------------------------------------
# Placeholders
# ---------------------------------------------------------------------------------------


def test_dollar_params_rewritten():
    assert one("select $1, $2 from t where a = $1").sql == "select ?1, ?2 from t where a = ?1"
    assert one("select $10").sql == "select ?10"


def test_dollar_params_not_rewritten_inside_literals_and_comments():
    stmt = one("select '$1', E'$1', \"$1\", $$ $1 $$, x'24', $2 /* $3 */ -- $4")
    assert stmt.sql == "select '$1', '$1', \"$1\", ' $1 ', x'24', ?2 /* $3 */ -- $4"
    assert stmt.param_count == 2


def test_identifier_with_dollar_is_not_a_param():
    stmt = one("select a$1 from t")
    assert stmt.sql == "select a$1 from t"
    assert stmt.param_count == 0


def test_params_run_in_sqlite(db):
    assert run(db, "select $2, $1, $2", "a", "b") == ("b", "a", "b")


@pytest.mark.parametrize(
    "text,count",
    [
        ("select 1", 0),
        ("select $1", 1),
        ("select $2", 2),
        ("select $1, $1", 1),
        ("select $3, $1", 3),
        ("select ?, ?", 2),
        ("select ?, ?5, ?", 6),
        ("select :a, :b, :a", 2),
        ("select @x, $y", 2),
        ("select '?', '$1'", 0),
    ],
)
def test_param_count(text, count):
    assert one(text).param_count == count


# ---------------------------------------------------------------------------------------
# E'…' strings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal,value",
    [
        ("E'a\\nb'", "a\nb"),
        ("e'a\\tb\\rc'", "a\tb\rc"),
        ("E'\\b\\f'", "\b\f"),
        ("E'a\\\\b'", "a\\b"),
        ("E'it\\'s'", "it's"),
        ("E'it''s'", "it's"),
        ("E'\\101\\102'", "AB"),
        ("E'\\7'", "\x07"),
        ("E'\\x41\\x4a'", "AJ"),
        ("E'\\x4'", "\x04"),
        ("E'\\u00e9'", "é"),
        ("E'\\U0001F600'", "😀"),
        ("E'\\q'", "q"),  # an unknown escape is the character itself
        ("E''", ""),
    ],
)
def test_e_strings(db, literal, value):
    stmt = one(f"select {literal}")
    assert "E'" not in stmt.sql and "e'" not in stmt.sql
    assert run(db, f"select {literal}") == (value,)


def test_e_string_newline_in_sqlite(db):
    assert run(db, "select E'a\\nb'") == ("a\nb",)


def test_e_string_semicolon_escape_does_not_split():
    assert len(parse("select E'\\';'; select 2")) == 2
    assert parse("select E'\\';'; select 2")[0].sql == "select ''';'"


# ---------------------------------------------------------------------------------------
# Dollar quoting
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "literal,value",
    [
        ("$$abc$$", "abc"),
        ("$$it's$$", "it's"),
        ("$$$$", ""),
        ("$tag$a;b$tag$", "a;b"),
        ("$tag$x$y$tag$", "x$y"),
        ("$a$ $b$ $a$", " $b$ "),
        ("$$line1\nline2$$", "line1\nline2"),
        ("$$\\n$$", "\\n"),  # no escapes in dollar quotes
    ],
)
def test_dollar_quoted(db, literal, value):
    assert run(db, f"select {literal}") == (value,)


def test_tagged_dollar_quote_containing_double_dollar(db):
    # Inside $fn$…$fn$, "$$" is ordinary text (PostgreSQL docs 4.1.2.4): the string ends
    # only at $fn$.
    assert run(db, "select $fn$ a $$ b $fn$") == (" a $$ b ",)


# ---------------------------------------------------------------------------------------
# bytea literals
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("select '\\x0001'::bytea", b"\x00\x01"),
        ("select '\\x'::bytea", b""),
        ("select '\\xDEADbeef'::bytea", b"\xde\xad\xbe\xef"),
        ("select E'\\\\x41'::bytea", b"A"),
        ("select 'abc'::bytea", b"abc"),
        ("select '\\001abc'::bytea", b"\x01abc"),
        ("select 'a\\\\b'::bytea", b"a\\b"),
        ("select $$\\x41$$::bytea", b"A"),
        ("select '\\x41'::pg_catalog.bytea", b"A"),
    ],
)
def test_bytea_literals(db, text, value):
    assert run(db, text) == (value,)


def test_bytea_hex_literal_becomes_blob():
    assert one("select '\\x0001'::bytea").sql == "select x'0001'"


def test_bytea_literal_content_cannot_escape_into_sql(db):
    # The string's value is `\x41' || 'zz`: PostgreSQL refuses it (invalid hexadecimal
    # digit). It must never be spliced into the SQL as `x'41' || 'zz'` and evaluated.
    text = "select '\\x41'' || ''zz'::bytea"
    try:
        stmt = one(text)
    except SqldError:
        return
    with pytest.raises(apsw.Error):
        db.execute(stmt.sql).fetchall()


def test_bytea_bad_escape_literal_is_an_error():
    with pytest.raises(SqldError):
        parse("select '\\q'::bytea")


# ---------------------------------------------------------------------------------------
# Casts
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,sql",
    [
        ("select '12'::int", "select CAST('12' AS INTEGER)"),
        ("select '12'::int8", "select CAST('12' AS INTEGER)"),
        ("select '12'::bigint", "select CAST('12' AS INTEGER)"),
        ("select '12'::smallint", "select CAST('12' AS INTEGER)"),
        ("select '1.5'::float8", "select CAST('1.5' AS REAL)"),
        ("select '1.5'::double precision", "select CAST('1.5' AS REAL)"),
        ("select '1.5'::real", "select CAST('1.5' AS REAL)"),
        ("select '1.5'::numeric(10, 2)", "select CAST('1.5' AS NUMERIC)"),
        ("select 'a'::text", "select CAST('a' AS TEXT)"),
        ("select 'a'::varchar(20)", "select CAST('a' AS TEXT)"),
        ("select 'a'::character varying", "select CAST('a' AS TEXT)"),
        ("select 'a' :: text", "select CAST('a' AS TEXT)"),
        ("select 1::text", "select CAST(1 AS TEXT)"),
        ("select x::int from t", "select CAST(x AS INTEGER) from t"),
        ("select t.x::int from t", "select CAST(t.x AS INTEGER) from t"),
        ('select "T"."C"::text from "T"', 'select CAST("T"."C" AS TEXT) from "T"'),
        ("select (1 + 2)::text", "select CAST((1 + 2) AS TEXT)"),
        ("select count(*)::int from t", "select CAST(count(*) AS INTEGER) from t"),
        ("select '2024-01-01'::date", "select '2024-01-01'"),
        ("select '{}'::json", "select '{}'"),
        ("select 't'::bool, 'false'::boolean", "select 1, 0"),
    ],
)
def test_casts(text, sql):
    assert one(text).sql == sql


@pytest.mark.parametrize(
    "text,value",
    [
        ("select '12'::int + 1", 13),
        ("select ('5')::int8 * 2", 10),
        ("select '1.5'::float8", 1.5),
        ("select 7::text", "7"),
        ("select 'yes'::bool", 1),
        ("select 'off'::bool", 0),
        ("select '2024-01-01'::date", "2024-01-01"),
        ("select '12'::text::int8", 12),  # chained casts
        ("select 'a'::pg_catalog.text", "a"),  # schema-qualified type name
        ("select '2024-01-01 00:00:00+00'::timestamp with time zone", "2024-01-01 00:00:00+00"),
        ("select '2024-01-01 00:00:00'::timestamp without time zone", "2024-01-01 00:00:00"),
    ],
)
def test_casts_run_in_sqlite(db, text, value):
    assert run(db, text) == (value,)


def test_cast_to_array_type_does_not_leave_brackets(db):
    # `$1::int[]` : the rewrite means to skip array brackets; `[]` must not be left
    # behind as `CAST(?1 AS INTEGER)[]`, which SQLite cannot parse.
    stmt = one("select $1::int[]")
    assert "[]" not in stmt.sql
    db.execute(stmt.sql, (1,)).fetchall()


def test_invalid_boolean_literal_cast_is_an_error():
    # PostgreSQL: ERROR 22P02 invalid input syntax for type boolean: "maybe"; sqld must
    # not silently turn it into false.
    with pytest.raises(SqldError) as exc_info:
        parse("select 'maybe'::bool")
    assert exc_info.value.sqlstate == "22P02"


def test_unknown_cast_type_keeps_operand():
    assert one("select x::mytype from t").sql == "select x from t"


def test_param_cast_rewrite_and_hint():
    stmt = one("select $1::int8")
    assert stmt.sql == "select CAST(?1 AS INTEGER)"
    assert hints("select $1::int8") == {1: (t.INT8, None)}


@pytest.mark.parametrize(
    "text,oid",
    [
        ("select $1::int", t.INT4),
        ("select $1::integer", t.INT4),
        ("select $1::int2", t.INT2),
        ("select $1::text", t.TEXT),
        ("select $1::varchar(10)", t.VARCHAR),
        ("select $1::double precision", t.FLOAT8),
        ("select $1::bytea", t.BYTEA),
        ("select $1::bool", t.BOOL),
        ("select $1::json", t.JSON),
        ("select $1::jsonb", t.JSONB),
        ("select $1::date", t.DATE),
        ("select $1::uuid", t.UUID),
        ("select $1::timestamptz", t.TIMESTAMPTZ),
    ],
)
def test_param_cast_hints(text, oid):
    assert hints(text)[1] == (oid, None)


def test_param_cast_hint_beats_column_hint():
    assert hints("select * from t where a = $1::int8")[1] == (t.INT8, None)


def test_cast_of_expression_containing_param_gives_no_hint():
    assert 1 not in hints("select ($1 + 1)::int8")


def test_param_cast_runs_in_sqlite(db):
    assert run(db, "select $1::int8 + 1, $2::text", "41", 7) == (42, "7")


# ---------------------------------------------------------------------------------------
# Verbs and words
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,verb",
    [
        ("select 1", "SELECT"),
        ("  SELECT 1", "SELECT"),
        ("/* c */ select 1", "SELECT"),
        ("-- c\nselect 1", "SELECT"),
        ("insert into t values (1)", "INSERT"),
        ("replace into t values (1)", "REPLACE"),
        ("update t set a = 1", "UPDATE"),
        ("delete from t", "DELETE"),
        ("values (1)", "VALUES"),
        ("create table t (a int)", "CREATE TABLE"),
        ("CREATE TABLE IF NOT EXISTS t (a int)", "CREATE TABLE"),
        ("create temp table t (a)", "CREATE TABLE"),
        ("create temporary table t (a)", "CREATE TABLE"),
        ("create virtual table f using fts5(x)", "CREATE TABLE"),
        ("create unique index i on t(a)", "CREATE INDEX"),
        ("create index i on t(a)", "CREATE INDEX"),
        ("create or replace view v as select 1", "CREATE VIEW"),
        ("create view v as select 1", "CREATE VIEW"),
        ("create trigger tr after insert on t begin select 1; end", "CREATE TRIGGER"),
        ("drop table t", "DROP TABLE"),
        ("drop table if exists t", "DROP TABLE"),
        ("drop index i", "DROP INDEX"),
        ("alter table t add column b", "ALTER TABLE"),
        ("with x as (select 1) insert into t select * from x", "INSERT"),
        ("with x as (select 1) select * from x", "SELECT"),
        ("with x as (select 1), y as (select 2) delete from t", "DELETE"),
        ("with recursive c(n) as (select 1 union all select n + 1 from c) select n from c", "SELECT"),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", "UPDATE"),
        ("begin", "BEGIN"),
        ("commit", "COMMIT"),
        ("end", "COMMIT"),
        ("END TRANSACTION", "COMMIT"),
        ("abort", "ROLLBACK"),
        ("rollback", "ROLLBACK"),
        ("savepoint s", "SAVEPOINT"),
        ("release s", "RELEASE"),
        ("set search_path = public", "SET"),
        ("show server_version", "SHOW"),
        ("explain select 1", "EXPLAIN"),
        ("pragma user_version", "PRAGMA"),
    ],
)
def test_verbs(text, verb):
    assert one(text).verb == verb


def test_words_are_leading_identifiers_upper_cased():
    assert one("create temp table x (a)").words == ("CREATE", "TEMP", "TABLE", "X")
    assert one("select 1").words == ("SELECT",)
    assert one("begin isolation level serializable").words[:2] == ("BEGIN", "ISOLATION")


def test_parse_is_cached():
    assert parse("select 42") is parse("select 42")


# ---------------------------------------------------------------------------------------
# Tables and hints
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,tables",
    [
        ("select * from t", ("t",)),
        ("SELECT * FROM Users", ("users",)),
        ('select * from "MixedCase"', ("MixedCase",)),
        ("select * from main.t", ("t",)),
        ("select * from a join b on a.id = b.id left join c on 1", ("a", "b", "c")),
        ("insert into t values (1)", ("t",)),
        ("update t set a = 1", ("t",)),
        ("delete from t where a = 1", ("t",)),
        ("create table t (a)", ("t",)),
        ("select * from t, u", ("t",)),
        ("select * from t where a in (select b from t)", ("t",)),
        ("select 1", ()),
    ],
)
def test_tables(text, tables):
    assert one(text).tables == tables


@pytest.mark.parametrize(
    "text,expected",
    [
        ("select * from t where col = $1", {1: (None, "col")}),
        ("select * from t where t.col = $1", {1: (None, "col")}),
        ('select * from t where "Col" = $1', {1: (None, "Col")}),
        ("select * from t where col <> $1 and b >= $2", {1: (None, "col"), 2: (None, "b")}),
        ("select * from t where $1 < col", {1: (None, "col")}),
        ("select * from t where name like $1", {1: (None, "name")}),
        ("select * from t where a in ($1, $2)", {1: (None, "a")}),
        ("update t set a = $1, b = $2 where id = $3", {1: (None, "a"), 2: (None, "b"), 3: (None, "id")}),
        ("select * from t limit $1", {1: (t.INT8, None)}),
        ("select * from t limit $1 offset $2", {1: (t.INT8, None), 2: (t.INT8, None)}),
        ("select * from t where a = ? and b = ?", {1: (None, "a"), 2: (None, "b")}),
        ("select $1", {}),
    ],
)
def test_column_hints(text, expected):
    assert hints(text) == expected


def test_insert_column_list_hints():
    text = "insert into t (a, b, c) values ($1, $2, $3), ($4, $5, $6)"
    assert hints(text) == {
        1: (None, "a"), 2: (None, "b"), 3: (None, "c"),
        4: (None, "a"), 5: (None, "b"), 6: (None, "c"),
    }


def test_insert_hints_only_for_bare_placeholders():
    h = hints("insert into t (a, b, c) values (lower($1), $2, coalesce($3, 0))")
    assert h == {2: (None, "b")}


def test_insert_quoted_column_hints():
    assert hints('insert into t ("A", b) values ($1, $2)') == {1: (None, "A"), 2: (None, "b")}


def test_insert_without_column_list_hints_by_position():
    stmt = one("insert into t values ($1, 5, $2)")
    positions = {n: h.position for n, h in stmt.hints}
    assert positions == {1: 0, 2: 2}
    assert all(h.column is None and h.oid is None for _, h in stmt.hints)


def test_hints_are_sorted_by_parameter():
    stmt = one("update t set b = $2, a = $1")
    assert [n for n, _ in stmt.hints] == [1, 2]


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def test_tokenize_kinds():
    kinds = [(tok.kind, tok.text) for tok in tokenize("select E'a', x'00', $1, \"q\", 1.5e3::int; -- c")]
    significant = [k for k in kinds if k[0] != "ws"]
    assert significant == [
        ("ident", "select"),
        ("estring", "E'a'"),
        ("op", ","),
        ("blob", "x'00'"),
        ("op", ","),
        ("param", "$1"),
        ("op", ","),
        ("qident", '"q"'),
        ("op", ","),
        ("number", "1.5e3"),
        ("cast", "::"),
        ("ident", "int"),
        ("semi", ";"),
        ("comment", "-- c"),
    ]


def test_tokenize_covers_every_character():
    text = "select 'a' || \"b\" ->> $1 /* x */ from t where a <= 2 -- end"
    assert "".join(tok.text for tok in tokenize(text)) == text


def test_blob_literal_passes_through(db):
    assert run(db, "select x'00ff'") == (b"\x00\xff",)


def test_bytea_literal_text_never_reaches_sql():
    """psycopg2 puts a user's string in front of ::bytea; its text must not become SQL."""
    hostile = "select '\\x41'' || (select s from secrets) || '''::bytea"
    with pytest.raises(SqldError) as info:
        parse(hostile)
    assert info.value.sqlstate == "22P02"
    db = apsw.Connection(":memory:")
    (stmt,) = parse("select '\\x41ff'::bytea")
    assert db.execute(stmt.sql).fetchall() == [(b"\x41\xff",)]
