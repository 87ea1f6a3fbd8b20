"""pg8000 against a real sqld: typed Parse messages, statements described before binding."""

from __future__ import annotations

import pg8000.dbapi
import pg8000.native
import pytest


def connect(server):
    return pg8000.native.Connection("tester", host=server.host, port=server.port, database="main")


def test_types_round_trip(sqld_server, table_name):
    c = connect(sqld_server)
    c.run(f"create table {table_name}(id integer primary key, i integer, r real, s text, b blob, ok boolean)")
    rows = [[9, 2.5, "text ✓", b"\x00\x01", True], [-(2**63), -1e-10, "", b"", False], [None, None, None, None, None]]
    for i, r, s, b, ok in rows:
        c.run(f"insert into {table_name}(i, r, s, b, ok) values (:i, :r, :s, :b, :ok)", i=i, r=r, s=s, b=b, ok=ok)
    assert c.run(f"select i, r, s, b, ok from {table_name} order by id") == rows
    assert c.run("select 1+1, 'a'") == [[2, "a"]]
    c.close()


def test_dbapi_transactions_and_errors(sqld_server, table_name):
    a = pg8000.dbapi.connect("tester", host=sqld_server.host, port=sqld_server.port, database="main")
    cur = a.cursor()
    cur.execute(f"create table {table_name}(id integer primary key)")
    a.commit()
    cur.executemany(f"insert into {table_name} values (%s)", [(1,), (2,), (3,)])
    a.rollback()
    cur.execute(f"select count(*) from {table_name}")
    assert cur.fetchone() == [0]
    cur.executemany(f"insert into {table_name} values (%s)", [(1,), (2,)])
    a.commit()
    with pytest.raises(pg8000.dbapi.DatabaseError) as info:
        cur.execute(f"insert into {table_name} values (1)")
    assert info.value.args[0]["C"] == "23505"
    a.rollback()
    cur.execute(f"select count(*) from {table_name}")
    assert cur.fetchone() == [2]
    a.close()
