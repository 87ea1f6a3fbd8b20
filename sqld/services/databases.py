"""Databases by name: the startup packet's ``database`` picks one; each has its own Scheduler.

In folder mode (``--db-path DIR``) the database ``NAME`` is the file ``DIR/NAME.db`` (``main``
is ``DIR/main.db``); a name seen for the first time creates it when ``create`` allows.
With ``--db-path FILE`` the file is the one database, ``main``. The name ``:memory:`` gives
the session a private database of its own, dropped when the session ends.

Names are compared as the file system may: in Unicode NFC and lower case, so ``MAIN``,
``Main`` and ``main`` are one database (``main.db``), never a second backend on one file of
a case-insensitive file system. Control and invisible characters (U+202E and the like), and
leading or trailing spaces, are refused: no name looks like another.

Only read-write users (or anyone, with no users configured) create databases. At most
``max_open`` databases besides main are open at once; one that no session has used for
``idle_timeout`` seconds is closed (and opened again when named), and when the cap is
reached the least recently used idle one makes room (else 53300).
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import time
import unicodedata
from pathlib import Path

import anyio
import anyio.abc

from sqld import datadir
from sqld.backends.libsql import LibsqlBackend, database_file
from sqld.errors import SqldError, TooManyConnections
from sqld.services.scheduler import Scheduler

log = logging.getLogger(__name__)

MAIN = "main"
PRIVATE = ":memory:"
# No separators, control characters or leading '.': no name can escape the folder.
_NAME = re.compile(r"[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,62}")
# Unicode categories refused anywhere in a name: controls (C0, DEL, C1), format characters
# (U+202E right-to-left override, zero-width spaces…), surrogates, private use, unassigned,
# and separators other than the plain space (line and paragraph separators, NBSP…).
_REFUSED_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"))
DEFAULT_MAX_OPEN = 64
DEFAULT_IDLE_TIMEOUT = 60.0


def canonical(name: str) -> str:
    """The one spelling of a database name: NFC, lower case."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).lower())


def _looks_valid(name: str) -> bool:
    if name != name.strip() or not _NAME.fullmatch(name) or ".." in name or name == PRIVATE:
        return False
    return all(ch == " " or (unicodedata.category(ch) not in _REFUSED_CATEGORIES and not ch.isspace())
               for ch in name)


class UnknownDatabase(SqldError):
    sqlstate = "3D000"
    severity = "FATAL"


