"""A SQLAlchemy dialect: SQLAlchemy's SQLite dialect driving ``sqld.client``.

Registered as ``sqlite+sqld``: ``create_engine("sqlite+sqld://user@host:port/database")``.
Everything SQLAlchemy knows about SQLite SQL applies; only the DB-API changes.
"""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite


class SQLiteDialect_sqld(SQLiteDialect_pysqlite):
    driver = "sqld"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls):
        import sqld.client

        return sqld.client

    @classmethod
    def get_pool_class(cls, url):
        # Every database is on the server, so connections pool as for any server
        # (the SQLite dialect would pin ":memory:" to one thread's connection).
        return pool.QueuePool

    def create_connect_args(self, url):
        host = url.host or "127.0.0.1"
        port = url.port or 5432
        auth = ""
        if url.username:
            auth = quote(url.username, safe="")
            if url.password:
                auth += ":" + quote(str(url.password), safe="")
            auth += "@"
        database = url.database or "main"
        opts = dict(url.query)
        kwargs = {}
        if "timeout" in opts:
            kwargs["timeout"] = float(opts.pop("timeout"))
        return [f"sqld://{auth}{host}:{port}/{quote(database, safe='')}"], kwargs

    def on_connect(self):
        # SQLite's dialect registers Python functions (regexp, floor) on each connection;
        # they would run in this process, not in the server, so none are registered.
        return None


dialect = SQLiteDialect_sqld
