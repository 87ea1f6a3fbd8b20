"""COPY FROM STDIN / TO STDOUT, from psycopg 3 and psql's \\copy."""

from __future__ import annotations

import shutil
import subprocess

import psycopg
import pytest


def test_copy_in_and_out_with_psycopg(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text, b blob)")
        rows = [(i, f"row\t{i}\n" if i % 3 else None, bytes([i % 256]) * 3) for i in range(1, 2001)]
        with c.cursor() as cur:
            with cur.copy(f"COPY {table_name} (id, v, b) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == 2000
        assert c.execute(f"select id, v, b from {table_name} order by id").fetchall() == rows
        with c.cursor() as cur:
            with cur.copy(f"COPY (select id, v from {table_name} where id <= 3 order by id) TO STDOUT") as copy:
                out = [tuple(r) for r in copy.rows()]
        assert out == [("1", "row\t1\n"), ("2", "row\t2\n"), ("3", None)]


def test_a_bad_row_loses_the_whole_copy_and_the_session_goes_on(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with c.cursor().copy(f"COPY {table_name} FROM STDIN") as copy:
                copy.write(b"1\ta\n2\tb\n1\tduplicate\n3\tc\n")
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (0,)
        with pytest.raises(psycopg.errors.BadCopyFileFormat):
            with c.cursor().copy(f"COPY {table_name} FROM STDIN") as copy:
                copy.write(b"1\ta\textra\n")
        with pytest.raises(psycopg.errors.QueryCanceled):
            with c.cursor().copy(f"COPY {table_name} FROM STDIN") as copy:
                copy.write(b"1\ta\n")
                raise psycopg.errors.QueryCanceled("client gave up")  # psycopg sends CopyFail
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (0,)
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            c.execute(f"COPY {table_name} FROM '/etc/passwd'")


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
@pytest.mark.parametrize("null, data, rows", [
    ("", b"1\t\tplain\n2\tx\t\n3\t\ta\\tb\n", [(1, None, "plain"), (2, "x", None), (3, None, "a\tb")]),
    ("NULL", b"1\tNULL\tplain\n2\tNULLx\ta\\\\b\n3\tNULL\t\\N\n",
     [(1, None, "plain"), (2, "NULLx", "a\\b"), (3, None, "N")]),
    ("\\N", b"1\t\\N\tplain\n2\t\\\\N\tNULL\n", [(1, None, "plain"), (2, "\\N", "NULL")]),
])
def test_text_copy_null_strings_with_and_without_escapes(sqld_server, table_name, null, data, rows):
    """Text format: a field is NULL when its raw text (before backslash escapes are read)
    is the NULL string, as PostgreSQL reads it; a line with no backslash is read without
    unescaping."""
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text, w text)")
        literal = null.replace("\\", "\\\\").replace("'", "''")
        with c.cursor().copy(f"copy {table_name} from stdin with (null E'{literal}')") as copy:
            copy.write(data)
        assert c.execute(f"select id, v, w from {table_name} order by id").fetchall() == rows


def test_psql_backslash_copy_csv(sqld_server, table_name, tmp_path):
    data = tmp_path / "in.csv"
    data.write_text('id,v\n1,"a,b"\n2,\n3,"line\nbreak"\n')
    base = ["psql", "-X", "-h", sqld_server.host, "-p", str(sqld_server.port), "-U", "tester", "-d", "main",
            "-v", "ON_ERROR_STOP=1", "-At"]
    run = lambda *a: subprocess.run([*base, *a], capture_output=True, text=True, timeout=60, check=True)  # noqa: E731
    run("-c", f"create table {table_name}(id integer primary key, v text)")
    assert run("-c", f"\\copy {table_name} from '{data}' with (format csv, header)").stdout.strip() == "COPY 3"
    assert run("-c", f"select id, coalesce(v, 'NULL') from {table_name} order by id").stdout.splitlines() == [
        "1|a,b", "2|NULL", "3|line", "break"]
    out = run("-c", f"\\copy {table_name} to stdout with csv").stdout
    assert out == '1,"a,b"\n2,\n3,"line\nbreak"\n'


def test_a_constraint_error_names_the_line_of_the_copy(sqld_server, table_name):
    """Found by the attack review: constraint errors of a COPY (whose rows go to SQLite a batch
    at a time) said nothing of where; now the detail names the line, as PostgreSQL's CONTEXT
    does, whichever batch it fell in."""
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text not null)")
        lines = b"".join(b"%d\tv\n" % i for i in range(1, 5001)) + b"3\tagain\n"
        with pytest.raises(psycopg.errors.UniqueViolation) as e:
            with c.cursor().copy(f"copy {table_name} from stdin") as copy:
                copy.write(lines)
        assert e.value.diag.message_detail == f"COPY {table_name}, line 5001"
        with pytest.raises(psycopg.errors.NotNullViolation) as e:
            with c.cursor().copy(f"copy {table_name} from stdin with (format csv, header)") as copy:
                copy.write(b"id,v\n1,a\n2,\n")
        assert e.value.diag.message_detail == f"COPY {table_name}, line 3"
        assert c.execute(f"select count(*) from {table_name}").fetchone() == (0,)


