"""The transaction state machine alone (sqld/services/transaction.py): the statuses
ReadyForQuery reports, and what ending a transaction hands back."""

from sqld.services.transaction import Transaction


def test_idle_open_failed_and_back():
    tx = Transaction()
    assert tx.status == b"I"
    tx.fail()  # nothing to fail outside a transaction
    assert tx.status == b"I" and not tx.failed
    tx.begin()
    assert tx.status == b"T"
    tx.fail()
    assert tx.status == b"E"
    tx.recover()  # ROLLBACK TO SAVEPOINT
    assert tx.status == b"T"
    tx.fail()
    tx.end()  # COMMIT of a failed transaction rolls back: idle again, nothing left over
    assert tx.status == b"I"
    assert (tx.open, tx.failed, tx.implicit, tx.read_only, tx.conn) == (False, False, False, False, None)


def test_implicit_made_explicit_and_read_only_cleared_by_a_new_begin():
    tx = Transaction()
    tx.begin(implicit=True)
    assert tx.implicit and tx.status == b"T"
    tx.make_explicit()  # BEGIN inside the pipeline's transaction
    assert not tx.implicit and tx.open
    tx.end()
    tx.begin(read_only=True)
    assert tx.read_only and not tx.implicit
    tx.end()
    tx.begin()
    assert not tx.read_only


def test_end_hands_back_the_connection_and_counts_transactions():
    tx = Transaction()
    held = object()
    tx.begin()
    tx.conn, tx.snapshot = held, 7
    assert tx.end() is held
    assert tx.conn is None and tx.snapshot is None and tx.serial == 1
    assert tx.end() is None  # ending an idle session's nothing counts nothing
    assert tx.serial == 1
    tx.begin()
    tx.fail()
    tx.end()
    assert tx.serial == 2
