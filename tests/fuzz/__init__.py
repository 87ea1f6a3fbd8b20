"""Fuzz tests of the wire protocol: the frontend decoder, and a real server fed raw messages.

Budget. CI runs a bounded, derandomized number of examples per property (so a failure
reproduces on any machine with the same hypothesis version); a long run asks for more:

    SQLD_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/fuzz -p no:cacheprovider

``SQLD_FUZZ_EXAMPLES`` sets ``max_examples`` of every fuzz property (default: 1000 for the
decoder properties, 200 for the server ones). ``SQLD_FUZZ_SEED=N`` switches from the fixed
derandomized order to hypothesis' random search with seed N (to explore beyond what CI
tried; a failure prints the seed again); ``SQLD_FUZZ_NO_SHRINK=1`` reports the first failing
input as found, unshrunk (when shrinking a slow server property would take too long). Each module prints the number of inputs it tried
(``fuzz[...]: N inputs in S s``) at its end, in pytest's terminal output.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, seed, settings

_EXAMPLES = os.environ.get("SQLD_FUZZ_EXAMPLES", "").strip()
_SEED = os.environ.get("SQLD_FUZZ_SEED", "").strip()
_NO_SHRINK = os.environ.get("SQLD_FUZZ_NO_SHRINK", "").strip() not in ("", "0")

# Inputs tried (calls of the property bodies, shrinking included), by suite name.
TRIED: Counter = Counter()
ELAPSED: Counter = Counter()


def budget(default: int) -> int:
    """max_examples for one property: SQLD_FUZZ_EXAMPLES if set, else ``default``."""
    return int(_EXAMPLES) if _EXAMPLES else default


def fuzz(default_examples: int, seconds_per_example: float = 0.05, **extra):
    """Decorator: hypothesis settings for a fuzz property (budget, reproducibility), and a
    pytest-timeout that grows with the budget (the project default of 300 s is for one test)."""
    conf = settings(
        max_examples=budget(default_examples),
        derandomize=not _SEED,
        database=None,  # nothing carried between runs: CI and a laptop try the same inputs
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture,
                               HealthCheck.large_base_example],
        **({"phases": [Phase.explicit, Phase.reuse, Phase.generate]} if _NO_SHRINK else {}),
        **extra,
    )

    def wrap(fn):
        fn = conf(fn)
        if _SEED:
            fn = seed(int(_SEED))(fn)
        # shrinking a failure may take as long again as finding it
        return pytest.mark.timeout(300 + 2 * budget(default_examples) * seconds_per_example)(fn)

    return wrap


def report_fixture(suite: str, extra=None):
    """A module-scoped autouse fixture that prints how many inputs the module's tests tried
    (and ``extra()``, if given, after it)."""

    @pytest.fixture(scope="module", autouse=True)
    def _report(request):
        start = time.monotonic()
        before = TRIED[suite]
        yield
        ELAPSED[suite] += time.monotonic() - start
        line = (f"fuzz[{suite}]: {TRIED[suite] - before} inputs tried in {time.monotonic() - start:.1f} s "
                f"(SQLD_FUZZ_EXAMPLES={_EXAMPLES or 'default'}, "
                f"{'seed ' + _SEED if _SEED else 'derandomized'})")
        if extra is not None:
            line += f"; {extra()}"
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is None:
            print(line)
            return
        # Teardown output is captured: write past the capture, straight to the terminal.
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write("\n")
            reporter.write_line(line)

    return _report
