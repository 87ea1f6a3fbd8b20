"""End to end: the PostgreSQL JDBC driver (pgjdbc) against a real sqld server.

tests/e2e/java/SqldJdbcCheck.java does the checking; this test compiles it into pytest's
tmp_path and runs it against the shared server, expecting exit status 0 and "OK".
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PGJDBC_VERSION = "42.7.13"
SOURCE = Path(__file__).parent / "java" / "SqldJdbcCheck.java"
COMPILE_TIMEOUT = 120  # both together stay under pytest-timeout's 300 s
RUN_TIMEOUT = 150


def _jar() -> Path:
    return (Path.home() / ".m2" / "repository" / "org" / "postgresql" / "postgresql" / PGJDBC_VERSION
            / f"postgresql-{PGJDBC_VERSION}.jar")


def _tools() -> tuple[Path, str, str]:
    jar = _jar()
    if not jar.is_file():
        pytest.skip(f"PostgreSQL JDBC driver not found at {jar}")
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None:
        pytest.skip("java not found on PATH (a JDK 11+ is needed for the JDBC test)")
    if javac is None:
        pytest.skip("javac not found on PATH (a JDK 11+ is needed for the JDBC test)")
    return jar, java, javac


def _run(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{what} did not finish in {timeout}s (killed)\nstdout:\n{_text(e.stdout)}\n"
                    f"stderr:\n{_text(e.stderr)}", pytrace=False)


def _text(out: str | bytes | None) -> str:
    """Output a TimeoutExpired carries, which may be bytes even with text=True."""
    if isinstance(out, bytes):
        return out.decode(errors="replace")
    return out or ""


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_jdbc_driver(sqld_server, table_name, tmp_path):
    jar, java, javac = _tools()
    classes = tmp_path / "classes"
    classes.mkdir()

    built = _run([javac, "-encoding", "UTF-8", "-cp", str(jar), "-d", str(classes), str(SOURCE)],
                 COMPILE_TIMEOUT, "javac")
    if built.returncode != 0:
        pytest.fail(f"javac failed ({built.returncode}):\n{built.stdout}\n{built.stderr}", pytrace=False)

    classpath = os.pathsep.join([str(jar), str(classes)])
    result = _run([java, "-Dfile.encoding=UTF-8", "-cp", classpath, "SqldJdbcCheck",
                   str(sqld_server.port), table_name], RUN_TIMEOUT, "SqldJdbcCheck")
    if result.returncode != 0 or result.stdout.splitlines()[-1:] != ["OK"]:
        pytest.fail(
            f"SqldJdbcCheck exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"server log (tail):\n{_tail(sqld_server.log())}",
            pytrace=False,
        )
