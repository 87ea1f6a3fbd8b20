"""Databases by name: the startup packet's database picks one, created on first use."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import TEST_BACKEND


def test_named_databases_are_separate_and_shared_by_name(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "dbs")
    with psycopg.connect(server.dsn(dbname="alpha"), autocommit=True) as a:
        a.execute("create table t(v text)")
        a.execute("insert into t values ('in alpha')")
    with psycopg.connect(server.dsn(dbname="beta"), autocommit=True) as b:
        with pytest.raises(psycopg.errors.UndefinedTable):
            b.execute("select * from t")
    with psycopg.connect(server.dsn(dbname="alpha"), autocommit=True) as a2:
        assert a2.execute("select v from t").fetchall() == [("in alpha",)]
    if TEST_BACKEND == "libsql":
        assert (tmp_path / "dbs" / "alpha.db").exists() and (tmp_path / "dbs" / "beta.db").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "x" * 80, "back\\\\slash"])  # libpq unescapes one backslash
def test_database_names_cannot_escape(start_sqld, tmp_path, name):
    server = start_sqld(db_path=tmp_path / "dbs")
    with pytest.raises(psycopg.OperationalError, match="invalid database name"):
        psycopg.connect(server.dsn(dbname=f"'{name}'"))
    if TEST_BACKEND == "libsql":
        assert sorted(p.name for p in (tmp_path / "dbs").iterdir() if p.suffix == ".db") == ["main.db"]


def test_no_create_databases(start_sqld, tmp_path):
    server = start_sqld("--no-create-databases", db_path=tmp_path / "dbs")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(server.dsn(dbname="fresh"))
    assert "does not exist" in str(info.value)
    with psycopg.connect(server.dsn(dbname="main")) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_private_database_is_dropped_with_its_session(sqld_server):
    before = set(Path(tempfile.gettempdir()).glob("sqld-private-*"))
    with psycopg.connect(sqld_server.dsn(dbname=":memory:"), autocommit=True) as a:
        a.execute("create table mine(v integer)")
        a.execute("insert into mine values (1)")
        with psycopg.connect(sqld_server.dsn(dbname=":memory:"), autocommit=True) as b:
            with pytest.raises(psycopg.errors.UndefinedTable):
                b.execute("select * from mine")
        assert a.execute("select v from mine").fetchall() == [(1,)]
    with psycopg.connect(sqld_server.dsn(dbname=":memory:"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("select * from mine")
    deadline = time.monotonic() + 5
    while set(Path(tempfile.gettempdir()).glob("sqld-private-*")) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(Path(tempfile.gettempdir()).glob("sqld-private-*")) - before, "private database files left"
