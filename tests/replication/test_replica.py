"""Replicas as real processes on loopback: local reads, forwarded writes, consistency levels,
transactions that move to the primary, the primary going away and coming back, restarts,
compaction and a new history."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import apsw
import psycopg
import pytest

from tests.replication.test_wal_apply import content_hash


def replica_of(start_sqld, primary, *args, db_path=None):
    return start_sqld("--primary", f"{primary.host}:{primary.port}", "--poll-interval", "0.05", *args,
                      db_path=db_path)


def status(server) -> dict:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        return json.loads(c.execute("select sqld_replication_status()").fetchone()[0])


def wait_caught_up(replica, primary, timeout=30.0) -> None:
    """Until the replica has applied everything the primary committed: a fresh token
    committed on the primary last is visible on the replica, and its frames match."""
    token = os.urandom(8).hex()
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table if not exists _mark(token)")
        c.execute("insert into _mark values (%s)", (token,))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = status(replica)
        if st["connected"] and st["applied"] == st["primary"]:
            with psycopg.connect(replica.dsn(), autocommit=True) as c:
                c.execute("set sqld.consistency = eventual")
                try:
                    if c.execute("select count(*) from _mark where token = %s", (token,)).fetchone()[0]:
                        return
                except psycopg.errors.UndefinedTable:
                    pass
        time.sleep(0.05)
    raise AssertionError(f"replica did not catch up: {status(replica)}")


def _count(server, table) -> int:
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        return c.execute(f"select count(*) from {table}").fetchone()[0]


def file_hash(path) -> tuple[str, list]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return content_hash(conn), conn.execute("pragma integrity_check").fetchall()
    finally:
        conn.close()


@pytest.fixture
def pair(start_sqld, tmp_path):
    primary = start_sqld(db_path=tmp_path / "primary")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table t(id integer primary key, v text unique)")
        c.execute("insert into t(v) values ('a'), ('b')")
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "replica")
    return primary, replica


def test_reads_are_local_and_writes_go_to_the_primary(pair):
    primary, replica = pair
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        assert c.execute("select v from t order by id").fetchall() == [("a",), ("b",)]
        assert c.execute("show in_hot_standby").fetchone() == ("on",)
        cur = c.execute("insert into t(v) values (%s), (%s) returning id", ("c", "d"))
        assert cur.fetchall() == [(3,), (4,)]
        assert cur.rowcount == 2
        # read-your-writes: the next read on the replica sees them
        assert c.execute("select count(*) from t").fetchone() == (4,)
        assert c.execute("update t set v = v || '!' where id > 2").rowcount == 2
        with pytest.raises(psycopg.errors.UniqueViolation) as err:
            c.execute("insert into t(v) values ('a')")
        assert err.value.sqlstate == "23505"
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("insert into nosuch values (1)")
        c.execute("create table made_on_replica(x integer)")
        c.execute("insert into made_on_replica values (42)")
        assert c.execute("select x from made_on_replica").fetchall() == [(42,)]
        c.execute("pragma user_version = 7")  # a pragma that writes is a write too
        assert c.execute("pragma user_version").fetchone() == (7,)
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        assert c.execute("select v from t order by id").fetchall() == [("a",), ("b",), ("c!",), ("d!",)]
        assert c.execute("pragma user_version").fetchone() == (7,)


def test_a_transaction_moves_to_the_primary_at_its_first_write(pair):
    primary, replica = pair
    with psycopg.connect(replica.dsn()) as c:
        assert c.execute("select count(*) from t").fetchone() == (2,)  # begins on the replica
        c.execute("insert into t(v) values ('in tx')")
        assert c.execute("select count(*) from t").fetchone() == (3,)  # now on the primary: sees its write
        with psycopg.connect(primary.dsn(), autocommit=True) as other:  # not committed yet
            assert other.execute("select count(*) from t").fetchone() == (2,)
        c.commit()
        assert c.execute("select count(*) from t").fetchone() == (3,)
        c.rollback()
        c.execute("insert into t(v) values ('rolled back')")
        c.rollback()
        assert c.execute("select count(*) from t where v = 'rolled back'").fetchone() == (0,)
        c.rollback()
        # an error aborts the transaction, as in PostgreSQL, until ROLLBACK
        c.execute("insert into t(v) values ('x1')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("insert into t(v) values ('a')")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.rollback()
        assert c.execute("select count(*) from t where v = 'x1'").fetchone() == (0,)
        c.rollback()


def test_reads_gone_stale_fail_the_write_with_40001(pair):
    primary, replica = pair
    with psycopg.connect(replica.dsn()) as c:
        c.execute("set sqld.consistency = strong")  # the retry below must see the other session's row
        c.commit()
        assert c.execute("select count(*) from t").fetchone() == (2,)
        with psycopg.connect(primary.dsn(), autocommit=True) as other:
            other.execute("insert into t(v) values ('meanwhile')")
        with pytest.raises(psycopg.errors.SerializationFailure):
            c.execute("update t set v = 'x' where id = 1")
        c.rollback()
        # retried, it sees the new row and writes
        assert c.execute("select count(*) from t").fetchone() == (3,)
        c.execute("update t set v = 'x' where id = 1")
        c.commit()
    with psycopg.connect(replica.dsn()) as c:  # BEGIN IMMEDIATE goes to the primary at once
        c.execute("begin immediate")
        c.execute("update t set v = 'y' where id = 1")
        c.commit()
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        c.execute("set sqld.consistency = strong")  # another session's write: read-your-writes is per session
        assert c.execute("select v from t where id = 1").fetchone() == ("y",)
        c.execute("begin read only")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c.execute("delete from t")
        c.execute("rollback")


def test_consistency_levels(pair):
    primary, replica = pair
    with psycopg.connect(replica.dsn(), autocommit=True) as c, \
            psycopg.connect(primary.dsn(), autocommit=True) as p:
        assert c.execute("show sqld.consistency").fetchone() == ("read_your_writes",)
        c.execute("set sqld.consistency = strong")
        for i in range(20):  # strong: each read sees every commit made before it began
            p.execute("insert into t(v) values (%s)", (f"s{i}",))
            assert c.execute("select count(*) from t").fetchone() == (3 + i,)
        c.execute("set sqld.consistency = eventual")
        assert c.execute("select count(*) from t").fetchone()[0] <= 22
        c.execute("set sqld.consistency = sometimes")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            c.execute("select 1")
        c.execute("reset sqld.consistency")


def test_read_your_writes_under_concurrent_load(pair):
    primary, replica = pair
    stop = threading.Event()
    failures: list = []

    def load() -> None:
        with psycopg.connect(primary.dsn(), autocommit=True) as p:
            p.execute("create table if not exists noise(x)")
            while not stop.is_set():
                p.execute("insert into noise values (randomblob(2000))")

    def session(n: int) -> None:
        # Half the sessions without autocommit: psycopg then wraps every statement in BEGIN,
        # and a transaction's first read must wait for the session's earlier commits too.
        autocommit = n % 2 == 0
        try:
            with psycopg.connect(replica.dsn(), autocommit=autocommit) as c:
                for i in range(60):
                    v = f"ryw-{n}-{i}"
                    (rid,) = c.execute("insert into t(v) values (%s) returning id", (v,)).fetchone()
                    if not autocommit:
                        c.commit()
                    got = c.execute("select v from t where id = %s", (rid,)).fetchone()
                    if not autocommit:
                        c.commit()
                    if got != (v,):
                        failures.append((v, got))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    sessions = [threading.Thread(target=session, args=(n,)) for n in range(6)]
    for s in sessions:
        s.start()
    for s in sessions:
        s.join(60)
    stop.set()
    loader.join(30)
    assert failures == []
    assert _count(primary, "t") == 2 + 6 * 60


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "in-transactions"])
@pytest.mark.parametrize("cursor", [psycopg.Cursor, psycopg.ClientCursor], ids=["extended", "simple"])
def test_read_your_writes_waits_for_a_replica_held_back(pair, autocommit, cursor):
    """Another session's open read transaction on the replica holds back the applier; a
    session's read after its own write waits for it (psycopg without autocommit wraps the
    read in BEGIN: a transaction's first read waits too), then sees the write."""
    primary, replica = pair
    blocker = psycopg.connect(replica.dsn())
    blocker.execute("select count(*) from t").fetchone()  # a read snapshot, held open
    with psycopg.connect(replica.dsn(), autocommit=autocommit, cursor_factory=cursor) as c:
        c.execute("insert into t(v) values ('mine')")
        if not autocommit:
            c.commit()
        threading.Timer(0.5, blocker.rollback).start()
        started = time.monotonic()
        assert c.execute("select count(*) from t where v = 'mine'").fetchone() == (1,)
        assert time.monotonic() - started >= 0.3  # it waited for the apply
    blocker.close()


