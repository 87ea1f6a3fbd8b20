"""Replication lag and replica read throughput: a sqld primary and one replica on loopback.

    .venv/bin/python benchmarks/replication.py                      # everything (~1 min)
    .venv/bin/python benchmarks/replication.py --synchronous full   # one durability level only
    .venv/bin/python benchmarks/replication.py --skip-reads --lag-duration 20

For each ``--synchronous`` level (full, normal; both processes get it) the script starts a
primary (``python -m sqld --db-path TMP/primary --listen-addr 127.0.0.1:0 --synchronous S``)
and a replica of it (``... --db-path TMP/replica --primary 127.0.0.1:PORT``), loads
100,000 rows into ``kv`` on the primary, waits until the replica has them, then:

1. **Lag.** One writer connection to the primary commits autocommit single-row INSERTs
   into ``t`` (explicit ids 1, 2, 3, …) paced by a timer at ``--rate`` commits/s for
   ``--lag-duration`` s, recording ``time.time()`` right after each INSERT returns. A
   poller in a separate process, connected to the replica, runs
   ``select max(id), sqld_replica_frame(), sqld_replication_lag_ms() from t`` in a tight
   loop (prepared) and records when each id is first visible (the wall clock after the
   poll returned). Lag per commit = visible time - commit time. The replica's own figure
   (``sqld_replication_lag_ms()``: primary capture to replica apply) is sampled once per
   newly applied frame.
2. **Reads** (first level only; a read commits nothing). N client threads (``--clients``,
   default 1 and 8), each on its own autocommit connection, run
   ``select v from kv where id = %s`` with random ids (psycopg ``prepare=True``, extended
   protocol) for ``--read-duration`` s against the primary, then against the replica, then
   against the replica again while another process commits ``--rate`` single-row INSERTs/s
   on the primary (the replica applying them as the reads run). The primary is idle during
   its own read runs.

Prints markdown tables to stdout (also written to ``benchmarks/results/replication-latest.md``
unless ``--output`` says otherwise); progress goes to stderr. Servers are stopped by PID
(SIGTERM, SIGKILL after 20 s) in ``finally``, also on Ctrl-C or SIGTERM; a watchdog kills
them if the whole run takes longer than ``--max-seconds`` (default 300). Loopback only.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
ROWS = 100_000
LISTENING = re.compile(rb"listening on 127\.0\.0\.1:(\d+)[, ]")
POLL_SQL = "select max(id), sqld_replica_frame(), sqld_replication_lag_ms() from t"
READ_SQL = "select v from kv where id = %s"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# servers: started here, stopped by their own PID only


class Server:
    started: list["Server"] = []

    def __init__(self, name: str, folder: Path, args: list[str]) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        self.db_path = folder / name
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 60.0) -> "Server":
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "sqld", "--db-path", str(self.db_path), "--listen-addr", f"{HOST}:0",
               *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        Server.started.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTENING.search(self.log_path.read_bytes())
            if m:
                self.port = int(m.group(1))
                log(f"{self.name}: pid {self.proc.pid}, port {self.port}")
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f}s:\n{self.tail()}")

    def dsn(self) -> str:
        return f"host={HOST} port={self.port} user=bench dbname=main connect_timeout=10"

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line
                or "Traceback" in line]

    def stop(self, grace: float = 20.0) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(grace)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                log(f"{self.name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f}s: SIGKILL")
                self.kill()
        if self in Server.started:
            Server.started.remove(self)
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


def stop_all() -> None:
    for server in reversed(list(Server.started)):
        server.stop()


def start_watchdog(seconds: float) -> threading.Timer:
    def expire() -> None:
        log(f"watchdog: the run took over {seconds:.0f}s; killing the servers")
        for server in list(Server.started):
            server.kill()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def connect(server: Server) -> psycopg.Connection:
    return psycopg.connect(server.dsn(), autocommit=True)


# ---------------------------------------------------------------------------------------
# setup


def load(primary: Server, replica: Server, timeout: float = 60.0) -> None:
    with connect(primary) as c:
        c.execute("create table kv(id integer primary key, v text)")
        c.execute(f"with recursive s(n) as (select 1 union all select n + 1 from s where n < {ROWS}) "
                  "insert into kv select n, 'value ' || n from s")
        c.execute("create table t(id integer primary key, v text)")
        if c.execute("select count(*) from kv").fetchone()[0] != ROWS:
            raise RuntimeError("the load did not insert all rows")
    deadline = time.monotonic() + timeout
    with connect(replica) as r:
        while time.monotonic() < deadline:
            try:
                applied, primary_frame = r.execute("select sqld_replica_frame(), sqld_primary_frame()").fetchone()
                n = r.execute("select count(*) from kv").fetchone()[0]
                if n == ROWS and applied >= primary_frame:
                    return
            except (psycopg.errors.UndefinedTable, psycopg.errors.SerializationFailure) as exc:
                # not there yet, or (seen on 2026-11-30) "database is locked" during the apply
                if isinstance(exc, psycopg.errors.SerializationFailure):
                    log(f"replica: a read during catch-up failed: {exc.sqlstate} {exc}")
            time.sleep(0.05)
    raise RuntimeError(f"the replica did not catch up with the load in {timeout:.0f}s")


# ---------------------------------------------------------------------------------------
# 1. lag


def poller(dsn: str, ready, stop, last_id: mp.Value, out, max_seconds: float, pause: float) -> None:
    """In its own process: poll the replica, report (max_id, t_before, t_after) at each
    change of max(id), (frame, lag_ms) at each new frame, and every poll's round trip."""
    changes: list[tuple[int, float, float]] = []
    lags: list[tuple[int, float]] = []
    polls: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            cur.execute(POLL_SQL, prepare=True)
            cur.fetchone()
            seen, frame_seen = 0, -1
            ready.set()
            deadline = time.monotonic() + max_seconds
            while time.monotonic() < deadline:
                t0 = time.time()
                cur.execute(POLL_SQL, prepare=True)
                max_id, frame, lag_ms = cur.fetchone()
                t1 = time.time()
                polls.append(t1 - t0)
                max_id = max_id or 0
                if max_id > seen:
                    changes.append((max_id, t0, t1))
                    seen = max_id
                if frame != frame_seen:
                    if frame_seen >= 0:
                        lags.append((frame, lag_ms))
                    frame_seen = frame
                if stop.is_set() and seen >= last_id.value:
                    break
                if pause:
                    time.sleep(pause)
        out.put(("ok", changes, lags, polls))
    except Exception as exc:  # reported to the parent, which fails the run
        ready.set()
        out.put(("error", repr(exc), [], []))


