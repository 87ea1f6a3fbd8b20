"""SQL text as clients send it: statements split apart, PostgreSQL literal forms made SQLite's.

This is a lexer-level compat layer, not a translator: it rewrites only what drivers put
into SQL on their own (``$1`` placeholders, ``E'…'`` strings, ``'\\x…'::bytea``,
``'…'::type`` casts, dollar quotes) and reports what a statement's first words and its
placeholders' surroundings say. User SQL otherwise passes through untouched.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import attrs

from sqld.pgwire import types as t

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
  | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z))
  | (?P<blob>[xX]'[^']*')
  | (?P<string>'(?:[^']|'')*(?:'|\Z))
  | (?P<dollar>\$\$.*?\$\$|\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)\$.*?\$(?P=tag)\$)
  | (?P<param>\$\d+|\?\d*|[:@$][A-Za-z_][A-Za-z_0-9]*)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<qident>"(?:[^"]|"")*(?:"|\Z)|\[[^\]]*(?:\]|\Z)|`[^`]*(?:`|\Z))
  | (?P<ident>[^\W\d][\w$]*)
  | (?P<cast>::)
  | (?P<semi>;)
  | (?P<op><=|>=|<>|!=|==|\|\||->>|->|<<|>>|.)
    """,
    re.VERBOSE | re.DOTALL,
)


class Token(NamedTuple):
    kind: str
    text: str

    @property
    def upper(self) -> str:
        return self.text.upper()


def tokenize(sql: str) -> list[Token]:
    return [Token(mt.lastgroup if mt.lastgroup != "tag" else "dollar", mt.group()) for mt in _TOKEN.finditer(sql)]


def _significant(tokens: list[Token]) -> list[Token]:
    return [tok for tok in tokens if tok.kind not in ("ws", "comment")]


@attrs.frozen
class ParamHint:
    """What the SQL around a placeholder says of its type: a cast, or a column it meets."""

    oid: int | None = None
    column: str | None = None
    position: int | None = None  # INSERT without a column list: the table's n-th column (0-based)


@attrs.frozen
class ColumnHint:
    """What a select-list item's text says of its type: a SQLite type name it surely has
    (a cast, a literal, a function of known result), or the columns and literals of an
    arithmetic expression whose type follows from theirs."""

    decltype: str | None = None
    operands: tuple[str, ...] = ()  # column names of an arithmetic expression
    has_real: bool = False          # … with a REAL literal in it


@attrs.frozen
class Statement:
    """One statement, ready for SQLite.

    ``sql`` is the rewritten text; ``verb`` its first keyword(s) in upper case, as a
    PostgreSQL command tag would name it. What only describing a statement needs is worked
    out on first use: ``tables`` (named after FROM, JOIN, INTO or UPDATE), ``hints`` (what
    placeholders' surroundings say, by 1-based index) and ``columns`` (select-list hints).
    """

    sql: str
    verb: str
    words: tuple[str, ...]
    param_count: int
    _sig: tuple[Token, ...] = attrs.field(default=(), eq=False, repr=False)
    _cast_hints: dict = attrs.field(factory=dict, eq=False, repr=False)
    _analysis: list = attrs.field(factory=list, eq=False, repr=False)

    @property
    def is_empty(self) -> bool:
        return not self._sig

    def _analyze(self) -> tuple:
        if not self._analysis:
            sig = list(self._sig)
            tables, hints = _hints(sig, self._cast_hints)
            columns = _select_list(sig) if self.words and self.words[0] == "SELECT" else None
            self._analysis.append((tables, tuple(sorted(hints.items())), columns))
        return self._analysis[0]

    @property
    def tables(self) -> tuple[str, ...]:
        return self._analyze()[0]

    @property
    def hints(self) -> tuple[tuple[int, ParamHint], ...]:
        return self._analyze()[1]

    @property
    def columns(self) -> tuple[ColumnHint | None, ...] | None:
        return self._analyze()[2]


def _unquote_ident(text: str) -> str:
    if text[0] in "\"[`":
        return text[1:-1].replace('""', '"')
    return text.lower()


