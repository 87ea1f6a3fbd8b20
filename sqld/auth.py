"""Who may connect: users, their secrets, and the PostgreSQL authentication exchanges.

Users come from ``--user NAME:PASSWORD`` flags, ``SQLD_USERS`` (``name:password,…``) and a
users file (``--users-file``: a line per user, ``NAME SECRET [readonly]``, ``#`` comments).
A secret is a password, or PostgreSQL's SCRAM-SHA-256 verifier
(``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, as ``pg_authid`` keeps it;
``python -m sqld.auth`` prints one), so the file need not hold passwords at all.

Methods (``--auth-method``): ``scram-sha-256`` (default; verifiers made by the ``scramp``
library), ``md5`` and ``password`` (cleartext) only when configured, as they need the
password itself (md5 also accepts the ``md5…`` hash PostgreSQL stores). With no users at all
the server trusts every user name, from loopback peers only (``--allow-trust`` lifts that).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import struct
import sys
from pathlib import Path

import attrs
import scramp

from sqld.errors import SqldError

METHODS = ("scram-sha-256", "md5", "password")
_SCRAM = scramp.ScramMechanism("SCRAM-SHA-256")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)")
ITERATIONS = 4096
_DERIVED: dict[tuple[str, str], tuple] = {}  # (name, password) → SCRAM keys, derived once per process
SALT_LENGTH = 32  # scramp's, and so python -m sqld.auth's (PostgreSQL's own verifiers have 16)
SECRET_FILE = ".sqld-secret"


class _Secret:
    """The server's secret for salts it makes up (unknown users) or derives (users whose
    secret is a password): random until ``load_secret`` reads or makes the persistent one,
    so the same name gets the same salt across restarts."""

    key = os.urandom(32)
    salt_length = SALT_LENGTH
    iterations = ITERATIONS
    fake = None  # made-up SCRAM keys for unknown users


def load_secret(folder) -> Path:
    """Read ``folder/.sqld-secret`` (32 random bytes, mode 0600), making it the first time."""
    folder = Path(folder)
    path = folder / SECRET_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SqldError(f"cannot read the server secret {path}: {exc.strerror or exc}") from None
    if len(key) < 32:
        raise SqldError(f"the server secret {path} is damaged (under 32 bytes): remove it to make a new one")
    _Secret.key = key
    _Secret.fake = None
    return path


def _salt_for(name: str, purpose: bytes = b"salt") -> bytes:
    digest = hmac.new(_Secret.key, purpose + b"\x00" + name.encode(), hashlib.sha512).digest()
    return digest[: _Secret.salt_length]


def _fake_keys() -> tuple:
    if _Secret.fake is None:
        password = hmac.new(_Secret.key, b"fake-password", hashlib.sha256).hexdigest()
        _Secret.fake = _SCRAM.make_auth_info(password, iteration_count=_Secret.iterations, salt=b"\x00" * 16)
    return _Secret.fake


class AuthFailed(SqldError):
    sqlstate = "28P01"
    severity = "FATAL"


class NotAllowed(SqldError):
    sqlstate = "28000"
    severity = "FATAL"


@attrs.frozen
class User:
    name: str
    secret: str = attrs.field(repr=False)
    read_only: bool = False
    replication: bool = False  # may use the replication sub-protocol (a replica's account)

    @property
    def scram(self) -> tuple[bytes, bytes, bytes, int] | None:
        """(salt, stored key, server key, iterations), from the verifier or the password (made
        once: PBKDF2 is slow on purpose); None for an md5 hash, which cannot answer SCRAM."""
        m = _VERIFIER.fullmatch(self.secret)
        if m:
            it, salt, stored, server = m.groups()
            return base64.b64decode(salt), base64.b64decode(stored), base64.b64decode(server), int(it)
        if _is_md5(self.secret):
            return None
        # A password: its verifier is derived with a salt from the server's persistent secret,
        # so the salt a client sees does not change at restart (as a stored verifier's does not).
        key = (self.name, self.secret)
        info = _DERIVED.get(key)
        salt = _salt_for(self.name)
        if info is None or info[0] != salt:
            info = _DERIVED[key] = _SCRAM.make_auth_info(self.secret, iteration_count=ITERATIONS, salt=salt)
        return info

    @property
    def password(self) -> str | None:
        """The password itself, when the secret is one (not a verifier or an md5 hash)."""
        if _VERIFIER.fullmatch(self.secret) or _is_md5(self.secret):
            return None
        return self.secret


def _is_md5(secret: str) -> bool:
    return len(secret) == 35 and secret.startswith("md5") and all(c in "0123456789abcdef" for c in secret[3:])


def scram_verifier(password: str, iterations: int = ITERATIONS) -> str:
    salt, stored, server, it = _SCRAM.make_auth_info(password, iteration_count=iterations)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${it}:{b64(salt)}${b64(stored)}:{b64(server)}"


@attrs.define
class Users:
    by_name: dict[str, User] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, name: str) -> User | None:
        return self.by_name.get(name)

    def add(self, user: User) -> None:
        self.by_name[user.name] = user

    @classmethod
    def load(cls, flags=(), env: str | None = None, file: str | None = None) -> "Users":
        users = cls()
        if file:
            users._load_file(Path(file))
        for item in ([p for p in (env or "").split(",") if p.strip()] + list(flags)):
            name, sep, password = item.strip().partition(":")
            if not sep or not name or not password:
                raise SqldError(f"a user is NAME:PASSWORD with a password, not {item.strip()[:40]!r}")
            users.add(User(name, password))
        return users

    def _load_file(self, path: Path) -> None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SqldError(f"cannot read the users file {path}: {exc.strerror or exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            flags = [f for part in parts[2:] for f in part.split(",") if f]
            if len(parts) < 2 or not set(flags) <= {"readonly", "readwrite", "replication"} or \
                    {"readonly", "readwrite"} <= set(flags):
                raise SqldError(f"{path}:{n}: expected 'NAME SECRET [readonly] [replication]'")
            self.add(User(parts[0], parts[1], read_only="readonly" in flags, replication="replication" in flags))

    def disguise(self) -> None:
        """Made-up SCRAM answers for unknown users take the shape of the real ones: the salt
        length and iteration count most users here have."""
        from collections import Counter

        shapes = Counter()
        for user in self.by_name.values():
            m = _VERIFIER.fullmatch(user.secret)
            if m:
                shapes[(len(base64.b64decode(m.group(2))), int(m.group(1)))] += 1
            elif not _is_md5(user.secret):
                shapes[(SALT_LENGTH, ITERATIONS)] += 1
        if shapes:
            _Secret.salt_length, _Secret.iterations = shapes.most_common(1)[0][0]
            _Secret.fake = None


@attrs.frozen
class AuthConfig:
    users: Users
    method: str = "scram-sha-256"
    allow_trust: bool = False  # no users: accept anyone from anywhere (else loopback only)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


# --- the exchanges, as messages: PgConnection sends and receives, these decide -----------


class ScramExchange:
    """SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, as PostgreSQL frames it: SASL, then
    SASLContinue, then SASLFinal. Written here rather than with scramp's server, which
    refuses the empty user name libpq sends in the SCRAM message (PostgreSQL takes the user
    from the startup packet); verifiers still come from scramp."""

    def __init__(self, user: User | None, name: str = "") -> None:
        info = user.scram if user is not None else None
        self.user = user if info is not None else None
        if info is not None:
            self.salt, self.stored_key, self.server_key, self.iterations = info
        else:
            # An unknown user (or one SCRAM cannot check) goes through the same steps with a
            # made-up secret, and the same salt every time (derived from the name, as
            # PostgreSQL does): nothing tells it from a real user.
            _, self.stored_key, self.server_key, self.iterations = _fake_keys()
            self.salt = _salt_for(user.name if user else name, b"unknown")
        self.nonce = ""
        self.client_first_bare = ""
        self.server_first = ""
        self.gs2_header = ""

    @staticmethod
    def mechanisms() -> bytes:
        return b"SCRAM-SHA-256\x00\x00"

    def first(self, initial: bytes) -> bytes:
        """The client's SASLInitialResponse → the server-first message."""
        mech, _, rest = initial.partition(b"\x00")
        if mech != b"SCRAM-SHA-256" or len(rest) < 4:
            raise AuthFailed("unsupported SASL mechanism (only SCRAM-SHA-256)")
        (length,) = struct.unpack_from("!i", rest)
        try:
            message = rest[4 : 4 + max(length, 0)].decode()
            flag, authzid, bare = message.split(",", 2)
        except (UnicodeDecodeError, ValueError):
            raise AuthFailed("malformed SCRAM client-first message") from None
        if flag not in ("n", "y") or authzid:
            raise AuthFailed("SCRAM channel binding and authorization identities are not supported")
        attrs_ = dict(part.split("=", 1) for part in bare.split(",") if "=" in part)
        cnonce = attrs_.get("r", "")
        if not cnonce or not all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in cnonce):
            raise AuthFailed("malformed SCRAM client nonce")
        self.gs2_header = f"{flag},{authzid},"
        self.client_first_bare = bare
        self.nonce = cnonce + base64.b64encode(os.urandom(18)).decode()
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        return self.server_first.encode()

    def final(self, response: bytes) -> bytes:
        """The client's proof → the server-final message; raises when the proof is wrong."""
        try:
            message = response.decode()
            without_proof, _, proof_part = message.rpartition(",p=")
            fields = dict(part.split("=", 1) for part in without_proof.split(","))
            proof = base64.b64decode(proof_part, validate=True)
        except (UnicodeDecodeError, ValueError, base64.binascii.Error):
            raise AuthFailed("malformed SCRAM client-final message") from None
        if fields.get("r") != self.nonce or fields.get("c") != base64.b64encode(self.gs2_header.encode()).decode():
            raise AuthFailed("password authentication failed")
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_signature = hmac.new(self.stored_key, auth_message, hashlib.sha256).digest()
        if len(proof) != len(client_signature):
            raise AuthFailed("password authentication failed")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if self.user is None or not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key):
            raise AuthFailed("password authentication failed")
        server_signature = hmac.new(self.server_key, auth_message, hashlib.sha256).digest()
        return b"v=" + base64.b64encode(server_signature)


def md5_check(user: User | None, salt: bytes, response: bytes) -> bool:
    """PostgreSQL's md5: 'md5' + md5(md5(password + user) + salt)."""
    if user is None:
        return False
    if _is_md5(user.secret):
        inner = user.secret[3:]
    elif user.password is not None:
        inner = hashlib.md5((user.password + user.name).encode()).hexdigest()
    else:
        return False  # a SCRAM verifier cannot answer md5
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    return hmac.compare_digest(expected, response.rstrip(b"\x00"))


def password_check(user: User | None, response: bytes) -> bool:
    if user is None or user.password is None:
        return False
    return hmac.compare_digest(user.password.encode(), response.rstrip(b"\x00"))


def main() -> None:  # python -m sqld.auth [PASSWORD]
    import getpass

    password = sys.argv[1] if len(sys.argv) > 1 else getpass.getpass("password: ")
    print(scram_verifier(password))


if __name__ == "__main__":
    main()
