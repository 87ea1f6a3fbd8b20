"""sqld.client's per-query cost beside psycopg 3 against the same sqld, and beside local sqlite3.

    .venv/bin/python benchmarks/client.py [--queries 20000]

Starts its own sqld on 127.0.0.1 (port 0, a temp folder), loads 10,000 rows, then times
N point selects by key and N single-row autocommit inserts through each client, one
connection, one thread. Prints a markdown table (mean, p50, p99 µs, and the ratio to psycopg).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

import sqld.client

ROOT = Path(__file__).resolve().parents[1]


def start_sqld(folder: Path):
    log = open(folder / "sqld.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "sqld", "--db-path", str(folder / "data"), "--listen-addr",
                             "127.0.0.1:0", "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", (folder / "sqld.log").read_bytes())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("sqld did not start:\n" + (folder / "sqld.log").read_text())


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def summary(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return statistics.fmean(s), s[len(s) // 2], s[int(len(s) * 0.99)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=20000)
    args = ap.parse_args()
    n = args.queries
    with tempfile.TemporaryDirectory(prefix="sqld-clientbench-") as tmp:
        folder = Path(tmp)
        proc, port = start_sqld(folder)
        try:
            load = ("create table kv(k integer primary key, v text); "
                    "with recursive s(n) as (select 1 union all select n + 1 from s where n < 10000) "
                    "insert into kv select n, 'value ' || n from s; create table log(k integer, v text)")
            results = {}
            # sqld.client
            c = sqld.client.connect(f"sqld://bench@127.0.0.1:{port}/bench", isolation_level=None)
            c.executescript(load)
            results["sqld.client"] = (
                timed(lambda: c.execute("select v from kv where k = ?", (random.randint(1, 10000),)).fetchone(), n),
                timed(lambda: c.execute("insert into log values (?, ?)", (1, "x")), n // 4),
            )
            c.close()
            # psycopg 3, prepared, same server, another database
            p = psycopg.connect(f"host=127.0.0.1 port={port} user=bench dbname=bench_pg", autocommit=True)
            p.execute(load)
            results["psycopg 3"] = (
                timed(lambda: p.execute("select v from kv where k = %s", (random.randint(1, 10000),),
                                        prepare=True).fetchone(), n),
                timed(lambda: p.execute("insert into log values (%s, %s)", (1, "x"), prepare=True), n // 4),
            )
            p.close()
            # local sqlite3 on a file, the same durability (WAL, synchronous=FULL)
            s = sqlite3.connect(folder / "local.db", isolation_level=None)
            s.execute("pragma journal_mode=wal").fetchall()
            s.execute("pragma synchronous=full")
            s.executescript(load)
            results["sqlite3 (local file)"] = (
                timed(lambda: s.execute("select v from kv where k = ?", (random.randint(1, 10000),)).fetchone(), n),
                timed(lambda: s.execute("insert into log values (?, ?)", (1, "x")), n // 4),
            )
            s.close()
        finally:
            proc.terminate()
            proc.wait(30)
    base_read = summary(results["psycopg 3"][0])[0]
    base_write = summary(results["psycopg 3"][1])[0]
    print(f"{n:,} point selects and {n // 4:,} autocommit inserts per client, one connection, "
          f"sqld --synchronous full; µs per call\n")
    print("| client | select mean | p50 | p99 | vs psycopg | insert mean | p50 | p99 | vs psycopg |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, (reads, writes) in results.items():
        r, w = summary(reads), summary(writes)
        print(f"| {name} | {r[0]:.0f} | {r[1]:.0f} | {r[2]:.0f} | {base_read / r[0]:.2f}x | "
              f"{w[0]:.0f} | {w[1]:.0f} | {w[2]:.0f} | {base_write / w[0]:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
