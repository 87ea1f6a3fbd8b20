"""The FDB simulator over a loopback socket, for tests: several sqld processes on one database."""

# A ``SimServer`` holds one ``SimDatabase`` and answers the port's transaction calls from
# ``RemoteDatabase`` clients (``--fdb-cluster sim://127.0.0.1:PORT``), each call forwarded as
# is: the server's SimTransaction does all the work, so the simulator's semantics (MVCC,
# conflict checks, injected faults, hangs) are exactly the in-process ones. Test-only: no
# authentication, loopback only, nothing kept on disk.
#
# Wire format. Each message is a frame: a 4-byte big-endian length, then that many bytes of
# UTF-8 JSON (an object). Inside a call's arguments and result a JSON object {"b": BASE64}
# is a byte string and a list is a list (tuples travel as lists); nothing else is an object.
# JSON, not pickle: whatever arrives on the socket is data, never code.
#
#   client -> server                                  server -> client
#   {"op": "hello", "session": TOKEN}                 {"ok": null}           (first, once)
#   {"op": "call", "tx": N, "new": BOOL, "m": NAME,   {"ok": VALUE}
#    "a": [ARGS], "drop": [N, ...]}                   {"fdb": CODE, "msg": TEXT}
#                                                     {"exc": "TypeError"|"ValueError", "msg": TEXT}
#   {"op": "admin", "m": NAME, "a": [JSON ARGS]}      {"ok": JSON}
#
# A session is one RemoteDatabase (all its pooled sockets say the same token); transaction
# N of a session is made by its first call ("new") and lives until the client drops it
# (listed in "drop" of a later request, once the client's object is gone) or until the last
# socket of its session closes: a sqld killed with SIGKILL leaves nothing behind.

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import ipaddress
import json
import logging
import secrets
import socket
import socketserver
import struct
import sys
import threading
import weakref
from collections import deque
from typing import Any, Sequence

import attrs

from sqld.backends.mvsqlite.fdbport import (
    COMMIT_UNKNOWN_RESULT,
    TRANSACTION_CANCELLED,
    TRANSACTION_TIMED_OUT,
    FDBError,
)
from sqld.backends.mvsqlite.simulator import CLIENT_INVALID_OPERATION, Faults, SimDatabase

log = logging.getLogger("sqld.simnet")

# >I: the frame's payload length in bytes, big-endian; the payload (UTF-8 JSON) follows.
_LENGTH = struct.Struct(">I")
# A commit is at most 10 MB of mutations (base64 adds a third); a range read of every page
# content of a test database stays well below this.
MAX_FRAME = 256 * 1024 * 1024
# Transactions one session may hold at once: far above what a sqld keeps (they are dropped
# as the page store lets them go), low enough that a leak is an error, not the host's memory.
MAX_TRANSACTIONS = 100_000
# A call the simulator does not answer in this long (a hang() with no transaction timeout)
# fails with 1031 rather than stopping a sqld thread forever.
CLIENT_TIMEOUT = 60.0

METHODS = frozenset((
    "get_read_version", "set_read_version", "get", "get_range", "set", "set_versionstamped_key",
    "clear", "clear_range", "add_read_conflict_range", "add_write_conflict_range", "commit",
    "get_committed_version", "get_versionstamp", "on_error", "reset", "cancel",
))
ADMIN = frozenset(("stats", "reset_stats", "faults", "set_faults", "hang", "resume", "land_in_flight",
                   "advance", "current_version"))


class WireError(Exception):
    """A peer sent something that is not a frame of this protocol (the connection ends)."""


class Unanswered(FDBError):
    """A call that got no reply (the connection failed): it may or may not have run."""


# -- values and frames ---------------------------------------------------------------------


