"""Prepared statements, portals, and the types of their results.

SQLite types values, not columns: a result column's PostgreSQL type is its declared type
(``Column.oid`` or the decltype's), else the type of its first non-NULL value, else text.
Here that choice is made once per prepared statement where the declared types decide (its
RowDescription and encoders cached per result formats), or from the first rows of a run
where they do not (``ensure_types``). ``PgConnection`` asks; nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

import attrs

from sqld.backends.base import Column
from sqld.errors import ProtocolViolation, SqldError
from sqld.pgwire import extension as ext
from sqld.pgwire import messages as m
from sqld.pgwire import types as t
from sqld.sqltext import Statement


def declared_oids(cols) -> list:
    """Each column's declared type (None where SQLite declares none: the values decide)."""
    return [c.oid or t.oid_for_decltype(c.decltype) for c in cols]


@attrs.define(eq=False)
class PreparedStatement:
    statement: Statement
    param_types: tuple[int, ...]
    columns: tuple[Column, ...] | None = None  # from Describe at Parse; None: no rows
    row_oids: tuple[int, ...] | None = None    # fixed once the client saw a RowDescription
    encoders: dict = attrs.Factory(dict)       # result formats → encoders (with row_oids)
    descriptions: dict = attrs.Factory(dict)   # result formats → encoded RowDescription
    described: Any = None                      # the Describe answer the above came from
    schema: int = 0                            # the schema clock when it was described

    def refresh(self, described) -> None:
        """The schema changed since Parse: take the statement's columns anew, as SQLite
        re-prepares a statement whose schema changed (PostgreSQL would refuse it)."""
        self.described = described
        self.columns = described.info.columns or None
        self.row_oids = None
        self.encoders.clear()
        self.descriptions.clear()


def value_oids(oids: list, rows) -> tuple:
    """Result column types: the declared one (``oids``, None where there is none), else the
    type of the column's first non-NULL value in ``rows``, else text."""
    if None in oids:
        oids = list(oids)
        for i, oid in enumerate(oids):
            if oid is None:
                found = None
                for row in rows:
                    if row[i] is not None:
                        found = t.oid_for_value(row[i])
                        break
                oids[i] = found or t.TEXT
    return tuple(oids)


def statement_size(ps: PreparedStatement) -> int:
    return len(ps.statement.sql)


def portal_size(portal: Portal) -> int:
    return sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in portal.params)


@attrs.define(eq=False)
class Portal:
    prepared: PreparedStatement
    params: tuple[Any, ...]
    result_formats: tuple[int, ...]
    cursor: Any = None
    oids: tuple[int, ...] | None = None
    encoders: list | None = None
    pending: list = attrs.Factory(list)  # fetched rows not yet sent
    complete: bool = False


async def statement_oids(ps: PreparedStatement, peek) -> tuple[int, ...]:
    """The column types Describe of a statement announces: declared, else those of the
    first row ``peek()`` (a coroutine) finds, else text."""
    oids = declared_oids(ps.columns)
    if None in oids:
        row = await peek()
        for i, oid in enumerate(oids):
            if oid is None:
                oids[i] = (t.oid_for_value(row[i]) if row is not None and i < len(row) else None) or t.TEXT
    return tuple(oids)


async def ensure_types(portal: Portal, extension: bool, start) -> None:
    """Fix the portal's column types and encoders; run it first (``start(portal)``, a
    coroutine) if its values decide."""
    if portal.oids is not None:
        return
    ps = portal.prepared
    if ps.row_oids is None and ps.columns:
        declared = declared_oids(ps.columns)
        if None not in declared:
            ps.row_oids = tuple(declared)  # declared types: the same for every execution
    if ps.row_oids is not None:
        oids = ps.row_oids
        cached = ps.encoders.get(portal.result_formats)
        if cached is None:
            cached = ps.encoders[portal.result_formats] = encoders(oids, portal.result_formats, extension)
        portal.oids = oids
        portal.encoders = cached
        return
    cols = ps.columns
    declared = declared_oids(cols) if cols else []
    if portal.cursor is None and (cols is None or None in declared):
        await start(portal)
    cur = portal.cursor
    if cur is not None:
        cols = cur.columns
        if cols is None:
            portal.oids = ()
            return
        declared = declared_oids(cols)
    oids = value_oids(declared, portal.pending)
    portal.oids = oids
    portal.encoders = encoders(oids, portal.result_formats, extension)


def encoders(oids, formats, extension: bool) -> list:
    """The value encoders for result ``formats`` (Bind's: none, one for all, or one each)."""
    n = len(oids)
    for f in formats:
        if not 0 <= f <= 2:  # 2: sqld's typed format, for clients that negotiated it
            raise SqldError(f"unsupported format code: {f}", sqlstate="22023")
    if t.TYPED_FORMAT in formats and not extension:
        raise ProtocolViolation("result format 2 is sqld's extension, which this session did not ask for",
                                severity="ERROR")
    if len(formats) not in (0, 1, n):
        raise ProtocolViolation(f"bind message has {len(formats)} result formats but query has {n} columns",
                                severity="ERROR")
    return [t.encoder(oid, formats[i] if len(formats) > 1 else (formats[0] if formats else 0))
            for i, oid in enumerate(oids)]


def row_description(cols, oids, formats, extension: bool) -> bytes:
    """The encoded RowDescription (after the extension's declared types, when it is on)."""
    fields = []
    for i, (col, oid) in enumerate(zip(cols, oids)):
        fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
        fields.append(m.Field(col.name, oid, t.TYPE_SIZES.get(oid, -1), fmt))
    desc = m.RowDescription(tuple(fields)).encode()
    if extension:
        # The extension tells the columns' declared types first (sqlite3's PARSE_DECLTYPES).
        decltypes = ext.encode_decltypes(c.decltype for c in cols)
        return m.ParameterStatus(ext.DECLTYPES, decltypes).encode() + desc
    return desc


def row_check(portal: Portal, extension: bool):
    """Execute.check: would every row a write returns go out as its column's type (the
    type ensure_types will announce)? Raises the error sending it would (22000)."""
    preset = portal.oids if portal.oids is not None else portal.prepared.row_oids
    formats = portal.result_formats

    def check(cols, rows) -> None:
        oids = preset if preset is not None else value_oids(declared_oids(cols), rows)
        if len(oids) != len(cols):
            return  # answered 0A000 (the plan changed) before any row is sent
        encode = encoders(oids, formats, extension)
        for row in rows:
            for v, enc in zip(row, encode):
                if v is not None:
                    enc(v)
    return check