def test_primary_down_reads_go_on_writes_fail_fast_and_it_comes_back(pair):
    primary, replica = pair
    notices = []
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        assert primary.stop() == 0
        deadline = time.monotonic() + 10
        while status(replica)["connected"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.execute("select count(*) from t").fetchone() == (2,)
        assert any("stale" in n for n in notices)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as err:
            c.execute("insert into t(v) values ('while down')")
        assert err.value.sqlstate == "08006"
        assert time.monotonic() - started < 3
        primary.start()  # the same port and database
        c.execute("insert into t(v) values ('after')")  # the session reconnects to forward
        assert c.execute("select count(*) from t").fetchone() == (3,)
    wait_caught_up(replica, primary)
    assert "bootstrapped" not in replica.log().split("following primary")[-1]


def test_kill_9_replica_and_clean_primary_restart_resume_without_bootstrap(pair, start_sqld, tmp_path):
    primary, replica = pair
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        for i in range(50):
            c.execute("insert into t(v) values (%s)", (f"k{i}",))
    replica.stop(signal.SIGKILL)
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        for i in range(50):
            c.execute("insert into t(v) values (%s)", (f"while-dead{i}",))
    replica.start()
    wait_caught_up(replica, primary)
    assert replica.log().count("bootstrapped from a snapshot") == 1  # only the very first time
    assert primary.stop() == 0
    primary.start()
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("insert into t(v) values ('after restart')")
    wait_caught_up(replica, primary)
    assert replica.log().count("bootstrapped from a snapshot") == 1  # same generation: resumed
    replica.stop()
    primary.stop()
    assert file_hash(tmp_path / "replica" / "main.db") == file_hash(tmp_path / "primary" / "main.db")


def test_new_replica_after_compaction_and_a_new_history(start_sqld, tmp_path):
    primary = start_sqld("--replication-log-max-mb", "1", db_path=tmp_path / "primary")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table big(id integer primary key, b blob)")
        for _ in range(120):
            c.execute("insert into big(b) values (randomblob(20000))")
    assert "compacting replication log" in primary.log()
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "replica")
    wait_caught_up(replica, primary)
    assert _count(replica, "big") == 120
    # the primary is replaced by another database on the same address: another history
    primary.stop()
    other = start_sqld(db_path=tmp_path / "other")
    other.stop()
    other.port = primary.port
    other.start()
    with psycopg.connect(other.dsn(), autocommit=True) as c:
        c.execute("create table fresh(x)")
        c.execute("insert into fresh values ('new history')")
    wait_caught_up(replica, other)
    assert "another history" in replica.log()
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        assert c.execute("select x from fresh").fetchall() == [("new history",)]
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute("select count(*) from big")
    replica.stop()
    other.stop()
    assert file_hash(tmp_path / "replica" / "main.db") == file_hash(tmp_path / "other" / "main.db")


