"""psql's relation listings (\\d, \\dt, \\dv, \\di and their + forms), answered from sqlite_schema.

psql asks PostgreSQL's catalogs (pg_class, pg_namespace…) in SQL SQLite cannot run. This
recognises psql's listing query by its shape, takes the columns it asks for from its
``as "Alias"`` list, the relation kinds from ``c.relkind IN (…)`` and the name pattern
from ``OPERATOR(pg_catalog.~) '^(…)$'``, and answers them. Describing one relation
(``\\d name``) is not answered yet.
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
    cur = await inner(Execute(_SCHEMA))
    rows = list(cur.rows)
    while not cur.done:
        await cur.fetch(256)
        rows += cur.rows
    await cur.close()
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
