"""psql's catalog queries (\\d, \\dt, \\dv, \\di, \\d NAME), answered from sqlite_schema.

psql asks PostgreSQL's catalogs (pg_class, pg_attribute…) in SQL SQLite cannot run. This
recognises psql's queries by their shape: the relation listing (its columns from the
``as "Alias"`` list, the kinds from ``c.relkind IN (…)``, the name pattern from
``OPERATOR(pg_catalog.~) '^(…)$'``), and for ``\\d NAME`` the relation lookup, its flags
and its columns. A relation's oid is 16384 plus its rowid in sqlite_schema. Any other
query on ``pg_catalog.pg_*`` (psql's footers: inheritance, publications, statistics…) is
answered with no rows.
"""

from __future__ import annotations

import re

from sqld.backends.base import Column
from sqld.pgwire import types as t
from sqld.services.base import Execute, StaticCursor
from sqld.sqltext import Statement, parse_one

_ALIAS = re.compile(r'\bas\s+"([^"]+)"', re.IGNORECASE)
_KINDS = re.compile(r"c\.relkind\s+IN\s*\(([^)]*)\)", re.IGNORECASE)
_PATTERN = re.compile(r"c\.relname\s+OPERATOR\(pg_catalog\.~\)\s+'((?:[^']|'')*)'", re.IGNORECASE)
_SQLITE_KIND = {"table": "r", "view": "v", "index": "i"}
_TYPE_NAME = {"r": "table", "v": "view", "i": "index"}
_SCHEMA = parse_one("select type, name, tbl_name from sqlite_schema where name not like 'sqlite_%' order by name")
_OBJECTS = parse_one("select rowid + 16384, type, name, tbl_name from sqlite_schema where name not like 'sqlite_%'")
_OID = re.compile(r"(?:c\.oid|a\.attrelid)\s*=\s*'(\d+)'")
FIRST_OID = 16384


def is_catalog(stmt: Statement) -> bool:
    return stmt.verb == "SELECT" and "pg_catalog.pg_" in stmt.sql


async def _rows(inner, stmt: Statement, params=()) -> list[tuple]:
    cur = await inner(Execute(stmt, params))
    rows = list(cur.rows)
    while not cur.done:
        await cur.fetch(256)
        rows += cur.rows
    await cur.close()
    return rows


def _text(cols: list[str]) -> tuple[Column, ...]:
    return tuple(Column(c, oid=t.TEXT) for c in cols)


async def answer_any(stmt: Statement, inner, user: str) -> StaticCursor:
    """Answer a catalog query psql sends (see the module docstring)."""
    sql = stmt.sql
    if is_listing(stmt):
        return await answer(stmt, inner, user)
    head = " ".join(sql.split()[:8])
    if head.startswith("SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c"):
        pattern_m = _PATTERN.search(sql)
        pattern = re.compile(pattern_m.group(1).replace("''", "'")) if pattern_m else None
        rows = [(str(oid), "main", name) for oid, kind, name, _ in await _rows(inner, _OBJECTS)
                if kind in _SQLITE_KIND and (pattern is None or pattern.search(name))]
        rows.sort(key=lambda r: r[2])
        return StaticCursor(_text(["oid", "nspname", "relname"]), rows, "SELECT")
    oid_m = _OID.search(sql)
    obj = None
    if oid_m:
        for oid, kind, name, table in await _rows(inner, _OBJECTS):
            if oid == int(oid_m.group(1)):
                obj = (kind, name, table)
    if head.startswith("SELECT c.relchecks, c.relkind, c.relhasindex") and obj:
        kind = _SQLITE_KIND.get(obj[0], "r")
        # no checks, indexes, rules, triggers or row security shown: psql then asks for none of them
        row = ("0", kind, "f", "f", "f", "f", "f", "f", "f", "", "0", "", "p", "d", "heap" if kind == "r" else None)
        names = ["relchecks", "relkind", "relhasindex", "relhasrules", "relhastriggers", "relrowsecurity",
                 "relforcerowsecurity", "relhasoids", "relispartition", "reloptions", "reltablespace",
                 "reloftype", "relpersistence", "relreplident", "amname"]
        return StaticCursor(_text(names), [row], "SELECT")
    if "FROM pg_catalog.pg_attribute a" in sql and obj:
        info = await _rows(inner, parse_one("select name, type, \"notnull\", dflt_value, pk from pragma_table_info(?1)"),
                           (obj[1],))
        aliases = _ALIAS.findall(sql)
        rows = []
        for name, decltype, notnull, default, pk in info:
            rowid_alias = pk == 1 and (decltype or "").upper() == "INTEGER"  # never NULL
            values = [name, (decltype or "").lower(), default, "t" if notnull or rowid_alias else "f", None, "", ""]
            rows.append(tuple(values))
        width = len(rows[0]) if rows else 7
        names = (["attname", "format_type", "pg_get_expr", "attnotnull", "attcollation", "attidentity",
                  "attgenerated"] + aliases)[:width]
        return StaticCursor(_text(names), rows, "SELECT")
    return StaticCursor(_text(_ALIAS.findall(sql) or ["?column?"]), [], "SELECT")


def is_listing(stmt: Statement) -> bool:
    sql = stmt.sql
    return stmt.verb == "SELECT" and "pg_catalog.pg_class c" in sql and 'as "Name"' in sql \
        and "c.relkind" in sql


def columns(stmt: Statement) -> tuple[Column, ...]:
    """The listing's columns: the aliases psql asks for, all text."""
    return tuple(Column(a, oid=t.TEXT) for a in _ALIAS.findall(stmt.sql))


async def answer(stmt: Statement, inner, user: str) -> StaticCursor:
    sql = stmt.sql
    aliases = [c.name for c in columns(stmt)]
    kinds_m = _KINDS.search(sql)
    kinds = set(re.findall(r"'(\w)'", kinds_m.group(1))) if kinds_m else {"r", "v", "i"}
    pattern_m = _PATTERN.search(sql)
    pattern = re.compile(pattern_m.group(1).replace("''", "'")) if pattern_m else None
    rows = await _rows(inner, _SCHEMA)
    out = []
    for kind_name, name, table in rows:
        kind = _SQLITE_KIND.get(kind_name)
        if kind not in kinds or (pattern and not pattern.search(name)):
            continue
        values = {
            "Schema": "main", "Name": name, "Type": _TYPE_NAME[kind], "Owner": user,
            "Table": table if kind == "i" else None, "Persistence": "permanent",
            "Access method": None, "Size": None, "Description": None,
        }
        out.append(tuple(values.get(a) for a in aliases))
    return StaticCursor(columns(stmt), out, "SELECT")
