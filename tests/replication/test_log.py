"""The replication log: append, reopen, resume, torn tails, generations; replay to a replica."""

from __future__ import annotations

import random

import apsw
import pytest

from sqld.replication.local_copy import LocalCopy, bootstrap
from sqld.replication.log import FrameLog, LogError, SnapshotNeeded
from sqld.replication.wal import Page, Transaction, transactions
from tests.replication.test_wal_apply import content_hash, random_transactions


@pytest.fixture
def primary(tmp_path):
    conn = apsw.Connection(str(tmp_path / "primary.db"))
    conn.execute("pragma journal_mode=wal").fetchall()
    conn.execute("pragma wal_autocheckpoint=0").fetchall()
    conn.execute("create table t(id integer primary key, v, blob)")
    conn.execute("pragma wal_checkpoint(truncate)").fetchall()
    yield conn
    conn.close()


def _log_all(primary, tmp_path, log: FrameLog, after: int = 0) -> None:
    for tx in transactions((tmp_path / "primary.db-wal").read_bytes()):
        if tx.end_offset > after:
            log.append(tx)


def test_log_replays_to_an_identical_replica(primary, tmp_path):
    bootstrap(primary, str(tmp_path / "replica.db"))
    random_transactions(primary, random.Random(11), 120)
    log = FrameLog(tmp_path / "log", page_size=4096)
    _log_all(primary, tmp_path, log)
    assert log.last_frame > 120
    replica = LocalCopy(str(tmp_path / "replica.db"))
    for tx in log.since(0):
        replica.apply(tx.as_transaction())
    assert content_hash(replica.conn) == content_hash(primary)
    replica.close()
    log.close()


def test_reopen_resume_and_generation(primary, tmp_path):
    random_transactions(primary, random.Random(5), 30)
    log = FrameLog(tmp_path / "log", page_size=4096)
    _log_all(primary, tmp_path, log)
    last, generation = log.last_frame, log.generation
    middle = list(log.since(0))[10].last_frame
    after_middle = [t.last_frame for t in log.since(middle)]
    log.close()
    again = FrameLog(tmp_path / "log")
    assert (again.last_frame, again.generation) == (last, generation)
    assert [t.last_frame for t in again.since(middle)] == after_middle
    assert list(again.since(last)) == []
    with pytest.raises(LogError):
        list(again.since(last + 5))
    again.close()
    other = FrameLog(tmp_path / "other", page_size=4096)
    assert other.generation != generation  # a new log is a new history
    other.close()


def test_torn_tail_is_cut_off_at_the_last_commit(primary, tmp_path):
    random_transactions(primary, random.Random(9), 10)
    log = FrameLog(tmp_path / "log", page_size=4096)
    _log_all(primary, tmp_path, log)
    last = log.last_frame
    commits = [t.last_frame for t in log.since(0)]
    log.close()
    raw = (tmp_path / "log").read_bytes()
    (tmp_path / "log").write_bytes(raw[:-100])  # a crash in the middle of the last record
    reopened = FrameLog(tmp_path / "log")
    assert reopened.last_frame == commits[-2] < last
    reopened.close()
    damaged = bytearray(raw)
    damaged[40 + 20] ^= 1  # inside the first record: nothing after it can be trusted
    (tmp_path / "log").write_bytes(bytes(damaged))
    broken = FrameLog(tmp_path / "log")
    assert broken.last_frame == 0
    broken.close()


def test_compaction_keeps_the_generation_and_numbering(primary, tmp_path):
    random_transactions(primary, random.Random(3), 12)
    log = FrameLog(tmp_path / "log", page_size=4096)
    _log_all(primary, tmp_path, log)
    last, generation = log.last_commit, log.generation
    count = len(list(log.since(0)))
    old = log
    log = log.compact()
    assert (log.generation, log.base, log.last_commit, log.first_frame) == (generation, last, last, last + 1)
    with pytest.raises(SnapshotNeeded):
        list(log.since(3))
    assert list(log.since(last)) == []
    assert len(list(old.since(0))) == count > 0  # a reader holding the old log reads on
    page = bytes(4096)
    tx = Transaction((Page(1, page), Page(2, page)), 2, 0)
    assert log.append(tx) == last + 2
    log.close()
    reopened = FrameLog(tmp_path / "log")
    assert (reopened.base, reopened.last_commit, reopened.generation) == (last, last + 2, generation)
    assert [t.last_frame for t in reopened.since(last)] == [last + 2]
    reopened.close()
    old.close()


def test_compaction_keeps_a_tail_of_whole_transactions(primary, tmp_path):
    random_transactions(primary, random.Random(21), 40)
    log = FrameLog(tmp_path / "log", page_size=4096)
    _log_all(primary, tmp_path, log)
    txs = list(log.since(0))
    log = log.compact(keep_bytes=log.size // 3)
    kept = list(log.since(log.base))
    assert 0 < len(kept) < len(txs)
    assert log.base == txs[len(txs) - len(kept) - 1].last_frame  # starts after a commit
    assert kept == txs[len(txs) - len(kept):]  # the same transactions, frames and pages
    with pytest.raises(SnapshotNeeded):
        list(log.since(log.base - 1))
    log.close()
    reopened = FrameLog(tmp_path / "log")  # the chain was rewritten: all of it is valid
    assert (reopened.base, reopened.last_commit) == (log.base, txs[-1].last_frame)
    assert list(reopened.since(reopened.base)) == kept
    reopened.close()
