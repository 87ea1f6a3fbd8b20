"""Users and passwords (SCRAM-SHA-256, md5, cleartext), read-only users, the loopback-only
trust rule, TLS (sslmode require / verify-full, TLS required), and replicas that use both."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import asyncpg
import psycopg
import pytest
import trustme

from sqld.auth import is_loopback, scram_verifier
from sqld.client.wire import ServerError, WireConnection, WireError


def dsn(server, **extra) -> str:
    return server.dsn(**extra)


@pytest.fixture
def secured(start_sqld, tmp_path):
    users = tmp_path / "users"
    users.write_text("# name secret [readonly]\n"
                     f"carol {scram_verifier('c4rol')}\n"
                     f"reader r3ad readonly\n")
    return start_sqld("--user", "alice:s3cret", "--users-file", str(users), db_path=tmp_path / "db")


def test_scram_users_in(secured):
    with psycopg.connect(dsn(secured, user="alice", password="s3cret"), autocommit=True) as c:
        c.execute("create table t(x)")
        c.execute("insert into t values (1)")
    with psycopg.connect(dsn(secured, user="carol", password="c4rol"), autocommit=True) as c:  # a verifier in the file
        assert c.execute("select count(*) from t").fetchone() == (1,)


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("nobody", "s3cret"), ("Alice", "s3cret")])
def test_wrong_passwords_are_28p01_and_slow(secured, user, password):
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn(secured, user=user, password=password))
    assert "28P01" in str(err.value) or "password authentication failed" in str(err.value)
    assert time.monotonic() - started >= 0.9  # slowed, to make guessing expensive
    assert "password authentication failed" in secured.log()


def test_other_clients_authenticate_too(secured):
    import asyncio

    async def go():
        conn = await asyncpg.connect(host=secured.host, port=secured.port, user="alice", password="s3cret",
                                     database="main")
        try:
            return await conn.fetchval("select 40 + 2")
        finally:
            await conn.close()

    assert asyncio.run(go()) == 42
    out = subprocess.run(["psql", dsn(secured, user="carol"), "-tAc", "select 7"], capture_output=True, text=True,
                         env={"PGPASSWORD": "c4rol", "PATH": "/usr/bin:/bin"}, timeout=20)
    assert out.stdout.strip() == "7", out.stderr
    w = WireConnection(secured.host, secured.port, user="alice", password="s3cret", database="main")
    assert w.run("select 1").rows == [(1,)]
    w.close()
    with pytest.raises(ServerError) as err:
        WireConnection(secured.host, secured.port, user="alice", password="nope", database="main")
    assert err.value.response.sqlstate == "28P01"
    with pytest.raises(WireError, match="password"):  # asked for one, none given
        WireConnection(secured.host, secured.port, user="alice", database="main")


def test_read_only_users_read_and_never_write(secured):
    with psycopg.connect(dsn(secured, user="alice", password="s3cret"), autocommit=True) as c:
        c.execute("create table ro(x)")
        c.execute("insert into ro values (1)")
    with psycopg.connect(dsn(secured, user="reader", password="r3ad"), autocommit=True) as c:
        assert c.execute("select count(*) from ro").fetchone() == (1,)
        for sql in ("insert into ro values (2)", "delete from ro", "create table other(x)", "begin immediate"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        c.execute("begin")
        assert c.execute("select count(*) from ro").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("update ro set x = 5")
        c.execute("rollback")


def test_md5_when_configured(start_sqld, tmp_path):
    server = start_sqld("--user", "alice:s3cret", "--auth-method", "md5", db_path=tmp_path / "db")
    with psycopg.connect(dsn(server, user="alice", password="s3cret")) as c:
        assert c.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(server, user="alice", password="bad"))
    # sqld's own client does not send an md5 hash over a connection without TLS
    with pytest.raises(WireError, match="without TLS"):
        WireConnection(server.host, server.port, user="alice", password="s3cret", database="main", sslmode="disable")


def test_cleartext_only_over_tls(tls_server):
    server, _ = tls_server("--user", "alice:s3cret", "--auth-method", "password")
    with psycopg.connect(dsn(server, user="alice", password="s3cret", sslmode="require")) as c:
        assert c.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="over TLS only"):
        psycopg.connect(dsn(server, user="alice", password="s3cret", sslmode="disable"))


def test_unknown_users_look_like_known_ones(secured):
    """The same salt for an unknown name every time, as for a real user: no user list leaks."""
    import scramp
    import struct as _struct

    from sqld.pgwire import messages as m

    def salt_for(user: str) -> str:
        with socket.create_connection((secured.host, secured.port), timeout=10) as sock:
            sock.sendall(m.StartupMessage({"user": user, "database": "main"}).encode())
            sock.recv(4096)  # AuthenticationSASL
            client = scramp.ScramClient(["SCRAM-SHA-256"], user, "x")
            first = client.get_client_first().encode()
            sock.sendall(m.PasswordMessage(b"SCRAM-SHA-256\x00" + _struct.pack("!i", len(first)) + first).encode())
            data = sock.recv(4096)
            return dict(kv.split("=", 1) for kv in data[9:].decode().split(","))["s"]

    assert salt_for("nobody") == salt_for("nobody")
    assert salt_for("carol") == salt_for("carol")


def test_empty_passwords_are_refused_at_start(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sqld", "--db-path", str(tmp_path / "x"), "--listen-addr",
                          "127.0.0.1:0", "--user", "eve:"], capture_output=True, text=True, timeout=20)
    assert res.returncode != 0 and "with a password" in res.stderr


def test_no_users_means_loopback_only(tmp_path):
    res = subprocess.run([sys.executable, "-m", "sqld", "--db-path", str(tmp_path / "x"), "--listen-addr",
                          "0.0.0.0:0"], capture_output=True, text=True, timeout=20)
    assert res.returncode != 0 and "no users configured" in res.stderr and "Traceback" not in res.stderr
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("127.8.9.10")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0") and not is_loopback(None)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_server(start_sqld, tmp_path, ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))

    def start(*args):
        return start_sqld("--tls-cert", str(cert_file), "--tls-key", str(key_file), *args,
                          db_path=tmp_path / "db"), str(ca_file)

    return start


def test_tls_sslmode_require_and_verify_full(tls_server):
    server, ca_file = tls_server()
    with psycopg.connect(dsn(server, sslmode="require")) as c:
        assert c.pgconn.ssl_in_use
        assert c.execute("select 1").fetchone() == (1,)
    with psycopg.connect(dsn(server, host="localhost", sslmode="verify-full", sslrootcert=ca_file)) as c:
        assert c.pgconn.ssl_in_use
    with psycopg.connect(dsn(server, sslmode="disable")) as c:  # not required: plain still works
        assert not c.pgconn.ssl_in_use
    w = WireConnection(server.host, server.port, user="u", database="main", sslmode="verify-full",
                       sslrootcert=ca_file)
    assert w.run("select 2").rows == [(2,)]
    w.close()


def test_tls_required(tls_server):
    server, _ = tls_server("--tls-required")
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(dsn(server, sslmode="disable"))
    assert "requires TLS" in str(err.value)
    with psycopg.connect(dsn(server, sslmode="require")) as c:
        assert c.execute("select 1").fetchone() == (1,)


def test_a_replica_authenticates_and_uses_tls(start_sqld, tmp_path, ca):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    for name, pem in (("cert.pem", cert.cert_chain_pems[0]), ("key.pem", cert.private_key_pem), ("ca.pem", ca.cert_pem)):
        pem.write_to_path(str(tmp_path / name))
    primary = start_sqld("--user", "sqld-replica:rep1", "--user", "alice:s3cret", "--tls-cert",
                         str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem"), "--tls-required",
                         db_path=tmp_path / "p")
    with psycopg.connect(dsn(primary, user="alice", password="s3cret", sslmode="require"), autocommit=True) as c:
        c.execute("create table t(x)")
        c.execute("insert into t values ('from primary')")
    replica = start_sqld("--primary", f"localhost:{primary.port}", "--primary-password", "rep1",
                         "--primary-sslmode", "verify-full", "--primary-ca", str(tmp_path / "ca.pem"),
                         "--user", "alice:s3cret", db_path=tmp_path / "r")
    with psycopg.connect(dsn(replica, user="alice", password="s3cret"), autocommit=True) as c:
        assert c.execute("select x from t").fetchall() == [("from primary",)]
        c.execute("insert into t values ('through the replica')")  # forwarded over TLS, authenticated
        assert c.execute("select count(*) from t").fetchone() == (2,)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn(replica, user="alice", password="wrong"))
