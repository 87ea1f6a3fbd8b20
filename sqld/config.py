"""The server's configuration: one frozen value, built by the CLI from flags and SQLD_* variables."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Config:
    backend: str = "libsql"
    fdb_cluster: str | None = None  # mvsqlite: cluster file, or "simulator"
    fdb_namespace: str = "sqld"
    db_path: str = "sqld-data"
    listen_host: str = "127.0.0.1"
    listen_port: int = 5432
    log_level: str = "info"
    max_connections: int = 100
    statement_timeout: float | None = None  # seconds; None: no limit
    lock_timeout: float | None = 30.0  # seconds a statement may wait for the writer or a reader
    idle_tx_timeout: float | None = 300.0  # seconds idle inside a transaction; None: no limit
    synchronous: str = "full"
    foreign_keys: bool = True
    create_databases: bool = True
    replication_log: bool = True
    replication_log_max_bytes: int = 64 << 20
    primary: tuple[str, int] | None = None  # a replica of this primary
    primary_database: str = "main"
    poll_interval: float = 0.5
    replica_wait_timeout: float = 5.0
    max_readers: int = 8
    inline_budget: int = 20
    max_message_size: int = 64 * 1024 * 1024
    auth: object = None  # sqld.auth.AuthConfig
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_required: bool = False
    primary_user: str = "sqld-replica"
    primary_password: str | None = None
    primary_sslmode: str = "prefer"
    primary_ca: str | None = None
    unsafe_sql: bool = False  # --allow-unsafe-sql: no SQL sandbox
    startup_timeout: float = 10.0  # seconds to start up and authenticate
    max_startups: int = 100  # connections not yet authenticated, in total (sqld.preauth)
    max_startups_per_peer: int = 32  # … from one peer address
    max_databases: int = 64  # databases open at once besides main
    database_idle_timeout: float | None = 60.0  # close a database no session used this long
    replication_users: tuple[str, ...] = ("sqld-replica",)  # who may use the replication sub-protocol
    max_sql_length: int = 16 * 1024 * 1024  # characters of statement text
    max_session_memory_bytes: int = 64 << 20  # kept by one session between messages (0: no limit)
    max_message_memory_bytes: int = 256 << 20  # large messages being received, all sessions (0: no limit)
    max_value_bytes: int = 64 << 20  # the largest string, BLOB or row (SQLite's SQLITE_LIMIT_LENGTH)
    max_memory_bytes: int = 1 << 30  # SQLite's hard heap limit, process-wide (0: none)


def parse_listen_addr(addr: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` → (host, port); raises ValueError."""
    addr = addr.strip()
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise ValueError(f"listen address {addr!r} has no port (expected HOST:PORT)")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen address {addr!r}: port must be a number from 0 to 65535")
    return host, int(port)
