"""A verified, read-only view of one revision: paths, listings, symlinks, xattrs and file reads."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pycvmfs.client.files import ReadAhead, RepoFile
from pycvmfs.client.stat import Stat
from pycvmfs.errors import (
    CatalogError,
    CvmfsError,
    FormatError,
    IsADirectoryPathError,
    NoSuchAttributeError,
    NoSuchPathError,
    NotADirectoryPathError,
    NotASymlinkError,
    TooManySymlinksError,
)
from pycvmfs.format.catalog import Catalog, Chunk, NestedRef
from pycvmfs.format.dirent import DirectoryEntry, expand_symlink
from pycvmfs.format.hashes import ContentHash, ObjectKind

__all__ = ["CatalogLoader", "LoadedCatalog", "RevisionView", "normalize_path"]

MAX_SYMLINKS = 40

#: load(hash, mountpoint, what) -> opened Catalog (downloaded and hash-verified)
CatalogLoader = Callable[[ContentHash, bytes, str], Catalog]


def normalize_path(path: str | bytes) -> bytes:
    """Repository path as catalogs key it: ``b""`` for the root, else ``/a/b`` (no ``.``/``//``)."""
    raw = os.fsencode(path)
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    return b"".join(b"/" + p for p in parts)


def _display(path: bytes) -> str:
    return os.fsdecode(path) or "/"


@dataclass
class LoadedCatalog:
    mountpoint: bytes
    catalog: Catalog
    ino_base: int
    max_rowid: int
    last_used: float = 0.0  # time.monotonic() of the last path resolved through it


class RevisionView:
    """One revision of a repository, every catalog and object verified against its parent.

    Paths are ``str`` (or ``bytes``) relative to the repository root; a leading ``/`` is optional.
    Symbolic links are followed inside the repository; absolute targets are followed when they
    point into ``/cvmfs/<fqrn>``. Variant symlinks are expanded with ``env`` (a mapping or a
    lookup function; default: the process environment).
    """

    def __init__(self, *, fqrn: str, root_hash: ContentHash, load_catalog: CatalogLoader,
                 fetch_object: Callable[[ContentHash, ObjectKind, DirectoryEntry, int],
                                        os.PathLike],
                 env: Callable[[str], str | None] | None = None, revision: int | None = None,
                 timestamp: int | None = None,
                 release_object: Callable[[ContentHash], None] | None = None,
                 lookup_object: Callable[[ContentHash], os.PathLike | None] | None = None
                 ) -> None:
        self.fqrn = fqrn
        self.root_hash = root_hash
        self._load = load_catalog
        self._fetch_object = fetch_object
        # set when fetch_object and load_catalog pin what they return: released on close
        self._release_object = release_object
        # cached-only lookup (pinned like fetch_object); lets a reader skip a thread hop
        self._lookup_object = lookup_object
        #: set by a reader (the FUSE mount) to download objects ahead of sequential reads
        self.readahead: ReadAhead | None = None
        self._pinned_catalogs: list[ContentHash] = []
        self._env = env if env is not None else os.environ.get
        self._lock = threading.RLock()
        self._catalogs: dict[bytes, LoadedCatalog] = {}
        # mount point -> inode base, kept when a catalog is dropped so a reload keeps numbers
        self._ino_bases: dict[bytes, int] = {}
        self._retired: list[tuple[float, LoadedCatalog]] = []  # dropped, closed after a grace
        self._next_ino = 256
        root = self._attach(b"", root_hash, f"root catalog {root_hash}C")
        self.root_catalog = root.catalog
        self.revision = revision if revision is not None else root.catalog.revision
        self.timestamp = timestamp
        self._repo_prefix = b"/cvmfs/" + fqrn.encode()

    # -- catalogs ------------------------------------------------------------------------
    def _attach(self, mountpoint: bytes, h: ContentHash, what: str) -> LoadedCatalog:
        # loaded checked to be mounted at its root_prefix, with its nested catalogs strictly
        # below it: every step of _catalog_for goes deeper, no cycle, no spinning
        cat = self._load(h, mountpoint, what)
        self._pinned_catalogs.append(h)
        try:
            maxrow = cat.max_rowid()
            groups = cat.max_hardlink_group()
        except CvmfsError:
            cat.close()
            raise
        base = self._ino_bases.get(mountpoint)
        if base is None:
            base = self._ino_bases[mountpoint] = self._next_ino
            self._next_ino += maxrow + groups + 1
        loaded = LoadedCatalog(mountpoint, cat, base, maxrow, time.monotonic())
        self._catalogs[mountpoint] = loaded
        return loaded

    def _nested(self, parent: LoadedCatalog, ref: NestedRef) -> LoadedCatalog:
        got = self._catalogs.get(ref.path)
        if got is not None:
            return got
        with self._lock:
            got = self._catalogs.get(ref.path)
            if got is not None:
                return got
            if ref.hash is None:
                raise CatalogError(f"{parent.catalog.what}: nested catalog {_display(ref.path)!r} "
                                   "has no hash")
            return self._attach(ref.path, ref.hash,
                                f"nested catalog {ref.hash}C at {_display(ref.path)}")

    def _catalog_for(self, path: bytes, *, into_mountpoint: bool,
                     load: bool = True) -> LoadedCatalog | None:
        """The catalog holding ``path`` (for a mount point: the child if ``into_mountpoint``);
        None if it is not loaded and ``load`` is false."""
        now = time.monotonic()
        cur = self._catalogs[b""]
        while True:
            cur.last_used = now
            ref = cur.catalog.find_nested(path)
            if ref is None or (ref.path == path and not into_mountpoint):
                return cur
            if not load and ref.path not in self._catalogs:
                return None
            cur = self._nested(cur, ref)

    def catalogs(self) -> Iterator[tuple[bytes, Catalog]]:
        """Every catalog of the revision, depth first, loading (and verifying) each one."""
        stack = [self._catalogs[b""]]
        while stack:
            cur = stack.pop()
            yield cur.mountpoint, cur.catalog
            for ref in reversed(cur.catalog.nested_catalogs()):
                stack.append(self._nested(cur, ref))

    def nested_hash(self, path: bytes) -> ContentHash | None:
        """The catalog hash mounted at ``path`` (the root hash for ``b""``), or None."""
        if path == b"":
            return self.root_hash
        ref = self._catalog_for(path, into_mountpoint=False).catalog.nested_at(path)
        return None if ref is None else ref.hash

    def loaded_catalog_count(self) -> int:
        return len(self._catalogs)

    def loaded_mountpoints(self) -> list[bytes]:
        """Mount points of the catalogs loaded now (``b""`` is the root)."""
        return list(self._catalogs)

    def idle_mountpoints(self, seconds: float) -> list[bytes]:
        """Loaded nested catalogs no path was resolved through for ``seconds``."""
        limit = time.monotonic() - seconds
        return [mp for mp, lc in list(self._catalogs.items()) if mp and lc.last_used < limit]

    def drop_catalog(self, mountpoint: bytes) -> bool:
        """Unload the nested catalog at ``mountpoint`` and those below it (the root stays): they
        are reloaded, verified again, on their next use. Their SQLite handles are closed and
        their cache pins released by :meth:`close_retired` after a grace period, so a lookup
        running in another thread never sees its catalog closed under it."""
        if not mountpoint:
            return False
        with self._lock:
            below = mountpoint + b"/"
            gone = [mp for mp in self._catalogs if mp == mountpoint or mp.startswith(below)]
            now = time.monotonic()
            for mp in gone:
                self._retired.append((now, self._catalogs.pop(mp)))
            return bool(gone)

    def has_retired(self) -> bool:
        return bool(self._retired)

    def close_retired(self, grace: float = 5.0) -> int:
        """Close catalogs dropped at least ``grace`` seconds ago; returns how many."""
        limit = time.monotonic() - grace
        with self._lock:
            done = [lc for t, lc in self._retired if t <= limit]
            self._retired = [(t, lc) for t, lc in self._retired if t > limit]
            for lc in done:
                self._release_catalog(lc)
        return len(done)

    def _release_catalog(self, lc: LoadedCatalog) -> None:
        lc.catalog.close()
        h = lc.catalog.hash
        if h is not None and h in self._pinned_catalogs:
            self._pinned_catalogs.remove(h)
            if self._release_object is not None:
                self._release_object(h)

    # -- path resolution -----------------------------------------------------------------
    def _entry_at(self, path: bytes) -> tuple[DirectoryEntry, LoadedCatalog]:
        lc = self._catalog_for(path, into_mountpoint=False)
        entry = lc.catalog.lookup(path)
        if entry is None:
            raise NoSuchPathError(_display(path))
        return entry, lc

    def _resolve(self, path: str | bytes, *, follow: bool) -> tuple[bytes, DirectoryEntry,
                                                                     LoadedCatalog]:
        try:
            return self._resolve_steps(path, follow=follow)
        except (NoSuchPathError, NotADirectoryPathError) as e:
            asked = _display(normalize_path(path))
            if e.filename == asked:
                raise
            err = type(e)(asked)
            err.strerror = f"{e.strerror} (resolving {e.filename})"
            raise err from None

    def _resolve_steps(self, path: str | bytes, *, follow: bool) -> tuple[bytes, DirectoryEntry,
                                                                          LoadedCatalog]:
        todo = deque(p for p in os.fsencode(path).split(b"/") if p and p != b".")
        cur = b""
        entry, lc = self._entry_at(b"")
        links = 0
        while todo:
            comp = todo.popleft()
            if comp == b"..":
                cur = cur[:cur.rfind(b"/")] if cur else b""
                entry, lc = self._entry_at(cur)
                continue
            if not entry.is_dir:
                raise NotADirectoryPathError(_display(cur))
            nxt = cur + b"/" + comp
            parent = (entry, lc)
            entry, lc = self._entry_at(nxt)
            if entry.is_symlink and (todo or follow):
                links += 1
                if links > MAX_SYMLINKS:
                    raise TooManySymlinksError(_display(nxt))
                target = expand_symlink(entry.symlink, self._env)
                if target.startswith(b"/"):
                    if target == self._repo_prefix or target.startswith(self._repo_prefix + b"/"):
                        target = target[len(self._repo_prefix):]
                    else:
                        raise NoSuchPathError(f"{_display(nxt)} -> {os.fsdecode(target)} "
                                              "(points outside the repository)")
                    cur = b""
                    entry, lc = self._entry_at(b"")
                else:
                    entry, lc = parent
                todo.extendleft(reversed([p for p in target.split(b"/") if p and p != b"."]))
                continue
            cur = nxt
        return cur, entry, lc

    def _stat(self, path: bytes, entry: DirectoryEntry, lc: LoadedCatalog) -> Stat:
        if entry.hardlink_group:
            ino = lc.ino_base + lc.max_rowid + entry.hardlink_group
        else:
            ino = lc.ino_base + entry.rowid
        target = expand_symlink(entry.symlink, self._env) if entry.is_symlink else None
        return Stat(_display(path), entry, ino, target)

    # -- public API ----------------------------------------------------------------------
    def stat(self, path: str | bytes = "/") -> Stat:
        """Attributes of ``path``, following symbolic links."""
        p, e, lc = self._resolve(path, follow=True)
        return self._stat(p, e, lc)

    def lstat(self, path: str | bytes = "/") -> Stat:
        """Attributes of ``path`` itself (a final symbolic link is not followed)."""
        p, e, lc = self._resolve(path, follow=False)
        return self._stat(p, e, lc)

    def lstat_canonical(self, path: bytes) -> Stat:
        """``lstat`` of a canonical path (``b""`` or ``b"/a/b"``, no ``.``/``..``, no symlink
        in it, as the FUSE mount has them): one keyed lookup instead of a walk from the root."""
        e, lc = self._entry_at(path)
        return self._stat(path, e, lc)

    def lstat_loaded(self, path: bytes) -> Stat | None:
        """:meth:`lstat_canonical` if the catalog holding ``path`` is loaded (no download, so
        callers may run it on an event loop), else None."""
        lc = self._catalog_for(path, into_mountpoint=False, load=False)
        if lc is None:
            return None
        entry = lc.catalog.lookup(path)
        if entry is None:
            raise NoSuchPathError(_display(path))
        return self._stat(path, entry, lc)

    def exists(self, path: str | bytes) -> bool:
        try:
            self.lstat(path)
        except (NoSuchPathError, NotADirectoryPathError):
            return False
        return True

    def scandir(self, path: str | bytes = "/", *, include_hidden: bool = False) -> list[Stat]:
        """The entries of a directory, sorted by name."""
        p, e, _ = self._resolve(path, follow=True)
        if not e.is_dir:
            raise NotADirectoryPathError(_display(p))
        lc = self._catalog_for(p, into_mountpoint=True)
        out = []
        for child in lc.catalog.listing(p):
            if child.is_hidden and not include_hidden:
                continue
            out.append(self._stat(p + b"/" + child.name, child, lc))
        return out

    def scandir_loaded(self, path: bytes) -> list[Stat] | None:
        """:meth:`scandir` of a canonical directory path (``b""`` or ``b"/a/b"``) if the
        catalog holding its entries is loaded, else None (never downloads: read-ahead uses it)."""
        lc = self._catalog_for(path, into_mountpoint=True, load=False)
        if lc is None:
            return None
        return [self._stat(path + b"/" + c.name, c, lc) for c in lc.catalog.listing(path)
                if not c.is_hidden]

    def chunks_loaded(self, path: bytes, entry: DirectoryEntry) -> list[Chunk] | None:
        """The chunk list of the chunked file ``entry`` at canonical ``path`` if its catalog is
        loaded, else None."""
        lc = self._catalog_for(path, into_mountpoint=False, load=False)
        return None if lc is None else lc.catalog.chunks(path, entry)

    def listdir(self, path: str | bytes = "/") -> list[str]:
        return [s.name for s in self.scandir(path)]

    def readlink(self, path: str | bytes, *, expand: bool = True) -> str:
        p, e, _ = self._resolve(path, follow=False)
        if not e.is_symlink:
            raise NotASymlinkError(_display(p))
        return os.fsdecode(expand_symlink(e.symlink, self._env) if expand else e.symlink)

    def chunks(self, path: str | bytes) -> list[Chunk]:
        """The chunk list of a chunked file (empty for an unchunked one)."""
        p, e, lc = self._resolve(path, follow=True)
        if not e.is_chunked:
            return []
        return lc.catalog.chunks(p, e)

    def open(self, path: str | bytes) -> RepoFile:
        """Open a regular file for reading (binary, seekable, fetching objects on demand)."""
        p, e, lc = self._resolve(path, follow=True)
        if e.is_dir:
            raise IsADirectoryPathError(_display(p))
        if not e.is_regular:
            raise NoSuchPathError(f"{_display(p)} (not a regular file)")
        chunks = lc.catalog.chunks(p, e) if e.is_chunked else None
        return self._repo_file(_display(p), e, chunks)

    def _repo_file(self, path: str, e: DirectoryEntry, chunks: list[Chunk] | None) -> RepoFile:
        look = self._lookup_object
        ahead = self.readahead
        return RepoFile(path, e, chunks,
                        lambda h, kind, size: self._fetch_object(h, kind, e, size),
                        self._release_object,
                        lookup=None if look is None else lambda h, kind: look(h),
                        readahead=None if ahead is None or chunks is None else ahead)

    def open_stat(self, s: Stat) -> RepoFile:
        """Open an unchunked regular file from a :class:`Stat` of this view without resolving
        its path again (the FUSE mount keeps the Stat of every inode)."""
        if not s.is_file or s.is_chunked:
            return self.open(s.path)
        return self._repo_file(s.path, s.entry, None)

    def fetch_file_object(self, e: DirectoryEntry) -> os.PathLike:
        """The verified, decompressed object of an unchunked regular file in the cache (pinned
        when the cache keeps a quota, until :meth:`release_file_object`)."""
        if e.hash is None or e.is_chunked or not e.is_regular:
            raise FormatError(f"{os.fsdecode(e.name)}: not an unchunked regular file")
        return self._fetch_object(e.hash, ObjectKind.FILE, e, e.size)

    def release_file_object(self, e: DirectoryEntry) -> None:
        """Release the pin taken by :meth:`fetch_file_object`."""
        if self._release_object is not None and e.hash is not None:
            self._release_object(e.hash)

    def read_bytes(self, path: str | bytes) -> bytes:
        with self.open(path) as f:
            return f.read()

    def listxattr(self, path: str | bytes, *, follow_symlinks: bool = True) -> list[str]:
        p, e, lc = self._resolve(path, follow=follow_symlinks)
        return sorted(os.fsdecode(k) for k in e.xattrs(what=f"{lc.catalog.what} {_display(p)}"))

    def getxattr(self, path: str | bytes, name: str, *, follow_symlinks: bool = True) -> bytes:
        p, e, lc = self._resolve(path, follow=follow_symlinks)
        attrs = e.xattrs(what=f"{lc.catalog.what} {_display(p)}")
        try:
            return attrs[os.fsencode(name)]
        except KeyError:
            raise NoSuchAttributeError(_display(p), name) from None

    def xattrs(self, path: str | bytes, *, follow_symlinks: bool = True) -> dict[str, bytes]:
        p, e, lc = self._resolve(path, follow=follow_symlinks)
        return {os.fsdecode(k): v
                for k, v in e.xattrs(what=f"{lc.catalog.what} {_display(p)}").items()}

    def walk(self, top: str | bytes = "/") -> Iterator[tuple[str, list[Stat], list[Stat]]]:
        """Like ``os.walk`` (top-down, links to directories not followed), yielding
        ``(dirpath, dir stats, non-dir stats)``."""
        start = self.stat(top)
        if not start.is_dir:
            raise NotADirectoryPathError(start.path)
        first = normalize_path(start.path)
        # each directory listed in the catalog that holds its parent's listing, or in the one
        # mounted on it: no lookup from the root per directory (linear in the tree's depth)
        stack = [(first, self._catalog_for(first, into_mountpoint=True))]
        while stack:
            d, lc = stack.pop()
            entries = [self._stat(d + b"/" + c.name, c, lc) for c in lc.catalog.listing(d)
                       if not c.is_hidden]
            dirs = [s for s in entries if s.is_dir]
            files = [s for s in entries if not s.is_dir]
            yield _display(d), dirs, files
            for s in reversed(dirs):
                child = d + b"/" + s.entry.name
                ref = lc.catalog.nested_at(child)
                stack.append((child, lc if ref is None else self._nested(lc, ref)))

    def close(self) -> None:
        with self._lock:
            for lc in self._catalogs.values():
                lc.catalog.close()
            for _t, lc in self._retired:
                lc.catalog.close()
            self._catalogs.clear()
            self._retired.clear()
            pinned, self._pinned_catalogs = self._pinned_catalogs, []
            if self._release_object is not None:
                for h in pinned:
                    self._release_object(h)

    def __enter__(self) -> RevisionView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
