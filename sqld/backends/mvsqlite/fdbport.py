"""The port to FoundationDB: the few transaction operations the page store uses.

Two adapters implement it: ``fdbreal.RealDatabase`` on the ``fdb`` binding (the real
cluster), and ``simulator.SimDatabase`` (in-process, FDB's semantics, for the test suite
and for machines without FDB). Everything above this module speaks only this port.

Semantics are FDB's (https://apple.github.io/foundationdb/developer-guide.html):

* a transaction reads at one read version (``get_read_version``; set on the first read);
  reads see every commit with a version at or below it, and the transaction's own writes;
* non-snapshot reads add read-conflict ranges; ``commit`` fails with ``not_committed``
  (1020) when a transaction that committed after the read version wrote into one of them;
* writes are buffered and applied atomically at ``commit``, at a commit version greater than
  every earlier commit's (``get_committed_version`` after commit);
* ``set_versionstamped_key(key, offset, value)``: the 10 bytes of ``key`` at ``offset`` are
  replaced, at commit, by the commit's versionstamp (8-byte big-endian commit version, then
  a 2-byte order within the commit);
* limits: keys ≤ 10,000 bytes (2102), values ≤ 100,000 bytes (2103), a commit's mutations and
  conflict ranges ≤ 10,000,000 bytes (2101), a read version at most 5 s (5,000,000 versions)
  old (1007 ``transaction_too_old``);
* ``commit_unknown_result`` (1021): the commit may or may not have happened;
* ``on_error(e)``: for a retryable error, wait a little and reset the transaction for
  another attempt; otherwise raise ``e`` again.
"""

from __future__ import annotations

from typing import Protocol, Sequence

KEY_LIMIT = 10_000
VALUE_LIMIT = 100_000
TRANSACTION_LIMIT = 10_000_000
VERSIONS_PER_SECOND = 1_000_000
MAX_READ_AGE = 5 * VERSIONS_PER_SECOND

# The error codes the page store deals with (FDB's error_codes.html).
TRANSACTION_TOO_OLD = 1007
FUTURE_VERSION = 1009
NOT_COMMITTED = 1020
COMMIT_UNKNOWN_RESULT = 1021
TRANSACTION_CANCELLED = 1025
TRANSACTION_TIMED_OUT = 1031
PROCESS_BEHIND = 1037
DATABASE_LOCKED = 1038
CLUSTER_VERSION_CHANGED = 1039
PROXY_MEMORY_LIMIT_EXCEEDED = 1042
BATCH_TRANSACTION_THROTTLED = 1051
GRV_PROXY_MEMORY_LIMIT_EXCEEDED = 1078
TAG_THROTTLED = 1213
TRANSACTION_TOO_LARGE = 2101
KEY_TOO_LARGE = 2102
VALUE_TOO_LARGE = 2103

# What FDB's on_error retries (with backoff) besides conflicts and too-old reads: a loaded or
# recovering cluster. A read that meets one is tried again at the same read version.
TRANSIENT = frozenset((FUTURE_VERSION, PROCESS_BEHIND, DATABASE_LOCKED, CLUSTER_VERSION_CHANGED,
                       PROXY_MEMORY_LIMIT_EXCEEDED, BATCH_TRANSACTION_THROTTLED,
                       GRV_PROXY_MEMORY_LIMIT_EXCEEDED, TAG_THROTTLED))
RETRYABLE = frozenset((TRANSACTION_TOO_OLD, NOT_COMMITTED, COMMIT_UNKNOWN_RESULT)) | TRANSIENT

DESCRIPTIONS = {
    TRANSACTION_TOO_OLD: "transaction_too_old: Transaction is too old to perform reads or be committed",
    FUTURE_VERSION: "future_version: Request for future version",
    NOT_COMMITTED: "not_committed: Transaction not committed due to conflict with another transaction",
    COMMIT_UNKNOWN_RESULT: "commit_unknown_result: Transaction may or may not have committed",
    TRANSACTION_CANCELLED: "transaction_cancelled: Operation aborted because the transaction was cancelled",
    TRANSACTION_TIMED_OUT: "transaction_timed_out: Operation aborted because the transaction timed out",
    PROCESS_BEHIND: "process_behind: Storage process does not have recent mutations",
    DATABASE_LOCKED: "database_locked: Database is locked",
    CLUSTER_VERSION_CHANGED: "cluster_version_changed: Cluster has been upgraded to a new protocol version",
    PROXY_MEMORY_LIMIT_EXCEEDED: "proxy_memory_limit_exceeded: Commit proxy memory limit exceeded",
    BATCH_TRANSACTION_THROTTLED: "batch_transaction_throttled: Batch GRV request rate limit exceeded",
    GRV_PROXY_MEMORY_LIMIT_EXCEEDED: "grv_proxy_memory_limit_exceeded: GRV proxy memory limit exceeded",
    TAG_THROTTLED: "tag_throttled: Transaction tag is being throttled",
    TRANSACTION_TOO_LARGE: "transaction_too_large: Transaction exceeds byte limit",
    KEY_TOO_LARGE: "key_too_large: Key length exceeds limit",
    VALUE_TOO_LARGE: "value_too_large: Value length exceeds limit",
}


class FDBError(Exception):
    """An error from FoundationDB (or the simulator), with FDB's numeric code."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or DESCRIPTIONS.get(code, f"FoundationDB error {code}"))
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    @property
    def maybe_committed(self) -> bool:
        return self.code == COMMIT_UNKNOWN_RESULT


class Transaction(Protocol):
    def get_read_version(self) -> int: ...

    def set_read_version(self, version: int) -> None: ...

    def get(self, key: bytes, snapshot: bool = False) -> bytes | None: ...

    def get_range(self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False,
                  snapshot: bool = False) -> Sequence[tuple[bytes, bytes]]: ...

    def set(self, key: bytes, value: bytes) -> None: ...

    def set_versionstamped_key(self, key: bytes, offset: int, value: bytes) -> None: ...

    def clear(self, key: bytes) -> None: ...

    def clear_range(self, begin: bytes, end: bytes) -> None: ...

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None: ...

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None: ...

    def commit(self) -> None: ...

    def get_committed_version(self) -> int: ...

    def get_versionstamp(self) -> bytes:
        """The 10-byte versionstamp of the committed transaction (after ``commit``)."""
        ...

    def on_error(self, error: FDBError) -> None: ...

    def reset(self) -> None: ...

    def cancel(self) -> None: ...


class Database(Protocol):
    def create_transaction(self) -> Transaction: ...


def strinc(key: bytes) -> bytes:
    """The first key after every key that starts with ``key`` (FDB's strinc)."""
    key = key.rstrip(b"\xff")
    if not key:
        raise ValueError("a key of only 0xff bytes has no successor")
    return key[:-1] + bytes([key[-1] + 1])