def _random_work(dsn: str, seed: int, count: int, errors: list) -> None:
    """``count`` random transactions: inserts of small rows and multi-page BLOBs, updates,
    deletes, DDL, an index, VACUUM, explicit transactions (some rolled back, some reading
    first), each retried on 40001."""
    import random

    rng = random.Random(seed)
    with psycopg.connect(dsn, autocommit=True) as c:
        done = 0
        while done < count:
            kind = rng.random()
            try:
                if kind < 0.35:
                    c.execute("insert into r(v, b) values (%s, %s)",
                              (rng.random(), rng.randbytes(rng.choice([0, 10, 300, 5000, 40000]))))
                elif kind < 0.5:
                    c.execute("update r set v = %s where id %% 13 = %s", (rng.random(), rng.randint(0, 12)))
                elif kind < 0.6:
                    c.execute("delete from r where id %% 17 = %s", (rng.randint(0, 16),))
                elif kind < 0.8:
                    with c.transaction():
                        if rng.random() < 0.5:
                            c.execute("select count(*) from r").fetchone()  # reads first: may go stale
                        for _ in range(rng.randint(1, 4)):
                            c.execute("insert into r(v, b) values (%s, randomblob(%s))",
                                      (f"tx{seed}", rng.choice([1, 1000, 9000])))
                        c.execute("update r set v = v || '.' where id = (select max(id) from r)")
                elif kind < 0.85:
                    try:
                        with c.transaction():
                            c.execute("insert into r(v) values ('never')")
                            raise _Rollback()
                    except _Rollback:
                        pass
                elif kind < 0.93:
                    n = rng.randint(0, 4)
                    c.execute(f"create table if not exists extra{n}(x, y)")
                    c.execute(f"insert into extra{n}(x, y) values (%s, %s)", (seed, done))
                elif kind < 0.97:
                    c.execute("create index if not exists r_v on r(v)")
                    if rng.random() < 0.3:
                        c.execute("drop index if exists r_v")
                elif kind < 0.985:
                    c.execute(f"alter table extra{rng.randint(0, 4)} add column z{done}_{seed}")
                else:
                    c.execute("vacuum")
                done += 1
            except psycopg.errors.SerializationFailure:
                continue  # retried
            except psycopg.errors.UndefinedTable:
                done += 1  # ALTER of a table no one created yet
            except psycopg.Error as exc:
                errors.append(exc)
                done += 1


