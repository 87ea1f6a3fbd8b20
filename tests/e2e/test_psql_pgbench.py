"""psql and pgbench (PostgreSQL's own clients) against a real sqld."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

PSQL = shutil.which("psql")
PGBENCH = shutil.which("pgbench")


def psql(server, *args, input=None, check=True):
    cmd = [PSQL, "-X", "-h", server.host, "-p", str(server.port), "-U", "tester", "-d", "main",
           "-v", "ON_ERROR_STOP=1", *args]
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=60, check=check,
                          env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"})


pytestmark = pytest.mark.skipif(PSQL is None or PGBENCH is None, reason="psql/pgbench not installed")


def test_psql_commands_and_output(sqld_server, table_name):
    out = psql(sqld_server, "-At", "-c", f"create table {table_name}(id integer primary key, v text)",
               "-c", f"insert into {table_name}(v) values ('a'), ('b')",
               "-c", f"select id, v from {table_name} order by id",
               "-c", "select 1.5::float8, x'ff', null is null")
    assert out.stdout.splitlines() == ["CREATE TABLE", "INSERT 0 2", "1|a", "2|b", "1.5|\\xff|1"]


def test_psql_script_with_transaction_and_error(sqld_server, table_name):
    script = f"""
    create table {table_name}(v integer);
    begin;
    insert into {table_name} values (1);
    commit;
    begin;
    insert into {table_name} values (2);
    rollback;
    select count(*) from {table_name};
    """
    out = psql(sqld_server, "-At", input=script)
    assert out.stdout.splitlines()[-1] == "1"
    bad = psql(sqld_server, "-c", "select * from no_such_table_at_all", check=False)
    assert bad.returncode != 0
    assert "no such table" in bad.stderr


def test_psql_variables_and_show(sqld_server):
    out = psql(sqld_server, "-At", "-c", "show server_version", "-c", "select version()")
    lines = out.stdout.splitlines()
    assert lines[0].startswith("15.0")
    assert lines[1].startswith("PostgreSQL 15")


def test_psql_lists_relations(start_sqld):
    server = start_sqld()
    psql(server, "-c", "create table alpha(id integer primary key, v text)", "-c", "create index alpha_v on alpha(v)",
         "-c", "create view beta as select id from alpha", "-c", "create table gamma(x)")
    out = psql(server, "-At", "-c", "\\dt").stdout.splitlines()
    assert out == ["main|alpha|table|tester", "main|gamma|table|tester"]
    out = psql(server, "-At", "-c", "\\d").stdout.splitlines()
    assert [line.split("|")[1:3] for line in out] == [["alpha", "table"], ["beta", "view"], ["gamma", "table"]]
    out = psql(server, "-At", "-c", "\\di+ alpha*").stdout.splitlines()
    assert out[0].split("|")[:5] == ["main", "alpha_v", "index", "tester", "alpha"]
    assert psql(server, "-At", "-c", "\\dv").stdout.split("|")[1] == "beta"
    described = psql(server, "-c", "\\d alpha").stdout
    assert 'Table "main.alpha"' in described
    assert [line.split("|")[0].strip() for line in described.splitlines()[3:5]] == ["id", "v"]
    assert "not null" in described.splitlines()[3]
    missing = psql(server, "-c", "\\d nothere", check=False)
    assert 'Did not find any relation named "nothere"' in missing.stderr + missing.stdout


def pgbench(server, script_path, *args, timeout=120):
    cmd = [PGBENCH, "-h", server.host, "-p", str(server.port), "-U", "tester", "-n", "-f", str(script_path), *args, "main"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_modes_no_failed_transactions(sqld_server, tmp_path, mode, table_name):
    out = psql(sqld_server, "-At", "-c", f"create table {table_name}(aid integer primary key, abalance integer default 0)",
               "-c", f"with recursive s(n) as (select 1 union all select n+1 from s where n < 1000) "
                     f"insert into {table_name}(aid) select n from s")
    assert "INSERT 0 1000" in out.stdout
    script = tmp_path / "bench.sql"
    script.write_text(
        "\\set aid random(1, 1000)\n"
        "\\set delta random(-50, 50)\n"
        "BEGIN;\n"
        f"UPDATE {table_name} SET abalance = abalance + :delta WHERE aid = :aid;\n"
        f"SELECT abalance FROM {table_name} WHERE aid = :aid;\n"
        "END;\n"
        f"SELECT count(*) FROM {table_name} WHERE aid < :aid;\n"
    )
    res = pgbench(sqld_server, script, "-M", mode, "-c", "8", "-j", "2", "-t", "50")
    assert res.returncode == 0, res.stderr
    assert re.search(r"number of transactions actually processed: 400/400", res.stdout), res.stdout
    assert re.search(r"number of failed transactions: 0 ", res.stdout), res.stdout
    total = psql(sqld_server, "-At", "-c", f"select count(*) from {table_name}").stdout.strip()
    assert total == "1000"