def background_writer(dsn: str, rate: float, first_id: int, ready, stop, out, max_seconds: float) -> None:
    """In its own process: autocommit INSERTs paced at ``rate`` until ``stop`` (reads under load)."""
    n = 0
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.cursor()
            ready.set()
            start = time.monotonic()
            deadline = start + max_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                wait = start + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                cur.execute("insert into t(id, v) values (%s, %s)", (first_id + n, "x" * 32), prepare=True)
                n += 1
        out.put(("ok", n, time.monotonic() - start))
    except Exception as exc:
        ready.set()
        out.put(("error", repr(exc), 0.0))


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def measure_lag(primary: Server, replica: Server, rate: float, duration: float, pause: float = 0.0) -> dict:
    ctx = mp.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    last_id = ctx.Value("q", 1 << 62)
    proc = ctx.Process(target=poller, args=(replica.dsn(), ready, stop, last_id, out, duration + 30, pause),
                       daemon=True)
    proc.start()
    commits: list[float] = [0.0]  # commits[k] = wall clock after INSERT of id k returned
    try:
        if not ready.wait(30):
            raise RuntimeError("the poller did not connect to the replica in 30 s")
        with connect(primary) as conn:
            cur = conn.cursor()
            n = int(rate * duration)
            interval = 1.0 / rate
            start = time.monotonic() + 0.05
            behind = 0
            for k in range(1, n + 1):
                due = start + (k - 1) * interval
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif wait < -interval:
                    behind += 1
                cur.execute("insert into t(id, v) values (%s, %s)", (k, "x" * 32), prepare=True)
                commits.append(time.time())
            elapsed = time.monotonic() - start
        last_id.value = n
        stop.set()
        status, changes, lags, polls = out.get(timeout=40)
        if status != "ok":
            raise RuntimeError(f"poller failed: {changes}")
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    # visible[k]: the wall clock after the first poll whose max(id) >= k
    lag_ms: list[float] = []
    k = 1
    for max_id, _t0, t1 in changes:
        while k <= min(max_id, n):
            lag_ms.append((t1 - commits[k]) * 1000)
            k += 1
    missing = n - len(lag_ms)
    lag_ms.sort()
    replica_lags = sorted(v for _, v in lags if v is not None)
    polls_us = sorted(p * 1e6 for p in polls)
    return {
        "commits": n, "seconds": elapsed, "rate": n / elapsed, "behind": behind, "missing": missing,
        "p50": pct(lag_ms, 0.50), "p90": pct(lag_ms, 0.90), "p99": pct(lag_ms, 0.99), "max": lag_ms[-1],
        "min": lag_ms[0], "mean": statistics.fmean(lag_ms),
        "over10": sum(1 for v in lag_ms if v > 10) / len(lag_ms),
        "applies": len(replica_lags), "visible_steps": len(changes),
        "r_p50": pct(replica_lags, 0.50), "r_p90": pct(replica_lags, 0.90), "r_p99": pct(replica_lags, 0.99),
        "r_max": replica_lags[-1] if replica_lags else float("nan"),
        "polls": len(polls), "poll_p50_us": pct(polls_us, 0.5), "poll_p99_us": pct(polls_us, 0.99),
    }


