"""The server's side of a pgwire connection, without I/O: bytes in, messages out, replies
buffered to bytes, and the phase the conversation is in.

``ServerConnection`` is what ``services/pgconn.py`` drives: it feeds what the socket read
(``receive_data``), asks for the next message to handle (``next_message``), writes replies
(``write`` …) and sends ``data_to_send()``. Which client message may come in which phase,
and what it means there, is one table (``TABLE``), tested alone (tests/pgwire/test_server.py):

    startup ──StartupMessage──▶ auth ──(authenticated)──▶ ready ◀──────────────┐
                                                        │  ▲                  │
             Parse/Bind/Describe/Execute/Close ─────────┤  └─ Sync ◀── skip ◀─┤ error
                                                        ▼                     │
                                                    extended ─────────────────┘
    ready ──Query──▶ query ──ReadyForQuery──▶ ready;   query/extended ──COPY──▶ copy-in
    startup ──replication=sqld──▶ replication (the replication sub-protocol)

The message classes of ``messages.py`` are the events: no new object per message.
"""

from __future__ import annotations

import enum
from typing import ClassVar

import attrs

from sqld.errors import ProtocolViolation, SqldError
from sqld.pgwire import messages as m
from sqld.pgwire.codec import NEED_DATA, Decoder


@attrs.frozen(eq=False)
class Phase:
    """A phase of the conversation. Each knows, for the hot path, what may come in it
    (``allowed``: message type → (action, the phase it leads to or None), from ``TABLE``) and
    whether the session is inside something there (``busy``: a query, a batch not yet
    Synced, a COPY — it may hold the writer even where the status last told was I)."""

    STARTUP: ClassVar[Phase]      # the untyped first messages (StartupMessage, SSLRequest, CancelRequest …)
    AUTH: ClassVar[Phase]         # a password exchange under way
    READY: ClassVar[Phase]        # between queries: ReadyForQuery was the last answer
    QUERY: ClassVar[Phase]        # a simple Query runs, until its ReadyForQuery
    EXTENDED: ClassVar[Phase]     # extended-query messages since the last Sync
    SKIP: ClassVar[Phase]         # an error in a batch: discard to Sync (protocol 55.2.3)
    COPY_IN: ClassVar[Phase]      # COPY FROM STDIN reads CopyData
    REPLICATION: ClassVar[Phase]  # a replica's connection (replication/sender.py)
    ENDED: ClassVar[Phase]

    name: str
    busy: bool = False
    allowed: dict[type, tuple[Action, Phase | None]] = attrs.field(init=False, factory=dict)

    def __repr__(self) -> str:
        return f"Phase.{self.name.upper().replace('-', '_')}"


for _name, _busy in (("startup", False), ("auth", False), ("ready", False), ("query", True), ("extended", True),
                     ("skip", True), ("copy-in", True), ("replication", False), ("ended", False)):
    setattr(Phase, _name.upper().replace("-", "_"), Phase(_name, _busy))
del _name, _busy
PHASES = (Phase.STARTUP, Phase.AUTH, Phase.READY, Phase.QUERY, Phase.EXTENDED, Phase.SKIP, Phase.COPY_IN,
          Phase.REPLICATION, Phase.ENDED)


class Action(enum.Enum):
    HANDLE = "handle"    # the driver handles the message
    DISCARD = "discard"  # dropped without an answer
    END = "end"          # the client ends the session (Terminate): answers to what came before go out


# What a message means in a phase; a (phase, message) missing here is a protocol violation.
_EXTENDED = (m.Parse, m.Bind, m.Describe, m.Execute, m.Close)
_COPY = (m.CopyData, m.CopyDone, m.CopyFail)
TABLE: dict[tuple[Phase, type], Action] = {}
for _phase in (Phase.READY, Phase.EXTENDED):
    for _kind in _EXTENDED + (m.Sync, m.Flush, m.Query):
        TABLE[_phase, _kind] = Action.HANDLE
    for _kind in _COPY:
        TABLE[_phase, _kind] = Action.DISCARD  # stray COPY messages outside COPY, as PostgreSQL ignores them
    TABLE[_phase, m.Terminate] = Action.END
for _kind in _EXTENDED + _COPY + (m.Query, m.PasswordMessage, m.FunctionCall):
    TABLE[Phase.SKIP, _kind] = Action.DISCARD
TABLE[Phase.SKIP, m.Sync] = Action.HANDLE
TABLE[Phase.SKIP, m.Flush] = Action.HANDLE   # the error already written goes out
TABLE[Phase.SKIP, m.Terminate] = Action.END
for _kind in _COPY:
    TABLE[Phase.COPY_IN, _kind] = Action.HANDLE
