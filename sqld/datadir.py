"""One server per database: a sqld claims each database file it serves for as long as it does.

Two sqld processes on one SQLite file would each believe they own it: SQLite's own locks keep
the file consistent, but each server's replication log, group commit and caches would miss the
other's writes (replicas silently diverge). So, like PostgreSQL's ``postmaster.pid``, a server
holds an exclusive ``flock`` on ``NAME.sqld-lock`` beside each database file it has open (the
main one from start-up: ``main.db.sqld-lock`` in a data folder), with its PID inside, the path
resolved first (a symlink to the file is the same claim). A second server on the same folder
or file fails at startup naming the first; a database of a folder that another server has
open is refused to the client (55006). The lock goes with the process (kill -9 included): a
stale file never blocks a restart.

The mvsqlite backend is not claimed this way: several sqld processes on one FoundationDB
database is what it is for. (A hard link to a database file is not detected.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

_held: dict[Path, int] = {}  # resolved database file → its lock file's descriptor


class InUse(Exception):
    def __init__(self, pid: str) -> None:
        super().__init__(pid)
        self.pid = pid


def lock_file(database: str | os.PathLike) -> Path:
    path = Path(database).resolve()
    return path.with_name(path.name + ".sqld-lock")


def claim(database: str | os.PathLike) -> None:
    """Hold ``database``'s lock until release() or the process exits (again: nothing more);
    InUse(pid) if another process holds it."""
    key = Path(database).resolve()
    if key in _held:
        return
    path = lock_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        finally:
            os.close(fd)
        raise InUse(other) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def release(database: str | os.PathLike) -> None:
    fd = _held.pop(Path(database).resolve(), None)
    if fd is not None:
        os.close(fd)  # the flock goes with it (the file stays: removing it would race a claimer)
