"""The simulator over a socket keeps the in-process simulator's semantics and errors."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import pytest

from sqld.backends.mvsqlite.backend import MvsqliteBackend
from sqld.backends.mvsqlite.fdbport import FDBError
from sqld.backends.mvsqlite.simnet import (
    RemoteDatabase,
    SimServer,
    WireError,
    decode_value_untrusted,
    encode_value,
    frame,
    parse_url,
)
from sqld.backends.mvsqlite.simulator import SimDatabase
from tests.mvsqlite.simproc import SimulatorProcess


@pytest.fixture
def served():
    db = SimDatabase(seed=1, backoff=False)
    server = SimServer(("127.0.0.1", 0), db)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    clients: list[RemoteDatabase] = []

    def client() -> RemoteDatabase:
        c = RemoteDatabase(*server.address, timeout=10)
        clients.append(c)
        return c

    yield db, server, client
    for c in clients:
        c.close()
    server.shutdown()
    server.server_close()
    thread.join(5)


def code_of(fn, *args) -> int:
    with pytest.raises(FDBError) as info:
        fn(*args)
    return info.value.code


def wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_values_round_trip_and_foreign_objects_are_refused():
    value = [b"\x00\xff", 7, None, True, "s", [b"", (b"k", b"v")]]
    assert decode_value_untrusted(encode_value(value)) == [b"\x00\xff", 7, None, True, "s", [b"", [b"k", b"v"]]]
    for bad in ({"b": "!!"}, {"b": "AA==", "x": 1}, {"py/object": "os.system"}, 1.5):
        with pytest.raises(WireError):
            decode_value_untrusted(bad)
    with pytest.raises(TypeError):
        encode_value(object())


def test_only_loopback_addresses():
    assert parse_url("sim://127.0.0.1:4500") == ("127.0.0.1", 4500)
    assert parse_url("sim://[::1]:1") == ("::1", 1)
    for bad in ("sim://10.1.2.3:4500", "sim://example.com:1", "sim://127.0.0.1", "tcp://127.0.0.1:1"):
        with pytest.raises(ValueError):
            parse_url(bad)


def test_read_your_writes_matches_a_model_over_the_wire(served):
    db, _, client = served
    remote = client()
    rng = random.Random(11)
    keys = [b"k%02d" % i for i in range(30)]
    for _ in range(10):
        tr = remote.create_transaction()
        tr.clear_range(b"", b"\xff")
        model = {k: b"base" for k in rng.sample(keys, 12)}
        for k, v in model.items():
            tr.set(k, v)
        tr.commit()
        tr = remote.create_transaction()
        for _ in range(25):
            op = rng.random()
            k = rng.choice(keys)
            if op < 0.4:
                model[k] = b"v%d" % rng.randrange(100)
                tr.set(k, model[k])
            elif op < 0.55:
                model.pop(k, None)
                tr.clear(k)
            elif op < 0.7:
                b, e = sorted((k, rng.choice(keys)))
                for key in [key for key in model if b <= key < e]:
                    del model[key]
                tr.clear_range(b, e)
            else:
                b, e = sorted(rng.sample(keys, 2))
                limit, reverse = rng.choice([0, 1, 3]), rng.random() < 0.5
                want = sorted((kv for kv in model.items() if b <= kv[0] < e), reverse=reverse)
                assert tr.get_range(b, e, limit=limit, reverse=reverse) == (want[:limit] if limit else want)
                assert tr.get(k) == model.get(k)
        tr.commit()
        assert db.committed_items() == sorted(model.items())


def test_conflicts_versionstamps_and_errors_keep_their_codes(served):
    db, _, client = served
    a, b = client(), client()  # two processes
    t1, t2 = a.create_transaction(), b.create_transaction()
    assert t1.get(b"x") is None
    t2.set(b"x", b"2")
    t2.commit()
    t1.set(b"y", b"1")
    err = pytest.raises(FDBError, t1.commit).value
    assert err.code == 1020 and err.retryable
    t1.on_error(err)  # reset for another attempt, on the server
    assert t1.get(b"x") == b"2"
    t1.set_versionstamped_key(b"log/" + b"\x00" * 10, 4, b"v")
    t1.commit()
    stamp = t1.get_versionstamp()
    assert len(stamp) == 10 and int.from_bytes(stamp[:8], "big") == t1.get_committed_version()
    assert code_of(t1.on_error, FDBError(2101)) == 2101  # not retryable: raised again
    with pytest.raises(TypeError):
        a.create_transaction().get("not bytes")
    assert code_of(a.create_transaction().set, b"k", b"v" * 100_001) == 2103

    a.set_faults(too_old=1.0)
    assert code_of(a.create_transaction().get, b"x") == 1007
    a.set_faults(too_old=0.0, unknown_result=1.0)
    tr = a.create_transaction()
    tr.set(b"z", b"1")
    assert code_of(tr.commit) == 1021
    a.set_faults(unknown_result=0.0, conflict=1.0)
    tr = a.create_transaction()
    tr.set(b"z", b"2")
    assert code_of(tr.commit) == 1020
    a.set_faults(conflict=0.0)
    stats = a.stats()
    assert stats["injected_too_old"] == 1 and stats["injected_unknown_result"] == 1
    assert stats["injected_conflict"] == 1 and stats["conflicts"] == 1
    with pytest.raises(ValueError):
        a.set_faults(nope=0.5)


def test_a_hung_cluster_times_out_with_1031(served):
    db, _, client = served
    db.transaction_timeout = 0.3
    remote = client()
    remote.admin("hang")
    try:
        assert code_of(remote.create_transaction().get, b"k") == 1031
    finally:
        remote.admin("resume")
    assert remote.create_transaction().get(b"k") is None


def test_transactions_of_a_client_that_goes_away_are_dropped(served):
    _, server, client = served
    gone = client()
    held = [gone.create_transaction() for _ in range(3)]
    for tr in held:
        tr.get(b"k")
    assert server.open_transactions() == 3
    gone.close()  # every socket of that client closes, as when its process is killed
    assert wait_for(lambda: server.open_transactions() == 0)
    assert server.dropped_on_disconnect == 3
    # A transaction the server dropped is not made again behind the client's back.
    assert code_of(held[0].get, b"k") == 1025


def test_transactions_the_client_lets_go_are_dropped_on_the_server(served):
    _, server, client = served
    remote = client()
    for _ in range(50):
        remote.create_transaction().get(b"k")  # each is garbage at once
    remote.create_transaction().get(b"k")  # carries the drops
    assert server.open_transactions() <= 2


def test_garbage_on_the_socket_closes_only_that_connection(served):
    _, server, client = served
    for junk in (b"\x00\x00\x00\x05hello", struct.pack(">I", 2**31), b"\x00\x00\x00\x02[]",
                 frame({"op": "hello", "session": "s"}) + frame({"op": "call", "tx": 1, "m": "__class__"})):
        with socket.create_connection(server.address, timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):  # the server answers at most the hello, then closes
                pass
    assert client().create_transaction().get(b"k") is None  # the server still serves
    assert server.open_transactions() <= 1  # that client's only


def test_two_backends_share_a_database_through_the_wire(served):
    _, _, client = served
    one, two = MvsqliteBackend(client(), b"t/"), MvsqliteBackend(client(), b"t/")
    one.open()
    two.open()
    try:
        w = one.writer()
        for sql in ("create table t(n)", "insert into t values (41)", "update t set n = n + 1"):
            w.run(sql)
        r = two.open_reader()
        _, got, _ = r.start("select n from t", (), 10)
        assert [tuple(row) for row in got] == [(42,)]
    finally:
        one.close()
        two.close()


def test_the_simulator_runs_as_a_process(tmp_path):
    sim = SimulatorProcess(tmp_path / "sim.log", ["--seed", "5", "--fault", "conflict=0.25"]).start()
    try:
        control = sim.control()
        assert control.admin("faults")["conflict"] == 0.25
        tr = control.create_transaction()
        tr.set(b"a", b"1")
        codes = []
        for _ in range(40):
            try:
                tr.commit()
                break
            except FDBError as exc:
                codes.append(exc.code)
                tr.on_error(exc)
        assert set(codes) <= {1020}
        assert control.create_transaction().get(b"a") == b"1"
        control.close()
    finally:
        sim.stop()
