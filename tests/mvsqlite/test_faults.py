"""What the backend relies on, in the simulator and through two backends: a 1021 whose commit
lands later, a cluster that does not answer, commits sharing one commit version."""

from __future__ import annotations

import threading
import time

import pytest

from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.fdbport import FDBError
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.errors import SqldError

PREFIX = b"test/faults/"


def code_of(fn, *args) -> int:
    with pytest.raises(FDBError) as info:
        fn(*args)
    return info.value.code


class OneInFlight:
    """Faults: the next commit with writes is answered 1021 while still in flight; no other."""

    conflict = unknown_result = too_old = batch = 0.0

    def __init__(self) -> None:
        self.armed = True

    @property
    def in_flight(self) -> float:
        armed, self.armed = self.armed, False
        return 1.0 if armed else 0.0


def rows(conn, sql, params=()):
    _, got, handle = conn.start(sql, params, 1_000_000)
    assert handle is None
    return got


@pytest.fixture
def fdb():
    return SimDatabase(seed=10, backoff=False)


def backends(fdb, n=2):
    out = [MvsqliteBackend(fdb, PREFIX, gc_interval=None) for _ in range(n)]
    for b in out:
        b.open()
    return out


# -- the simulator ----------------------------------------------------------------------------


def test_an_in_flight_commit_lands_after_later_commits(fdb):
    fdb.faults = OneInFlight()
    fdb.in_flight_wait = 1
    tr = fdb.create_transaction()
    tr.set(b"k", b"late")
    assert code_of(tr.commit) == 1021
    assert fdb.committed_items(b"k", b"l") == []  # still on its way
    for i in range(2):  # it lets one commit pass, and lands ahead of the next
        other = fdb.create_transaction()
        other.set(b"o%d" % i, b"")
        other.commit()
    assert fdb.committed_items(b"k", b"l") == [(b"k", b"late")]
    assert fdb.stats["in_flight_landed"] == 1


def test_an_in_flight_commit_is_stopped_by_a_fence_committed_first(fdb):
    fdb.faults = OneInFlight()
    fdb.in_flight_wait = 1
    tr = fdb.create_transaction()
    tr.get(b"marker")
    tr.set(b"marker", b"")
    tr.set(b"k", b"late")
    assert code_of(tr.commit) == 1021
    fence = fdb.create_transaction()
    fence.get(b"marker")  # absent: not committed (yet)
    fence.set(b"marker", b"aborted")
    fence.commit()
    fdb.land_in_flight()
    assert fdb.committed_items(b"k", b"l") == []
    assert fdb.committed_items(b"marker", b"markes") == [(b"marker", b"aborted")]
    assert fdb.stats["in_flight_dropped"] == 1


def test_an_in_flight_commit_landing_during_a_fence_makes_the_fence_retry(fdb):
    fdb.faults = OneInFlight()
    fdb.in_flight_wait = 0
    tr = fdb.create_transaction()
    tr.get(b"marker")
    tr.set(b"marker", b"")
    assert code_of(tr.commit) == 1021
    fence = fdb.create_transaction()
    assert fence.get(b"marker") is None
    fence.set(b"marker", b"aborted")
    assert code_of(fence.commit) == 1020  # the original landed first, and wrote what it read
    fence.on_error(FDBError(1020))
    assert fence.get(b"marker") == b""


def test_commits_of_one_batch_share_the_commit_version_and_differ_in_order(fdb):
    fdb.faults.batch = 1.0
    trs = [fdb.create_transaction() for _ in range(3)]
    for i, tr in enumerate(trs):
        tr.get_read_version()  # all read before any committed: they can share a batch
        tr.set_versionstamped_key(b"log/" + b"\x00" * 10, 4, b"%d" % i)
    for tr in trs:
        tr.commit()
    stamps = [tr.get_versionstamp() for tr in trs]
    assert len({s[:8] for s in stamps}) == 1 and [s[8:] for s in stamps] == [b"\x00\x00", b"\x00\x01", b"\x00\x02"]
    assert len({tr.get_committed_version() for tr in trs}) == 1
    assert [k[4:] for k, _ in fdb.committed_items(b"log/", b"log0")] == stamps
    after = fdb.create_transaction()
    assert after.get_read_version() >= trs[0].get_committed_version()  # sees the whole batch
    late = fdb.create_transaction()
    late.set(b"x", b"")
    late.commit()  # a read version was handed out since: a batch of its own
    assert late.get_committed_version() > trs[0].get_committed_version()


def test_a_batch_still_checks_conflicts_in_order(fdb):
    fdb.faults.batch = 1.0
    a, b = fdb.create_transaction(), fdb.create_transaction()
    a.get(b"x")
    b.get(b"x")
    a.set(b"x", b"a")
    b.set(b"x", b"b")
    a.commit()
    assert code_of(b.commit) == 1020


def test_a_cluster_that_does_not_answer_times_out_with_1031():
    fdb = SimDatabase(seed=10, backoff=False, transaction_timeout=0.2)
    fdb.hang()
    t0 = time.monotonic()
    tr = fdb.create_transaction()
    assert code_of(tr.get, b"k") == 1031
    assert 0.15 < time.monotonic() - t0 < 2
    assert code_of(tr.on_error, FDBError(1031)) == 1031  # not retryable
    fdb.resume()
    tr = fdb.create_transaction()
    tr.set(b"k", b"v")
    tr.commit()


