"""Several sqld processes on one mvsqlite database through one simulator process: bank and list-append histories, checked, under faults and kill -9."""

# Three real sqld processes (tests/conftest.py's SqldProcess) share one database in one FDB
# simulator process (simnet.py). Clients (psycopg, a thread each) run explicit transactions
# on all three while the simulator injects 1020, 1021 (applied, not applied, or still in
# flight), 1007, shared commit versions (rare here: only when no read version came between),
# and once stops answering past the transaction timeout (1031); one sqld is killed with SIGKILL mid-run and started again. Each attempt
# ends "ok" (COMMIT answered), "fail" (an error before COMMIT, or 40001 at it: certainly
# not committed) or "info" (no answer to COMMIT, or an error there that does not say the
# commit failed: unknown; it may be present, never twice).
#
# Budgets: SQLD_HISTORY_TXNS attempts per workload (default 800) within SQLD_HISTORY_SECONDS
# (default 20 s of workload); SQLD_HISTORY_SEED picks keys, faults and kill moments.

from __future__ import annotations

import collections
import itertools
import os
import random
import threading
import time

import psycopg
import pytest

from tests.histories import FAIL, INFO, OK, Txn, append, check, read
from tests.mvsqlite.simproc import SimulatorProcess

TXNS = int(os.environ.get("SQLD_HISTORY_TXNS", "800"))
SECONDS = float(os.environ.get("SQLD_HISTORY_SECONDS", "20"))
SEED = int(os.environ.get("SQLD_HISTORY_SEED", "1"))
SERVERS = 3
CLIENTS_PER_SERVER = 2
FAULTS = {"conflict": 0.03, "unknown_result": 0.03, "in_flight": 0.02, "too_old": 0.01, "batch": 0.05}
TRANSACTION_TIMEOUT = 2.0  # the simulator's: a hang longer than this is 1031 for every call
HANG = 2.5


class Cluster:
    """One simulator process and SERVERS sqld processes on it, all on one database."""

    def __init__(self, tmp_path, start_sqld, faults: dict[str, float]) -> None:
        args = ["--seed", str(SEED), "--transaction-timeout", str(TRANSACTION_TIMEOUT)]
        for name, p in faults.items():
            args += ["--fault", f"{name}={p}"]
        self.sim = SimulatorProcess(tmp_path / "simulator.log", args).start()
        self.control = self.sim.control()
        self._start_sqld = start_sqld
        self._tmp = tmp_path
        self.servers = [self._start(i) for i in range(SERVERS)]
        self.kills = 0

    def _start(self, i: int):
        return self._start_sqld("--backend", "mvsqlite", "--fdb-cluster", self.sim.url, "--database", "history",
                                "--statement-timeout", "20s", db_path=self._tmp / f"sqld{i}")

    def dsn(self, i: int) -> str:
        return self.servers[i].dsn(connect_timeout=5)

    def kill_and_restart(self, i: int) -> None:
        self.servers[i].kill()  # SIGKILL, by that process's PID
        self.kills += 1
        self.servers[i] = self._start(i)

    def hang(self, seconds: float) -> None:
        self.control.admin("hang")
        try:
            time.sleep(seconds)
        finally:
            self.control.admin("resume")

    def quiesce(self) -> dict:
        """Faults off, every commit still in flight resolved; the simulator's counters."""
        self.control.set_faults(**{name: 0.0 for name in self.control.admin("faults")})
        self.control.admin("land_in_flight")
        return self.control.stats()

    def stop(self) -> None:
        self.control.close()
        self.sim.stop()


@pytest.fixture
def cluster(tmp_path, start_sqld):
    made: list[Cluster] = []

    def make(faults=FAULTS) -> Cluster:
        made.append(Cluster(tmp_path, start_sqld, faults))
        return made[-1]

    yield make
    for c in made:
        for server in c.servers:
            server.stop()
        c.stop()


class Clients:
    """Worker threads, CLIENTS_PER_SERVER per sqld, each running ``attempt(conn, rng)`` until
    the workload's budget of attempts or time is spent; a lost connection is opened again
    (to the same sqld, which may have been restarted meanwhile)."""

    def __init__(self, cluster: Cluster, attempt, budget: int, seconds: float) -> None:
        self.cluster = cluster
        self.attempt = attempt
        self.budget = budget
        self.deadline = time.monotonic() + seconds
        self.started = itertools.count()
        self.outcomes: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                        for w in range(SERVERS * CLIENTS_PER_SERVER)]

    def __enter__(self) -> "Clients":
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.deadline = min(self.deadline, time.monotonic() + 60)
        for th in self.threads:
            th.join(max(0.0, self.deadline - time.monotonic()) + 30)
        assert not any(th.is_alive() for th in self.threads), "a client did not finish"

    @property
    def done(self) -> int:
        with self.lock:
            return sum(self.outcomes.values())

    def _run(self, w: int) -> None:
        rng = random.Random(SEED * 1000 + w)
        server = w % SERVERS
        conn = None
        while time.monotonic() < self.deadline and next(self.started) < self.budget:
            if conn is None:
                try:
                    conn = psycopg.connect(self.cluster.dsn(server), autocommit=True)
                except psycopg.Error:
                    time.sleep(0.1)  # a killed sqld is being started again
                    continue
            outcome = self.attempt(w, conn, rng)
            with self.lock:
                self.outcomes[outcome] += 1
            if conn.closed or conn.broken:
                conn = None
        if conn is not None:
            conn.close()

    def until(self, fraction: float) -> None:
        """Wait until ``fraction`` of the budget (attempts or time) is spent."""
        start_left = self.deadline - time.monotonic()
        goal_time = self.deadline - start_left * (1 - fraction)
        while time.monotonic() < goal_time and self.done < self.budget * fraction:
            time.sleep(0.05)


