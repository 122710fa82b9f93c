"""Opening and creating the SQLite files of the format (catalogs, history, reflog) the stock way."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Collection
from pathlib import Path
from urllib.parse import quote

from pycvmfs.errors import FormatError

__all__ = ["PAGE_SIZE", "check_schema_objects", "column_text", "create_database",
           "open_database", "read_properties"]

#: The stock tools build SQLite with this default page size; our files use it too.
PAGE_SIZE = 1024

# An index on plain columns of one table: no expression, no collation, no WHERE (partial index).
_PLAIN_INDEX = re.compile(r"\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?"
                          r"\w+\s+ON\s+\w+\s*\(\s*\w+(?:\s+(?:ASC|DESC))?"
                          r"(?:\s*,\s*\w+(?:\s+(?:ASC|DESC))?)*\s*\)\s*", re.IGNORECASE)


def open_database(path: str | os.PathLike, *, what: str, text_as_bytes: bool = False,
                  writable: bool = False, tables: Collection[str] | None = None,
                  error: type[FormatError] = FormatError) -> sqlite3.Connection:
    """Open an existing database file; a file that is not SQLite raises ``error``.

    Read-only opens use ``immutable=1``: SQLite then takes no locks and never looks for a journal,
    as the stock client's VFS does. ``text_as_bytes`` returns TEXT columns as ``bytes``
    (names in catalogs are raw bytes, not necessarily UTF-8). Every connection runs with
    ``trusted_schema=OFF``; with ``tables`` (the format's table names) the schema objects are
    checked by :func:`check_schema_objects` before anything else reads the file.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{what}: {p} is not a file")
    if writable:
        uri = f"file:{quote(str(p.resolve()))}?mode=rw"
    else:
        uri = f"file:{quote(str(p.resolve()))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    except sqlite3.DatabaseError as e:
        raise error(f"{what}: cannot open {p} ({e})") from None
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        if text_as_bytes:
            conn.text_factory = bytes
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if tables is not None:
            check_schema_objects(conn, what=what, tables=tables, error=error)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        conn.close()
        raise error(f"{what}: not a valid SQLite database ({e})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def column_text(value: object) -> str:
    """A column value as text, whatever the connection's text factory (names in
    ``sqlite_master``, ``PRAGMA`` answers)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def check_schema_objects(conn: sqlite3.Connection, *, what: str, tables: Collection[str],
                         error: type[FormatError] = FormatError) -> None:
    """Refuse schema objects the format does not have: views, triggers, virtual tables, tables
    it does not name, generated columns, indexes on expressions or partial indexes. SQLite
    would run their SQL while we read, so a hostile file must not get that far."""
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    found = []
    for kind, name, table, sql in rows:
        kind, name, table = column_text(kind), column_text(name), column_text(table)
        sql = None if sql is None else column_text(sql)
        if kind == "table":
            found.append(name)
            if name not in tables and not name.startswith("sqlite_stat"):
                raise error(f"{what}: table {name!r} is not part of the format")
            if sql is not None and not sql.lstrip().upper().startswith("CREATE TABLE"):
                raise error(f"{what}: table {name!r} is not a plain table ({sql[:60]!r})")
        elif kind == "index":
            if table not in tables:
                raise error(f"{what}: index {name!r} on table {table!r}, which is not part "
                            "of the format")
            if sql is not None and not _PLAIN_INDEX.fullmatch(sql):
                raise error(f"{what}: index {name!r} is not an index on plain columns "
                            f"({sql[:60]!r})")
        else:
            raise error(f"{what}: {kind} {name!r} is not part of the format (no {kind}s)")
    for name in found:
        for column, hidden in conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?)",
                                           (name,)):
            if hidden:
                raise error(f"{what}: table {name!r} has a generated or hidden column "
                            f"{column_text(column)!r}")


def create_database(path: str | os.PathLike, *, what: str) -> sqlite3.Connection:
    """Create a new, empty database with the stock header settings (page size 1024, rollback
    journal). The caller runs the DDL and commits."""
    p = Path(path)
    if p.exists():
        raise FormatError(f"{what}: {p} exists already")
    conn = sqlite3.connect(str(p), check_same_thread=False, isolation_level=None)
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode = DELETE")
    return conn


def read_properties(conn: sqlite3.Connection, *, what: str, table: str = "properties",
                    error: type[FormatError] = FormatError) -> dict[str, str]:
    """The ``key -> value`` rows of a properties table, as text (unreadable: ``error``)."""
    try:
        rows = conn.execute(f"SELECT key, value FROM {table}").fetchall()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        raise error(f"{what}: cannot read table {table} ({e})") from None
    out: dict[str, str] = {}
    for k, v in rows:
        if isinstance(k, bytes):
            k = k.decode("utf-8", "surrogateescape")
        if isinstance(v, bytes):
            v = v.decode("utf-8", "surrogateescape")
        out[str(k)] = "" if v is None else str(v)
    return out