@pytest.mark.parametrize("in_tx", [False, True], ids=["autocommit", "in-transaction"])
def test_the_copy_tag_counts_rows_inserted_not_skipped_nor_written_by_triggers(sqld_server, table_name, in_tx):
    """PostgreSQL's COPY count: rows a BEFORE trigger skipped (RAISE(IGNORE)) are not copied,
    rows a trigger wrote elsewhere are not this COPY's."""
    with psycopg.connect(sqld_server.dsn(), autocommit=not in_tx) as c:
        c.execute(f"create table {table_name}(id integer primary key, v text)")
        c.execute(f"create table {table_name}_log(id)")
        c.execute(f"create trigger {table_name}_skip before insert on {table_name} when new.v = 'skip' "
                  "begin select raise(ignore); end")
        c.execute(f"create trigger {table_name}_audit after insert on {table_name} "
                  f"begin insert into {table_name}_log values (new.id); insert into {table_name}_log values (-new.id); end")
        with c.cursor() as cur:
            with cur.copy(f"COPY {table_name} (id, v) FROM STDIN") as copy:
                copy.write(b"1\ta\n2\tskip\n3\tb\n4\tskip\n5\tc\n")
            assert cur.rowcount == 3
        assert c.execute(f"select count(*) from {table_name}_log").fetchone() == (6,)
        c.commit()


def test_a_bad_row_ends_the_copy_at_once_and_later_copy_data_is_ignored(sqld_server, table_name):
    """As PostgreSQL: a row that fails (here a unique violation in the first batch) is
    answered at once, ErrorResponse and ReadyForQuery, without waiting for CopyDone (a client
    need not upload the rest of a large file); what the client still sends of the COPY is
    dropped, and the session goes on."""
    from sqld.pgwire import messages as m
    from tests.rawclient import COPY_DONE, RawClient, copy_data, summary

    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table_name}(id integer primary key)")
    r = RawClient(sqld_server.host, sqld_server.port)
    try:
        r.sock.sendall(m.Query(f"copy {table_name} from stdin").encode() + copy_data(b"1\n1\n"))
        assert type(r.recv()).__name__ == "CopyInResponse"
        answer = r.until_ready()  # no CopyDone sent yet
        assert summary(answer) == [("E", "23505"), ("Z", "I")]
        r.sock.sendall(copy_data(b"2\n") + COPY_DONE)
        assert summary(r.query(f"select count(*) from {table_name}"))[1:] == [("D", "0"), ("C", "SELECT 1"),
                                                                              ("Z", "I")]
    finally:
        r.close()
