"""Reading the SQLite file catalog: entries by path hash, listings, chunks, nested catalogs."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Generator, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pycvmfs.errors import CatalogError, FormatError
from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import DirectoryEntry, Flags, split_hardlinks
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind, md5_pair
from pycvmfs.format.sqlite import column_text, open_database, read_properties

__all__ = ["CATALOG_TABLES", "COUNTER_NAMES", "Catalog", "Chunk", "NestedRef",
           "covering_mountpoint", "is_path_component", "parent_path", "run_tree_steps"]

#: The tables a catalog may have (format doc §4.2); anything else in sqlite_master is refused.
CATALOG_TABLES = ("properties", "catalog", "chunks", "nested_catalogs", "bind_mountpoints",
                  "statistics")

#: The 24 statistics counters every schema-2.5 catalog carries (format doc §4.14).
COUNTER_FIELDS = ("regular", "symlink", "special", "dir", "nested", "chunked", "chunks",
                  "file_size", "chunked_size", "xattr", "external", "external_file_size")
COUNTER_NAMES = tuple(f"{scope}_{f}" for scope in ("self", "subtree") for f in COUNTER_FIELDS)

_ENTRY_COLUMNS = ("md5path_1", "md5path_2", "parent_1", "parent_2", "hardlinks", "hash", "size",
                  "mode", "mtime", "mtimens", "flags", "name", "symlink", "uid", "gid", "xattr")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a chunked file: uncompressed offset and size, and its object hash."""

    offset: int
    size: int
    hash: ContentHash


@dataclass(frozen=True, slots=True)
class NestedRef:
    """A row of ``nested_catalogs`` (or ``bind_mountpoints``): where a child catalog is mounted."""

    path: bytes
    hash: ContentHash | None
    size: int


def parent_path(path: bytes) -> bytes:
    """Everything before the last ``/``; the root's children have parent ``b""``."""
    return path[:path.rfind(b"/")] if b"/" in path else b""


def covering_mountpoint(path: bytes, mountpoints: Collection[bytes], *,
                        include_self: bool = True) -> bytes | None:
    """The mount point in ``mountpoints`` that is ``path`` or contains it (the deepest one).
    With few mount points (or fewer than ``path`` has ancestors) each is tested, else the
    ancestors are looked up: O(min(depth, mount points)), so neither many nested catalogs nor
    paths thousands of levels deep make it slow."""
    if not mountpoints:
        return None
    if len(mountpoints) <= 64 or len(mountpoints) < path.count(b"/"):
        best = None
        for mp in mountpoints:
            n = len(mp)
            if (path.startswith(mp) and (path[n:n + 1] == b"/" or (include_self and n == len(path)))
                    and (best is None or n > len(best))):
                best = mp
        return best
    p = path if include_self else parent_path(path)
    while p:
        if p in mountpoints:
            return p
        p = parent_path(p)
    return None


def run_tree_steps(top: Generator[Any, Any, Any]) -> Any:
    """Run a catalog tree walk written as generators, without recursion: a step that needs a
    nested catalog handled first yields that catalog's generator and gets its result (or its
    exception, raised at the ``yield``) back. Nesting as deep as paths allow never meets
    Python's recursion limit, and the order is that of the recursive walk. Returns the result
    of ``top``."""
    stack, answer, error = [top], None, None
    while True:
        try:
            request = stack[-1].send(answer) if error is None else stack[-1].throw(error)
        except StopIteration as finished:
            stack.pop()
            if not stack:
                return finished.value
            answer, error = finished.value, None
            continue
        except BaseException as e:
            stack.pop()
            if not stack:
                raise
            answer, error = None, e
            continue
        stack.append(request)
        answer, error = None, None


def _fs(b: bytes) -> str:
    return os.fsdecode(b)


_DOTS = frozenset((b"", b".", b".."))


def is_path_component(name: bytes) -> bool:
    """Whether ``name`` is one path component: not empty, not ``.``/``..``, no ``/``, no NUL."""
    return name not in _DOTS and b"/" not in name and b"\0" not in name


def _is_canonical_below(path: bytes, top: bytes) -> bool:
    """Whether ``path`` is ``top`` plus one or more path components (``/a/b`` below ``/a``)."""
    if not path.startswith(top + b"/"):
        return False
    return all(is_path_component(c) for c in path[len(top) + 1:].split(b"/"))


