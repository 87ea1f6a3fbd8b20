"""The list-append checker (tests/histories.py) on tiny hand-made histories: it passes what is serializable and finds each anomaly."""

from __future__ import annotations

import pytest

from tests.histories import FAIL, INFO, OK, Txn, append, check, read


def t(id, *ops, status=OK) -> Txn:
    return Txn(id, status, ops)


def test_a_serial_history_passes():
    history = [
        t(1, append("x", 1), read("y", [])),
        t(2, read("x", [1]), append("x", 2), append("y", 10)),
        t(3, read("x", [1, 2]), read("y", [10])),
        t(4, append("y", 11), read("y", [10, 11])),  # a read after its own append
    ]
    report = check(history, final={"x": [1, 2], "y": [10, 11]})
    assert report.valid, report.summary()
    assert report.checked == 4 and report.edges > 0


def test_a_lost_update_is_a_cycle():
    # Both read x empty and append: one of them did not see the other's append (G2).
    history = [t(1, read("x", []), append("x", 1)), t(2, read("x", []), append("x", 2))]
    report = check(history, final={"x": [1, 2]})
    assert len(report.cycles) == 1 and report.cycle_kind(report.cycles[0]) == "G2"
    assert {e.kind for e in report.cycles[0]} == {"ww", "rw"}


def test_write_skew_is_a_cycle_of_anti_dependencies():
    history = [t(1, read("x", []), read("y", []), append("x", 1)),
               t(2, read("x", []), read("y", []), append("y", 2))]
    report = check(history, final={"x": [1], "y": [2]})
    assert len(report.cycles) == 1
    assert [e.kind for e in report.cycles[0]] == ["rw", "rw"]


def test_circular_information_flow_is_g1c():
    history = [t(1, append("x", 1), read("y", [2])), t(2, append("y", 2), read("x", [1]))]
    report = check(history)
    assert len(report.cycles) == 1 and report.cycle_kind(report.cycles[0]) == "G1c"


def test_a_write_cycle_is_g0():
    history = [t(1, append("x", 1), append("y", 2)), t(2, append("x", 3), append("y", 4))]
    report = check(history, final={"x": [1, 3], "y": [4, 2]})
    assert len(report.cycles) == 1 and report.cycle_kind(report.cycles[0]) == "G0"


def test_a_longer_cycle_is_found():
    # 1 -> 2 -> 3 -> 1 through three keys; no two transactions form a cycle alone.
    history = [t(1, append("a", 1), read("c", [3])), t(2, read("a", [1]), append("b", 2)),
               t(3, read("b", [2]), append("c", 3))]
    report = check(history, final={"a": [1], "b": [2], "c": [3]})
    assert len(report.cycles) == 1 and len(report.cycles[0]) == 3


def test_failed_and_unknown_transactions():
    history = [
        t(1, append("x", 1), status=FAIL),
        t(2, read("x", [1])),  # read an aborted append: G1a
        t(3, append("y", 5), status=INFO),  # unknown, and seen: it committed, it is a node
        t(4, append("y", 6), status=INFO),  # unknown, never seen: not a node, not lost
        t(5, read("y", [5])),
    ]
    report = check(history, final={"x": [1], "y": [5]})
    assert any(a.startswith("G1a") for a in report.anomalies)
    assert report.checked == 3 and not report.lost


def test_lost_and_duplicated_appends():
    history = [t(1, append("x", 1)), t(2, append("x", 2)), t(3, read("x", [2, 2]))]
    report = check(history, final={"x": [2, 2]})
    assert report.lost == (("x", 1),)
    assert report.duplicated == (("x", 2),)
    assert not report.valid


def test_reads_no_single_order_explains():
    history = [t(1, append("x", 1)), t(2, append("x", 2)), t(3, read("x", [1, 2])), t(4, read("x", [2, 1]))]
    report = check(history)
    assert any(a.startswith("incompatible order") for a in report.anomalies)


def test_values_must_be_unique():
    with pytest.raises(ValueError):
        check([t(1, append("x", 1)), t(2, append("x", 1))])
