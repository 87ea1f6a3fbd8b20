"""FDB operations and round trips per SQL statement of the mvsqlite backend, on the simulator.

    .venv/bin/python benchmarks/mvsqlite.py                 # everything (~3 s)
    .venv/bin/python benchmarks/mvsqlite.py --reps 500 --skip-limits

FoundationDB cannot run here, so the backend runs on ``SimDatabase`` (in-process, FDB's
semantics, ``seed=1``, no backoff): what is counted is exact, wall-clock time is not shown
(it says nothing about a real cluster). One database (prefix ``bench/main/``), two backend
instances on it as two sqld processes would be ("A" measured, "B" a second writer), and
fresh instances for the cold rows (a new process: empty page cache, same FDB).

Setup: ``t(id integer primary key, v text)`` with ``--rows`` rows (10,000) of 100-byte text,
loaded in one transaction; then A's reader and writer each run a full scan and point reads
(the warm-up: every page in A's page cache, every page in SQLite's cache of the connection).

Each row of the table is one operation repeated N times (``--reps``, 200, for the point
operations; fewer for scans and cold starts), and per repetition the deltas of

* the simulator's ``stats``: ``reads`` (get and get_range calls), ``commits``, ``grv``;
* the page store's ``stats.cache_hits`` (page → hash and hash → content hits);
* this script's probe, which wraps ``SimTransaction.get/get_range/commit`` (class-level, for
  this process only, restored at exit): reads by key kind (``P l`` change log, ``P i`` page
  index, ``P c`` page content, other), change-log entries returned, commits that carry
  writes vs empty ones (read-only commits send nothing on a real cluster), and bytes written
  (the sum of the values of the set / versionstamped-key mutations of each commit);

averaged per statement (per transaction for the large one). **Round trips** = reads +
commits with writes: each is one request and its answer, issued one after another by the
page store. GRVs (read versions) are listed apart: a real FDB client batches concurrent GRV
requests, but one transaction still waits for its read version before its first read.

``--skip-limits`` skips the limits probe (a 95 MB and a 105 MB transaction, a write
transaction and a read-only one kept open past FDB's 5 s, the clock moved by
``SimDatabase.advance``; ~2 s, ~400 MB of memory).

Prints markdown to stdout and writes it to ``benchmarks/results/mvsqlite-latest.md`` (or
``--output``). Nothing outside this process is started; nothing is written but that file.
"""

from __future__ import annotations

import argparse
import collections
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import apsw  # noqa: E402

from sqld.backends.mvsqlite.backend import MvsqliteBackend  # noqa: E402
from sqld.backends.mvsqlite.simulator import SimDatabase, SimTransaction  # noqa: E402

PREFIX = b"bench/main/"
KINDS = {"l": "log", "i": "index", "c": "content"}


# -- the probe ---------------------------------------------------------------------------------


class Probe:
    """Counts what the page store asks of FDB, by key kind, by wrapping SimTransaction."""

    def __init__(self) -> None:
        self.c: collections.Counter = collections.Counter()
        self.commit_sizes: list[int] = []  # FDB's size of each commit with writes (mutations + conflict ranges)
        self._saved = None

    @staticmethod
    def _kind(key: bytes) -> str:
        if key.startswith(PREFIX) and len(key) > len(PREFIX):
            return KINDS.get(chr(key[len(PREFIX)]), "other")
        return "other"

    def install(self) -> None:
        get, get_range, commit = SimTransaction.get, SimTransaction.get_range, SimTransaction.commit
        self._saved = (get, get_range, commit)
        probe = self

        def p_get(tr, key, snapshot=False):
            probe.c["read:" + probe._kind(key)] += 1
            return get(tr, key, snapshot)

        def p_get_range(tr, begin, end, limit=0, reverse=False, snapshot=False):
            rows = get_range(tr, begin, end, limit, reverse, snapshot)
            kind = probe._kind(begin)
            probe.c["read:" + kind] += 1
            if kind == "log":
                probe.c["log_rows"] += len(rows)
            return rows

        def p_commit(tr):
            if tr._mutations or tr._write_ranges:
                probe.c["commit:writes"] += 1
                probe.commit_sizes.append(tr._size())
                for op in tr._mutations:
                    if op[0] == "set":
                        probe.c["bytes"] += len(op[2])
                        if probe._kind(op[1]) == "content":
                            probe.c["contents_written"] += 1
                    elif op[0] == "stamp":
                        probe.c["bytes"] += len(op[3])
                        if probe._kind(op[1]) == "log":  # commit id (16 bytes), then 4 per changed page
                            probe.c["pages_changed"] += (len(op[3]) - 16) // 4
            else:
                probe.c["commit:empty"] += 1
            return commit(tr)

        SimTransaction.get, SimTransaction.get_range, SimTransaction.commit = p_get, p_get_range, p_commit

    def uninstall(self) -> None:
        if self._saved:
            SimTransaction.get, SimTransaction.get_range, SimTransaction.commit = self._saved
            self._saved = None


