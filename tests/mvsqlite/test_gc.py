"""GC against pinned snapshots and replicas (issue 10, defect 6), and GC in chunks that fit
FDB's limits on a database larger than one transaction can read (defect 8)."""

from __future__ import annotations

import random
import threading

import apsw
import pytest

from sqld.backends.mvsqlite import pagestore
from sqld.backends.mvsqlite import vfs as v
from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.pagestore import PageMissing, PageStore, SnapshotTooOld
from sqld.backends.mvsqlite.replsource import ChangeLog
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.replication.log import SnapshotNeeded

PREFIX = b"test/gc/"


def rows(conn, sql, params=()):
    _, got, handle = conn.start(sql, params, 1_000_000)
    assert handle is None
    return got


@pytest.fixture
def fdb():
    return SimDatabase(seed=6, backoff=False)


@pytest.fixture
def db(fdb):
    b = MvsqliteBackend(fdb, PREFIX, gc_interval=None)
    b.open()
    yield b
    b.close()


def _history(db):
    """A table whose pages (page 1 too) have many versions; the version after its first rows."""
    w = db.writer()
    w.run("create table t(id integer primary key, v)")
    w.start("insert into t values (1, 'old')", (), 10)
    old = db.store.current_version()
    for i in range(20):
        w.start("update t set v = ? where id = 1", (f"v{i}",), 10)
        w.run(f"create table extra{i}(x)")  # page 1 (the schema) changes for real
    return old


def test_defect6_a_snapshot_pinned_below_the_gc_horizon_is_snapshot_too_old_not_zero_pages(fdb, db):
    old = _history(db)
    db.store.gc(db.store.current_version())
    snap = db.store.snapshot(old)
    with pytest.raises(SnapshotTooOld):
        snap.read_page(1)
    with pytest.raises(apsw.Error):  # time travel: an error, not an empty or torn database
        db.open_at(old).execute("select v from t").fetchall()
    assert isinstance(v.last_commit_error(), SnapshotTooOld)


def test_a_pinned_read_past_5s_reads_the_horizon_again_in_its_new_transaction(fdb, db):
    old = _history(db)
    snap = db.store.snapshot(old)
    assert snap.page_count() > 1  # its first FDB transaction read the horizon: below it
    db.store.gc(db.store.current_version())
    fdb.advance(6)  # its FDB transaction is too old now: it reads on in a fresh one
    with pytest.raises(SnapshotTooOld):
        snap.read_page(2)


def test_defect6_a_replica_source_never_sends_pages_gc_took(fdb, db):
    """The change log read in one transaction, GC passing, the frames read after FDB's 5 s:
    SnapshotNeeded (the replica bootstraps), never a zeroed page 1 that would truncate it."""
    w = db.writer()
    w.run("create table t(id integer primary key, v)")
    start = db.store.current_version()
    for i in range(10):
        w.start("insert into t values (?, ?)", (i, "x" * 500), 10)
    frames = ChangeLog(db.store).since(start)
    first = next(frames)
    assert first.db_size > 0
    for i in range(10):
        w.start("update t set v = ? where id = ?", ("y" * 500, i), 10)
        w.run(f"create table extra{i}(x)")
    db.store.gc(db.store.current_version())
    fdb.advance(6)
    sent = []
    with pytest.raises(SnapshotNeeded):
        for tx in frames:
            sent.append(tx)
    for tx in sent:
        assert tx.db_size > 0 and all(p.data != bytes(len(p.data)) for p in tx.pages if p.number == 1)
    with pytest.raises(SnapshotNeeded):
        list(ChangeLog(db.store).since(start))


def test_defect6_a_missing_index_entry_inside_the_database_is_an_error_not_a_zero_page(fdb, db):
    w = db.writer()
    w.run("create table t(id integer primary key, v)")
    for i in range(50):
        w.start("insert into t values (?, ?)", (i, "z" * 300), 10)
    st = db.store
    assert st.snapshot().page_count() >= 3
    tr = fdb.create_transaction()  # damage: page 3 loses every version
    tr.clear_range(st.k_index(3), st.k_index(4))
    tr.commit()
    fresh = PageStore(fdb, PREFIX)  # a process with nothing cached
    snap = fresh.snapshot()
    with pytest.raises(PageMissing):
        snap.read_page(3)
    assert snap.read_page(snap.page_count() + 5) == bytes(fresh.page_size)  # past the end: zeros
    assert PageStore(fdb, b"test/empty/").snapshot().page_count() == 0  # no database yet: empty


