"""Reading a SQLite WAL file: its committed transactions, as page images.

Layout (https://sqlite.org/fileformat2.html#walformat): a 32-byte header, then frames of a
24-byte header and one page. Leaves to the caller: where to start (the reader yields every
committed transaction from the start of the file) and what to do with the pages.
"""

from __future__ import annotations

import struct

import attrs

WAL_HEADER = struct.Struct(">IIIIIIII")
# magic, file format version, page size, checkpoint sequence, salt-1, salt-2, checksum-1, checksum-2
FRAME_HEADER = struct.Struct(">IIIIII")
# page number, database size in pages after a commit (0 for other frames), salt-1, salt-2,
# checksum-1, checksum-2
MAGIC_LE = 0x377F0682  # checksums over little-endian words
MAGIC_BE = 0x377F0683  # checksums over big-endian words


class WalError(Exception):
    """The file is not a WAL file this reader understands."""


@attrs.frozen(repr=False)
class Page:
    number: int
    data: bytes

    def __repr__(self) -> str:
        return f"Page({self.number}, <{len(self.data)} bytes>)"


@attrs.frozen
class Transaction:
    """One committed write transaction: its pages (the last image of each) and the database
    size, in pages, after it."""

    pages: tuple[Page, ...]
    db_size: int
    end_offset: int  # where the next frame starts: resume reading here


@attrs.frozen
class WalHeader:
    page_size: int
    checkpoint_seq: int
    salt1: int
    salt2: int
    big_endian: bool
    checksum: tuple[int, int]


def checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    """SQLite's WAL checksum: a running pair over 32-bit words, two at a time."""
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def read_header(data: bytes) -> WalHeader:
    if len(data) < WAL_HEADER.size:
        raise WalError(f"WAL header truncated: {len(data)} of {WAL_HEADER.size} bytes")
    magic, version, page_size, seq, salt1, salt2, c1, c2 = WAL_HEADER.unpack_from(data)
    if magic not in (MAGIC_LE, MAGIC_BE):
        raise WalError(f"not a WAL file (magic {magic:#x})")
    if version != 3007000:
        raise WalError(f"unknown WAL format version {version}")
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise WalError(f"invalid page size {page_size}")
    big_endian = magic == MAGIC_BE
    if checksum(data[:24], 0, 0, big_endian) != (c1, c2):
        raise WalError("WAL header checksum mismatch")
    return WalHeader(page_size, seq, salt1, salt2, big_endian, (c1, c2))


def transactions(data: bytes, header: WalHeader | None = None, offset: int = WAL_HEADER.size,
                 verify: bool = True, base: int = 0):
    """The committed transactions in a WAL file's bytes, in order.

    ``verify=False`` skips the checksums (for the primary reading its own WAL right after a
    commit, from ``offset``: the salts still tell this WAL's frames from older ones).
    ``data`` may hold only the file from offset ``base`` on; offsets are the file's.
    Stops at the first frame that is not valid (salts of another WAL generation, a checksum
    that does not match, a truncated frame): what follows it was never committed, or belongs
    to a WAL that has since been restarted. Frames after the last commit frame are not
    yielded: a transaction still being written, or one rolled back, is not a transaction.
    """
    header = header or read_header(data)
    size = header.page_size
    frame_size = FRAME_HEADER.size + size
    s0, s1 = header.checksum
    if offset != WAL_HEADER.size and verify:
        raise ValueError("checksums chain from the start of the WAL: verify=False to start elsewhere")
    pending: dict[int, bytes] = {}
    end = base + len(data)
    while offset + frame_size <= end:
        at = offset - base
        pgno, commit_size, salt1, salt2, c1, c2 = FRAME_HEADER.unpack_from(data, at)
        if (salt1, salt2) != (header.salt1, header.salt2) or pgno == 0:
            return
        page = data[at + FRAME_HEADER.size : at + frame_size]
        if verify:
            s0, s1 = checksum(data[at : at + 8], s0, s1, header.big_endian)
            s0, s1 = checksum(page, s0, s1, header.big_endian)
            if (s0, s1) != (c1, c2):
                return
        pending[pgno] = page
        offset += frame_size
        if commit_size:
            yield Transaction(tuple(Page(n, p) for n, p in sorted(pending.items())), commit_size, offset)
            pending = {}
