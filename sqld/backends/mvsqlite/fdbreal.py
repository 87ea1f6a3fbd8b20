"""The port on a real FoundationDB cluster, through the ``fdb`` binding (API version 730).

A thin adapter: each port call is one binding call, waited on; the binding's ``FDBError``
becomes the port's, with the same code. Every transaction has a timeout (FDB's database
option ``transaction_timeout``; FDB has none by default, and a client of a cluster that is
down waits forever): past it FDB cancels the transaction and every call fails with 1031,
which the page store reports as the cluster not answering. ``RealDatabase.stats`` counts
round trips as the simulator does (``reads``, ``commits``, ``grv``). Needs the binding
(``pip install 'sqld[mvsqlite]'``) and libfdb_c (FoundationDB's client package).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from typing import Any, Iterator

import attrs

from sqld.backends.mvsqlite.fdbport import FDBError

API_VERSION = 730
# Seconds a transaction may take, from its creation or reset (API >= 610: on_error does not
# restart the clock, so a retry loop is bounded too). Above FDB's own 5 s read window, so a
# slow cluster still answers 1007 first where that is the truth.
DEFAULT_TIMEOUT = 8.0

CLIENT_PACKAGE_HINT = (
    "install the FoundationDB client package (foundationdb-clients, from "
    "https://github.com/apple/foundationdb/releases), which provides libfdb_c"
)


def _load_binding() -> Any:
    """The ``fdb`` module at API_VERSION, or a RuntimeError saying what is missing."""
    try:
        import fdb
    except ImportError as e:
        raise RuntimeError(
            "the FoundationDB Python binding (module 'fdb') is not installed: "
            "pip install 'sqld[mvsqlite]'") from e
    try:
        fdb.api_version(API_VERSION)
    except RuntimeError as e:  # the binding's own words, e.g. libfdb_c too old
        raise RuntimeError(f"FoundationDB client library libfdb_c: {e}; {CLIENT_PACKAGE_HINT}") from e
    except Exception as e:  # fdb.impl could not load the shared library
        raise RuntimeError(
            f"the FoundationDB client library libfdb_c could not be loaded ({e}): "
            f"{CLIENT_PACKAGE_HINT}") from e
    return fdb


def open_database(cluster_file: str, timeout: float = DEFAULT_TIMEOUT) -> RealDatabase:
    """The database of the cluster that ``cluster_file`` (an fdb.cluster file) names; every
    transaction times out (1031) after ``timeout`` seconds."""
    if not os.path.isfile(cluster_file):
        raise RuntimeError(
            f"FoundationDB cluster file {cluster_file!r} does not exist: pass the path of the "
            "cluster's fdb.cluster (a FoundationDB install has /etc/foundationdb/fdb.cluster)")
    fdb = _load_binding()
    with _translated(fdb):
        db = fdb.open(cluster_file)
        db.options.set_transaction_timeout(int(timeout * 1000))  # milliseconds
    return RealDatabase(db, fdb, description=f"FoundationDB (cluster file {cluster_file})", timeout=timeout)


@contextlib.contextmanager
def _translated(fdb: Any) -> Iterator[None]:
    """Raise the binding's FDBError as the port's, with the same code."""
    try:
        yield
    except fdb.FDBError as e:
        try:
            desc = e.description
            message = f"{desc.decode(errors='replace') if isinstance(desc, bytes) else desc} ({e.code})"
        except Exception:
            message = None
        raise FDBError(e.code, message) from e


@attrs.define(eq=False)
class RealDatabase:
    """A FoundationDB database (the port's ``Database``)."""

    _db: Any = attrs.field(alias="db")
    _fdb: Any = attrs.field(alias="fdb", repr=False)  # the binding module
    description: str = "FoundationDB"  # how errors name the cluster (page store messages)
    transaction_timeout: float | None = attrs.field(default=None, alias="timeout")
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    stats: dict[str, int] = attrs.field(init=False,
                                        factory=lambda: dict.fromkeys(("grv", "reads", "commits", "retries"), 0))

    def create_transaction(self) -> RealTransaction:
        with _translated(self._fdb):
            return RealTransaction(self, self._db.create_transaction())

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


class RealTransaction:
    """A FoundationDB transaction (the port's ``Transaction``)."""

    def __init__(self, db: RealDatabase, tr: Any) -> None:
        self._db = db
        self._fdb = db._fdb
        self._tr = tr
        self._clear()

    def _clear(self) -> None:
        self._has_read_version = False
        self._has_writes = False
        self._stamp_future: Any = None

    def _first_use(self) -> None:
        """Count the read version the client obtains on a transaction's first use."""
        if not self._has_read_version:
            self._has_read_version = True
            self._db._count("grv")

    def get_read_version(self) -> int:
        self._first_use()
        with _translated(self._fdb):
            return self._tr.get_read_version().wait()

    def set_read_version(self, version: int) -> None:
        self._has_read_version = True
        with _translated(self._fdb):
            self._tr.set_read_version(version)

    def get(self, key: bytes, snapshot: bool = False) -> bytes | None:
        self._first_use()
        self._db._count("reads")
        with _translated(self._fdb):
            tr = self._tr.snapshot if snapshot else self._tr
            return tr.get(key).value  # the Value future's bytes, or None when absent

    def get_range(self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False,
                  snapshot: bool = False) -> list[tuple[bytes, bytes]]:
        self._first_use()
        self._db._count("reads")
        with _translated(self._fdb):
            tr = self._tr.snapshot if snapshot else self._tr
            return [(kv.key, kv.value) for kv in
                    tr.get_range(begin, end, limit=limit, reverse=reverse).to_list()]

    def set(self, key: bytes, value: bytes) -> None:
        self._has_writes = True
        with _translated(self._fdb):
            self._tr.set(key, value)

    def set_versionstamped_key(self, key: bytes, offset: int, value: bytes) -> None:
        # API ≥ 520: the binding takes the offset as a 4-byte little-endian suffix of the key.
        self._has_writes = True
        with _translated(self._fdb):
            self._tr.set_versionstamped_key(key + struct.pack("<I", offset), value)

    def clear(self, key: bytes) -> None:
        self._has_writes = True
        with _translated(self._fdb):
            self._tr.clear(key)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self._has_writes = True
        with _translated(self._fdb):
            self._tr.clear_range(begin, end)

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        with _translated(self._fdb):
            self._tr.add_read_conflict_range(begin, end)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._has_writes = True
        with _translated(self._fdb):
            self._tr.add_write_conflict_range(begin, end)

    def commit(self) -> None:
        self._db._count("commits")
        with _translated(self._fdb):
            if self._has_writes:
                self._first_use()  # a commit with writes obtains a read version if it had none
                # FDB answers get_versionstamp only if asked before commit (after: 2017).
                self._stamp_future = self._tr.get_versionstamp()
            self._tr.commit().wait()

    def get_committed_version(self) -> int:
        with _translated(self._fdb):
            return self._tr.get_committed_version()

    def get_versionstamp(self) -> bytes:
        with _translated(self._fdb):
            if self._stamp_future is None:
                self._stamp_future = self._tr.get_versionstamp()
            return bytes(self._stamp_future.value)

    def on_error(self, error: FDBError) -> None:
        if not isinstance(error, FDBError):
            raise error
        try:
            with _translated(self._fdb):
                self._tr.on_error(self._fdb.FDBError(error.code)).wait()
        except FDBError as e:
            if e.code == error.code:
                raise error from None
            raise
        self._db._count("retries")  # FDB said retry (its retryable set is wider than RETRYABLE)
        self._clear()

    def reset(self) -> None:
        self._clear()
        with _translated(self._fdb):
            self._tr.reset()

    def cancel(self) -> None:
        with _translated(self._fdb):
            self._tr.cancel()