def _sqlite_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_E_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def unescape_e(body: str) -> str:
    """The value of a PostgreSQL E'…' string (4.1.2.2 of the PostgreSQL manual)."""
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == "'" and i + 1 < n and body[i + 1] == "'":
            out.append("'")
            i += 2
            continue
        if ch != "\\" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nx = body[i + 1]
        if nx in _E_ESCAPES:
            out.append(_E_ESCAPES[nx])
            i += 2
        elif nx in "01234567":
            j = i + 1
            while j < n and j < i + 4 and body[j] in "01234567":
                j += 1
            out.append(chr(int(body[i + 1 : j], 8)))
            i = j
        elif nx == "x" and i + 2 < n and body[i + 2] in "0123456789abcdefABCDEF":
            j = i + 2
            while j < n and j < i + 4 and body[j] in "0123456789abcdefABCDEF":
                j += 1
            out.append(chr(int(body[i + 2 : j], 16)))
            i = j
        elif nx in "uU":
            width = 4 if nx == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            try:
                out.append(chr(int(digits, 16)))
                i += 2 + width
            except ValueError:
                out.append(nx)
                i += 2
        else:
            out.append(nx)
            i += 2
    return "".join(out)


def _string_value(tok: Token) -> str | None:
    if tok.kind == "string":
        return tok.text[1:-1].replace("''", "'")
    if tok.kind == "estring":
        return unescape_e(tok.text[2:-1])
    if tok.kind == "dollar":
        open_end = tok.text.index("$", 1) + 1
        return tok.text[open_end : len(tok.text) - open_end]
    return None


# Cast targets → the SQLite CAST type that gives the same storage class.
_CAST_AFFINITY = {
    t.INT2: "INTEGER", t.INT4: "INTEGER", t.INT8: "INTEGER", t.OID: "INTEGER",
    t.FLOAT4: "REAL", t.FLOAT8: "REAL", t.NUMERIC: "NUMERIC",
    t.TEXT: "TEXT", t.VARCHAR: "TEXT", t.BPCHAR: "TEXT", t.NAME: "TEXT", t.BYTEA: "BLOB",
}

_MULTIWORD_TYPES = {("DOUBLE", "PRECISION"), ("CHARACTER", "VARYING")}


def _read_cast_type(sig: list[Token], i: int) -> tuple[int | None, str, int]:
    """The type named at sig[i] after '::': (oid or None, its name, index past it)."""
    if i >= len(sig) or sig[i].kind not in ("ident", "qident"):
        return None, "", i
    # a schema-qualified name: pg_catalog.text
    if i + 2 < len(sig) and sig[i + 1].text == "." and sig[i + 2].kind in ("ident", "qident"):
        i += 2
    name = sig[i].text.lower().strip('"')
    j = i + 1
    if j < len(sig) and (sig[i].upper, sig[j].upper) in _MULTIWORD_TYPES:
        name += " " + sig[j].text.lower()
        j += 1
    # a type modifier: varchar(20), numeric(10, 2)
    if j < len(sig) and sig[j].text == "(":
        k = j
        while k < len(sig) and sig[k].text != ")":
            k += 1
        j = k + 1
    # timestamp with(out) time zone
    if j + 2 < len(sig) and sig[j].upper in ("WITH", "WITHOUT") and sig[j + 1].upper == "TIME" and sig[j + 2].upper == "ZONE":
        j += 3
    # array brackets: int[] (the tokenizer reads "[]" as an empty quoted identifier)
    while j < len(sig) and (sig[j].text == "[]" or (j + 1 < len(sig) and sig[j].text == "[" and sig[j + 1].text == "]")):
        j += 1 if sig[j].text == "[]" else 2
    return t.CAST_NAMES.get(name), name, j


def _bool_literal(value: str) -> bool:
    low = value.strip().lower()
    if low in ("t", "true", "yes", "on", "1", "y"):
        return True
    if low in ("f", "false", "no", "off", "0", "n"):
        return False
    from sqld.errors import InvalidParameterValue

    err = InvalidParameterValue(f'invalid input syntax for type boolean: "{value[:40]}"')
    err.sqlstate = "22P02"
    raise err


def _operand_start(out: list[str], out_kinds: list[str]) -> int:
    """Where the operand just emitted to ``out`` begins (for `expr::type`)."""
    i = len(out) - 1
    if i < 0:
        return 0
    if out[i] == ")":
        depth = 0
        while i >= 0:
            if out[i] == ")":
                depth += 1
            elif out[i] == "(":
                depth -= 1
                if depth == 0:
                    # a function call: include its name
                    if i > 0 and out_kinds[i - 1] in ("ident", "qident"):
                        i -= 1
                    return i
            i -= 1
        return 0
    # a.b qualified names
    while i >= 2 and out[i - 1] == "." and out_kinds[i - 2] in ("ident", "qident"):
        i -= 2
    return i


