"""COPY … FROM STDIN and COPY … TO STDOUT: the statement's options and the text/CSV row formats.

The protocol side (CopyInResponse, CopyData…) is ``services/copy.py``'s; here is what a
COPY statement asks for and how rows are written and read in PostgreSQL's text and CSV
formats (https://www.postgresql.org/docs/15/sql-copy.html).
"""

from __future__ import annotations

import re

import attrs

from sqld.errors import FeatureNotSupported, SqldError
from sqld.pgwire import types as t
from sqld.sqltext import unescape_e

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
    escape: str = '"'
    header_match: bool = False       # HEADER MATCH: the header line must name the columns
    force_quote: tuple[str, ...] | bool = ()   # True: FORCE_QUOTE *
    force_null: tuple[str, ...] = ()
    force_not_null: tuple[str, ...] = ()


# The option list after FROM STDIN / TO STDOUT: strings, identifiers, words, punctuation.
_TOKEN = re.compile(r"""\s*(?:(?P<estr>[Ee]'(?:[^'\\]|\\.|'')*')|(?P<str>'(?:[^']|'')*')|(?P<ident>"(?:[^"]|"")*")
                        |(?P<word>[A-Za-z_][\w$]*|[-+]?\d+(?:\.\d*)?)|(?P<punct>[(),*]))""", re.VERBOSE | re.DOTALL)
_BOOLEANS = {"true": True, "on": True, "1": True, "false": False, "off": False, "0": False}


