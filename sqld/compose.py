"""Composes a server from its configuration: a primary (its databases, the replication
sub-protocol) or a replica (local copy, follower, forwarded writes), listening until
SIGINT or SIGTERM. ``sqld.cli`` parses the flags into a ``Config`` and calls ``serve``."""

from __future__ import annotations

import logging
import signal

import anyio

from sqld import __version__
from sqld.config import Config
from sqld.errors import SqldError

log = logging.getLogger("sqld")


async def serve(config: Config) -> None:
    """Run the server ``config`` describes until SIGINT or SIGTERM."""
    from sqld.backends import memory

    memory.configure(max_value=config.max_value_bytes, max_memory=config.max_memory_bytes)
    if config.primary is not None:
        await serve_replica(config)
    else:
        await serve_primary(config)


def _connections(config: Config, sessions, replication=None):
    """The protocol driver's factory over a session stack built by ``sessions``."""
    from sqld.services.pgconn import PgConnectionFactory
    from sqld.services.stack import SessionStackFactory

    factory = PgConnectionFactory(
        SessionStackFactory(sessions, statement_timeout=config.statement_timeout, lock_timeout=config.lock_timeout,
                            idle_tx_timeout=config.idle_tx_timeout),
        max_connections=config.max_connections, max_message_size=config.max_message_size,
        replication=replication, auth=config.auth, tls=_tls_context(config), tls_required=config.tls_required,
        startup_timeout=config.startup_timeout, max_sql_length=config.max_sql_length,
        max_session_memory=config.max_session_memory_bytes or None,
        max_message_memory=config.max_message_memory_bytes or None, gate=_startup_gate(config),
    )
    return factory


async def serve_primary(config: Config) -> None:
    """A primary: the databases of ``--db-path`` (or FoundationDB), with the replication
    sub-protocol for replicas."""
    from sqld.services.compat import sql_functions
    from sqld.services.databases import Databases

    databases = Databases(
        config.db_path, create=config.create_databases, synchronous=config.synchronous,
        foreign_keys=config.foreign_keys, max_readers=config.max_readers, inline_budget=config.inline_budget,
        functions=sql_functions(), replication_log=config.replication_log,
        replication_log_max_bytes=config.replication_log_max_bytes,
        opener=_mvsqlite_opener(config) if config.backend == "mvsqlite" else None, unsafe_sql=config.unsafe_sql,
        max_open=config.max_databases, idle_timeout=config.database_idle_timeout,
    )
    databases.open_main()
    try:
        factory = _connections(config, databases.session, _replication(config, databases))
        where = (f"serving {databases.main_file}" if config.backend == "libsql" else
                 f"serving FoundationDB {config.fdb_cluster}, namespace {config.fdb_namespace}")
        server = await _listen(config, where)
        async with anyio.create_task_group() as tg:
            databases.start(tg)
            await _serve(server, factory, tg)
    finally:
        databases.close()
        log.info("stopped; databases checkpointed")


def _startup_gate(config: Config):
    from sqld.preauth import DEFAULT_MAX_WAITING, StartupGate

    # as many may wait for room as could ever be served, and never fewer than a thousand
    return StartupGate(max_total=config.max_startups, max_per_peer=config.max_startups_per_peer,
                       max_waiting=max(DEFAULT_MAX_WAITING, config.max_connections))


def _replication(config: Config, databases):
    """Who may use the replication sub-protocol, on which database: the replication account
    (``--replication-user``, or ``replication`` in the users file), on a database that exists.
    With no users configured, whoever may connect (loopback, or --allow-trust)."""
    from sqld.auth import NotAllowed
    from sqld.services.databases import MAIN, PRIVATE, UnknownDatabase

    users = config.auth.users if config.auth is not None else None
    names = frozenset(config.replication_users)

    async def replication(state):
        if users is not None and len(users):
            account = users.get(state.user)
            if account is None or not (account.replication or account.name in names):
                raise NotAllowed(f'user "{state.user[:64]}" may not use replication',
                                 hint="Replicas connect as a replication account: --replication-user, or "
                                 "'replication' after the user's secret in the users file.")
        name = state.database or MAIN
        if name == PRIVATE:
            raise UnknownDatabase(f'database "{name}" cannot be replicated')
        scheduler = await databases.get(name, create=False)  # replication never creates a database
        databases.pin(name)
        return scheduler

    return replication


def _tls_context(config: Config):
    if config.tls_cert is None:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SqldError(f"cannot load the TLS certificate or key: {exc}") from None
    return context


