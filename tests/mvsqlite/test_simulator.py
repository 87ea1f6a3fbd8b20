"""The FoundationDB simulator keeps FDB's semantics; the real adapter fails clearly without FDB."""

from __future__ import annotations

import sys
import threading

import pytest

from sqld.backends.mvsqlite import fdbreal
from sqld.backends.mvsqlite.fdbport import (
    KEY_LIMIT,
    TRANSACTION_LIMIT,
    VALUE_LIMIT,
    FDBError,
    strinc,
)
from sqld.backends.mvsqlite.simulator import Faults, SimDatabase


def code_of(fn, *args) -> int:
    with pytest.raises(FDBError) as info:
        fn(*args)
    return info.value.code


def put(db: SimDatabase, *pairs: tuple[bytes, bytes]) -> int:
    tr = db.create_transaction()
    for k, v in pairs:
        tr.set(k, v)
    tr.commit()
    return tr.get_committed_version()


@pytest.fixture
def db() -> SimDatabase:
    return SimDatabase(seed=1, backoff=False)


# -- snapshot isolation and read-your-writes -------------------------------------------------


def test_reader_at_old_version_does_not_see_later_commits(db):
    v1 = put(db, (b"a", b"1"), (b"b", b"1"))
    old = db.create_transaction()
    assert old.get(b"a") == b"1"
    put(db, (b"a", b"2"), (b"c", b"2"))
    clr = db.create_transaction()
    clr.clear(b"b")
    clr.commit()
    assert old.get_read_version() >= v1
    assert old.get(b"a") == b"1"
    assert old.get(b"b") == b"1"
    assert old.get(b"c") is None
    assert old.get_range(b"", b"\xff") == [(b"a", b"1"), (b"b", b"1")]
    new = db.create_transaction()
    assert new.get_range(b"", b"\xff") == [(b"a", b"2"), (b"c", b"2")]
    at = db.create_transaction()
    at.set_read_version(v1)
    assert at.get(b"a") == b"1"


def test_commit_versions_increase_and_follow_the_clock():
    now = [100.0]
    db = SimDatabase(clock=lambda: now[0], backoff=False)
    v1 = put(db, (b"k", b"1"))
    v2 = put(db, (b"k", b"2"))
    assert v2 > v1
    now[0] += 1.0
    v3 = put(db, (b"k", b"3"))
    assert v3 - v2 >= 999_000
    tr = db.create_transaction()
    assert tr.get_read_version() >= v3


def test_read_your_writes_points_ranges_and_clears(db):
    put(db, *[(b"k%d" % i, b"old%d" % i) for i in range(6)])
    tr = db.create_transaction()
    tr.set(b"k1", b"new1")
    tr.set(b"k35", b"ins")
    tr.clear(b"k2")
    tr.clear_range(b"k4", b"k5")
    tr.set(b"k6", b"new6")
    assert tr.get(b"k1") == b"new1"
    assert tr.get(b"k2") is None
    assert tr.get(b"k4") is None
    assert tr.get(b"k5") == b"old5"
    assert tr.get_range(b"k", b"l") == [
        (b"k0", b"old0"), (b"k1", b"new1"), (b"k3", b"old3"), (b"k35", b"ins"),
        (b"k5", b"old5"), (b"k6", b"new6")]
    assert tr.get_range(b"k", b"l", limit=3) == [(b"k0", b"old0"), (b"k1", b"new1"), (b"k3", b"old3")]
    assert tr.get_range(b"k", b"l", limit=3, reverse=True) == [
        (b"k6", b"new6"), (b"k5", b"old5"), (b"k35", b"ins")]
    tr.clear_range(b"k3", b"k4")  # clears a key set earlier in the transaction too
    tr.set(b"k30", b"after-clear")
    assert tr.get_range(b"k2", b"k5") == [(b"k30", b"after-clear")]
    tr.commit()
    assert db.committed_items() == [
        (b"k0", b"old0"), (b"k1", b"new1"), (b"k30", b"after-clear"), (b"k5", b"old5"),
        (b"k6", b"new6")]


def test_snapshot_does_not_change_during_a_transaction(db):
    put(db, (b"a", b"1"))
    tr = db.create_transaction()
    tr.get_read_version()
    put(db, (b"a", b"2"))
    assert tr.get(b"a", snapshot=True) == b"1"


# -- conflicts --------------------------------------------------------------------------------


def test_read_write_conflict(db):
    put(db, (b"x", b"0"))
    t1, t2 = db.create_transaction(), db.create_transaction()
    assert t1.get(b"x") == b"0"
    assert t2.get(b"x") == b"0"
    t1.set(b"x", b"1")
    t2.set(b"x", b"2")
    t1.commit()
    assert code_of(t2.commit) == 1020
    assert db.stats["conflicts"] == 1
    assert db.committed_items() == [(b"x", b"1")]