# ---------------------------------------------------------------------------------------
# 2. reads


def measure_reads(server: Server, clients: int, duration: float) -> dict:
    conns = [connect(server) for _ in range(clients)]
    counts = [0] * clients
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(i: int) -> None:
        cur = conns[i].cursor()
        rnd = random.Random(i)
        try:
            cur.execute(READ_SQL, (1,), prepare=True)
            cur.fetchone()
            barrier.wait(30)
            n = 0
            end = stop_at[0]
            while True:
                for _ in range(50):
                    cur.execute(READ_SQL, (rnd.randint(1, ROWS),), prepare=True)
                    cur.fetchone()
                n += 50
                if time.monotonic() >= end:
                    break
            counts[i] = n
        except Exception as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    try:
        stop_at[0] = time.monotonic() + duration + 0.5  # set before the threads can read it
        for th in threads:
            th.start()
        barrier.wait(30)
        t0 = time.monotonic()
        stop_at[0] = t0 + duration
        for th in threads:
            th.join(duration + 30)
        elapsed = time.monotonic() - t0
    finally:
        for c in conns:
            c.close()
    if errors or any(th.is_alive() for th in threads):
        raise RuntimeError(f"read run on {server.name} failed: {errors[:3]}")
    total = sum(counts)
    return {"queries": total, "qps": total / elapsed, "us": elapsed * clients / total * 1e6}


# ---------------------------------------------------------------------------------------


def fmt(v: float, digits: int = 2) -> str:
    if v != v:  # nan
        return "–"
    return f"{v:,.{digits}f}"


def reads_under_writes(primary: Server, replica: Server, clients: int, args, first_id: int) -> tuple[dict, int]:
    """Replica reads while the primary takes ``--rate`` commits/s (from another process)."""
    ctx = mp.get_context("spawn")
    ready, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=background_writer,
                       args=(primary.dsn(), args.rate, first_id, ready, stop, q, args.read_duration + 30), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the background writer did not connect in 30 s")
        time.sleep(0.5)  # let the stream settle
        res = measure_reads(replica, clients, args.read_duration)
        stop.set()
        status, n, seconds = q.get(timeout=30)
        if status != "ok":
            raise RuntimeError(f"background writer failed: {n}")
    finally:
        stop.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    res["writes_per_s"] = n / seconds
    return res, first_id + n


def run_level(folder: Path, sync: str, args, reads: bool, out: dict) -> None:
    primary = Server(f"primary-{sync}", folder, ["--synchronous", sync])
    replica = Server(f"replica-{sync}", folder, ["--synchronous", sync, "--primary", f"{HOST}:0"])
    try:
        primary.start()
        replica.args[-1] = f"{HOST}:{primary.port}"
        replica.start()
        t = time.monotonic()
        load(primary, replica)
        log(f"{sync}: loaded {ROWS:,} rows, replica caught up in {time.monotonic() - t:.1f}s")
        log(f"{sync}: lag run, {args.rate:g} commits/s for {args.lag_duration:g}s")
        out["lag"][sync] = r = measure_lag(primary, replica, args.rate, args.lag_duration)
        log(f"{sync}: {r['rate']:.0f} commits/s, lag p50 {r['p50']:.2f} p99 {r['p99']:.2f} "
            f"max {r['max']:.2f} ms; replica's own p99 {r['r_p99']:.2f} ms")
        if reads:
            for target in (primary, replica):
                with connect(target) as c:  # warm-up: page cache, statement caches
                    end = time.monotonic() + 1.0
                    while time.monotonic() < end:
                        c.execute(READ_SQL, (random.randint(1, ROWS),), prepare=True).fetchone()
            next_id = int(args.rate * args.lag_duration) + 1
            for clients in args.clients:
                for target, role in ((primary, "primary"), (replica, "replica"), (replica, "replica+writes")):
                    if role == "replica+writes":
                        res, next_id = reads_under_writes(primary, replica, clients, args, next_id)
                    else:
                        res = measure_reads(target, clients, args.read_duration)
                    out["reads"][(clients, role)] = res
                    log(f"reads: {role}, {clients} client(s): {res['qps']:,.0f} q/s")
    finally:
        replica.stop()
        primary.stop()
        for server in (primary, replica):
            for line in server.problems()[:5]:
                out["problems"].append(f"{server.name}: {line}")


