"""The replica's side: keep a local copy of the primary's database up to date.

``Follower.prepare`` makes sure there is a local copy (a snapshot from the primary when
there is none, or the position saved by the last run, with its redo record replayed);
``run`` then follows the primary for as long as the server runs: it streams committed
transactions (``START_REPLICATION``) and applies them, several at once when they arrive
together (readers see whole transactions only, the newest state of a batch), reconnects
when the primary goes away (every ``poll_interval`` seconds, doubling up to 5 s), and
bootstraps again, in place, when the primary has another history or compacted the frames
it needs.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
import apsw
import attrs

from sqld.client.wire_async import AsyncWire, ServerError, WireError
from sqld.errors import SqldError
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA
from sqld.replication import protocol as p
from sqld.replication.local_copy import Position, LocalCopy, StateFile, merge
from sqld.replication.wal import Transaction

log = logging.getLogger(__name__)


class PrimaryError(Exception):
    """The primary refused or broke the replication conversation."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@attrs.define(eq=False)
class Follower:
    """A replica's link to its primary: bootstraps the local copy, then applies the frames
    the primary streams."""

    host: str = attrs.field(alias="primary_host")
    port: int = attrs.field(alias="primary_port")
    db_file: Path = attrs.field(converter=Path)
    database: str = attrs.field(kw_only=True, default="main")
    user: str = attrs.field(kw_only=True, default="sqld-replica")
    password: str | None = attrs.field(kw_only=True, default=None, repr=False)
    sslmode: str = attrs.field(kw_only=True, default="prefer")
    sslrootcert: str | None = attrs.field(kw_only=True, default=None)
    poll_interval: float = attrs.field(kw_only=True, default=0.5)
    durable: bool = attrs.field(kw_only=True, default=False)
    state_file: Path = attrs.field(init=False)
    local_copy: LocalCopy | None = attrs.field(init=False, default=None)
    applied: int = attrs.field(init=False, default=0)          # the last frame applied here
    primary_frame: int = attrs.field(init=False, default=0)    # the primary's last frame, as last heard
    # Seconds from the primary's commit to its apply here (last batch), and the recent ones:
    lag: float = attrs.field(init=False, default=0.0)
    lags: collections.deque[float] = attrs.field(init=False, factory=lambda: collections.deque(maxlen=10000),
                                                 repr=False)
    connected: bool = attrs.field(init=False, default=False)
    primary_generation: bytes | None = attrs.field(init=False, default=None)  # the primary's history, as last heard
    heard_at: float = attrs.field(init=False, default=0.0)  # monotonic time the primary was last heard from
    # (frame, schema_changed, replaced) -> None, called on the event loop:
    on_apply: object = attrs.field(init=False, default=None)
    _progress: anyio.Event = attrs.field(init=False, factory=anyio.Event, repr=False)
    _bootstrap_needed: bool = attrs.field(init=False, default=False)

    @state_file.default
    def _state_file(self) -> Path:
        return Path(str(self.db_file) + "-replica")

    @property
    def generation(self) -> bytes | None:
        pos = self.local_copy.position if self.local_copy else None
        return pos.generation if pos else None

    # -- waiting for frames -------------------------------------------------------------------

    async def wait_for(self, frame: int, timeout: float, generation: bytes | None = None) -> bool:
        """Wait until ``frame`` (of ``generation``, when given) is applied here; False if
        ``timeout`` passed first."""
        def reached() -> bool:
            return self.applied >= frame and (generation is None or self.generation == generation)

        if reached():
            return True
        with anyio.move_on_after(timeout):
            while not reached():
                await self._progress.wait()
            return True
        return False

    def _advanced(self, frame: int, schema_changed: bool, replaced: bool = False) -> None:
        self.applied = frame
        if self.on_apply is not None:
            self.on_apply(frame, schema_changed, replaced)
        event, self._progress = self._progress, anyio.Event()
        event.set()

    # -- start-up -------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """A local copy to serve: the saved one, or a snapshot (waiting for the primary)."""
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        if self.db_file.exists():
            if not StateFile(self.state_file, self.durable).exists():
                raise SqldError(f"{self.db_file} exists and is not a replica's copy (there is no "
                                f"{self.state_file.name} beside it): move it away, or give the replica "
                                "another --db-path")
            try:
                local_copy = await anyio.to_thread.run_sync(self._open)
            except (apsw.Error, ValueError) as exc:
                raise SqldError(f"cannot use the replica's copy {self.db_file}: {exc}") from None
            if local_copy.position is not None:
                self.local_copy = local_copy
                self.applied = local_copy.position.frame
                log.info("replica %s at frame %d (generation %s)", self.db_file, self.applied,
                         local_copy.position.generation.hex()[:8])
                return
            local_copy.close()
            log.warning("replica: %s has no valid position: bootstrapping again", self.state_file)
            self.db_file.unlink(missing_ok=True)
            StateFile(self.state_file, self.durable).reset()
        delay = self.poll_interval
        while True:
            try:
                async with await self._connect() as primary:
                    await self._bootstrap(primary)
                return
            except (OSError, PrimaryError, WireError, anyio.BrokenResourceError, anyio.EndOfStream) as exc:
                log.warning("replica: cannot bootstrap from primary %s:%d yet: %s", self.host, self.port, exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _open(self) -> LocalCopy:
        return LocalCopy(str(self.db_file), str(self.state_file), durable=self.durable)

    # -- following ----------------------------------------------------------------------------

    async def run(self, report_every: float = 30.0) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._report, report_every)
            await self._run()
            tg.cancel_scope.cancel()

    async def _report(self, every: float) -> None:
        """The lag in the log: applied and primary frames, commit-to-apply percentiles."""
        while True:
            await anyio.sleep(every)
            lags = sorted(self.lags)
            self.lags.clear()
            if not lags and self.applied == self.primary_frame:
                continue
            pct = (lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000) if lags else (lambda q: 0.0)
            log.info("replica at frame %d, primary at %d%s; lag over %d commits: p50 %.1f ms, p99 %.1f ms, "
                     "max %.1f ms", self.applied, self.primary_frame, "" if self.connected else " (disconnected)",
                     len(lags), pct(0.5), pct(0.99), pct(1.0))

    async def _run(self) -> None:
        delay = self.poll_interval
        while True:
            try:
                async with await self._connect() as primary:
                    self.heard_at = time.monotonic()
                    delay = self.poll_interval
                    await self._follow(primary)
            except PrimaryError as exc:
                if exc.sqlstate == p.NEEDS_BOOTSTRAP:
                    log.warning("replica: %s: bootstrapping again", exc)
                    self._bootstrap_needed = True
                    delay = 0
                else:
                    log.warning("replica: primary %s:%d: %s", self.host, self.port, exc)
            except (OSError, WireError, anyio.BrokenResourceError, anyio.EndOfStream, ValueError) as exc:
                if self.local_copy is not None and self.local_copy.damaged:
                    log.critical("replica: the copy %s could not be written (%s): not following the primary any "
                                 "more; reads wait and fail rather than see half a transaction. Fix the disk, "
                                 "then restart the replica (it redoes the last transaction).", self.db_file, exc)
                    return
                if self.connected:
                    log.warning("replica: lost the primary %s:%d (%s); serving reads as of frame %d",
                                self.host, self.port, str(exc) or type(exc).__name__, self.applied)
            except Exception:  # e.g. the applier waited too long for a reader's lock: start over
                log.exception("replica: following the primary failed; retrying")
            finally:
                self.connected = False
            await anyio.sleep(delay)
            delay = min(max(delay * 2, self.poll_interval), 5.0)

    async def _connect(self) -> AsyncWire:
        params = {p.STARTUP_PARAM: p.STARTUP_VALUE, "application_name": "sqld-replica"}
        try:
            return await AsyncWire.connect(self.host, self.port, user=self.user, database=self.database,
                                           password=self.password, sslmode=self.sslmode,
                                           sslrootcert=self.sslrootcert, params=params, extension=False)
        except ServerError as exc:
            raise PrimaryError(exc.response.message, exc.response.sqlstate) from None

    @staticmethod
    async def _next(primary: AsyncWire, timeout: float = 60.0):
        """The next message; a FATAL error (the primary closes after it) raises at once, and
        a primary silent for ``timeout`` seconds is taken for gone."""
        msg = await primary.next_message(timeout)
        if isinstance(msg, m.ErrorResponse) and msg.severity == "FATAL":
            raise PrimaryError(msg.message, msg.sqlstate)
        return msg

    async def _query(self, primary: AsyncWire, sql: str) -> list[tuple[bytes | None, ...]]:
        """A replication command that answers rows (IDENTIFY_SYSTEM)."""
        try:
            with anyio.fail_after(60):
                results = await primary.query(sql)
        except ServerError as exc:
            raise PrimaryError(exc.response.message, exc.response.sqlstate) from None
        return [row for result in results for row in result.rows]

    async def _bootstrap(self, primary: AsyncWire) -> None:
        tmp = Path(str(self.state_file) + ".snapshot")
        await primary.send_query("BASE_BACKUP")
        info = None
        error = None
        with open(tmp, "wb") as f:
            while True:
                msg = await self._next(primary)
                if isinstance(msg, m.CopyData):
                    await anyio.to_thread.run_sync(f.write, msg.data)
                elif isinstance(msg, m.DataRow):
                    info = msg.values
                elif isinstance(msg, m.ErrorResponse):
                    error = PrimaryError(msg.message, msg.sqlstate)
                elif isinstance(msg, m.ReadyForQuery):
                    break
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        if error or info is None:
            tmp.unlink(missing_ok=True)
            raise error or PrimaryError("BASE_BACKUP sent no snapshot")
        generation, frame, _, size = bytes.fromhex(info[0].decode()), int(info[1]), int(info[2]), int(info[3])
        if tmp.stat().st_size != size:
            tmp.unlink(missing_ok=True)
            raise PrimaryError(f"the snapshot was cut short ({tmp.stat().st_size} of {size} bytes)")
        position = Position(generation, frame)
        if self.local_copy is None:
            # The position first, then the file: a crash between leaves a position without
            # a copy, which the next start bootstraps again (never a copy without a position).
            state = StateFile(self.state_file, self.durable)
            state.reset()
            state.save(position, Transaction((), 0, 0))
            os.replace(tmp, self.db_file)
            self.local_copy = await anyio.to_thread.run_sync(self._open)
            self.applied = frame
        else:
            changed = await anyio.to_thread.run_sync(self.local_copy.replace_with, str(tmp), position)
            tmp.unlink(missing_ok=True)
            self._advanced(frame, changed, replaced=True)
        self._bootstrap_needed = False
        log.info("replica: bootstrapped from a snapshot at frame %d (%d bytes, generation %s)", frame, size,
                 generation.hex()[:8])

    async def _follow(self, primary: AsyncWire) -> None:
        rows = await self._query(primary, "IDENTIFY_SYSTEM")
        generation = bytes.fromhex(rows[0][0].decode())
        self.primary_generation = generation
        self.primary_frame = int(rows[0][1])
        if self._bootstrap_needed or generation != self.generation:
            if generation != self.generation:
                log.warning("replica: the primary has another history (generation %s, ours %s): bootstrapping",
                            generation.hex()[:8], (self.generation or b"").hex()[:8])
            await self._bootstrap(primary)
        await primary.send_query(f"START_REPLICATION {self.generation.hex()} {self.applied}")
        self.connected = True
        log.info("replica: following primary %s:%d from frame %d", self.host, self.port, self.applied)
        pages: list = []
        batch: list[Transaction] = []
        last: list[tuple[int, float]] = []  # (frame, commit time) of each transaction in the batch
        page_size = self.replica_page_size()
        while True:
            msg = primary.next_buffered()
            if msg is NEED_DATA:
                if batch:
                    await self._apply(batch, last)
                    batch, last = [], []
                # The primary sends a keepalive every second: silence means it is gone.
                await primary.receive(max(5.0, 4 * self.poll_interval))
                continue
            self.heard_at = time.monotonic()
            if isinstance(msg, m.CopyData):
                data = msg.data
                kind = data[:1]
                if kind == b"w":
                    frame, primary_frame, commit_time, db_size, count = p.COMMIT.unpack_from(data, 1)
                    pages += p.decode_pages(data, 1 + p.COMMIT.size, count, page_size)
                    batch.append(Transaction(tuple(pages), db_size, 0))
                    pages = []
                    last.append((frame, commit_time))
                    self.primary_frame = max(self.primary_frame, primary_frame)
                    if len(batch) >= 512:
                        await self._apply(batch, last)
                        batch, last = [], []
                elif kind == b"p":
                    (count,) = p.PAGES.unpack_from(data, 1)
                    pages += p.decode_pages(data, 1 + p.PAGES.size, count, page_size)
                elif kind == b"k":
                    primary_frame, _ = p.KEEPALIVE.unpack_from(data, 1)
                    self.primary_frame = max(self.primary_frame, primary_frame)
            elif isinstance(msg, m.ErrorResponse):
                if batch:
                    await self._apply(batch, last)
                raise PrimaryError(msg.message, msg.sqlstate)
            elif isinstance(msg, (m.CopyDone, m.ReadyForQuery)):
                raise PrimaryError("the primary ended the replication stream")

    def replica_page_size(self) -> int:
        return LocalCopy._page_size(self.local_copy.fd)

    async def _apply(self, batch: list[Transaction], frames: list[tuple[int, float]]) -> None:
        frame = frames[-1][0]
        tx = batch[0] if len(batch) == 1 else merge(batch)
        changed = await anyio.to_thread.run_sync(self.local_copy.apply, tx, Position(self.generation, frame))
        now = time.time()
        for _, commit_time in frames:
            if commit_time:
                self.lag = max(0.0, now - commit_time)
                self.lags.append(self.lag)
        self._advanced(frame, changed)

    def status(self) -> dict:
        return {"applied": self.applied, "primary": self.primary_frame,
                "lag_frames": max(0, self.primary_frame - self.applied), "lag_ms": round(self.lag * 1000, 3),
                "connected": self.connected}

    def close(self) -> None:
        if self.local_copy is not None:
            self.local_copy.close()
            self.local_copy = None
