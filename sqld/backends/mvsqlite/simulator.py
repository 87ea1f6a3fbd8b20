"""An in-process FoundationDB: the port (``fdbport``) with FDB's semantics, for tests and
for machines without a cluster.

``SimDatabase`` keeps every key's versions (MVCC) and hands out versions from a clock, about
1,000,000 a second as FDB does; ``advance(seconds)`` moves that clock on (to reach the 5 s
``transaction_too_old`` limit without sleeping). Transactions read at their read version
with their own writes overlaid, record read- and write-conflict ranges as FDB's client does,
and commit optimistically: a commit fails with ``not_committed`` (1020) when a transaction
that committed after its read version wrote into a range it read. Only the last 5 s of
committed write ranges are kept.

Faults can be injected with seeded probabilities (``Faults``): ``conflict`` (commit fails
with 1020, nothing applied), ``unknown_result`` (commit fails with 1021, applied or not, even
odds), ``in_flight`` (1021 while the commit is still on its way: it lands or conflicts at a
later commit), ``too_old`` (a read fails with 1007), ``batch`` (a commit shares the commit
version of the one before, as one proxy batch does). ``hang()`` makes the cluster stop
answering (calls wait for ``transaction_timeout``, then 1031). ``read_limit`` bounds the bytes
one transaction reads (then 1007, as a scan longer than FDB's 5 s gets), ``fail_reads(code)``
fails the next reads with a code (1037, 1213, …). ``SimDatabase.stats`` counts
round trips (``reads``, ``commits``, ``grv``) and errors, per kind.

Thread-safe: one lock guards the database; a transaction belongs to one thread at a time.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections import deque
from typing import Callable, Iterator, Mapping, Sequence

from sqld.backends.mvsqlite.fdbport import (
    COMMIT_UNKNOWN_RESULT,
    FUTURE_VERSION,
    KEY_LIMIT,
    KEY_TOO_LARGE,
    MAX_READ_AGE,
    NOT_COMMITTED,
    RETRYABLE,
    TRANSACTION_CANCELLED,
    TRANSACTION_LIMIT,
    TRANSACTION_TIMED_OUT,
    TRANSACTION_TOO_LARGE,
    TRANSACTION_TOO_OLD,
    VALUE_LIMIT,
    VALUE_TOO_LARGE,
    VERSIONS_PER_SECOND,
    FDBError,
)

# Codes only the simulator raises (FDB's error_codes.html).
CLIENT_INVALID_OPERATION = 2000
KEY_OUTSIDE_LEGAL_RANGE = 2004
INVERTED_RANGE = 2005
USED_DURING_COMMIT = 2017
NO_COMMIT_VERSION = 2021

VERSIONSTAMP_SIZE = 10
MAX_KEY = b"\xff"  # keys at or after it are FDB's system keys

# on_error's backoff: FDB's shape (grows ×2, with jitter), smaller numbers.
BACKOFF_INITIAL = 0.001
BACKOFF_MAX = 0.1

# Tombstones older than the read window are swept at most this often (in versions).
SWEEP_EVERY = VERSIONS_PER_SECOND

STAT_KEYS = (
    "grv",  # read versions obtained
    "reads",  # get and get_range calls
    "commits",  # commit calls
    "committed",  # commits applied (with writes; an applied unknown_result counts too)
    "conflicts",  # 1020 from a real conflict
    "too_old",  # 1007 from a real old read version
    "retries",  # on_error calls that reset for another attempt
    "injected_conflict",
    "injected_unknown_result",
    "injected_unknown_result_applied",  # of those, the ones whose writes were applied
    "injected_too_old",
    "injected_in_flight",  # 1021 answered while the commit was still on its way
    "in_flight_landed",  # of those, the ones that later committed
    "in_flight_dropped",  # and the ones that later conflicted (a fence) or grew too old
    "batched",  # commits that shared the commit version of the one before
    "timed_out",  # 1031 after waiting for a cluster that did not answer
    "over_read_limit",  # 1007 for a transaction that read more than read_limit bytes
    "injected_read_error",  # fail_reads()
)


@dataclasses.dataclass
class Faults:
    """Probabilities (0..1) of injected failures; change them at any time."""

    conflict: float = 0.0  # a commit with writes fails with 1020, nothing applied
    unknown_result: float = 0.0  # a commit with writes fails with 1021; applied half the time
    too_old: float = 0.0  # a get or get_range fails with 1007
    in_flight: float = 0.0  # a commit with writes fails with 1021 and lands (or conflicts) later
    batch: float = 0.0  # a commit joins the previous one's batch: same 8-byte commit version


def _as_bytes(b: object, what: str) -> bytes:
    if isinstance(b, bytes):
        return b
    if isinstance(b, (bytearray, memoryview)):
        return bytes(b)
    raise TypeError(f"{what} must be bytes, not {type(b).__name__}")


def key_after(key: bytes) -> bytes:
    """The first key after ``key`` (FDB's keyAfter)."""
    return key + b"\x00"


def _merge(ranges: Sequence[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """Sorted, coalesced ``ranges`` as (begins, ends), disjoint and ascending."""
    begins: list[bytes] = []
    ends: list[bytes] = []
    for b, e in sorted(r for r in ranges if r[0] < r[1]):
        if ends and b <= ends[-1]:
            if e > ends[-1]:
                ends[-1] = e
        else:
            begins.append(b)
            ends.append(e)
    return begins, ends


def _intersects(begins: list[bytes], ends: list[bytes], b: bytes, e: bytes) -> bool:
    """Whether [b, e) meets one of the disjoint ascending ranges."""
    i = bisect_right(ends, b)
    return i < len(begins) and begins[i] < e


class SimDatabase:
    """An in-process FoundationDB database (see the module docstring).

    ``clock``: seconds, monotonic (versions follow it); ``seed``: for injected faults;
    ``faults``: a ``Faults`` or a mapping of its fields, and ``conflict``, ``unknown_result``,
    ``too_old`` override single fields; ``backoff=False``: ``on_error`` does not sleep;
    ``transaction_timeout`` (seconds, None: none, FDB's default): every transaction made
    after it is set fails with 1031 once that old (FDB's database option of that name).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, seed: int | None = None,
                 faults: Faults | Mapping[str, float] | None = None, backoff: bool = True,
                 conflict: float | None = None, unknown_result: float | None = None,
                 too_old: float | None = None, transaction_timeout: float | None = None,
                 read_limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self.transaction_timeout = transaction_timeout
        # Bytes (keys and values) one transaction may read: past it, 1007, as a real cluster
        # answers a transaction whose reads took longer than its 5 s (None: no limit).
        self.read_limit = read_limit
        self._read_errors: list[int] = []  # fail_reads(): codes the next reads fail with
        self._answering = threading.Condition()
        self._down = False  # hang(): the cluster does not answer
        self._order = 0  # the order (2 bytes of the versionstamp) of the last commit in its batch
        self._batch_open = False  # no read version handed out since the last commit
        self._in_flight: list[_InFlight] = []
        self.in_flight_wait: int | None = None  # later commits an in-flight one lets pass (None: 0-2)
        self._clock = clock
        self._t0 = clock()
        self._offset = 0  # versions added by advance()
        self._version = 0  # the last version handed out (read or commit); never goes back
        self._keys: list[bytes] = []  # every stored key, sorted
        self._data: dict[bytes, list[tuple[int, bytes | None]]] = {}  # key -> ascending versions
        self._dead: dict[bytes, int] = {}  # key -> version of its latest tombstone
        self._swept_at = 0
        self._history: deque[tuple[int, list[bytes], list[bytes]]] = deque()  # committed writes
        self.backoff = backoff
        self.seed = seed
        self._rng = random.Random(seed)
        self._jitter = random.Random()
        if isinstance(faults, Faults):
            self.faults = faults
        else:
            self.faults = Faults(**(faults or {}))
        for name, p in (("conflict", conflict), ("unknown_result", unknown_result),
                        ("too_old", too_old)):
            if p is not None:
                setattr(self.faults, name, p)
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)

    # -- the port ---------------------------------------------------------------------------

    def create_transaction(self) -> SimTransaction:
        return SimTransaction(self)

    # -- time and inspection ----------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the simulator's time forward by ``seconds`` (versions advance with it)."""
        with self._lock:
            self._offset += int(seconds * VERSIONS_PER_SECOND)

    def current_version(self) -> int:
        """The version a read version obtained now would get."""
        with self._lock:
            return self._now()

    def fail_reads(self, code: int, count: int = 1) -> None:
        """The next ``count`` reads (of any transaction) fail with ``code`` (e.g. 1037)."""
        with self._lock:
            self._read_errors.extend([code] * count)

    def reset_stats(self) -> None:
        with self._lock:
            for k in self.stats:
                self.stats[k] = 0

    def committed_items(self, begin: bytes = b"", end: bytes = MAX_KEY) -> list[tuple[bytes, bytes]]:
        """The latest committed key-values in [begin, end), for tests; not counted in stats."""
        with self._lock:
            out = []
            for k in self._keys[bisect_left(self._keys, begin):bisect_left(self._keys, end)]:
                v = self._data[k][-1][1]
                if v is not None:
                    out.append((k, v))
            return out

    # -- internals (call with the lock held) ------------------------------------------------

    def _now(self) -> int:
        clock = int((self._clock() - self._t0) * VERSIONS_PER_SECOND) + self._offset
        return max(self._version, clock)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def _grv(self) -> int:
        with self._lock:
            self._version = self._now()
            self._batch_open = False  # a read version sees whole batches only
            self.stats["grv"] += 1
            return self._version

    def _roll(self, p: float) -> bool:
        return p > 0 and self._rng.random() < p

    def _check_read_version(self, rv: int) -> None:
        now = self._now()
        if rv > now:
            raise FDBError(FUTURE_VERSION)
        if now - rv > MAX_READ_AGE:
            self.stats["too_old"] += 1
            raise FDBError(TRANSACTION_TOO_OLD)

    def _value_at(self, key: bytes, rv: int) -> bytes | None:
        versions = self._data.get(key)
        if not versions:
            return None
        i = bisect_right(versions, rv, key=lambda item: item[0])
        return versions[i - 1][1] if i else None

    def _scan(self, begin: bytes, end: bytes, rv: int, reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        lo = bisect_left(self._keys, begin)
        hi = bisect_left(self._keys, end)
        indices = range(hi - 1, lo - 1, -1) if reverse else range(lo, hi)
        for i in indices:
            k = self._keys[i]
            v = self._value_at(k, rv)
            if v is not None:
                yield k, v

    def _write(self, key: bytes, value: bytes | None, version: int, horizon: int) -> None:
        versions = self._data.get(key)
        if versions is None:
            if value is None:
                return  # clearing a key that never existed
            versions = self._data[key] = []
            insort(self._keys, key)
        elif versions[-1][1] is None and value is None:
            return  # already cleared
        if versions and versions[-1][0] == version:
            versions[-1] = (version, value)
        else:
            versions.append((version, value))
        # Keep the newest version at or below the horizon and everything after it.
        i = bisect_right(versions, horizon, key=lambda item: item[0])
        if i > 1:
            del versions[:i - 1]
        if value is None:
            self._dead[key] = version
        else:
            self._dead.pop(key, None)

    def _sweep(self, horizon: int) -> None:
        """Forget keys whose latest version is a tombstone no reader can look past."""
        gone = [k for k, v in self._dead.items() if v <= horizon]
        for k in gone:
            del self._dead[k]
            del self._data[k]
            del self._keys[bisect_left(self._keys, k)]
        self._swept_at = horizon

    def _commit(self, tr: SimTransaction, rv: int, size: int) -> bytes:
        """Check and apply ``tr``'s writes at a new version; return the commit's versionstamp."""
        if size > TRANSACTION_LIMIT:
            raise FDBError(TRANSACTION_TOO_LARGE)  # the client checks before sending
        with self._lock:
            self._land_due()
            self._check_read_version(rv)
            if self._roll(self.faults.conflict):
                self.stats["injected_conflict"] += 1
                raise FDBError(NOT_COMMITTED)
            if self._conflicts(tr._read_ranges, rv):
                self.stats["conflicts"] += 1
                raise FDBError(NOT_COMMITTED)
            if self._roll(self.faults.in_flight):
                # The answer is lost while the commit is still on its way: it is resolved
                # later, against what committed meanwhile (a fence can still stop it).
                self.stats["injected_in_flight"] += 1
                wait = self._rng.randint(0, 2) if self.in_flight_wait is None else self.in_flight_wait
                self._in_flight.append(_InFlight(rv, list(tr._read_ranges), list(tr._mutations),
                                                 list(tr._write_ranges), wait))
                raise FDBError(COMMIT_UNKNOWN_RESULT)
            unknown = self._roll(self.faults.unknown_result)
            if unknown:
                self.stats["injected_unknown_result"] += 1
                if not self._rng.random() < 0.5:
                    raise FDBError(COMMIT_UNKNOWN_RESULT)
                self.stats["injected_unknown_result_applied"] += 1
            stamp = self._apply(tr._mutations, tr._write_ranges)
            if unknown:
                raise FDBError(COMMIT_UNKNOWN_RESULT)
            return stamp

    def _conflicts(self, read_ranges: list[tuple[bytes, bytes]], rv: int) -> bool:
        """Whether a commit after ``rv`` wrote into one of ``read_ranges``."""
        if not read_ranges:
            return False
        rbegins, rends = _merge(read_ranges)
        for version, wbegins, wends in reversed(self._history):
            if version <= rv:
                break
            if any(_intersects(rbegins, rends, b, e) for b, e in zip(wbegins, wends)):
                return True
        return False

    def _apply(self, mutations: list[tuple], write_ranges: list[tuple[bytes, bytes]]) -> bytes:
        """Apply a checked commit; return its versionstamp. It joins the batch of the commit
        before (same 8-byte version, next order) when ``faults.batch`` says so and no read
        version was handed out since: FDB gives no read version inside an unfinished batch."""
        if self._batch_open and self._roll(self.faults.batch):
            version, order = self._version, self._order + 1
            self.stats["batched"] += 1
        else:
            version, order = max(self._version + 1, self._now()), 0
        self._version, self._order, self._batch_open = version, order, True
        horizon = version - MAX_READ_AGE
        stamp = version.to_bytes(8, "big") + order.to_bytes(2, "big")
        for op in mutations:
            if op[0] == "set":
                self._write(op[1], op[2], version, horizon)
            elif op[0] == "clear":
                b, e = op[1], op[2]
                for k in self._keys[bisect_left(self._keys, b):bisect_left(self._keys, e)]:
                    self._write(k, None, version, horizon)
            else:  # versionstamped key: no write conflict of its own, as in FDB
                key, offset, value = op[1], op[2], op[3]
                key = key[:offset] + stamp + key[offset + VERSIONSTAMP_SIZE:]
                self._write(key, value, version, horizon)
        wbegins, wends = _merge(write_ranges)
        self._history.append((version, wbegins, wends))
        while self._history and self._history[0][0] <= horizon:
            self._history.popleft()
        if horizon - self._swept_at >= SWEEP_EVERY:
            self._sweep(horizon)
        self.stats["committed"] += 1
        return stamp

    def _land_due(self) -> None:
        """In-flight commits whose turn came (each waits for a few later commits) land now,
        ahead of the commit that arrived: conflict-checked against all since their read."""
        due = [c for c in self._in_flight if c.wait <= 0]
        for c in self._in_flight:
            c.wait -= 1
        for c in due:
            self._in_flight.remove(c)
            self._land(c)

    def _land(self, c: _InFlight) -> None:
        now = self._now()
        if now - c.rv > MAX_READ_AGE or self._conflicts(c.read_ranges, c.rv):
            self.stats["in_flight_dropped"] += 1
            return
        self._apply(c.mutations, c.write_ranges)
        self.stats["in_flight_landed"] += 1

    def land_in_flight(self) -> None:
        """Resolve every commit still in flight now (each lands or conflicts), for tests."""
        with self._lock:
            pending, self._in_flight = self._in_flight, []
            for c in pending:
                self._land(c)

    # -- a cluster that does not answer -------------------------------------------------------

    def hang(self) -> None:
        """The cluster stops answering: every call waits until ``resume`` or until its
        transaction's timeout (then 1031), forever when no timeout is set (FDB's default)."""
        with self._answering:
            self._down = True

    def resume(self) -> None:
        with self._answering:
            self._down = False
            self._answering.notify_all()

    def _answer(self, deadline: float | None) -> None:
        """Wait for the cluster as a call to it would; 1031 once the transaction timed out."""
        if deadline is not None and time.monotonic() >= deadline:
            raise FDBError(TRANSACTION_TIMED_OUT)
        if not self._down:
            return
        with self._answering:
            while self._down:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.stats["timed_out"] += 1
                    raise FDBError(TRANSACTION_TIMED_OUT)
                self._answering.wait(left)


@dataclasses.dataclass(eq=False)
class _InFlight:
    """A commit whose client was told 1021 while it was still on its way."""

    rv: int
    read_ranges: list
    mutations: list
    write_ranges: list
    wait: int  # later commits to let pass before it lands


class SimTransaction:
    """A transaction of a ``SimDatabase`` (the port's ``Transaction``)."""

    def __init__(self, db: SimDatabase) -> None:
        self._db = db
        self._delay = BACKOFF_INITIAL
        self._start_timeout()
        self._clear_state()

    def _start_timeout(self) -> None:
        # From creation or reset, not from on_error (FDB's rule since API version 610).
        timeout = self._db.transaction_timeout
        self._deadline = time.monotonic() + timeout if timeout else None

    def _clear_state(self) -> None:
        self._read_version: int | None = None
        self._read_bytes = 0
        self._cancelled = False
        self._commit_started = False
        self._committed_version = -1
        self._versionstamp: bytes | None = None
        # Buffered writes: the mutation log (applied in order at commit) and, for reading
        # one's own writes, the latest set or clear of each key plus the cleared ranges.
        self._mutations: list[tuple] = []
        self._sets: dict[bytes, bytes | None] = {}
        self._set_keys: list[bytes] = []  # the keys of _sets, sorted
        self._cleared: tuple[list[bytes], list[bytes]] = ([], [])
        self._read_ranges: list[tuple[bytes, bytes]] = []
        self._write_ranges: list[tuple[bytes, bytes]] = []

    # -- state checks -----------------------------------------------------------------------

    def _usable(self) -> None:
        if self._cancelled:
            raise FDBError(TRANSACTION_CANCELLED)
        if self._commit_started:
            raise FDBError(USED_DURING_COMMIT)

    def _rv(self) -> int:
        if self._read_version is None:
            self._db._answer(self._deadline)
            self._read_version = self._db._grv()
        return self._read_version

    def _start_read(self) -> int:
        """Count a read, obtain the read version, raise 1007/1009 or an injected 1007."""
        db = self._db
        self._usable()
        db._answer(self._deadline)
        rv = self._rv()
        with db._lock:
            db.stats["reads"] += 1
            db._check_read_version(rv)
            if db._roll(db.faults.too_old):
                db.stats["injected_too_old"] += 1
                raise FDBError(TRANSACTION_TOO_OLD)
            if db._read_errors:
                db.stats["injected_read_error"] += 1
                raise FDBError(db._read_errors.pop(0))
        return rv

    def _charge(self, nbytes: int) -> None:
        """Count bytes read against ``read_limit``."""
        self._read_bytes += nbytes
        limit = self._db.read_limit
        if limit is not None and self._read_bytes > limit:
            self._db._count("over_read_limit")
            raise FDBError(TRANSACTION_TOO_OLD)

    def _covered(self, key: bytes) -> bool:
        """Whether one of this transaction's clear ranges covers ``key``."""
        begins, ends = self._cleared
        i = bisect_right(begins, key) - 1
        return i >= 0 and key < ends[i]

    # -- reads ------------------------------------------------------------------------------

    def get_read_version(self) -> int:
        self._usable()
        return self._rv()

    def set_read_version(self, version: int) -> None:
        self._usable()
        self._read_version = version

    def get(self, key: bytes, snapshot: bool = False) -> bytes | None:
        key = _as_bytes(key, "key")
        rv = self._start_read()
        if key in self._sets:
            return self._sets[key]
        if self._covered(key):
            return None
        if not snapshot:
            self._read_ranges.append((key, key_after(key)))
        with self._db._lock:
            value = self._db._value_at(key, rv)
        self._charge(len(key) + len(value or b""))
        return value

    def get_range(self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False,
                  snapshot: bool = False) -> list[tuple[bytes, bytes]]:
        begin = _as_bytes(begin, "begin key")
        end = _as_bytes(end, "end key")
        rv = self._start_read()
        if begin >= end:
            return []
        out: list[tuple[bytes, bytes]] = []
        with self._db._lock:
            for kv in self._overlay(self._db._scan(begin, end, rv, reverse), begin, end, reverse):
                out.append(kv)
                if limit and len(out) >= limit:
                    break
        self._charge(sum(len(k) + len(v) for k, v in out))
        if not snapshot:
            # A read cut short by its limit conflicts only on the part it read.
            if limit and len(out) >= limit:
                if reverse:
                    begin = out[-1][0]
                else:
                    end = key_after(out[-1][0])
            self._add_read_conflict_outside_writes(begin, end)
        return out

    def _overlay(self, stored: Iterator[tuple[bytes, bytes]], begin: bytes, end: bytes,
                 reverse: bool) -> Iterator[tuple[bytes, bytes]]:
        """``stored`` (in order) with this transaction's sets and clears applied."""
        own = self._set_keys[bisect_left(self._set_keys, begin):bisect_left(self._set_keys, end)]
        if reverse:
            own.reverse()
        j = 0
        for k, v in stored:
            while j < len(own) and (own[j] > k if reverse else own[j] < k):
                if self._sets[own[j]] is not None:
                    yield own[j], self._sets[own[j]]
                j += 1
            if k in self._sets or self._covered(k):
                continue
            yield k, v
        for k in own[j:]:
            if self._sets[k] is not None:
                yield k, self._sets[k]

    def _add_read_conflict_outside_writes(self, begin: bytes, end: bytes) -> None:
        """Add [begin, end) minus the keys and ranges this transaction wrote (as FDB's
        read-your-writes layer does: what it wrote itself it did not read from the database)."""
        holes = [(k, key_after(k)) for k in
                 self._set_keys[bisect_left(self._set_keys, begin):bisect_left(self._set_keys, end)]]
        cb, ce = self._cleared
        i = max(bisect_right(ce, begin), 0)
        while i < len(cb) and cb[i] < end:
            holes.append((cb[i], ce[i]))
            i += 1
        hbegins, hends = _merge(holes)
        at = begin
        for hb, he in zip(hbegins, hends):
            if hb > at:
                self._read_ranges.append((at, min(hb, end)))
            at = max(at, he)
        if at < end:
            self._read_ranges.append((at, end))

    # -- writes -----------------------------------------------------------------------------

    def set(self, key: bytes, value: bytes) -> None:
        key = _as_bytes(key, "key")
        value = _as_bytes(value, "value")
        self._usable()
        if len(key) > KEY_LIMIT:
            raise FDBError(KEY_TOO_LARGE)
        if len(value) > VALUE_LIMIT:
            raise FDBError(VALUE_TOO_LARGE)
        if key >= MAX_KEY:
            raise FDBError(KEY_OUTSIDE_LEGAL_RANGE)
        self._put(key, value)
        self._mutations.append(("set", key, value))
        self._write_ranges.append((key, key_after(key)))

    def _put(self, key: bytes, value: bytes | None) -> None:
        if key not in self._sets:
            insort(self._set_keys, key)
        self._sets[key] = value

    def set_versionstamped_key(self, key: bytes, offset: int, value: bytes) -> None:
        key = _as_bytes(key, "key")
        value = _as_bytes(value, "value")
        self._usable()
        if len(key) > KEY_LIMIT:
            raise FDBError(KEY_TOO_LARGE)
        if len(value) > VALUE_LIMIT:
            raise FDBError(VALUE_TOO_LARGE)
        if not 0 <= offset <= len(key) - VERSIONSTAMP_SIZE:
            raise FDBError(CLIENT_INVALID_OPERATION,
                           f"versionstamp offset {offset} out of range for a {len(key)}-byte key")
        if key[:offset] >= MAX_KEY:
            raise FDBError(KEY_OUTSIDE_LEGAL_RANGE)
        self._mutations.append(("stamp", key, offset, value))
        # FDB adds no write-conflict range for it (its key is known only at commit): a reader
        # of such keys conflicts only with an explicit add_write_conflict_range.

    def clear(self, key: bytes) -> None:
        key = _as_bytes(key, "key")
        self._usable()
        if len(key) > KEY_LIMIT:
            return  # no such key can exist; FDB ignores it too
        if key >= MAX_KEY:
            raise FDBError(KEY_OUTSIDE_LEGAL_RANGE)
        self._put(key, None)
        self._mutations.append(("clear", key, key_after(key)))
        self._write_ranges.append((key, key_after(key)))

    def clear_range(self, begin: bytes, end: bytes) -> None:
        begin = _as_bytes(begin, "begin key")
        end = _as_bytes(end, "end key")
        self._usable()
        if begin > end:
            raise FDBError(INVERTED_RANGE)
        if end > MAX_KEY:
            raise FDBError(KEY_OUTSIDE_LEGAL_RANGE)
        if begin == end:
            return
        lo = bisect_left(self._set_keys, begin)
        hi = bisect_left(self._set_keys, end)
        for k in self._set_keys[lo:hi]:
            del self._sets[k]
        del self._set_keys[lo:hi]
        cb, ce = self._cleared
        self._cleared = _merge(list(zip(cb, ce)) + [(begin, end)])
        self._mutations.append(("clear", begin, end))
        self._write_ranges.append((begin, end))

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        begin = _as_bytes(begin, "begin key")
        end = _as_bytes(end, "end key")
        self._usable()
        if begin > end:
            raise FDBError(INVERTED_RANGE)
        if begin < end:
            self._read_ranges.append((begin, end))

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        begin = _as_bytes(begin, "begin key")
        end = _as_bytes(end, "end key")
        self._usable()
        if begin > end:
            raise FDBError(INVERTED_RANGE)
        if begin < end:
            self._write_ranges.append((begin, end))

    # -- commit -----------------------------------------------------------------------------

    def _size(self) -> int:
        size = 0
        for op in self._mutations:
            if op[0] == "stamp":
                size += len(op[1]) + len(op[3])
            else:
                size += len(op[1]) + len(op[2])
        for b, e in self._read_ranges:
            size += len(b) + len(e)
        for b, e in self._write_ranges:
            size += len(b) + len(e)
        return size

    def commit(self) -> None:
        self._usable()
        self._commit_started = True
        self._db._count("commits")
        if not self._mutations and not self._write_ranges:
            return  # read-only: nothing to send, nothing to check
        rv = self._rv()  # a blind write still gets a read version, as in FDB
        self._db._answer(self._deadline)  # a commit sent to a cluster that does not answer: never applied
        stamp = self._db._commit(self, rv, self._size())
        self._committed_version = int.from_bytes(stamp[:8], "big")
        self._versionstamp = stamp

    def get_committed_version(self) -> int:
        """The commit's version; -1 before a commit or for a read-only one (as FDB)."""
        return self._committed_version

    def get_versionstamp(self) -> bytes:
        if self._cancelled:
            raise FDBError(TRANSACTION_CANCELLED)
        if self._versionstamp is None:
            if self._commit_started:
                raise FDBError(NO_COMMIT_VERSION)
            raise FDBError(CLIENT_INVALID_OPERATION, "get_versionstamp before commit")
        return self._versionstamp

    # -- retry, reset, cancel ---------------------------------------------------------------

    def on_error(self, error: FDBError) -> None:
        if not isinstance(error, FDBError) or error.code not in RETRYABLE:
            raise error
        if self._cancelled:
            raise FDBError(TRANSACTION_CANCELLED)
        if self._db.backoff:
            time.sleep(self._delay * self._db._jitter.random())
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        self._db._count("retries")
        self._clear_state()

    def reset(self) -> None:
        self._delay = BACKOFF_INITIAL
        self._start_timeout()
        self._clear_state()

    def cancel(self) -> None:
        self._cancelled = True


if __name__ == "__main__":
    # python -m sqld.backends.mvsqlite.simulator --listen 127.0.0.1:PORT: the simulator in a
    # process of its own, for tests of several sqld processes (simnet.py).
    from sqld.backends.mvsqlite.simnet import main

    main()
