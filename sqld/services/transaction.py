"""A session's transaction as PostgreSQL's ReadyForQuery reports it: one state machine for
the scheduler (a transaction on this server's connections) and for write forwarding (a
transaction moved to the primary).

::

    idle (I) ──begin()──▶ open (T) ──fail()──▶ failed (E)
       ▲                    │  ▲                  │
       └──────end()─────────┘  └───recover()──────┘   (ROLLBACK TO SAVEPOINT)
                                  end() from E too: COMMIT of a failed transaction rolls back

``implicit`` marks a pipeline's implicit transaction (opened at its first write, ended at
Sync; a BEGIN inside it makes it explicit). ``conn`` is what the transaction holds while
open, the backend connection it runs on, and ``snapshot`` the scheduler's commit sequence
when its reads began (None before its first read): the scheduler's, which the machine never
looks inside; forwarding keeps its connection to the primary for the whole session, so it
leaves them unset. ``serial`` counts the transactions ended, so a cursor knows whether its
transaction is still the session's.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class Transaction:
    open: bool = False       # status T or E
    failed: bool = False     # status E: statements fail (25P02) until ROLLBACK
    implicit: bool = False   # a pipeline's implicit transaction, ended at Sync
    read_only: bool = False  # BEGIN … READ ONLY
    conn: object = None      # what it runs on, while open (see the module's docstring)
    snapshot: int | None = None  # the scheduler's commit sequence when its reads began
    serial: int = 0          # transactions ended so far

    @property
    def status(self) -> bytes:
        """ReadyForQuery's transaction status: I, T or E."""
        if not self.open:
            return b"I"
        return b"E" if self.failed else b"T"

    def begin(self, *, implicit: bool = False, read_only: bool = False) -> None:
        self.open = True
        self.failed = False
        self.implicit = implicit
        self.read_only = read_only

    def fail(self) -> None:
        """A statement in the transaction failed (PostgreSQL's aborted state)."""
        if self.open:
            self.failed = True

    def recover(self) -> None:
        """ROLLBACK TO SAVEPOINT undid the failure: statements run again."""
        self.failed = False

    def make_explicit(self) -> None:
        """BEGIN inside an implicit transaction, or COMMIT / ROLLBACK ending it."""
        self.implicit = False

    def end(self):
        """The transaction is over (committed, rolled back, or lost). Returns what it held."""
        conn = self.conn
        if self.open:
            self.serial += 1
        self.open = self.failed = self.implicit = self.read_only = False
        self.conn = self.snapshot = None
        return conn
