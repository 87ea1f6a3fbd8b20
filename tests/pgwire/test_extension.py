"""The sqld extension's encodings (sqld/pgwire/extension.py): what one side writes, the other
reads back the same; the forms are those docs/protocol.md gives."""

from __future__ import annotations

import pytest

from sqld.pgwire import extension as ext


@pytest.mark.parametrize("decltypes", [[], ["INTEGER", "date", None], ['a "quoted" type', "é"]])
def test_decltypes_round_trip(decltypes):
    assert ext.decode_decltypes(ext.encode_decltypes(decltypes)) == decltypes


def test_decltypes_form():
    assert ext.encode_decltypes(iter(["INTEGER", None])) == '["INTEGER", null]'


@pytest.mark.parametrize("result", [(0, 0, 0), (3, -9223372036854775808, 12), (1, 9223372036854775807, 1 << 40)])
def test_result_round_trip(result):
    text = ext.encode_result(*result)
    assert text == " ".join(map(str, result))  # "<changes> <last_insert_rowid> <total_changes>"
    assert ext.decode_result(text) == result


@pytest.mark.parametrize("frame", [(0, b""), (41, bytes(range(16)))])
def test_frame_round_trip(frame):
    assert ext.decode_frame(ext.encode_frame(*frame)) == frame


def test_malformed_reports_raise_value_error():
    with pytest.raises(ValueError):
        ext.decode_result("1 2")
    with pytest.raises(ValueError):
        ext.decode_frame("x 00")
