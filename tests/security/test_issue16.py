"""Issue 16: one client, logged in or not, must not lock everyone else out or read what it
should not. A test per item (items 3, 8 and 9 are tested with the session code)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import threading
import time

import anyio
import asyncpg
import psutil
import psycopg
import pytest
import scramp

from sqld.auth import scram_verifier
from sqld.client.wire import ServerError, WireConnection, WireError
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder


def rss(server) -> int:
    return psutil.Process(server.pid).memory_info().rss


def users_file(tmp_path, extra: str = "") -> str:
    path = tmp_path / "users"
    path.write_text(f"alice s3cret\n"
                    f"carol {scram_verifier('c4rol')}\n"
                    f"reader r3ad readonly\n"
                    f"sqld-replica rep1\n" + extra)
    return str(path)


@pytest.fixture
def secured(start_sqld, tmp_path):
    def start(*args, db="db"):
        return start_sqld("--users-file", users_file(tmp_path), *args, db_path=tmp_path / db)
    return start


def psql(server, sql: str, user: str = "tester", password: str = "", dbname: str = "main", timeout: float = 15):
    env = {"PATH": "/usr/bin:/bin", "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(["psql", "-h", server.host, "-p", str(server.port), "-U", user, "-d", dbname, "-tAc", sql],
                          capture_output=True, text=True, env=env, timeout=timeout)


def closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the server closed (or refused with an error and closed) this socket."""
    sock.settimeout(wait or 0.01)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (socket.timeout, BlockingIOError):
        return False
    except OSError:
        return True


# -- 1. idle sockets that never log in -------------------------------------------------------


def test_item1_silent_sockets_do_not_lock_out_new_clients(start_sqld, tmp_path):
    server = start_sqld("--max-connections", "20", db_path=tmp_path / "db")
    for _round in range(3):  # again and again
        silent = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(20)]
        time.sleep(1.5)
        started = time.monotonic()
        out = psql(server, "select 41 + 1")
        assert out.stdout.strip() == "42", out.stderr
        assert time.monotonic() - started < 5
        assert "too many clients" not in out.stderr
    # a peer holds a few unauthenticated sockets, not as many as it opens: past its share the
    # newcomers wait, then evict the stalled ones once those are a second old
    many = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(60)]
    time.sleep(1.8)
    open_now = sum(not closed(s) for s in many)
    assert open_now <= 32, f"{open_now} unauthenticated sockets kept open for one peer (--max-startups-per-peer 32)"
    for s in silent + many:
        s.close()
    time.sleep(0.5)
    # and the short pre-auth timeout (10 s by default) closes a silent socket
    survivor = socket.create_connection((server.host, server.port), timeout=10)
    started = time.monotonic()
    assert closed(survivor, wait=14)
    assert 8 < time.monotonic() - started < 13
    assert "Traceback" not in server.log()