@dataclass
class Row:
    label: str
    reps: int
    per: str = "statement"
    sums: collections.Counter = field(default_factory=collections.Counter)

    def avg(self, key: str) -> float:
        return self.sums[key] / self.reps

    @property
    def round_trips(self) -> float:
        return self.avg("reads") + self.avg("commit:writes")


class Bench:
    def __init__(self, fdb: SimDatabase, probe: Probe) -> None:
        self.fdb = fdb
        self.probe = probe
        self.rows: list[Row] = []

    def measure(self, label: str, reps: int, stmt, setup=None, teardown=None, per: str = "statement") -> Row:
        """``setup(i)`` -> (ctx, store) is not counted; ``stmt(ctx, i)`` is; ``teardown(ctx)``."""
        row = Row(label, reps, per)
        for i in range(reps):
            ctx, store = setup(i) if setup else (None, None)
            s0 = dict(self.fdb.stats)
            p0 = collections.Counter(self.probe.c)
            h0 = store.stats.cache_hits if store is not None else 0
            ctx2 = stmt(ctx, i)
            if store is None and isinstance(ctx2, MvsqliteBackend):
                store, h0 = ctx2.store, 0
            for k in ("reads", "commits", "grv"):
                row.sums[k] += self.fdb.stats[k] - s0[k]
            row.sums.update(self.probe.c - p0)
            if store is not None:
                row.sums["hits"] += store.stats.cache_hits - h0
            if teardown:
                teardown(ctx if ctx is not None else ctx2)
        self.rows.append(row)
        print(f"  {label}: {row.round_trips:.2f} round trips", file=sys.stderr)
        return row


def rows_of(conn, sql, params=()):
    _, rows, handle = conn.start(sql, params, 1_000_000_000)
    assert handle is None
    return rows


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def breakdown(row: Row) -> str:
    parts = []
    for kind in ("log", "index", "content", "other"):
        v = row.avg("read:" + kind)
        if v:
            parts.append(f"{kind} {fmt(v)}")
    return ", ".join(parts) or "–"


def table(rows: list[Row]) -> str:
    out = ["| operation | reps | FDB reads | commits (with writes) | GRVs | **round trips** (reads + commits) | + GRVs | reads by key | change-log entries read | page-cache hits | pages changed / contents written | bytes written |",
           "|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|"]
    for r in rows:
        commits = fmt(r.avg("commit:writes"))
        if r.avg("commit:empty"):
            commits += f" (+{fmt(r.avg('commit:empty'))} empty)"
        out.append("| " + " | ".join([
            r.label + (f" (per {r.per})" if r.per != "statement" else ""),
            str(r.reps), fmt(r.avg("reads")), commits, fmt(r.avg("grv")), f"**{fmt(r.round_trips)}**",
            fmt(r.round_trips + r.avg("grv")), breakdown(r), fmt(r.avg("log_rows")), fmt(r.avg("hits")),
            f"{fmt(r.avg('pages_changed'))} / {fmt(r.avg('contents_written'))}" if r.avg("commit:writes") else "–",
            fmt(r.avg("bytes")),
        ]) + " |")
    return "\n".join(out)


# -- the workload ------------------------------------------------------------------------------


def new_backend(fdb: SimDatabase) -> MvsqliteBackend:
    b = MvsqliteBackend(fdb, PREFIX)
    b.open()
    return b


def run(args) -> str:
    probe = Probe()
    probe.install()
    try:
        return _run(args, probe)
    finally:
        probe.uninstall()