class _Rollback(Exception):
    pass


@pytest.mark.slow
def test_random_transactions_through_two_replicas_and_the_primary(start_sqld, tmp_path):
    """10,000 random transactions sent through two replicas and the primary at once; one
    replica is killed (-9) and restarted half-way; afterwards all three files hold the same
    schema and rows and pass integrity_check."""
    total = 10_000
    primary = start_sqld(db_path=tmp_path / "primary")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table r(id integer primary key, v, b blob)")
    r1 = replica_of(start_sqld, primary, db_path=tmp_path / "r1")
    r2 = replica_of(start_sqld, primary, db_path=tmp_path / "r2")
    errors: list = []
    share = total // 3

    def through_r1() -> None:
        _random_work(r1.dsn(), 1, share // 2, errors)
        r1.stop(signal.SIGKILL)
        time.sleep(0.3)
        r1.start()
        _random_work(r1.dsn(), 11, share - share // 2, errors)

    threads = [threading.Thread(target=_random_work, args=(primary.dsn(), 0, total - 2 * share, errors)),
               threading.Thread(target=through_r1),
               threading.Thread(target=_random_work, args=(r2.dsn(), 2, share, errors))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(600)
    assert sorted({f"{type(e).__name__}: {e}" for e in errors}) == []
    for replica in (r1, r2):
        wait_caught_up(replica, primary)
    assert r1.log().count("bootstrapped from a snapshot") == 1  # the restart resumed
    for server in (r1, r2, primary):
        assert server.stop() == 0
    expected = file_hash(tmp_path / "primary" / "main.db")
    assert expected[1] == [("ok",)]
    assert file_hash(tmp_path / "r1" / "main.db") == expected
    assert file_hash(tmp_path / "r2" / "main.db") == expected


def test_replication_commands_and_their_errors(start_sqld, tmp_path):
    from sqld.pgwire import messages as m
    from tests.rawclient import RawClient

    primary = start_sqld(db_path=tmp_path / "p")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table t(x)")
    rc = RawClient(primary.host, primary.port, params={"replication": "sqld"})
    rows = [msg for msg in rc.query("IDENTIFY_SYSTEM") if isinstance(msg, m.DataRow)]
    generation, frame, page_size = (v.decode() for v in rows[0].values)
    assert len(generation) == 32 and int(frame) >= 1 and page_size == "4096"
    errors = [msg for msg in rc.query("select 1") if isinstance(msg, m.ErrorResponse)]
    assert errors[0].sqlstate == "42601"  # not a replication command; the connection goes on
    errors = [msg for msg in rc.query(f"START_REPLICATION {'00' * 16} 0") if isinstance(msg, m.ErrorResponse)]
    assert errors[0].sqlstate == "55000" and "history" in errors[0].message
    errors = [msg for msg in rc.query(f"START_REPLICATION {generation} {int(frame) + 100}")
              if isinstance(msg, m.ErrorResponse)]
    assert errors[0].sqlstate == "55000"
    rc.send(m.Query(f"START_REPLICATION {generation} 0"))
    assert isinstance(rc.recv(), m.CopyOutResponse)
    first = rc.recv()
    assert isinstance(first, m.CopyData) and first.data[:1] in (b"w", b"p")
    rc.sock.close()
    with pytest.raises(RuntimeError, match="0A000"):
        RawClient(primary.host, primary.port, params={"replication": "database"})  # PostgreSQL's kind
    quiet = start_sqld("--no-replication-log", db_path=tmp_path / "q")
    rc = RawClient(quiet.host, quiet.port, params={"replication": "sqld"})
    rc.send(m.Query("IDENTIFY_SYSTEM"))
    err = rc.recv()
    assert isinstance(err, m.ErrorResponse) and "no replication log" in err.message
    assert err.sqlstate == "55000" and "--replication-log" in err.hint
    rc.sock.close()
    replica = start_sqld("--primary", f"{replica_addr(primary)}", db_path=tmp_path / "r")
    with pytest.raises(RuntimeError, match="0A000"):  # replicas do not serve replicas
        RawClient(replica.host, replica.port, params={"replication": "sqld"})


def replica_addr(server) -> str:
    return f"{server.host}:{server.port}"


def test_a_non_replica_database_is_not_overwritten(start_sqld, tmp_path):
    primary = start_sqld(db_path=tmp_path / "p")
    mine = start_sqld(db_path=tmp_path / "mine")
    with psycopg.connect(mine.dsn(), autocommit=True) as c:
        c.execute("create table precious(x)")
    mine.stop()
    with pytest.raises(RuntimeError, match="is not a replica's copy"):
        replica_of(start_sqld, primary, db_path=tmp_path / "mine")
    assert file_hash(tmp_path / "mine" / "main.db")[1] == [("ok",)]
    conn = apsw.Connection(str(tmp_path / "mine" / "main.db"))
    assert conn.execute("select name from sqlite_schema").fetchall() == [("precious",)]
    conn.close()


def test_primary_restarted_under_load_replicas_resume(start_sqld, tmp_path):
    """Writers keep going (through the primary and through the replica) while the primary
    restarts cleanly: every acknowledged row is on the replica afterwards, with no new
    bootstrap (a clean restart keeps the generation)."""
    primary = start_sqld(db_path=tmp_path / "p")
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table w(id integer primary key, who, n)")
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "r")
    stop = threading.Event()
    acked: dict[str, list[int]] = {"primary": [], "replica": []}

    def writer(server, who: str) -> None:
        n = 0
        while not stop.is_set():
            try:
                with psycopg.connect(server.dsn(), autocommit=True, connect_timeout=2) as c:
                    while not stop.is_set():
                        c.execute("insert into w(who, n) values (%s, %s)", (who, n))
                        acked[who].append(n)
                        n += 1
            except psycopg.OperationalError:
                n += 1  # that insert's fate is unknown: never counted, never reused
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(primary, "primary")),
               threading.Thread(target=writer, args=(replica, "replica"))]
    for th in threads:
        th.start()
    time.sleep(1.0)
    assert primary.stop() == 0
    primary.start()
    time.sleep(1.0)
    stop.set()
    for th in threads:
        th.join(30)
    wait_caught_up(replica, primary)
    assert replica.log().count("bootstrapped from a snapshot") == 1
    assert len(acked["primary"]) > 20 and len(acked["replica"]) > 20
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        for who, ns in acked.items():
            got = {n for (n,) in c.execute("select n from w where who = %s", (who,))}
            assert set(ns) <= got  # nothing acknowledged was lost
    replica.stop()
    primary.stop()
    assert file_hash(tmp_path / "r" / "main.db") == file_hash(tmp_path / "p" / "main.db")