_errors_lock = threading.Lock()


def run_transaction(conn, statements, errors: collections.Counter) -> str:
    """BEGIN, ``statements(conn)``, COMMIT: OK, FAIL or INFO (see the module comment);
    ``errors`` counts what the client saw, by SQLSTATE and where."""
    at_commit = False
    try:
        conn.execute("begin")
        statements(conn)
        at_commit = True
        conn.execute("commit")
        return OK
    except psycopg.Error as exc:
        state = getattr(exc, "sqlstate", None)
        with _errors_lock:
            errors[f"{state or 'no answer'} at {'commit' if at_commit else 'statement'}"] += 1
        if not (conn.closed or conn.broken):
            try:
                conn.execute("rollback")
            except psycopg.Error:
                pass
        if not at_commit or state == "40001":
            return FAIL
        return INFO


def final_read(cluster: Cluster, query: str, params=()) -> list:
    """``query`` in one transaction on the first sqld, retried on 40001 (faults are off)."""
    with psycopg.connect(cluster.dsn(0), autocommit=True) as conn:
        for _ in range(20):
            try:
                with conn.transaction():
                    return conn.execute(query, params).fetchall()
            except psycopg.errors.SerializationFailure:
                time.sleep(0.1)
    raise AssertionError(f"could not read {query!r} in 20 tries")


def chaos(cluster: Cluster, clients: Clients) -> None:
    """Kill -9 one sqld at a third of the run, and stop the simulator answering at 60 %."""
    clients.until(0.33)
    cluster.kill_and_restart(1)
    clients.until(0.6)
    cluster.hang(HANG)


# -- the lost update of issue 10, item 4, on its own -------------------------------------------


def test_a_read_then_write_across_processes_is_not_a_lost_update(cluster):
    c = cluster(faults={})
    with psycopg.connect(c.dsn(0), autocommit=True) as a, psycopg.connect(c.dsn(1), autocommit=True) as b:
        a.execute("create table counter(id integer primary key, n integer)")
        a.execute("insert into counter values (1, 0)")
        a.execute("begin")
        (n,) = a.execute("select n from counter where id = 1").fetchone()
        b.execute("update counter set n = n + 1 where id = 1")  # another process commits meanwhile
        with pytest.raises(psycopg.errors.SerializationFailure):
            a.execute("update counter set n = %s where id = 1", (n + 1,))
            a.execute("commit")
        a.execute("rollback")
        assert a.execute("select n from counter").fetchone() == (1,)


# -- a bank ------------------------------------------------------------------------------------

ACCOUNTS = 10
START = 1000


