"""The replica's redo record: a crash in the middle of an apply is repaired on reopening,
and the position survives; a batch of transactions applies as one."""

from __future__ import annotations

import os
import random

import apsw

from sqld.replication.local_copy import Position, LocalCopy, bootstrap, merge
from sqld.replication.wal import transactions
from tests.replication.test_wal_apply import content_hash, primary, random_transactions  # noqa: F401

GEN = bytes(range(16))


def test_crash_mid_apply_is_redone_on_reopen(primary, tmp_path):  # noqa: F811
    replica_path = str(tmp_path / "replica.db")
    state = str(tmp_path / "replica.db-replica")
    bootstrap(primary, replica_path)
    random_transactions(primary, random.Random(4), 40)
    txs = list(transactions((tmp_path / "primary.db-wal").read_bytes()))
    replica = LocalCopy(replica_path, state)
    assert replica.position is None
    for n, tx in enumerate(txs[:-1], 1):
        replica.apply(tx, Position(GEN, n))
    last = txs[-1]
    assert len(last.pages) >= 1
    # A crash after the redo record, half-way through the page writes:
    replica._save(Position(GEN, len(txs)), last)
    fd = os.open(replica_path, os.O_RDWR)
    half = last.pages[: max(1, len(last.pages) // 2)]
    for page in half:
        os.pwrite(fd, b"\xee" * len(page.data), (page.number - 1) * len(page.data))  # torn garbage
    os.close(fd)
    replica.close()
    reopened = LocalCopy(replica_path, state)
    assert reopened.position == Position(GEN, len(txs))
    assert content_hash(reopened.conn) == content_hash(primary)
    assert reopened.conn.execute("pragma integrity_check").fetchall() == [("ok",)]
    reopened.close()


def test_a_merged_batch_equals_applying_one_by_one(primary, tmp_path):  # noqa: F811
    one = str(tmp_path / "one.db")
    batch = str(tmp_path / "batch.db")
    bootstrap(primary, one)
    bootstrap(primary, batch)
    random_transactions(primary, random.Random(8), 60)
    txs = list(transactions((tmp_path / "primary.db-wal").read_bytes()))
    r1, r2 = LocalCopy(one), LocalCopy(batch)
    reader = apsw.Connection(batch)  # a reader that was open throughout sees the new state
    assert reader.execute("select count(*) from t").fetchone() == (0,)
    for tx in txs:
        r1.apply(tx)
    r2.apply(merge(txs[:30]))
    r2.apply(merge(txs[30:]))
    assert content_hash(r1.conn) == content_hash(r2.conn) == content_hash(primary) == content_hash(reader)
    for r in (r1, r2):
        r.close()
    reader.close()


def test_an_unreadable_state_file_means_no_position(tmp_path):
    path = tmp_path / "r.db"
    conn = apsw.Connection(str(path))
    conn.execute("create table x(a)")
    conn.close()
    (tmp_path / "r.db-replica").write_bytes(b"SQLDREP1" + os.urandom(60))
    replica = LocalCopy(str(path), str(tmp_path / "r.db-replica"))
    assert replica.position is None
    replica.close()


def test_a_failed_write_keeps_readers_out_instead_of_showing_half_a_transaction(primary, tmp_path, monkeypatch):  # noqa: F811
    import pytest

    from sqld.replication import local_copy as apply_mod

    replica_path = str(tmp_path / "replica.db")
    bootstrap(primary, replica_path)
    random_transactions(primary, random.Random(6), 5)
    txs = list(transactions((tmp_path / "primary.db-wal").read_bytes()))
    replica = LocalCopy(replica_path, str(tmp_path / "replica.db-replica"))
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def failing(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 1:  # the first page lands, then the disk is full
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(apply_mod.os, "pwrite", failing)
    with pytest.raises(OSError):
        replica.apply(merge(txs), Position(GEN, 1))
    assert replica.damaged
    reader = apsw.Connection(replica_path)
    with pytest.raises(apsw.BusyError):  # no reader gets in to see the torn file
        reader.execute("select count(*) from t").fetchall()
    reader.close()
    monkeypatch.setattr(apply_mod.os, "pwrite", real_pwrite)
    replica.close()
    again = LocalCopy(replica_path, str(tmp_path / "replica.db-replica"))  # a restart redoes the record
    assert again.position == Position(GEN, 1)
    assert content_hash(again.conn) == content_hash(primary)
    again.close()


def test_a_torn_state_record_falls_back_to_the_other_slot(tmp_path):
    from sqld.replication.local_copy import StateFile
    from sqld.replication.wal import Page, Transaction

    state = StateFile(tmp_path / "s", durable=True)
    page = bytes(range(256)) * 16
    state.save(Position(GEN, 10), Transaction((Page(2, page),), 2, 0))
    state.save(Position(GEN, 11), Transaction((Page(3, page),), 3, 0))
    again = StateFile(tmp_path / "s", durable=True)
    assert again.load()[0] == Position(GEN, 11)
    newest = again.paths[again.slot]
    newest.write_bytes(newest.read_bytes()[:-100])  # a crash in the middle of writing it
    torn = StateFile(tmp_path / "s", durable=True)
    position, tx = torn.load()
    assert position == Position(GEN, 10) and [p.number for p in tx.pages] == [2]
    torn.save(Position(GEN, 12), Transaction((), 3, 0))  # the next record overwrites the torn slot
    assert StateFile(tmp_path / "s", durable=True).load()[0] == Position(GEN, 12)
