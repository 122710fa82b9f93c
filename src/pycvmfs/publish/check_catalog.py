"""The invariants of one catalog (format doc §4.16), checked on its raw, untrusted rows."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, NamedTuple

from pycvmfs.errors import CvmfsError, FormatError
from pycvmfs.format.catalog import COUNTER_FIELDS, COUNTER_NAMES, Catalog, NestedRef
from pycvmfs.format.dirent import Flags
from pycvmfs.format.hashes import md5_pair
from pycvmfs.format.sqlite import open_database

__all__ = ["CatalogInvariants", "Row", "RowReader", "show"]

_COLUMNS = ("md5path_1", "md5path_2", "parent_1", "parent_2", "hardlinks", "hash", "size",
            "mode", "mtime", "mtimens", "flags", "name", "symlink", "uid", "gid", "xattr")
_TRANSITION = Flags.NESTED_MOUNTPOINT | Flags.NESTED_ROOT
MARKER = b".cvmfscatalog"


def show(path: bytes | str) -> str:
    """A repository path for messages (``/`` for the root)."""
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    return text or "/"


class Row(NamedTuple):
    """One ``catalog`` row as stored (nothing validated)."""

    rowid: int
    md5path: tuple[int, int]
    parent: tuple[int, int]
    hardlinks: int
    hash: bytes | None
    size: int
    mode: int
    mtime: int
    mtimens: int | None
    flags: int
    name: bytes
    symlink: bytes
    uid: int
    gid: int
    xattr: bytes | None

    @property
    def group(self) -> int:
        return (self.hardlinks & 0xFFFFFFFFFFFFFFFF) >> 32

    @property
    def linkcount(self) -> int:
        return self.hardlinks & 0xFFFFFFFF

    @property
    def is_dir(self) -> bool:
        return bool(self.flags & Flags.DIR)

    @property
    def is_file(self) -> bool:
        return bool(self.flags & Flags.FILE)

    @property
    def is_link(self) -> bool:
        return bool(self.flags & Flags.LINK)

    @property
    def is_special(self) -> bool:
        return bool(self.flags & Flags.SPECIAL)

    @property
    def is_regular(self) -> bool:
        return self.is_file and not self.flags & (Flags.LINK | Flags.SPECIAL)

    @property
    def is_mountpoint(self) -> bool:
        return bool(self.flags & Flags.NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        return bool(self.flags & Flags.NESTED_ROOT)

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & Flags.BIND_MOUNTPOINT)

    @property
    def hash_is_null(self) -> bool:
        return not self.hash or not any(self.hash)

    def key(self) -> tuple:
        """What a nested root must share with its mount point (:data:`COMPARED`)."""
        return (self.md5path, self.parent, self.name, self.mode, self.size, self.mtime,
                self.mtimens, self.hash, self.symlink, self.uid, self.gid, self.hardlinks,
                self.xattr, self.flags & ~_TRANSITION)

    def link_key(self) -> tuple:
        """What the members of a hard-link group share."""
        return (self.mode, self.size, self.mtime, self.hash, self.symlink, self.uid, self.gid,
                self.xattr, self.flags, self.hardlinks)


#: Column names of :meth:`Row.key`, for messages.
COMPARED = ("md5path", "parent", "name", "mode", "size", "mtime", "mtimens", "hash", "symlink",
            "uid", "gid", "hardlinks", "xattr", "flags")


class RowReader:
    """Raw SQL access to a decompressed catalog file (a second, read-only connection)."""

    def __init__(self, path: str | os.PathLike, *, what: str) -> None:
        self.what = what
        self._db = open_database(Path(path), what=what, text_as_bytes=True)
        cols = {_text(r[1]) for r in self._db.execute("PRAGMA table_info(catalog)")}
        exprs = [c if c in cols else "NULL" for c in _COLUMNS]
        self._select = "SELECT rowid, " + ", ".join(exprs) + " FROM catalog "
        self._tables = {_text(r[0]) for r in
                        self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RowReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, where: str, args: tuple) -> list[Row]:
        try:
            return [_row(r) for r in self._db.execute(self._select + where, args)]
        except (sqlite3.DatabaseError, TypeError, ValueError) as e:
            raise FormatError(f"{self.what}: unreadable catalog rows ({e})") from None

    def lookup(self, path: bytes) -> Row | None:
        rows = self._rows("WHERE md5path_1=? AND md5path_2=?", md5_pair(path))
        return rows[0] if rows else None

    def listing(self, path: bytes) -> list[Row]:
        return sorted(self._rows("WHERE parent_1=? AND parent_2=?", md5_pair(path)),
                      key=lambda r: r.name)

    def has_children(self, path: bytes) -> bool:
        return self._db.execute("SELECT 1 FROM catalog WHERE parent_1=? AND parent_2=? LIMIT 1",
                                md5_pair(path)).fetchone() is not None

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM catalog").fetchone()[0])

    def chunks(self, md5path: tuple[int, int]) -> list[tuple[int, int, object]]:
        if "chunks" not in self._tables:
            return []
        return [(int(o), int(s), h) for o, s, h in self._db.execute(
            "SELECT offset, size, hash FROM chunks WHERE md5path_1=? AND md5path_2=? "
            "ORDER BY offset", md5path)]

    def statistics(self) -> dict[str, int]:
        if "statistics" not in self._tables:
            return {}
        return {_text(n): int(v) for n, v in
                self._db.execute("SELECT counter, value FROM statistics")}

    def unattached_names(self, mountpoint: bytes, limit: int = 5) -> list[bytes]:
        """Names of rows whose parent is missing, not a directory, or a mount point."""
        rows = self._db.execute(
            "SELECT c.name FROM catalog c LEFT JOIN catalog p ON p.md5path_1 = c.parent_1 AND "
            "p.md5path_2 = c.parent_2 WHERE NOT (c.md5path_1 = ? AND c.md5path_2 = ?) AND "
            "(p.rowid IS NULL OR p.flags & 1 = 0 OR p.flags & ? != 0) LIMIT ?",
            (*md5_pair(mountpoint), Flags.NESTED_MOUNTPOINT | Flags.BIND_MOUNTPOINT, limit))
        return [_bytes(r[0]) for r in rows]

    def groups_across_directories(self) -> list[tuple[int, list[bytes]]]:
        groups = [int(r[0]) for r in self._db.execute(
            "SELECT hardlinks >> 32 AS g FROM catalog WHERE flags & 1 = 0 AND g != 0 "
            "GROUP BY g HAVING count(DISTINCT parent_1 || ':' || parent_2) > 1")]
        names = "SELECT name FROM catalog WHERE hardlinks >> 32 = ? ORDER BY name LIMIT 5"
        return [(g, [_bytes(r[0]) for r in self._db.execute(names, (g,))]) for g in groups]

    def paths_of(self, digest: bytes, *, chunk: bool, mountpoint: bytes,
                 limit: int = 3) -> list[str]:
        """Paths of the entries that reference an object (for messages)."""
        if chunk:
            sql = "SELECT DISTINCT md5path_1, md5path_2 FROM chunks WHERE hash = ? LIMIT ?"
        else:
            sql = "SELECT md5path_1, md5path_2 FROM catalog WHERE hash = ? LIMIT ?"
        out = []
        for m1, m2 in self._db.execute(sql, (digest, limit)).fetchall():
            names: list[bytes] = []
            key, prefix = (int(m1), int(m2)), b"?"
            for _ in range(4096):
                rows = self._rows("WHERE md5path_1=? AND md5path_2=?", key)
                if not rows or key == md5_pair(mountpoint):
                    prefix = mountpoint if rows else b"?"
                    break
                names.append(rows[0].name)
                key = rows[0].parent
            out.append(show(prefix + b"".join(b"/" + n for n in reversed(names))))
        return out


def _text(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _bytes(value: object) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _row(r: tuple) -> Row:
    (rowid, m1, m2, p1, p2, hardlinks, h, size, mode, mtime, mtimens, flags, name, symlink,
     uid, gid, xattr) = r
    return Row(int(rowid), (int(m1), int(m2)), (int(p1), int(p2)),
               1 if hardlinks is None else int(hardlinks), h if h is None else bytes(h),
               int(size or 0), int(mode or 0), int(mtime or 0),
               None if mtimens is None else int(mtimens), int(flags or 0), _bytes(name),
               _bytes(symlink), int(uid or 0), int(gid or 0), None if xattr is None else
               bytes(xattr))


Report = Callable[[bytes | str, str], None]
#: child(nested ref, its mount point row in this catalog): a generator (it may yield to a
#: tree walker such as :func:`~pycvmfs.format.catalog.run_tree_steps`) that returns the
#: recomputed self+subtree totals of the child, or None when they are unknown (the child is
#: missing or broken).
ChildFn = Callable[[NestedRef, Row | None], Generator[Any, Any, dict[str, int] | None]]


class CatalogInvariants:
    """Walk one catalog from its root entry like ``cvmfs_server check`` and report what is
    wrong through ``bad(path, message)``: entry types and fields, markers, link counts, hard-link
    groups, chunk tiling, mount points, the 24 counters, unreachable rows."""

    def __init__(self, cat: Catalog, rows: RowReader, mountpoint: bytes, *, nested: bool,
                 bad: Report) -> None:
        self.cat = cat
        self.rows = rows
        self.mp = mountpoint
        self.nested = nested
        self.bad = bad
        self.counts = dict.fromkeys(COUNTER_FIELDS, 0)
        self.found = 1  # the root entry
        self.mountpoints: set[bytes] = set()
        self.root: Row | None = None

    def check(self, child: ChildFn) -> Generator[Any, Any, dict[str, int] | None]:
        """Run every check (a generator: it yields what ``child`` yields, so a caller can walk
        a deep catalog tree from a loop instead of recursing); returns the recomputed
        self+subtree totals (None when unknown)."""
        mp = self.mp
        self.root = root = self.rows.lookup(mp)
        if root is None:
            self.bad(mp, "no root entry")
        else:
            if not root.is_dir:
                self.bad(mp, "the root entry is not a directory")
            if self.nested != root.is_nested_root:
                self.bad(mp, "the root entry of a nested catalog lacks the nested-root flag"
                         if self.nested else "the root entry of a root catalog has the "
                         "nested-root flag")
            if not mp and root.parent != (0, 0):
                self.bad(mp, f"the repository root entry has parent {root.parent}, not (0, 0)")
        if self.cat.root_prefix != mp:
            self.bad(mp, f"root_prefix is {show(self.cat.root_prefix)!r}, but the catalog is "
                         "mounted here")
        try:
            refs = self.cat.nested_catalogs()
            binds = {r.path for r in self.cat.bind_mountpoints()}
        except CvmfsError as e:
            self.bad(mp, f"unreadable nested catalog list: {e}")
            refs, binds = [], set()
        registered = {r.path for r in refs}
        if registered & binds:
            self.bad(mp, "listed both as nested catalogs and bind mount points: "
                         + ", ".join(show(p) for p in sorted(registered & binds)))
        self._walk(registered, binds)
        if root is not None:
            self.counts["dir"] += 1
            self.counts["xattr"] += root.xattr is not None
        if len(refs) != self.counts["nested"]:
            self.bad(mp, f"{len(refs)} nested catalogs registered, {self.counts['nested']} "
                         "mount points found")
        subtree: dict[str, int] | None = dict.fromkeys(COUNTER_FIELDS, 0)
        for ref in refs:
            totals = None
            if self._child_ok(ref):
                totals = yield from child(ref, self.rows.lookup(ref.path))
            if totals is None or subtree is None:
                subtree = None
            else:
                subtree = {k: subtree[k] + totals[k] for k in COUNTER_FIELDS}
        self._counters(subtree)
        self._rows_reachable()
        if subtree is None:
            return None
        return {k: self.counts[k] + subtree[k] for k in COUNTER_FIELDS}

    def _child_ok(self, ref: NestedRef) -> bool:
        """Whether the registered child can be checked (reporting what is wrong with it)."""
        if not ref.path.startswith(self.mp + b"/"):
            self.bad(ref.path, "registered nested catalog is not below this catalog")
            return False
        if ref.path not in self.mountpoints:
            self.bad(ref.path, "registered nested catalog without a mount point entry"
                     if self.rows.lookup(ref.path) is None else "registered nested catalog "
                     "whose entry is not a reachable mount point")
        if ref.hash is None:
            self.bad(ref.path, "nested catalog registered without a hash")
            return False
        return True

    def _counters(self, subtree: dict[str, int] | None) -> None:
        stored = self.rows.statistics()
        missing = [n for n in COUNTER_NAMES if n not in stored]
        if missing and self.cat.schema > 2.45:
            self.bad(self.mp, "statistics counters missing: " + ", ".join(missing))
        expected = {f"self_{k}": v for k, v in self.counts.items()}
        if subtree is not None:
            expected.update({f"subtree_{k}": v for k, v in subtree.items()})
        for name, value in expected.items():
            if name in stored and stored[name] != value:
                self.bad(self.mp, f"counter {name} is {stored[name]}, the rows give {value}")

    def _rows_reachable(self) -> None:
        total = self.rows.count()
        if total != self.found:
            names = ", ".join(repr(show(n)) for n in self.rows.unattached_names(self.mp))
            self.bad(self.mp, f"{total - self.found} rows not reachable from the catalog root"
                     + (f" (e.g. {names})" if names else ""))
        orphans = self.cat.orphan_chunk_count()
        if orphans:
            self.bad(self.mp, f"{orphans} chunk rows without a catalog entry")
        for group, names in self.rows.groups_across_directories():
            self.bad(self.mp, f"hard-link group {group} spans several directories "
                              f"({', '.join(show(n) for n in names)})")

    # -- the walk ------------------------------------------------------------------------
    def _walk(self, registered: set[bytes], binds: set[bytes]) -> None:
        stack = [self.mp]
        while stack:
            path = stack.pop()
            this = self.root if path == self.mp else self.rows.lookup(path)
            subdirs, marker = 0, False
            groups: dict[int, list[Row]] = {}
            for e in self.rows.listing(path):
                self.found += 1
                full = path + b"/" + e.name
                subdirs += self._entry(e, full, path, registered, binds, stack, groups)
                marker = marker or e.name == MARKER
            if path and path == self.mp and not marker:
                self.bad(path, "nested catalog without its .cvmfscatalog marker")
            if this is not None and this.linkcount != subdirs + 2:
                self.bad(path, f"directory linkcount is {this.linkcount}, expected "
                               f"{subdirs + 2} (2 + {subdirs} subdirectories)")
            for group, members in groups.items():
                for m in members:
                    where = path + b"/" + m.name
                    if m.linkcount != len(members):
                        self.bad(where, f"hard-link group {group} has {len(members)} members "
                                        f"here, linkcount is {m.linkcount}")
                    if m.link_key() != members[0].link_key():
                        self.bad(where, f"hard-link group {group}: attributes differ from "
                                        f"{show(members[0].name)}")

    def _entry(self, e: Row, full: bytes, parent: bytes, registered: set[bytes],
               binds: set[bytes], stack: list[bytes], groups: dict[int, list[Row]]) -> int:
        """Check and count one entry; 1 if it is a directory."""
        c = self.counts
        if e.md5path != md5_pair(full) or e.parent != md5_pair(parent):
            self.bad(full, "path hashes (md5path/parent) do not match the path")
        if not e.name:
            self.bad(full, "empty name")
        if e.name == MARKER and parent != self.mp:
            self.bad(full, "abandoned .cvmfscatalog marker (not at a catalog root)")
        if e.is_dir == e.is_file:
            self.bad(full, f"unknown entry type (flags {e.flags})")
            return 0
        if e.linkcount == 0:
            self.bad(full, "linkcount 0")
        if e.flags & Flags.DIRECT_IO and not e.is_regular:
            self.bad(full, "direct-I/O flag on a non-regular file")
        if e.flags & Flags.EXTERNAL:
            c["external"] += 1
            c["external_file_size"] += e.size
            if not e.is_regular:
                self.bad(full, "external flag on a non-regular file")
        c["xattr"] += e.xattr is not None
        if e.is_dir:
            c["dir"] += 1
            if e.group:
                self.bad(full, "directory hard link")
            if e.is_mountpoint or e.is_bind:
                self._mountpoint(e, full, registered, binds)
            else:
                stack.append(full)
            return 1
        if e.group or e.linkcount > 1:
            if e.group == 0:
                self.bad(full, f"linkcount {e.linkcount} without a hard-link group")
            else:
                groups.setdefault(e.group, []).append(e)
        if e.is_link:
            c["symlink"] += 1
            if not e.hash_is_null:
                self.bad(full, "symbolic link with a content hash")
        elif e.is_special:
            c["special"] += 1
            if e.size and not (stat.S_ISCHR(e.mode) or stat.S_ISBLK(e.mode)):
                self.bad(full, f"special file with size {e.size}")
            if not e.hash_is_null:
                self.bad(full, "special file with a content hash")
            if e.symlink:
                self.bad(full, "special file with a symlink target")
        else:
            c["regular"] += 1
            c["file_size"] += e.size
            if e.hash is not None and len(e.hash) not in (0, 20):
                self.bad(full, f"malformed content hash ({len(e.hash)} bytes)")
            if e.flags & Flags.CHUNKED:
                self._chunked(e, full)
            elif e.hash_is_null:
                self.bad(full, "regular file without a content hash")
        return 0

    def _mountpoint(self, e: Row, full: bytes, registered: set[bytes], binds: set[bytes]) -> None:
        if e.is_mountpoint:
            self.counts["nested"] += 1
            self.mountpoints.add(full)
            if full not in registered:
                self.bad(full, "nested catalog mount point not registered in nested_catalogs")
            if e.is_bind:
                self.bad(full, "both a nested and a bind mount point")
        elif full not in binds:
            self.bad(full, "bind mount point not registered in bind_mountpoints")
        if self.rows.has_children(full):
            self.bad(full, "mount point is not empty in the parent catalog")

    def _chunked(self, e: Row, full: bytes) -> None:
        chunks = self.rows.chunks(e.md5path)
        c = self.counts
        c["chunked"] += 1
        c["chunked_size"] += e.size
        c["chunks"] += len(chunks)
        if not chunks:
            self.bad(full, "chunked file without chunks")
            return
        pos = 0
        for offset, size, h in chunks:
            if offset != pos:
                self.bad(full, f"chunks do not tile the file: chunk at offset {offset}, "
                               f"expected {pos}")
            if not isinstance(h, bytes) or len(h) != 20:
                self.bad(full, f"chunk at offset {offset} has a malformed hash")
            pos = offset + size
        if pos != e.size:
            self.bad(full, f"chunks cover {pos} bytes, the file has {e.size}")
