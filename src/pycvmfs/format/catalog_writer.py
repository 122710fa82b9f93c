"""Writing one SQLite file catalog: stock schema, rows by path, chunks, nested refs, counters."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat as _stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pycvmfs.errors import FormatError
from pycvmfs.format.catalog import COUNTER_FIELDS, COUNTER_NAMES, Chunk, NestedRef, parent_path
from pycvmfs.format.dirent import DirectoryEntry, Flags
from pycvmfs.format.hashes import Algorithm, ContentHash, md5_pair
from pycvmfs.format.sqlite import create_database, open_database, read_properties

__all__ = ["DDL", "SCHEMA", "SCHEMA_REVISION", "CatalogWriter", "EntryRow"]

SCHEMA = "2.5"
SCHEMA_REVISION = "7"

#: The statements stock runs for a new catalog; ``sqlite_master.sql`` holds exactly these texts
#: (format doc §4.2, double spaces included), in this order.
DDL = (
    "CREATE TABLE properties (key TEXT, value TEXT, "
    "CONSTRAINT pk_properties PRIMARY KEY (key))",
    "CREATE TABLE catalog (md5path_1 INTEGER, md5path_2 INTEGER, parent_1 INTEGER, "
    "parent_2 INTEGER, hardlinks INTEGER, hash BLOB, size INTEGER, mode INTEGER, mtime INTEGER, "
    "mtimens INTEGER, flags INTEGER, name TEXT, symlink TEXT, uid INTEGER, gid INTEGER, "
    "xattr BLOB,  CONSTRAINT pk_catalog PRIMARY KEY (md5path_1, md5path_2))",
    "CREATE INDEX idx_catalog_parent ON catalog (parent_1, parent_2)",
    "CREATE TABLE chunks (md5path_1 INTEGER, md5path_2 INTEGER, offset INTEGER, size INTEGER,  "
    "hash BLOB,  CONSTRAINT pk_chunks PRIMARY KEY (md5path_1, md5path_2, offset, size),  "
    "FOREIGN KEY (md5path_1, md5path_2) REFERENCES    catalog(md5path_1, md5path_2))",
    "CREATE TABLE nested_catalogs (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_nested_catalogs PRIMARY KEY (path))",
    "CREATE TABLE bind_mountpoints (path TEXT, sha1 TEXT, size INTEGER, "
    "CONSTRAINT pk_bind_mountpoints PRIMARY KEY (path))",
    "CREATE TABLE statistics (counter TEXT, value INTEGER, "
    "CONSTRAINT pk_statistics PRIMARY KEY (counter))",
)

# Stock compacts a catalog when more row ids than this are unused or more pages are free (§4.5).
_MAX_ROWID_WASTE = 0.25
_MAX_FREE_PAGES = 0.20

_INSERT = ("INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, "
           "mode, mtime, mtimens, flags, name, symlink, uid, gid, xattr) VALUES "
           "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?)")
_UPDATE = ("UPDATE catalog SET hardlinks=?, hash=?, size=?, mode=?, mtime=?, mtimens=?, flags=?, "
           "symlink=CAST(? AS TEXT), uid=?, gid=?, xattr=? WHERE md5path_1=? AND md5path_2=?")
_ROW_COLUMNS = "hardlinks, hash, size, mode, mtime, mtimens, flags, symlink, uid, gid, xattr"
_SELECT = ("SELECT hardlinks, hash, size, mode, mtime, mtimens, flags, symlink, uid, gid, xattr "
           "FROM catalog WHERE md5path_1=? AND md5path_2=?")

# self_* counters by SQL aggregates; kinds by the mode's type bits (stock's DirectoryEntry),
# chunked/external by flags, exactly as the stock counters and `cvmfs_server check` count.
_S_IFMT = 0o170000
_S_IFREG, _S_IFLNK, _S_IFDIR = _stat.S_IFREG, _stat.S_IFLNK, _stat.S_IFDIR
_REG = f"(mode & {_S_IFMT}) = {_S_IFREG}"
_COUNT_SQL = "SELECT " + ", ".join(f"coalesce(sum({e}), 0)" for e in (
    _REG, f"(mode & {_S_IFMT}) = {_S_IFLNK}",
    f"(mode & {_S_IFMT}) NOT IN ({_S_IFREG}, {_S_IFLNK}, {_S_IFDIR})",
    f"(mode & {_S_IFMT}) = {_S_IFDIR}",
    f"{_REG} AND (flags & {Flags.CHUNKED}) != 0",
    f"CASE WHEN {_REG} THEN size ELSE 0 END",
    f"CASE WHEN {_REG} AND (flags & {Flags.CHUNKED}) != 0 THEN size ELSE 0 END",
    "xattr IS NOT NULL",
    f"{_REG} AND (flags & {Flags.EXTERNAL}) != 0",
    f"CASE WHEN {_REG} AND (flags & {Flags.EXTERNAL}) != 0 THEN size ELSE 0 END")) + " FROM catalog"
_COUNT_FIELDS = ("regular", "symlink", "special", "dir", "chunked", "file_size", "chunked_size",
                 "xattr", "external", "external_file_size")


@dataclass(frozen=True, slots=True)
class EntryRow:
    """What a publisher knows about one entry; the path (hence name and keys) is given apart.

    ``flags`` is the complete flags value (build it with :func:`pycvmfs.format.dirent.make_flags`);
    its hash-algorithm bits must match ``hash``. ``size`` is the column value: content size, raw
    symlink target length, directory ``st_size``, or the device number of a device. ``xattr`` is
    an encoded blob (:func:`pycvmfs.format.xattr.encode_xattrs`) or ``None``.
    """

    mode: int
    flags: int
    size: int = 0
    mtime: int = 0
    mtimens: int | None = None
    hash: ContentHash | None = None
    symlink: bytes = b""
    uid: int = 0
    gid: int = 0
    hardlink_group: int = 0
    linkcount: int = 1
    xattr: bytes | None = None

    @classmethod
    def from_entry(cls, entry: DirectoryEntry) -> EntryRow:
        """The row of an entry read by :class:`pycvmfs.format.catalog.Catalog`."""
        return cls(mode=entry.mode, flags=entry.flags, size=entry.size, mtime=entry.mtime,
                   mtimens=entry.mtimens, hash=entry.hash, symlink=entry.symlink, uid=entry.uid,
                   gid=entry.gid, hardlink_group=entry.hardlink_group, linkcount=entry.linkcount,
                   xattr=entry.xattr_blob)

    def as_mountpoint(self) -> EntryRow:
        """This directory as the nested-catalog mount point in the parent (flag 2, not 32)."""
        f = self.flags & ~(Flags.NESTED_ROOT | Flags.BIND_MOUNTPOINT)
        return dataclasses.replace(self, flags=f | Flags.NESTED_MOUNTPOINT)

    def as_nested_root(self) -> EntryRow:
        """This directory as the root entry of its own nested catalog (flag 32, not 2)."""
        f = self.flags & ~(Flags.NESTED_MOUNTPOINT | Flags.BIND_MOUNTPOINT)
        return dataclasses.replace(self, flags=f | Flags.NESTED_ROOT)


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: str | bytes | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return os.fsencode(str(value))


class CatalogWriter:
    """Builds or modifies one uncompressed catalog file inside a single transaction.

    Paths are raw bytes relative to the repository root (``b""`` the root, else ``b"/a/b"``) and
    must lie at or below the catalog's ``root_prefix``. Nothing is visible in the file before
    :meth:`commit`, :meth:`finalize` or :meth:`close`; :meth:`abort` discards the changes.
    Writer misuse (a duplicate or missing path, chunks that do not tile, a hash that contradicts
    the flags) raises :class:`FormatError` naming the catalog and the path.
    """

    def __init__(self, conn: sqlite3.Connection, *, root_prefix: bytes, what: str) -> None:
        self._db = conn
        self.root_prefix = root_prefix
        self.what = what
        conn.text_factory = bytes
        conn.execute("PRAGMA synchronous = OFF")  # a build artefact: hashed after close()
        conn.execute("PRAGMA cache_size = -65536")

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, *, root_prefix: bytes = b"",
               what: str) -> CatalogWriter:
        """A new catalog file with the stock schema; ``root_prefix`` ``b""`` for a root catalog."""
        root_prefix = bytes(root_prefix)
        _check_path(root_prefix, what=what)
        conn = create_database(path, what=what)
        w = cls(conn, root_prefix=root_prefix, what=what)
        w._begin()
        for statement in DDL:
            conn.execute(statement)
        w.set_property("schema", SCHEMA)
        w.set_property("schema_revision", SCHEMA_REVISION)
        if root_prefix:
            w.set_property("root_prefix", root_prefix)
        return w

    @classmethod
    def open(cls, path: str | os.PathLike, *, what: str) -> CatalogWriter:
        """An existing schema-2.5/revision-7 catalog file, e.g. the previous revision's."""
        conn = open_database(path, what=what, writable=True)
        try:
            props = read_properties(conn, what=what)
            if (props.get("schema"), props.get("schema_revision")) != (SCHEMA, SCHEMA_REVISION):
                raise FormatError(f"{what}: catalog schema {props.get('schema')!r} revision "
                                  f"{props.get('schema_revision')!r} cannot be modified "
                                  f"(only {SCHEMA}/{SCHEMA_REVISION})")
            prefix = os.fsencode(props.get("root_prefix", "")).rstrip(b"/")
            return cls(conn, root_prefix=prefix, what=what)
        except BaseException:
            conn.close()
            raise

    # -- transactions --------------------------------------------------------------------
    def _begin(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN")

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")

    def abort(self) -> None:
        """Discard everything since the last commit and close the file (safe to call twice)."""
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.ProgrammingError:  # closed already
            return
        self._db.close()

    def close(self) -> None:
        """Commit and close (safe to call twice)."""
        try:
            self.commit()
        except sqlite3.ProgrammingError:  # closed already
            return
        self._db.close()

    def __enter__(self) -> CatalogWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- entries -------------------------------------------------------------------------
    def _params(self, path: bytes, row: EntryRow,
                parents: dict[bytes, tuple[int, int]] | None = None) -> tuple:
        _check_path(path, what=self.what)
        prefix = self.root_prefix
        if prefix and path != prefix and not path.startswith(prefix + b"/"):
            raise FormatError(f"{self.what}: {os.fsdecode(path)!r} is outside the catalog's "
                              f"root {os.fsdecode(prefix)!r}")
        flags = int(row.flags)
        digest = None
        if row.hash is not None:
            if (flags & Flags.HASH_MASK) >> Flags.HASH_SHIFT != row.hash.algorithm.value:
                raise FormatError(f"{self.what}: {os.fsdecode(path)!r}: flags {flags} do not "
                                  f"name the algorithm of hash {row.hash}")
            digest = row.hash.digest
        group, linkcount = int(row.hardlink_group), int(row.linkcount)
        if not (0 <= group < 1 << 32 and 0 <= linkcount < 1 << 32):
            raise FormatError(f"{self.what}: {os.fsdecode(path)!r}: hard-link group {group} or "
                              f"link count {linkcount} out of range")
        if path == b"":
            parent = (0, 0)
        elif parents is None:
            parent = md5_pair(parent_path(path))
        else:  # siblings share their parent's hash
            up = parent_path(path)
            parent = parents.get(up) or parents.setdefault(up, md5_pair(up))
        return (*md5_pair(path), *parent, _signed64(group << 32 | linkcount), digest,
                int(row.size), int(row.mode), int(row.mtime),
                None if row.mtimens is None else int(row.mtimens), flags,
                path[path.rfind(b"/") + 1:], bytes(row.symlink), int(row.uid), int(row.gid),
                bytes(row.xattr) if row.xattr else None)

    def add(self, path: bytes, row: EntryRow) -> None:
        """Insert the entry at ``path`` (which must not exist yet)."""
        self.add_many(((path, row),))

    def add_many(self, items: Iterable[tuple[bytes, EntryRow]]) -> None:
        """Insert many entries in one statement batch; all or none are added."""
        items = list(items)
        parents: dict[bytes, tuple[int, int]] = {}
        params = [self._params(p, r, parents) for p, r in items]
        self._begin()
        self._db.execute("SAVEPOINT add_many")
        try:
            self._db.executemany(_INSERT, params)
        except sqlite3.IntegrityError:
            self._db.execute("ROLLBACK TO add_many")
            self._db.execute("RELEASE add_many")
            dup = self._first_duplicate([p for p, _ in items])
            raise FormatError(f"{self.what}: cannot add {dup!r}: path already present") from None
        self._db.execute("RELEASE add_many")

    def _first_duplicate(self, paths: list[bytes]) -> str:
        seen: set[bytes] = set()
        for p in paths:
            if p in seen or self._exists(md5_pair(p)):
                return os.fsdecode(p)
            seen.add(p)
        return "?"

    def _exists(self, md5: tuple[int, int]) -> bool:
        return self._db.execute("SELECT 1 FROM catalog WHERE md5path_1=? AND md5path_2=?",
                                md5).fetchone() is not None

    def replace(self, path: bytes, row: EntryRow) -> None:
        """Overwrite every column of the existing entry at ``path`` (keeps its row id)."""
        p = self._params(path, row)
        self._begin()
        cur = self._db.execute(_UPDATE, (*p[4:11], *p[12:], p[0], p[1]))
        if cur.rowcount != 1:
            raise FormatError(f"{self.what}: cannot replace {os.fsdecode(path)!r}: no such entry")

    def get(self, path: bytes) -> EntryRow | None:
        """The row stored at ``path``, or ``None``."""
        r = self._db.execute(_SELECT, md5_pair(path)).fetchone()
        return None if r is None else self._row(r)

    def remove(self, path: bytes) -> None:
        """Delete the entry at ``path`` and its chunk rows; a directory must be empty here."""
        md5 = md5_pair(path)
        row = self._db.execute("SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?",
                               md5).fetchone()
        if row is None:
            raise FormatError(f"{self.what}: cannot remove {os.fsdecode(path)!r}: no such entry")
        if row[0] & Flags.DIR and self._db.execute(
                "SELECT 1 FROM catalog WHERE parent_1=? AND parent_2=? LIMIT 1", md5).fetchone():
            raise FormatError(f"{self.what}: cannot remove directory {os.fsdecode(path)!r}: "
                              "it still has entries")
        self._begin()
        self._db.execute("DELETE FROM chunks WHERE md5path_1=? AND md5path_2=?", md5)
        self._db.execute("DELETE FROM catalog WHERE md5path_1=? AND md5path_2=?", md5)

    def set_chunks(self, path: bytes, chunks: Sequence[Chunk]) -> None:
        """Replace the chunk rows of the chunked file at ``path`` (an empty list removes them).

        The chunks must tile the entry's size exactly, from offset 0, with the algorithm named by
        the entry's flags; the entry must be added first and carry the chunked flag.
        """
        md5 = md5_pair(path)
        name = os.fsdecode(path)
        row = self._db.execute("SELECT size, flags FROM catalog WHERE md5path_1=? AND "
                               "md5path_2=?", md5).fetchone()
        if row is None:
            raise FormatError(f"{self.what}: chunks for {name!r}: no such entry")
        size, flags = row
        if chunks:
            if not flags & Flags.CHUNKED:
                raise FormatError(f"{self.what}: chunks for {name!r}: entry is not chunked")
            code = (flags & Flags.HASH_MASK) >> Flags.HASH_SHIFT
            pos = 0
            for c in chunks:
                if c.offset != pos or c.size <= 0 or c.hash.algorithm.value != code:
                    raise FormatError(f"{self.what}: chunks for {name!r} do not tile the file "
                                      f"or use another algorithm (chunk at {c.offset})")
                pos += c.size
            if pos != size:
                raise FormatError(f"{self.what}: chunks for {name!r} cover {pos} bytes, "
                                  f"the file has {size}")
        self._begin()
        self._db.execute("DELETE FROM chunks WHERE md5path_1=? AND md5path_2=?", md5)
        self._db.executemany("INSERT INTO chunks (md5path_1, md5path_2, offset, size, hash) "
                             "VALUES (?, ?, ?, ?, ?)",
                             [(*md5, c.offset, c.size, c.hash.digest) for c in chunks])

    # -- directory link counts -----------------------------------------------------------
    def fix_directory_linkcounts(self) -> int:
        """Set every directory's link count to 2 + its sub-directories in this catalog.

        Nested mount points (flag 2) are left alone: they have no children here, their count is
        that of the child catalog's root entry. After fixing the child, copy its root into the
        parent: ``parent.replace(p, child.get(p).as_mountpoint())``. Returns the rows changed.
        """
        self._begin()
        cur = self._db.execute(
            "UPDATE catalog SET hardlinks = 2 + (SELECT count(*) FROM catalog AS c "
            "WHERE c.parent_1 = catalog.md5path_1 AND c.parent_2 = catalog.md5path_2 "
            f"AND (c.flags & {Flags.DIR}) != 0) "
            f"WHERE (flags & {Flags.DIR}) != 0 AND (flags & {Flags.NESTED_MOUNTPOINT}) = 0 "
            "AND hardlinks IS NOT 2 + (SELECT count(*) FROM catalog AS c "
            "WHERE c.parent_1 = catalog.md5path_1 AND c.parent_2 = catalog.md5path_2 "
            f"AND (c.flags & {Flags.DIR}) != 0)")
        return cur.rowcount

    def recount_dir_links(self, path: bytes) -> int:
        """Set the directory at ``path`` to 2 + its sub-directories here; returns the count.

        Not for nested mount points (see :meth:`fix_directory_linkcounts`).
        """
        md5 = md5_pair(path)
        row = self._db.execute("SELECT flags FROM catalog WHERE md5path_1=? AND md5path_2=?",
                               md5).fetchone()
        if row is None or not row[0] & Flags.DIR or row[0] & Flags.NESTED_MOUNTPOINT:
            raise FormatError(f"{self.what}: {os.fsdecode(path)!r} is not a directory of this "
                              "catalog (or is a nested mount point)")
        n = 2 + self._db.execute(f"SELECT count(*) FROM catalog WHERE parent_1=? AND parent_2=? "
                                 f"AND (flags & {Flags.DIR}) != 0", md5).fetchone()[0]
        self._begin()
        self._db.execute("UPDATE catalog SET hardlinks=? WHERE md5path_1=? AND md5path_2=?",
                         (n, *md5))
        return n

    # -- nested catalogs -----------------------------------------------------------------
    def add_nested(self, path: bytes, hash: ContentHash, size: int) -> None:
        """Register the direct child catalog mounted at ``path`` (its uncompressed size)."""
        self._begin()
        try:
            self._db.execute("INSERT INTO nested_catalogs (path, sha1, size) VALUES "
                             "(CAST(? AS TEXT), ?, ?)", (bytes(path), str(hash), int(size)))
        except sqlite3.IntegrityError:
            raise FormatError(f"{self.what}: nested catalog {os.fsdecode(path)!r} is "
                              "registered already") from None

    def update_nested(self, path: bytes, hash: ContentHash, size: int) -> None:
        """Record a new hash and size for the child catalog at ``path``."""
        self._begin()
        cur = self._db.execute("UPDATE nested_catalogs SET sha1=?, size=? WHERE path = "
                               "CAST(? AS TEXT)", (str(hash), int(size), bytes(path)))
        if cur.rowcount != 1:
            raise FormatError(f"{self.what}: no nested catalog at {os.fsdecode(path)!r}")

    def remove_nested(self, path: bytes) -> None:
        self._begin()
        cur = self._db.execute("DELETE FROM nested_catalogs WHERE path = CAST(? AS TEXT)",
                               (bytes(path),))
        if cur.rowcount != 1:
            raise FormatError(f"{self.what}: no nested catalog at {os.fsdecode(path)!r}")

    # -- properties and counters ---------------------------------------------------------
    def set_property(self, key: str, value: str | bytes | int) -> None:
        """Store a property; the value is always TEXT, as stock stores it."""
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO properties (key, value) VALUES (?, "
                         "CAST(? AS TEXT))", (key, _text(value)))

    def set_statistics(self, counters: Mapping[str, int]) -> None:
        """Store counters (INTEGER values), in name order like stock."""
        self._begin()
        self._db.executemany("INSERT OR REPLACE INTO statistics (counter, value) VALUES (?, ?)",
                             [(k, int(counters[k])) for k in sorted(counters)])

    def compute_statistics(self, children_totals: Iterable[Mapping[str, int]] = (),
                           ) -> dict[str, int]:
        """The 24 counters of §4.14: ``self_*`` from this catalog's rows, ``subtree_*`` the sum
        of ``self_* + subtree_*`` of each direct child's counters (24-key dicts as returned by
        this method or :meth:`pycvmfs.format.catalog.Catalog.statistics`)."""
        row = self._db.execute(_COUNT_SQL).fetchone()
        own = {f: int(v) for f, v in zip(_COUNT_FIELDS, row, strict=True)}
        own["chunks"] = self._db.execute("SELECT count(*) FROM chunks").fetchone()[0]
        own["nested"] = self._db.execute("SELECT count(*) FROM nested_catalogs").fetchone()[0]
        out = {f"self_{f}": own[f] for f in COUNTER_FIELDS}
        for f in COUNTER_FIELDS:
            out[f"subtree_{f}"] = sum(int(c.get(f"self_{f}", 0)) + int(c.get(f"subtree_{f}", 0))
                                      for c in children_totals)
        return {k: out[k] for k in COUNTER_NAMES}

    def _rowid_waste(self) -> float:
        count, top = self._db.execute("SELECT count(*), max(rowid) FROM catalog").fetchone()
        return 1 - count / top if top else 0.0

    def _free_pages(self) -> float:
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return free / pages if pages else 0.0

    def needs_vacuum(self) -> bool:
        """Whether stock would compact the file: >25 % row ids unused or >20 % pages free."""
        return self._rowid_waste() > _MAX_ROWID_WASTE or self._free_pages() > _MAX_FREE_PAGES

    def vacuum(self) -> None:
        """Renumber the ``catalog`` rows densely (row ids become inodes in the client; SQLite's
        VACUUM keeps them), commit, then rebuild the file without free pages."""
        if self._rowid_waste() > 0:
            self._begin()
            self._db.execute("CREATE TEMP TABLE compact_catalog AS "
                             "SELECT * FROM catalog ORDER BY rowid")
            self._db.execute("DELETE FROM catalog")
            self._db.execute("INSERT INTO catalog SELECT * FROM compact_catalog ORDER BY rowid")
            self._db.execute("DROP TABLE compact_catalog")
        self.commit()
        self._db.execute("VACUUM")

    def finalize(self, *, revision: int, last_modified: int,
                 previous_revision: ContentHash | None = None, ttl: int | None = None,
                 extra_properties: Mapping[str, str | bytes | int] | None = None,
                 children: Iterable[Mapping[str, int]] = (), record_previous: bool = True,
                 vacuum: bool = True) -> dict[str, int]:
        """Write the commit properties and counters like stock, commit, and compact if needed.

        ``previous_revision`` ``None`` is written as 40 zeros (a new nested catalog); pass
        ``record_previous=False`` to omit the key (the revision-0 root catalog of ``mkfs``).
        ``TTL`` is written only when ``ttl`` is given (root catalogs). ``children`` are the
        counters of the direct nested catalogs. Returns the counters written.
        """
        if ttl is not None:
            self.set_property("TTL", int(ttl))
        self.set_property("last_modified", int(last_modified))
        self.set_property("revision", int(revision))
        if record_previous:
            self.set_property("previous_revision",
                              "0" * 40 if previous_revision is None else str(previous_revision))
        for key, value in (extra_properties or {}).items():
            self.set_property(key, value)
        counters = self.compute_statistics(children)
        self.set_statistics(counters)
        self.commit()
        if vacuum and self.needs_vacuum():
            self.vacuum()
        return counters

    # -- reading back (the publisher edits catalogs in place) ----------------------------
    def _row(self, r: tuple) -> EntryRow:
        hardlinks, digest, size, mode, mtime, mtimens, flags, symlink, uid, gid, xattr = r
        h = None
        if digest is not None:
            h = ContentHash(Algorithm.from_flag_code((flags & Flags.HASH_MASK)
                                                     >> Flags.HASH_SHIFT), digest)
        hardlinks &= 0xFFFFFFFFFFFFFFFF
        return EntryRow(mode=mode, flags=flags, size=size, mtime=mtime, mtimens=mtimens, hash=h,
                        symlink=symlink, uid=uid, gid=gid, hardlink_group=hardlinks >> 32,
                        linkcount=hardlinks & 0xFFFFFFFF, xattr=xattr)

    def property(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM properties WHERE key = CAST(? AS TEXT)",
                               (key.encode(),)).fetchone()
        if row is None or row[0] is None:
            return None
        v = row[0]
        return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)

    def statistics(self) -> dict[str, int]:
        """The stored counters (absent ones read as 0)."""
        out = dict.fromkeys(COUNTER_NAMES, 0)
        for name, value in self._db.execute("SELECT counter, value FROM statistics"):
            out[name.decode() if isinstance(name, bytes) else str(name)] = int(value)
        return out

    def listing(self, path: bytes) -> list[tuple[bytes, EntryRow]]:
        """``(name, row)`` of the children of ``path`` in this catalog, sorted by name."""
        cur = self._db.execute(f"SELECT name, {_ROW_COLUMNS} FROM catalog "
                               "WHERE parent_1=? AND parent_2=?", md5_pair(path))
        out = [(bytes(r[0]), self._row(r[1:])) for r in cur]
        out.sort(key=lambda t: t[0])
        return out

    def listing_stat(self, path: bytes) -> dict[bytes, tuple]:
        """``name -> (flags, size, mode, mtime, mtimens, uid, gid, xattr, hardlinks)`` of the
        children of ``path``: the columns a sync compares, without building rows."""
        cur = self._db.execute("SELECT name, flags, size, mode, mtime, mtimens, uid, gid, xattr, "
                               "hardlinks FROM catalog WHERE parent_1=? AND parent_2=?",
                               md5_pair(path))
        return {bytes(r[0]): r[1:] for r in cur}

    def chunks(self, path: bytes) -> list[Chunk]:
        row = self.get(path)
        if row is None:
            return []
        algo = Algorithm.from_flag_code((row.flags & Flags.HASH_MASK) >> Flags.HASH_SHIFT)
        return [Chunk(int(o), int(n), ContentHash(algo, bytes(h))) for o, n, h in
                self._db.execute("SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND "
                                 "md5path_2=? ORDER BY offset", md5_pair(path))]

    def nested_refs(self) -> list[NestedRef]:
        out = []
        for path, sha, size in self._db.execute("SELECT path, sha1, size FROM nested_catalogs"):
            p = path if isinstance(path, bytes) else str(path).encode()
            out.append(NestedRef(p, ContentHash.parse_optional(sha, what=self.what),
                                 int(size or 0)))
        return out

    def all_rows(self) -> list[tuple[bytes, EntryRow]]:
        """Every entry with its path, the catalog root first (found by walking the parents)."""
        root = self.get(self.root_prefix)
        if root is None:
            return []
        out = [(self.root_prefix, root)]
        stack = [self.root_prefix]
        while stack:
            d = stack.pop()
            for name, r in self.listing(d):
                p = d + b"/" + name
                out.append((p, r))
                if r.flags & Flags.DIR and not r.flags & Flags.NESTED_MOUNTPOINT:
                    stack.append(p)
        return out

    def max_hardlink_group(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(hardlinks >> 32), 0) FROM catalog"
                                    ).fetchone()[0])

    def count_entries(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM catalog").fetchone()[0])


def _check_path(path: bytes, *, what: str) -> None:
    if path and (path[:1] != b"/" or path.endswith(b"/") or b"//" in path or b"\0" in path):
        raise FormatError(f"{what}: {path!r} is not a catalog path (b'' or b'/a/b')")
