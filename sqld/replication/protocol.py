"""The replication sub-protocol's messages: what travels inside CopyData on a replication
connection (docs/replication.md, "Transport").

A replica opens an ordinary pgwire connection with the startup parameter
``replication=sqld``, then sends simple Query commands:

* ``IDENTIFY_SYSTEM`` — one row: generation (hex), the primary's last frame, page size;
* ``BASE_BACKUP`` — one row (generation, frame, page size, bytes), then COPY OUT of the
  database file as of that frame;
* ``START_REPLICATION <generation> <frame>`` — COPY OUT that never ends by itself: each
  committed transaction after ``frame`` as one or more CopyData messages, and keepalives
  when idle. A different generation, or frames compacted away, is an ErrorResponse with
  SQLSTATE 55000: the replica bootstraps again.

CopyData payloads, big-endian:

* ``p`` + u32 count + count × (u32 page number + page): pages of a transaction not ended yet
  (a big transaction is split so no message is huge);
* ``w`` + u64 frame + u64 primary's last frame + f64 commit time (Unix seconds) + u32
  database size in pages + u32 count + pages as above: the transaction ending at ``frame``;
* ``k`` + u64 primary's last frame + f64 primary's clock: a keepalive.
"""

from __future__ import annotations

import struct

from sqld.replication.wal import Page

PAGES = struct.Struct(">I")
COMMIT = struct.Struct(">QQdII")
KEEPALIVE = struct.Struct(">Qd")
PAGES_PER_MESSAGE = 256
STARTUP_PARAM = "replication"
STARTUP_VALUE = "sqld"
NEEDS_BOOTSTRAP = "55000"


def encode_pages(pages) -> bytes:
    return b"".join(PAGES.pack(p.number) + p.data for p in pages)


def encode_transaction(frame: int, primary_frame: int, commit_time: float, db_size: int, pages) -> list[bytes]:
    """CopyData payloads for one transaction: ``p`` chunks, then the ``w`` that ends it."""
    out = []
    pages = list(pages)
    while len(pages) > PAGES_PER_MESSAGE:
        chunk, pages = pages[:PAGES_PER_MESSAGE], pages[PAGES_PER_MESSAGE:]
        out.append(b"p" + PAGES.pack(len(chunk)) + encode_pages(chunk))
    out.append(b"w" + COMMIT.pack(frame, primary_frame, commit_time, db_size, len(pages)) + encode_pages(pages))
    return out


def encode_keepalive(primary_frame: int, now: float) -> bytes:
    return b"k" + KEEPALIVE.pack(primary_frame, now)


def decode_pages(data: bytes, at: int, count: int, page_size: int) -> list[Page]:
    step = 4 + page_size
    if len(data) - at != count * step:
        raise ValueError(f"a replication message holds {len(data) - at} bytes of pages, expected {count * step}")
    return [Page(PAGES.unpack_from(data, i)[0], data[i + 4 : i + step]) for i in range(at, len(data), step)]