def test_without_a_timeout_a_call_waits_until_the_cluster_answers():
    fdb = SimDatabase(seed=10, backoff=False)
    fdb.hang()
    got = []
    t = threading.Thread(target=lambda: got.append(fdb.create_transaction().get(b"k")))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # FDB's default: no timeout, it waits
    fdb.resume()
    t.join(5)
    assert got == [None]


# -- the backend against them -----------------------------------------------------------------


@pytest.mark.parametrize("wait", [0, 2], ids=["lands-during-the-fence", "lands-after-the-fence"])
def test_a_commit_answered_1021_while_in_flight_is_applied_exactly_once(fdb, wait):
    """The fence: a 1021 whose commit lands while the backend checks its marker is found
    committed (the check conflicts and looks again); one that lands after the check wrote
    "aborted" conflicts and is dropped, and the autocommit statement is run again. Either
    way the row is there once."""
    a, b = backends(fdb)
    try:
        a.writer().run("create table t(id integer primary key, v text)")
        fdb.faults = OneInFlight()
        fdb.in_flight_wait = wait
        a.writer().start("insert into t(v) values ('once')", (), 10)
        fdb.land_in_flight()
        b.writer().start("insert into t(v) values ('other')", (), 10)  # later commits: nothing lands twice
        assert fdb.stats["injected_in_flight"] == 1
        assert fdb.stats["in_flight_landed" if wait == 0 else "in_flight_dropped"] == 1
        for side in (a, b):
            assert rows(side.open_reader(), "select v from t order by id") == [("once",), ("other",)]
    finally:
        a.close()
        b.close()


def test_an_explicit_transaction_whose_1021_commit_lands_after_the_fence_fails_40001(fdb):
    (a,) = backends(fdb, 1)
    try:
        w = a.writer()
        w.run("create table t(id integer primary key, v text)")
        fdb.faults = OneInFlight()
        fdb.in_flight_wait = 2
        w.run("begin")
        w.start("insert into t(v) values ('never')", (), 10)
        with pytest.raises(SqldError) as err:
            w.run("commit")
        assert err.value.sqlstate == "40001"
        if w.in_transaction():
            w.run("rollback")
        fdb.land_in_flight()
        assert fdb.stats["in_flight_dropped"] == 1
        assert rows(a.open_reader(), "select count(*) from t") == [(0,)]
    finally:
        a.close()


def test_a_cluster_that_does_not_answer_is_a_clear_error_within_the_timeout_then_recovers():
    fdb = SimDatabase(seed=10, backoff=False, transaction_timeout=0.3)
    a, b = backends(fdb)
    try:
        a.writer().run("create table t(id integer primary key, v text)")
        a.writer().start("insert into t(v) values ('before')", (), 10)
        reader = b.open_reader()
        fdb.hang()
        for conn, sql in ((reader, "select count(*) from t"), (a.writer(), "insert into t(v) values ('during')")):
            t0 = time.monotonic()
            with pytest.raises(SqldError) as err:
                rows(conn, sql)
            assert time.monotonic() - t0 < 5
            assert err.value.sqlstate != "XX000" and "timed out" in str(err.value).replace("_", " ")
        assert fdb.stats["timed_out"] >= 2
        fdb.resume()
        a.writer().start("insert into t(v) values ('after')", (), 10)
        assert rows(b.open_reader(), "select v from t order by id") == [("before",), ("after",)]
        assert rows(b.open_reader(), "pragma integrity_check") == [("ok",)]
    finally:
        a.close()
        b.close()


def test_two_processes_whose_commits_share_commit_versions_keep_their_caches_right(fdb):
    """Commits of one batch differ only in the versionstamp's order bytes: the page caches and
    the change log keyed by commit version must still see both processes' changes."""
    a, b = backends(fdb)
    try:
        a.writer().run("create table x(id integer primary key, n integer)")
        a.writer().run("create table y(id integer primary key, n integer)")
        a.writer().start("insert into x values (1, 0)", (), 10)
        a.writer().start("insert into y values (1, 0)", (), 10)
        readers = [side.open_reader() for side in (a, b)]
        for r in readers:
            rows(r, "select * from x, y")  # warm caches, to be kept right across batches
        fdb.faults.batch = 1.0
        for i in range(30):
            first, second = (a, b) if i % 2 else (b, a)
            for side, table in ((first, "x"), (second, "y")):
                side.writer().run("begin")
                side.writer().start(f"update {table} set n = n + 1", (), 10)  # both read before either commits
            first.writer().run("commit")
            second.writer().run("commit")  # joins the first one's batch: the same commit version
            for r in readers:
                assert rows(r, "select x.n, y.n from x, y") == [(i + 1, i + 1)]
        fdb.faults.batch = 0.0
        assert fdb.stats["batched"] == 30
        log = fdb.committed_items(PREFIX + b"l", PREFIX + b"m")
        assert len({k[-10:-2] for k, _ in log[-60:]}) == 30  # 60 commits, 30 commit versions
    finally:
        a.close()
        b.close()
