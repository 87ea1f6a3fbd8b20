"""The ``sqld`` command: flags (each also an SQLD_* environment variable) → a running server."""

from __future__ import annotations

import logging
import sys

import anyio
import click

from sqld import __version__
from sqld.config import Config, parse_listen_addr
from sqld.errors import SqldError

log = logging.getLogger("sqld")


def _timeout(ctx, param, value):
    if value is None or value == "" or value == "0":
        return None
    from sqld.services.compat import parse_timeout

    try:
        return parse_timeout(value)
    except SqldError as exc:
        raise click.BadParameter(exc.message) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--backend", type=click.Choice(["libsql", "mvsqlite"]), default="libsql", envvar="SQLD_BACKEND",
              show_envvar=True, help="Storage backend: libsql (a SQLite file in --db-path) or mvsqlite (pages "
              "in FoundationDB, shared by several sqld processes; needs --fdb-cluster).")
@click.option("--fdb-cluster", default=None, envvar="SQLD_FDB_CLUSTER", show_envvar=True, metavar="FILE",
              help="mvsqlite: the FoundationDB cluster file. 'simulator' runs an in-memory FoundationDB "
              "inside this process instead (one process, nothing kept: for trying and testing); "
              "'sim://127.0.0.1:PORT' uses the simulator served by `python -m "
              "sqld.backends.mvsqlite.simulator --listen 127.0.0.1:PORT` (several sqld processes on one "
              "database; for tests only: no authentication, loopback only, nothing kept).")
@click.option("--database", "fdb_namespace", default="sqld", envvar="SQLD_DATABASE", show_envvar=True,
              metavar="NAME", help="mvsqlite: the namespace in the cluster; database D's pages are under "
              "the key prefix NAME/D/, so several deployments can share one cluster.")
@click.option("--db-path", default="sqld-data", envvar="SQLD_DB_PATH", show_envvar=True,
              help="Folder for the database files (the database is main.db in it), or a SQLite file.")
@click.option("--listen-addr", default="127.0.0.1:5432", envvar="SQLD_LISTEN_ADDR", show_envvar=True,
              help="Address to serve the PostgreSQL protocol on, HOST:PORT ([::1]:PORT for IPv6).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
              default="info", envvar="SQLD_LOG_LEVEL", show_envvar=True, help="Log verbosity (to stderr).")
@click.option("--max-connections", type=click.IntRange(1), default=100, envvar="SQLD_MAX_CONNECTIONS",
              show_envvar=True, help="Sessions served at once; the next client gets SQLSTATE 53300.")
@click.option("--statement-timeout", callback=_timeout, default=None, envvar="SQLD_STATEMENT_TIMEOUT",
              show_envvar=True, help="Cancel statements running longer than this (e.g. 500ms, 30s); "
              "0 or unset: no limit. A ceiling: sessions may SET statement_timeout lower, not higher "
              "(nor to 0).")
@click.option("--lock-timeout", callback=_timeout, default="30s", envvar="SQLD_LOCK_TIMEOUT", show_envvar=True,
              help="How long a statement may wait for the writer (held by another session's "
              "transaction) or for a free reader before failing (55P03); 0: no limit. A ceiling: "
              "sessions may SET lock_timeout lower, not higher.")
@click.option("--idle-in-transaction-timeout", "idle_tx_timeout", callback=_timeout, default="5min",
              envvar="SQLD_IDLE_IN_TRANSACTION_TIMEOUT", show_envvar=True,
              help="End sessions idle inside a transaction longer than "
              "this: their transaction rolls back, and the writer or reader it holds is free again. "
              "0: never. A ceiling: sessions may SET idle_in_transaction_session_timeout lower, not "
              "higher.")
@click.option("--synchronous", type=click.Choice(["full", "normal"], case_sensitive=False), default="full",
              envvar="SQLD_SYNCHRONOUS", show_envvar=True,
              help="full: a COMMIT the client saw is on disk. normal: faster, but a power loss may "
              "undo the last commits (never corrupts).")
@click.option("--foreign-keys/--no-foreign-keys", default=True, envvar="SQLD_FOREIGN_KEYS", show_envvar=True,
              help="Enforce FOREIGN KEY constraints (SQLite's PRAGMA foreign_keys) on every connection.")
