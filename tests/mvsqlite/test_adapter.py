"""The FDB adapter's behaviour when the cluster is slow, down or batching (issue 10, defect 8):
timeouts, transient errors, commits sharing a commit version; the real adapter against a
fake of the binding (libfdb_c is not on this machine)."""

from __future__ import annotations

import time
import types

import pytest

from sqld.backends.mvsqlite import fdbreal
from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.fdbport import FDBError
from sqld.backends.mvsqlite.replsource import ChangeLog
from sqld.backends.mvsqlite.simulator import SimDatabase
from sqld.errors import SqldError

PREFIX = b"test/adapter/"


def rows(conn, sql, params=()):
    _, got, handle = conn.start(sql, params, 1_000_000)
    assert handle is None
    return got


def backends(fdb, n=2):
    out = [MvsqliteBackend(fdb, PREFIX, gc_interval=None) for _ in range(n)]
    for b in out:
        b.open()
    return out


def test_defect8_a_cluster_that_does_not_answer_is_08006_naming_foundationdb_within_the_timeout():
    fdb = SimDatabase(seed=8, backoff=False, transaction_timeout=0.3)
    a, b = backends(fdb)
    try:
        a.writer().run("create table t(id integer primary key, v text)")
        reader = b.open_reader()
        w = a.writer()
        w.run("begin")
        w.start("insert into t(v) values ('during')", (), 10)
        fdb.hang()
        for conn, sql, unknown in ((reader, "select count(*) from t", False), (w, "commit", True)):
            t0 = time.monotonic()
            with pytest.raises(SqldError) as err:
                rows(conn, sql)
            assert time.monotonic() - t0 < 3  # a couple of transaction timeouts, not forever
            assert err.value.sqlstate == "08006", err.value
            assert "FoundationDB did not answer within 0.3 s" in err.value.message
            # a commit cut off by the timeout may have happened: the client is told so
            assert ("whether the commit happened is unknown" in err.value.message) == unknown
        if w.in_transaction():
            w.run("rollback")
        fdb.resume()
        a.writer().start("insert into t(v) values ('after')", (), 10)
        assert rows(b.open_reader(), "select v from t") == [("after",)]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("code", [1037, 1213, 1009, 1039])
def test_defect8_transient_read_errors_are_retried_keeping_the_conflict_ranges(code):
    fdb = SimDatabase(seed=8, backoff=False)
    (a,) = backends(fdb, 1)
    a.writer().run("create table t(id integer primary key, n integer)")
    a.writer().run("create table u(id integer primary key, v)")
    a.writer().start("insert into t values (1, 0)", (), 10)
    for i in range(30):
        a.writer().start("insert into u values (?, ?)", (i, "u" * 300), 10)
    (c,) = backends(fdb, 1)  # a process with a cold cache: its reads go to FDB
    try:
        w = c.writer()
        w.run("begin")
        assert rows(w, "select n from t") == [(0,)]
        fdb.fail_reads(code, 3)
        assert rows(w, "select count(*) from u") == [(30,)]  # retried, not an error
        assert fdb.stats["injected_read_error"] == 3
        a.writer().start("update t set n = 5", (), 10)  # changes what w read before the retries
        w.start("update t set n = n + 1", (), 10)
        with pytest.raises(SqldError) as err:
            w.run("commit")
        assert err.value.sqlstate == "40001"  # the conflict range on t survived the retries
        if w.in_transaction():
            w.run("rollback")
        assert rows(c.open_reader(), "select n from t") == [(5,)]
    finally:
        a.close()
        c.close()


def test_defect8_a_transient_error_that_does_not_pass_is_a_clear_error():
    fdb = SimDatabase(seed=8, backoff=False)
    (a,) = backends(fdb, 1)
    try:
        a.writer().run("create table t(id integer primary key, v)")
        (c,) = backends(fdb, 1)
        reader = c.open_reader()
        fdb.fail_reads(1037, 1000)
        with pytest.raises(SqldError) as err:
            rows(reader, "select count(*) from t")
        assert err.value.sqlstate == "08006" and "process_behind" in err.value.message
        fdb._read_errors.clear()
        c.close()
    finally:
        a.close()


