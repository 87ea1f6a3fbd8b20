"""The client's side of authentication and TLS, without I/O: what to send for each
Authentication request, and the TLS context for an sslmode. Used by the blocking client
(``wire.py``) and by replicas reaching their primary."""

from __future__ import annotations

import hashlib
import ssl
import struct

import scramp

from sqld.pgwire import messages as m

SSLMODES = ("disable", "prefer", "require", "verify-full")


class AuthError(Exception):
    """The server asks for something this client cannot give (or failed to prove itself)."""


class ClientAuth:
    def __init__(self, user: str, password: str | None, tls: bool = False) -> None:
        self.user = user
        self.password = password
        self.tls = tls  # the connection is encrypted: a password may be sent as such
        self._scram: scramp.ScramClient | None = None
        self._scram_done = False

    def _need_password(self) -> str:
        if self.password is None:
            raise AuthError(f'the server asks for a password for user "{self.user}" and none was given')
        return self.password

    def answer(self, msg: m.Authentication) -> bytes | None:
        """The encoded message to send for an Authentication request (None: nothing)."""
        code = msg.code
        if code == m.AUTH_OK:
            if self._scram is not None and not self._scram_done:
                # A server that skips SCRAM's final proof has not shown it knows the secret.
                raise AuthError("the server ended SCRAM authentication without proving itself")
            return None
        if code in (3, 5) and not self.tls:
            # Cleartext or md5 on a plain connection gives the password (or what stands for
            # it) to whoever is in between: only over TLS.
            raise AuthError(f"the server asks for the password {'in cleartext' if code == 3 else 'as md5'} on a "
                            "connection without TLS: refused (use TLS, or SCRAM on the server)")
        if code == 3:  # cleartext
            return m.PasswordMessage(self._need_password().encode() + b"\x00").encode()
        if code == 5:  # md5
            inner = hashlib.md5((self._need_password() + self.user).encode()).hexdigest()
            outer = hashlib.md5(inner.encode() + msg.data[:4]).hexdigest()
            return m.PasswordMessage(b"md5" + outer.encode() + b"\x00").encode()
        if code == 10:  # SASL: the mechanisms offered
            offered = [x.decode() for x in msg.data.split(b"\x00") if x]
            if "SCRAM-SHA-256" not in offered:
                raise AuthError(f"the server offers SASL mechanisms {offered}, not SCRAM-SHA-256")
            self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._need_password())
            first = self._scram.get_client_first().encode()
            return m.PasswordMessage(b"SCRAM-SHA-256\x00" + struct.pack("!i", len(first)) + first).encode()
        if code == 11 and self._scram is not None:
            self._scram.set_server_first(msg.data.decode())
            return m.PasswordMessage(self._scram.get_client_final().encode()).encode()
        if code == 12 and self._scram is not None:
            try:
                self._scram.set_server_final(msg.data.decode())  # the server proves it knew the secret
            except scramp.ScramException as exc:
                raise AuthError(f"the server failed SCRAM's final check: {exc}") from None
            self._scram_done = True
            return None
        raise AuthError(f"the server asks for an authentication method ({code}) this client lacks")


def tls_context(sslmode: str, root_cert: str | None = None) -> ssl.SSLContext | None:
    """The TLS context for libpq's sslmode (None for disable)."""
    if sslmode not in SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSLMODES)}")
    if sslmode == "disable":
        return None
    if sslmode == "verify-full":
        context = ssl.create_default_context(cafile=root_cert)
    else:  # prefer, require: encrypted, not verified (as libpq without a root certificate)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