class Databases:
    """Open databases by name, each a backend with its Scheduler and group-commit loop.

    ``start(task_group)`` hands over the task group the loops run in; databases opened
    before it (main, at start-up) get their loop then. Sessions take a database with
    ``acquire`` and give it back with the function it returns; ``get`` is for what holds no
    session (replication).
    """

    def __init__(self, db_path, *, create: bool = True, synchronous: str = "full", foreign_keys: bool = True,
                 max_readers: int = 8, inline_budget: int = 20, functions=(), replication_log: bool = False,
                 replication_log_max_bytes: int = 64 << 20, opener=None, unsafe_sql: bool = False,
                 max_open: int = DEFAULT_MAX_OPEN, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT) -> None:
        self.db_path = Path(db_path)
        # ``opener(name) -> backend`` and ``opener.exists(name)`` for backends that are not
        # files (mvsqlite);
        # by default a database is a SQLite file of the libsql backend.
        self.opener = opener
        self.main_file = database_file(db_path) if opener is None else self.db_path
        self.folder_mode = opener is not None or self.main_file != self.db_path
        self._claimed: dict[str, Path] = {}  # open databases this process holds the lock of (sqld.datadir)
        self.create = create
        self.max_open = max_open  # besides main
        self.idle_timeout = idle_timeout  # None: never closed for being idle
        self._options = dict(synchronous=synchronous, foreign_keys=foreign_keys, replication_log=replication_log,
                             replication_log_max_bytes=replication_log_max_bytes, unsafe_sql=unsafe_sql)
        self._scheduler_options = dict(max_readers=max_readers, inline_budget=inline_budget,
                                       functions=list(functions))
        self.open: dict[str, Scheduler] = {}  # by canonical name
        self._sessions: dict[str, int] = {}  # sessions using each open database
        self._idle_since: dict[str, float] = {}
        self._loops: dict[str, anyio.CancelScope] = {}
        self._pinned: set[str] = set()  # never closed for being idle (replicas follow them)
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()

    def open_main(self) -> Scheduler:
        """Open the main database now (start-up: a bad file is an error before listening)."""
        return self._open(MAIN, self.main_file)

    def _open(self, name: str, path: Path) -> Scheduler:
        if self.opener is not None:
            backend = self.opener(name)
        else:
            if name != MAIN:  # (main: claimed by the process at start-up, sqld.datadir)
                try:
                    datadir.claim(path)
                except datadir.InUse as exc:
                    raise SqldError(f'database "{name}" is in use by another sqld (pid {exc.pid})', sqlstate="55006",
                                    hint="One server per database: connect to the server that has it open.") from None
                self._claimed[name] = path
            backend = LibsqlBackend(path, **self._options)
        try:
            backend.open()
        except BaseException:
            claimed = self._claimed.pop(name, None)
            if claimed is not None:
                datadir.release(claimed)
            raise
        scheduler = Scheduler(backend, **self._scheduler_options)
        self.open[name] = scheduler
        self._sessions[name] = 0
        self._idle_since[name] = time.monotonic()
        if self._tg is not None:
            self._start_loop(name, scheduler)
        return scheduler

    def _start_loop(self, name: str, scheduler: Scheduler) -> None:
        scope = self._loops[name] = anyio.CancelScope()

        async def loop() -> None:
            with scope:
                await scheduler.run()

        self._tg.start_soon(loop)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        for name, scheduler in self.open.items():
            self._start_loop(name, scheduler)
        if self.idle_timeout:
            tg.start_soon(self._close_idle)

    def path_of(self, name: str) -> Path:
        if canonical(name) == MAIN:
            return self.main_file
        if not _looks_valid(name):
            raise UnknownDatabase(
                f'invalid database name "{name[:80]}"',
                hint="A database name is up to 63 characters, without '/', '\\', control or invisible "
                "characters or spaces at either end, not starting with '.'.",
            )
        if not self.folder_mode:
            raise UnknownDatabase(f'database "{name}" does not exist',
                                  hint="This server serves one database file (--db-path FILE): connect to \"main\".")
        path = self.db_path / f"{canonical(name)}.db"
        exact = self.db_path / f"{name}.db"
        if self.opener is None and exact != path and not path.exists() and exact.exists():
            return exact  # a file made before names were folded: still its database
        return path

    async def get(self, name: str, *, create: bool | None = None) -> Scheduler:
        """The database ``name``, opened if needed; ``create`` (default: the server's
        setting) says whether a missing one may be made."""
        name = canonical(name or MAIN)
        scheduler = self.open.get(name)
        if scheduler is not None:
            return scheduler
        async with self._lock:
            scheduler = self.open.get(name)
            if scheduler is not None:
                return scheduler
            path = self.path_of(name)
            exists = path.exists() if self.opener is None else self.opener.exists(name)
            if not exists and not (self.create if create is None else create and self.create):
                raise UnknownDatabase(
                    f'database "{name}" does not exist',
                    hint="This server does not create databases (--no-create-databases)." if not self.create
                    else "Only read-write users create databases.")
            if len(self.open) - (MAIN in self.open) >= self.max_open:
                self._make_room()
            log.info("opening database %s (%s)", name, path)
            try:
                return self._open(name, path)
            except SqldError as exc:
                if exc.sqlstate == "55006":
                    raise  # another server has it open: its name and that server's PID
                # The log has the path; the client gets the database's name only.
                log.warning("cannot open database %s: %s", name, exc.message)
                raise UnknownDatabase(f'cannot open database "{name}"', sqlstate="58030",
                                      hint="The server's log says why.") from None

    def pin(self, name: str) -> None:
        """Keep ``name`` open for good (a replication connection streams from it)."""
        self._pinned.add(canonical(name or MAIN))

    async def acquire(self, name: str, *, create: bool | None = None):
        """A session's database: (scheduler, release), release called when the session ends."""
        scheduler = await self.get(name, create=create)
        key = canonical(name or MAIN)
        self._sessions[key] = self._sessions.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            if self.open.get(key) is scheduler:
                self._sessions[key] -= 1
                if self._sessions[key] == 0:
                    self._idle_since[key] = time.monotonic()

        return scheduler, release

    def _idle(self, name: str) -> bool:
        """No session holds it, and nothing else works on it (a replica streaming from it, a
        writer or reader out)."""
        if name == MAIN or name in self._pinned or self._sessions.get(name, 0):
            return False
        scheduler = self.open[name]
        capture = scheduler.backend.capture
        if capture is not None and capture.listeners:
            return False
        if scheduler.writer_lock.locked() or scheduler._reader_slots.value < scheduler.max_readers:
            return False
        return True

    def _make_room(self) -> None:
        idle = [n for n in self.open if self._idle(n)]
        if not idle:
            raise TooManyConnections(
                "too many databases are open", detail=f"At most {self.max_open} databases besides main are open "
                "at once (--max-databases), and every one is in use.")
        self._close(min(idle, key=lambda n: self._idle_since.get(n, 0.0)))

    def _close(self, name: str) -> None:
        scheduler = self.open.pop(name)
        self._sessions.pop(name, None)
        self._idle_since.pop(name, None)
        scope = self._loops.pop(name, None)
        if scope is not None:
            scope.cancel()
        try:
            scheduler.backend.close()
        except Exception as exc:
            log.warning("closing database %s: %s", name, exc)
        claimed = self._claimed.pop(name, None)
        if claimed is not None:
            datadir.release(claimed)
        log.info("closed database %s (idle)", name)

    async def _close_idle(self) -> None:
        while True:
            await anyio.sleep(min(self.idle_timeout / 2, 5.0))
            now = time.monotonic()
            async with self._lock:
                for name in [n for n in self.open if self._idle(n)]:
                    if now - self._idle_since.get(name, now) >= self.idle_timeout:
                        self._close(name)

    async def session(self, state):
        """The innermost service of a session: the scheduler's session on the database the
        session names (``PRIVATE``: a database of its own, gone when the session ends)."""
        if state.database == PRIVATE:
            scheduler, drop = await self.private()
            service = await scheduler(state)
            service.on_close = drop
            return service
        # Only read-write users (or anyone, with no users configured) create databases.
        scheduler, release = await self.acquire(state.database, create=not state.read_only_user)
        try:
            service = await scheduler(state)
        except BaseException:
            release()
            raise
        service.on_close = release  # the database may close once no session uses it
        return service

    async def private(self) -> tuple[Scheduler, object]:
        """A database for one session; call the returned function when the session ends."""
        folder = Path(tempfile.mkdtemp(prefix="sqld-private-"))
        backend = LibsqlBackend(folder / "private.db", synchronous="off", foreign_keys=self._options["foreign_keys"],
                                unsafe_sql=self._options["unsafe_sql"])
        backend.open()
        scheduler = Scheduler(backend, **self._scheduler_options)
        scope = anyio.CancelScope()

        async def loop() -> None:
            with scope:
                await scheduler.run()

        if self._tg is not None:
            self._tg.start_soon(loop)

        def drop() -> None:
            scope.cancel()
            backend.close()
            shutil.rmtree(folder, ignore_errors=True)

        return scheduler, drop

    def close(self) -> None:
        for name, scheduler in self.open.items():
            try:
                scheduler.backend.close()
            except Exception as exc:  # closing the others matters more
                log.warning("closing database %s: %s", name, exc)
        self.open.clear()
        for path in self._claimed.values():
            datadir.release(path)
        self._claimed.clear()
