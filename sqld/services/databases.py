"""Databases by name: the startup packet's ``database`` picks one; each has its own Scheduler.

In folder mode (``--db-path DIR``) the database ``NAME`` is the file ``DIR/NAME.db`` (``main``
is ``DIR/main.db``); a name seen for the first time creates it when ``create`` allows.
With ``--db-path FILE`` the file is the one database, ``main``. The name ``:memory:`` gives
the session a private database of its own, dropped when the session ends.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path

import anyio
import anyio.abc

from sqld.backends.libsql import LibsqlBackend, database_file
from sqld.errors import SqldError
from sqld.services.scheduler import Scheduler

log = logging.getLogger(__name__)

MAIN = "main"
PRIVATE = ":memory:"
# No separators, control characters or leading '.': no name can escape the folder.
_NAME = re.compile(r"[^/\\\x00-\x1f.][^/\\\x00-\x1f]{0,62}")


class UnknownDatabase(SqldError):
    sqlstate = "3D000"
    severity = "FATAL"


class Databases:
    """Open databases by name, each a backend with its Scheduler and group-commit loop.

    ``start(task_group)`` hands over the task group the loops run in; databases opened
    before it (main, at start-up) get their loop then.
    """

    def __init__(self, db_path, *, create: bool = True, synchronous: str = "full", foreign_keys: bool = True,
                 max_readers: int = 8, inline_budget: int = 20, functions=(), replication_log: bool = False,
                 replication_log_max_bytes: int = 64 << 20, opener=None, unsafe_sql: bool = False) -> None:
        self.db_path = Path(db_path)
        # ``opener(name) -> backend`` and ``opener.exists(name)`` for backends that are not
        # files (mvsqlite);
        # by default a database is a SQLite file of the libsql backend.
        self.opener = opener
        self.main_file = database_file(db_path) if opener is None else self.db_path
        self.folder_mode = opener is not None or self.main_file != self.db_path
        self.create = create
        self._options = dict(synchronous=synchronous, foreign_keys=foreign_keys, replication_log=replication_log,
                             replication_log_max_bytes=replication_log_max_bytes, unsafe_sql=unsafe_sql)
        self._scheduler_options = dict(max_readers=max_readers, inline_budget=inline_budget,
                                       functions=list(functions))
        self.open: dict[str, Scheduler] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._lock = anyio.Lock()

    def open_main(self) -> Scheduler:
        """Open the main database now (start-up: a bad file is an error before listening)."""
        return self._open(MAIN, self.main_file)

    def _open(self, name: str, path: Path) -> Scheduler:
        if self.opener is not None:
            backend = self.opener(name)
        else:
            backend = LibsqlBackend(path, **self._options)
        backend.open()
        scheduler = Scheduler(backend, **self._scheduler_options)
        self.open[name] = scheduler
        if self._tg is not None:
            self._tg.start_soon(scheduler.run)
        return scheduler

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        for scheduler in self.open.values():
            tg.start_soon(scheduler.run)

    def path_of(self, name: str) -> Path:
        if name == MAIN:
            return self.main_file
        if not _NAME.fullmatch(name) or ".." in name:
            raise UnknownDatabase(
                f'invalid database name "{name[:80]}"',
                hint="A database name is up to 63 characters, without '/', '\\' or control characters, "
                "not starting with '.'.",
            )
        if not self.folder_mode:
            raise UnknownDatabase(f'database "{name}" does not exist',
                                  hint="This server serves one database file (--db-path FILE): connect to \"main\".")
        return self.db_path / f"{name}.db"

    async def get(self, name: str) -> Scheduler:
        name = name or MAIN
        scheduler = self.open.get(name)
        if scheduler is not None:
            return scheduler
        async with self._lock:
            scheduler = self.open.get(name)
            if scheduler is not None:
                return scheduler
            path = self.path_of(name)
            exists = path.exists() if self.opener is None else self.opener.exists(name)
            if not exists and not self.create:
                raise UnknownDatabase(f'database "{name}" does not exist',
                                      hint="This server does not create databases (--no-create-databases).")
            log.info("opening database %s (%s)", name, path)
            return self._open(name, path)

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
