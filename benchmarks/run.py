#!/usr/bin/env python3
"""sqld vs PostgreSQL vs embedded apsw: the same workloads against all three, one table.

    .venv/bin/python benchmarks/run.py [--duration 10] [--clients 1,8] [--only select,update]

Targets:
  sqld      started here as a subprocess (127.0.0.1, port 0, fresh temp --db-path,
            --synchronous full; also normal with --synchronous full,normal).
  postgres  a throwaway PostgreSQL cluster started here (initdb + postgres on 127.0.0.1,
            fsync=on, synchronous_commit=on), run as the `postgres` user when we are root.
  sqld-src  with --sqld-src DIR: the sqld of another checkout (PYTHONPATH=DIR), run beside
            this one's, for an after/before ratio of a change.
  apsw      the ceiling: the same statements in-process on a SQLite file (WAL,
            synchronous=FULL), one thread, one connection.

Runs are interleaved: each (workload, clients) runs on every target back to back, so noise
on a shared machine hits the targets of one row alike. Only one target works at a time.

The server workloads run with pgbench (-n -f SCRIPT -c C -j C -T DURATION -M prepared);
TPS is pgbench's "without initial connection time" figure, latency its "latency average".
Every process started here is stopped by its PID and every temp dir removed, also on
Ctrl-C or error. Results: printed as markdown and written to benchmarks/results/latest.md.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import glob
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

N_ACCOUNTS = 100_000
FILLER = "x" * 84  # pgbench_accounts' filler is char(84)
HOST = "127.0.0.1"
USER = "postgres"
DBNAME = "postgres"

# Both dialects accept all of this as written.
SCHEMA = [
    "DROP TABLE IF EXISTS bench_accounts",
    "DROP TABLE IF EXISTS bench_history",
    "CREATE TABLE bench_accounts(aid INTEGER PRIMARY KEY, abalance INTEGER, filler TEXT)",
    "CREATE TABLE bench_history(aid INTEGER, delta INTEGER)",
]
# SQLite's generate_series is an extension apsw does not build in; a recursive CTE works in both.
LOAD = (
    f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N_ACCOUNTS}) "
    f"INSERT INTO bench_accounts(aid, abalance, filler) SELECT i, 0, '{FILLER}' FROM s"
)


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    pgbench: str        # pgbench script
    sql: str            # the same statement for apsw (qmark parameter)
    param: bool         # takes a random aid
    writes: bool
    one_client: bool = False


WORKLOADS = [
    Workload("select", "point select by key",
             f"\\set aid random(1, {N_ACCOUNTS})\nSELECT abalance FROM bench_accounts WHERE aid = :aid;\n",
             "SELECT abalance FROM bench_accounts WHERE aid = ?", True, False),
    Workload("update", "single-row update (autocommit)",
             f"\\set aid random(1, {N_ACCOUNTS})\nUPDATE bench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n",
             "UPDATE bench_accounts SET abalance = abalance + 1 WHERE aid = ?", True, True),
    Workload("insert", "insert (autocommit)",
             f"\\set aid random(1, {N_ACCOUNTS})\nINSERT INTO bench_history(aid, delta) VALUES (:aid, 1);\n",
             "INSERT INTO bench_history(aid, delta) VALUES (?, 1)", True, True),
    Workload("select1", "SELECT 1",
             "SELECT 1;\n", "SELECT 1", False, False, one_client=True),
]
PSYCOPG = "psycopg"  # the Python-app loop, selectable with --only
ALL_KEYS = [w.key for w in WORKLOADS] + [PSYCOPG]
TARGETS = ["sqld", "postgres", "apsw"]
PSYCOPG_SQL = "SELECT abalance FROM bench_accounts WHERE aid = %s"


# ---------------------------------------------------------------------------------------
# processes and temp dirs: everything started here is registered and stopped by PID


_procs: list[tuple[str, subprocess.Popen, int]] = []  # (name, process, first stop signal)
_tmpdirs: list[Path] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stop_process(name: str, proc: subprocess.Popen, sig: int, grace: float = 30.0) -> None:
    """Signal one process we started, by its PID; escalate to SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
            proc.wait(grace)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) ignored {signal.Signals(sig).name} for {grace:.0f}s: SIGKILL")
            try:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
    for i, (_, p, _) in enumerate(_procs):
        if p is proc:
            del _procs[i]
            break