def encode_value(value: Any) -> Any:
    """``value`` (bytes, int, str, bool, None, lists and tuples of them) as JSON data."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encode_value(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"cannot send a {type(value).__name__} to the simulator")


def decode_value_untrusted(data: Any) -> Any:
    """The inverse of ``encode_value``; raises WireError on anything it did not make."""
    if isinstance(data, dict):
        if data.keys() != {"b"} or not isinstance(data["b"], str):
            raise WireError("an object in a value must be {\"b\": base64}")
        try:
            return base64.b64decode(data["b"], validate=True)
        except (binascii.Error, ValueError):
            raise WireError("bad base64 in a byte string") from None
    if isinstance(data, list):
        return [decode_value_untrusted(v) for v in data]
    if data is None or isinstance(data, (bool, int, str)):
        return data
    raise WireError(f"unexpected {type(data).__name__} in a value")


def frame(message: dict) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    if len(payload) > MAX_FRAME:
        raise FDBError(CLIENT_INVALID_OPERATION, f"a {len(payload)}-byte message exceeds the simulator's frame limit")
    return _LENGTH.pack(len(payload)) + payload


def read_frame_untrusted(rfile) -> dict | None:
    """The next message from a buffered binary file; None at a clean end of stream."""
    head = rfile.read(_LENGTH.size)
    if not head:
        return None
    if len(head) < _LENGTH.size:
        raise WireError("the stream ended inside a frame header")
    (n,) = _LENGTH.unpack(head)
    if n > MAX_FRAME:
        raise WireError(f"a frame of {n} bytes exceeds the limit of {MAX_FRAME}")
    payload = rfile.read(n)
    if len(payload) < n:
        raise WireError(f"the stream ended inside a frame ({len(payload)} of {n} bytes)")
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise WireError("a frame is not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise WireError("a frame must hold a JSON object")
    return message


def parse_url(url: str) -> tuple[str, int]:
    """``sim://HOST:PORT`` -> (HOST, PORT); the host must be a loopback address."""
    if not url.startswith("sim://"):
        raise ValueError(f"expected sim://HOST:PORT, got {url!r}")
    return parse_address(url[len("sim://"):])


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"the FDB simulator serves loopback only (no authentication), not {host!r}")
    return host, int(port)


# -- the server ----------------------------------------------------------------------------


@attrs.define(eq=False)
class _Session:
    token: str
    connections: int = 0
    transactions: dict = attrs.Factory(dict)  # client's id -> SimTransaction