@click.option("--create-databases/--no-create-databases", default=True, envvar="SQLD_CREATE_DATABASES",
              show_envvar=True, help="Create a database the first time a client names it (folder mode).")
@click.option("--replication-log/--no-replication-log", default=True, envvar="SQLD_REPLICATION_LOG",
              show_envvar=True, help="Keep a replication log beside each database (NAME.db-replog) so "
              "replicas can follow it. Off: writes are ~15% faster, and no replica can attach.")
@click.option("--replication-log-max-mb", type=click.IntRange(1), default=64, envvar="SQLD_REPLICATION_LOG_MAX_MB",
              show_envvar=True, help="Compact the replication log past this size: replicas further behind "
              "than its start bootstrap from a snapshot instead.")
@click.option("--primary", default=None, envvar="SQLD_PRIMARY", show_envvar=True, metavar="HOST:PORT",
              help="Run as a replica of the sqld primary at HOST:PORT: serve reads from a local copy "
              "(in --db-path), forward writes to the primary.")
@click.option("--primary-database", default="main", envvar="SQLD_PRIMARY_DATABASE", show_envvar=True,
              help="Replica: the primary's database to follow.")
@click.option("--poll-interval", type=click.FloatRange(0.01, 60), default=0.5, envvar="SQLD_POLL_INTERVAL",
              show_envvar=True, help="Replica: seconds between attempts to reach the primary when it is "
              "down (doubling up to 5 s). Frames are streamed, not polled, while it is up.")
@click.option("--replica-wait-timeout", callback=_timeout, default="5s", envvar="SQLD_REPLICA_WAIT_TIMEOUT",
              show_envvar=True, help="Replica: how long a read may wait for the replica to apply the "
              "session's own writes (read-your-writes) before it fails with 57014.")
@click.option("--max-readers", type=click.IntRange(1, 256), default=8, envvar="SQLD_MAX_READERS",
              show_envvar=True, help="Reader connections: how many reads may run at once.")
@click.option("--startup-timeout", callback=_timeout, default="10s", envvar="SQLD_STARTUP_TIMEOUT",
              show_envvar=True, help="Close a connection that has not started up and authenticated within "
              "this long (PostgreSQL's authentication_timeout).")
@click.option("--max-startups", type=click.IntRange(1), default=100, envvar="SQLD_MAX_STARTUPS", show_envvar=True,
              help="Connections that may be starting up (not yet authenticated) at once, apart from "
              "--max-connections; past it the oldest of the busiest peer is closed (53300).")
@click.option("--max-startups-per-peer", type=click.IntRange(1), default=32, envvar="SQLD_MAX_STARTUPS_PER_PEER",
              show_envvar=True, help="The same, from one peer address: past it that peer's own oldest is closed.")
@click.option("--max-databases", type=click.IntRange(1), default=64, envvar="SQLD_MAX_DATABASES", show_envvar=True,
              help="Databases open at once besides main; an idle one is closed to make room, else 53300.")
@click.option("--database-idle-timeout", callback=_timeout, default="60s", envvar="SQLD_DATABASE_IDLE_TIMEOUT",
              show_envvar=True, help="Close a database (not main) that no session has used this long; it "
              "opens again when named. 0: never.")
@click.option("--replication-user", "replication_users", multiple=True, default=("sqld-replica",),
              envvar="SQLD_REPLICATION_USER", show_envvar=True, metavar="NAME",
              help="A user who may use the replication sub-protocol (replicas; repeatable). Users marked "
              "'replication' in the users file may too. With no users configured, anyone who may connect.")
@click.option("--max-sql-length", type=click.IntRange(1), default=16 * 1024 * 1024, envvar="SQLD_MAX_SQL_LENGTH",
              show_envvar=True, help="Longest statement text accepted, in characters (54000 beyond).")
@click.option("--max-session-memory-mb", type=click.IntRange(0), default=64, envvar="SQLD_MAX_SESSION_MEMORY_MB",
              show_envvar=True, help="What one session may keep between its messages (prepared statements, "
              "portals with their parameters, settings), in MiB; beyond, 53200 'out of memory'. 0: no limit.")
