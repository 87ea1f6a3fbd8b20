"""Shared fixtures: a real sqld process on a loopback port, started and stopped by PID."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

LISTENING = re.compile(r"listening on (\S+?):(\d+)[, ]")
# SQLD_TEST_BACKEND=mvsqlite runs every server the tests start on the mvsqlite backend, on the
# FoundationDB simulator inside the server process (CI runs the client suites so, too).
TEST_BACKEND = os.environ.get("SQLD_TEST_BACKEND", "libsql")
BACKEND_ARGS = ["--backend", "mvsqlite", "--fdb-cluster", "simulator"] if TEST_BACKEND == "mvsqlite" else []
libsql_only = pytest.mark.skipif(TEST_BACKEND == "mvsqlite", reason="about the libsql backend's files (database "
                                 "files on disk, data kept across a restart): the mvsqlite run uses an in-process "
                                 "FoundationDB simulator that keeps nothing on disk")


class SqldProcess:
    """A sqld server this test run started; ``stop`` ends it by its own PID only."""

    def __init__(self, db_path: Path, args: list[str], env: dict | None = None, log_name: str = "sqld.log") -> None:
        self.db_path = Path(db_path)
        self.log_path = self.db_path.parent / log_name
        self.args = args
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def start(self, timeout: float = 20.0) -> "SqldProcess":
        env = dict(os.environ)
        env.update(self.env or {})
        self._log = open(self.log_path, "ab")
        start_at = self.log_path.stat().st_size
        extra = BACKEND_ARGS if "--backend" not in self.args and "--primary" not in self.args else []
        cmd = [sys.executable, "-m", "sqld", "--db-path", str(self.db_path), "--listen-addr",
               f"{self.host}:{self.port}", *extra, *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_at:].decode(errors="replace")
            m = LISTENING.search(text)
            if m:
                self.port = int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"sqld exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"sqld did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dsn(self, **extra) -> str:
        parts = {"host": self.host, "port": self.port, "user": "tester", "dbname": "main", **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="session")
def sqld_server(tmp_path_factory):
    """One server for the whole run (tests use their own table names)."""
    root = tmp_path_factory.mktemp("sqld-shared")
    server = SqldProcess(root / "data", []).start()
    yield server
    server.stop()


@pytest.fixture
def start_sqld(tmp_path):
    """Start servers of one's own (with flags); all are stopped at the end of the test."""
    started: list[SqldProcess] = []

    def start(*args: str, db_path: Path | None = None, env: dict | None = None) -> SqldProcess:
        server = SqldProcess(db_path or tmp_path / f"data{len(started)}", list(args), env,
                             log_name=f"sqld{len(started)}.log").start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


_table_counter = iter(range(1, 1_000_000))


@pytest.fixture
def table_name(request) -> str:
    """A table name no other test uses."""
    base = re.sub(r"\W", "_", request.node.name)[:40].lower()
    return f"t_{base}_{next(_table_counter)}_{os.getpid()}"