def test_disjoint_keys_both_commit(db):
    t1, t2 = db.create_transaction(), db.create_transaction()
    t1.get(b"a")
    t2.get(b"b")
    t1.set(b"a", b"1")
    t2.set(b"b", b"2")
    t1.commit()
    t2.commit()
    assert db.committed_items() == [(b"a", b"1"), (b"b", b"2")]


def test_snapshot_reads_add_no_conflict(db):
    t1, t2 = db.create_transaction(), db.create_transaction()
    t1.get(b"x", snapshot=True)
    t1.get_range(b"", b"\xff", snapshot=True)
    t1.set(b"y", b"1")
    t2.set(b"x", b"2")
    t2.commit()
    t1.commit()


def test_blind_writes_never_conflict(db):
    t1, t2 = db.create_transaction(), db.create_transaction()
    t1.get_read_version()
    t2.get_read_version()
    t1.set(b"x", b"1")
    t2.set(b"x", b"2")
    t2.commit()
    t1.commit()
    assert db.committed_items() == [(b"x", b"1")]


def test_read_only_transaction_commits_despite_a_conflict(db):
    t1 = db.create_transaction()
    t1.get(b"x")
    put(db, (b"x", b"2"))
    t1.commit()
    assert t1.get_committed_version() == -1


def test_explicit_conflict_ranges(db):
    t1, t2 = db.create_transaction(), db.create_transaction()
    t1.get_read_version()
    t1.add_read_conflict_range(b"p", b"q")
    t1.set(b"z", b"1")
    t2.add_write_conflict_range(b"pa", b"pb")  # no mutation, still a write
    t2.commit()
    assert code_of(t1.commit) == 1020


def test_range_read_conflicts_on_inserts_into_the_range(db):
    t1 = db.create_transaction()
    assert t1.get_range(b"r", b"s") == []
    t1.set(b"count", b"0")
    put(db, (b"rx", b"new"))
    assert code_of(t1.commit) == 1020


def test_limited_range_read_conflicts_only_on_what_it_read(db):
    put(db, *[(b"k%d" % i, b"v") for i in range(5)])
    t1 = db.create_transaction()
    assert [k for k, _ in t1.get_range(b"k", b"l", limit=2)] == [b"k0", b"k1"]
    t1.set(b"out", b"1")
    put(db, (b"k3", b"changed"))  # after what t1 read
    t1.commit()

    t2 = db.create_transaction()
    assert [k for k, _ in t2.get_range(b"k", b"l", limit=2, reverse=True)] == [b"k4", b"k3"]
    t2.set(b"out", b"2")
    put(db, (b"k0", b"changed"))  # before what t2 read
    t2.commit()

    t3 = db.create_transaction()
    t3.get_range(b"k", b"l", limit=2)
    t3.set(b"out", b"3")
    put(db, (b"k1", b"changed"))  # inside what t3 read
    assert code_of(t3.commit) == 1020


def test_reading_own_writes_adds_no_conflict(db):
    t1 = db.create_transaction()
    t1.set(b"a", b"mine")
    assert t1.get(b"a") == b"mine"
    t1.clear_range(b"b", b"c")
    assert t1.get_range(b"b", b"c") == []
    put(db, (b"a", b"theirs"), (b"bb", b"theirs"))
    t1.commit()
    assert db.committed_items() == [(b"a", b"mine")]


def test_old_commits_leave_the_conflict_history(db):
    put(db, (b"x", b"1"))
    db.advance(6)
    put(db, (b"y", b"1"))
    assert len(db._history) == 1


# -- limits -----------------------------------------------------------------------------------


def test_transaction_too_old_after_five_seconds(db):
    put(db, (b"a", b"1"))
    tr = db.create_transaction()
    assert tr.get(b"a") == b"1"
    db.advance(6)
    assert code_of(tr.get, b"a") == 1007
    tr.set(b"a", b"2")
    assert code_of(tr.commit) == 1007
    tr.on_error(FDBError(1007))
    assert tr.get(b"a") == b"1"
    tr.set(b"a", b"2")
    tr.commit()


def test_within_five_seconds_is_not_too_old(db):
    tr = db.create_transaction()
    tr.get(b"a")
    db.advance(4.5)
    tr.get(b"a")
    tr.set(b"a", b"1")
    tr.commit()


