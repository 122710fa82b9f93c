"""The reflog (``/.cvmfsreflog``): the SQLite list of root catalogs and auxiliary objects."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pycvmfs.errors import FormatError
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, new_hasher
from pycvmfs.format.sqlite import create_database, open_database, read_properties

__all__ = ["DDL", "KIND_CODES", "SCHEMA", "SCHEMA_REVISION", "TABLES", "RefEntry", "Reflog",
           "reflog_hash"]

SCHEMA = "1.0"
SCHEMA_REVISION = 0

#: The ``type`` column: which object kinds the reflog records, and their codes.
KIND_CODES: dict[ObjectKind, int] = {
    ObjectKind.CATALOG: 0,
    ObjectKind.CERTIFICATE: 1,
    ObjectKind.HISTORY: 2,
    ObjectKind.METAINFO: 3,
}
_KINDS_BY_CODE = {code: kind for kind, code in KIND_CODES.items()}

#: The table definitions in creation order, as SQLite keeps them in ``sqlite_master``.
DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE refs (hash TEXT, type INTEGER, timestamp INTEGER, "
    "CONSTRAINT pk_refs PRIMARY KEY (hash))",
)
#: The tables a reflog may have; other schema objects are refused on open.
TABLES = ("properties", "refs")

_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class RefEntry:
    """One reflog row: an object's hash (no suffix in the file), its kind and insertion time."""

    hash: ContentHash
    kind: ObjectKind
    timestamp: int


def _code(kind: ObjectKind) -> int:
    try:
        return KIND_CODES[kind]
    except KeyError:
        raise ValueError(f"the reflog does not record {kind.label}s") from None


def reflog_hash(source: str | os.PathLike | bytes | bytearray | memoryview,
                algorithm: Algorithm = Algorithm.SHA1) -> ContentHash:
    """Hash of the raw reflog file (manifest key ``Y``), from a path or the file's bytes."""
    hasher = new_hasher(algorithm)
    if isinstance(source, bytes | bytearray | memoryview):
        hasher.update(source)
    else:
        with open(source, "rb") as f:
            while block := f.read(_BLOCK):
                hasher.update(block)
    return ContentHash(algorithm, hasher.digest())


class Reflog:
    """A reflog database file. Obtain one with :meth:`open` or :meth:`create`.

    Every change is committed before the method returns and the file stays in rollback-journal
    mode; after :meth:`close` it is complete on disk and can be uploaded (uncompressed).
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, what: str, writable: bool) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self.what = what
        self.writable = writable
        props = read_properties(conn, what=what)
        try:
            schema = float(props.get("schema", SCHEMA))
            revision = int(props.get("schema_revision", "0"))
        except ValueError:
            raise FormatError(f"{what}: unreadable schema properties") from None
        if abs(schema - 1.0) > 1e-4 or revision != SCHEMA_REVISION:
            raise FormatError(f"{what}: unsupported reflog schema {schema} "
                              f"revision {revision} (expected {SCHEMA} revision 0)")
        if "fqrn" not in props:
            raise FormatError(f"{what}: the reflog has no fqrn property")
        self.fqrn: str = props["fqrn"]

    @classmethod
    def open(cls, path: str | os.PathLike, *, what: str = "reflog",
             writable: bool = False) -> Reflog:
        """Open an existing reflog file (read-only unless ``writable``)."""
        conn = open_database(path, what=what, writable=writable, tables=TABLES)
        try:
            if writable:
                conn.execute("PRAGMA journal_mode = DELETE")
            return cls(conn, Path(path), what=what, writable=writable)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise FormatError(f"{what}: cannot open the reflog ({e})") from None
        except BaseException:
            conn.close()
            raise

    @classmethod
    def create(cls, path: str | os.PathLike, fqrn: str, *, what: str = "reflog") -> Reflog:
        """Create an empty, writable reflog with exactly the stock schema."""
        conn = create_database(path, what=what)
        try:
            conn.execute("BEGIN")
            for statement in DDL:
                conn.execute(statement)
            for key, value in (("schema", SCHEMA), ("schema_revision", str(SCHEMA_REVISION)),
                               ("fqrn", fqrn)):
                conn.execute("INSERT INTO properties (key, value) VALUES (?, ?)", (key, value))
            conn.execute("COMMIT")
            return cls(conn, Path(path), what=what, writable=True)
        except BaseException:
            conn.close()
            Path(path).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Commit anything pending and close the file (idempotent)."""
        if self._conn is None:
            return
        try:
            if self._conn.in_transaction:
                self._conn.execute("COMMIT")
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Reflog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------
    def entries(self) -> list[RefEntry]:
        """All rows, oldest first (by timestamp, then row order)."""
        return [self._entry(row) for row in
                self._query("SELECT hash, type, timestamp FROM refs ORDER BY timestamp, rowid")]

    def contains(self, h: ContentHash, kind: ObjectKind) -> bool:
        rows = self._query("SELECT 1 FROM refs WHERE hash = ? AND type = ? LIMIT 1",
                           (str(h), _code(kind)))
        return bool(rows)

    def timestamp(self, h: ContentHash, kind: ObjectKind) -> int | None:
        """When ``h`` was (last) added, or ``None`` if it is not listed."""
        rows = self._query("SELECT timestamp FROM refs WHERE hash = ? AND type = ? LIMIT 1",
                           (str(h), _code(kind)))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM refs")[0][0])

    # -- writing -------------------------------------------------------------------------------
    def add(self, h: ContentHash, kind: ObjectKind, timestamp: int | None = None) -> None:
        """Record an object (``INSERT OR REPLACE``: re-adding refreshes its timestamp).
        ``timestamp`` defaults to now."""
        conn = self._writable()
        when = int(time.time()) if timestamp is None else int(timestamp)
        conn.execute("INSERT OR REPLACE INTO refs (hash, type, timestamp) VALUES (?, ?, ?)",
                     (str(h), _code(kind), when))

    def remove(self, h: ContentHash, kind: ObjectKind | None = None) -> bool:
        """Delete the row of ``h`` (only if it has ``kind``, when given); whether it existed."""
        conn = self._writable()
        if kind is None:
            cur = conn.execute("DELETE FROM refs WHERE hash = ?", (str(h),))
        else:
            cur = conn.execute("DELETE FROM refs WHERE hash = ? AND type = ?",
                               (str(h), _code(kind)))
        return cur.rowcount > 0

    # -- internals -----------------------------------------------------------------------------
    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if self._conn is None:
            raise ValueError(f"{self.what}: the reflog is closed")
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise FormatError(f"{self.what}: cannot read table refs ({e})") from None

    def _writable(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"{self.what}: the reflog is closed")
        if not self.writable:
            raise ValueError(f"{self.what}: the reflog is open read-only")
        return self._conn

    def _entry(self, row: tuple) -> RefEntry:
        text, code, timestamp = row
        where = f"{self.what}: entry {text!r}"
        if isinstance(text, bytes):
            text = text.decode("ascii", "replace")
        kind = _KINDS_BY_CODE.get(code) if isinstance(code, int) else None
        if kind is None:
            raise FormatError(f"{where}: unknown reference type {code!r}")
        try:
            when = int(timestamp)
        except (TypeError, ValueError):
            raise FormatError(f"{where}: timestamp {timestamp!r} is not an integer") from None
        return RefEntry(ContentHash.parse(str(text), what=where), kind, when)
