"""The FDB simulator in a process of its own, started and stopped by PID (for multi-process tests)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqld.backends.mvsqlite.simnet import RemoteDatabase

LISTENING = re.compile(r"listening on (127\.0\.0\.1):(\d+)")


class SimulatorProcess:
    """``python -m sqld.backends.mvsqlite.simulator --listen 127.0.0.1:0``; ``url`` is what
    sqld's ``--fdb-cluster`` takes, ``control()`` a client for faults and stats."""

    def __init__(self, log_path: Path, args: list[str] = ()) -> None:
        self.log_path = Path(log_path)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 15.0) -> "SimulatorProcess":
        self._log = open(self.log_path, "ab")
        start_at = self.log_path.stat().st_size
        cmd = [sys.executable, "-m", "sqld.backends.mvsqlite.simulator", "--listen", "127.0.0.1:0",
               "--log-level", "info", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[start_at:].decode(errors="replace")
            m = LISTENING.search(text)
            if m:
                self.port = int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the simulator did not start in {timeout}s:\n{self.log()}")

    @property
    def url(self) -> str:
        return f"sim://127.0.0.1:{self.port}"

    def control(self) -> RemoteDatabase:
        return RemoteDatabase("127.0.0.1", self.port, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