def _tokens(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SqldError(f'syntax error at or near "{text[pos:].strip()[:20]}" in COPY options', sqlstate="42601")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "estr":
            value = unescape_e(value[2:-1])
        elif kind == "str":
            value = value[1:-1].replace("''", "'")
        elif kind == "ident":
            value = value[1:-1].replace('""', '"')
        out.append((kind, value))
        pos = m.end()
    return out


def _options(text: str) -> list[tuple[str, object]]:
    """COPY's options as (name, value) pairs, from either syntax: ``WITH (name value, …)``
    or the older ``CSV HEADER FORCE NOT NULL a, b …`` (PostgreSQL 15's grammar)."""
    toks = _tokens(text)
    i = 0

    def peek(k: int = 0) -> tuple[str, str]:
        return toks[i + k] if i + k < len(toks) else ("", "")

    def word(k: int = 0) -> str:
        kind, value = peek(k)
        return value.lower() if kind == "word" else ""

    def column_list() -> tuple[str, ...]:
        nonlocal i
        names = []
        while True:
            kind, value = peek()
            if kind not in ("word", "ident"):
                raise SqldError("syntax error in COPY options: a column name was expected", sqlstate="42601")
            names.append(value if kind == "ident" else value.lower())
            i += 1
            if peek() == ("punct", ","):
                i += 1
                continue
            break
        return tuple(names)

    if word() == "with":
        i += 1
    opts: list[tuple[str, object]] = []
    if peek() == ("punct", "("):
        i += 1
        while peek() != ("punct", ")"):
            kind, name = peek()
            if kind not in ("word", "ident"):
                raise SqldError("syntax error in COPY options", sqlstate="42601")
            name = name.lower()
            i += 1
            kind, value = peek()
            if (kind, value) == ("punct", "("):
                i += 1
                opts.append((name, column_list()))
                if peek() != ("punct", ")"):
                    raise SqldError("syntax error in COPY options: ) was expected", sqlstate="42601")
                i += 1
            elif (kind, value) == ("punct", "*"):
                opts.append((name, True))
                i += 1
            elif kind in ("word", "str", "estr", "ident"):
                opts.append((name, value))
                i += 1
            else:
                opts.append((name, None))
            if peek() == ("punct", ","):
                i += 1
            elif peek() != ("punct", ")"):
                raise SqldError("syntax error in COPY options", sqlstate="42601")
        i += 1
        if i != len(toks):
            raise SqldError("syntax error after COPY options", sqlstate="42601")
        return opts
    while i < len(toks):
        w = word()
        i += 1
        if w in ("binary", "csv"):
            opts.append(("format", w))
        elif w in ("header", "freeze"):
            opts.append((w, True))
        elif w in ("delimiter", "null", "quote", "escape", "encoding"):
            if word() == "as":
                i += 1
            kind, value = peek()
            if kind not in ("str", "estr"):
                raise SqldError(f"syntax error in COPY options: a string was expected after {w.upper()}",
                                sqlstate="42601")
            opts.append((w, value))
            i += 1
        elif w == "force":
            if word() == "quote":
                i += 1
                if peek() == ("punct", "*"):
                    i += 1
                    opts.append(("force_quote", True))
                else:
                    opts.append(("force_quote", column_list()))
            elif word() == "not" and word(1) == "null":
                i += 2
                opts.append(("force_not_null", column_list()))
            elif word() == "null":
                i += 1
                opts.append(("force_null", column_list()))
            else:
                raise SqldError("syntax error in COPY options after FORCE", sqlstate="42601")
        else:
            raise FeatureNotSupported(f"COPY option {toks[i - 1][1]} is not supported")
    return opts



def _char(name: str, value) -> str:
    if not isinstance(value, str) or len(value.encode("utf-8")) != 1:
        raise SqldError(f"COPY {name} must be a single one-byte character", sqlstate="22023")
    return value


def parse(sql: str) -> CopySpec:
    m = _COPY.match(sql)
    if not m:
        raise FeatureNotSupported("only COPY … FROM STDIN and COPY … TO STDOUT are supported",
                                  hint="Files on the server are not reachable: use psql's \\copy.")
    direction = m.group("dir").upper()
    if (direction == "FROM") != (m.group("where").upper() == "STDIN"):
        raise FeatureNotSupported("COPY reads FROM STDIN and writes TO STDOUT")
    seen: set[str] = set()
    fmt = "text"
    header = header_match = False
    delimiter = null = quote = escape = None
    force_quote: tuple[str, ...] | bool = ()
    force_null: tuple[str, ...] = ()
    force_not_null: tuple[str, ...] = ()
    for name, value in _options(m.group("opts")):
        if name in seen:
            raise SqldError("conflicting or redundant options", sqlstate="42601")
        seen.add(name)
        if name == "format":
            fmt = str(value).lower()
            if fmt not in ("csv", "text"):
                raise FeatureNotSupported(f"COPY format {value} is not supported (text and csv are)")
        elif name == "header":
            text = str(value).lower() if value not in (None, True) else "true"
            if text == "match":
                if direction == "TO":
                    raise FeatureNotSupported('cannot use "match" with HEADER in COPY TO')
                header = header_match = True
            elif text in _BOOLEANS:
                header = _BOOLEANS[text]
            else:
                raise SqldError("header requires a Boolean value or \"match\"", sqlstate="22023")
        elif name == "delimiter":
            delimiter = _char("delimiter", value)
        elif name == "null":
            if not isinstance(value, str):
                raise SqldError("null requires a string value", sqlstate="42601")
            null = value
        elif name == "quote":
            quote = _char("quote", value)
        elif name == "escape":
            escape = _char("escape", value)
        elif name in ("force_quote", "force_null", "force_not_null"):
            if not (value is True and name == "force_quote") and not isinstance(value, tuple):
                raise SqldError(f"argument to option \"{name}\" must be a list of column names", sqlstate="22023")
            if name == "force_quote":
                force_quote = value
            elif name == "force_null":
                force_null = value
            else:
                force_not_null = value
        elif name in ("encoding", "freeze"):
            pass
        else:
            raise FeatureNotSupported(f"COPY option {name} is not supported")
    is_csv = fmt == "csv"
    # PostgreSQL's checks (ProcessCopyOptions), in its order.
    if not is_csv:
        for name, value in (("quote", quote), ("escape", escape), ("force quote", force_quote),
                            ("force not null", force_not_null), ("force null", force_null)):
            if value:
                raise FeatureNotSupported(f"COPY {name} available only in CSV mode")
    if force_quote and direction == "FROM":
        raise FeatureNotSupported("COPY force quote only available using COPY TO")
    if force_not_null and direction == "TO":
        raise FeatureNotSupported("COPY force not null only available using COPY FROM")
    if force_null and direction == "TO":
        raise FeatureNotSupported("COPY force null only available using COPY FROM")
    delimiter = delimiter if delimiter is not None else ("," if is_csv else "\t")
    null = null if null is not None else ("" if is_csv else "\\N")
    quote = quote if quote is not None else '"'
    escape = escape if escape is not None else quote
    if delimiter in "\r\n":
        raise SqldError("COPY delimiter cannot be newline or carriage return", sqlstate="22023")
    if "\r" in null or "\n" in null:
        raise SqldError("COPY null representation cannot use newline or carriage return", sqlstate="22023")
    if is_csv and delimiter == quote:
        raise SqldError("COPY delimiter and quote must be different", sqlstate="22023")
    if delimiter in null:
        raise SqldError("COPY delimiter must not appear in the NULL specification", sqlstate="22023")
    if is_csv and quote in null:
        raise SqldError("CSV quote character must not appear in the NULL specification", sqlstate="22023")
    cols = tuple(c.strip().strip('"') for c in (m.group("cols") or "").split(",") if c.strip())
    return CopySpec(
        table=m.group("table"), columns=cols, query=m.group("query"), direction=direction, csv=is_csv,
        header=header, delimiter=delimiter, null=null, quote=quote, escape=escape, header_match=header_match,
        force_quote=force_quote, force_null=force_null, force_not_null=force_not_null,
    )


def force_columns(spec: CopySpec, columns, table_columns=None) -> tuple[frozenset[int], frozenset[int]]:
    """The positions (in ``columns``, the COPY's) of FORCE_NULL and FORCE_NOT_NULL columns —
    for COPY TO, of FORCE_QUOTE ones (every one for ``*``) and an empty set. A name that
    is not a column is 42703; one the COPY does not copy, 42P10 (PostgreSQL's answers)."""
    folded = [c.casefold() for c in columns]
    known = {c.casefold() for c in table_columns} if table_columns is not None else set(folded)

    def positions(option: str, names) -> frozenset[int]:
        if names is True:
            return frozenset(range(len(columns)))
        out = set()
        for name in names:
            key = name.casefold()
            if key not in known:
                raise SqldError(f'column "{name}" of relation "{spec.table}" does not exist' if spec.table
                                else f'column "{name}" does not exist', sqlstate="42703")
            if key not in folded:
                raise SqldError(f'{option} column "{name}" not referenced by COPY', sqlstate="42P10")
            out.add(folded.index(key))
        return frozenset(out)

    if spec.direction == "TO":
        return positions("FORCE_QUOTE", spec.force_quote), frozenset()
    return positions("FORCE_NULL", spec.force_null), positions("FORCE_NOT_NULL", spec.force_not_null)


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
    """Turns CopyData chunks into rows (lists of str or None), across chunk boundaries.

    CSV follows PostgreSQL (sql-copy.html, "CSV Format"): a field is NULL when it is
    unquoted and equals the NULL string (so with the default ``''``, ``,,`` is NULL and
    ``,"",`` an empty string), FORCE_NOT_NULL columns never are, FORCE_NULL columns are
    also when quoted; quotes may open anywhere in a field, and hold delimiters and newlines.
    """

    def __init__(self, spec: CopySpec, columns=None, force_null=frozenset(), force_not_null=frozenset()) -> None:
        self.spec = spec
        self.columns = list(columns) if columns is not None else None  # for HEADER MATCH
        self.force_null = force_null
        self.force_not_null = force_not_null
        self.buffer = ""
        self.done = False
        self.skip_header = spec.header
        self.header: list[str] | None = None  # the header line's fields (CSV), for HEADER MATCH
        # CSV: where the scan for the end of the current record stopped, and its state there
        self._scan = 0
        self._in_quote = False
        self._outside_re = re.compile("[\n" + re.escape(spec.quote) + "]")
        self._inside_re = re.compile("[" + re.escape(spec.quote) + re.escape(spec.escape) + "]")
        self._plain_re = re.compile("[^" + re.escape(spec.delimiter) + re.escape(spec.quote) + "]*")
        d, q = re.escape(spec.delimiter), re.escape(spec.quote)
        field = f"(?:{q}(?:[^{q}]|{q}{q})*{q}|[^{d}{q}]*)"
        simple = spec.quote == spec.escape
        self._simple_re = re.compile(f"{q}((?:[^{q}]|{q}{q})*){q}(?={d}|\\Z)|([^{d}{q}]*)(?={d}|\\Z)",
                                     re.DOTALL) if simple else None
        # a record of such fields; each one as (opening quote, quoted text, bare text, delimiter)
        self._whole_re = re.compile(f"(?:{field}{d})*{field}", re.DOTALL) if simple else None
        self._pieces_findall = re.compile(f"(?:({q})((?:[^{q}]|{q}{q})*){q}|([^{d}{q}]*))({d}|\\Z)",
                                          re.DOTALL).findall if simple else None

    def feed(self, data: bytes) -> list[list[str | None]]:
        try:
            self.buffer += data.decode("utf-8")
        except UnicodeDecodeError:
            raise SqldError("invalid byte sequence for encoding \"UTF8\" in COPY data", sqlstate="22021") from None
        if self.done:
            self.buffer = ""
            return []
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
        null, delim = self.spec.null, self.spec.delimiter
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
            fields = line.split(delim)
            if "\\" in line:
                fields = [None if f == null else _unescape(f) for f in fields]
            elif null in fields:
                fields = [None if f == null else f for f in fields]
            rows.append(fields)
        return rows

    def _csv(self, final: bool) -> list[list[str | None]]:
        records = self._records(final)
        rows = []
        spec = self.spec
        null, quote, delim = spec.null, spec.quote, spec.delimiter
        plain = not self.force_not_null
        whole, pieces, twice = self._whole_re, self._pieces_findall, quote + quote
        for record in records:
            if self.done:
                break
            if record.endswith("\r"):
                record = record[:-1]
            if record == "\\.":
                self.done = True
                break
            if self.skip_header:
                self.skip_header = False
                self.header = [value for value, _ in self._fields(record)]
                self._check_header()
                continue
            if plain and quote not in record:  # the common line: nothing quoted
                rows.append([None if f == null else f for f in record.split(delim)])
                continue
            if whole is not None and whole.fullmatch(record):
                # Every field wholly quoted or wholly unquoted: read by one regex, in C.
                found = pieces(record)
                for end, piece in enumerate(found):
                    if not piece[3]:
                        break
                row = []
                for k in range(end + 1):
                    opened, inner, bare, _ = found[k]
                    if opened:
                        value = inner.replace(twice, quote) if twice in inner else inner
                        row.append(None if value == null and k in self.force_null else value)
                    else:
                        row.append(None if bare == null and k not in self.force_not_null else bare)
                rows.append(row)
                continue
            row = []
            for k, (value, quoted) in enumerate(self._fields(record)):
                if value == null and (k in self.force_null if quoted else k not in self.force_not_null):
                    row.append(None)
                else:
                    row.append(value)
            rows.append(row)
        if self.done:
            self.buffer = ""
        return rows

    def _records(self, final: bool) -> list[str]:
        """The whole CSV records in the buffer (newlines inside quotes kept), the rest kept
        for the next chunk; the scan resumes where it stopped."""
        text = self.buffer
        quote, escape = self.spec.quote, self.spec.escape
        if quote == escape:
            return self._records_by_parity(final)
        outside = self._outside_re
        inside = self._inside_re
        records = []
        start = 0
        i, in_quote = self._scan, self._in_quote
        n = len(text)
        while i < n:
            if in_quote:
                if escape == quote:
                    j = text.find(quote, i)
                    if j < 0:
                        i = n
                        break
                    in_quote = False  # a doubled quote closes and opens again
                    i = j + 1
                    continue
                found = inside.search(text, i)
                if found is None:
                    i = n
                    break
                j = found.start()
                if text[j] == escape:
                    if j + 1 >= n and not final:
                        i = j  # what the escape escapes is in the next chunk
                        break
                    i = j + 2 if j + 1 < n and text[j + 1] in (quote, escape) else j + 1
                    continue
                in_quote = False
                i = j + 1
                continue
            found = outside.search(text, i)
            if found is None:
                i = n
                break
            j = found.start()
            if text[j] == "\n":
                records.append(text[start:j])
                start = j + 1
            else:
                in_quote = True
            i = j + 1
        if final:
            if start < n:
                records.append(text[start:])
            self.buffer, self._scan, self._in_quote = "", 0, False
        else:
            self.buffer, self._scan, self._in_quote = text[start:], i - start, in_quote
        return records

    def _records_by_parity(self, final: bool) -> list[str]:
        """``_records`` when the escape is the quote (the default): a newline ends a record
        when the quotes before it on the record are even in number (a doubled quote counts
        twice), so lines are split and counted in C, not scanned character by character."""
        text = self.buffer
        quote = self.spec.quote
        lines = text.split("\n")
        rest = lines.pop()
        records = []
        pending: list[str] = []
        in_quote = False
        for line in lines:
            if line.count(quote) % 2:
                in_quote = not in_quote
            if in_quote:
                pending.append(line)
            elif pending:
                pending.append(line)
                records.append("\n".join(pending))
                pending = []
            else:
                records.append(line)
        if pending:
            rest = "\n".join(pending) + "\n" + rest
        # The kept text starts a record (outside quotes): the next chunk counts from there.
        self.buffer = "" if final else rest
        if final and rest:
            records.append(rest)
        return records

    def _fields(self, record: str) -> list[tuple[str, bool]]:
        """One CSV line's fields: (value, whether any of it was quoted)."""
        simple = self._simple_re
        if simple is not None:
            # Fields wholly quoted or wholly unquoted (nearly every line): one regex match each.
            fields = []
            i, n = 0, len(record)
            quote = self.spec.quote
            twice = quote + quote
            while True:
                found = simple.match(record, i)
                if found is None:
                    break  # a quote inside a field: the general reading below
                q = found.group(1)
                fields.append((q.replace(twice, quote), True) if q is not None else (found.group(2), False))
                i = found.end()
                if i >= n:
                    return fields
                i += 1
        delim, quote, escape = self.spec.delimiter, self.spec.quote, self.spec.escape
        plain, inside = self._plain_re, self._inside_re
        fields = []
        i, n = 0, len(record)
        while True:
            parts = []
            quoted = False
            while True:
                run = plain.match(record, i)  # up to a delimiter or a quote
                parts.append(run.group())
                i = run.end()
                if i >= n or record[i] == delim:
                    break
                quoted = True  # a quote opens: to its closing quote, escapes taken
                i += 1
                while True:
                    found = inside.search(record, i)
                    if found is None:
                        raise SqldError("unterminated CSV quoted field", sqlstate="22P04")
                    j = found.start()
                    parts.append(record[i:j])
                    c = record[j]
                    if c == escape and j + 1 < n and record[j + 1] in (quote, escape):
                        parts.append(record[j + 1])
                        i = j + 2
                    elif c == quote:
                        i = j + 1
                        break
                    else:  # an escape character escaping nothing is itself
                        parts.append(c)
                        i = j + 1
            fields.append(("".join(parts), quoted))
            if i >= n:
                return fields
            i += 1  # the delimiter

    def _check_header(self) -> None:
        if not self.spec.header_match or self.columns is None:
            return
        names = self.columns
        if len(self.header) != len(names):
            raise SqldError(f"wrong number of fields in header line: got {len(self.header)}, expected {len(names)}",
                            sqlstate="22P04")
        for k, (got, want) in enumerate(zip(self.header, names)):
            if got != want:
                raise SqldError(f'column name mismatch in header line field {k + 1}: got "{got}", expected "{want}"',
                                sqlstate="22P04")


@attrs.frozen
class RowWriter:
    """The lines of COPY … TO STDOUT, for columns ``names``."""

    spec: CopySpec
    names: tuple = attrs.field(converter=tuple)
    force_quote: frozenset[int] = frozenset()
    single: bool = attrs.field(init=False)

    @single.default
    def _single(self) -> bool:
        return len(self.names) == 1

    def header(self) -> bytes:
        return self._line(self.names, header=True)

    def row(self, row: tuple) -> bytes:
        return self._line(row)

    def _line(self, row, header: bool = False) -> bytes:
        spec = self.spec
        if not spec.csv:
            fields = [spec.null if v is None else _text_value(v).translate(_OUT) for v in row]
            return (spec.delimiter.join(fields) + "\n").encode("utf-8")
        null, delim, quote, escape = spec.null, spec.delimiter, spec.quote, spec.escape
        force = () if header else self.force_quote
        fields = []
        for k, v in enumerate(row):
            if v is None:
                fields.append(null)
                continue
            text = _text_value(v)
            # PostgreSQL's CopyAttributeOutCSV: quoted when forced, when it reads as the NULL
            # string (an empty string, by default), when it holds a delimiter, quote, CR or
            # LF, or when it is a lone column's \. (the end-of-data marker).
            if (k in force or text == null or (self.single and text == "\\.")
                    or delim in text or quote in text or "\n" in text or "\r" in text):
                if quote in text or escape in text:
                    text = "".join(escape + ch if ch == quote or ch == escape else ch for ch in text)
                text = quote + text + quote
            fields.append(text)
        return (delim.join(fields) + "\n").encode("utf-8")


def format_row(spec: CopySpec, row: tuple) -> bytes:
    """One output line of COPY … TO STDOUT (no FORCE_QUOTE)."""
    return RowWriter(spec, row).row(row)


def _text_value(v) -> str:
    if type(v) is bytes:
        return "\\x" + v.hex()
    if type(v) is float:
        return t.float_text(v)
    return str(v)