@click.option("--max-message-memory-mb", type=click.IntRange(0), default=256, envvar="SQLD_MAX_MESSAGE_MEMORY_MB",
              show_envvar=True, help="Large messages (over 1 MiB) being received from all sessions together, in "
              "MiB (at least one whole message): one that finds no room waits for some, up to 30 s (or its "
              "statement timeout), then fails its session with 53200. 0: no limit.")
@click.option("--max-value-mb", type=click.IntRange(1, 1000), default=64, envvar="SQLD_MAX_VALUE_MB",
              show_envvar=True, help="Largest string, BLOB or row a statement may make or store, in MiB "
              "(54000 beyond).")
@click.option("--max-memory-mb", type=click.IntRange(0), default=1024, envvar="SQLD_MAX_MEMORY_MB",
              show_envvar=True, help="Memory all SQLite connections of the server may use together, in MiB "
              "(a statement that needs more fails with 53200; 0: no limit).")
@click.option("--allow-unsafe-sql", is_flag=True, envvar="SQLD_ALLOW_UNSAFE_SQL", show_envvar=True,
              help="Let clients ATTACH files, VACUUM INTO a path, load extensions and set pragmas that change "
              "how the server writes its files (refused with 42501 by default).")
@click.option("--user", "users", multiple=True, metavar="NAME:PASSWORD",
              help="A user who may connect (repeatable). Also SQLD_USERS=name:password,… and --users-file.")
@click.option("--users-file", default=None, envvar="SQLD_USERS_FILE", show_envvar=True, metavar="FILE",
              help="Users, a line each: 'NAME SECRET [readonly]'; SECRET a password or a SCRAM-SHA-256 "
              "verifier (python -m sqld.auth prints one).")
@click.option("--auth-method", type=click.Choice(["scram-sha-256", "md5", "password"]), default="scram-sha-256",
              envvar="SQLD_AUTH_METHOD", show_envvar=True,
              help="How users prove their password. md5 and password (cleartext) only if you must.")
@click.option("--allow-trust", is_flag=True, envvar="SQLD_ALLOW_TRUST", show_envvar=True,
              help="With no users configured, accept any user from anywhere (without it: from loopback only, "
              "and the server refuses to listen beyond loopback).")
@click.option("--tls-cert", default=None, envvar="SQLD_TLS_CERT", show_envvar=True, metavar="FILE",
              help="TLS certificate (PEM, with its chain): clients may then ask for TLS (sslmode=require).")
@click.option("--tls-key", default=None, envvar="SQLD_TLS_KEY", show_envvar=True, metavar="FILE",
              help="The TLS certificate's private key (PEM).")
@click.option("--tls-required", is_flag=True, envvar="SQLD_TLS_REQUIRED", show_envvar=True,
              help="Refuse clients that do not use TLS (28000).")
@click.option("--primary-user", default="sqld-replica", envvar="SQLD_PRIMARY_USER", show_envvar=True,
              help="Replica: the user it connects to the primary as (replication and forwarded writes).")
@click.option("--primary-password", default=None, envvar="SQLD_PRIMARY_PASSWORD", show_envvar=True,
              help="Replica: that user's password (prefer the environment variable).")
@click.option("--primary-sslmode", type=click.Choice(["disable", "prefer", "require", "verify-full"]),
              default="prefer", envvar="SQLD_PRIMARY_SSLMODE", show_envvar=True,
              help="Replica: TLS to the primary, as libpq's sslmode.")
@click.option("--primary-ca", default=None, envvar="SQLD_PRIMARY_CA", show_envvar=True, metavar="FILE",
              help="Replica: CA certificates to verify the primary with (verify-full).")