TABLE[Phase.COPY_IN, m.Flush] = Action.DISCARD  # PostgreSQL ignores these during COPY IN
TABLE[Phase.COPY_IN, m.Sync] = Action.DISCARD
TABLE[Phase.AUTH, m.PasswordMessage] = Action.HANDLE
for _kind in (m.Query,) + _COPY:
    TABLE[Phase.REPLICATION, _kind] = Action.HANDLE
TABLE[Phase.REPLICATION, m.Terminate] = Action.END
del _phase, _kind


def _leads_to(phase: Phase, kind: type, action: Action) -> Phase | None:
    """The phase a handled message starts (None: it stays)."""
    if action is Action.END:
        return Phase.ENDED
    if phase is Phase.READY or phase is Phase.EXTENDED:
        if kind is m.Query:
            return Phase.QUERY
        if kind in _EXTENDED and phase is Phase.READY:
            return Phase.EXTENDED
    return None


for (_phase, _kind), _action in TABLE.items():
    _phase.allowed[_kind] = (_action, _leads_to(_phase, _kind, _action))
del _phase, _kind, _action

_RFQ = {s: m.ReadyForQuery(s).encode() for s in (b"I", b"T", b"E")}
_DISCARD = Action.DISCARD


def violation(phase: Phase, kind: type) -> ProtocolViolation:
    name = kind.__name__
    if phase is Phase.AUTH:
        return ProtocolViolation(f"expected a password message, got {name}")
    if phase is Phase.COPY_IN:
        return ProtocolViolation(f"unexpected message {name} during COPY from stdin")
    if phase is Phase.REPLICATION:
        return ProtocolViolation(f"unexpected message {name} on a replication connection")
    return ProtocolViolation(f"unexpected message {name} in this state")


class ServerConnection:
    """One connection's protocol state, server side."""

    def __init__(self, max_message_size: int) -> None:
        self.decoder = Decoder(m.FRONTEND, max_message_size)
        self.phase = Phase.STARTUP  # set only through _enter (busy goes with it)
        self.busy = False
        self.status = b"I"  # as last told to the client in ReadyForQuery
        self._copy_from: Phase | None = None  # the phase a COPY returns to
        self._out: list[bytes] = []
        self.out_size = 0

    # -- bytes ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self.decoder.feed(data)

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self.out_size += len(data)

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    def data_to_send(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        self.out_size = 0
        return data

    # -- messages ---------------------------------------------------------------------------

    def next_startup(self):
        """The next untyped startup message, or NEED_DATA."""
        return self.decoder.next_startup()

    def next_message(self):
        """The next message the driver must act on (NEED_DATA: feed more), after the phase
        table: messages it discards are dropped here; one it forbids raises
        ProtocolViolation. A message's phase change is made here, before it is handled."""
        while True:
            msg = self.decoder.next_message()
            if msg is NEED_DATA:
                return msg
            step = self.phase.allowed.get(type(msg))
            if step is None:
                raise violation(self.phase, type(msg))
            action, to = step
            if action is _DISCARD:
                continue
            if to is not None:
                self._enter(to)
            return msg

    def has_message(self) -> bool:
        """Whether a whole message is here already (a pipeline: answers can wait for it)."""
        return self.decoder.has_message()

    def batch_continues(self) -> bool:
        """Whether more of an extended-query batch may come before its end: another message
        than Sync or Query is next, or nothing whole is here yet."""
        return self.decoder.upcoming(b"SEQ") not in (ord("S"), ord("Q"))

    # -- phases ---------------------------------------------------------------------------------

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self.busy = phase.busy

    def authenticating(self) -> None:
        self._enter(Phase.AUTH)

    def started(self, replication: bool = False) -> None:
        """Authenticated and accepted: queries (or replication commands) may come."""
        self._enter(Phase.REPLICATION if replication else Phase.READY)

    def failed(self) -> None:
        """An error answered a message of a batch: the rest up to Sync is skipped."""
        if self.phase is Phase.EXTENDED or self.phase is Phase.READY:
            self._enter(Phase.SKIP)

    def ready(self, status: bytes) -> None:
        """ReadyForQuery: a query or a batch is over."""
        self.write(_RFQ[status])
        self.status = status
        if self.phase is not Phase.READY:
            self._enter(Phase.READY)

    def copy_in(self) -> None:
        self._copy_from = self.phase
        self._enter(Phase.COPY_IN)

    def copy_done(self) -> None:
        if self.phase is Phase.COPY_IN:
            self._enter(self._copy_from or Phase.READY)
        self._copy_from = None

    def error(self, err: SqldError, ext: bool = False) -> None:
        """Write ``err`` as an ErrorResponse (with the SQLite code when the extension is on)."""
        self.write(m.ErrorResponse(
            severity=err.severity, sqlstate=err.sqlstate, message=err.message, detail=err.detail, hint=err.hint,
            sqlite_code=err.sqlite_code if ext else None).encode())