def test_defect8_commits_sharing_a_commit_version_all_reach_a_replica():
    """Two commits of one proxy batch differ only in the versionstamp's order bytes. A replica
    that stops after any frame and starts again from it must still get both."""
    fdb = SimDatabase(seed=8, backoff=False)
    a, b = backends(fdb)
    try:
        a.writer().run("create table x(id integer primary key, n integer)")
        a.writer().run("create table y(id integer primary key, n integer)")
        a.writer().start("insert into x values (1, 0)", (), 10)
        a.writer().start("insert into y values (1, 0)", (), 10)
        start = a.store.current_version()
        fdb.faults.batch = 1.0
        for i in range(5):
            for side, table in ((a, "x"), (b, "y")):
                side.writer().run("begin")
                side.writer().start(f"update {table} set n = n + 1", (), 10)
            a.writer().run("commit")
            b.writer().run("commit")  # joins a's batch
        fdb.faults.batch = 0.0
        assert fdb.stats["batched"] == 5
        log = ChangeLog(a.store)
        replica: dict[int, bytes] = {}
        position = start
        while True:  # a replica that reconnects after every frame
            tx = next(iter(log.since(position)), None)
            if tx is None:
                break
            for page in tx.pages:
                replica[page.number] = page.data
            position = tx.last_frame
        snap = a.store.snapshot()
        for pgno, data in replica.items():
            assert data == snap.read_page(pgno), f"page {pgno} differs"
        changed = {p for tx in log.since(start) for p in (pg.number for pg in tx.pages)}
        assert changed <= set(replica)
    finally:
        a.close()
        b.close()


# -- the real adapter, against a fake of the binding -------------------------------------------


class FakeFDBError(Exception):
    def __init__(self, code):
        self.code = code
        self.description = b"fake"


class FakeFuture:
    def __init__(self, value=None, error=None):
        self._value, self._error = value, error

    def wait(self):
        if self._error:
            raise self._error
        return self._value

    @property
    def value(self):
        return self.wait()


class FakeTransaction:
    def __init__(self, script):
        self.script = script  # codes the next gets fail with
        self.on_error_calls = []
        self.snapshot = self
        self.options = types.SimpleNamespace(set_timeout=lambda ms: None)

    def get_read_version(self):
        return FakeFuture(42)

    def get(self, key):
        if self.script:
            return FakeFuture(error=FakeFDBError(self.script.pop(0)))
        return FakeFuture(b"v")

    def on_error(self, error):
        self.on_error_calls.append(error.code)
        if error.code in (1031, 2000):
            return FakeFuture(error=FakeFDBError(error.code))
        return FakeFuture()


class FakeDatabase:
    def __init__(self, script):
        self.timeouts = []
        self.options = types.SimpleNamespace(set_transaction_timeout=self.timeouts.append)
        self.script = script
        self.transactions = []

    def create_transaction(self):
        tr = FakeTransaction(self.script)
        self.transactions.append(tr)
        return tr


def fake_binding(script):
    binding = types.SimpleNamespace(FDBError=FakeFDBError)
    binding.database = FakeDatabase(script)
    binding.open = lambda cluster_file: binding.database
    return binding


def test_defect8_the_real_adapter_sets_a_transaction_timeout_and_names_its_cluster_file(tmp_path, monkeypatch):
    cluster = tmp_path / "fdb.cluster"
    cluster.write_text("test:test@127.0.0.1:4500\n")
    binding = fake_binding([])
    monkeypatch.setattr(fdbreal, "_load_binding", lambda: binding)
    db = fdbreal.open_database(str(cluster), timeout=2.5)
    assert binding.database.timeouts == [2500]  # milliseconds, for every transaction it makes
    assert db.transaction_timeout == 2.5 and str(cluster) in db.description
    assert fdbreal.open_database(str(cluster)).transaction_timeout == fdbreal.DEFAULT_TIMEOUT


def test_the_real_adapter_keeps_codes_and_lets_fdb_decide_what_is_retryable(tmp_path, monkeypatch):
    binding = fake_binding([1037, 1031])
    db = fdbreal.RealDatabase(binding.database, binding, description="FoundationDB (cluster file x)", timeout=1)
    tr = db.create_transaction()
    with pytest.raises(FDBError) as err:
        tr.get(b"k")
    assert err.value.code == 1037
    tr.on_error(err.value)  # FDB said retry
    with pytest.raises(FDBError) as err:
        tr.get(b"k")
    assert err.value.code == 1031
    with pytest.raises(FDBError) as again:
        tr.on_error(err.value)  # not retryable: FDB raises it again, the port keeps the code
    assert again.value.code == 1031
    assert binding.database.transactions[0].on_error_calls == [1037, 1031]
    assert tr.get(b"k") == b"v"
