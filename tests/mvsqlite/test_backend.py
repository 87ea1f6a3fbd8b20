"""The mvsqlite backend on the FDB simulator: two backend instances (as two sqld processes
would be) share one database; conflicts, faults, limits, time travel, GC, round trips."""

from __future__ import annotations

import random
import sys
import threading
import uuid

import pytest

from sqld.backends.mvsqlite import pagestore
from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.errors import SerializationFailure, SqldError

ACCOUNTS = 20
START = 1000


@pytest.fixture(params=["simulator", "real"])
def fdb(request, monkeypatch):
    """The simulator, and a real FoundationDB (conftest.real_fdb_cluster: SQLD_TEST_FDB_CLUSTER's
    cluster file, or a foundationdb/foundationdb container), each test on a prefix of its own."""
    if request.param == "simulator":
        return SimDatabase(seed=1, backoff=False)
    if request.node.get_closest_marker("simulator_only"):
        pytest.skip("needs the simulator's clock or fault injection")
    cluster_file = request.getfixturevalue("real_fdb_cluster")  # skips saying what is missing
    from sqld.backends.mvsqlite.fdbreal import open_database

    monkeypatch.setattr(sys.modules[__name__], "PREFIX", f"sqld-test/{uuid.uuid4().hex}/".encode())
    return open_database(cluster_file)


PREFIX = b"test/main/"


def backend(fdb, prefix=None):
    b = MvsqliteBackend(fdb, prefix or PREFIX)
    b.open()
    return b


def rows(conn, sql, params=()):
    _, got, handle = conn.start(sql, params, 1_000_000)
    assert handle is None
    return got


def test_two_processes_see_each_others_commits(fdb):
    a, b = backend(fdb), backend(fdb)
    a.writer().run("create table t(id integer primary key, v text)")
    a.writer().start("insert into t(v) values ('from a')", (), 10)
    b.writer().start("insert into t(v) values ('from b')", (), 10)
    for side in (a, b):
        reader = side.open_reader()
        assert rows(reader, "select v from t order by id") == [("from a",), ("from b",)]
    b.writer().run("alter table t add column w default 7")
    assert rows(a.open_reader(), "select w from t") == [(7,), (7,)]
    assert rows(a.writer(), "pragma integrity_check") == [("ok",)]
    a.close()
    b.close()


def _setup_bank(b):
    w = b.writer()
    w.run("create table acct(id integer primary key, balance integer not null)")
    w.run("create table ledger(id integer primary key, src, dst, amount)")
    w.run("begin")
    for i in range(ACCOUNTS):
        w.start("insert into acct values (?, ?)", (i, START), 10)
    w.run("commit")


def _transfers(b, lock, n, seed, done, errors):
    rng = random.Random(seed)
    w = b.writer()
    for _ in range(n):
        while True:
            src, dst = rng.sample(range(ACCOUNTS), 2)
            amount = rng.randint(1, 50)
            with lock:  # one writer connection per process, one user at a time (as the scheduler does)
                try:
                    w.run("begin")
                    (bal,) = rows(w, "select balance from acct where id = ?", (src,))[0]
                    w.start("update acct set balance = ? where id = ?", (bal - amount, src), 10)
                    (bal2,) = rows(w, "select balance from acct where id = ?", (dst,))[0]
                    w.start("update acct set balance = ? where id = ?", (bal2 + amount, dst), 10)
                    w.start("insert into ledger(src, dst, amount) values (?, ?, ?)", (src, dst, amount), 10)
                    w.run("commit")
                    done.append((src, dst, amount))
                    break
                except SerializationFailure:
                    if w.in_transaction():
                        w.run("rollback")
                except SqldError as exc:
                    errors.append(exc)
                    if w.in_transaction():
                        w.run("rollback")
                    break


def _check_bank(b, done):
    r = b.open_reader()
    balances = dict(rows(r, "select id, balance from acct"))
    assert sum(balances.values()) == ACCOUNTS * START
    ledger = rows(r, "select src, dst, amount from ledger order by id")
    assert sorted(ledger) == sorted(done)  # every acknowledged transfer, once; nothing else
    expected = {i: START for i in range(ACCOUNTS)}
    for src, dst, amount in ledger:
        expected[src] -= amount
        expected[dst] += amount
    assert balances == expected  # no lost update: balances are the ledger's sum
    assert rows(r, "pragma integrity_check") == [("ok",)]


@pytest.mark.simulator_only
@pytest.mark.parametrize("faults", [{}, {"conflict": 0.05, "unknown_result": 0.05, "too_old": 0.01},
                                    {"in_flight": 0.05, "batch": 0.5, "unknown_result": 0.02}],
                         ids=["clean", "faults", "in-flight-and-batches"])
