"""Run CPython's own sqlite3 tests with ``sqlite3`` replaced by ``sqld.client``.

Run as a script (a process of its own, since it swaps ``sys.modules['sqlite3']``); prints
one JSON object: counts, and the failures. The server is ``$SQLD_URL``. Each test gets a
database name of its own where CPython's tests use a file (``TESTFN``): a file deleted
locally is not a database dropped on the server.
"""

from __future__ import annotations

import importlib
import json
import sys
import unittest
import uuid

import sqld.client

sys.modules["sqlite3"] = sqld.client

MODULES = ["test_dbapi", "test_regression", "test_transactions", "test_types", "test_factory"]

# What sqld.client cannot do because the database runs in the server, not in this process.
IN_PROCESS = "an in-process feature of sqlite3: the database runs in the server"
EXCLUDED_CLASSES = {
    "test_dbapi.BlobTests": IN_PROCESS + " (blob I/O)",
    "test_dbapi.SerializeTests": IN_PROCESS + " (serialize/deserialize)",
    "test_dbapi.MultiprocessTests": "drives the stdlib sqlite3 in a child process on a local file",
    "test_dbapi.OpenTests": "about local files and sqlite3 URIs: the database is not a local file",
    "test_transactions.IsolationLevelFromInit": IN_PROCESS + " (set_trace_callback)",
    "test_transactions.IsolationLevelPostInit": IN_PROCESS + " (set_trace_callback)",
}
EXCLUDED_TESTS = {
    "test_transactions.SpecialCommandTests.test_pragma": "sets a connection pragma (count_changes): the server's "
    "SQL sandbox refuses connection settings, as connections are shared by sessions (docs/security.md)",
    "test_dbapi.ConnectionTests.test_connection_limits": IN_PROCESS + " (setlimit/getlimit)",
    "test_dbapi.ConnectionTests.test_connection_bad_limit_category": IN_PROCESS + " (setlimit/getlimit)",
    "test_dbapi.CursorTests.test_execute_too_many_params": IN_PROCESS + " (setlimit)",
    "test_dbapi.ExtensionTests.test_cursor_executescript_too_large_script": IN_PROCESS + " (setlimit)",
    "test_regression.RegressionTests.test_large_sql": IN_PROCESS + " (setlimit)",
    "test_dbapi.ConnectionTests.test_failed_open": "opens a local path that cannot be a database file",
    "test_dbapi.ModuleTests.test_error_code_on_exception": "opens a local directory as a database file",
    "test_regression.RegressionTests.test_collation": IN_PROCESS + " (create_collation)",
    "test_regression.RegressionTests.test_bpo37347": IN_PROCESS + " (set_trace_callback)",
    "test_regression.RegressionTests.test_executescript_step_through_select": IN_PROCESS + " (create_function)",
    "test_regression.RegressionTests.test_table_lock_cursor_non_readonly_select": IN_PROCESS + " (create_function)",
    "test_dbapi.ModuleTests.test_disallow_instantiation": IN_PROCESS + " (Connection.__call__ statement objects)",
    "test_regression.RegressionTests.test_connection_call": IN_PROCESS + " (Connection.__call__ statement objects)",
    "test_regression.RegressionTests.test_surrogates": IN_PROCESS + " (Connection.__call__ statement objects)",
    "test_regression.RecursiveUseOfCursors.test_recursive_cursor_close":
        "converters run once a statement's rows have arrived, so using the cursor from one is not an error",
    "test_regression.RecursiveUseOfCursors.test_recursive_cursor_init": "as above (recursive cursor use)",
    "test_regression.RecursiveUseOfCursors.test_recursive_cursor_iter": "as above (recursive cursor use)",
    "test_regression.RegressionTests.test_recursive_cursor_use": "as above (recursive cursor use)",
    "test_dbapi.ConnectionTests.test_connection_bad_reinit": "re-opens a local directory as a database file",
}


def _key(test) -> str:
    cls = type(test)
    return f"{cls.__module__.split('.')[-1]}.{cls.__name__}"


def _tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _tests(item)
        else:
            yield item


def main() -> None:
    suite = unittest.TestSuite()
    modules = {}
    for name in MODULES:
        modules[name] = importlib.import_module(f"test.test_sqlite3.{name}")
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(modules[name]))
    selected = unittest.TestSuite()
    excluded = {}
    for test in _tests(suite):
        key = _key(test)
        full = f"{key}.{test._testMethodName}"
        reason = EXCLUDED_CLASSES.get(key) or EXCLUDED_TESTS.get(full)
        if reason:
            excluded[full] = reason
            continue
        module = modules[key.split(".")[0]]
        setup = test.setUp

        def fresh_name_then_setup(module=module, setup=setup):
            if hasattr(module, "TESTFN"):
                module.TESTFN = f"cpython_{uuid.uuid4().hex[:12]}"
            setup()

        test.setUp = fresh_name_then_setup
        selected.addTest(test)
    result = unittest.TestResult()
    selected.run(result)
    print(json.dumps({
        "run": result.testsRun,
        "failures": [[str(t), tb[-2000:]] for t, tb in result.failures + result.errors],
        "skipped": [[str(t), why] for t, why in result.skipped],
        "excluded": excluded,
    }))


if __name__ == "__main__":
    main()