def _run(args, probe: Probe) -> str:
    t_start = time.monotonic()
    fdb = SimDatabase(seed=1, backoff=False)
    bench = Bench(fdb, probe)
    rng = random.Random(1)
    n, rows_n = args.reps, args.rows
    cold_n = max(5, n // 4)

    print("setup: load and warm up", file=sys.stderr)
    a = new_backend(fdb)
    w = a.writer()
    w.run("create table t(id integer primary key, v text)")
    w.run("begin")
    w.start("insert into t(id, v) select x, printf('%0100d', x) from "
            "(with recursive c(x) as (select 1 union all select x + 1 from c where x < ?) select x from c)",
            (rows_n,), 1)
    w.run("commit")
    r = a.open_reader()
    for conn in (r, w):
        assert rows_of(conn, "select count(*), sum(length(v)) from t") == [(rows_n, rows_n * 100)]
        for _ in range(50):
            rows_of(conn, "select v from t where id = ?", (rng.randint(1, rows_n),))
    b = new_backend(fdb)  # a second process, writing now and then
    bw = b.writer()
    rows_of(bw, "select count(*) from t")
    pages = rows_of(w, "pragma page_count")[0][0]

    def fresh(_i):
        fb = new_backend(fdb)
        return (fb, fb.open_reader()), fb.store

    def close(ctx):
        (ctx[0] if isinstance(ctx, tuple) else ctx).close()

    def process_start(_ctx, _i):
        fb = new_backend(fdb)
        fb.open_reader()
        return fb

    point = "select v from t where id = ?"
    rng_key = lambda: rng.randint(1, rows_n)  # noqa: E731

    bench.measure("warm point read by key", n, lambda _c, i: rows_of(r, point, (rng_key(),)), setup=lambda i: (None, a.store))
    bench.measure("warm point read, another process commits between reads", n,
                  lambda _c, i: rows_of(r, point, (rng_key(),)),
                  setup=lambda i: (rows_of(bw, "update t set v = ? where id = ?", (f"b{i:099d}", rng_key())), a.store))
    bench.measure("cold point read: first statement of a new process", cold_n,
                  lambda ctx, i: rows_of(ctx[1], point, (rng_key(),)), setup=fresh, teardown=close)
    bench.measure("new process: `open()` + `open_reader()`", cold_n, process_start, teardown=close,
                  per="process")
    for conn in (r, w):  # warm again: B's commits above ended A's cached entries of the pages they changed
        rows_of(conn, "select sum(length(v)) from t")
    bench.measure("warm point write: autocommit `UPDATE t SET v = ? WHERE id = ?`", n,
                  lambda _c, i: rows_of(w, "update t set v = ? where id = ?", (f"a{i:099d}", rng_key())),
                  setup=lambda i: (None, a.store))
    bench.measure("autocommit `INSERT INTO t(v) VALUES (?)`", n,
                  lambda _c, i: rows_of(w, "insert into t(v) values (?)", (f"i{i:099d}",)),
                  setup=lambda i: (None, a.store))
    history = fdb.stats["committed"]
    bench.measure("new process: `open()` + `open_reader()`, after the writes above", cold_n, process_start,
                  teardown=close, per="process")
    rng_sql = "select sum(length(v)) from t where id between ? and ?"

    def rng_params():
        lo = rng.randint(1, rows_n - 1000)
        return (lo, lo + 999)

    for conn in (r,):  # A's reader: warm again after the writes (page cache; SQLite's cache was dropped)
        rows_of(conn, "select sum(length(v)) from t")
    bench.measure("warm range scan: `sum(length(v))`, `id BETWEEN ? AND ?` (1,000 rows)", max(10, n // 4),
                  lambda _c, i: rows_of(r, rng_sql, rng_params()), setup=lambda i: (None, a.store))
    bench.measure("cold range scan (1,000 rows): first statement of a new process", max(3, n // 20),
                  lambda ctx, i: rows_of(ctx[1], rng_sql, rng_params()), setup=fresh, teardown=close)

    def full_after_write(_i):
        rows_of(bw, "update t set v = ? where id = ?", (f"f{_i:099d}", rng_key()))
        return None, a.store

    bench.measure(f"warm full scan `SELECT sum(length(v)) FROM t` ({rows_n + n:,} rows), another process "
                  "committed one UPDATE before each", max(5, n // 10),
                  lambda _c, i: rows_of(r, "select sum(length(v)) from t"), setup=full_after_write)
    pages_now = rows_of(r, "pragma page_count")[0][0]
    bench.measure(f"cold full scan ({pages_now:,} pages): first statement of a new process", 3,
                  lambda ctx, i: rows_of(ctx[1], "select sum(length(v)) from t"), setup=fresh, teardown=close)

    # The large transaction: multi-phase (staging in ~2 MB FDB transactions, then one small commit).
    w.run("create table big(id integer primary key, b blob)")
    big_mb = args.big_mb
    sizes_at = len(probe.commit_sizes)

    def large(_c, _i):
        w.run("begin")
        for _ in range(big_mb):
            w.start("insert into big(b) values (randomblob(1000000))", (), 1)
        w.run("commit")

    big_reps = 2
    bench.measure(f"large transaction: `BEGIN`, {big_mb} × `INSERT` of a 1 MB blob, `COMMIT`", big_reps, large,
                  setup=lambda i: (None, a.store), per="transaction")
    sizes = probe.commit_sizes[sizes_at:]
    per_txn = len(sizes) // big_reps
    last = sizes[per_txn - 1] if per_txn else 0
    staged = sizes[: per_txn - 1]
    assert rows_of(r, "select count(*), sum(length(b)) from big") == [(big_reps * big_mb, big_reps * big_mb * 1_000_000)]

    # GC, then a new process again: the change log it reads is only what came after the horizon.
    a.store.gc(a.store.current_version())
    bench.measure("new process: `open()` + `open_reader()`, after `PageStore.gc(now)`", cold_n, process_start,
                  teardown=close, per="process")

    limits = "" if args.skip_limits else limits_probe()
    a.close()
    b.close()

    warm_read = bench.rows[0]
    write = bench.rows[4]
    lines = [
        f"### FDB operations per statement (sqld's mvsqlite on the FDB simulator, {time.strftime('%Y-%m-%d')})",
        "",
        f"`t`: {rows_n:,} rows of 100-byte text, {pages:,} pages of 4 KiB. Python {platform.python_version()}, "
        f"SQLite {apsw.sqlite_lib_version()}, `--reps {n}`. Averages per statement unless the row says otherwise.",
        "",
        table(bench.rows),
        "",
        f"Large transaction, per transaction: {len(staged)} staging commits ("
        + ", ".join(f"{k} × {v / 1e6:.2f} MB" for v, k in sorted(collections.Counter(staged).items(), reverse=True))
        + f"; FDB's size: mutations + conflict ranges), then the final commit of {last / 1e6:.2f} MB "
        "(FDB's limit per commit is 10 MB).",
        f"FDB commits before the \"after the writes\" process start: {history:,}. A new process reads the "
        "change log from its beginning, or from the last `PageStore.gc` horizon.",
        "",
        "**Goal** (a warm point read costs at most one FDB round trip, a point write at most two): "
        f"warm point read {fmt(warm_read.round_trips)} round trip(s) (+{fmt(warm_read.avg('grv'))} GRV), "
        f"point write {fmt(write.round_trips)} (+{fmt(write.avg('grv'))} GRV): "
        + ("**met**" if warm_read.round_trips <= 1 and write.round_trips <= 2 else "**not met**")
        + " when GRVs are not counted; with them, "
        + f"{fmt(warm_read.round_trips + warm_read.avg('grv'))} and {fmt(write.round_trips + write.avg('grv'))}.",
    ]
    if limits:
        lines += ["", limits]
    lines += ["", f"Run time {time.monotonic() - t_start:.1f} s."]
    return "\n".join(lines) + "\n"


def limits_probe() -> str:
    """What the largest transaction is, and what FDB's 5 s does to long transactions."""
    print("limits probe", file=sys.stderr)
    fdb = SimDatabase(seed=2, backoff=False)
    be = MvsqliteBackend(fdb, b"bench/limits/")
    be.open()
    w = be.writer()
    w.run("create table big(b blob)")
    out = ["Limits (a separate database on a fresh simulator):", ""]
    for mb in (95, 105):
        w.run("begin")
        try:
            for _ in range(mb):
                w.start("insert into big values (randomblob(1000000))", (), 1)
            w.run("commit")
            out.append(f"- one transaction of {mb} × 1 MB blobs: committed")
        except Exception as exc:  # noqa: BLE001 - reporting what the client would see
            out.append(f"- one transaction of {mb} × 1 MB blobs: **failed**, {getattr(exc, 'sqlstate', '?')} "
                       f"\"{exc}\"")
            if w.in_transaction():
                w.run("rollback")
    w.run("begin")
    w.start("insert into big values (1)", (), 1)
    fdb.advance(6)
    try:
        w.run("commit")
        out.append("- a write transaction open for 6 s: committed")
    except Exception as exc:  # noqa: BLE001
        out.append(f"- a write transaction open for 6 s: fails at COMMIT, {getattr(exc, 'sqlstate', '?')} \"{exc}\"")
        if w.in_transaction():
            w.run("rollback")
    rd = be.open_reader()
    rd.run("begin")
    first = rows_of(rd, "select count(*) from big")
    fdb.advance(6)
    second = rows_of(rd, "select count(*) from big")
    rd.run("commit")
    out.append(f"- a read-only transaction open for 6 s: reads on at its snapshot (count {first[0][0]}, "
               f"then {second[0][0]})")
    be.close()
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200, help="repetitions of each point operation (default 200)")
    ap.add_argument("--rows", type=int, default=10_000, help="rows in t (default 10,000)")
    ap.add_argument("--big-mb", type=int, default=20, help="MB in the large transaction (default 20)")
    ap.add_argument("--skip-limits", action="store_true", help="skip the 95/105 MB and 5 s probe")
    ap.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "mvsqlite-latest.md"))
    args = ap.parse_args()
    if args.rows < 2000:
        ap.error("--rows must be at least 2,000 (the range scan reads 1,000)")
    text = run(args)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