def test_conflicting_bank_transfers_across_two_processes(fdb, faults):
    a, b = backend(fdb), backend(fdb)
    _setup_bank(a)
    for name, p in faults.items():
        setattr(fdb.faults, name, p)
    done: list = []
    errors: list = []
    threads = [threading.Thread(target=_transfers, args=(side, threading.Lock(), 250, seed, done, errors))
               for seed, side in enumerate((a, b, a, b))]
    # two threads per process share its writer under a lock, as sessions share the scheduler's writer
    locks = {id(a): threading.Lock(), id(b): threading.Lock()}
    threads = [threading.Thread(target=_transfers, args=(side, locks[id(side)], 250, seed, done, errors))
               for seed, side in enumerate((a, b, a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for name in faults:
        setattr(fdb.faults, name, 0)
    assert errors == []
    assert len(done) == 1000
    assert fdb.stats["conflicts"] > 0  # the two processes really did collide
    if "conflict" in faults:
        assert fdb.stats["injected_unknown_result"] > 0 and fdb.stats["injected_conflict"] > 0
    if "in_flight" in faults:
        # (every transfer touches the accounts' page: overlapping ones conflict, none can share
        # a batch; test_faults.py has batches of disjoint writers)
        assert fdb.stats["in_flight_landed"] > 0 and fdb.stats["in_flight_dropped"] > 0
    _check_bank(a, done)
    _check_bank(b, done)
    fdb.land_in_flight()  # whatever is still on its way was fenced: nothing more is applied
    _check_bank(a, done)


@pytest.mark.simulator_only
def test_autocommit_conflicts_are_retried_by_the_server(fdb):
    a, b = backend(fdb), backend(fdb)
    a.writer().run("create table c(id integer primary key, n integer)")
    a.writer().start("insert into c values (1, 0)", (), 10)
    fdb.faults.conflict = 0.3
    for side in (a, b) * 50:
        side.writer().start("update c set n = n + 1 where id = 1", (), 10)
    fdb.faults.conflict = 0
    assert rows(b.open_reader(), "select n from c") == [(100,)]
    assert fdb.stats["injected_conflict"] > 0


def test_time_travel_sees_exactly_its_version(fdb):
    a = backend(fdb)
    w = a.writer()
    w.run("create table h(n)")
    versions = []
    for i in range(10):
        w.start("insert into h values (?)", (i,), 10)
        versions.append(a.store.current_version())
    w.run("delete from h")
    for i, version in enumerate(versions):
        past = a.open_at(version)
        assert past.execute("select count(*), max(n) from h").fetchall() == [(i + 1, i)]
        past.close()
    assert rows(a.open_reader(), "select count(*) from h") == [(0,)]


@pytest.mark.simulator_only
def test_a_read_transaction_older_than_5s_reads_on_exactly(fdb):
    a = backend(fdb)
    a.writer().run("create table o(n)")
    a.writer().start("insert into o values (1)", (), 10)
    r = a.open_reader()
    r.run("begin")
    assert rows(r, "select count(*) from o") == [(1,)]
    a.writer().start("insert into o values (2)", (), 10)
    fdb.advance(6)
    assert rows(r, "select count(*) from o") == [(1,)]  # its snapshot, not an error, not newer data
    r.run("commit")
    assert rows(r, "select count(*) from o") == [(2,)]


@pytest.mark.simulator_only
def test_a_write_transaction_older_than_5s_fails_clearly(fdb):
    a = backend(fdb)
    w = a.writer()
    w.run("create table o(n)")
    w.run("begin")
    w.start("insert into o values (1)", (), 10)
    fdb.advance(6)
    with pytest.raises(SqldError) as err:
        w.run("commit")
    assert err.value.sqlstate == "40001"
    if w.in_transaction():
        w.run("rollback")
    assert rows(a.open_reader(), "select count(*) from o") == [(0,)]


def test_a_50mb_transaction_commits_in_phases(fdb):
    a, b = backend(fdb), backend(fdb)
    w = a.writer()
    w.run("create table big(id integer primary key, b blob)")
    w.run("begin")
    for i in range(50):
        w.start("insert into big(b) values (randomblob(1000000))", (), 10)
    w.run("commit")
    assert rows(b.open_reader(), "select count(*), sum(length(b)) from big") == [(50, 50_000_000)]
    assert rows(b.open_reader(), "pragma integrity_check") == [("ok",)]


def test_over_fdbs_commit_limit_in_one_phase_is_a_clear_error(fdb, monkeypatch):
    monkeypatch.setattr(pagestore, "SINGLE_PHASE_LIMIT", 1 << 40)  # as if there were no staging
    a = backend(fdb)
    w = a.writer()
    w.run("create table big(b blob)")
    w.run("begin")
    for _ in range(12):
        w.start("insert into big values (randomblob(1000000))", (), 10)
    with pytest.raises(SqldError) as err:
        w.run("commit")
    assert err.value.sqlstate == "54000" and "10 MB" in err.value.message
    if w.in_transaction():
        w.run("rollback")
    assert rows(a.open_reader(), "select count(*) from big") == [(0,)]


@pytest.mark.simulator_only
def test_gc_drops_versions_no_reader_needs(fdb):
    a = backend(fdb)
    w = a.writer()
    w.run("create table g(id integer primary key, v)")
    for i in range(200):
        w.start("insert or replace into g values (?, ?)", (i % 10, f"v{i}"), 10)
    fdb.advance(pagestore.LOG_MARGIN / 1e6 + 1)  # the change log outlives the horizon by LOG_MARGIN
    horizon = a.store.current_version()
    removed = a.store.gc(horizon)
    assert removed["versions"] > 100 and removed["log"] > 100 and removed["contents"] > 100
    assert removed["markers"] == removed["log"] and removed["complete"]
    assert rows(a.open_reader(), "select count(*), max(v) from g") == [(10, "v199")]
    assert rows(a.open_reader(), "pragma integrity_check") == [("ok",)]
    w.start("update g set v = 'after gc' where id = 1", (), 10)
    assert rows(backend(fdb).open_reader(), "select v from g where id = 1") == [("after gc",)]


@pytest.mark.simulator_only
def test_round_trips_of_warm_point_reads_and_writes(fdb):
    a = backend(fdb)
    w = a.writer()
    w.run("create table p(id integer primary key, v)")
    w.run("begin")
    for i in range(1000):
        w.start("insert into p values (?, ?)", (i, "x" * 50), 10)
    w.run("commit")
    r = a.open_reader()
    rows(r, "select v from p where id = 500")  # warm the caches
    w.start("update p set v = 'y' where id = 500", (), 10)
    w.start("update p set v = 'z' where id = 500", (), 10)
    s = a.store.stats
    reads, commits = s.reads, s.commits
    rows(r, "select v from p where id = 500")
    assert s.reads - reads <= 1 and s.commits == commits  # one round trip: the change log
    reads, commits = s.reads, s.commits
    w.start("update p set v = 'w' where id = 500", (), 10)
    assert (s.reads - reads) + (s.commits - commits) <= 2


@pytest.mark.simulator_only
def test_a_commit_too_large_to_list_its_pages_marks_everything_changed(fdb):
    """Over LIST_LIMIT pages, the change-log entry says "everything": other processes drop
    their cached pages instead of missing a change."""
    a, b = backend(fdb), backend(fdb)
    a.writer().run("create table big(id integer primary key, b blob)")
    a.writer().start("insert into big(b) values ('small')", (), 10)
    reader = b.open_reader()
    assert rows(reader, "select count(*) from big") == [(1,)]  # b's cache now holds those pages
    w = a.writer()
    w.run("begin")
    w.start("update big set b = 'changed' where id = 1", (), 10)
    for _ in range(pagestore.LIST_LIMIT // 240 + 2):  # ~1 MB each: past the listing limit in pages
        w.start("insert into big(b) values (randomblob(1000000))", (), 10)
    w.run("commit")
    log = fdb.committed_items(b"test/main/l", b"test/main/m")
    assert log[-1][1][16:] == pagestore.EVERYTHING
    assert rows(reader, "select b from big where id = 1") == [("changed",)]
    assert rows(reader, "select count(*) from big") == [(pagestore.LIST_LIMIT // 240 + 3,)]


@pytest.mark.simulator_only
def test_the_backend_collects_garbage_on_its_own(fdb):
    a = MvsqliteBackend(fdb, PREFIX, gc_interval=0.05, gc_retention=0)
    a.open()
    w = a.writer()
    w.run("create table g(id integer primary key, v)")
    for i in range(100):
        w.start("insert or replace into g values (1, ?)", (f"v{i}",), 10)
    index = lambda: len(fdb.committed_items(PREFIX + b"i", PREFIX + b"j"))  # noqa: E731
    before = index()
    import time as _time
    deadline = _time.monotonic() + 5
    while index() >= before and _time.monotonic() < deadline:
        _time.sleep(0.05)
    assert index() < before // 2
    assert rows(a.open_reader(), "select v from g") == [("v99",)]
    a.close()