def test_defect8_the_gc_horizon_never_moves_back(fdb, db):
    _history(db)
    high = db.store.current_version()
    db.store.gc(high)
    db.store.gc(high // 2)  # another process, with an older idea of the horizon
    raw = fdb.create_transaction().get(db.store.k_horizon())
    assert pagestore._VERSION.unpack(raw)[0] == high


def test_defect8_idempotence_markers_are_collected(fdb, db):
    w = db.writer()
    w.run("create table t(id integer primary key, v)")
    for i in range(100):
        w.start("insert into t values (?, ?)", (i, "m"), 10)
    markers = lambda: len(fdb.committed_items(PREFIX + b"x", PREFIX + b"y"))  # noqa: E731
    assert markers() >= 100
    fdb.advance(pagestore.LOG_MARGIN / 1e6 + 1)
    removed = db.store.gc(db.store.current_version())
    assert markers() == 0 and removed["markers"] >= 100
    assert rows(db.open_reader(), "select count(*) from t") == [(100,)]


def test_defect8_aborted_markers_are_collected_after_their_ttl(fdb, db, monkeypatch):
    st = db.store
    snap = st.snapshot()
    snap._begin()
    assert snap._resolve_unknown(b"\x01" * 16) is None  # writes an "aborted" fence
    assert len(fdb.committed_items(PREFIX + b"x", PREFIX + b"y")) == 1
    monkeypatch.setattr(pagestore, "FENCE_TTL", -10)
    assert st.gc(st.current_version())["fences"] == 1
    assert fdb.committed_items(PREFIX + b"x", PREFIX + b"y") == []
    assert fdb.committed_items(PREFIX + b"a", PREFIX + b"b") == []


def test_defect8_gc_of_a_database_larger_than_one_transaction_can_read(fdb, db):
    """The simulator refuses a transaction that reads more than 4 MB (as FDB's 5 s would):
    the old GC read every content in one transaction and never finished."""
    w = db.writer()
    w.run("create table big(id integer primary key, b blob)")
    for round_ in range(3):
        w.run("begin")
        for i in range(40):
            w.start("insert or replace into big values (?, randomblob(100000))", (i,), 10)
        w.run("commit")
    fdb.read_limit = 4_000_000
    removed = db.store.gc(db.store.current_version())
    fdb.read_limit = None
    assert removed["complete"] and removed["contents"] > 1500  # two rounds of ~12 MB replaced
    assert fdb.stats["over_read_limit"] == 0
    assert rows(db.open_reader(), "select count(*), sum(length(b)) from big") == [(40, 4_000_000)]
    assert rows(db.open_reader(), "pragma integrity_check") == [("ok",)]


def test_gc_in_chunks_beside_busy_writers_never_drops_a_content_they_name(fdb, db, monkeypatch):
    """Writers keep committing pages whose contents come from a small set (so contents GC
    finds unused are named again all the time) while GC sweeps in tiny chunks: every page
    of every version at or after the horizon stays readable."""
    monkeypatch.setattr(pagestore, "GC_CHUNK_KEYS", 7)
    monkeypatch.setattr(pagestore, "GC_CHUNK_BYTES", 3 * 4096)
    st = db.store
    values = [bytes([i]) * st.page_size for i in range(1, 6)]
    for pgno in range(2, 12):
        s = st.snapshot()
        s.write_page(pgno, values[pgno % 5])
        s.commit()
    stop = threading.Event()
    errors: list = []

    def writer(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            s = st.snapshot()
            try:
                pgno = rng.randrange(2, 12)
                s.read_page(pgno)
                s.write_page(pgno, rng.choice(values))
                s.commit()
            except pagestore.CommitFailed:
                pass
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(15):
            horizon = st.current_version()
            st.gc(horizon)
            s = st.snapshot()
            for pgno in range(2, 12):
                assert s.read_page(pgno) in values
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    s = PageStore(fdb, PREFIX).snapshot()
    for pgno in range(2, 12):
        assert s.read_page(pgno) in values
