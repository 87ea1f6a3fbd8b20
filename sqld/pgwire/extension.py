"""The sqld protocol extension's names and encodings, for both sides (docs/protocol.md).

A client asks for the extension with a startup parameter; the server agrees with a
ParameterStatus of the same name. Then results carry what SQLite knows and PostgreSQL's
protocol has no room for, each as a ParameterStatus before the message it belongs to:

- ``sqld.decltypes``, before a RowDescription: the columns' declared types (JSON list, null
  for an expression), for sqlite3's PARSE_DECLTYPES;
- ``sqld.result``, before a CommandComplete: changes, last insert rowid, total changes;
- result format 2 (``types.TYPED_FORMAT``): each value with its SQLite storage class.

A replica's session on the primary asks, with the setting ``sqld.report_frame = on``, for
``sqld.frame`` after each statement: the replication log's last frame and generation, so it
can wait for its own writes (docs/replication.md).
"""

from __future__ import annotations

import json

EXT_PARAM = "_pq_.sqld"  # startup parameter (value "1") and the server's agreement
DECLTYPES = "sqld.decltypes"
RESULT = "sqld.result"
FRAME = "sqld.frame"
REPORT_FRAME = "sqld.report_frame"  # a session setting: "on" asks for FRAME reports


def encode_decltypes(decltypes) -> str:
    return json.dumps(list(decltypes))


def decode_decltypes(value: str) -> list[str | None]:
    return json.loads(value)


def encode_result(changes: int, last_rowid: int, total_changes: int) -> str:
    return f"{changes} {last_rowid} {total_changes}"


def decode_result(value: str) -> tuple[int, int, int]:
    changes, last_rowid, total = (int(x) for x in value.split())
    return changes, last_rowid, total


def encode_frame(frame: int, generation: bytes) -> str:
    return f"{frame} {generation.hex()}"


def decode_frame(value: str) -> tuple[int, bytes]:
    frame, _, generation = value.partition(" ")
    return int(frame), bytes.fromhex(generation)