def _mvsqlite_opener(config: Config):
    """Databases of the mvsqlite backend: each name's pages under NAMESPACE/NAME/ in FDB."""
    from sqld.backends.mvsqlite.backend import MvsqliteBackend

    if config.fdb_cluster == "simulator":
        from sqld.backends.mvsqlite.simulator import SimDatabase

        log.warning("mvsqlite on the in-process FoundationDB simulator: nothing outlives this process")
        fdb = SimDatabase()
    elif config.fdb_cluster.startswith("sim://"):
        from sqld.backends.mvsqlite.fdbport import FDBError
        from sqld.backends.mvsqlite.simnet import RemoteDatabase

        try:
            fdb = RemoteDatabase.from_url(config.fdb_cluster)
            fdb.ping()
        except ValueError as exc:
            raise SqldError(f"--fdb-cluster: {exc}") from None
        except FDBError as exc:
            raise SqldError(f"--fdb-cluster: {exc}; start it with `python -m sqld.backends.mvsqlite.simulator "
                            f"--listen HOST:PORT`") from None
        log.warning("mvsqlite on the FoundationDB simulator at %s: for tests only, nothing outlives it",
                    config.fdb_cluster)
    else:
        from sqld.backends.mvsqlite.fdbreal import open_database

        try:
            fdb = open_database(config.fdb_cluster)
        except RuntimeError as exc:
            raise SqldError(str(exc)) from None

    def opener(name: str):
        return MvsqliteBackend(fdb, f"{config.fdb_namespace}/{name}/".encode(), foreign_keys=config.foreign_keys,
                               unsafe_sql=config.unsafe_sql)

    opener.exists = lambda name: MvsqliteBackend.exists(fdb, f"{config.fdb_namespace}/{name}/".encode())
    return opener


async def serve_replica(config: Config) -> None:
    """A replica of ``--primary``: a local copy kept up to date by the follower, read-only
    connections on it, and writes forwarded to the primary."""
    from sqld.backends.libsql import database_file
    from sqld.backends.replica import ReplicaBackend
    from sqld.replication.follower import Follower
    from sqld.services.compat import sql_functions
    from sqld.services.forward import PrimaryAccount, ReplicaSessions, replica_functions
    from sqld.services.scheduler import Scheduler

    host, port = config.primary
    account = PrimaryAccount(config.primary_user, config.primary_password, config.primary_sslmode, config.primary_ca)
    node = Follower(host, port, database_file(config.db_path), database=config.primary_database,
                       user=account.user, password=account.password, sslmode=account.sslmode,
                       sslrootcert=account.sslrootcert, poll_interval=config.poll_interval,
                       durable=config.synchronous == "full")
    log.info("replica of %s:%d (database %s): preparing %s", host, port, config.primary_database, node.db_file)
    await node.prepare()
    backend = ReplicaBackend(node.db_file, foreign_keys=config.foreign_keys, applier_idle=node.local_copy.idle,
                             unsafe_sql=config.unsafe_sql)
    backend.open()
    try:
        scheduler = Scheduler(backend, max_readers=config.max_readers, inline_budget=config.inline_budget,
                              functions=sql_functions() + replica_functions(node), read_only=True)
        scheduler.commit_seq = node.applied

        def on_apply(frame: int, schema_changed: bool, replaced: bool) -> None:
            scheduler.commit_seq = frame  # a read transaction's snapshot frame (see services.forward)
            if replaced:
                scheduler.drop_readers()
            elif schema_changed:
                scheduler.schema_changed()

        node.on_apply = on_apply
        sessions = ReplicaSessions(node, scheduler, primary=(host, port), database=config.primary_database,
                                   wait_timeout=config.replica_wait_timeout,
                                   account=account)
        factory = _connections(config, sessions)
        server = await _listen(config, f"replica {node.db_file} of {host}:{port}")
        async with anyio.create_task_group() as tg:
            tg.start_soon(node.run)
            await _serve(server, factory, tg)
    finally:
        backend.close()
        node.close()
        log.info("stopped at frame %d", node.applied)


async def _listen(config: Config, what: str):
    """Bind the listening sockets (a taken port is one clear line) and say where."""
    from sqld.server import Server

    server = Server(config.listen_host, config.listen_port)
    try:
        bound = await server.listen()
    except OSError as exc:
        raise SqldError(f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror or exc}") from None
    where = ", ".join(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in bound)
    log.info("sqld %s listening on %s, %s (backend %s, synchronous=%s)",
             __version__, where, what, config.backend, config.synchronous)
    return server


async def _serve(server, factory, tg) -> None:
    """Serve until SIGINT or SIGTERM."""
    tg.start_soon(server.serve, factory)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: stopping (open transactions roll back)", signal.Signals(signum).name)
            factory.registry.cancel_all()
            tg.cancel_scope.cancel()
            break