def test_a_transaction_lost_with_the_primary_stays_aborted(pair):
    """The primary restarts under an open forwarded transaction: the transaction is over
    (25P02 until ROLLBACK), later statements never run as autocommit, and an idle
    forwarded connection is replaced without an error."""
    primary, replica = pair
    with psycopg.connect(replica.dsn(), autocommit=True) as idle, psycopg.connect(replica.dsn()) as c:
        idle.execute("insert into t(v) values ('before')")  # opens its forwarded connection
        c.execute("insert into t(v) values ('lost-a')")  # a transaction, on the primary
        assert primary.stop() == 0
        primary.start()
        with pytest.raises(psycopg.OperationalError) as err:
            c.execute("insert into t(v) values ('lost-b')")
        assert err.value.sqlstate == "08006"
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("insert into t(v) values ('lost-c')")
        c.rollback()
        idle.execute("insert into t(v) values ('after restart')")  # no spurious 08006
    with psycopg.connect(primary.dsn(), autocommit=True) as p:
        got = {v for (v,) in p.execute("select v from t")}
    assert {"before", "after restart"} <= got and not {"lost-a", "lost-b", "lost-c"} & got


def test_copy_through_the_replica_counts_the_rows_the_primary_changed(pair):
    """COPY FROM STDIN on a replica: each row is forwarded; the tag counts the rows the primary
    inserted (a BEFORE trigger's RAISE(IGNORE) skips some), in autocommit and in a transaction."""
    primary, replica = pair
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table c(id integer primary key, v text)")
        c.execute("create trigger c_skip before insert on c when new.v = 'skip' "
                  "begin select raise(ignore); end")
    wait_caught_up(replica, primary)
    rows = [(1, "a"), (2, "skip"), (3, "b"), (4, "skip"), (5, "c")]
    with psycopg.connect(replica.dsn(), autocommit=True) as c:
        with c.cursor() as cur:
            with cur.copy("copy c(id, v) from stdin") as copy:
                for row in rows:
                    copy.write_row(row)
            assert cur.rowcount == 3
        with c.transaction():
            with c.cursor() as cur:
                with cur.copy("copy c(id, v) from stdin") as copy:
                    for n, v in rows:
                        copy.write_row((n + 10, v))
                assert cur.rowcount == 3
        # read your writes: the replica shows the copied rows at once
        assert c.execute("select count(*) from c").fetchone() == (6,)
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        assert c.execute("select id from c order by id").fetchall() == [(1,), (3,), (5,), (11,), (13,), (15,)]


