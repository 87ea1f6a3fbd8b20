"""The primary's side: every commit's WAL frames go into the replication log.

SQLite calls the writer's WAL hook right after each commit, on the committing thread,
before another write can begin (the scheduler holds the writer until the call returns), so
no frame is missed: the capture reads the WAL from where it stopped (or from the start when
the WAL was restarted: its salts changed) and appends the committed transactions. The hook
replaces SQLite's automatic checkpoint, so the capture checkpoints the WAL itself once it is
``checkpoint_pages`` long, after the frames are safe in the log.

A log starts with a snapshot of the database (``<log>.snapshot``, frame 0). A log found
beside a WAL with frames in it (the server stopped without its final checkpoint) may lag
the database: a new generation starts. Once the log passes ``max_log_bytes`` it is
compacted: a new empty log based at the last frame (the database itself is the newest
image of every page, which replicas that are further behind get as a snapshot).

``listeners`` are called (on the committing thread) after each append: the replication
senders wake on them. ``commit_time(frame)`` says when a recent frame was logged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import apsw

from sqld.replication.log import FrameLog
from sqld.replication.wal import WAL_HEADER, WalError, read_header, transactions

log = logging.getLogger(__name__)


class Capture:
    def __init__(self, conn: apsw.Connection, db_file: Path, log_path: Path, checkpoint_pages: int = 1000,
                 max_log_bytes: int = 64 << 20) -> None:
        self.conn = conn
        self.max_log_bytes = max_log_bytes
        self.listeners: list = []
        self._times: dict[int, float] = {}
        self.wal_path = Path(str(db_file) + "-wal")
        self.log_path = Path(log_path)
        self.checkpoint_pages = checkpoint_pages
        self.offset = WAL_HEADER.size
        self.salts: tuple[int, int] | None = None
        self.broken = False
        page_size = conn.execute("pragma page_size").fetchall()[0][0]
        had_frames = self.wal_path.exists() and self.wal_path.stat().st_size > WAL_HEADER.size
        # Start from an empty WAL: what is in it now is in the database after this.
        conn.execute("pragma wal_checkpoint(truncate)").fetchall()
        if self.log_path.exists() and had_frames:
            self._rotate()
        fresh = not self.log_path.exists()
        self.log = FrameLog(self.log_path, page_size=page_size)
        if fresh:
            self._snapshot()
        conn.set_wal_hook(self._on_commit)
        # The log follows only while the hook is SQLite's and the database stays in WAL mode:
        # the backend's sandbox (backends/sandbox.py) refuses sessions either change.

    def _rotate(self) -> None:
        old = self.log_path.with_name(self.log_path.name + ".old")
        log.warning("replication log %s may lag the database: starting a new generation", self.log_path)
        os.replace(self.log_path, old)

    def _snapshot(self) -> None:
        """The database as of frame 0 of this log (replicas bootstrap from it)."""
        target = str(self.log_path) + ".snapshot"
        tmp = target + ".tmp"
        dest = apsw.Connection(tmp)
        with dest.backup("main", self.conn, "main") as b:
            while not b.done:
                b.step(-1)
        dest.execute("pragma journal_mode=delete").fetchall()
        dest.close()
        os.replace(tmp, target)

    def _on_commit(self, conn, dbname: str, wal_pages: int) -> int:
        if dbname != "main":
            return apsw.SQLITE_OK
        try:
            if self.capture(wal_pages):
                for listener in tuple(self.listeners):  # senders come and go on another thread
                    listener()
            if wal_pages >= self.checkpoint_pages:
                conn.wal_checkpoint("main", apsw.SQLITE_CHECKPOINT_PASSIVE)
            if self.log.size > self.max_log_bytes:
                self.compact()
        except Exception as exc:
            # The commit stands; the log cannot follow it any more. Streams end (senders see
            # ``broken``), and the log is moved aside at once, so that even a clean restart
            # starts a new generation: replicas bootstrap again, never continue a history
            # with a hole in it. Whatever the failure, the hook answers OK: an error from it
            # makes SQLite report a COMMIT that happened as failed, and the group commit
            # would then run its statements a second time.
            if not self.broken:
                expected = isinstance(exc, (OSError, WalError, ValueError))
                log.error("replication log %s cannot follow the database: %s", self.log_path, exc,
                          exc_info=None if expected else exc)
                self.broken = True
                try:
                    os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".broken"))
                except OSError:
                    pass
        return apsw.SQLITE_OK

    def capture(self, wal_pages: int | None = None) -> int:
        """Append the WAL's newly committed transactions; return how many. ``wal_pages`` (the
        frames in the WAL, as the hook says) bounds the read: a restarted WAL is not truncated,
        and what lies past its frames is an older generation's."""
        if self.broken:
            return 0
        with open(self.wal_path, "rb", buffering=0) as f:
            head = os.pread(f.fileno(), WAL_HEADER.size, 0)
            header = read_header(head)
            salts = (header.salt1, header.salt2)
            if salts != self.salts:  # a restarted WAL: its frames start at the beginning
                self.salts = salts
                self.offset = WAL_HEADER.size
            if wal_pages is None:
                end = os.fstat(f.fileno()).st_size
            else:
                end = WAL_HEADER.size + wal_pages * (header.page_size + 24)
            data = os.pread(f.fileno(), max(0, end - self.offset), self.offset)
        count = 0
        for tx in transactions(data, header, offset=self.offset, verify=False, base=self.offset):
            # No fsync: the commit is durable in the WAL already, and a log that a crash cut
            # short is never continued (an unclean stop starts a new generation).
            frame = self.log.append(tx, durable=False)
            self.offset = tx.end_offset
            count += 1
        if count:
            times = self._times
            times[frame] = time.time()
            if len(times) > 8192:
                for old in [f for f in times if f < frame - 4096]:
                    del times[old]
        return count

    def commit_time(self, frame: int) -> float:
        """When the transaction ending at ``frame`` was logged (wall clock), 0 if unknown."""
        return self._times.get(frame, 0.0)

    def compact(self) -> None:
        """Drop the log's frames: replicas further behind than its last frame bootstrap
        from a snapshot of the database instead."""
        log.info("compacting replication log %s (%d bytes, up to frame %d)", self.log_path, self.log.size,
                 self.log.last_commit)
        # Half the limit stays (replicas a little behind read on); the old log object stays
        # open for senders still reading it.
        self.log = self.log.compact(keep_bytes=self.max_log_bytes // 2)
        try:
            os.unlink(str(self.log_path) + ".snapshot")  # frame 1 is gone from the log
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.conn.set_wal_hook(None)
        self.log.close()
