"""A real sqld with --replication-log: its log replayed onto its snapshot equals the database,
across group commits, transactions, DDL, checkpoints and a clean restart."""

from __future__ import annotations

import shutil

import apsw
import psycopg

from sqld.replication.local_copy import LocalCopy
from sqld.replication.log import FrameLog
from tests.replication.test_wal_apply import content_hash


def _writes(server, rounds: int, start: int) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table if not exists t(id integer primary key, v text, b blob)")
        for i in range(start, start + rounds):
            c.execute("insert into t(v, b) values (%s, %s)", (f"row {i}", bytes(3000) if i % 5 == 0 else b"x"))
            if i % 10 == 0:
                c.execute("update t set v = v || '!' where id % 3 = 0")
        with c.transaction():
            c.execute("delete from t where id % 7 = 0")
            c.execute("create index if not exists t_v on t(v)")


def _assert_log_replays_to_database(db, tmp_path, log: FrameLog) -> None:
    """The log's snapshot plus every logged transaction gives the database's content."""
    replica_path = tmp_path / "replica.db"
    shutil.copy(db / "main.db-replog.snapshot", replica_path)
    replica = LocalCopy(str(replica_path))
    for tx in log.since(0):
        replica.apply(tx.as_transaction())
    primary = apsw.Connection(str(db / "main.db"))
    try:
        assert content_hash(replica.conn) == content_hash(primary)
        assert replica.conn.execute("pragma integrity_check").fetchall() == [("ok",)]
    finally:
        replica.close()
        primary.close()


def test_log_replays_onto_snapshot(start_sqld, tmp_path):
    db = tmp_path / "db"
    server = start_sqld("--replication-log", "--replication-log-max-mb", "1000", db_path=db)
    _writes(server, 1200, 0)  # enough WAL pages for the capture's own checkpoints
    assert server.stop() == 0
    server = start_sqld("--replication-log", "--replication-log-max-mb", "1000", db_path=db)  # a clean restart keeps the generation
    _writes(server, 50, 5000)
    assert server.stop() == 0

    log = FrameLog(db / "main.db-replog")
    assert log.last_frame > 1000  # past the capture's checkpoint threshold: the WAL restarted
    _assert_log_replays_to_database(db, tmp_path, log)
    assert not (db / "main.db-replog.old").exists()
    log.close()


def test_unclean_stop_starts_a_new_generation(start_sqld, tmp_path):
    import signal

    db = tmp_path / "db"
    server = start_sqld("--replication-log", "--replication-log-max-mb", "1000", db_path=db)
    _writes(server, 30, 0)
    first = FrameLog(db / "main.db-replog")
    generation = first.generation
    first.close()
    server.stop(signal.SIGKILL)  # no final checkpoint: the WAL keeps frames
    server = start_sqld("--replication-log", "--replication-log-max-mb", "1000", db_path=db)
    _writes(server, 30, 100)
    assert server.stop() == 0
    assert (db / "main.db-replog.old").exists()
    log = FrameLog(db / "main.db-replog")
    assert log.generation != generation
    _assert_log_replays_to_database(db, tmp_path, log)
    log.close()