def test_a_replica_of_an_empty_database_sees_the_first_table(start_sqld, tmp_path):
    """Found by the attack review: a replica bootstrapped from a primary with no tables
    (schema cookie 0) got a snapshot with cookie 1 (SQLite's backup sets it so); the
    primary's first CREATE TABLE made its cookie 1 too, so the replica's readers kept the
    empty schema: 42P01 for ever, though the file had the table. The snapshot now carries the
    primary's cookie."""
    primary = start_sqld(db_path=tmp_path / "primary")
    replica = replica_of(start_sqld, primary, db_path=tmp_path / "replica")
    with psycopg.connect(replica.dsn(), autocommit=True) as r:
        assert r.execute("select count(*) from sqlite_schema").fetchone() == (0,)  # readers load the schema
        with psycopg.connect(primary.dsn(), autocommit=True) as p:
            p.execute("create table first(id integer primary key, v text)")
            p.execute("insert into first(v) values ('one')")
        # (not wait_caught_up: its own CREATE TABLE would change the cookie again)
        deadline = time.monotonic() + 30
        while (st := status(replica))["applied"] != st["primary"] or not st["primary"]:
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        assert r.execute("select v from first").fetchall() == [("one",)]
        r.execute("insert into first(v) values ('two')")  # forwarded, then read back here
        assert r.execute("select v from first order by id").fetchall() == [("one",), ("two",)]
    with psycopg.connect(replica.dsn(), autocommit=True) as r:
        assert r.execute("select count(*) from first").fetchone() == (2,)


