"""COPY … FROM STDIN and COPY … TO STDOUT: the statement's options and the text/CSV row formats.

The protocol side (CopyInResponse, CopyData…) is the driver's (``pgconn``); here is what a
COPY statement asks for and how rows are written and read in PostgreSQL's text and CSV
formats (https://www.postgresql.org/docs/15/sql-copy.html).
"""

from __future__ import annotations

import csv
import sys
import io
import re

import attrs

from sqld.errors import FeatureNotSupported, SqldError
from sqld.pgwire import types as t
from sqld.sqltext import unescape_e

csv.field_size_limit(min(sys.maxsize, 1 << 31))  # fields are bounded by the message size limit

_COPY = re.compile(
    r"""^\s*COPY\s+
        (?:\((?P<query>.+)\)|(?P<table>"(?:[^"]|"")+"|[\w.]+)\s*(?:\((?P<cols>[^)]*)\))?)\s+
        (?P<dir>FROM|TO)\s+(?P<where>STDIN|STDOUT)
        (?P<opts>.*?)\s*;?\s*$""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


@attrs.frozen
class CopySpec:
    table: str | None
    columns: tuple[str, ...]
    query: str | None
    direction: str  # "FROM" or "TO"
    csv: bool = False
    header: bool = False
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'


def parse(sql: str) -> CopySpec:
    m = _COPY.match(sql)
    if not m:
        raise FeatureNotSupported("only COPY … FROM STDIN and COPY … TO STDOUT are supported",
                                  hint="Files on the server are not reachable: use psql's \\copy.")
    direction = m.group("dir").upper()
    if (direction == "FROM") != (m.group("where").upper() == "STDIN"):
        raise FeatureNotSupported("COPY reads FROM STDIN and writes TO STDOUT")
    opts = m.group("opts").strip()
    if opts.upper().startswith("WITH"):
        opts = opts[4:].strip()
    if opts.startswith("(") and opts.endswith(")"):
        opts = opts[1:-1]
    words = [w for w in re.split(r"[\s,]+", opts) if w]
    is_csv = header = False
    delimiter = null = None
    quote = '"'
    i = 0
    while i < len(words):
        w = words[i].upper()
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w == "FORMAT":
            is_csv = nxt.upper().strip("'") == "CSV"
            if nxt.upper().strip("'") not in ("CSV", "TEXT"):
                raise FeatureNotSupported(f"COPY format {nxt} is not supported (text and csv are)")
            i += 2
        elif w == "CSV":
            is_csv = True
            i += 1
        elif w == "HEADER":
            header = nxt.upper() not in ("FALSE", "OFF", "0")
            i += 2 if nxt.upper() in ("TRUE", "FALSE", "ON", "OFF", "1", "0") else 1
        elif w == "DELIMITER":
            delimiter = _literal(nxt)
            i += 2
        elif w == "NULL":
            null = _literal(nxt)
            i += 2
        elif w == "QUOTE":
            quote = _literal(nxt)
            i += 2
        elif w in ("ENCODING",):
            i += 2
        else:
            raise FeatureNotSupported(f"COPY option {words[i]} is not supported")
    cols = tuple(c.strip().strip('"') for c in (m.group("cols") or "").split(",") if c.strip())
    for name, value in (("delimiter", delimiter), ("quote", quote)):
        if value is not None and len(value.encode("utf-8")) != 1:
            raise SqldError(f"COPY {name} must be a single one-byte character", sqlstate="22023")
    if delimiter is not None and delimiter == quote and is_csv:
        raise SqldError("COPY delimiter and quote must be different", sqlstate="22023")
    return CopySpec(
        table=m.group("table"), columns=cols, query=m.group("query"), direction=direction, csv=is_csv,
        header=header, delimiter=delimiter or ("," if is_csv else "\t"),
        null=null if null is not None else ("" if is_csv else "\\N"), quote=quote,
    )


def _literal(word: str) -> str:
    if word.upper().startswith("E'"):
        return unescape_e(word[2:-1])
    if len(word) >= 2 and word[0] == word[-1] == "'":
        return word[1:-1].replace("''", "'")
    return word


# --- text format -----------------------------------------------------------------------------

_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}
_OUT = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        ch = field[i]
        if ch != "\\" or i + 1 == len(field):
            out.append(ch)
            i += 1
            continue
        nx = field[i + 1]
        if nx in _ESCAPES:
            out.append(_ESCAPES[nx])
            i += 2
        elif nx in "01234567":
            j = i + 1
            while j < len(field) and j < i + 4 and field[j] in "01234567":
                j += 1
            out.append(chr(int(field[i + 1 : j], 8)))
            i = j
        elif nx == "x" and i + 2 < len(field):
            j = i + 2
            while j < len(field) and j < i + 4 and field[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(field[i + 2 : j], 16)) if j > i + 2 else "x")
            i = j
        else:
            out.append(nx)
            i += 2
    return "".join(out)


class RowReader:
    """Turns CopyData chunks into rows (lists of str or None), across chunk boundaries."""

    def __init__(self, spec: CopySpec) -> None:
        self.spec = spec
        self.buffer = ""
        self.done = False
        self.skip_header = spec.header

    def feed(self, data: bytes) -> list[list[str | None]]:
        try:
            self.buffer += data.decode("utf-8")
        except UnicodeDecodeError:
            raise SqldError("invalid byte sequence for encoding \"UTF8\" in COPY data", sqlstate="22021") from None
        if self.spec.csv:
            return self._csv(final=False)
        lines = self.buffer.split("\n")
        self.buffer = lines.pop()
        return self._text(lines)

    def finish(self) -> list[list[str | None]]:
        if self.spec.csv:
            return self._csv(final=True)
        lines = [self.buffer] if self.buffer.strip("\r") else []
        self.buffer = ""
        return self._text(lines)

    def _text(self, lines: list[str]) -> list[list[str | None]]:
        rows = []
        for line in lines:
            if self.done:
                break
            line = line.rstrip("\r")
            if line == "\\.":
                self.done = True
                break
            if self.skip_header:
                self.skip_header = False
                continue
            rows.append([None if f == self.spec.null else _unescape(f) for f in line.split(self.spec.delimiter)])
        return rows

    def _csv(self, final: bool) -> list[list[str | None]]:
        text = self.buffer
        if not final:
            # keep an incomplete last record (maybe inside quotes) for the next chunk
            cut = text.rfind("\n")
            if cut < 0:
                return []
            text, self.buffer = text[: cut + 1], text[cut + 1 :]
            if text.count(self.spec.quote) % 2:  # a newline inside a quoted field: wait
                self.buffer = text + self.buffer
                return []
        else:
            self.buffer = ""
        rows = []
        try:
            records = list(csv.reader(io.StringIO(text), delimiter=self.spec.delimiter, quotechar=self.spec.quote))
        except csv.Error as exc:
            raise SqldError(f"invalid CSV data for COPY: {exc}", sqlstate="22P04") from None
        for rec in records:
            if rec == ["\\."]:
                self.done = True
                break
            if self.skip_header:
                self.skip_header = False
                continue
            if rec:
                rows.append([None if (f == self.spec.null) else f for f in rec])
        return rows


def format_row(spec: CopySpec, row: tuple) -> bytes:
    """One output line of COPY … TO STDOUT."""
    if spec.csv:
        out = io.StringIO()
        csv.writer(out, delimiter=spec.delimiter, quotechar=spec.quote, lineterminator="\n").writerow(
            [spec.null if v is None else _text_value(v) for v in row])
        return out.getvalue().encode("utf-8")
    fields = [spec.null if v is None else _text_value(v).translate(_OUT) for v in row]
    return (spec.delimiter.join(fields) + "\n").encode("utf-8")


def _text_value(v) -> str:
    if type(v) is bytes:
        return "\\x" + v.hex()
    if type(v) is float:
        return t.float_text(v)
    return str(v)