def git_state() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "--oneline", "-1", "--format=%h"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--short", "--", "sqld"],
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "git state unknown"
    dirty = [line[3:] for line in dirty if line.strip()]
    return f"git `{head}`" + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def report(args, out: dict, wall: float) -> str:
    lines = [f"Replication benchmark: 1 primary + 1 replica on {HOST}; {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, psycopg {psycopg.__version__}; sqld at {out['git']}; "
             f"wall time {wall:.0f} s; load average {out['load'][0]} at the start, {out['load'][1]} at the end.", ""]
    if out["lag"]:
        lines += [f"### Lag at {args.rate:g} commits/s ({args.lag_duration:g} s, 1 writer connection, "
                  "autocommit single-row INSERTs)", "",
                  "End to end: visible on the replica (poll returned) minus INSERT returned on the primary, ms.",
                  "",
                  "| synchronous | commits | commits/s | p50 | p90 | p99 | max | > 10 ms | replica's own p50 / p99 / max | poll µs p50 / p99 |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for sync, r in out["lag"].items():
            lines.append(
                f"| {sync} | {r['commits']:,} | {r['rate']:,.0f} | {fmt(r['p50'])} | {fmt(r['p90'])} | "
                f"{fmt(r['p99'])} | {fmt(r['max'])} | {r['over10'] * 100:.1f} % | "
                f"{fmt(r['r_p50'])} / {fmt(r['r_p99'])} / {fmt(r['r_max'])} | "
                f"{r['poll_p50_us']:,.0f} / {r['poll_p99_us']:,.0f} |")
        lines += ["", "Replica's own: `sqld_replication_lag_ms()` (primary's capture of the commit to the end "
                  "of the replica's apply), one sample per newly applied frame "
                  + ", ".join(f"({s}: {r['applies']:,} samples, {r['visible_steps']:,} visible steps)"
                              for s, r in out["lag"].items()) + ".", ""]
        for sync, r in out["lag"].items():
            lines.append(f"Note ({sync}): lowest lag {r['min']:.2f} ms, mean {r['mean']:.2f} ms; "
                         f"{r['missing']} commits never seen by the poller; the writer started an INSERT more "
                         f"than one interval ({1000 / args.rate:g} ms) late {r['behind']} times.")
    if out["reads"]:
        lines += ["", f"### Point selects by key, {args.read_duration:g} s per run "
                  "(psycopg `prepare=True`, one autocommit connection per thread)", "",
                  "| clients | primary q/s | replica q/s | replica/primary | primary µs | replica µs "
                  f"| replica q/s, primary writing {args.rate:g}/s | vs idle replica | µs |",
                  "|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
        for clients in args.clients:
            p, r = out["reads"].get((clients, "primary")), out["reads"].get((clients, "replica"))
            w = out["reads"].get((clients, "replica+writes"))
            if p and r:
                tail = (f"{w['qps']:,.0f} ({w['writes_per_s']:,.0f} commits/s) | {w['qps'] / r['qps']:.2f}x | "
                        f"{w['us']:,.0f}" if w else "– | – | –")
                lines.append(f"| {clients} | {p['qps']:,.0f} | {r['qps']:,.0f} | {r['qps'] / p['qps']:.2f}x | "
                             f"{p['us']:,.0f} | {r['us']:,.0f} | {tail} |")
        lines += ["", "µs = mean per query as a client thread saw it (threads × seconds / queries)."]
    if out["problems"]:
        lines += ["", "### sqld log (warnings, errors)", ""] + [f"- `{p}`" for p in out["problems"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500.0, help="commits/s on the primary (default 500)")
    ap.add_argument("--lag-duration", type=float, default=10.0)
    ap.add_argument("--read-duration", type=float, default=5.0)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--synchronous", default="full,normal")
    ap.add_argument("--skip-reads", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "replication-latest.md"))
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    levels = [s.strip() for s in args.synchronous.split(",") if s.strip()]
    for s in levels:
        if s not in ("full", "normal"):
            ap.error(f"--synchronous: {s!r} is not full or normal")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    watchdog = start_watchdog(args.max_seconds)
    folder = Path(tempfile.mkdtemp(prefix="sqld-replbench-"))
    out = {"lag": {}, "reads": {}, "problems": [], "git": git_state(), "load": [loadavg(), "?"]}
    started = time.monotonic()
    failed = False
    try:
        for i, sync in enumerate(levels):
            try:
                run_level(folder, sync, args, reads=(i == 0 and not args.skip_reads), out=out)
            except RuntimeError as exc:
                failed = True
                log(f"{sync}: FAILED: {exc}")
                out["problems"].append(f"run at synchronous={sync} failed: {exc}")
    except KeyboardInterrupt:
        log("interrupted")
        failed = True
    finally:
        stop_all()
        watchdog.cancel()
        shutil.rmtree(folder, ignore_errors=True)
    out["load"][1] = loadavg()
    text = report(args, out, time.monotonic() - started)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