def test_key_value_and_transaction_size_limits(db):
    tr = db.create_transaction()
    assert code_of(tr.set, b"k" * (KEY_LIMIT + 1), b"v") == 2102
    assert code_of(tr.set, b"k", b"v" * (VALUE_LIMIT + 1)) == 2103
    tr.set(b"k" * KEY_LIMIT, b"v" * VALUE_LIMIT)
    for i in range(TRANSACTION_LIMIT // VALUE_LIMIT):
        tr.set(b"big%04d" % i, b"v" * VALUE_LIMIT)
    assert code_of(tr.commit) == 2101
    assert db.committed_items() == []


# -- versionstamps ----------------------------------------------------------------------------


def test_versionstamped_keys_are_ordered_by_commit(db):
    stamps = []
    for i in range(5):
        tr = db.create_transaction()
        tr.set_versionstamped_key(b"log/" + b"\x00" * 10 + b"/x", 4, b"entry%d" % i)
        tr.commit()
        stamp = tr.get_versionstamp()
        assert len(stamp) == 10
        assert int.from_bytes(stamp[:8], "big") == tr.get_committed_version()
        stamps.append(stamp)
    assert stamps == sorted(stamps) and len(set(stamps)) == 5
    items = db.committed_items(b"log/", strinc(b"log/"))
    assert [v for _, v in items] == [b"entry%d" % i for i in range(5)]
    assert [k for k, _ in items] == [b"log/" + s + b"/x" for s in stamps]


def test_versionstamped_keys_add_no_write_conflict_of_their_own(db):
    """As in FDB: a reader of the range conflicts with a versionstamped key only through an
    explicit write-conflict range (the page store adds one for every page it writes)."""
    def race(explicit: bool) -> None:
        tr = db.create_transaction()
        tr.set_versionstamped_key(b"q/" + b"\x00" * 10, 2, b"")
        if explicit:
            tr.add_write_conflict_range(b"q/", b"q0")
        assert code_of(tr.get_versionstamp) == 2000  # not committed yet
        reader = db.create_transaction()
        reader.get_range(b"q/", b"q0")
        reader.set(b"seen", b"1")
        tr.commit()
        if explicit:
            assert code_of(reader.commit) == 1020
        else:
            reader.commit()

    race(explicit=False)
    race(explicit=True)


def test_versionstamp_offset_must_fit(db):
    tr = db.create_transaction()
    assert code_of(tr.set_versionstamped_key, b"short", 0, b"") == 2000


# -- retries, reset, cancel -------------------------------------------------------------------


def test_on_error_retries_retryable_and_reraises_others(db):
    put(db, (b"x", b"0"))
    tr = db.create_transaction()
    tr.get(b"x")
    tr.set(b"x", b"mine")
    put(db, (b"x", b"theirs"))
    try:
        tr.commit()
    except FDBError as e:
        assert e.code == 1020
        tr.on_error(e)
    assert tr.get(b"x") == b"theirs"  # a new read version, no buffered writes
    err = FDBError(2101)
    with pytest.raises(FDBError) as info:
        tr.on_error(err)
    assert info.value is err
    assert db.stats["retries"] == 1


def test_on_error_backs_off():
    db = SimDatabase(backoff=True)
    tr = db.create_transaction()
    for _ in range(3):
        tr.on_error(FDBError(1020))
    assert tr._delay == 0.008


def test_reset_and_cancel(db):
    tr = db.create_transaction()
    tr.set(b"a", b"1")
    tr.reset()
    tr.commit()
    assert db.committed_items() == []
    tr = db.create_transaction()
    tr.cancel()
    assert code_of(tr.get, b"a") == 1025
    assert code_of(tr.set, b"a", b"1") == 1025
    assert code_of(tr.commit) == 1025
    with pytest.raises(FDBError):
        tr.on_error(FDBError(1025))
    tr.reset()
    assert tr.get(b"a") is None


def test_use_after_commit_is_an_error(db):
    tr = db.create_transaction()
    tr.set(b"a", b"1")
    tr.commit()
    assert code_of(tr.set, b"a", b"2") == 2017


# -- faults and stats -------------------------------------------------------------------------


def run_faulty(seed: int) -> list:
    db = SimDatabase(seed=seed, backoff=False, conflict=0.2, unknown_result=0.2, too_old=0.1)
    outcomes = []
    for i in range(200):
        tr = db.create_transaction()
        try:
            tr.get(b"k%d" % (i % 7))
            tr.set(b"k%d" % i, b"v")
            tr.commit()
            outcomes.append("ok")
        except FDBError as e:
            outcomes.append(e.code)
    return [outcomes, dict(db.stats), db.committed_items()]


def test_fault_injection_is_reproducible_with_a_seed():
    a, b, c = run_faulty(7), run_faulty(7), run_faulty(8)
    assert a == b
    assert a != c
    outcomes, stats, _ = a
    assert stats["injected_conflict"] == outcomes.count(1020) > 0
    assert stats["injected_too_old"] == outcomes.count(1007) > 0
    assert stats["injected_unknown_result"] == outcomes.count(1021) > 0


def test_unknown_result_sometimes_applied():
    db = SimDatabase(seed=3, backoff=False, faults=Faults(unknown_result=1.0))
    applied = 0
    for i in range(40):
        tr = db.create_transaction()
        tr.set(b"k%02d" % i, b"v")
        assert code_of(tr.commit) == 1021
        assert tr.get_committed_version() == -1
        check = db.create_transaction()
        applied += check.get(b"k%02d" % i) is not None
    assert 0 < applied < 40
    assert db.stats["injected_unknown_result_applied"] == applied
    assert db.stats["injected_unknown_result"] == 40
    db.faults.unknown_result = 0.0
    put(db, (b"z", b"1"))


def test_faults_are_settable_at_runtime(db):
    db.faults.conflict = 1.0
    tr = db.create_transaction()
    tr.set(b"a", b"1")
    assert code_of(tr.commit) == 1020
    assert db.committed_items() == []
    tr = db.create_transaction()
    tr.get(b"a")
    tr.commit()  # read-only: no round trip to fail
    db.faults.conflict = 0.0
    db.faults.too_old = 1.0
    assert code_of(db.create_transaction().get, b"a") == 1007


def test_stats_count_round_trips(db):
    tr = db.create_transaction()
    tr.get(b"a")
    tr.get(b"b", snapshot=True)
    tr.get_range(b"a", b"z")
    tr.set(b"a", b"1")
    tr.commit()
    blind = db.create_transaction()
    blind.set(b"b", b"1")
    blind.commit()
    assert {k: db.stats[k] for k in ("reads", "commits", "grv", "committed")} == {
        "reads": 3, "commits": 2, "grv": 2, "committed": 2}
    db.reset_stats()
    assert db.stats["reads"] == 0


# -- threads ----------------------------------------------------------------------------------


def test_threads_incrementing_a_counter():
    db = SimDatabase(seed=5, conflict=0.05)
    successes = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            tr = db.create_transaction()
            while True:
                try:
                    n = int(tr.get(b"counter") or b"0")
                    tr.set(b"counter", b"%d" % (n + 1))
                    tr.commit()
                    break
                except FDBError as e:
                    tr.on_error(e)
            with lock:
                successes.append(1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db.committed_items() == [(b"counter", b"%d" % len(successes))]
    assert len(successes) == 200
    assert db.stats["committed"] == 200
    assert db.stats["conflicts"] + db.stats["injected_conflict"] == db.stats["retries"]


# -- the real adapter, without FoundationDB ---------------------------------------------------


def test_real_adapter_needs_the_cluster_file(tmp_path):
    missing = tmp_path / "fdb.cluster"
    with pytest.raises(RuntimeError, match="cluster file") as info:
        fdbreal.open_database(str(missing))
    assert str(missing) in str(info.value)


def test_real_adapter_needs_libfdb_c(tmp_path):
    cluster = tmp_path / "fdb.cluster"
    cluster.write_text("test:test@127.0.0.1:4500\n")
    try:
        import fdb.impl  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("libfdb_c is installed here")
    with pytest.raises(RuntimeError, match="libfdb_c") as info:
        fdbreal.open_database(str(cluster))
    assert "client package" in str(info.value)


def test_real_adapter_needs_the_binding(tmp_path, monkeypatch):
    cluster = tmp_path / "fdb.cluster"
    cluster.write_text("test:test@127.0.0.1:4500\n")
    monkeypatch.setitem(sys.modules, "fdb", None)
    with pytest.raises(RuntimeError, match=r"pip install 'sqld\[mvsqlite\]'"):
        fdbreal.open_database(str(cluster))


def test_read_your_writes_matches_a_model():
    import random

    rng = random.Random(11)
    keys = [b"k%02d" % i for i in range(30)]
    for _ in range(30):
        db = SimDatabase(backoff=False)
        model = {k: b"base" for k in rng.sample(keys, 12)}
        put(db, *model.items())
        tr = db.create_transaction()
        for _ in range(25):
            op = rng.random()
            k = rng.choice(keys)
            if op < 0.4:
                model[k] = b"v%d" % rng.randrange(100)
                tr.set(k, model[k])
            elif op < 0.55:
                model.pop(k, None)
                tr.clear(k)
            elif op < 0.7:
                end = rng.choice(keys)
                b, e = min(k, end), max(k, end)
                for key in [key for key in model if b <= key < e]:
                    del model[key]
                tr.clear_range(b, e)
            else:
                b, e = sorted(rng.sample(keys, 2))
                limit, reverse = rng.choice([0, 1, 3]), rng.random() < 0.5
                want = sorted((kv for kv in model.items() if b <= kv[0] < e), reverse=reverse)
                assert tr.get_range(b, e, limit=limit, reverse=reverse) == (want[:limit] if limit else want)
                assert tr.get(k) == model.get(k)
        tr.commit()
        assert db.committed_items() == sorted(model.items())
