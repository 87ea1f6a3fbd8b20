#!/usr/bin/env python3
"""Bulk load: psql's ``\\copy … from FILE`` into sqld and PostgreSQL, rows per second.

    .venv/bin/python benchmarks/bulkload.py [--rows 200000] [--rounds 3] [--targets sqld,postgres]
    .venv/bin/python benchmarks/bulkload.py --sqld-src OTHER_CHECKOUT   # also another revision of sqld

Each round loads the same generated file (four columns: an integer key, a short text, an
integer, a longer text) into a freshly created table on every target in turn (interleaved,
as ``run.py`` does, so noise hits one round's figures alike), with psql in autocommit: the
COPY is a transaction of its own. The figure is the wall time of the psql process. Servers
are the ones ``run.py`` starts (sqld ``--synchronous full`` on a fresh temp folder;
PostgreSQL ``fsync=on``, ``synchronous_commit=on``), on 127.0.0.1, stopped by PID at the end.
With ``--sqld-src DIR`` a second sqld runs from that folder (``PYTHONPATH=DIR``: a
``git worktree`` of an earlier commit), for a before/after ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the servers and the clean-up of run.py)

TABLE = "bench_copy"
CREATE = f"CREATE TABLE {TABLE}(id INTEGER PRIMARY KEY, name TEXT, amount INTEGER, note TEXT)"


def write_rows(path: Path, rows: int) -> None:
    with open(path, "w") as f:
        for i in range(1, rows + 1):
            f.write(f"{i}\tname {i % 977}\t{(i * 7919) % 100000}\ta note of some length for row {i}\n")


def psql(port: int, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(["psql", "-h", run.HOST, "-p", str(port), "-U", run.USER, "-d", run.DBNAME,
                           "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def load_once(port: int, data: Path, rows: int, timeout: float) -> float:
    """Seconds for one \\copy of ``data`` into a new table; checks the count after."""
    cp = psql(port, "-c", f"DROP TABLE IF EXISTS {TABLE}", "-c", CREATE, timeout=60)
    if cp.returncode:
        raise RuntimeError(f"create failed: {cp.stderr.strip()}")
    started = time.monotonic()
    cp = psql(port, "-c", f"\\copy {TABLE} from '{data}'", timeout=timeout)
    elapsed = time.monotonic() - started
    if cp.returncode:
        raise RuntimeError(f"\\copy failed after {elapsed:.1f} s: {cp.stderr.strip()[:500]}")
    cp = psql(port, "-tAc", f"SELECT count(*) FROM {TABLE}", timeout=60)
    if cp.stdout.strip() != str(rows):
        raise RuntimeError(f"{cp.stdout.strip()!r} rows after the copy, not {rows}")
    return elapsed


class SqldFrom(run.Sqld):
    """run.py's sqld, imported from another checkout (PYTHONPATH) when ``src`` is given."""

    def __init__(self, src: str | None) -> None:
        saved = os.environ.get("PYTHONPATH")
        if src:
            os.environ["PYTHONPATH"] = str(Path(src).resolve())
        try:
            super().__init__("full")
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--targets", default="sqld,postgres")
    ap.add_argument("--sqld-src", help="also run the sqld of this checkout (a before/after ratio)")
    ap.add_argument("--pg-bindir")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one \\copy may take")
    a = ap.parse_args()
    if not shutil.which("psql"):
        print("psql not found", file=sys.stderr)
        return 2
    atexit.register(run.cleanup)
    signal.signal(signal.SIGTERM, run._raise_interrupt)

    data = run.make_tmpdir("copy-bench-") / "rows.tsv"
    write_rows(data, a.rows)
    servers: dict[str, object] = {}
    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    try:
        if "sqld" in targets:
            servers["sqld"] = SqldFrom(None)
        if a.sqld_src:
            servers["sqld (--sqld-src)"] = SqldFrom(a.sqld_src)
        if "postgres" in targets:
            servers["postgres"] = run.Postgres(run.find_pg_bindir(a.pg_bindir))
        times: dict[str, list[float]] = {name: [] for name in servers}
        for r in range(a.rounds):
            for name, server in servers.items():
                t = load_once(server.port, data, a.rows, a.timeout)
                times[name].append(t)
                run.log(f"round {r + 1}: {name:18} {a.rows / t:10,.0f} rows/s ({t:.2f} s)")
    finally:
        for server in servers.values():
            server.stop()
        run.cleanup()

    print(f"\n`\\copy` of {a.rows:,} rows, {a.rounds} rounds, median (rows/s):\n")
    print("| target | rows/s | seconds | rows/s ÷ sqld's |")
    print("|---|--:|--:|--:|")
    base = statistics.median(times["sqld"]) if "sqld" in times else None
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{base / med:.2f}×" if base else ""
        print(f"| {name} | {a.rows / med:,.0f} | {med:.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
