"""WAL frames read from a real primary and applied to a replica file: same content after
many random transactions; broken frames stop the reader at the last good commit."""

from __future__ import annotations

import hashlib
import random
import struct

import apsw
import pytest

from sqld.replication.local_copy import LocalCopy, bootstrap
from sqld.replication.wal import FRAME_HEADER, WAL_HEADER, WalError, read_header, transactions


def content_hash(conn: apsw.Connection) -> str:
    h = hashlib.sha256()
    for (sql,) in conn.execute("select sql from sqlite_schema where sql is not null order by name"):
        h.update(sql.encode())
    for (name,) in conn.execute("select name from sqlite_schema where type = 'table' order by name").fetchall():
        for row in conn.execute(f'select * from "{name}" order by rowid'):
            h.update(repr(row).encode())
    return h.hexdigest()


@pytest.fixture
def primary(tmp_path):
    conn = apsw.Connection(str(tmp_path / "primary.db"))
    conn.execute("pragma journal_mode=wal").fetchall()
    conn.execute("pragma wal_autocheckpoint=0").fetchall()  # keep every frame in the WAL
    conn.execute("create table t(id integer primary key, v, blob)")
    conn.execute("pragma wal_checkpoint(truncate)").fetchall()
    yield conn
    conn.close()


def random_transactions(conn: apsw.Connection, rng: random.Random, n: int) -> None:
    for i in range(n):
        kind = rng.random()
        with conn:
            if kind < 0.5:
                for _ in range(rng.randint(1, 5)):
                    conn.execute("insert into t(v, blob) values (?, ?)",
                                 (rng.random(), rng.randbytes(rng.choice([0, 10, 5000, 20000]))))
            elif kind < 0.7:
                conn.execute("update t set v = ? where id % 7 = ?", (rng.random(), rng.randint(0, 6)))
            elif kind < 0.85:
                conn.execute("delete from t where id % 11 = ?", (rng.randint(0, 10),))
            elif kind < 0.95:
                conn.execute(f"create table if not exists extra{i % 3}(x)")
                conn.execute(f"insert into extra{i % 3} values (?)", (i,))
            else:
                conn.execute("create index if not exists t_v on t(v)")
    # a rolled-back transaction spills nothing that a reader should apply
    conn.execute("begin")
    conn.execute("insert into t(v) values ('rolled back')")
    conn.execute("rollback")


def test_replica_equals_primary_after_random_transactions(primary, tmp_path):
    replica_path = str(tmp_path / "replica.db")
    bootstrap(primary, replica_path)
    random_transactions(primary, random.Random(7), 300)
    wal = (tmp_path / "primary.db-wal").read_bytes()
    txs = list(transactions(wal))
    assert len(txs) >= 250  # a statement that changed nothing commits no frames
    replica = LocalCopy(replica_path)
    reader = apsw.Connection(replica_path)  # another connection sees each applied state
    for tx in txs:
        replica.apply(tx)
    assert content_hash(reader) == content_hash(primary)
    assert reader.execute("pragma integrity_check").fetchall() == [("ok",)]
    replica.close()
    reader.close()


def test_resume_from_an_offset(primary, tmp_path):
    replica_path = str(tmp_path / "replica.db")
    bootstrap(primary, replica_path)
    random_transactions(primary, random.Random(1), 20)
    wal = (tmp_path / "primary.db-wal").read_bytes()
    first = list(transactions(wal))
    random_transactions(primary, random.Random(2), 20)
    wal = (tmp_path / "primary.db-wal").read_bytes()
    replica = LocalCopy(replica_path)
    for tx in first:
        replica.apply(tx)
    # the frames after the last applied commit: the same reader over the longer file
    rest = [tx for tx in transactions(wal) if tx.end_offset > first[-1].end_offset]
    for tx in rest:
        replica.apply(tx)
    assert content_hash(replica.conn) == content_hash(primary)
    replica.close()


def _wal_with_commits(primary, tmp_path, n=5) -> bytes:
    random_transactions(primary, random.Random(3), n)
    return (tmp_path / "primary.db-wal").read_bytes()


def _frame_offsets(wal: bytes) -> list[int]:
    size = read_header(wal).page_size + FRAME_HEADER.size
    return list(range(WAL_HEADER.size, len(wal) - size + 1, size))


def test_checksum_mismatch_stops_at_last_good_commit(primary, tmp_path):
    wal = bytearray(_wal_with_commits(primary, tmp_path))
    good = list(transactions(bytes(wal)))
    victim = good[2].end_offset + FRAME_HEADER.size + 100  # inside the 4th transaction's first page
    wal[victim] ^= 0xFF
    assert list(transactions(bytes(wal))) == good[:3]


def test_salt_mismatch_stops(primary, tmp_path):
    wal = bytearray(_wal_with_commits(primary, tmp_path))
    good = list(transactions(bytes(wal)))
    struct.pack_into(">I", wal, good[1].end_offset + 8, 12345)  # salt-1 of the next frame
    assert list(transactions(bytes(wal))) == good[:2]


def test_truncated_frame_and_uncommitted_tail(primary, tmp_path):
    wal = _wal_with_commits(primary, tmp_path)
    good = list(transactions(wal))
    assert list(transactions(wal[: good[-1].end_offset - 1])) == good[:-1]
    # frames of a transaction without its commit frame are not a transaction
    last_start = good[-2].end_offset
    offsets = [o for o in _frame_offsets(wal) if o >= last_start]
    if len(offsets) > 1:
        assert list(transactions(wal[: offsets[-1]])) == good[:-1]


def test_not_a_wal():
    with pytest.raises(WalError):
        read_header(b"\x00" * 32)
    with pytest.raises(WalError):
        read_header(b"short")