def test_item1_startup_gate_limits_per_peer_and_in_total():
    """The gate itself: a peer past its share evicts its own oldest stalled socket; past the
    total, the oldest socket of the peer holding the most goes; young sockets are not evicted."""
    from sqld.preauth import StartupGate

    class Scope:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    gate = StartupGate(max_total=6, max_per_peer=3, grace=0.0)

    def admit(peer):
        entry = gate.try_admit(peer)
        entry.scope = Scope()
        return entry

    a = [admit("10.0.0.1") for _ in range(3)]
    a4 = admit("10.0.0.1")  # evicts a[0], the peer's own oldest
    assert a[0].evicted and a[0].scope.cancelled and not any(e.evicted for e in a[1:]) and gate.count == 3
    b = [admit("10.0.0.2") for _ in range(2)]
    c = admit("10.0.0.3")
    assert gate.count == 6
    d = admit("10.0.0.4")  # total reached: the oldest of the peer with the most (10.0.0.1) goes
    assert a[1].evicted and not b[0].evicted and not c.evicted and gate.count == 6
    for e in (a[2], a4, *b, c, d):
        gate.leave(e)
    assert gate.count == 0 and not gate.by_peer
    # young sockets are never evicted: the newcomer waits for room (a socket that leaves) ...
    young = StartupGate(max_total=10, max_per_peer=2, grace=60.0, max_waiting=1)
    first, _second = young.try_admit("p"), young.try_admit("p")
    assert young.try_admit("p") is None

    async def burst():
        got = []

        async def newcomer():
            got.append(await young.admit("p"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(newcomer)
            await anyio.sleep(0.1)
            assert not got and young.waiting == 1
            # ... and only so many wait: past max_waiting the newcomer is refused, 53300
            with pytest.raises(Exception) as err:
                await young.admit("p")
            assert getattr(err.value, "sqlstate", None) == "53300"
            young.leave(first)
        assert len(got) == 1 and young.count == 2 and young.waiting == 0 and not first.evicted
    anyio.run(burst)


def test_item1_a_burst_of_real_clients_from_one_address_waits_and_gets_in(start_sqld, tmp_path):
    """A pool opening many connections at once from one address (on loopback every client is
    one peer) is not refused for being more than --max-startups-per-peer: the newcomers wait."""
    server = start_sqld("--max-connections", "200", "--max-startups-per-peer", "4", "--max-startups", "8",
                        db_path=tmp_path / "db")

    async def main():
        conns = await asyncio.gather(*(asyncpg.connect(host=server.host, port=server.port, user="tester",
                                                       database="main", timeout=30) for _ in range(120)))
        assert [await c.fetchval("select 1") for c in conns] == [1] * 120
        for c in conns:
            await c.close()
    asyncio.run(asyncio.wait_for(main(), 60))
    assert "Traceback" not in server.log()


# -- 2. memory before a password -------------------------------------------------------------


def _sasl_started(server, user="alice") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.sendall(m.StartupMessage({"user": user, "database": "main"}).encode())
    dec = Decoder(m.BACKEND)
    while True:
        msg = dec.next_message()
        if msg is not NEED_DATA:
            assert isinstance(msg, m.Authentication), msg
            return sock
        dec.feed(sock.recv(4096))


def test_item2_messages_before_authentication_are_capped(secured):
    server = secured()
    with psycopg.connect(server.dsn(user="alice", password="s3cret")) as c:
        c.execute("select 1")
    before = rss(server)
    socks = []
    for _ in range(6):
        sock = _sasl_started(server)
        sock.sendall(b"p" + struct.pack("!I", 64 << 20) + b"x" * 1000)  # then stall
        socks.append(sock)
    for sock in socks:
        dec = Decoder(m.BACKEND)
        sock.settimeout(5)
        msg = NEED_DATA
        while msg is NEED_DATA:
            data = sock.recv(65536)
            assert data, "closed without an error"
            dec.feed(data)
            msg = dec.next_message()
        assert isinstance(msg, m.ErrorResponse) and msg.severity == "FATAL", msg
        sock.close()
    assert rss(server) - before < 24 << 20
    with psycopg.connect(server.dsn(user="alice", password="s3cret"), autocommit=True) as c:  # normal sizes after
        assert c.execute("select length(%s)", ("y" * 200_000,)).fetchone() == (200_000,)


# -- 4. databases: who creates them, how many stay open ------------------------------------


def test_item4_only_read_write_users_create_databases(secured, tmp_path):
    server = secured()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(server.dsn(user="reader", password="r3ad", dbname="fresh"))
    assert not (tmp_path / "db" / "fresh.db").exists()
    with psycopg.connect(server.dsn(user="alice", password="s3cret", dbname="fresh"), autocommit=True) as c:
        c.execute("create table t(x)")
    with psycopg.connect(server.dsn(user="reader", password="r3ad", dbname="fresh")) as c:  # existing: fine
        assert c.execute("select count(*) from t").fetchone() == (0,)


def _open_files(server) -> set[str]:
    return {os.path.basename(f.path) for f in psutil.Process(server.pid).open_files()}


def test_item4_open_databases_are_capped_and_idle_ones_closed(start_sqld, tmp_path):
    server = start_sqld("--max-databases", "3", "--database-idle-timeout", "2s", db_path=tmp_path / "db")
    for n in range(6):  # one after another: idle ones make room
        with psycopg.connect(server.dsn(dbname=f"d{n}"), autocommit=True) as c:
            c.execute("create table t(x)")
    assert len({f for f in _open_files(server) if f.startswith("d") and f.endswith(".db")}) <= 3
    held = [psycopg.connect(server.dsn(dbname=f"h{n}"), autocommit=True) for n in range(3)]
    with pytest.raises(psycopg.OperationalError) as err:  # all three in use
        psycopg.connect(server.dsn(dbname="h3"))
    assert "too many databases" in str(err.value)
    for c in held:
        c.close()
    time.sleep(5)  # past the idle timeout
    files = _open_files(server)
    assert not any(f.startswith(("d", "h")) and ".db" in f for f in files), files
    assert "main.db" in files
    with psycopg.connect(server.dsn(dbname="d1"), autocommit=True) as c:  # reopened on demand
        assert c.execute("select count(*) from t").fetchone() == (0,)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- 5. the replication sub-protocol ---------------------------------------------------------


def _replication(server, user, password, database="main"):
    return WireConnection(server.host, server.port, user=user, password=password, database=database,
                          options={"replication": "sqld"}, sslmode="disable")


def _identify(w) -> list:
    """IDENTIFY_SYSTEM's rows (replication commands are simple Queries)."""
    w.sock.sendall(m.Query("IDENTIFY_SYSTEM").encode())
    dec, rows = Decoder(m.BACKEND), []
    while True:
        msg = dec.next_message()
        if msg is NEED_DATA:
            dec.feed(w.sock.recv(65536))
        elif isinstance(msg, m.DataRow):
            rows.append(msg.values)
        elif isinstance(msg, m.ReadyForQuery):
            return rows


def test_item5_replication_only_for_the_replication_account(secured, tmp_path):
    server = secured()
    for user, password in (("reader", "r3ad"), ("alice", "s3cret")):
        with pytest.raises(ServerError) as err:
            _replication(server, user, password)
        assert err.value.response.sqlstate in ("28000", "42501"), err.value.response
        assert "replication" in err.value.response.message
    w = _replication(server, "sqld-replica", "rep1")
    assert len(_identify(w)) == 1
    w.close()
    for name in ("ghost", ":memory:"):  # replication never creates a database
        with pytest.raises(ServerError) as err:
            _replication(server, "sqld-replica", "rep1", database=name)
        assert err.value.response.sqlstate == "3D000"
    assert sorted(p.name for p in (tmp_path / "db").iterdir() if ".db" in p.name and "replog" not in p.name
                  and not p.name.startswith("main.db")) == []


def test_item5_replication_account_by_flag_or_users_file(start_sqld, tmp_path):
    server = start_sqld("--users-file", users_file(tmp_path, "bob b0b replication\n"),
                        "--replication-user", "alice", db_path=tmp_path / "db")
    for user, password in (("alice", "s3cret"), ("bob", "b0b")):
        w = _replication(server, user, password)
        assert len(_identify(w)) == 1
        w.close()
    with pytest.raises(ServerError):  # the default account is no longer one: the flag named another
        _replication(server, "sqld-replica", "rep1")


def test_item5_a_stalled_base_backup_leaves_no_copy_in_the_data_folder(secured, tmp_path):
    server = secured()
    with psycopg.connect(server.dsn(user="alice", password="s3cret"), autocommit=True) as c:
        c.execute("create table big(x)")
        c.execute("insert into big with recursive r(i) as (select 1 union all select i + 1 from r where i < 3000) "
                  "select randomblob(10000) from r")
    w = _replication(server, "sqld-replica", "rep1")
    w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    w.sock.sendall(m.Query("BASE_BACKUP").encode())  # and read nothing
    time.sleep(2)
    leftovers = [p.name for p in (tmp_path / "db").iterdir() if "sqld-snapshot" in p.name]
    assert leftovers == []
    w.sock.close()


# -- 6. schema_version, shadow tables --------------------------------------------------------


def test_item6_schema_version_is_refused_and_connections_are_defensive(sqld_server, table_name):
    pub, priv = f"{table_name}_pub", f"{table_name}_priv"
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as a, \
            psycopg.connect(sqld_server.dsn(), autocommit=True) as b:
        a.execute(f"create table {pub}(x)")
        a.execute(f"insert into {pub} values ('public')")
        assert b.execute(f"select * from {pub}").fetchall() == [("public",)]
        version = a.execute("pragma schema_version").fetchone()[0]
        a.execute(f"drop table {pub}")
        a.execute(f"create table {priv}(secret)")
        a.execute(f"insert into {priv} values ('private')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            a.execute(f"pragma schema_version = {version}")
        with pytest.raises(psycopg.Error):
            b.execute(f"select * from {pub}")
        f = f"{table_name}_fts"
        a.execute(f"create virtual table {f} using fts5(body)")
        a.execute(f"insert into {f} values ('hello world')")
        for sql in (f"delete from {f}_data", f"update {f}_idx set pgno = 99", f"insert into {f}_content values (9, 'x')"):
            with pytest.raises(psycopg.Error):
                a.execute(sql)
        assert a.execute(f"select count(*) from {f} where {f} match 'hello'").fetchone() == (1,)


# -- 7. ATTACH '' ----------------------------------------------------------------------------


def test_item7_attach_empty_is_refused_and_vacuum_still_works(sqld_server, table_name):
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        for sql in ("attach '' as e1", "attach database '' as e2", "ATTACH ''  AS \"x\""):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        assert [r[1] for r in c.execute("select * from pragma_database_list").fetchall()] == ["main"]
        c.execute(f"create table {table_name}(x)")
        c.execute(f"insert into {table_name} values (1)")
        c.execute("vacuum")
        c.execute("vacuum main")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # right after a VACUUM too
            c.execute("attach '' as e3")
        with pytest.raises(psycopg.Error):  # a VACUUM that fails before its own ATTACH leaves nothing open
            c.execute("begin")
            c.execute("vacuum")
        c.execute("rollback")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("attach '' as e4")
        assert c.execute(f"select * from {table_name}").fetchall() == [(1,)]


# -- 10. user names cannot be enumerated -----------------------------------------------------


def _salt(server, user: str) -> bytes:
    import base64

    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(m.StartupMessage({"user": user, "database": "main"}).encode())
        sock.recv(4096)  # AuthenticationSASL
        client = scramp.ScramClient(["SCRAM-SHA-256"], user, "x")
        first = client.get_client_first().encode()
        sock.sendall(m.PasswordMessage(b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first).encode())
        data = sock.recv(4096)
        fields = dict(kv.split("=", 1) for kv in data[9:].decode().split(","))
        return base64.b64decode(fields["s"]), fields["i"]


def test_item10_made_up_salts_look_real_and_persist(start_sqld, tmp_path):
    users = users_file(tmp_path)

    def start():
        return start_sqld("--users-file", users, db_path=tmp_path / "db")

    server = start()
    salts = {u: _salt(server, u) for u in ("nobody", "carol", "alice", "Alice")}
    lengths = {len(s) for s, _ in salts.values()}
    assert len(lengths) == 1, {u: len(s) for u, (s, _) in salts.items()}
    assert len({i for _, i in salts.values()}) == 1
    server.stop()
    server = start()
    assert {u: _salt(server, u) for u in salts} == salts  # the same after a restart, real and made-up
    secret = tmp_path / "db" / ".sqld-secret"
    assert secret.exists() and (secret.stat().st_mode & 0o077) == 0


# -- 11. paths and look-alike names ----------------------------------------------------------


def test_item11_no_server_paths_in_answers_or_errors(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    (tmp_path / "db" / "broken.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(server.dsn(dbname="broken"))
    assert str(tmp_path) not in str(err.value) and "broken" in str(err.value)
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        for sql in ("pragma main.database_list", "pragma temp.database_list", "explain pragma database_list",
                    "explain pragma main.database_list"):
            try:
                rows = c.execute(sql).fetchall()
            except psycopg.errors.InsufficientPrivilege:
                continue
            assert str(tmp_path) not in repr(rows), sql
        rows = c.execute("pragma database_list").fetchall()
        assert rows[0] == (0, "main", "main") and str(tmp_path) not in repr(rows)
        rows = c.execute("select name, file from pragma_database_list").fetchall()
        assert rows[0] == ("main", None) and all(f is None for _, f in rows)
    assert str(tmp_path) in server.log()  # the operator's log still says where


@pytest.mark.parametrize("name", ["a\x7fb", "tab\tname", "rtl\u202eexe", "trailing ", " leading", "zero\u200bwidth",
                                  "c1\u0085x", "line\u2028sep"])
def test_item11_names_with_control_or_invisible_characters_are_refused(start_sqld, tmp_path, name):
    server = start_sqld(db_path=tmp_path / "db")
    with pytest.raises(ServerError) as err:
        WireConnection(server.host, server.port, user="u", database=name, sslmode="disable")
    assert err.value.response.sqlstate == "3D000" and "invalid database name" in err.value.response.message
    assert sorted(p.name for p in (tmp_path / "db").iterdir() if p.name.endswith(".db")) == ["main.db"]


def test_item11_names_differing_in_case_or_normal_form_are_one_database(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(dbname="Shop"), autocommit=True) as c:
        c.execute("create table t(x)")
        c.execute("insert into t values (1)")
    for spelling in ("shop", "SHOP"):
        with psycopg.connect(server.dsn(dbname=spelling), autocommit=True) as c:
            assert c.execute("select x from t").fetchall() == [(1,)]
    with psycopg.connect(server.dsn(dbname="MAIN"), autocommit=True) as c:
        c.execute("create table in_main(x)")
    with psycopg.connect(server.dsn(dbname="main"), autocommit=True) as c:
        assert c.execute("select count(*) from in_main").fetchone() == (0,)
    w1 = WireConnection(server.host, server.port, user="u", database="caf\u00e9", sslmode="disable")
    w1.run("create table menu(x)")
    w1.close()
    w2 = WireConnection(server.host, server.port, user="u", database="cafe\u0301", sslmode="disable")
    assert w2.run("select count(*) from menu").rows == [(0,)]
    w2.close()
    assert sorted(p.name for p in (tmp_path / "db").iterdir() if p.name.endswith(".db")) == \
        sorted(["main.db", "shop.db", "caf\u00e9.db"])


# -- 12. a stalled TLS handshake -------------------------------------------------------------


@pytest.fixture
def tls_server(start_sqld, tmp_path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return start_sqld("--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"),
                      "--startup-timeout", "30s", db_path=tmp_path / "db")


def test_item12_a_stalled_or_broken_tls_handshake_logs_one_line(tls_server):
    server = tls_server
    socks = []
    for garbage in (None, b"\x16\x03\x01\x00\x05hello-not-tls" * 3):
        sock = socket.create_connection((server.host, server.port), timeout=20)
        sock.sendall(m.SSLRequest().encode())
        assert sock.recv(1) == b"S"
        if garbage:
            sock.sendall(garbage)
        socks.append(sock)
    for sock in socks:
        assert closed(sock, wait=15)
        sock.close()
    time.sleep(0.5)
    log = server.log()
    assert "Traceback" not in log and "connection handler failed" not in log, log[-3000:]
    assert "TLS handshake" in log
    with psycopg.connect(server.dsn(sslmode="require")) as c:
        assert c.execute("select 1").fetchone() == (1,)


# -- 9. the operator's timeouts are ceilings -------------------------------------------------


def test_item9_server_timeouts_are_ceilings_a_session_may_only_lower(start_sqld, tmp_path):
    server = start_sqld("--statement-timeout", "1s", "--lock-timeout", "300ms",
                        "--idle-in-transaction-timeout", "2s", db_path=tmp_path / "db")
    long_query = "with recursive s(i) as (select 1 union all select i + 1 from s) select count(*) from s"
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("show statement_timeout").fetchone() == ("1s",)
        for lift in ("0", "'10min'", "default"):
            c.execute(f"set statement_timeout = {lift}")
            assert c.execute("show statement_timeout").fetchone() == ("1s",), lift
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute(long_query)
        assert time.monotonic() - started < 5
        c.execute("set statement_timeout = 100")  # lower: allowed
        assert c.execute("show statement_timeout").fetchone() == ("100ms",)
        c.execute("reset statement_timeout")
        assert c.execute("show statement_timeout").fetchone() == ("1s",)
        c.execute("set lock_timeout = 0")
        c.execute("set idle_in_transaction_session_timeout = '1h'")
        assert c.execute("show lock_timeout").fetchone() == ("300ms",)
        assert c.execute("show idle_in_transaction_session_timeout").fetchone() == ("2s",)
        c.execute("create table held (a)")
    # a startup parameter cannot lift them either
    with psycopg.connect(server.dsn(), autocommit=True, options="-c statement_timeout=0 -c lock_timeout=0") as c:
        assert c.execute("show statement_timeout").fetchone() == ("1s",)
        assert c.execute("show lock_timeout").fetchone() == ("300ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute(long_query)
    # waiting for the writer is bounded by the lock timeout, even after SET lock_timeout = 0
    with psycopg.connect(server.dsn(), autocommit=True) as a, psycopg.connect(server.dsn(), autocommit=True) as b:
        a.execute("begin")
        a.execute("insert into held values (1)")
        b.execute("set lock_timeout = 0")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            b.execute("insert into held values (2)")
        assert time.monotonic() - started < 5
        a.execute("commit")
        b.execute("insert into held values (3)")
        assert b.execute("select count(*) from held").fetchone() == (2,)


def test_item9_finite_defaults_for_lock_waits_and_idle_transactions(start_sqld, tmp_path):
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("show statement_timeout").fetchone() == ("0",)
        assert c.execute("show lock_timeout").fetchone() == ("30s",)
        assert c.execute("show idle_in_transaction_session_timeout").fetchone() == ("5min",)
        c.execute("set lock_timeout = '1h'")
        assert c.execute("show lock_timeout").fetchone() == ("30s",)
    # 0 on the command line: no ceiling, as before
    free = start_sqld("--lock-timeout", "0", "--idle-in-transaction-timeout", "0", db_path=tmp_path / "db2")
    with psycopg.connect(free.dsn(), autocommit=True) as c:
        assert c.execute("show lock_timeout").fetchone() == ("0",)
        c.execute("set lock_timeout = '1h'")
        assert c.execute("show lock_timeout").fetchone() == ("1h",) or \
            c.execute("show lock_timeout").fetchone() == ("60min",)


def test_item3_waiting_for_a_reader_has_a_deadline(start_sqld, tmp_path):
    """Every reader held (here the only one, by a read-only transaction): another session's
    read waits at most the lock timeout, then fails 55P03 naming the readers; not forever."""
    server = start_sqld("--max-readers", "1", "--lock-timeout", "500ms", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as a, psycopg.connect(server.dsn(), autocommit=True) as b:
        a.execute("create table r (a)")
        a.execute("insert into r values (1)")
        a.execute("begin read only")
        assert a.execute("select a from r").fetchall() == [(1,)]
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable) as err:
            b.execute("select a from r")
        assert time.monotonic() - started < 5
        assert "reader" in (err.value.diag.message_hint or "")
        a.execute("commit")
        assert b.execute("select a from r").fetchall() == [(1,)]


# -- 8. what a session keeps is capped ----------------------------------------------------------


def test_item8_prepared_statements_portals_and_settings_are_capped_per_session(start_sqld, tmp_path):
    from tests.rawclient import RawClient

    server = start_sqld("--max-session-memory-mb", "8", db_path=tmp_path / "db")
    big = "select '" + "x" * (2 << 20) + "'"  # 2 MiB of statement text
    c = RawClient(server.host, server.port)
    try:
        answers = []
        for i in range(5):
            c.send(m.Parse(f"s{i}", big), m.Sync())
            answers.append(c.until_ready())
        kinds = [type(a[0]).__name__ for a in answers]
        assert kinds[:3] == ["ParseComplete"] * 3, kinds
        err = answers[3][0]
        assert isinstance(err, m.ErrorResponse) and err.sqlstate == "53200", err
        assert "--max-session-memory" in (err.detail or "") and err.severity == "ERROR"
        # closing statements gives the room back; the session goes on
        c.send(m.Close(b"S", "s0"), m.Close(b"S", "s1"), m.Sync())
        c.until_ready()
        c.send(m.Parse("s9", big), m.Sync())
        assert isinstance(c.until_ready()[0], m.ParseComplete)
    finally:
        c.close()
    with psycopg.connect(server.dsn(), autocommit=True) as s:
        value = "y" * (2 << 20)
        with pytest.raises(psycopg.errors.OutOfMemory):
            for i in range(6):
                s.execute(f"set my.v{i} = '{value}'")
        assert s.execute("select 41 + 1").fetchone() == (42,)
        s.execute("reset all")
    assert "Traceback" not in server.log()


def test_item8_large_messages_being_received_are_capped_server_wide(start_sqld, tmp_path):
    """Found by the attack review: the message limit (64 MiB) held per socket, so 30 sessions
    each sending most of a 55 MB Bind took the server to 1.7 GB. Large messages being received
    share --max-message-memory-mb: beyond it a message waits (its sender is not read), and past
    its wait (here the 2 s statement timeout) its session ends with 53200; others go on."""
    from tests.rawclient import RawClient

    server = start_sqld("--max-message-memory-mb", "64", "--statement-timeout", "2s", db_path=tmp_path / "db")
    size = 40 << 20
    header = b"B" + struct.pack("!I", 4 + size)
    body = b"\0" * (size - (8 << 20))  # most of the message, never all of it
    before = rss(server)
    clients = [RawClient(server.host, server.port) for _ in range(10)]

    def push(r):
        r.sock.settimeout(8)
        try:
            r.sock.sendall(header + body)
        except OSError:
            pass

    threads = [threading.Thread(target=push, args=(r,), daemon=True) for r in clients]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=15)
    grown = rss(server) - before
    assert grown < 150 << 20, f"{grown >> 20} MiB for 10 partial 40 MiB messages under a 64 MiB budget"
    refused = 0
    for r in clients:
        r.sock.settimeout(5)
        try:
            msg = r.recv()
        except (OSError, EOFError):
            continue
        if isinstance(msg, m.ErrorResponse):
            assert msg.sqlstate == "53200" and "--max-message-memory-mb" in (msg.detail or ""), msg
            refused += 1
    assert refused >= 8, refused  # one message fits; the others waited, then were refused
    for r in clients:
        r.sock.close()
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select length(%s::bytea)", (b"z" * (30 << 20),)).fetchone() == (30 << 20,)
    assert "Traceback" not in server.log()


def _free_within(server, seconds: float, what: str, sql: str, lock_timeout: str) -> float:
    """Seconds until another session's ``sql`` gets ``what`` it needs (it retries on 55P03)."""
    started = time.monotonic()
    with psycopg.connect(server.dsn(), autocommit=True) as other:
        other.execute(f"set lock_timeout = '{lock_timeout}'")
        while True:
            try:
                cur = other.execute(sql)
                if cur.description:
                    assert cur.fetchone() == (42,)
                return time.monotonic() - started
            except psycopg.errors.LockNotAvailable:
                assert time.monotonic() - started < seconds, f"the {what} was still held after {seconds} s"


def _writer_free_within(server, seconds: float) -> float:
    """Seconds until another session's write succeeds."""
    return _free_within(server, seconds, "writer", "insert into w values (0)", "500ms")


def test_item3_a_stalled_copy_or_unsynced_batch_does_not_hold_the_writer(start_sqld, tmp_path):
    """Found by the attack review: a COPY FROM STDIN that stopped sending, or an autocommit
    INSERT (or a suspended INSERT … RETURNING) sent without its Sync, held the writer forever:
    waiting for the client there is idle in a transaction, the idle timeout applies."""
    from tests.rawclient import RawClient, copy_data

    server = start_sqld("--idle-in-transaction-timeout", "1s", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table w (a integer)")
    stalls = {
        "copy": lambda r: r.sock.sendall(m.Query("copy w from stdin").encode() + copy_data(b"1\n")),
        "no sync": lambda r: r.send(m.Parse("", "insert into w values (2)"), m.Bind("", "", (), (), ()),
                                    m.Execute("", 0), m.Flush()),
        "suspended": lambda r: r.send(m.Parse("", "insert into w values (3), (4) returning a"),
                                      m.Bind("", "", (), (), ()), m.Execute("", 1), m.Flush()),
    }
    for name, stall in stalls.items():
        r = RawClient(server.host, server.port)
        try:
            stall(r)
            waited = _writer_free_within(server, 10)
            assert waited < 5, (name, waited)
        finally:
            r.close()
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select a from w order by a").fetchall() == [(0,)] * 3  # nothing of the stalled ones
    assert "Traceback" not in server.log()


def test_item9_the_statement_timeout_covers_a_whole_copy(start_sqld, tmp_path):
    """Found by the attack review: each row of a COPY was a statement of its own, so a COPY
    ran past --statement-timeout (and past SET statement_timeout) for as long as it had rows."""
    server = start_sqld("--statement-timeout", "1s", db_path=tmp_path / "db")
    rows = "".join(f"{i}\n" for i in range(200_000))
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table big (a integer)")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            with c.cursor().copy("copy big from stdin") as cp:
                for k in range(0, len(rows), 1 << 16):  # rows for about 2 s
                    cp.write(rows[k:k + (1 << 16)])
                    time.sleep(0.1)
        assert time.monotonic() - started < 15
        assert c.execute("select count(*) from big").fetchone() == (0,)


# -- 3. a client that went away, or stopped reading, holds nothing --------------------------

ENDLESS_READ = "with recursive r(i) as (select 1 union all select i + 1 from r) select count(*) from r"


def _read_free_within(server, seconds: float) -> float:
    """Seconds until another session's read gets a reader."""
    return _free_within(server, seconds, "reader", "select 6 * 7", "300ms")


def test_item3_statements_of_a_client_that_went_away_are_cancelled(start_sqld, tmp_path):
    """Found by the attack review: never-ending queries of clients that had disconnected ran
    on (9 of them: 190% CPU), holding every reader, and a never-ending write the writer. A
    client that closes its connection has its running statement cancelled within a second or
    two (as PostgreSQL's client_connection_check_interval does): readers and writer are free."""
    from tests.rawclient import RawClient

    server = start_sqld("--max-readers", "2", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table w (a integer)")
    clients = [RawClient(server.host, server.port) for _ in range(3)]
    for r in clients[:2]:
        r.send(m.Query(ENDLESS_READ))  # both readers
    clients[2].send(m.Query("insert into w " + ENDLESS_READ.replace("count(*)", "i")))  # the writer
    time.sleep(1.0)
    with psycopg.connect(server.dsn(), autocommit=True) as probe:  # the statements are running
        probe.execute("set lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            probe.execute("select 1")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            probe.execute("insert into w values (0)")
    # one goes with a FIN (shutdown, as a killed process's socket), the others closed outright
    clients[0].sock.shutdown(socket.SHUT_WR)
    for r in clients:
        r.sock.close()
    assert _read_free_within(server, 10) < 6
    assert _writer_free_within(server, 10) < 6
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select a from w").fetchall() == [(0,)]  # nothing of the cancelled insert
    time.sleep(0.5)
    assert psutil.Process(server.pid).cpu_percent(interval=1.0) < 50
    assert "Traceback" not in server.log()


def test_item3_a_killed_psql_has_its_query_cancelled(start_sqld, tmp_path):
    """The same with a real client killed (SIGKILL) while its query runs."""
    server = start_sqld("--max-readers", "1", db_path=tmp_path / "db")
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    proc = subprocess.Popen(["psql", "-h", server.host, "-p", str(server.port), "-U", "tester", "-d", "main",
                             "-tAc", ENDLESS_READ], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert _read_free_within(server, 10) < 6


def test_item3_a_half_closed_client_still_gets_its_quick_answers(sqld_server):
    """A client may close its sending side after its queries and read the answers: those that
    finish within the grace are answered (only a statement still running is cancelled)."""
    from tests.rawclient import RawClient

    r = RawClient(sqld_server.host, sqld_server.port)
    try:
        r.send(m.Query("select 1"), m.Query("select 2"))
        r.sock.shutdown(socket.SHUT_WR)
        rows = []
        for _ in range(2):
            rows += [msg.values for msg in r.until_ready() if isinstance(msg, m.DataRow)]
        assert rows == [(b"1",), (b"2",)]
    finally:
        r.sock.close()


def _stop_reading(server, sql: str, *, begin: bool) -> "RawClient":
    """A client with a tiny receive buffer that sends ``sql`` (a big result) and never reads."""
    from tests.rawclient import RawClient

    r = RawClient(server.host, server.port)
    if begin:
        r.query("begin")
        r.query("insert into w values (5)")
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    r.send(m.Query(sql))
    return r


BIG_RESULT = ("with recursive r(i) as (select 1 union all select i + 1 from r where i < 2000000) "
              "select i, randomblob(200) from r")


def test_item3_a_client_that_stops_reading_does_not_hold_the_writer_or_a_reader(start_sqld, tmp_path):
    """Found by the attack review: a client that stopped reading the rows of a big result kept
    its reader (or, inside a transaction, the writer) forever, the server blocked sending to
    it. Blocked that way, a session gets --idle-in-transaction-timeout, then is closed: its
    transaction rolls back, the writer and the reader are free."""
    server = start_sqld("--max-readers", "1", "--idle-in-transaction-timeout", "1s", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table w (a integer)")
    stalled = _stop_reading(server, BIG_RESULT, begin=False)
    try:
        time.sleep(0.5)
        assert _read_free_within(server, 15) < 8
    finally:
        stalled.sock.close()
    stalled = _stop_reading(server, BIG_RESULT, begin=True)
    try:
        time.sleep(0.5)
        assert _writer_free_within(server, 15) < 8
    finally:
        stalled.sock.close()
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select a from w").fetchall() == [(0,)]  # the stalled transaction's 5 is gone
    assert "read none of its answers" in server.log()
    assert "Traceback" not in server.log()


def test_item3_rows_of_an_abandoned_copy_are_not_inserted_for_long(start_sqld, tmp_path):
    """Found by the attack review: a client that sent many COPY rows and went away left them in
    the server's socket buffers, inserted one by one for nobody while the COPY held the writer.
    What is buffered goes in at COPY's speed (a batch per trip to SQLite); then the stream's
    end, mid-message, ends the COPY: rolled back, the writer free."""
    from tests.rawclient import RawClient, copy_data

    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table w (a integer)")
        c.execute("create table cp (a integer)")
    r = RawClient(server.host, server.port)
    r.send(m.Query("copy cp from stdin"))
    assert isinstance(r.recv(), m.CopyInResponse)
    chunk = copy_data(b"".join(b"%d\n" % i for i in range(10_000)))
    r.sock.setblocking(False)
    sent, until = 0, time.monotonic() + 1.0
    while time.monotonic() < until:  # as much as the socket buffers on both sides take
        try:
            r.sock.send(chunk)  # a short send leaves the stream mid-message: the COPY cannot end
            sent += 1
        except BlockingIOError:
            time.sleep(0.01)
    r.sock.close()  # nothing unread on this side: a FIN after the data, not a reset
    assert sent >= 10, sent
    assert _writer_free_within(server, 30) < 6
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select count(*) from cp").fetchone() == (0,)  # the COPY rolled back
    assert "Traceback" not in server.log()


def test_item3_a_half_closed_client_gets_all_it_sent_done(sqld_server):
    """Found by the attack review: a client that closes its sending side after its last
    message (``nc -N``, a script's end) had whatever ran over a second cancelled: a whole COPY
    ending in CopyDone was lost, pipelined queries failed. What it sent in full is done and
    answered; only a statement still running with nothing after it is cancelled."""
    from tests.rawclient import RawClient, copy_data

    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute("drop table if exists hc")
        c.execute("create table hc (a integer primary key, b text)")
    rows = 300_000
    data = b"".join(b"%d\tsome text to make the row longer %d\n" % (i, i) for i in range(rows))
    r = RawClient(sqld_server.host, sqld_server.port)
    try:
        chunks = [copy_data(data[i:i + 60_000]) for i in range(0, len(data), 60_000)]
        payload = (m.Query("copy hc from stdin").encode() + b"".join(chunks) + m.COPY_DONE
                   + m.Query("select count(*) from hc").encode()
                   + m.Query(ENDLESS_READ.replace("from r", "from r where i < 3000000")).encode())
        sender = threading.Thread(target=_send_quietly, args=(r.sock, payload))
        sender.start()
        out = []
        for _ in range(3):
            out += r.until_ready()
        sender.join(30)
        r.sock.shutdown(socket.SHUT_WR)
    finally:
        r.sock.close()
    errors = [msg for msg in out if isinstance(msg, m.ErrorResponse)]
    assert not errors, errors
    tags = [msg.tag for msg in out if isinstance(msg, m.CommandComplete)]
    assert tags[0] == f"COPY {rows}", tags
    values = [msg.values for msg in out if isinstance(msg, m.DataRow)]
    assert values == [(str(rows).encode(),), (b"2999999",)], values


def test_item3_a_half_closed_client_is_answered_after_the_grace(sqld_server):
    """The same with the half-close sent at once, behind a COPY and two queries that take
    longer than the grace together: all done, all answered."""
    from tests.rawclient import RawClient, copy_data

    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute("drop table if exists hc2")
        c.execute("create table hc2 (a integer primary key)")
    slow = ENDLESS_READ.replace("from r", "from r where i < 2000000")
    r = RawClient(sqld_server.host, sqld_server.port)
    try:
        r.send(m.Query(slow), m.Query(slow), m.Query("copy hc2 from stdin"))
        r.sock.sendall(copy_data(b"".join(b"%d\n" % i for i in range(1000))) + m.COPY_DONE
                       + m.Query("select count(*) from hc2").encode())
        r.sock.shutdown(socket.SHUT_WR)
        out = []
        for _ in range(4):
            out += r.until_ready()
    finally:
        r.sock.close()
    assert not [msg for msg in out if isinstance(msg, m.ErrorResponse)]
    assert [msg.values for msg in out if isinstance(msg, m.DataRow)] == [(b"1999999",), (b"1999999",), (b"1000",)]


def test_item3_a_half_closed_client_is_answered_however_long_its_last_statement_runs(sqld_server):
    """Found by the attack review: whether a half-closed client's last statement was answered
    or cancelled depended on whether the server had already taken it off its buffer when
    the FIN came. A FIN is now answered with a probe (a ParameterStatus repeating a value):
    a half-closed client reads on, so its statement runs to its end and is answered."""
    from tests.rawclient import RawClient

    slow = ENDLESS_READ.replace("from r", "from r where i < 15000000")  # two seconds or more
    r = RawClient(sqld_server.host, sqld_server.port)
    try:
        r.send(m.Query("select 1"), m.Query(slow))
        time.sleep(0.3)  # both taken off the buffer: the slow one runs
        r.sock.shutdown(socket.SHUT_WR)
        r.sock.settimeout(30)
        out = r.until_ready() + r.until_ready()
    finally:
        r.sock.close()
    assert not [msg for msg in out if isinstance(msg, m.ErrorResponse)], out
    assert [msg.values for msg in out if isinstance(msg, m.DataRow)] == [(b"1",), (b"14999999",)]


def test_item3_a_client_gone_while_its_statement_runs_ends_with_08006(start_sqld, tmp_path):
    """A client that closes its socket while its statement runs (a FIN, then a reset for the
    probe) has it cancelled after the grace; the session ends with 08006, saying why."""
    from tests.rawclient import RawClient

    server = start_sqld(db_path=tmp_path / "db")
    r = RawClient(server.host, server.port)
    r.send(m.Query(ENDLESS_READ))
    time.sleep(0.3)
    r.sock.close()
    deadline = time.monotonic() + 10
    while "08006" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "08006 terminating connection: the client closed its connection while its statement ran" in server.log()
    assert _read_free_within(server, 10) < 6


def test_item3_a_cancel_request_stops_a_copy_waiting_for_rows(start_sqld, tmp_path):
    """Found by the attack reviews: a CancelRequest while COPY FROM STDIN waited for the
    client's next rows was dropped (only a statement inside SQLite counted as running); then
    it was kept but acted on only at the client's CopyDone, the writer held till then. As in
    PostgreSQL the COPY ends at once: 57014 and ReadyForQuery, nothing of it kept, the writer
    free; what the client still sends of it is ignored, and the session goes on."""
    from tests.rawclient import RawClient, copy_data

    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table cc (a integer)")
        c.execute("create table w (a integer)")
    r = RawClient(server.host, server.port)
    try:
        r.send(m.Query("copy cc from stdin"))
        assert isinstance(r.recv(), m.CopyInResponse)
        r.sock.sendall(copy_data(b"1\n2\n"))
        time.sleep(0.3)  # the two rows are in; the COPY waits for more
        with socket.create_connection((server.host, server.port), timeout=5) as s:
            s.sendall(m.CancelRequest(r.key.process_id, r.key.secret_key).encode())
            s.recv(1)
        r.sock.settimeout(5)
        out = r.until_ready()  # without sending anything more
        errors = [msg for msg in out if isinstance(msg, m.ErrorResponse)]
        assert errors and errors[0].sqlstate == "57014", out
        assert _writer_free_within(server, 5) < 2
        r.sock.sendall(copy_data(b"3\n") + m.COPY_DONE)  # late: ignored
        assert r.query("select count(*) from cc")[1].values == (b"0",)
    finally:
        r.close()


def test_item3_the_statement_timeout_ends_a_copy_waiting_for_rows_and_bounds_each_batch(start_sqld, tmp_path):
    """Found by the attack review: a COPY whose client stopped sending ran past its statement
    timeout until the client's next message, and each batch of rows got a full timeout of its
    own inside SQLite (2 s: 3.7 s). The COPY's one deadline bounds both."""
    from tests.rawclient import RawClient, copy_data

    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table slow (a integer)")
        c.execute("create table spent (n)")
        c.execute("create trigger slow_t after insert on slow begin insert into spent select count(*) from "
                  "(with recursive r(i) as (select 1 union all select i + 1 from r where i < 20000) select i from r); end")
        c.execute("create table w (a integer)")
    r = RawClient(server.host, server.port)
    try:
        r.query("set statement_timeout = '2s'")
        started = time.monotonic()
        r.send(m.Query("copy slow from stdin"))
        assert isinstance(r.recv(), m.CopyInResponse)
        r.sock.settimeout(10)
        out = r.until_ready()  # the client sends nothing: the wait ends at the deadline
        assert 1.8 < time.monotonic() - started < 4, out
        assert [msg.sqlstate for msg in out if isinstance(msg, m.ErrorResponse)] == ["57014"]
        assert _writer_free_within(server, 5) < 2

        started = time.monotonic()
        r.send(m.Query("copy slow from stdin"))
        assert isinstance(r.recv(), m.CopyInResponse)
        r.sock.sendall(copy_data(b"1\n"))
        time.sleep(1.2)  # of the 2 s, in waiting; then a batch of many seconds' work
        r.sock.sendall(copy_data(b"".join(b"%d\n" % i for i in range(2000))) + m.COPY_DONE)
        out = r.until_ready()
        assert [msg.sqlstate for msg in out if isinstance(msg, m.ErrorResponse)] == ["57014"], out
        assert time.monotonic() - started < 3.2  # a fresh 2 s for the batch: 3.2 s and more
        assert r.query("select count(*) from slow")[1].values == (b"0",)
    finally:
        r.close()


def test_item3_a_slow_but_steady_reader_is_served(start_sqld, tmp_path):
    """Found by the attack reviews: the bound on a blocked send was a bound on draining the
    whole buffer, so a client reading a big result steadily but slowly inside a transaction
    was dropped as though it read nothing. It is now "nothing taken for that long", counted
    in asyncio's buffer and the kernel's send queue (which moves in bursts, as the client's
    window opens: a reader far slower than here can still look idle for seconds)."""
    from tests.rawclient import RawClient

    server = start_sqld("--idle-in-transaction-timeout", "3s", db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table w (a)")
    r = RawClient(server.host, server.port, timeout=30)
    try:
        r.query("begin")
        r.query("insert into w values (0)")
        r.send(m.Query("with recursive x(i) as (select 1 union all select i + 1 from x where i < 200000) "
                       "select i, printf('%0200d', i) from x"))
        started = time.monotonic()
        while time.monotonic() - started < 10:  # three times the timeout, at a trickle
            data = r.sock.recv(256 << 10)
            assert data
            r.decoder.feed(data)
            time.sleep(0.5)
        out = r.until_ready()  # then the rest at once: the connection is still there
        assert isinstance(out[-1], m.ReadyForQuery) and out[-1].status == b"T"
        r.query("commit")
    finally:
        r.sock.close()
    assert "read none of its answers" not in server.log()


def test_item3_a_half_closed_copy_whose_last_batch_is_slow_commits(sqld_server):
    """Found by the second attack review: the COPY's watch went on after CopyDone had been
    read; with the client's side closed and no CopyDone left unread it judged the COPY
    unable to end, and ended its last batch (a slow trigger) with 08006, nothing kept."""
    from tests.rawclient import RawClient, copy_data

    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute("drop table if exists hcs")
        c.execute("drop table if exists hcslog")
        c.execute("create table hcs (a integer)")
        c.execute("create table hcslog (n)")
        c.execute("create trigger hcs_t after insert on hcs begin insert into hcslog select count(*) from "
                  "(with recursive r(i) as (select 1 union all select i + 1 from r where i < 3000) select i from r); end")
    r = RawClient(sqld_server.host, sqld_server.port, timeout=60)
    try:
        r.send(m.Query("copy hcs from stdin"))
        assert isinstance(r.recv(), m.CopyInResponse)
        r.sock.sendall(copy_data(b"".join(b"%d\n" % i for i in range(1500))) + m.COPY_DONE)
        r.sock.shutdown(socket.SHUT_WR)
        out = r.until_ready()
    finally:
        r.sock.close()
    assert [msg.tag for msg in out if isinstance(msg, m.CommandComplete)] == ["COPY 1500"], out
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        assert c.execute("select count(*) from hcs").fetchone() == (1500,)


def test_item3_a_killed_psql_mid_copy_frees_the_writer(start_sqld, tmp_path):
    """Found by the attack review: psql killed (SIGKILL) during a \\copy leaves its unsent
    rows and its FIN in its kernel while the server's buffers are full; the server, seeing
    only rows, inserted them all for nobody (a table with a trigger: the writer held 140 s
    to over 8 minutes), then rolled them back. Every second of a COPY the server writes a
    harmless ParameterStatus: a closed socket answers with a reset, and the COPY ends."""
    server = start_sqld(db_path=tmp_path / "db")
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        c.execute("create table ks (id integer primary key, v text)")
        c.execute("create table kslog (n)")
        c.execute("create trigger ks_t after insert on ks begin insert into kslog select count(*) from "
                  "(with recursive r(i) as (select 1 union all select i + 1 from r where i < 3000) select i from r); end")
        c.execute("create table w (a integer)")
    data = tmp_path / "rows.tsv"
    data.write_text("".join(f"{i}\tsome text of a row {i}\n" for i in range(300_000)))
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    proc = subprocess.Popen(["psql", "-h", server.host, "-p", str(server.port), "-U", "tester", "-d", "main",
                             "-c", f"\\copy ks from '{data}'"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        assert proc.poll() is None  # still copying
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert _writer_free_within(server, 20) < 6
    with psycopg.connect(server.dsn(), autocommit=True) as c:
        assert c.execute("select count(*) from ks").fetchone() == (0,)
    assert "08006" in server.log()


def test_item8_a_message_header_alone_takes_no_room_in_the_message_budget(start_sqld, tmp_path):
    """Found by the attack review: --max-message-memory-mb was charged the length a message's
    5-byte header claimed: four idle clients that sent 20 bytes in all (headers of 64 MiB
    Queries) left no room, and every other session's message over 1 MiB waited 30 s, then
    failed with 53200 (lost to a reset besides). Room is taken as the bytes arrive."""
    from tests.rawclient import RawClient

    server = start_sqld(db_path=tmp_path / "db")  # the defaults: 256 MiB budget, 64 MiB messages
    idle = [RawClient(server.host, server.port) for _ in range(4)]
    try:
        for r in idle:
            r.sock.sendall(b"Q" + struct.pack("!I", 4 + (64 << 20) - 8))
        time.sleep(0.5)
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            started = time.monotonic()
            assert c.execute("select length(%s)", ("x" * (2 << 20),)).fetchone() == (2 << 20,)
            assert time.monotonic() - started < 10
    finally:
        for r in idle:
            r.sock.close()


def test_item8_a_message_read_whole_gives_its_room_back_while_its_statement_runs(start_sqld, tmp_path):
    """Found by the second attack review: a large message kept its room in
    --max-message-memory-mb until its session's next read, after its statement: one long
    statement sent as a 40 MiB message held every other session's large message back."""
    server = start_sqld("--max-message-memory-mb", "64", db_path=tmp_path / "db")  # the least: one whole message
    filler = "x" * (40 << 20)
    long = ENDLESS_READ.replace("from r", "from r where i < 30000000")  # several seconds
    done = {}

    def a():
        with psycopg.connect(server.dsn(), autocommit=True) as c:
            done["a"] = c.execute(f"select length(%s), ({long})", (filler,)).fetchone()

    th = threading.Thread(target=a, daemon=True)
    th.start()
    time.sleep(1.0)  # A's message is in; its statement runs
    with psycopg.connect(server.dsn(), autocommit=True) as b:
        started = time.monotonic()
        assert b.execute("select length(%s)", ("y" * (30 << 20),)).fetchone() == (30 << 20,)
        waited = time.monotonic() - started
    alive = th.is_alive()
    th.join(60)
    assert alive, "A's statement had ended: nothing was shown"
    assert waited < 1.5, waited
    assert done["a"][0] == 40 << 20


def test_item8_a_session_refused_for_memory_reads_its_error(start_sqld, tmp_path):
    """The 53200 of a message that found no room reaches its client: the server closes its
    sending side and reads on a moment before closing (closing with the client's bytes
    unread made the kernel send a reset, which threw the error away)."""
    from tests.rawclient import RawClient

    server = start_sqld("--max-message-memory-mb", "64", "--statement-timeout", "1s", db_path=tmp_path / "db")
    hog = RawClient(server.host, server.port)
    victim = RawClient(server.host, server.port)
    try:
        hog.sock.sendall(b"Q" + struct.pack("!I", 4 + (60 << 20)) + b"x" * (59 << 20))  # 59 MiB of 60
        time.sleep(0.5)
        victim.sock.settimeout(10)
        threading.Thread(target=_send_quietly, args=(victim.sock, b"Q" + struct.pack("!I", 4 + (20 << 20))
                                                     + b"y" * (20 << 20)), daemon=True).start()
        msg = victim.recv()
        assert isinstance(msg, m.ErrorResponse) and msg.sqlstate == "53200", msg
    finally:
        hog.sock.close()
        victim.sock.close()


def test_item3_copy_reports_the_first_bad_row_whatever_the_batch(sqld_server):
    """Found by the attack review: a batch checked every row's column count before inserting
    any, so a later row's 22P04 hid an earlier row's unique violation (which error came out
    depended on how the rows fell into batches). The first bad row's error is the COPY's."""
    with psycopg.connect(sqld_server.dsn(), autocommit=True) as c:
        c.execute("drop table if exists cu")
        c.execute("create table cu (a integer primary key, b text)")
        c.execute("insert into cu values (5, 'taken')")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with c.cursor().copy("copy cu from stdin") as copy:
                copy.write(b"1\tx\n5\tdup\n7\tx\n8\n9\tx\n")  # row 2 a duplicate, row 4 short
        with pytest.raises(psycopg.errors.BadCopyFileFormat):
            with c.cursor().copy("copy cu from stdin") as copy:
                copy.write(b"1\tx\n8\n5\tdup\n")  # row 2 short, row 3 a duplicate
        assert c.execute("select a from cu").fetchall() == [(5,)]


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
