"""The catalogs of one revision opened for change: entries, nested catalogs, bottom-up commit."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs.errors import FormatError
from pycvmfs.format.catalog import COUNTER_FIELDS, Chunk, covering_mountpoint, parent_path
from pycvmfs.format.catalog_writer import CatalogWriter, EntryRow
from pycvmfs.format.compression import Compression, compress
from pycvmfs.format.dirent import Flags
from pycvmfs.format.hashes import Algorithm, ContentHash, ObjectKind
from pycvmfs.storage.base import Source
from pycvmfs.storage.objects import download_verified

__all__ = ["CatalogTree", "CommitResult"]

#: store(compressed bytes, kind) -> hash: how committed catalogs reach the storage
StoreFn = Callable[[bytes, ObjectKind], ContentHash]


def _show(path: bytes) -> str:
    return os.fsdecode(path) or "/"


def _zero() -> dict[str, int]:
    return dict.fromkeys(COUNTER_FIELDS, 0)


def _totals(counters: dict[str, int]) -> dict[str, int]:
    return {f: counters.get(f"self_{f}", 0) + counters.get(f"subtree_{f}", 0)
            for f in COUNTER_FIELDS}


@dataclass
class _Open:
    mountpoint: bytes
    writer: CatalogWriter
    file: Path
    old_hash: ContentHash | None  # None: created in this change set
    old_revision: int
    old_totals: dict[str, int]  # self + subtree as stored before the change
    old_subtree: dict[str, int]
    nested: dict[bytes, tuple[ContentHash | None, int]]  # direct children: hash, size
    subtree_delta: dict[str, int] = field(default_factory=_zero)
    size: int = 0  # uncompressed size after the last commit
    hardlink_next: int = 0
    dirty: bool = False
    touched_dirs: set[bytes] = field(default_factory=set)


@dataclass(frozen=True)
class CommitResult:
    root_hash: ContentHash
    root_size: int
    revision: int
    catalogs_written: int
    new_catalogs: list[ContentHash]


class CatalogTree:
    """Every catalog of a revision, loaded on demand from ``source`` into ``workdir`` and edited
    in place. Paths are raw bytes (``b""`` the root, ``b"/a/b"``).

    The tree keeps the stock invariants: a nested catalog's root row equals its mount point row in
    the parent except for the flags; directory link counts are 2 + sub-directories; the 24
    counters of every rewritten catalog are recomputed (subtree counters incrementally, so clean
    nested catalogs are never loaded).
    """

    def __init__(self, source: Source, workdir: Path, root: ContentHash | None, *,
                 algorithm: Algorithm, root_entry: EntryRow | None = None) -> None:
        self.source = source
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.algorithm = algorithm
        self._open: dict[bytes, _Open] = {}
        self._removed: list[_Open] = []
        self._counter = 0
        if root is None:
            if root_entry is None:
                raise FormatError("a new catalog tree needs its root entry")
            self._create(b"", root_entry)
        else:
            self._load(b"", root, None)

    # -- loading -------------------------------------------------------------------------
    def _new_file(self) -> Path:
        self._counter += 1
        return self.workdir / f"catalog-{self._counter}.db"

    def _load(self, mp: bytes, h: ContentHash, parent: _Open | None) -> _Open:
        f = self._new_file()
        what = f"catalog {h}C at {_show(mp)}"
        with open(f, "wb") as out:
            download_verified(self.source, h, ObjectKind.CATALOG, Compression.ZLIB, out,
                              what=what)
        w = CatalogWriter.open(f, what=what)
        if w.root_prefix != mp:
            w.abort()
            raise FormatError(f"{what}: root_prefix {_show(w.root_prefix)} does not match")
        stats = w.statistics()
        o = _Open(mp, w, f, h, int(w.property("revision") or 0), _totals(stats),
                  {k: stats.get(f"subtree_{k}", 0) for k in COUNTER_FIELDS},
                  {r.path: (r.hash, r.size) for r in w.nested_refs()})
        self._open[mp] = o
        return o

    def _create(self, mp: bytes, root_row: EntryRow) -> _Open:
        f = self._new_file()
        what = f"new catalog at {_show(mp)}"
        w = CatalogWriter.create(f, root_prefix=mp, what=what)
        w.add(mp, root_row.as_nested_root() if mp else root_row)
        o = _Open(mp, w, f, None, 0, _zero(), _zero(), {}, dirty=True)
        self._open[mp] = o
        return o

    def _child(self, parent: _Open, mp: bytes) -> _Open:
        got = self._open.get(mp)
        if got is not None:
            return got
        h, _size = parent.nested[mp]
        if h is None:
            raise FormatError(f"{parent.writer.what}: nested catalog {_show(mp)} has no hash")
        return self._load(mp, h, parent)

    def catalog_for(self, path: bytes, *, mountpoint_in_child: bool = True) -> _Open:
        """The catalog holding ``path`` (a mount point: the child, unless asked otherwise)."""
        cur = self._open[b""]
        while True:
            nxt = covering_mountpoint(path, cur.nested, include_self=mountpoint_in_child)
            if nxt is None:
                return cur
            cur = self._child(cur, nxt)

    def _parent_of(self, o: _Open) -> _Open:
        return self.catalog_for(o.mountpoint, mountpoint_in_child=False)

    # -- queries -------------------------------------------------------------------------
    def lookup(self, path: bytes) -> EntryRow | None:
        return self.catalog_for(path).writer.get(path)

    def listdir(self, path: bytes) -> list[tuple[bytes, EntryRow]]:
        return self.catalog_for(path).writer.listing(path)

    def listdir_stat(self, path: bytes) -> dict[bytes, tuple]:
        """Children of ``path`` with the columns a sync compares (see CatalogWriter)."""
        return self.catalog_for(path).writer.listing_stat(path)

    def chunks(self, path: bytes) -> list[Chunk]:
        return self.catalog_for(path).writer.chunks(path)

    def is_catalog_root(self, path: bytes) -> bool:
        return path == b"" or path in self.catalog_for(path, mountpoint_in_child=False).nested

    def catalog_roots(self) -> list[bytes]:
        """Mount points of the catalogs loaded so far."""
        return sorted(self._open)

    def catalog_rows(self, mp: bytes) -> list[tuple[bytes, EntryRow]]:
        """Every row of the loaded catalog at ``mp`` with its path."""
        return self._open[mp].writer.all_rows()

    def entry_count(self, mp: bytes) -> int:
        return self._open[mp].writer.count_entries()

    def new_hardlink_group(self, directory: bytes) -> int:
        """A hard-link group id unused in the catalog that holds ``directory``'s entries."""
        o = self.catalog_for(directory)
        o.hardlink_next = max(o.hardlink_next, o.writer.max_hardlink_group()) + 1
        return o.hardlink_next

    # -- changes -------------------------------------------------------------------------
    def _touch(self, o: _Open, directory: bytes) -> None:
        o.dirty = True
        o.touched_dirs.add(directory)

    def put(self, path: bytes, row: EntryRow, chunks: list[Chunk] | None = None) -> None:
        """Add or replace a non-directory entry, or set a directory's attributes (a directory
        that exists keeps its contents). The parent must be a directory."""
        if path == b"":
            return self._set_dir(b"", row)
        parent = self.lookup(parent_path(path))
        if parent is None or not parent.flags & Flags.DIR:
            raise FormatError(f"cannot add {_show(path)}: {_show(parent_path(path))} is not a "
                              "directory in the repository")
        old = self.lookup(path)
        is_dir = bool(row.flags & Flags.DIR)
        if old is not None:
            if is_dir and old.flags & Flags.DIR:
                return self._set_dir(path, row)
            self.remove(path)
        o = self.catalog_for(path)
        o.writer.add(path, row)
        if chunks:
            o.writer.set_chunks(path, chunks)
        self._touch(o, parent_path(path))
        if is_dir:
            o.touched_dirs.add(path)
        return None

    def add_new(self, items: list[tuple[bytes, EntryRow, list[Chunk] | None]]) -> None:
        """Add many non-directory entries that do not exist yet (checked: a duplicate fails
        the whole call), in batches per catalog: one statement batch instead of a few queries
        each. Every parent must be a directory."""
        parents: dict[bytes, bool] = {}
        batch: list[tuple[bytes, EntryRow]] = []
        chunked: list[tuple[bytes, list[Chunk]]] = []
        cur: _Open | None = None

        def flush() -> None:
            if cur is not None and batch:
                cur.writer.add_many(batch)
                for path, chunks in chunked:
                    cur.writer.set_chunks(path, chunks)
            batch.clear()
            chunked.clear()

        for path, row, chunks in items:
            if not path or row.flags & Flags.DIR:
                raise FormatError(f"cannot add {_show(path)} as a new file entry")
            up = parent_path(path)
            ok = parents.get(up)
            if ok is None:
                parent = self.lookup(up)
                ok = parents[up] = parent is not None and bool(parent.flags & Flags.DIR)
            if not ok:
                raise FormatError(f"cannot add {_show(path)}: {_show(up)} is not a "
                                  "directory in the repository")
            o = self.catalog_for(path)
            if o is not cur:
                flush()
                cur = o
            batch.append((path, row))
            if chunks:
                chunked.append((path, chunks))
            self._touch(o, up)
        flush()

    def _set_dir(self, path: bytes, row: EntryRow) -> None:
        o = self.catalog_for(path)
        old = o.writer.get(path)
        keep = old.flags & (Flags.NESTED_ROOT | Flags.NESTED_MOUNTPOINT)
        new = _with(row, flags=(row.flags & ~(Flags.NESTED_ROOT | Flags.NESTED_MOUNTPOINT))
                    | keep, linkcount=old.linkcount)
        o.writer.replace(path, new)
        self._touch(o, path)
        if path and old.flags & Flags.NESTED_ROOT:
            p = self._parent_of(o)
            p.writer.replace(path, new.as_mountpoint())
            p.dirty = True
        return None

    def remove(self, path: bytes) -> None:
        """Remove an entry; a directory goes with everything below it, nested catalogs included."""
        if path == b"":
            raise FormatError("the repository root cannot be removed")
        o = self.catalog_for(path)
        row = o.writer.get(path)
        if row is None:
            raise FormatError(f"cannot remove {_show(path)}: no such entry")
        if not row.flags & Flags.DIR:
            o.writer.remove(path)
            self._touch(o, parent_path(path))
            return
        if path == o.mountpoint:  # a whole nested catalog goes
            self._remove_catalog(self._parent_of(o), path)
            return
        dirs = [path]  # this catalog's directories below path, parents first (no recursion:
        stack = [path]  # trees thousands of levels deep)
        while stack:
            directory = stack.pop()
            for name, child in o.writer.listing(directory):
                p = directory + b"/" + name
                if not child.flags & Flags.DIR:
                    o.writer.remove(p)
                elif p in o.nested:
                    self._remove_catalog(o, p)
                else:
                    dirs.append(p)
                    stack.append(p)
        for directory in reversed(dirs):
            o.writer.remove(directory)
            self._touch(o, parent_path(directory))

    def _remove_catalog(self, parent: _Open, mountpoint: bytes) -> None:
        """Remove the nested catalog at ``mountpoint`` of ``parent`` and its mount point."""
        self._drop_catalog(self._child(parent, mountpoint), parent)
        parent.writer.remove(mountpoint)
        self._touch(parent, parent_path(mountpoint))

    def _drop_catalog(self, o: _Open, parent: _Open) -> None:
        """Drop catalog ``o`` and every catalog below it (deepest first, in a loop)."""
        order = []
        stack = [(o, parent)]
        while stack:
            cur, above = stack.pop()
            order.append((cur, above))
            stack.extend((self._child(cur, mp), cur) for mp in list(cur.nested))
        for cur, above in reversed(order):
            for f in COUNTER_FIELDS:
                above.subtree_delta[f] -= cur.old_totals[f]
            above.writer.remove_nested(cur.mountpoint)
            del above.nested[cur.mountpoint]
            above.dirty = True
            self._close_removed(cur)

    def _close_removed(self, o: _Open) -> None:
        o.writer.abort()
        del self._open[o.mountpoint]
        self._removed.append(o)
        o.file.unlink(missing_ok=True)

    def make_nested(self, path: bytes) -> None:
        """Split the subtree at directory ``path`` out into a new nested catalog."""
        parent = self.catalog_for(path)
        if path == parent.mountpoint:
            return  # already a catalog root
        row = parent.writer.get(path)
        if row is None or not row.flags & Flags.DIR:
            raise FormatError(f"cannot make a nested catalog at {_show(path)}: not a directory")
        child = self._create(path, row)
        moved: list[tuple[bytes, EntryRow, list[Chunk]]] = []
        stack = [path]
        while stack:
            d = stack.pop()
            for name, r in parent.writer.listing(d):
                p = d + b"/" + name
                moved.append((p, r, parent.writer.chunks(p) if r.flags & Flags.CHUNKED else []))
                if r.flags & Flags.DIR and not r.flags & Flags.NESTED_MOUNTPOINT:
                    stack.append(p)
        child.writer.add_many((p, r) for p, r, _ in moved)
        for p, _r, chunks in moved:
            if chunks:
                child.writer.set_chunks(p, chunks)
        for p, _r, _c in reversed(moved):
            parent.writer.remove(p)
        for mp in [m for m in parent.nested if m.startswith(path + b"/")]:
            h, size = parent.nested.pop(mp)
            parent.writer.remove_nested(mp)
            child.writer.add_nested(mp, h, size)
            child.nested[mp] = (h, size)
            grand = self._child(child, mp)
            for f in COUNTER_FIELDS:
                parent.subtree_delta[f] -= grand.old_totals[f]
                child.old_subtree[f] += grand.old_totals[f]
        parent.writer.replace(path, row.as_mountpoint())
        parent.writer.add_nested(path, ContentHash.null(self.algorithm), 0)
        parent.nested[path] = (None, 0)
        self._touch(parent, parent_path(path))
        # directories of the moved subtree whose link counts are still to be recounted
        prefix = path + b"/"
        pending = {d for d in parent.touched_dirs if d == path or d.startswith(prefix)}
        parent.touched_dirs -= pending
        child.touched_dirs |= pending | {path}

    def merge_nested(self, path: bytes) -> None:
        """Fold the nested catalog at ``path`` back into its parent."""
        child = self._open.get(path) or self.catalog_for(path)
        if child.mountpoint != path or path == b"":
            return
        parent = self._parent_of(child)
        rows = list(child.writer.all_rows())
        shift = parent.writer.max_hardlink_group()
        root = child.writer.get(path)
        parent.writer.replace(path, _with(root, flags=root.flags & ~Flags.NESTED_ROOT))
        add = []
        for p, r in rows:
            if p == path:
                continue
            if r.hardlink_group:
                r = _with(r, hardlink_group=r.hardlink_group + shift)
            add.append((p, r))
        parent.writer.add_many(add)
        for p, r in add:
            if r.flags & Flags.CHUNKED:
                parent.writer.set_chunks(p, child.writer.chunks(p))
        for mp, (h, size) in child.nested.items():
            parent.writer.add_nested(mp, h if h is not None else ContentHash.null(), size)
            parent.nested[mp] = (h, size)
        for f in COUNTER_FIELDS:
            parent.subtree_delta[f] -= child.old_totals[f] - child.old_subtree[f]
        parent.writer.remove_nested(path)
        del parent.nested[path]
        child.nested.clear()
        parent.touched_dirs |= child.touched_dirs
        self._touch(parent, path)
        self._close_removed(child)

    # -- commit --------------------------------------------------------------------------
    def has_changes(self) -> bool:
        return bool(self._removed) or any(o.dirty or o.old_hash is None
                                          for o in self._open.values())

    def commit(self, store: StoreFn, *, now: int, ttl: int | None,
               root_revision: int | None = None, record_previous: bool = True) -> CommitResult:
        """Finalize every changed catalog bottom-up, store it, and return the new root."""
        written: list[ContentHash] = []
        dirty = True
        while dirty:  # a child's new hash dirties its parent
            dirty = False
            for o in sorted(self._open.values(), key=lambda x: -x.mountpoint.count(b"/")
                            - (1 if x.mountpoint else 0)):
                if o.mountpoint == b"" or not o.dirty:
                    continue
                self._finalize(o, store, now, written)
                dirty = True
        root = self._open[b""]
        if root.dirty or root.old_hash is None:
            self._finalize(root, store, now, written, ttl=ttl, revision=root_revision,
                           record_previous=record_previous)
        return CommitResult(root.old_hash, root.size, root.old_revision, len(written), written)

    def _finalize(self, o: _Open, store: StoreFn, now: int, written: list[ContentHash], *,
                  ttl: int | None = None, revision: int | None = None,
                  record_previous: bool = True) -> None:
        w = o.writer
        for d in o.touched_dirs:
            r = w.get(d)
            if r is not None and r.flags & Flags.DIR and not r.flags & Flags.NESTED_MOUNTPOINT:
                w.recount_dir_links(d)
        o.touched_dirs.clear()
        if o.mountpoint:
            parent = self._parent_of(o)
            root = w.get(o.mountpoint)
            parent.writer.replace(o.mountpoint, root.as_mountpoint())
        subtree = {f: o.old_subtree[f] + o.subtree_delta[f] for f in COUNTER_FIELDS}
        new_rev = revision if revision is not None else o.old_revision + 1
        counters = w.finalize(revision=new_rev, last_modified=now,
                              previous_revision=o.old_hash, ttl=ttl,
                              record_previous=record_previous,
                              children=[{f"subtree_{f}": v for f, v in subtree.items()}])
        w.close()
        data = o.file.read_bytes()
        h = store(compress(data), ObjectKind.CATALOG)
        written.append(h)
        new_totals = _totals(counters)
        if o.mountpoint:
            parent = self._parent_of(o)
            parent.writer.update_nested(o.mountpoint, h, len(data))
            parent.nested[o.mountpoint] = (h, len(data))
            for f in COUNTER_FIELDS:
                parent.subtree_delta[f] += new_totals[f] - o.old_totals[f]
            parent.dirty = True
        # reopen for further use in this session, now at its new state
        o.writer = CatalogWriter.open(o.file, what=f"catalog {h}C at {_show(o.mountpoint)}")
        o.old_hash, o.old_revision = h, new_rev
        o.old_totals, o.old_subtree = new_totals, subtree
        o.subtree_delta = _zero()
        o.dirty = False
        o.size = len(data)

    def close(self) -> None:
        for o in list(self._open.values()):
            with contextlib.suppress(Exception):  # closing is best effort
                o.writer.abort()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _row_dict(row: EntryRow) -> dict:
    return {f: getattr(row, f) for f in EntryRow.__slots__}


def _with(row: EntryRow, **changes) -> EntryRow:
    d = _row_dict(row)
    d.update(changes)
    return EntryRow(**d)