@pytest.mark.slow
def test_bank_across_processes_with_faults_and_kill(cluster):
    c = cluster()
    with psycopg.connect(c.dsn(0), autocommit=True) as conn:
        # A row a page (the pad): transfers between other accounts commit side by side.
        conn.execute("create table accounts(id integer primary key, balance integer not null, pad blob)")
        conn.execute("create table ledger(tid integer not null, src integer, dst integer, amount integer)")
        for i in range(ACCOUNTS):
            conn.execute("insert into accounts values (%s, %s, randomblob(3000))", (i, START))
    status: dict[int, str] = {}  # transfer id -> OK, INFO or FAIL (of its last attempt)
    audits = {"ok": 0, "bad": []}
    audit_lock = threading.Lock()
    errors: collections.Counter = collections.Counter()
    ids = itertools.count(1)

    def attempt(w, conn, rng):
        if rng.random() < 0.1:  # a read-only audit: one snapshot sees the whole total
            seen = []
            outcome = run_transaction(conn, lambda cn: seen.append(
                cn.execute("select sum(balance) from accounts").fetchone()[0]), errors)
            if outcome == OK:
                with audit_lock:
                    audits["ok"] += 1
                    if seen[0] != START * ACCOUNTS:
                        audits["bad"].append(seen[0])
            return "audit-" + outcome
        tid = next(ids)
        src, dst = rng.sample(range(ACCOUNTS), 2)
        amount = rng.randint(1, 50)

        def transfer(cn):
            balances = dict(cn.execute("select id, balance from accounts where id in (%s, %s)", (src, dst)).fetchall())
            # The new balances come from what was read: a lost update changes the total.
            cn.execute("update accounts set balance = %s where id = %s", (balances[src] - amount, src))
            cn.execute("update accounts set balance = %s where id = %s", (balances[dst] + amount, dst))
            cn.execute("insert into ledger values (%s, %s, %s, %s)", (tid, src, dst, amount))

        for _ in range(5):  # retried on 40001 under the same transfer id
            outcome = run_transaction(conn, transfer, errors)
            status[tid] = outcome
            if outcome != FAIL or conn.closed or conn.broken:
                break
            time.sleep(rng.random() * 0.02)
        return outcome

    with Clients(c, attempt, TXNS, SECONDS) as clients:
        chaos(c, clients)
    sim_stats = c.quiesce()

    balances = dict(final_read(c, "select id, balance from accounts"))
    ledger = final_read(c, "select tid, src, dst, amount from ledger")
    count = collections.Counter(row[0] for row in ledger)
    expected = {i: START for i in range(ACCOUNTS)}
    for _, src, dst, amount in ledger:
        expected[src] -= amount
        expected[dst] += amount
    ok = {t for t, s in status.items() if s == OK}
    lost = sorted(t for t in ok if count[t] == 0)
    twice = sorted(t for t, n in count.items() if n > 1)
    failed_present = sorted(t for t, s in status.items() if s == FAIL and count[t])
    info = [t for t, s in status.items() if s == INFO]
    print(f"\nFIGURES bank: {len(status)} transfers ({len(ok)} acknowledged, {len(info)} unknown "
          f"({sum(1 for t in info if count[t])} present), {len(status) - len(ok) - len(info)} failed), "
          f"{audits['ok']} audits, outcomes {dict(clients.outcomes)}; total {sum(balances.values())} "
          f"(expected {START * ACCOUNTS}); lost {len(lost)}, applied twice {len(twice)}, failed but present "
          f"{len(failed_present)}; kills {c.kills}; errors {dict(errors)}; simulator {sim_stats}")
    assert sum(balances.values()) == START * ACCOUNTS, "the total changed: an update was lost or doubled"
    assert balances == expected, "the balances are not the ledger's sum"
    assert not lost and not twice and not failed_present, (lost, twice, failed_present)
    assert not audits["bad"], f"audits saw totals {audits['bad'][:10]}"
    assert len(ok) >= 50, f"too few transfers acknowledged to mean anything: {len(ok)}"
    assert sim_stats["injected_conflict"] and sim_stats["injected_unknown_result"] and sim_stats["timed_out"]
    assert sim_stats["dropped_on_disconnect"] > 0 or c.kills == 0


# -- a list-append history -----------------------------------------------------------------------

KEYS = 8


@pytest.mark.slow
def test_list_append_history_is_serializable_across_processes(cluster):
    c = cluster()
    with psycopg.connect(c.dsn(0), autocommit=True) as conn:
        # A key a page (the pad), so that transactions on other keys commit side by side.
        conn.execute("create table lists(k integer primary key, vals text not null, pad blob)")
        for k in range(KEYS):
            conn.execute("insert into lists values (%s, '', randomblob(3000))", (k,))
    history: list[Txn] = []
    seq = itertools.count()
    errors: collections.Counter = collections.Counter()

    def attempt(w, conn, rng):
        n = next(seq)
        ops = []
        for j, key in enumerate(rng.sample(range(KEYS), rng.randint(1, 3))):
            shape = rng.random()
            if shape < 0.45:  # read, then append: a lost update shows as a cycle
                ops += [read(key, None), append(key, n * 10 + j)]
            elif shape < 0.7:
                ops.append(read(key, None))
            else:
                ops.append(append(key, n * 10 + j))
        done = []

        def statements(cn):
            for op in ops:
                if op.f == "append":
                    cn.execute("update lists set vals = vals || %s where k = %s", (f",{op.value}", op.key))
                    done.append(op)
                else:
                    (vals,) = cn.execute("select vals from lists where k = %s", (op.key,)).fetchone()
                    done.append(read(op.key, [int(v) for v in vals.split(",")[1:]]))

        outcome = run_transaction(conn, statements, errors)
        # Appends not sent count as sent (never read, harmless); reads not made stay None.
        recorded = done + [op for op in ops[len(done):] if op.f == "append"]
        history.append(Txn((w, n), outcome, recorded))
        return outcome

    with Clients(c, attempt, TXNS, SECONDS) as clients:
        chaos(c, clients)
    sim_stats = c.quiesce()

    final = {k: [int(v) for v in vals.split(",")[1:]]
             for k, vals in final_read(c, "select k, vals from lists")}
    report = check(history, final)
    statuses = collections.Counter(t.status for t in history)
    print(f"\nFIGURES list-append: {len(history)} transactions ({dict(statuses)}); {report.summary()}; "
          f"kills {c.kills}; errors {dict(errors)}; simulator {sim_stats}")
    assert report.valid, report.summary()
    assert statuses[OK] >= 50, f"too few transactions committed to mean anything: {statuses[OK]}"
    assert sim_stats["injected_conflict"] and sim_stats["injected_unknown_result"] and sim_stats["timed_out"]