def cleanup() -> None:
    while _procs:
        name, proc, sig = _procs[-1]
        stop_process(name, proc, sig)
    while _tmpdirs:
        shutil.rmtree(_tmpdirs.pop(), ignore_errors=True)


def make_tmpdir(prefix: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    _tmpdirs.append(d)
    return d


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Watchdog:
    """Calls ``on_expire`` if the block takes longer than ``seconds`` (bounds client calls
    that have no timeout of their own: killing the server makes them fail)."""

    def __init__(self, seconds: float, on_expire, what: str) -> None:
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.on_expire, self.what, self.seconds, self.fired = on_expire, what, seconds, False

    def _fire(self):
        self.fired = True
        log(f"watchdog: {self.what} took over {self.seconds:.0f}s; stopping the server")
        self.on_expire()

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# results


@dataclass
class Result:
    tps: float | None = None
    lat_us: float | None = None
    n: int = 0
    failed: int = 0
    error: str | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    note: str = ""


ERRORS: list[str] = []
SERVER_LOG_NOTES: list[str] = []


def record_error(where: str, text: str) -> Result:
    ERRORS.append(f"{where}:\n{text.rstrip()}")
    log(f"ERROR {where}: {text.strip().splitlines()[-1] if text.strip() else '?'}")
    return Result(error=text)


# ---------------------------------------------------------------------------------------
# pgbench


PGBENCH_RE = {
    "tps": re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M),
    "lat": re.compile(r"^latency average = ([0-9.]+) ms", re.M),
    "n": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
}


def run_pgbench(pgbench: str, port: int, script: Path, clients: int, duration: int,
                where: str, extra_env: dict[str, str] | None = None) -> Result:
    cmd = [pgbench, "-h", HOST, "-p", str(port), "-U", USER, "-n", "-f", str(script),
           "-c", str(clients), "-j", str(clients), "-T", str(duration), "-M", "prepared", DBNAME]
    env = dict(os.environ, PGCONNECT_TIMEOUT="10", PGSSLMODE="disable", PGAPPNAME="sqld-bench")
    env.pop("PGOPTIONS", None)
    env.update(extra_env or {})
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60, env=env,
                            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr or b"").decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return record_error(where, f"pgbench did not finish within {duration + 60}s\n$ {' '.join(cmd)}\n{out}{err}")
    out = cp.stdout + cp.stderr
    vals = {k: r.search(cp.stdout) for k, r in PGBENCH_RE.items()}
    failed = int(vals["failed"].group(1)) if vals["failed"] else 0
    if cp.returncode != 0 or not vals["tps"] or failed:
        return record_error(where, f"pgbench exit status {cp.returncode}, failed transactions {failed}\n"
                                   f"$ {' '.join(cmd)}\n{out}")
    return Result(tps=float(vals["tps"].group(1)), lat_us=float(vals["lat"].group(1)) * 1000,
                  n=int(vals["n"].group(1)) if vals["n"] else 0, failed=failed)


# ---------------------------------------------------------------------------------------
# psycopg (used to load the servers and for the Python-app loop)


def pg_connect(port: int, options: str | None = None, timeout: int = 10):
    import psycopg

    kw = {"options": options} if options else {}
    return psycopg.connect(host=HOST, port=port, user=USER, dbname=DBNAME, autocommit=True,
                           connect_timeout=timeout, sslmode="disable", **kw)


def load_server(port: int, postgres: bool) -> float:
    t0 = time.perf_counter()
    with pg_connect(port) as conn:
        for stmt in SCHEMA:
            conn.execute(stmt)
        conn.execute(LOAD)
        if postgres:
            conn.execute("VACUUM ANALYZE")
            conn.execute("CHECKPOINT")
        else:
            conn.execute("ANALYZE")
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except Exception as exc:  # not essential; say so
                log(f"sqld: PRAGMA wal_checkpoint failed ({exc}); going on")
        count = conn.execute("SELECT count(*) FROM bench_accounts").fetchone()[0]
    if count != N_ACCOUNTS:
        raise RuntimeError(f"loaded {count} rows, expected {N_ACCOUNTS}")
    return time.perf_counter() - t0


