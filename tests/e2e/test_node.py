"""End to end: node-postgres (the `pg` package from npm) against a real sqld server.

tests/e2e/node/check.js does the checking; this test runs `node check.js PORT PREFIX` in
tests/e2e/node and expects exit status 0 and "OK". node-postgres is installed there by
scripts/test (npm install); without node or the package the test skips, saying why.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
RUN_TIMEOUT = 120


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found on PATH (Node.js is needed for the node-postgres test)")
    if not (NODE_DIR / "node_modules" / "pg" / "package.json").is_file():
        pytest.skip("node-postgres not installed: run scripts/test, which runs npm install")
    return node


def _text(out: str | bytes | None) -> str:
    """Output a TimeoutExpired carries, which may be bytes even with text=True."""
    if isinstance(out, bytes):
        return out.decode(errors="replace")
    return out or ""


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_node_postgres(sqld_server, table_name):
    node = _node()
    try:
        result = subprocess.run([node, "check.js", str(sqld_server.port), table_name], cwd=NODE_DIR,
                                capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"node check.js did not finish in {RUN_TIMEOUT}s (killed)\nstdout:\n{_text(e.stdout)}\n"
                    f"stderr:\n{_text(e.stderr)}\nserver log (tail):\n{_tail(sqld_server.log())}", pytrace=False)
    if result.returncode != 0 or result.stdout.splitlines()[-1:] != ["OK"]:
        pytest.fail(
            f"node check.js exited with {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
            f"server log (tail):\n{_tail(sqld_server.log())}",
            pytrace=False,
        )