@pytest.mark.parametrize("client", ["psycopg", "sqld.client"])
def test_an_error_that_ends_the_primary_transaction_ends_it_on_the_replica(pair, client):
    """Found by the attack review: a forwarded transaction that the primary ended with an
    error (a COMMIT failing on a deferred foreign key; for sqld.client, sqlite3's semantics,
    also a trigger's RAISE(ROLLBACK)) stayed open on the replica. psycopg then got 25P02 where
    the primary's own clients are idle; sqld.client's next insert, sent without BEGIN, was
    autocommitted on the primary, and its ROLLBACK did not undo it."""
    import sqld.client as sq

    primary, replica = pair
    with psycopg.connect(primary.dsn(), autocommit=True) as p:
        p.execute("create table parent(id integer primary key)")
        p.execute("create table child(id integer primary key, pid integer references parent(id) "
                  "deferrable initially deferred, v text)")
        p.execute("create trigger boom before insert on child when new.v = 'boom' "
                  "begin select raise(rollback, 'rolled back'); end")
    wait_caught_up(replica, primary)
    if client == "psycopg":
        with psycopg.connect(replica.dsn()) as c:
            c.execute("insert into child(pid, v) values (99, 'orphan')")
            with pytest.raises(psycopg.errors.ForeignKeyViolation):
                c.commit()
            assert c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            c.execute("insert into child(pid, v) values (null, 'next')")  # no 25P02
            c.rollback()
    else:
        url = f"sqld://tester@{replica.host}:{replica.port}/main"
        for ender in ("insert into child(v) values ('boom')", "commit"):
            c = sq.connect(url)
            try:
                c.execute("insert into child(pid, v) values (99, 'a')")  # opens the transaction
                assert c.in_transaction
                with pytest.raises(sq.IntegrityError):
                    if ender == "commit":
                        c.commit()
                    else:
                        c.execute(ender)
                assert not c.in_transaction
                c.execute("insert into child(pid, v) values (null, 'rolled back by the client')")
                assert c.in_transaction
                c.rollback()
            finally:
                c.close()
    with psycopg.connect(primary.dsn(), autocommit=True) as p:
        assert p.execute("select v from child").fetchall() == []


def test_losing_the_primary_inside_a_pipeline_is_an_error_not_the_end_of_the_session(pair):
    """Found by the attack review: the primary lost while a pipeline's implicit transaction
    was open on it; the Abort that follows the failed statement tried to roll it back over
    the lost connection and its 08006 ended the client's session. Now: an ERROR, the batch
    skipped to Sync, the session goes on once the primary is back."""
    from sqld.pgwire import messages as m
    from tests.rawclient import RawClient, summary

    primary, replica = pair
    r = RawClient(replica.host, replica.port)
    try:
        r.send(m.Parse("", "insert into t(v) values ('in the batch')"), m.Bind("", "", (), (), ()),
               m.Execute("", 0), m.Flush())
        assert summary([r.recv(), r.recv(), r.recv()]) == [("ParseComplete",), ("BindComplete",), ("C", "INSERT 0 1")]
        assert primary.stop() == 0
        primary.start()
        r.send(m.Bind("", "", (), (), ()), m.Execute("", 0), m.Sync())
        answer = summary(r.until_ready())
        assert answer == [("BindComplete",), ("E", "08006"), ("Z", "I")], answer
        assert summary(r.query("insert into t(v) values ('after')"))[-2:] == [("C", "INSERT 0 1"), ("Z", "I")]
    finally:
        r.close()
    with psycopg.connect(primary.dsn(), autocommit=True) as p:
        got = {v for (v,) in p.execute("select v from t")}
    assert "after" in got and "in the batch" not in got


_LONG_WRITER = r"""
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    print("started", flush=True)
    c.execute("insert into long(v) with recursive c(x) as (select 1 union all select x + 1 from c limit 100000000) "
              "select 'abandoned-' || %s from c", (sys.argv[2],))
"""


@pytest.mark.parametrize("through", ["primary", "replica"])
def test_a_killed_clients_long_autocommit_write_is_cancelled(pair, through):
    """Found by the attack review: a client killed (-9) during a long autocommit INSERT sent
    through the extended protocol (its Sync still unread behind the Execute) was not seen as
    gone, so its 100-million-row write ran on, holding the writer, and committed for nobody;
    through a replica the primary was never told. Now the FIN is probed whatever is still
    unread, and a forwarded statement gets a CancelRequest once the client is gone."""
    import subprocess
    import sys

    primary, replica = pair
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("create table long(v text)")
    wait_caught_up(replica, primary)
    server = primary if through == "primary" else replica
    child = subprocess.Popen([sys.executable, "-c", _LONG_WRITER, server.dsn(), through], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"started\n"
        time.sleep(1.0)  # the insert is running
    finally:
        child.kill()
        child.wait(10)
    # The next writer gets the writer long before the abandoned insert could have finished
    # (it would hold it for about a minute here), and nothing of it was committed.
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        c.execute("set lock_timeout = '30s'")
        c.execute("insert into t(v) values ('next writer')")
        assert c.execute("select count(*) from long").fetchone() == (0,)