def _rewrite(tokens: list[Token]) -> tuple[str, dict[int, int]]:
    """SQLite text for the tokens, and the cast types of placeholders cast in the SQL."""
    out: list[str] = []
    kinds: list[str] = []
    cast_hints: dict[int, int] = {}
    sig_idx = [i for i, tok in enumerate(tokens) if tok.kind not in ("ws", "comment")]
    sig = [tokens[i] for i in sig_idx]
    pos_of = {idx: n for n, idx in enumerate(sig_idx)}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.kind in ("ws", "comment"):
            if tok.kind == "comment" and tok.text.startswith("--"):
                out.append(tok.text + "\n")
            else:
                out.append(tok.text if tok.kind == "comment" else " ")
            kinds.append("ws")
            i += 1
            continue
        si = pos_of[i]
        kind = tok.kind
        if kind == "param" and tok.text[0] == "$" and tok.text[1:].isdigit():
            out.append("?" + tok.text[1:])
        elif kind in ("estring", "dollar"):
            out.append(_sqlite_string(_string_value(tok) or ""))
            kind = "string"
        else:
            out.append(tok.text)
        kinds.append(kind)
        i += 1
        # expr::type, possibly chained: expr::text::int8
        cast_at = si + 1
        first_cast = True
        while cast_at < len(sig) and sig[cast_at].kind == "cast":
            oid, name, after = _read_cast_type(sig, cast_at + 1)
            if not name:
                break
            # operand: drop the whitespace tokens we emitted, find its start
            while kinds and kinds[-1] == "ws":
                out.pop()
                kinds.pop()
            start = _operand_start(out, kinds) if first_cast else len(out) - 1
            operand = "".join(out[start:])
            del out[start:]
            del kinds[start:]
            last = sig[si]
            literal = first_cast and start == len(out) and last.kind in ("string", "estring", "dollar")
            value = _string_value(last) if literal else None
            if oid == t.BYTEA and value is not None:
                # bytea_from_text checks every digit: the literal's text never reaches SQL
                out.append("x'" + t.bytea_from_text(value).hex() + "'")
            elif oid == t.BOOL and value is not None:
                out.append("1" if _bool_literal(value) else "0")
            elif oid in _CAST_AFFINITY:
                out.append(f"CAST({operand} AS {_CAST_AFFINITY[oid]})")
            else:
                out.append(operand)  # date, json, …: SQLite keeps them as text
            kinds.append("expr")
            if first_cast and last.kind == "param" and oid is not None and start == len(out) - 1:
                n = _param_number(last.text)
                if n is not None:
                    cast_hints[n] = oid
            first_cast = False
            # skip the cast tokens in the original stream
            i = sig_idx[after - 1] + 1 if after - 1 < len(sig_idx) else len(tokens)
            cast_at = after
    return "".join(out).strip(), cast_hints


def _param_number(text: str) -> int | None:
    if text[0] in "$?" and text[1:].isdigit():
        return int(text[1:])
    return None


_COMPARISON = {"=", "==", "<>", "!=", "<", ">", "<=", ">=", "IS", "LIKE", "GLOB", "IN"}

_TWO_WORD_VERBS = {
    "CREATE", "DROP", "ALTER",
}


def _verb_words(sig: list[Token]) -> tuple[str, ...]:
    words = []
    for tok in sig[:6]:
        if tok.kind != "ident":
            break
        words.append(tok.upper)
    return tuple(words)


