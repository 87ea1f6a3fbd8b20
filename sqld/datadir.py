"""One server per database: a sqld claims its data directory (or file) for as long as it runs.

Two sqld processes on one SQLite file would each believe they own it: SQLite's own locks keep
the file consistent, but each server's replication log, group commit and caches would miss the
other's writes (replicas silently diverge). So, like PostgreSQL's ``postmaster.pid``, a server
holds an exclusive ``flock`` on ``NAME.sqld-lock`` beside its main database file
(``main.db.sqld-lock`` in a data folder), with its PID inside; a second server on the same
folder or file fails at startup naming the first. The lock goes with the process (kill -9 included):
a stale file never blocks a restart.

The mvsqlite backend is not claimed this way: several sqld processes on one FoundationDB
database is what it is for.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from sqld.errors import SqldError

_held: list[int] = []  # the lock files' descriptors, open for the life of the process


def lock_file(db_path: str | os.PathLike) -> Path:
    """Beside the main database file (so a folder and its main.db are one claim)."""
    from sqld.backends.libsql import database_file

    main = database_file(db_path)
    return main.with_name(main.name + ".sqld-lock")


def claim(db_path: str | os.PathLike) -> Path:
    """Hold the lock of ``db_path`` until the process exits; SqldError if another has it."""
    path = lock_file(db_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        raise SqldError(f"{db_path} is in use by another sqld (pid {other}): one server per database "
                        f"(lock {path.name})") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held.append(fd)
    return path