class _EntryWhere:
    """``<catalog>: entry '<name>'`` for messages, formatted only if one is raised (the
    reader makes one per row it reads)."""

    __slots__ = ("name", "what")

    def __init__(self, what: str, name: bytes) -> None:
        self.what = what
        self.name = name

    def __str__(self) -> str:
        return f"{self.what}: entry {_fs(self.name)!r}"


def _int(value: object, what: object, column: str, default: int | None = None) -> int:
    """An INTEGER column's value; anything else (REAL, TEXT, BLOB, NULL) is malformed."""
    if type(value) is int:
        return value
    if value is None and default is not None:
        return default
    raise CatalogError(f"{what}: column {column} holds {type(value).__name__} {value!r:.40}, "
                      "not an integer")


class Catalog:
    """A read-only view of one decompressed catalog file.

    Paths are raw bytes relative to the repository root: ``b""`` is the root, every other path
    starts with ``/`` and has no trailing slash.
    """

    def __init__(self, conn: sqlite3.Connection, *, what: str,
                 hash: ContentHash | None = None) -> None:
        self._db = conn
        self.what = what
        self.hash = hash
        self.properties = read_properties(conn, what=what, error=CatalogError)
        self._check_schema()
        cols = {column_text(r[1]) for r in conn.execute("PRAGMA table_info(catalog)")}
        if not cols:
            raise CatalogError(f"{what}: no catalog table")
        exprs = [c if c in cols else "NULL" for c in _ENTRY_COLUMNS]
        if "hardlinks" not in cols and "inode" in cols:  # schema < 2.1
            exprs[_ENTRY_COLUMNS.index("hardlinks")] = "1"
        self._select = "SELECT rowid, " + ", ".join(exprs) + " FROM catalog "
        self._nested: list[NestedRef] | None = None
        self._nested_by_path: dict[bytes, NestedRef] | None = None
        self._tables = {column_text(r[0])
                        for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    @classmethod
    def open(cls, path: str | os.PathLike, *, what: str,
             hash: ContentHash | None = None) -> Catalog:
        """Open a decompressed catalog file read-only, refusing schema objects the format does
        not have (views, triggers...); anything unreadable raises :class:`CatalogError`."""
        conn = open_database(path, what=what, text_as_bytes=True, tables=CATALOG_TABLES,
                             error=CatalogError)
        try:
            return cls(conn, what=what, hash=hash)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            conn.close()
            raise CatalogError(f"{what}: unreadable catalog ({e})") from None
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- properties ----------------------------------------------------------------------
    def _check_schema(self) -> None:
        raw = self.properties.get("schema", "1.0")
        try:
            schema = float(raw)
        except ValueError:
            raise CatalogError(f"{self.what}: bad schema property {raw!r}") from None
        if not (schema < 2.0 - 1e-9 or abs(schema - 2.4) < 1e-9 or abs(schema - 2.5) < 1e-9):
            raise CatalogError(f"{self.what}: unsupported catalog schema {raw}"
                              " (readable: 2.5, 2.4 and < 2.0)")
        self.schema = schema

    def _int_property(self, key: str, default: int) -> int:
        v = self.properties.get(key)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise CatalogError(f"{self.what}: property {key}={v!r} is not an integer") from None

    @property
    def schema_revision(self) -> int:
        return self._int_property("schema_revision", 0)

    @property
    def revision(self) -> int:
        return self._int_property("revision", 0)

    @property
    def last_modified(self) -> int:
        return self._int_property("last_modified", 0)

    @property
    def ttl(self) -> int:
        return self._int_property("TTL", 240)

    @property
    def previous_revision(self) -> ContentHash | None:
        return ContentHash.parse_optional(self.properties.get("previous_revision"),
                                          what=f"{self.what}: previous_revision")

    @property
    def root_prefix(self) -> bytes:
        """The catalog's mount path (``b""`` for a root catalog)."""
        rp = self.properties.get("root_prefix", "")
        rp = os.fsencode(rp).rstrip(b"/")
        if rp and not _is_canonical_below(rp, b""):
            raise CatalogError(f"{self.what}: root_prefix {_fs(rp)!r} is not a canonical path")
        return rp

    def check_mounted(self, mountpoint: bytes) -> None:
        """Refuse the catalog if it is mounted elsewhere than its ``root_prefix`` says: with
        nested catalogs always strictly below it (:meth:`nested_catalogs`), this is what keeps
        every walk of a catalog tree finite and free of cycles."""
        prefix = self.root_prefix
        if prefix != mountpoint:
            raise CatalogError(f"{self.what}: root_prefix {_fs(prefix) or '/'!r} does not match "
                               f"its mount point {_fs(mountpoint) or '/'!r}")

    @property
    def is_volatile(self) -> bool:
        return self.properties.get("volatile") == "1"

    # -- entries -------------------------------------------------------------------------
    def _entry(self, row: tuple) -> DirectoryEntry:
        (rowid, m1, m2, p1, p2, hardlinks, hsh, size, mode, mtime, mtimens, flags, name,
         symlink, uid, gid, xattr) = row
        w = self.what
        if not isinstance(name, bytes):
            raise CatalogError(f"{w}: row {rowid} has no name")
        where = _EntryWhere(w, name)
        if name and (name in _DOTS or b"/" in name or b"\0" in name):  # is_path_component
            raise CatalogError(f"{where} (row {rowid}): the name is not one path component")
        flags = _int(flags, where, "flags")
        group, linkcount = split_hardlinks(_int(hardlinks, where, "hardlinks", 1))
        chash = None
        if hsh is not None and not (isinstance(hsh, bytes) and len(hsh) == 0):
            if not isinstance(hsh, bytes) or len(hsh) != 20:
                raise CatalogError(f"{where} has a malformed hash")
            if any(hsh):
                try:
                    algo = Algorithm.from_flag_code((flags >> 8) & 7)
                except FormatError as e:
                    raise CatalogError(f"{where}: {e}") from None
                chash = ContentHash(algo, hsh)
        if symlink is not None and not isinstance(symlink, bytes):
            raise CatalogError(f"{where}: symlink column is not text")
        if xattr is not None and not isinstance(xattr, bytes):
            raise CatalogError(f"{where}: xattr column is not a blob")
        entry = DirectoryEntry(
            name=name, mode=_int(mode, where, "mode"), size=_int(size, where, "size", 0),
            mtime=_int(mtime, where, "mtime", 0),
            mtimens=None if mtimens is None else _int(mtimens, where, "mtimens"), flags=flags,
            hash=chash, symlink=symlink or b"", uid=_int(uid, where, "uid", 0),
            gid=_int(gid, where, "gid", 0), hardlink_group=group, linkcount=linkcount,
            xattr_blob=xattr if xattr else None,
            md5path=(_int(m1, where, "md5path_1"), _int(m2, where, "md5path_2")),
            parent=(_int(p1, where, "parent_1"), _int(p2, where, "parent_2")),
            rowid=int(rowid))
        try:
            entry.validate(what=w)
            _ = entry.compression, entry.hash_algorithm
        except FormatError as e:
            raise CatalogError(f"{where}: {e}") from None
        return entry

    def _query(self, where: str, args: tuple) -> list[tuple]:
        try:
            return self._db.execute(self._select + where, args).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: catalog query failed ({e})") from None

    def lookup(self, path: bytes) -> DirectoryEntry | None:
        """The entry at ``path`` if this catalog holds it (its name must be the path's last
        component)."""
        rows = self._query("WHERE md5path_1=? AND md5path_2=?", md5_pair(path))
        if not rows:
            return None
        try:
            entry = self._entry(rows[0])
        except CatalogError as e:
            raise CatalogError(f"{e} (at {_fs(path) or '/'!r})") from None
        if entry.name != path[path.rfind(b"/") + 1:]:
            raise CatalogError(f"{self.what}: entry {_fs(path) or '/'!r} is named "
                               f"{_fs(entry.name)!r}")
        return entry

    def listing(self, path: bytes) -> list[DirectoryEntry]:
        """The children of ``path`` held in this catalog, sorted by name (hidden included);
        a child without a name or two children with one name are refused."""
        rows = self._query("WHERE parent_1=? AND parent_2=?", md5_pair(path))
        try:
            entries = [self._entry(r) for r in rows]
        except CatalogError as e:
            raise CatalogError(f"{e} (in directory {_fs(path) or '/'!r})") from None
        entries.sort(key=lambda e: e.name)
        names = [e.name for e in entries]
        if len(set(names)) != len(names) or (names and not names[0]):
            self._bad_listing(path, names)
        return entries

    def _bad_listing(self, path: bytes, names: list[bytes]) -> None:
        where = f"{self.what}: directory {_fs(path) or '/'!r}"
        if not names[0]:
            raise CatalogError(f"{where} has an entry without a name")
        dup = next(a for a, b in pairwise(names) if a == b)
        raise CatalogError(f"{where} lists {_fs(dup)!r} twice "
                           f"({_fs(path + b'/' + dup)!r})")

    def entries(self) -> Iterator[DirectoryEntry]:
        """Every row, in row order."""
        try:
            cur = self._db.execute(self._select + "ORDER BY rowid")
            for row in cur:
                yield self._entry(row)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: catalog query failed ({e})") from None

    def _count(self, sql: str, args: tuple = ()) -> int:
        """A query answering one integer (a count or maximum)."""
        try:
            value = self._db.execute(sql, args).fetchone()[0]
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: catalog query failed ({e})") from None
        return _int(value, self.what, "count")

    def entry_count(self) -> int:
        """Rows of the ``catalog`` table (what stock ``list-catalogs -e`` counts)."""
        return self._count("SELECT count(*) FROM catalog")

    def max_rowid(self) -> int:
        return self._count("SELECT coalesce(max(rowid), 0) FROM catalog")

    def max_hardlink_group(self) -> int:
        return self._count("SELECT coalesce(max(hardlinks >> 32), 0) FROM catalog")

    def hardlink_members(self, parent: tuple[int, int], group: int) -> int:
        """How many entries of a directory belong to hard-link ``group``."""
        return self._count("SELECT count(*) FROM catalog WHERE parent_1=? AND parent_2=? AND "
                           "(hardlinks >> 32)=?", (*parent, group))

    # -- chunks --------------------------------------------------------------------------
    def chunks(self, path: bytes, entry: DirectoryEntry | None = None) -> list[Chunk]:
        """The chunk list of a chunked file, checked to tile it exactly."""
        if entry is None:
            entry = self.lookup(path)
            if entry is None:
                raise CatalogError(f"{self.what}: no entry {_fs(path)!r} for its chunks")
        algo = entry.hash_algorithm
        try:
            rows = self._db.execute(
                "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? "
                "ORDER BY offset", md5_pair(path)).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: chunks query failed ({e})") from None
        out: list[Chunk] = []
        pos = 0
        where = f"{self.what}: chunks of {_fs(path)!r}"
        for offset, size, h in rows:
            offset, size = _int(offset, where, "offset"), _int(size, where, "size")
            if not isinstance(h, bytes) or len(h) != 20:
                raise CatalogError(f"{where}: chunk at {offset} has a malformed hash")
            if offset != pos or size <= 0:
                raise CatalogError(f"{where} do not tile the file (chunk at {offset}, "
                                  f"expected {pos})")
            out.append(Chunk(offset, size, ContentHash(algo, h)))
            pos += size
        if pos != entry.size:
            raise CatalogError(f"{self.what}: chunks of {_fs(path)!r} cover {pos} bytes, "
                              f"file has {entry.size}")
        return out

    def all_chunk_hashes(self) -> Iterator[tuple[ContentHash, Compression, int]]:
        """(hash, compression, uncompressed size) of every non-external chunk row."""
        try:
            cur = self._db.execute(
                "SELECT chunks.hash, chunks.size, catalog.flags FROM chunks JOIN catalog ON "
                "chunks.md5path_1 = catalog.md5path_1 AND chunks.md5path_2 = catalog.md5path_2")
            for h, size, flags in cur:
                if not isinstance(h, bytes) or len(h) != 20:
                    raise CatalogError(f"{self.what}: a chunk row has a malformed hash")
                flags = _int(flags, self.what, "catalog.flags")
                size = _int(size, self.what, "chunks.size")
                if flags & Flags.EXTERNAL:
                    continue
                yield (ContentHash(self._algo(flags), h), self._comp(flags), size)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: chunks query failed ({e})") from None

    def _algo(self, flags: int) -> Algorithm:
        try:
            return Algorithm.from_flag_code((flags >> 8) & 7)
        except FormatError as e:
            raise CatalogError(f"{self.what}: {e}") from None

    def _comp(self, flags: int) -> Compression:
        try:
            return Compression.from_flag_code((flags >> 11) & 7)
        except FormatError as e:
            raise CatalogError(f"{self.what}: {e}") from None

    def all_file_hashes(self) -> Iterator[tuple[ContentHash, Compression, int]]:
        """(hash, compression, size) of every non-external entry that names a data object."""
        try:
            cur = self._db.execute("SELECT hash, size, flags FROM catalog WHERE hash IS NOT NULL")
            for h, size, flags in cur:
                flags = _int(flags, self.what, "catalog.flags")
                if not isinstance(h, bytes):
                    raise CatalogError(f"{self.what}: an entry's hash is not a blob")
                if flags & Flags.EXTERNAL or not any(h):
                    continue
                if len(h) != 20:
                    raise CatalogError(f"{self.what}: an entry has a malformed hash")
                yield (ContentHash(self._algo(flags), h), self._comp(flags),
                       _int(size, self.what, "catalog.size", 0))
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: catalog query failed ({e})") from None

    def orphan_chunk_count(self) -> int:
        return self._count(
            "SELECT count(*) FROM chunks LEFT JOIN catalog ON "
            "chunks.md5path_1 = catalog.md5path_1 AND chunks.md5path_2 = catalog.md5path_2 "
            "WHERE catalog.rowid IS NULL")

    # -- nested catalogs -----------------------------------------------------------------
    def _refs(self, table: str) -> list[NestedRef]:
        if table not in self._tables:
            return []
        try:
            cols = {column_text(r[1]) for r in self._db.execute(f"PRAGMA table_info({table})")}
            size_expr = "size" if "size" in cols else "0"
            sha_expr = "sha1" if "sha1" in cols else "NULL"
            query = f"SELECT path, {sha_expr}, {size_expr} FROM {table}"
            rows = self._db.execute(query).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: cannot read table {table} ({e})") from None
        out = []
        prefix = self.root_prefix
        for path, sha, size in rows:
            if not isinstance(path, bytes):
                raise CatalogError(f"{self.what}: {table} row without a path")
            where = f"{self.what}: {table} {_fs(path)!r}"
            mountpoint = path.rstrip(b"/")
            if not _is_canonical_below(mountpoint, prefix):
                raise CatalogError(f"{where} is not a canonical path below the catalog's own "
                                   f"root {_fs(prefix) or '/'!r}")
            try:
                h = ContentHash.parse_optional(sha, what=where)
            except FormatError as e:
                raise CatalogError(str(e)) from None
            if h is not None and h == self.hash:
                raise CatalogError(f"{where} references the catalog itself")
            out.append(NestedRef(mountpoint, h, _int(size, where, "size", 0)))
        out.sort(key=lambda r: r.path)
        for a, b in pairwise(out):
            if a.path == b.path:
                raise CatalogError(f"{self.what}: {table} lists {_fs(a.path)!r} twice")
        # a mount point inside another's subtree belongs to that catalog: listed here too, a
        # walk would reach it on both ways (a chain of such catalogs: 2^n visits)
        paths = {r.path for r in out}
        for r in out:
            above = covering_mountpoint(r.path, paths, include_self=False)
            if above is not None:
                raise CatalogError(f"{self.what}: {table} {_fs(r.path)!r} is below "
                                   f"{_fs(above)!r}, another of its mount points")
        return out

    def nested_catalogs(self) -> list[NestedRef]:
        if self._nested is None:
            self._nested = self._refs("nested_catalogs")
        return self._nested

    def bind_mountpoints(self) -> list[NestedRef]:
        return self._refs("bind_mountpoints")

    def _by_path(self) -> dict[bytes, NestedRef]:
        if self._nested_by_path is None:
            self._nested_by_path = {r.path: r for r in self.nested_catalogs()}
        return self._nested_by_path

    def nested_at(self, path: bytes) -> NestedRef | None:
        """The direct child catalog mounted at ``path`` exactly."""
        return self._by_path().get(path)

    def find_nested(self, path: bytes) -> NestedRef | None:
        """The direct child catalog whose mount point is ``path`` or contains it."""
        by_path = self._by_path()
        mp = covering_mountpoint(path, by_path)
        return None if mp is None else by_path[mp]

    # -- statistics ----------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        """The stored counters; absent counters (old schemas) read as 0."""
        out = dict.fromkeys(COUNTER_NAMES, 0)
        if "statistics" not in self._tables:
            return out
        try:
            rows = self._db.execute("SELECT counter, value FROM statistics").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise CatalogError(f"{self.what}: cannot read table statistics ({e})") from None
        for name, value in rows:
            key = column_text(name)
            out[key] = _int(value, f"{self.what}: counter {key}", "value")
        return out

    def object_kind(self) -> ObjectKind:
        return ObjectKind.CATALOG