@click.version_option(__version__, prog_name="sqld")
def main(backend, fdb_cluster, fdb_namespace, db_path, listen_addr, log_level, max_connections, statement_timeout, lock_timeout,
         idle_tx_timeout,
         synchronous,
         foreign_keys, create_databases, replication_log, replication_log_max_mb, primary, primary_database, poll_interval,
         replica_wait_timeout, max_readers, users, users_file, auth_method, allow_trust, tls_cert, tls_key,
         tls_required, primary_user, primary_password, primary_sslmode, primary_ca, allow_unsafe_sql,
         startup_timeout, max_startups, max_startups_per_peer, max_databases, database_idle_timeout,
         replication_users, max_sql_length, max_session_memory_mb, max_value_mb, max_memory_mb,
         max_message_memory_mb):
    """sqld: a SQLite database served over the PostgreSQL wire protocol.

    Any PostgreSQL client (psql, psycopg, asyncpg, JDBC…) can connect; the SQL it sends
    is SQLite's dialect.
    """
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        host, port = parse_listen_addr(listen_addr)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen-addr") from None
    if backend == "mvsqlite" and not fdb_cluster:
        raise click.BadParameter("--backend mvsqlite needs --fdb-cluster FILE (or 'simulator')",
                                 param_hint="--fdb-cluster")
    primary_addr = None
    if primary:
        try:
            primary_addr = parse_listen_addr(primary)
        except ValueError as exc:
            raise click.BadParameter(str(exc).replace("listen address", "primary address"),
                                     param_hint="--primary") from None
    import os as _os

    from sqld.auth import AuthConfig, Users, is_loopback

    try:
        account_list = Users.load(users, _os.environ.get("SQLD_USERS"), users_file)
    except SqldError as exc:
        raise click.BadParameter(exc.message, param_hint="--user/--users-file") from None
    if not account_list and not allow_trust and not is_loopback(host):
        raise click.UsageError(f"refusing to listen on {host} with no users configured: anyone who can reach it "
                               "could connect. Configure users (--user, --users-file), listen on loopback, or "
                               "pass --allow-trust.")
    if backend == "libsql" or primary_addr is not None:
        from sqld.backends.libsql import database_file
        from sqld.datadir import InUse, claim, lock_file

        main_file = database_file(db_path)
        try:
            claim(main_file)  # one server per database (a replica's local copy too)
        except InUse as exc:
            raise click.UsageError(f"{db_path} is in use by another sqld (pid {exc.pid}): one server per "
                                   f"database (lock {lock_file(main_file).name})") from None
        except OSError as exc:
            raise click.UsageError(f"cannot lock {db_path}: {exc}") from None
    if account_list:
        from sqld.auth import load_secret
        from sqld.backends.libsql import database_file

        try:
            load_secret(database_file(db_path).parent)  # salts that persist across restarts
        except SqldError as exc:
            raise click.UsageError(exc.message) from None
        account_list.disguise()
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert/--tls-key")
    if tls_required and tls_cert is None:
        raise click.BadParameter("--tls-required needs --tls-cert and --tls-key", param_hint="--tls-required")
    config = Config(
        backend=backend, fdb_cluster=fdb_cluster, fdb_namespace=fdb_namespace, db_path=db_path, listen_host=host, listen_port=port, log_level=log_level,
        max_connections=max_connections, statement_timeout=statement_timeout, lock_timeout=lock_timeout,
        idle_tx_timeout=idle_tx_timeout,
        synchronous=synchronous.lower(), foreign_keys=foreign_keys, max_readers=max_readers,
        create_databases=create_databases, replication_log=replication_log, primary=primary_addr,
        replication_log_max_bytes=replication_log_max_mb << 20,
        primary_database=primary_database, poll_interval=poll_interval,
        replica_wait_timeout=replica_wait_timeout or 5.0,
        auth=AuthConfig(account_list, auth_method, allow_trust), tls_cert=tls_cert, tls_key=tls_key,
        tls_required=tls_required, primary_user=primary_user, primary_password=primary_password,
        primary_sslmode=primary_sslmode, primary_ca=primary_ca, unsafe_sql=allow_unsafe_sql,
        startup_timeout=startup_timeout or 10.0, max_sql_length=max_sql_length,
        max_session_memory_bytes=max_session_memory_mb << 20,
        max_message_memory_bytes=max_message_memory_mb << 20,
        max_startups=max_startups, max_startups_per_peer=max_startups_per_peer,
        max_databases=max_databases, database_idle_timeout=database_idle_timeout,
        replication_users=tuple(replication_users),
        max_value_bytes=max_value_mb << 20, max_memory_bytes=max_memory_mb << 20,
    )
    if allow_trust and not account_list and not is_loopback(host):
        log.warning("no users configured and --allow-trust: anyone who reaches %s can connect", listen_addr)
    from sqld.compose import serve

    try:
        anyio.run(serve, config, backend="asyncio", backend_options={"use_uvloop": _have_uvloop()})
    except SqldError as exc:
        click.echo(f"sqld: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
