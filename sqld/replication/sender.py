"""The primary's side of a replication connection: snapshots and the stream of frames.

``serve`` runs once a connection with ``replication=sqld`` has started up (the protocol is
in ``sqld.replication.protocol``). Frames are pushed as soon as the capture logs them: the
capture's listener wakes the sender (thread-safe), so lag is a hand-off and a round trip,
not a poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time

import anyio
import anyio.to_thread
import apsw

from sqld.errors import ProtocolViolation, SqldError
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.replication import protocol as p
from sqld.replication.local_copy import copy_database
from sqld.replication.log import LogError, SnapshotNeeded

log = logging.getLogger(__name__)

KEEPALIVE_EVERY = 1.0  # seconds without a commit before a keepalive goes out
CHUNK = 256 * 1024     # bytes of the database file per CopyData in a BASE_BACKUP
MAX_BASE_BACKUPS = 2   # snapshots being made or sent at once (each a full copy of its database)
SEND_STALL = 60.0      # seconds a replica may leave a snapshot's bytes unread before it is dropped
_backups = None        # the anyio.Semaphore for MAX_BASE_BACKUPS, made in the event loop
_active: set[str] = set()  # snapshot files of this process being made now
_RFQ = m.ReadyForQuery(b"I").encode()


class NoLog(SqldError):
    sqlstate = "55000"
    severity = "FATAL"


def _capture(scheduler):
    capture = scheduler.backend.capture
    if capture is None:
        raise NoLog("this server keeps no replication log",
                    hint="Start the primary with --replication-log (the default) to serve replicas.")
    if capture.broken:
        raise NoLog("the replication log cannot follow this database (see the primary's log)",
                    hint="Restart the primary: it starts a new generation, and replicas bootstrap again.")
    return capture


async def serve(conn, scheduler) -> None:
    """Answer replication commands on ``conn`` (a started-up ``PgConnection``) until the
    replica goes away."""
    capture = _capture(scheduler)
    while True:
        msg = await conn.next_message()
        if isinstance(msg, m.Terminate):
            return
        if not isinstance(msg, m.Query):  # COPY messages pass the phase table for _watch only
            raise ProtocolViolation(f"unexpected message {type(msg).__name__} on a replication connection")
        words = msg.sql.strip().rstrip(";").split()
        command = words[0].upper() if words else ""
        try:
            if command == "IDENTIFY_SYSTEM":
                _row(conn, ("generation", t.TEXT), ("frame", t.INT8), ("page_size", t.INT4),
                     values=(capture.log.generation.hex(), capture.log.last_commit, capture.log.page_size))
                conn.write(m.CommandComplete("IDENTIFY_SYSTEM").encode())
            elif command == "BASE_BACKUP":
                await _base_backup(conn, scheduler, capture)
            elif command == "START_REPLICATION" and len(words) == 3:
                await _stream(conn, capture, words[1], words[2])
                return
            else:
                raise SqldError(f"unknown replication command {msg.sql[:60]!r}", sqlstate="42601",
                                hint="Commands: IDENTIFY_SYSTEM, BASE_BACKUP, START_REPLICATION GENERATION FRAME.")
        except SqldError as exc:
            if exc.severity == "FATAL":
                raise
            conn.write_error(exc)
        conn.write(_RFQ)
        await conn.flush()


def _row(conn, *fields, values) -> None:
    conn.write(m.RowDescription(tuple(m.Field(name, oid) for name, oid in fields)).encode())
    conn.write(m.DataRow(tuple(str(v).encode() for v in values)).encode())


def _sweep(backend) -> None:
    """Snapshot files a crashed process left beside the database (none of this one's)."""
    folder = os.path.dirname(str(backend.path)) or "."
    prefix = os.path.basename(f"{backend.path}-replog.sqld-snapshot-")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith(prefix) and path not in _active and not name.startswith(f"{prefix}{os.getpid()}-"):
            try:
                os.unlink(path)
            except OSError:
                pass


async def _base_backup(conn, scheduler, capture) -> None:
    """A snapshot, at most MAX_BASE_BACKUPS at a time. The copy is made beside the database,
    and unlinked as soon as it is open for sending: a replica that stops reading (or a crash)
    leaves no file in the data folder, and one that stops for SEND_STALL is dropped."""
    global _backups
    if _backups is None:
        _backups = anyio.Semaphore(MAX_BASE_BACKUPS)
    async with _backups:
        await _base_backup_now(conn, scheduler, capture)


async def _base_backup_now(conn, scheduler, capture) -> None:
    backend = scheduler.backend
    pinned = backend.backup_source is not None  # snapshots are versions (mvsqlite)
    name = f"sqld-snapshot-{os.getpid()}-{id(conn)}.tmp"
    tmp = os.path.join(tempfile.gettempdir(), name) if pinned else f"{backend.path}-replog.{name}"
    if not pinned:
        _sweep(backend)
    _active.add(tmp)
    generation = capture.log.generation
    if pinned:
        reader, frame = await anyio.to_thread.run_sync(backend.backup_source)
    else:
        reader = apsw.Connection(str(backend.path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if not pinned:
            # With the writer held no commit is under way, so the read snapshot taken now is
            # exactly the database at the log's last frame.
            async with scheduler.writer_lock:
                reader.execute("begin").fetchall()
                reader.execute("select count(*) from sqlite_schema").fetchall()
                frame, generation = capture.log.last_commit, capture.log.generation

        def copy() -> None:
            copy_database(reader, tmp, step=4096)

        await anyio.to_thread.run_sync(copy)
        reader.close()
        size = os.path.getsize(tmp)
        page_size = capture.log.page_size
        with open(tmp, "rb") as f:
            os.unlink(tmp)  # open: the bytes stay readable until closed, no name is left behind
            _row(conn, ("generation", t.TEXT), ("frame", t.INT8), ("page_size", t.INT4), ("bytes", t.INT8),
                 values=(generation.hex(), frame, page_size, size))
            conn.write(m.CopyOutResponse(0, 0).encode())
            while True:
                chunk = await anyio.to_thread.run_sync(f.read, CHUNK)
                if not chunk:
                    break
                conn.write(m.copy_data(chunk))
                with anyio.move_on_after(SEND_STALL) as stalled:
                    await conn.maybe_flush()
                if stalled.cancelled_caught:
                    log.info("dropping a replica that read nothing of its snapshot for %g s", SEND_STALL)
                    await conn.stream.aclose()
                    raise anyio.BrokenResourceError
        conn.write(m.COPY_DONE)
        conn.write(m.CommandComplete("BASE_BACKUP").encode())
        log.info("sent a snapshot at frame %d (%d bytes) to a replica", frame, size)
    finally:
        try:
            reader.close()
        except apsw.Error:
            pass
        _active.discard(tmp)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


async def _stream(conn, capture, generation_hex: str, frame_text: str) -> None:
    try:
        frame = int(frame_text)
        generation = bytes.fromhex(generation_hex)
    except ValueError:
        raise SqldError("START_REPLICATION takes a generation (hex) and a frame number", sqlstate="42601") from None
    if generation != capture.log.generation:
        raise SqldError("the replica follows another history (generation) than this primary's",
                        sqlstate=p.NEEDS_BOOTSTRAP, hint="Bootstrap the replica again (BASE_BACKUP).")
    loop = asyncio.get_running_loop()
    wake = anyio.Event()

    def on_commit() -> None:  # on the committing thread
        loop.call_soon_threadsafe(wake.set)

    def check_history(log_) -> None:
        try:
            next(iter(log_.since(frame)), None)
        except SnapshotNeeded:
            raise SqldError(f"the frames after {frame} are no longer in the primary's log",
                            sqlstate=p.NEEDS_BOOTSTRAP, hint="Bootstrap the replica again (BASE_BACKUP).") from None
        except LogError:
            raise SqldError(f"frame {frame} is ahead of this primary's log: another history",
                            sqlstate=p.NEEDS_BOOTSTRAP, hint="Bootstrap the replica again (BASE_BACKUP).") from None

    check_history(capture.log)
    conn.write(m.CopyOutResponse(0, 0).encode())
    capture.listeners.append(on_commit)
    sent_at = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch, conn, tg.cancel_scope)
            while True:
                wake = anyio.Event()
                if capture.broken:
                    conn.write_error(SqldError("the primary's replication log stopped following its database",
                                               sqlstate=p.NEEDS_BOOTSTRAP))
                    await conn.flush()
                    return
                current = capture.log
                try:
                    primary_frame = None
                    for tx in current.since(frame):
                        if primary_frame is None:
                            primary_frame = current.last_commit
                        for payload in p.encode_transaction(tx.last_frame, max(primary_frame, tx.last_frame),
                                                            capture.commit_time(tx.last_frame), tx.db_size, tx.pages):
                            conn.write(m.copy_data(payload))
                        frame = tx.last_frame
                        await conn.maybe_flush()
                except SnapshotNeeded:  # compacted past this replica while it was behind
                    conn.write_error(SqldError(f"the frames after {frame} were compacted away",
                                               sqlstate=p.NEEDS_BOOTSTRAP))
                    await conn.flush()
                    return
                if conn.protocol.has_output:
                    await conn.flush()
                    sent_at = time.monotonic()
                # A capture fed by other processes too (mvsqlite's change log) is polled.
                wait = max(0.0, KEEPALIVE_EVERY - (time.monotonic() - sent_at))
                with anyio.move_on_after(min(wait, getattr(capture, "poll_interval", wait))):
                    await wake.wait()
                if not wake.is_set() and time.monotonic() - sent_at >= KEEPALIVE_EVERY:
                    conn.write(m.copy_data(p.encode_keepalive(capture.log.last_commit, time.time())))
                    await conn.flush()
                    sent_at = time.monotonic()
    finally:
        try:
            capture.listeners.remove(on_commit)
        except ValueError:
            pass


async def _watch(conn, scope) -> None:
    """The replica sends nothing while it streams: any read ending means it is gone."""
    try:
        while True:
            msg = await conn.next_message()
            if isinstance(msg, (m.Terminate, m.CopyDone)):
                break
    except Exception:
        pass
    scope.cancel()