def psycopg_loop(port: int, queries: int, max_seconds: float, options: str | None = None) -> Result:
    """One client, ``queries`` prepared point selects, each timed from the app's side."""
    rnd = random.Random(42)
    lat: list[float] = []
    pc = time.perf_counter
    with pg_connect(port, options) as conn:
        cur = conn.cursor()
        for _ in range(200):  # warm-up: prepare, caches
            cur.execute(PSYCOPG_SQL, (rnd.randint(1, N_ACCOUNTS),), prepare=True)
            cur.fetchone()
        deadline = pc() + max_seconds
        start = pc()
        for _ in range(queries):
            aid = rnd.randint(1, N_ACCOUNTS)
            t0 = pc()
            cur.execute(PSYCOPG_SQL, (aid,), prepare=True)
            row = cur.fetchone()
            t1 = pc()
            lat.append(t1 - t0)
            if row is None:
                raise RuntimeError(f"no row for aid {aid}")
            if t1 > deadline:
                break
        elapsed = pc() - start
    return lat_result(lat, elapsed)


def lat_result(lat: list[float], elapsed: float) -> Result:
    lat_sorted = sorted(lat)
    return Result(tps=len(lat) / elapsed, lat_us=statistics.fmean(lat) * 1e6, n=len(lat),
                  p50_us=lat_sorted[len(lat) // 2] * 1e6,
                  p99_us=lat_sorted[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6)


# ---------------------------------------------------------------------------------------
# sqld


class Sqld:
    """sqld as a subprocess; ``src``: from that checkout (PYTHONPATH), for a before/after."""

    def __init__(self, synchronous: str, max_seconds_start: float = 30.0, src: str | None = None) -> None:
        self.synchronous = synchronous
        self.dir = make_tmpdir("sqld-bench-")
        self.logfile = self.dir / "sqld.log"
        cmd = [sys.executable, "-m", "sqld", "--db-path", str(self.dir / "db"),
               "--listen-addr", f"{HOST}:0", "--synchronous", synchronous, "--log-level", "info"]
        with open(self.logfile, "wb") as lf:
            # own session: a Ctrl-C in the terminal reaches us, and we stop it in order
            env = dict(os.environ, PYTHONPATH=str(Path(src).resolve())) if src else None
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, start_new_session=True, env=env)
        _procs.append(("sqld", self.proc, signal.SIGTERM))
        deadline = time.monotonic() + max_seconds_start
        pat = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
        while True:
            m = pat.search(self.logfile.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.logfile.read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"sqld did not start (exit {self.proc.returncode}):\n{text}")
            time.sleep(0.05)
        log(f"sqld pid {self.proc.pid} on port {self.port} (synchronous={synchronous}, {self.dir})")

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        stop_process("sqld", self.proc, signal.SIGTERM)
        # what the server itself complained about (slow statements, failures, tracebacks)
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return
        bad = [ln for ln in text.splitlines()
               if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback|failed", ln)]
        if bad:
            SERVER_LOG_NOTES.append(f"sqld (synchronous={self.synchronous}): {len(bad)} warning/error "
                                    f"line(s) in its log; first ones:\n" + "\n".join(bad[:15]))

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------
# PostgreSQL


def find_pg_bindir(explicit: str | None) -> Path:
    cands: list[Path] = []
    if explicit:
        cands.append(Path(explicit))
    for pgc in filter(None, [shutil.which("pg_config")]):
        try:
            cands.append(Path(subprocess.run([pgc, "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    # Debian/Ubuntu layout; newest major first, but 15 (the version the README's figures use) wins
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                   key=lambda p: (Path(p).parent.name != "15", -int(Path(p).parent.name)
                                  if Path(p).parent.name.isdigit() else 0))
    cands += [Path(p) for p in found]
    for d in cands:
        if (d / "postgres").is_file() and (d / "initdb").is_file():
            return d
    raise RuntimeError("no PostgreSQL server binaries (initdb, postgres) found: pass --pg-bindir")


def find_pgbench(bindir: Path | None) -> str:
    if bindir and (bindir / "pgbench").is_file():
        return str(bindir / "pgbench")
    p = shutil.which("pgbench")
    if not p:
        raise RuntimeError("pgbench not found")
    return p


class Postgres:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = make_tmpdir("pg-bench-")
        self.data = self.dir / "data"
        self.logfile = self.dir / "postgres.log"
        kw: dict = {}
        env = dict(os.environ, LC_ALL="C", LANG="C")
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            env["HOME"] = str(self.dir)
            env["USER"] = env["LOGNAME"] = "postgres"
        self.kw, self.env = kw, env
        cp = subprocess.run([str(bindir / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust",
                             "-E", "UTF8", "--locale=C", "--no-sync"],
                            capture_output=True, text=True, timeout=120, cwd=self.dir, env=env,
                            stdin=subprocess.DEVNULL, **kw)
        if cp.returncode != 0:
            raise RuntimeError(f"initdb failed ({cp.returncode}):\n{cp.stdout}{cp.stderr}")
        for attempt in range(5):
            self.port = free_port()
            cmd = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                   "-k", str(self.dir), "-c", f"listen_addresses={HOST}",
                   "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
                   "-c", "max_connections=100"]
            with open(self.logfile, "ab") as lf:
                self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=self.dir, env=env, start_new_session=True, **kw)
            # SIGINT = fast shutdown: roll back open sessions and stop
            _procs.append(("postgres", self.proc, signal.SIGINT))
            if self._wait_ready(60):
                break
            self.stop()
            log(f"postgres did not start on port {self.port}; retrying\n{self.log_tail()}")
        else:
            raise RuntimeError(f"postgres did not start:\n{self.log_tail(40)}")
        self.version = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                                      text=True, timeout=10).stdout.strip()
        log(f"postgres pid {self.proc.pid} on port {self.port} ({self.version}, {self.dir})")

    def _wait_ready(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with pg_connect(self.port, timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except Exception:
                time.sleep(0.2)
        return False

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGQUIT)  # immediate shutdown
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        stop_process("postgres", self.proc, signal.SIGINT)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------
# embedded apsw


class Apsw:
    def __init__(self, synchronous: str) -> None:
        import apsw

        self.dir = make_tmpdir("apsw-bench-")
        self.conn = apsw.Connection(str(self.dir / "main.db"))
        mode = self.conn.execute("PRAGMA journal_mode=wal").fetchall()[0][0]
        assert mode == "wal", mode
        self.conn.execute(f"PRAGMA synchronous={synchronous}").fetchall()
        self.synchronous = synchronous

    def load(self) -> float:
        t0 = time.perf_counter()
        for stmt in SCHEMA:
            self.conn.execute(stmt).fetchall()
        self.conn.execute(LOAD).fetchall()
        self.conn.execute("ANALYZE").fetchall()
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return time.perf_counter() - t0

    def loop(self, sql: str, param: bool, duration: float, timed: bool = False) -> Result:
        cur = self.conn.cursor()
        rnd = random.Random(42)
        randint = rnd.randint
        pc = time.perf_counter
        lat: list[float] = []
        n = 0
        start = pc()
        deadline = start + duration
        if timed:
            while True:
                t0 = pc()
                cur.execute(sql, (randint(1, N_ACCOUNTS),) if param else ()).fetchall()
                t1 = pc()
                lat.append(t1 - t0)
                if t1 >= deadline:
                    break
            return lat_result(lat, pc() - start)
        now = start
        while now < deadline:
            if param:
                cur.execute(sql, (randint(1, N_ACCOUNTS),)).fetchall()
            else:
                cur.execute(sql).fetchall()
            n += 1
            now = pc()
        elapsed = now - start
        return Result(tps=n / elapsed, lat_us=elapsed / n * 1e6, n=n)

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------
# the runs


def fsync_probe(dirpath: Path, n: int = 100) -> float:
    """Mean µs of a 4 KiB write + fdatasync in ``dirpath``: the floor under every durable commit."""
    path = dirpath / "fsync-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        buf = os.urandom(4096)
        t0 = time.perf_counter()
        for i in range(n):
            os.pwrite(fd, buf, (i % 16) * 4096)
            os.fdatasync(fd)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        os.close(fd)
        os.unlink(path)


def machine_info() -> dict[str, str]:
    info = {"nproc": str(len(os.sched_getaffinity(0))), "cpu": "?", "mem": "?",
            "load_start": f"{os.getloadavg()[0]:.2f}",
            "kernel": platform.release(), "python": platform.python_version()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem"] = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    except OSError:
        pass
    try:
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                     capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        info["git"] = "?"
    return info


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.results: dict[tuple, Result] = {}  # (mode, target, workload, clients) -> Result
        self.workloads = [w for w in WORKLOADS if w.key in args.only]
        self.scripts = make_tmpdir("bench-scripts-")
        os.chmod(self.scripts, 0o755)
        for w in WORKLOADS:
            (self.scripts / f"{w.key}.sql").write_text(w.pgbench)
        self.load_times: dict[tuple, float] = {}
        self.versions: dict[str, str] = {}

    def runs(self, mode: str):
        """(workload, clients) pairs for one synchronous mode; reads only under 'full'
        (a read commits nothing, so the mode does not change it)."""
        for w in self.workloads:
            if mode != "full" and not w.writes:
                continue
            for c in ([1] if w.one_client else self.args.clients):
                yield w, c

    # -- one target's setup and measurements, per synchronous mode -------------------------

    def setup(self, target: str, mode: str, pg: Postgres | None):
        """Fresh tables for ``target`` in ``mode``; returns (measure(w, c), psycopg(), close())."""
        a = self.args
        if target == "apsw":
            db = Apsw(mode)
            self.load_times[("apsw", mode)] = db.load()
            if a.warmup > 0:
                db.loop(WORKLOADS[0].sql, True, a.warmup)
            done: dict[str, Result] = {}

            def measure(w: Workload, c: int) -> Result:
                if w.key not in done:  # one thread: its figure stands for every client count
                    done[w.key] = db.loop(w.sql, w.param, a.duration)
                return done[w.key]

            def loop() -> Result:
                # the in-process counterpart of the psycopg loop: same statement, each call timed
                return db.loop(WORKLOADS[0].sql, True, min(a.duration, 10), timed=True)

            return measure, loop, db.close

        if target in ("sqld", "sqld-src"):
            src = a.sqld_src if target == "sqld-src" else None
            server = Sqld(mode, src=src)
            options, env = None, None
            label = f"sqld (synchronous={mode}{', from ' + src if src else ''})"
        else:
            assert pg is not None
            server = pg
            # synchronous=normal's counterpart: commits that do not wait for the WAL flush
            options = None if mode == "full" else "-c synchronous_commit=off"
            env = {"PGOPTIONS": options} if options else None
            label = f"postgres (synchronous_commit={'on' if mode == 'full' else 'off'})"
        try:
            with Watchdog(300, server.kill, f"loading {target}"):
                self.load_times[(target, mode)] = load_server(server.port, postgres=target == "postgres")
            log(f"{target} loaded {N_ACCOUNTS} rows in {self.load_times[(target, mode)]:.1f}s")
            if a.warmup > 0:
                run_pgbench(a.pgbench, server.port, self.scripts / "select.sql", 1, a.warmup,
                            f"{label} warm-up", env)
        except BaseException:
            if target != "postgres":
                server.stop()
            raise

        def measure(w: Workload, c: int) -> Result:
            if server.proc.poll() is not None:
                return record_error(f"{label} {w.key} clients={c}",
                                    f"server not running (exit status {server.proc.returncode}):\n"
                                    f"{server.log_tail()}")
            r = run_pgbench(a.pgbench, server.port, self.scripts / f"{w.key}.sql", c, a.duration,
                            f"{label} {w.key} clients={c}", env)
            if r.error and server.proc.poll() is not None:
                ERRORS[-1] += f"\n({target} exited with status {server.proc.returncode}; log tail:)\n{server.log_tail()}"
            return r

        def loop() -> Result:
            with Watchdog(a.duration * 3 + 60, server.kill, f"psycopg loop on {target}"):
                return psycopg_loop(server.port, a.psycopg_queries, a.duration * 3, options)

        close = server.stop if target != "postgres" else (lambda: None)
        return measure, loop, close

    def run(self) -> None:
        """Interleaved: each (workload, clients) runs on every target back to back, so a burst
        of noise on the shared machine hits the targets of one row alike, not one whole target.
        Only one target runs a workload at a time; the others sit idle."""
        a = self.args
        pg = None
        if "postgres" in a.targets:
            pg = Postgres(a.pg_bindir)
            self.versions["postgres"] = pg.version
        try:
            for mode in a.synchronous:
                runners = {}
                try:
                    for t in a.targets:
                        try:
                            runners[t] = self.setup(t, mode, pg)
                        except KeyboardInterrupt:
                            raise
                        except Exception as exc:
                            import traceback

                            record_error(f"{t}/{mode} setup",
                                         f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
                    for w, c in self.runs(mode):
                        for t, (measure, _, _) in runners.items():
                            r = self.guarded(lambda: measure(w, c), f"{t}/{mode} {w.key} clients={c}")
                            self.results[(mode, t, w.key, c)] = r
                            log(f"{t:8} {mode:6} {w.key:7} c={c}: {fmt_tps(r):>9} tps {fmt_us(r.lat_us):>7} µs")
                    if PSYCOPG in a.only and mode == "full":
                        for t, (_, loop, _) in runners.items():
                            r = self.guarded(loop, f"{t}/{mode} psycopg loop")
                            self.results[(mode, t, PSYCOPG, 1)] = r
                            log(f"{t:8} {mode:6} psycopg loop: {fmt_tps(r):>9} q/s {fmt_us(r.lat_us):>7} µs")
                finally:
                    for _, _, close in runners.values():
                        close()
        finally:
            if pg is not None:
                pg.stop()

    def guarded(self, fn, where: str) -> Result:
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            import traceback

            return record_error(where, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")


# ---------------------------------------------------------------------------------------
# report


def fmt_tps(r: Result | None) -> str:
    if r is None:
        return "–"
    if r.error:
        return "ERR"
    return f"{r.tps:,.0f}"


def fmt_us(v: float | None) -> str:
    return "–" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def fmt_ratio(a: Result | None, b: Result | None) -> str:
    if not a or not b or a.error or b.error or not b.tps:
        return "–"
    return f"{a.tps / b.tps:.2f}x"


def report(bench: Bench, info: dict[str, str], fsync_us: float | None, started: datetime.datetime,
           wall: float) -> str:
    import apsw
    import psycopg

    import sqld

    a = bench.args
    R = bench.results
    lines = [
        "# sqld benchmark results",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} (local), wall time {wall / 60:.1f} min; load average "
        f"(1 min) {info.get('load_start', '?')} at the start, {os.getloadavg()[0]:.2f} at the end",
        f"- machine: {info['nproc']} CPUs (nproc), {info['cpu']}, {info['mem']} RAM, Linux {info['kernel']}",
        f"- sqld {sqld.__version__} (git {info['git']}), Python {info['python']}, SQLite {apsw.sqlite_lib_version()} "
        f"(apsw {apsw.apsw_version()}), psycopg {psycopg.__version__}",
        f"- {bench.versions.get('postgres', 'PostgreSQL: not run')}",
        f"- {a.duration} s per run, clients {','.join(map(str, a.clients))}, pgbench `-M prepared -c C -j C`; "
        f"{N_ACCOUNTS:,} rows in bench_accounts",
    ]
    if fsync_us is not None:
        lines.append(f"- 4 KiB write + fdatasync in the temp dir: {fsync_us:,.0f} µs mean "
                     f"(the floor under each durable commit)")
    for mode in a.synchronous:
        pairs = list(bench.runs(mode))
        if not pairs:
            continue
        lines += ["", f"## pgbench workloads, sqld --synchronous {mode}", ""]
        if mode == "full":
            lines.append("Equal durability: sqld synchronous=full (WAL, fsync at every COMMIT), "
                         "PostgreSQL fsync=on + synchronous_commit=on, apsw WAL + synchronous=FULL.")
        else:
            lines.append("Writes only (a read commits nothing). sqld synchronous=normal, PostgreSQL "
                         "synchronous_commit=off (via PGOPTIONS), apsw WAL + synchronous=NORMAL: "
                         "a crash may lose the last commits, never corrupts.")
        lines += ["", "TPS = transactions (statements) per second; mean latency in µs per statement "
                  "as the client saw it (pgbench `latency average`; apsw: in-process time per call).", ""]
        lines.append("| workload | clients | PostgreSQL tps | sqld tps | apsw tps | PostgreSQL µs | sqld µs "
                     "| apsw µs | sqld/PostgreSQL | sqld/apsw |")
        lines.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for w, c in pairs:
            pg, sq, ap = (R.get((mode, t, w.key, c)) for t in ("postgres", "sqld", "apsw"))
            ap_note = "¹" if ap and not ap.error and c > 1 else ""
            lines.append(
                f"| {w.key}: {w.title} | {c} | {fmt_tps(pg)} | {fmt_tps(sq)} | {fmt_tps(ap)}{ap_note} | "
                f"{fmt_us(pg and pg.lat_us)} | {fmt_us(sq and sq.lat_us)} | {fmt_us(ap and ap.lat_us)}{ap_note} | "
                f"{fmt_ratio(sq, pg)} | {fmt_ratio(sq, ap)} |")
        if any(c > 1 for _, c in pairs) and "apsw" in a.targets:
            lines += ["", "¹ apsw runs in one thread on one connection; rows with clients > 1 repeat "
                          "its single-thread figure (the in-process ceiling), so sqld/apsw there "
                          "compares C server clients with one embedded thread."]
    if a.sqld_src:
        lines += ["", "## sqld of this checkout (after) against `--sqld-src` (before), same run", "",
                  "| mode | workload | clients | before tps | after tps | after/before |", "|---|---|--:|--:|--:|--:|"]
        for mode in a.synchronous:
            for w, c in bench.runs(mode):
                before, after = R.get((mode, "sqld-src", w.key, c)), R.get((mode, "sqld", w.key, c))
                lines.append(f"| {mode} | {w.key} | {c} | {fmt_tps(before)} | {fmt_tps(after)} | "
                             f"{fmt_ratio(after, before)} |")
    if PSYCOPG in a.only:
        lines += ["", "## Python app: psycopg 3, 1 client, prepared point select", "",
                  f"`cur.execute(\"{PSYCOPG_SQL}\", (aid,), prepare=True); cur.fetchone()` "
                  f"in a loop of {a.psycopg_queries:,} (autocommit, random aid), each call timed; "
                  "apsw: the same statement in-process (for the time budget of one run).", "",
                  "| target | queries | queries/s | mean µs | p50 µs | p99 µs | vs PostgreSQL |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        pg = R.get(("full", "postgres", PSYCOPG, 1))
        for t, label in (("postgres", "PostgreSQL"), ("sqld", "sqld"), ("apsw", "apsw (in-process)")):
            r = R.get(("full", t, PSYCOPG, 1))
            if r is None:
                continue
            if r.error:
                lines.append(f"| {label} | ERR | | | | | |")
                continue
            lines.append(f"| {label} | {r.n:,} | {r.tps:,.0f} | {fmt_us(r.lat_us)} | {fmt_us(r.p50_us)} | "
                         f"{fmt_us(r.p99_us)} | {fmt_ratio(r, pg)} |")
    if bench.load_times:
        lines += ["", "Loading 100,000 rows (one INSERT … SELECT from a recursive CTE, then ANALYZE): " +
                  ", ".join(f"{t}/{m} {s:.1f} s" for (t, m), s in bench.load_times.items())]
    if SERVER_LOG_NOTES:
        lines += ["", "## sqld log", ""]
        for e in SERVER_LOG_NOTES:
            lines += ["```", e, "```", ""]
    if ERRORS:
        lines += ["", "## Errors", ""]
        for e in ERRORS:
            lines += ["```", e, "```", ""]
    lines += ["", "The machine is shared and noisy: compare figures within one run only."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    p.add_argument("--clients", default="1,8", help="client counts, comma-separated (default 1,8)")
    p.add_argument("--only", default=",".join(ALL_KEYS),
                   help=f"workloads, comma-separated, from {','.join(ALL_KEYS)} (default all)")
    p.add_argument("--targets", default=",".join(TARGETS), help="from sqld,postgres,apsw (default all)")
    p.add_argument("--synchronous", default="full",
                   help="sqld modes: full, normal or full,normal (normal runs the write workloads only)")
    p.add_argument("--psycopg-queries", type=int, default=20000, help="queries in the psycopg loop")
    p.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded point selects after loading")
    p.add_argument("--pg-bindir", default=None, help="PostgreSQL bin dir (default: pg_config --bindir)")
    p.add_argument("--output", default=str(HERE / "results" / "latest.md"), help="markdown file to write")
    p.add_argument("--sqld-src", default=None, metavar="DIR",
                   help="also run the sqld of another checkout (target sqld-src, PYTHONPATH=DIR), "
                        "interleaved with this one's, and report after/before")
    a = p.parse_args(argv)

    def split(s, allowed=None):
        items = [x.strip().lower() for x in s.split(",") if x.strip()]
        bad = [x for x in items if allowed is not None and x not in allowed]
        if bad or not items:
            p.error(f"unknown or empty: {','.join(bad) or repr(s)} (choose from {','.join(allowed or [])})")
        return items

    a.only = split(a.only, ALL_KEYS)
    a.targets = split(a.targets, TARGETS)
    if a.sqld_src:
        if not (Path(a.sqld_src) / "sqld" / "__init__.py").is_file():
            p.error(f"--sqld-src: {a.sqld_src} holds no sqld package")
        if "sqld" in a.targets:
            a.targets.insert(a.targets.index("sqld"), "sqld-src")
    a.synchronous = list(dict.fromkeys(split(a.synchronous, ["full", "normal"])))
    try:
        a.clients = sorted({int(x) for x in a.clients.split(",") if x.strip()})
    except ValueError:
        p.error("--clients: comma-separated integers")
    if not a.clients or min(a.clients) < 1 or max(a.clients) > 64:
        p.error("--clients: from 1 to 64")
    if a.duration < 1:
        p.error("--duration: at least 1")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    atexit.register(cleanup)
    started = datetime.datetime.now()
    t0 = time.monotonic()
    try:
        needs_server = bool({"sqld", "postgres"} & set(args.targets))
        args.pg_bindir = find_pg_bindir(args.pg_bindir) if "postgres" in args.targets else None
        if needs_server:
            try:
                bindir = args.pg_bindir or find_pg_bindir(None)
            except RuntimeError:
                bindir = None
            args.pgbench = find_pgbench(bindir)
        info = machine_info()
        probe_dir = make_tmpdir("fsync-probe-")
        fsync_us = fsync_probe(probe_dir)
        log(f"{info['nproc']} CPUs, {info['cpu']}; fdatasync {fsync_us:,.0f} µs; "
            f"targets {','.join(args.targets)}; workloads {','.join(args.only)}")
        bench = Bench(args)
        try:
            bench.run()
        except KeyboardInterrupt:
            log("interrupted: stopping what was started, then reporting what finished")
            cleanup()
            ERRORS.append("interrupted: the table is partial")
        text = report(bench, info, fsync_us, started, time.monotonic() - t0)
    finally:
        cleanup()
    print(text)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log(f"written to {out}")
    return 1 if ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
