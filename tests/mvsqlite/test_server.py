"""sqld processes on the mvsqlite backend: a replica follows an mvsqlite primary through
FDB's change log (here on the simulator inside the primary's process)."""

from __future__ import annotations

import psycopg

from tests.replication.test_replica import file_hash, replica_of, wait_caught_up


def test_a_replica_follows_an_mvsqlite_primary(start_sqld, tmp_path):
    primary = start_sqld("--backend", "mvsqlite", "--fdb-cluster", "simulator", db_path=tmp_path / "p")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table t(id integer primary key, v text, b blob)")
        for i in range(100):
            c.execute("insert into t(v, b) values (%s, randomblob(%s))", (f"v{i}", 3000 if i % 10 == 0 else 10))
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "r")  # bootstraps from a pinned snapshot
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        for i in range(100):  # streamed from the change log
            c.execute("update t set v = v || '!' where id = %s", (i + 1,))
        c.execute("delete from t where id % 7 = 0")
        c.execute("create index t_v on t(v)")
    wait_caught_up(replica, primary)
    with psycopg.connect(replica.dsn(), autocommit=True) as r, psycopg.connect(primary.dsn(), autocommit=True) as p:
        q = "select id, v, length(b) from t order by id"
        assert r.execute(q).fetchall() == p.execute(q).fetchall()
        assert r.execute("pragma integrity_check").fetchall() == [("ok",)]
        r.execute("insert into t(v) values ('through the replica')")  # forwarded to the mvsqlite primary
        assert r.execute("select count(*) from t where v = 'through the replica'").fetchone() == (1,)
    replica.stop()
    assert file_hash(tmp_path / "r" / "main.db")[1] == [("ok",)]