def _command_verb(words: tuple[str, ...], sig: list[Token]) -> str:
    if not words:
        return ""
    first = words[0]
    if first in _TWO_WORD_VERBS:
        rest = [w for w in words[1:] if w not in ("TEMP", "TEMPORARY", "UNIQUE", "VIRTUAL", "OR", "REPLACE")]
        return f"{first} {rest[0]}" if rest else first
    if first == "WITH":
        # the verb of a CTE statement is the first INSERT/UPDATE/DELETE/SELECT at depth 0
        depth = 0
        for tok in sig:
            if tok.text == "(":
                depth += 1
            elif tok.text == ")":
                depth -= 1
            elif depth == 0 and tok.kind == "ident" and tok.upper in ("SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "VALUES"):
                return tok.upper
        return "SELECT"
    if first == "END":
        return "COMMIT"
    if first == "ABORT":
        return "ROLLBACK"
    return first


def _hints(sig: list[Token], cast_hints: dict[int, int]) -> tuple[tuple[str, ...], dict[int, ParamHint]]:
    """Tables named, and per placeholder what its neighbours say of its type."""
    tables: list[str] = []
    hints: dict[int, ParamHint] = {n: ParamHint(oid=oid) for n, oid in cast_hints.items()}
    upper = [tok.upper if tok.kind == "ident" else tok.text for tok in sig]
    n = len(sig)
    next_positional = 1
    numbers: list[int | None] = []
    for tok in sig:
        if tok.kind == "param":
            num = _param_number(tok.text)
            if num is None and tok.text == "?":
                num = next_positional
            if num is not None:
                next_positional = num + 1
            numbers.append(num)
        else:
            numbers.append(None)

    def ident_at(k: int) -> str | None:
        if 0 <= k < n and sig[k].kind in ("ident", "qident"):
            return _unquote_ident(sig[k].text)
        return None

    for k, word in enumerate(upper):
        if word in ("FROM", "JOIN", "INTO", "UPDATE", "TABLE") and k + 1 < n:
            name = ident_at(k + 1)
            if name and k + 3 < n and sig[k + 2].text == ".":
                name = ident_at(k + 3)
            if name:
                tables.append(name)
    for k, num in enumerate(numbers):
        if num is None or num in hints:
            continue
        if k > 0 and upper[k - 1] in ("LIMIT", "OFFSET"):
            hints[num] = ParamHint(oid=t.INT8)
            continue
        # col op $n
        if k >= 2 and upper[k - 1] in _COMPARISON:
            col = ident_at(k - 2)
            if col:
                hints[num] = ParamHint(column=col)
                continue
        if k >= 3 and upper[k - 1] == "(" and upper[k - 2] == "IN":
            col = ident_at(k - 3)
            if col:
                hints[num] = ParamHint(column=col)
                continue
        # $n op col
        if k + 2 < n and upper[k + 1] in _COMPARISON:
            col = ident_at(k + 2)
            if col:
                hints[num] = ParamHint(column=col)
                continue
        # SET col = $n
        if k >= 2 and upper[k - 1] == "=" and ident_at(k - 2):
            hints[num] = ParamHint(column=ident_at(k - 2))
    # INSERT INTO t (a, b, c) VALUES ($1, $2, $3), (...)
    if upper and upper[0] in ("INSERT", "REPLACE"):
        try:
            open_cols = upper.index("(")
            values_at = upper.index("VALUES")
        except ValueError:
            open_cols = values_at = -1
        cols: list | None = None
        if 0 < open_cols < values_at:
            cols = [ident_at(k) for k in range(open_cols + 1, values_at) if sig[k].kind in ("ident", "qident")]
        elif values_at > 0:
            cols = None  # no column list: values go to the table's columns in order
        if values_at > 0:
            k = values_at + 1
            while k < n and upper[k] == "(":
                k += 1
                pos = 0
                depth = 0
                while k < n:
                    if upper[k] == "(":
                        depth += 1
                    elif upper[k] == ")":
                        if depth == 0:
                            break
                        depth -= 1
                    elif upper[k] == "," and depth == 0:
                        pos += 1
                    elif depth == 0 and numbers[k] is not None and (cols is None or pos < len(cols)):
                        # only a bare placeholder as the whole value
                        if upper[k - 1] in ("(", ",") and k + 1 < n and upper[k + 1] in (",", ")"):
                            hint = ParamHint(position=pos) if cols is None else ParamHint(column=cols[pos])
                            hints.setdefault(numbers[k], hint)
                    k += 1
                k += 1
                if k < n and upper[k] == ",":
                    k += 1
    return tuple(dict.fromkeys(tables)), hints


_INT_FUNCS = frozenset((
    "COUNT", "LENGTH", "OCTET_LENGTH", "INSTR", "UNICODE", "RANDOM", "CHANGES", "TOTAL_CHANGES",
    "LAST_INSERT_ROWID", "ROW_NUMBER", "RANK", "DENSE_RANK", "NTILE", "SIGN",
))
_REAL_FUNCS = frozenset(("AVG", "TOTAL", "JULIANDAY", "PI", "SQRT", "EXP", "LN", "LOG", "LOG10", "LOG2",
                         "POWER", "POW", "SIN", "COS", "TAN", "ASIN", "ACOS", "ATAN", "ATAN2", "DEGREES",
                         "RADIANS", "PERCENT_RANK", "CUME_DIST"))
_TEXT_FUNCS = frozenset((
    "LOWER", "UPPER", "SUBSTR", "SUBSTRING", "TRIM", "LTRIM", "RTRIM", "REPLACE", "HEX", "QUOTE",
    "TYPEOF", "PRINTF", "FORMAT", "GROUP_CONCAT", "STRING_AGG", "CHAR", "DATE", "TIME", "DATETIME",
    "STRFTIME", "SQLITE_VERSION", "JSON", "JSON_OBJECT", "JSON_ARRAY", "JSON_GROUP_ARRAY",
    "JSON_GROUP_OBJECT", "JSON_TYPE", "SOUNDEX", "VERSION", "CURRENT_SETTING", "UNISTR", "CONCAT",
    "CONCAT_WS",
))
_BLOB_FUNCS = frozenset(("RANDOMBLOB", "ZEROBLOB", "UNHEX", "JSONB"))
_AFFINITY_NAMES = (("INT", "INTEGER"), ("CHAR", "TEXT"), ("CLOB", "TEXT"), ("TEXT", "TEXT"),
                   ("BLOB", "BLOB"), ("REAL", "REAL"), ("FLOA", "REAL"), ("DOUB", "REAL"))


def _typed(name: str) -> ColumnHint | None:
    decl = _cast_decltype(name)
    return ColumnHint(decltype=decl) if decl else None


def _cast_decltype(name: str) -> str | None:
    up = name.upper()
    if up in ("BYTEA",):
        return "BLOB"
    if up in ("BOOL", "BOOLEAN"):
        return "BOOLEAN"
    for key, decl in _AFFINITY_NAMES:
        if key in up:
            return decl
    return None


def _item_hint(item: list[Token]) -> ColumnHint | None:
    # drop a trailing alias: "expr AS name" or "expr name"
    if len(item) >= 3 and item[-2].upper == "AS":
        item = item[:-2]
    elif len(item) >= 2 and item[-1].kind in ("ident", "qident") and (
        item[-2].kind in ("ident", "qident", "number", "string", "blob") or item[-2].text == ")"
    ):
        item = item[:-1]
    if not item:
        return None
    if len(item) >= 3 and item[-2].kind == "cast":
        return _typed(item[-1].text)
    first = item[0]
    if len(item) == 1:
        if first.kind == "number":
            is_real = any(c in first.text for c in ".eE") and not first.text.lower().startswith("0x")
            return ColumnHint(decltype="REAL" if is_real else "INTEGER")
        if first.kind in ("string", "estring", "dollar"):
            return ColumnHint(decltype="TEXT")
        if first.kind == "blob":
            return ColumnHint(decltype="BLOB")
        if first.kind == "ident" and first.upper in ("CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME"):
            return ColumnHint(decltype="TEXT")
    if first.kind == "ident" and len(item) >= 3 and item[1].text == "(" and item[-1].text == ")":
        # one function call spanning the whole item?
        depth = 0
        for k, tok in enumerate(item[1:], 1):
            if tok.text == "(":
                depth += 1
            elif tok.text == ")":
                depth -= 1
                if depth == 0 and k != len(item) - 1:
                    break
        else:
            name = first.upper
            if name == "CAST":
                as_at = [k for k, tok in enumerate(item) if tok.upper == "AS"]
                if as_at:
                    return _typed(" ".join(tok.text for tok in item[as_at[-1] + 1 : -1]))
                return None
            if name in _INT_FUNCS:
                return ColumnHint(decltype="INTEGER")
            if name in _REAL_FUNCS:
                return ColumnHint(decltype="REAL")
            if name in _TEXT_FUNCS:
                return ColumnHint(decltype="TEXT")
            if name in _BLOB_FUNCS:
                return ColumnHint(decltype="BLOB")
            return None
    if any(tok.text == "||" for tok in item):
        return ColumnHint(decltype="TEXT")
    # arithmetic over columns and numbers: its type follows from theirs
    operands: list[str] = []
    has_real = False
    for k, tok in enumerate(item):
        if tok.kind == "number":
            if any(c in tok.text for c in ".eE") and not tok.text.lower().startswith("0x"):
                has_real = True
        elif tok.kind in ("ident", "qident"):
            if k + 1 < len(item) and item[k + 1].text == ".":
                continue  # a table qualifier
            operands.append(_unquote_ident(tok.text))
        elif tok.text not in ("+", "-", "*", "/", "%", "(", ")", "."):
            return None
    if operands or has_real:
        return ColumnHint(operands=tuple(operands), has_real=has_real)
    if all(tok.kind == "number" or tok.text in ("+", "-", "*", "/", "%", "(", ")") for tok in item):
        return ColumnHint(decltype="INTEGER")
    return None


def _select_list(sig: list[Token]) -> tuple[ColumnHint | None, ...] | None:
    """Hints for each item of a plain SELECT's select list; None where a star hides positions."""
    items: list[list[Token]] = [[]]
    depth = 0
    for tok in sig[1:]:
        up = tok.upper if tok.kind == "ident" else tok.text
        if depth == 0 and up in ("FROM", "WHERE", "GROUP", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT", "WINDOW", "HAVING"):
            break
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        if depth == 0 and tok.text == ",":
            items.append([])
            continue
        items[-1].append(tok)
    if items and items[0] and items[0][0].upper in ("DISTINCT", "ALL"):
        items[0] = items[0][1:]
    if any(tok.text == "*" and (len(item) == 1 or item[-2].text == ".") for item in items for tok in item[-1:]):
        return None
    return tuple(_item_hint(item) for item in items)


def _count_params(sig: list[Token]) -> int:
    count = 0
    positional = 0
    named: set[str] = set()
    for tok in sig:
        if tok.kind != "param":
            continue
        num = _param_number(tok.text)
        if num is not None:
            positional = num
            count = max(count, num)
        elif tok.text == "?":
            positional += 1
            count = max(count, positional)
        elif tok.text not in named:
            named.add(tok.text)
            positional += 1
            count = max(count, positional)
    return count


# Token kinds the rewrite changes: casts, E'' and $$ strings ($n placeholders are "param").
_REWRITTEN = frozenset(("cast", "estring", "dollar"))


def _make_statement(tokens: list[Token]) -> Statement:
    sig = _significant(tokens)
    if not sig:
        return Statement(sql="", verb="", words=(), param_count=0)
    if any(tok.kind in _REWRITTEN or (tok.kind == "param" and tok.text[0] == "$") for tok in sig):
        sql, cast_hints = _rewrite(tokens)
    else:  # nothing PostgreSQL-only in it: the text goes to SQLite as it came
        sql, cast_hints = "".join(tok.text for tok in tokens).strip(), {}
    words = _verb_words(sig)
    return Statement(
        sql=sql,
        verb=_command_verb(words, sig),
        words=words,
        param_count=_count_params(sig),
        sig=tuple(sig),
        cast_hints=cast_hints,
    )


CACHED_TEXT = 8192  # longer texts (bulk inserts with literal values) are not kept in the cache


def parse(sql: str) -> tuple[Statement, ...]:
    """The statements of one query string, in order; empty statements dropped.

    A CREATE TRIGGER body keeps its inner semicolons (its BEGIN … END is tracked).
    """
    if len(sql) <= CACHED_TEXT:
        return _parse_cached(sql)
    return _parse(sql)


@lru_cache(maxsize=2048)
def _parse_cached(sql: str) -> tuple[Statement, ...]:
    return _parse(sql)


def _parse(sql: str) -> tuple[Statement, ...]:
    tokens = tokenize(sql)
    statements: list[Statement] = []
    current: list[Token] = []
    in_trigger = False
    depth = 0  # BEGIN/CASE … END nesting inside a trigger body
    first_words: list[str] = []
    for tok in tokens:
        if tok.kind == "semi" and not (in_trigger and depth > 0):
            stmt = _make_statement(current)
            if not stmt.is_empty:
                statements.append(stmt)
            current = []
            in_trigger = False
            depth = 0
            first_words = []
            continue
        current.append(tok)
        if tok.kind == "ident":
            up = tok.upper
            if len(first_words) < 4:
                first_words.append(up)
                if first_words[0] == "CREATE" and up == "TRIGGER":
                    in_trigger = True
            if in_trigger:
                if up in ("BEGIN", "CASE"):
                    depth += 1
                elif up == "END":
                    depth -= 1
    stmt = _make_statement(current)
    if not stmt.is_empty:
        statements.append(stmt)
    return tuple(statements)


def parse_one(sql: str) -> Statement:
    """The single statement of an extended-protocol Parse (PostgreSQL allows only one)."""
    stmts = parse(sql)
    if not stmts:
        return Statement(sql="", verb="", words=(), param_count=0)
    if len(stmts) > 1:
        from sqld.errors import SyntaxError_

        raise SyntaxError_("cannot insert multiple commands into a prepared statement")
    return stmts[0]