class SimServer(socketserver.ThreadingTCPServer):
    """One ``SimDatabase`` served on a loopback port, a thread per connection.

    A call blocks only its own connection (a hang() or on_error's backoff): clients keep a
    pool of connections, one per call in progress.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], db: SimDatabase) -> None:
        super().__init__(address, _Handler)
        self.db = db
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self.dropped_on_disconnect = 0  # transactions dropped because their client went away

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return host, port

    def open_transactions(self) -> int:
        with self._lock:
            return sum(len(s.transactions) for s in self._sessions.values())

    def attach(self, token: str) -> _Session:
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                session = self._sessions[token] = _Session(token)
            session.connections += 1
            return session

    def detach(self, session: _Session) -> None:
        with self._lock:
            session.connections -= 1
            if session.connections > 0:
                return
            del self._sessions[session.token]
            gone = list(session.transactions.values())
            session.transactions.clear()
            self.dropped_on_disconnect += len(gone)
        for tr in gone:
            tr.cancel()  # a thread of this session still inside a call sees 1025 next
        if gone:
            log.info("client %s went away: dropped %d transactions", session.token, len(gone))

    def answer(self, session: _Session, request: dict) -> dict:
        """The reply to one request (errors of the call become replies; WireError does not)."""
        op = request.get("op")
        if op == "call":
            return self._call(session, request)
        if op == "admin":
            return self._admin(request)
        raise WireError(f"unknown op {op!r}")

    def _call(self, session: _Session, request: dict) -> dict:
        drop = request.get("drop", [])
        tx, method, new = request.get("tx"), request.get("m"), request.get("new", False)
        if not isinstance(drop, list) or not all(type(d) is int for d in drop):
            raise WireError("drop must be a list of transaction ids")
        if type(tx) is not int or method not in METHODS or not isinstance(new, bool):
            raise WireError(f"a call needs an integer tx, a bool new and a method of the port, not {method!r}")
        args = decode_value_untrusted(request.get("a", []))
        if not isinstance(args, list):
            raise WireError("a call's arguments must be a list")
        with self._lock:
            for d in drop:
                session.transactions.pop(d, None)
            tr = session.transactions.get(tx)
            if tr is None:
                if not new:
                    return {"fdb": TRANSACTION_CANCELLED,
                            "msg": "transaction_cancelled: the simulator dropped this transaction "
                                   "(its client's connections closed)"}
                if len(session.transactions) >= MAX_TRANSACTIONS:
                    return {"fdb": CLIENT_INVALID_OPERATION,
                            "msg": f"more than {MAX_TRANSACTIONS} open transactions in one client"}
                tr = session.transactions[tx] = self.db.create_transaction()
        try:
            if method == "on_error":
                code, message = args
                if type(code) is not int or not isinstance(message, str):
                    raise WireError("on_error needs a code and a message")
                result = tr.on_error(FDBError(code, message))
            else:
                result = getattr(tr, method)(*args)
        except FDBError as exc:
            return {"fdb": exc.code, "msg": str(exc)}
        except (TypeError, ValueError) as exc:
            return {"exc": type(exc).__name__, "msg": str(exc)}
        return {"ok": encode_value(result)}

    def _admin(self, request: dict) -> dict:
        method, args = request.get("m"), request.get("a", [])
        if method not in ADMIN or not isinstance(args, list):
            raise WireError(f"unknown admin call {method!r}")
        db = self.db
        try:
            if method == "stats":
                with db._lock:
                    stats = dict(db.stats)
                stats["open_transactions"] = self.open_transactions()
                stats["dropped_on_disconnect"] = self.dropped_on_disconnect
                return {"ok": stats}
            if method == "faults":
                return {"ok": dataclasses.asdict(db.faults)}
            if method == "set_faults":
                (changes,) = args
                apply_faults(db.faults, changes)
                return {"ok": dataclasses.asdict(db.faults)}
            if method in ("advance",):
                (seconds,) = args
                if not isinstance(seconds, (int, float)):
                    raise TypeError("advance needs a number of seconds")
                db.advance(seconds)
                return {"ok": None}
            return {"ok": getattr(db, method)()}
        except (TypeError, ValueError) as exc:
            return {"exc": type(exc).__name__, "msg": str(exc)}


def apply_faults(faults: Faults, changes: Any) -> None:
    """Set ``Faults`` fields from a mapping of name -> probability, checked."""
    if not isinstance(changes, dict):
        raise TypeError("faults must be a mapping of name to probability")
    names = {f.name for f in dataclasses.fields(faults)}
    for name, p in changes.items():
        if name not in names:
            raise ValueError(f"unknown fault {name!r}; the simulator has {', '.join(sorted(names))}")
        if not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"fault {name}: a probability 0..1, not {p!r}")
    for name, p in changes.items():
        setattr(faults, name, float(p))


class _Handler(socketserver.StreamRequestHandler):
    server: SimServer

    def handle(self) -> None:
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            hello = read_frame_untrusted(self.rfile)
            if hello is None:
                return
            token = hello.get("session")
            if hello.get("op") != "hello" or not isinstance(token, str) or not token:
                raise WireError("the first message must be a hello with a session token")
        except (WireError, OSError) as exc:
            log.warning("closing a connection from %s: %s", self.client_address, exc)
            return
        session = self.server.attach(token)
        try:
            self.wfile.write(frame({"ok": None}))
            while True:
                request = read_frame_untrusted(self.rfile)
                if request is None:
                    return
                self.wfile.write(frame(self.server.answer(session, request)))
        except WireError as exc:
            log.warning("closing a connection from %s: %s", self.client_address, exc)
        except OSError as exc:  # the client went away (a sqld killed: connection reset)
            log.info("a connection from %s ended: %s", self.client_address, exc)
        finally:
            self.server.detach(session)


# -- the client ----------------------------------------------------------------------------


@attrs.define(eq=False, repr=False)  # its own __repr__, below
class RemoteDatabase:
    """The port's ``Database`` on a simulator process (``sim://HOST:PORT``).

    Thread-safe: each call borrows a connection from a pool (opening one when none is idle),
    so threads never wait for each other's calls. Connection errors become FDBError: 1021
    for a commit whose answer was lost (it may have landed), else 1031.
    """

    host: str
    port: int
    timeout: float = attrs.field(kw_only=True, default=CLIENT_TIMEOUT)
    _token: str = attrs.field(init=False, factory=lambda: secrets.token_hex(16))
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _idle: list[tuple[socket.socket, Any]] = attrs.field(init=False, factory=list)
    _next_id: int = attrs.field(init=False, default=0)
    _dropped: deque[int] = attrs.field(init=False, factory=deque)  # appended by finalizers, from any thread

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "RemoteDatabase":
        host, port = parse_url(url)
        return cls(host, port, **kwargs)

    def __repr__(self) -> str:
        return f"RemoteDatabase(sim://{self.host}:{self.port})"

    def create_transaction(self) -> "RemoteTransaction":
        with self._lock:
            self._next_id += 1
            tx = self._next_id
        return RemoteTransaction(self, tx)

    def ping(self) -> None:
        """Connect once (FDBError 1031 if the simulator is not there)."""
        conn = self._connect()
        with self._lock:
            self._idle.append(conn)

    # -- the simulator's test controls ------------------------------------------------------

    def stats(self) -> dict[str, int]:
        return self.admin("stats")

    def set_faults(self, **faults: float) -> dict[str, float]:
        return self.admin("set_faults", faults)

    def admin(self, method: str, *args) -> Any:
        return self._request({"op": "admin", "m": method, "a": list(args)}, decode=False)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock, rfile in idle:
            rfile.close()
            sock.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> tuple[socket.socket, Any]:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rfile = sock.makefile("rb")
            sock.sendall(frame({"op": "hello", "session": self._token}))
            if read_frame_untrusted(rfile) != {"ok": None}:
                raise WireError("the simulator did not accept the hello")
        except (OSError, WireError) as exc:
            raise Unanswered(TRANSACTION_TIMED_OUT,
                             f"the FDB simulator at sim://{self.host}:{self.port} is unreachable: {exc}") from None
        return sock, rfile

    def _request(self, message: dict, *, commit: bool = False, decode: bool = True) -> Any:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
            if self._dropped and message["op"] == "call":
                message["drop"] = [self._dropped.popleft() for _ in range(len(self._dropped))]
        if conn is None:
            conn = self._connect()
        sock, rfile = conn
        try:
            sock.sendall(frame(message))
            reply = read_frame_untrusted(rfile)
            if reply is None:
                raise WireError("the simulator closed the connection")
        except (OSError, WireError) as exc:
            rfile.close()
            sock.close()
            code = COMMIT_UNKNOWN_RESULT if commit else TRANSACTION_TIMED_OUT
            raise Unanswered(code, f"the FDB simulator at sim://{self.host}:{self.port} did not answer: {exc}") from None
        with self._lock:
            self._idle.append(conn)
        if "ok" in reply:
            return decode_value_untrusted(reply["ok"]) if decode else reply["ok"]
        if "fdb" in reply and type(reply["fdb"]) is int:
            raise FDBError(reply["fdb"], str(reply.get("msg", "")))
        if reply.get("exc") == "TypeError":
            raise TypeError(reply.get("msg"))
        if reply.get("exc") == "ValueError":
            raise ValueError(reply.get("msg"))
        raise FDBError(CLIENT_INVALID_OPERATION, f"unexpected reply from the simulator: {reply!r:.200}")


class RemoteTransaction:
    """A transaction of a ``RemoteDatabase``: every call runs on the server's SimTransaction."""

    def __init__(self, db: RemoteDatabase, tx: int) -> None:
        self._db = db
        self._tx = tx
        self._made = False  # the server has it (its first call was answered)
        weakref.finalize(self, db._dropped.append, tx)

    def _call(self, method: str, *args, commit: bool = False) -> Any:
        message = {"op": "call", "tx": self._tx, "new": not self._made, "m": method, "a": encode_value(args)}
        try:
            result = self._db._request(message, commit=commit)
        except Unanswered:
            # The server may or may not have made it: the next call says "new" again, and
            # a server that has it keeps it.
            raise
        except Exception:
            self._made = True  # answered: the server has it
            raise
        self._made = True
        return result

    def get_read_version(self) -> int:
        return self._call("get_read_version")

    def set_read_version(self, version: int) -> None:
        self._call("set_read_version", version)

    def get(self, key: bytes, snapshot: bool = False) -> bytes | None:
        return self._call("get", key, snapshot)

    def get_range(self, begin: bytes, end: bytes, limit: int = 0, reverse: bool = False,
                  snapshot: bool = False) -> Sequence[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self._call("get_range", begin, end, limit, reverse, snapshot)]

    def set(self, key: bytes, value: bytes) -> None:
        self._call("set", key, value)

    def set_versionstamped_key(self, key: bytes, offset: int, value: bytes) -> None:
        self._call("set_versionstamped_key", key, offset, value)

    def clear(self, key: bytes) -> None:
        self._call("clear", key)

    def clear_range(self, begin: bytes, end: bytes) -> None:
        self._call("clear_range", begin, end)

    def add_read_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._call("add_read_conflict_range", begin, end)

    def add_write_conflict_range(self, begin: bytes, end: bytes) -> None:
        self._call("add_write_conflict_range", begin, end)

    def commit(self) -> None:
        self._call("commit", commit=True)

    def get_committed_version(self) -> int:
        return self._call("get_committed_version")

    def get_versionstamp(self) -> bytes:
        return self._call("get_versionstamp")

    def on_error(self, error: FDBError) -> None:
        if not isinstance(error, FDBError):
            raise error  # as the simulator does: only FDB's errors can be retried
        self._call("on_error", error.code, str(error))

    def reset(self) -> None:
        self._call("reset")

    def cancel(self) -> None:
        self._call("cancel")


# -- python -m sqld.backends.mvsqlite.simulator --listen 127.0.0.1:PORT --------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sqld.backends.mvsqlite.simulator",
        description="Serve the in-memory FoundationDB simulator to sqld processes on this machine "
                    "(--fdb-cluster sim://HOST:PORT). For tests only: no authentication, loopback "
                    "only, nothing is kept when it stops.")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="a loopback address; port 0 picks a free one (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the injected faults")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME=P",
                        help="inject a fault with probability P (0..1), repeatable; names: "
                             + ", ".join(f.name for f in dataclasses.fields(Faults)))
    parser.add_argument("--transaction-timeout", type=float, default=None, metavar="SECONDS",
                        help="FDB's transaction_timeout option: 1031 for a transaction that old")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        address = parse_address(args.listen)
        faults: dict[str, float] = {}
        for item in args.fault:
            name, sep, p = item.partition("=")
            if not sep:
                raise ValueError(f"--fault takes NAME=P, not {item!r}")
            faults[name] = float(p)
        db = SimDatabase(seed=args.seed, transaction_timeout=args.transaction_timeout)
        apply_faults(db.faults, faults)
    except ValueError as exc:
        parser.error(str(exc))
    server = SimServer(address, db)
    host, port = server.address
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
