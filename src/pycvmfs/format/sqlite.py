"""Opening and creating the SQLite files of the format (catalogs, history, reflog) the stock way."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import quote

from pycvmfs.errors import FormatError

__all__ = ["PAGE_SIZE", "create_database", "open_database", "read_properties"]

#: The stock tools build SQLite with this default page size; our files use it too.
PAGE_SIZE = 1024


def open_database(path: str | os.PathLike, *, what: str, text_as_bytes: bool = False,
                  writable: bool = False) -> sqlite3.Connection:
    """Open an existing database file; a file that is not SQLite raises :class:`FormatError`.

    Read-only opens use ``immutable=1``: SQLite then takes no locks and never looks for a journal,
    as the stock client's VFS does. ``text_as_bytes`` returns TEXT columns as ``bytes``
    (names in catalogs are raw bytes, not necessarily UTF-8).
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(f"{what}: {p} is not a file")
    if writable:
        uri = f"file:{quote(str(p.resolve()))}?mode=rw"
    else:
        uri = f"file:{quote(str(p.resolve()))}?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        if text_as_bytes:
            conn.text_factory = bytes
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
        raise FormatError(f"{what}: not a valid SQLite database ({e})") from None
    return conn


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


def read_properties(conn: sqlite3.Connection, *, what: str,
                    table: str = "properties") -> dict[str, str]:
    """The ``key -> value`` rows of a properties table, as text."""
    try:
        rows = conn.execute(f"SELECT key, value FROM {table}").fetchall()
    except sqlite3.DatabaseError as e:
        raise FormatError(f"{what}: cannot read table {table} ({e})") from None
    out: dict[str, str] = {}
    for k, v in rows:
        if isinstance(k, bytes):
            k = k.decode("utf-8", "surrogateescape")
        if isinstance(v, bytes):
            v = v.decode("utf-8", "surrogateescape")
        out[str(k)] = "" if v is None else str(v)
    return out
