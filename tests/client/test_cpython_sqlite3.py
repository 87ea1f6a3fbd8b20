"""CPython's own sqlite3 tests, with sqlite3 replaced by sqld.client talking to a live server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("cpython_runner.py")


@pytest.mark.slow
def test_cpython_sqlite3_suite_passes(sqld_server):
    env = dict(os.environ, SQLD_URL=f"sqld://tester@{sqld_server.host}:{sqld_server.port}")
    out = subprocess.run([sys.executable, str(RUNNER)], capture_output=True, text=True, timeout=600, env=env,
                         cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])  # the last line; CPython prints a banner
    print(f"\nCPython sqlite3 tests over sqld.client: {report['run']} run, {len(report['failures'])} failed, "
          f"{len(report['skipped'])} skipped by CPython, {len(report['excluded'])} excluded")
    for test, reason in sorted(report["excluded"].items()):
        print(f"  excluded {test}: {reason}")
    failures = "\n\n".join(f"{name}\n{tb}" for name, tb in report["failures"])
    assert not report["failures"], failures
    assert report["run"] >= 230
