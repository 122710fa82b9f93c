"""The FUSE file system: a read-only mount of a verified repository through libfuse3.

The requests arrive through :mod:`pycvmfs.client._fuse_lowlevel` (a small C binding of
libfuse3's low-level API): reads of cached objects, directory opens and the kernel's caches are
handled there without Python; the methods of :class:`CvmfsFilesystem` answer the rest, in
worker threads (a request that downloads blocks only its own thread)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pycvmfs import __version__
from pycvmfs.client import _fuse_lowlevel
from pycvmfs.client.fetcher import FetchProcess
from pycvmfs.client.files import Prefetcher, RepoFile, open_cached_object
from pycvmfs.client.repository import Repository
from pycvmfs.client.stat import IdMap, Ownership, Stat
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import CvmfsError, NoSuchPathError, PathError
from pycvmfs.format.compression import Compression
from pycvmfs.format.dirent import Flags
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource

__all__ = ["CvmfsFilesystem", "MountOptions", "run_mount", "unescape_mountinfo"]

log = logging.getLogger("pycvmfs.fuse")

ROOT_INODE = _fuse_lowlevel.ROOT_INODE

_MAGIC_ROOT = ("user.fqrn", "user.revision", "user.root_hash", "user.host", "user.proxy",
               "user.expires", "user.nclg", "user.nioerr", "user.version", "user.uptime",
               "user.timestamp", "user.pid", "user.fuse_requests")
_MAGIC_FILE = ("user.hash", "user.lhash", "user.chunks", "user.compression")
_MAGIC_HASH = ("user.hash", "user.lhash")  # only for entries with a content hash


class FuseError(OSError):
    """The error number a request is answered with (raised by a handler)."""

    def __init__(self, number: int) -> None:
        super().__init__(number, os.strerror(number))


@dataclass
class MountOptions:
    ttl: int | None = None  # manifest re-check period; None: the root catalog's TTL
    max_ttl: int | None = None  # CVMFS_MAX_TTL cap
    #: CVMFS_KCACHE_TIMEOUT: seconds the kernel keeps names, attributes and missing names
    #: (whatever it keeps is dropped at a revision switch anyway)
    kcache_timeout: float = 60.0
    allow_other: bool = False
    debug: bool = False
    selector: dict = field(default_factory=dict)  # tag / revision / root_hash / date: pinned
    prefetch_workers: int = 6  # read-ahead threads (0: no read-ahead; HTTP: batch transfers)
    prefetch_process: bool = True  # over HTTP: read-ahead in a child process (2nd core)
    catalog_idle: float = 600.0  # unload nested catalogs unused this long (0: never by time)
    threads: int = 8  # threads answering FUSE requests (a download blocks only its own)
    #: CVMFS_MAGIC_XATTRS_VISIBILITY: where listxattr shows the magic attributes (rootonly,
    #: never, always; they can always be read by name)
    magic_xattrs: str = "rootonly"
    #: CVMFS_CLAIM_OWNERSHIP: every entry owned by the mounting user (the stock default);
    #: False: the catalog's owners, mapped by ``uid_map`` / ``gid_map`` (CVMFS_UID/GID_MAP)
    claim_ownership: bool = True
    uid_map: IdMap | None = None
    gid_map: IdMap | None = None
    world_readable: bool = False  # CVMFS_WORLD_READABLE: r (r-x for directories) for all
    #: CVMFS_CHECK_PERMISSIONS: the kernel checks modes and owners (default_permissions)
    check_permissions: bool = True


#: a sequential scan of a directory downloads the next files of its listing ahead of the reader
PREFETCH_FILES = 256
PREFETCH_MAX_SIZE = 4 << 20  # unchunked files up to this size
#: files of a listing an open may skip and still count as sequential (the skipped ones must be
#: in the cache: the C session opened them without asking Python)
SEQUENTIAL_GAP = 64
#: a tree scan reads ahead this far in the order of a depth-first walk (entries, bytes), and
#: the first chunks of a chunked file (sequential reads of it fetch the next ones)
TREE_AHEAD_ENTRIES = 512
TREE_AHEAD_BYTES = 64 << 20
TREE_AHEAD_CHUNKS = 2
WALK_MAX_DIRS = 1 << 20  # a walk remembers where it entered this many directories at most
#: after files were read in listing order, the next directories listed within this many
#: seconds are read ahead from their first file
SCAN_GRACE = 2.0
#: read-ahead over HTTP: transfers at once, and requests queued at most
BATCH_PARALLEL = 16
BATCH_BACKLOG = 128
_JANITOR_PERIOD = 2.0  # seconds between closing dropped catalogs / unloading idle ones
_RETIRE_GRACE = 5.0  # a dropped catalog is closed this long after no lookup can reach it
NEGATIVE_MAX = 65536  # names that do not exist kept in the kernel's cache at most
_STOP_WAIT = 10.0  # seconds the worker threads get to finish their requests at unmount


def _make_prefetcher(repo: Repository, workers: int,
                     in_process: bool = False) -> Prefetcher | FetchProcess:
    """Read-ahead for a mount: over HTTP as batch transfers (many at once on keep-alive
    connections, the HTTP work in C), in a child process unless ``in_process``; else in
    ``workers`` threads."""
    cache, source = repo.cache, repo.source

    def fetch(h: ContentHash, kind: ObjectKind, comp: Compression, size: int | None) -> Path:
        return cache.fetch(source, h, kind, comp, max_size=size)

    if isinstance(source, HttpSource):
        if not in_process:
            return FetchProcess(source, cache, parallel=BATCH_PARALLEL)
        batch = BatchFetcher(source, parallel=BATCH_PARALLEL,
                             on_error=lambda e: log.warning("read-ahead: %s", e))
        return Prefetcher(fetch, cache.contains, batch=batch, begin=cache.begin_download,
                          backlog=BATCH_BACKLOG)
    return Prefetcher(fetch, cache.contains, workers=workers)


class _Listing:
    """A directory listing of one revision, with the reply attributes computed once."""

    __slots__ = ("ahead", "attrs", "entries", "first_file", "index", "last_opened")

    def __init__(self, entries: list[Stat]) -> None:
        self.entries = entries
        self.attrs: list[tuple | None] = [None] * len(entries)
        self.index: dict[bytes, int] | None = None  # name -> position, built on first open
        self.first_file = -1  # position of the first regular file
        self.last_opened = -2  # position of the file opened last (sequential-scan detection)
        self.ahead = -1  # files up to this position were handed to read-ahead

    def position(self, name: bytes) -> int | None:
        if self.index is None:
            self.index = {s.entry.name: i for i, s in enumerate(self.entries)}
            self.first_file = next((i for i, s in enumerate(self.entries) if s.is_file), -1)
        return self.index.get(name)


class _CatalogUse:
    """Which nested catalogs the kernel still needs: for each catalog mount point, how many
    inodes below it the kernel holds (lookup counts, FUSE ``forget``) and how many files and
    directories below it are open. A catalog nobody needs is unloaded; it is loaded (and
    verified) again on its next use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # requests arrive in several threads
        self.nlookup: dict[int, int] = {}
        self.mps_of: dict[int, tuple[bytes, ...]] = {}  # inode -> mount points it counts in
        self.refs: dict[bytes, int] = {}
        self.open_refs: dict[bytes, int] = {}

    @staticmethod
    def covering(path: bytes, known: set[bytes] | frozenset[bytes]) -> tuple[bytes, ...]:
        if not known or not path:
            return ()
        out = []
        cut = len(path)
        while cut > 0:
            prefix = path[:cut]
            if prefix in known:
                out.append(prefix)
            cut = path.rfind(b"/", 0, cut)
        return tuple(out)

    def looked_up(self, ino: int, path: bytes, known: set[bytes]) -> None:
        with self._lock:
            n = self.nlookup.get(ino, 0)
            self.nlookup[ino] = n + 1
            if n == 0:
                mps = self.covering(path, known)
                if mps:
                    self.mps_of[ino] = mps
                    for mp in mps:
                        self.refs[mp] = self.refs.get(mp, 0) + 1

    def forget(self, ino: int, n: int) -> tuple[bytes, ...]:
        """Lower ``ino``'s lookup count; the mount points that lost their last reference."""
        with self._lock:
            left = self.nlookup.get(ino, 0) - n
            if left > 0:
                self.nlookup[ino] = left
                return ()
            self.nlookup.pop(ino, None)
            freed = []
            for mp in self.mps_of.pop(ino, ()):
                r = self.refs.get(mp, 0) - 1
                if r > 0:
                    self.refs[mp] = r
                else:
                    self.refs.pop(mp, None)
                    freed.append(mp)
            return tuple(freed)

    def opened(self, mps: tuple[bytes, ...]) -> None:
        with self._lock:
            for mp in mps:
                self.open_refs[mp] = self.open_refs.get(mp, 0) + 1

    def closed(self, mps: tuple[bytes, ...]) -> None:
        with self._lock:
            for mp in mps:
                r = self.open_refs.get(mp, 0) - 1
                if r > 0:
                    self.open_refs[mp] = r
                else:
                    self.open_refs.pop(mp, None)

    def needed(self, mp: bytes, *, kernel: bool = True) -> bool:
        """Whether anything at or below mount point ``mp`` is held (open, or known to the
        kernel unless ``kernel`` is false)."""
        below = mp + b"/"
        with self._lock:
            tables = (self.open_refs, self.refs) if kernel else (self.open_refs,)
            return any(m == mp or m.startswith(below) for t in tables for m in t)


class _Inodes:
    """Kernel inode numbers. A directory keeps one number per path across revisions; a file
    or link gets one per path *and content*, and remembers the revision it came from, so the
    kernel's page cache of an inode never mixes two contents and open files keep theirs.
    Members of a hard-link group share one number."""

    def __init__(self) -> None:
        self._by_key: dict[object, int] = {b"": ROOT_INODE}
        self._paths: dict[int, bytes] = {ROOT_INODE: b""}
        self._origin: dict[int, tuple[RevisionView, Stat]] = {}
        self._next = ROOT_INODE + 1
        self._lock = threading.Lock()

    def for_stat(self, path: bytes, s: Stat, view: RevisionView, generation: int) -> int:
        if s.is_dir:
            key: object = path
        elif s.hardlink_group:
            key = ("hl", generation, s.st_ino)
        else:
            key = ("f", path, s.entry.mode, s.entry.size, s.entry.mtime, s.entry.hash,
                   s.entry.symlink, generation if s.is_chunked else None)
        with self._lock:
            ino = self._by_key.get(key)
            if ino is None:
                ino = self._next
                self._next += 1
                self._by_key[key] = ino
                self._paths[ino] = path
                if not s.is_dir:
                    self._origin[ino] = (view, s)
        return ino

    def names(self) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every path handed to the kernel."""
        with self._lock:
            paths = set(self._paths.values())
            out = []
            for path in paths:
                if not path:
                    continue
                parent = self._by_key.get(path[:path.rfind(b"/")])
                if parent is not None:
                    out.append((parent, path[path.rfind(b"/") + 1:]))
            return out

    def directories(self) -> list[int]:
        """Inode numbers of every directory handed to the kernel."""
        with self._lock:
            return [ino for ino in self._paths if ino not in self._origin]

    def path(self, ino: int) -> bytes:
        try:
            return self._paths[ino]
        except KeyError:
            raise FuseError(errno.ESTALE) from None

    def origin(self, ino: int) -> tuple[RevisionView, Stat] | None:
        """For a file or link: the revision and attributes it was looked up in."""
        return self._origin.get(ino)


class _OpenFile:
    """What an open file holds besides its descriptor: the reader of a chunked file (None for
    a whole cached object, read in C), the object pinned for it, and the nested-catalog mount
    points it keeps loaded."""

    __slots__ = ("file", "mps", "pinned")

    def __init__(self, file: RepoFile | None, pinned, mps: tuple[bytes, ...]) -> None:
        self.file = file
        self.pinned = pinned
        self.mps = mps


class _TreeWalk:
    """A depth-first walk of a revision in listing order, from a directory on (and after it:
    what follows in its parent's listing, and so on upwards), handing regular files to
    read-ahead as it passes them. It only goes into listings readable without a download
    (loaded catalogs) and stops at the end of the tree or after WALK_MAX_DIRS directories."""

    def __init__(self, fs: CvmfsFilesystem, view: RevisionView, path: bytes,
                 listing: _Listing) -> None:
        self.fs, self.view = fs, view
        self.count = 0  # entries passed
        self.bytes = 0  # bytes handed over
        #: directory -> (entries passed, bytes handed over) when the walk entered it
        self.entered: dict[bytes, tuple[int, int]] = {path: (0, 0)}
        stack: list[tuple[bytes, _Listing, int]] = []
        child = path
        while child:  # what comes after the directory, outermost last
            parent = child[:child.rfind(b"/")]
            up = fs._cached_listing(view, parent)
            pos = None if up is None else up.position(child[child.rfind(b"/") + 1:])
            if pos is None:
                break
            stack.append((parent, up, pos + 1))
            child = parent
        stack.reverse()
        stack.append((path, listing, 0))
        self.stack = stack

    def advance(self, until: int, bytes_until: int, prefetcher) -> None:
        """Walk on until ``until`` entries were passed, ``bytes_until`` bytes were handed over
        (both counted from the walk's start), or the read-ahead queue is full."""
        fs, view, stack = self.fs, self.view, self.stack
        while (stack and self.count < until and self.bytes < bytes_until
               and len(self.entered) < WALK_MAX_DIRS):
            where, cur, i = stack.pop()
            entries = cur.entries
            while i < len(entries):
                if self.count >= until or self.bytes >= bytes_until or not prefetcher.has_room():
                    stack.append((where, cur, i))  # go on from here next time
                    return
                s = entries[i]
                i += 1
                self.count += 1
                e = s.entry
                flags = e.flags
                if flags & Flags.DIR:
                    sub_path = where + b"/" + e.name
                    sub = fs._cached_listing(view, sub_path)
                    if sub is not None:
                        self.entered[sub_path] = (self.count, self.bytes)
                        stack.append((where, cur, i))
                        stack.append((sub_path, sub, 0))
                        break
                    continue
                if not e.is_regular or flags & Flags.EXTERNAL or e.size == 0:
                    continue
                if not flags & Flags.CHUNKED:
                    if e.size <= PREFETCH_MAX_SIZE and e.hash is not None:
                        prefetcher.submit(e.hash, ObjectKind.FILE, e.compression, e.size)
                        self.bytes += e.size
                    continue
                chunks = view.chunks_loaded(where + b"/" + e.name, e) or []
                for c in chunks[:TREE_AHEAD_CHUNKS]:  # the reader's read-ahead does the rest
                    if c.hash is not None:
                        prefetcher.submit(c.hash, ObjectKind.PARTIAL, e.compression, c.size)
                        self.bytes += c.size


def _handler(fn):
    """A request handler: repository errors become error numbers (I/O errors are counted and
    logged, a path that does not resolve is simply ENOENT); one bad request never ends the
    mount."""

    def run(self, *args):
        try:
            return fn(self, *args)
        except FuseError:
            raise
        except PathError as e:
            raise FuseError(e.errno or errno.ENOENT) from None
        except CvmfsError as e:
            self.io_errors += 1
            log.error("%s: %s", fn.__name__, e)
            raise FuseError(errno.EIO) from None
        except Exception:
            self.io_errors += 1
            log.exception("%s%r failed", fn.__name__, args[:2])
            raise FuseError(errno.EIO) from None

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


class CvmfsFilesystem:
    """Serves one repository; a newer revision becomes visible to new lookups after the TTL
    while files already open keep reading the revision they were opened in.

    The methods under "requests" are called by the C session from its worker threads, with
    plain arguments; attributes are answered as the tuple of :meth:`_attrs`."""

    def __init__(self, repo: Repository, options: MountOptions | None = None) -> None:
        self.repo = repo
        self.options = options or MountOptions()
        self.started = time.time()
        self._ttl = 0
        self._ttl_for: RevisionView | None = None
        self.generation = 0
        self.view: RevisionView = repo.open_revision(**self.options.selector)
        o = self.options
        self.ownership = Ownership((os.geteuid(), os.getegid()) if o.claim_ownership else None,
                                   o.uid_map, o.gid_map, o.world_readable)
        self._views = [self.view]
        self.inodes = _Inodes()
        self._listings: dict[tuple[int, bytes], _Listing] = {}  # (view, dir) -> listing
        self.use = _CatalogUse()
        self._mountpoints: set[bytes] = set()  # nested catalog mount points seen so far
        self._forgotten: set[bytes] = set()  # mount points whose last inode was forgotten
        self._negatives: set[tuple[int, bytes]] = set()  # names the kernel knows are missing
        self._pins = repo.cache.quota is not None  # whether open objects are pinned
        self._object_file = repo.cache.object_file_bytes
        self.prefetcher: Prefetcher | FetchProcess | None = None
        if self.options.prefetch_workers > 0:
            self.prefetcher = _make_prefetcher(repo, self.options.prefetch_workers,
                                               not self.options.prefetch_process)
            self.view.readahead = self._urgent_readahead
        self._lock = threading.Lock()
        self.expires = time.time() + self.ttl
        self.io_errors = 0
        self._scan_until = 0.0  # sequential reading was seen until this long ago
        self.session: _fuse_lowlevel.Session | None = None
        self._walk: _TreeWalk | None = None  # the read-ahead of a tree scan
        self._walk_lock = threading.Lock()

    def _urgent_readahead(self, h: ContentHash, kind: ObjectKind, compression: Compression,
                          size: int | None) -> object:
        """Read-ahead of a file being read (the next chunks): ahead of a tree scan's."""
        assert self.prefetcher is not None
        return self.prefetcher.submit(h, kind, compression, size, urgent=True)

    # -- revisions -----------------------------------------------------------------------
    @property
    def ttl(self) -> int:
        if self._ttl_for is self.view:
            return self._ttl
        self._ttl = self._compute_ttl()
        self._ttl_for = self.view
        return self._ttl

    def _compute_ttl(self) -> int:
        ttl = self.options.ttl or self.view.root_catalog.ttl or 240
        if self.options.max_ttl:
            ttl = min(ttl, self.options.max_ttl)
        return max(1, ttl)

    def check_for_update(self) -> bool:
        """Re-read the manifest; switch to a newer revision (never an older one)."""
        if self.options.selector:
            return False  # pinned by tag / revision / hash / date
        try:
            state = self.repo.refresh()
        except CvmfsError as e:
            log.warning("keeping revision %s: %s", self.view.revision, e)
            self.expires = time.time() + min(self.ttl, 180)
            return False
        self.expires = time.time() + self.ttl
        m = state.manifest
        if m.root_catalog == self.view.root_hash or m.revision <= (self.view.revision or 0):
            return False
        new = self.repo.open_revision()
        if self.prefetcher is not None:
            new.readahead = self._urgent_readahead
        with self._lock:
            self.view = new
            self._views.append(new)
            self.generation += 1
        log.info("now serving revision %s (%s)", new.revision, new.root_hash)
        self._invalidate_kernel_caches()
        return True

    def _invalidate_kernel_caches(self) -> None:
        """Ask the kernel to forget every name and directory listing it cached, so the next
        access of any path looks it up in the new revision (open files keep their inodes and
        contents; a file's inode number is bound to its content, a directory's is not)."""
        session = self.session
        if session is None:
            return
        with self._lock:
            negatives, self._negatives = self._negatives, set()
        try:
            for parent, name in [*self.inodes.names(), *negatives]:
                session.invalidate_entry(parent, name)
            for ino in self.inodes.directories():
                session.invalidate_inode(ino)
        except OSError as e:
            log.warning("invalidating the kernel's caches: %s", e)

    # -- nested catalogs: loaded on first use, dropped when unused -----------------------
    def _note_mountpoints(self, view: RevisionView) -> None:
        """Remember the mount points of nested catalogs loaded (after work that may load)."""
        self._mountpoints.update(mp for mp in view.loaded_mountpoints() if mp)

    def unneeded_catalogs(self) -> list[bytes]:
        """Mount points to unload now: those whose inodes the kernel forgot, and those idle
        for ``catalog_idle`` seconds, unless a file or directory below them is open (or, for
        the first kind, the kernel learnt of an inode below them again)."""
        with self._lock:
            pending, self._forgotten = self._forgotten, set()
        out = [mp for mp in pending if not self.use.needed(mp)]
        if self.options.catalog_idle > 0:
            for v in list(self._views):
                out += [mp for mp in v.idle_mountpoints(self.options.catalog_idle)
                        if not self.use.needed(mp, kernel=False)]
        return out

    def drop_catalogs(self, mountpoints: list[bytes]) -> int:
        """Unload the catalogs at ``mountpoints`` (and below) in every revision served, and
        close those dropped more than a grace period ago; returns how many were dropped."""
        dropped = 0
        for mp in dict.fromkeys(mountpoints):
            for v in list(self._views):
                if v.drop_catalog(mp):
                    dropped += 1
                    log.debug("unloaded nested catalog %s", os.fsdecode(mp))
        for v in list(self._views):
            v.close_retired(_RETIRE_GRACE)
        return dropped

    def housekeeping(self) -> None:
        """The periodic work: unload unneeded catalogs, re-check the manifest when due."""
        todo = self.unneeded_catalogs()
        if todo or any(v.has_retired() for v in self._views):
            self.drop_catalogs(todo)
        if time.time() >= self.expires:
            self.check_for_update()

    def _looked_up(self, ino: int, path: bytes) -> None:
        self.use.looked_up(ino, path, self._mountpoints)

    # -- helpers -------------------------------------------------------------------------
    def _attrs(self, s: Stat, ino: int) -> tuple:
        """The attribute tuple of the C session; for an unchunked regular file opened without
        bookkeeping (no cache quota to pin its object in), an 11th item: the path of its
        verified object in the cache, which the session then opens by itself (see
        ``_fuse_lowlevel.c``; an object only appears under that name once its hash was
        checked)."""
        e = s.entry
        size = s.st_size
        uid, gid = self.ownership.owner(e)
        # st_blocks as the stock client reports it (DirectoryEntry::GetStatStructure)
        attrs = (ino, self.ownership.mode(e), e.linkcount, uid, gid, e.rdev, size,
                 1 + size // 512,
                 e.mtime * 1_000_000_000 + (e.mtimens or 0), self.options.kcache_timeout)
        if (not self._pins and size > 0 and e.hash is not None and e.is_regular
                and not e.flags & (Flags.CHUNKED | Flags.EXTERNAL)):
            return (*attrs, self._object_file(e.hash))
        return attrs

    def _stat(self, view: RevisionView, path: bytes) -> Stat:
        """The attributes of a canonical path; notes nested catalogs the lookup loaded."""
        before = view.loaded_catalog_count()
        s = view.lstat_canonical(path)
        if view.loaded_catalog_count() != before:
            self._note_mountpoints(view)
        return s

    # -- requests ------------------------------------------------------------------------
    @_handler
    def lookup(self, parent_inode: int, name: bytes) -> tuple:
        parent = self.inodes.path(parent_inode)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent[:parent.rfind(b"/")] if parent else b""
        else:
            path = parent + b"/" + name
        with self._lock:  # one pair: a revision switch may come between two reads
            view, generation = self.view, self.generation
        try:
            s = self._stat(view, path)
        except NoSuchPathError:
            return self._negative(parent_inode, name)
        ino = self.inodes.for_stat(path, s, view, generation)
        self._looked_up(ino, path)
        return self._attrs(s, ino)

    def _negative(self, parent_inode: int, name: bytes) -> tuple:
        """The answer for a name that does not exist: an entry of inode 0, which the kernel
        keeps as a negative entry (a search path probing a directory asks once).
        Such names are remembered, to be dropped from the kernel at a revision switch; past
        NEGATIVE_MAX of them, the kernel is told not to keep them."""
        with self._lock:
            keep = len(self._negatives) < NEGATIVE_MAX
            if keep:
                self._negatives.add((parent_inode, name))
        return (0, 0, 0, 0, 0, 0, 0, 0, 0, self.options.kcache_timeout if keep else 0.0)

    @_handler
    def forget(self, inodes: list[tuple[int, int]]) -> None:
        freed = []
        for ino, n in inodes:
            freed.extend(self.use.forget(ino, n))
        if freed:
            with self._lock:
                self._forgotten.update(freed)

    @_handler
    def getattr(self, inode: int) -> tuple:
        origin = self.inodes.origin(inode)
        if origin is not None:
            return self._attrs(origin[1], inode)
        return self._attrs(self._stat(self.view, self.inodes.path(inode)), inode)

    @_handler
    def readlink(self, inode: int) -> bytes:
        origin = self.inodes.origin(inode)
        s = origin[1] if origin else self._stat(self.view, self.inodes.path(inode))
        if not s.is_symlink:
            raise FuseError(errno.EINVAL)
        return s.symlink_target or b""

    @_handler
    def open(self, inode: int, flags: int) -> tuple:
        """(what :meth:`release` gets, or None; the descriptor of the cached object that the
        session reads in C, or -1 for reads through :meth:`read` [; for a chunked file, its
        chunk offsets: the session reads its chunks in C, asking :meth:`chunk` for each]).
        A whole-file object is downloaded (and verified) here, as the stock client does."""
        path = self.inodes.path(inode)
        origin = self.inodes.origin(inode)
        view = origin[0] if origin else self.view
        s = origin[1] if origin else self._stat(view, path)
        if s.is_dir:
            raise FuseError(errno.EISDIR)
        mps = _CatalogUse.covering(path, self._mountpoints)
        e = s.entry
        if s.is_file and not e.is_chunked and not e.is_external and e.hash is not None:
            if self.prefetcher is not None:
                self._prefetch_siblings(view, path)
            if e.size == 0:
                handle = _OpenFile(None, None, mps) if mps else None
            else:
                fd = self._open_object(view, s)
                if not (self._pins or mps):
                    return None, fd
                handle = _OpenFile(None, e.hash if self._pins else None, mps)
                self.use.opened(mps)
                return handle, fd
        else:
            f = view.open(path)
            self._note_mountpoints(view)
            handle = _OpenFile(f, None, mps)
            offsets = f.chunk_offsets()
            if offsets is not None:  # read in C, chunk by chunk (see chunk())
                self.use.opened(mps)
                return handle, -1, offsets
        if handle is not None:
            self.use.opened(mps)
        return handle, -1

    def _open_object(self, view: RevisionView, s: Stat) -> int:
        """A descriptor of the (pinned, with a quota) cached object of an unchunked file."""
        e = s.entry
        where = view.fetch_file_object(e)
        try:
            fd = open_cached_object(where, e.size, f"{s.path}: cached object {e.hash}")
        except BaseException:
            view.release_file_object(e)
            raise
        if not self._pins:
            view.release_file_object(e)  # (a no-op without a quota)
        return fd

    @_handler
    def read(self, handle: _OpenFile | None, offset: int, size: int) -> bytes:
        if handle is None or handle.file is None:
            return b""  # an empty file
        return handle.file.pread(size, offset)

    @_handler
    def chunk(self, handle: _OpenFile, index: int) -> int:
        """A new descriptor of chunk ``index`` of an open chunked file: its verified object
        in the cache (downloaded here if needed; pinned until :meth:`chunk_done`)."""
        if handle.file is None:
            raise FuseError(errno.EBADF)
        return handle.file.open_chunk(index)

    @_handler
    def chunk_done(self, handle: _OpenFile, index: int) -> None:
        """The session closed the descriptor of chunk ``index`` that :meth:`chunk` gave."""
        if handle.file is not None:
            handle.file.close_chunk(index)

    @_handler
    def release(self, handle: _OpenFile) -> None:
        if handle.file is not None:
            handle.file.close()
        if handle.pinned is not None:
            self.repo.cache.unpin(handle.pinned)
        self.use.closed(handle.mps)

    @_handler
    def readdir(self, inode: int, offset: int, buf) -> None:
        """Entries of a listing from ``offset``, which names the revision and the position:
        ``generation << 32 | index`` (0: the start, in the revision served now), so a listing
        read in several requests stays one revision's without any per-open state."""
        if offset == 0:
            with self._lock:
                view, generation = self.view, self.generation
            start = 0
        else:
            generation, start = offset >> 32, offset & 0xFFFFFFFF
            if generation >= len(self._views):
                raise FuseError(errno.EINVAL)
            view = self._views[generation]
        path = self.inodes.path(inode)
        listing = self._listing(view, path)
        if (offset == 0 and self.prefetcher is not None
                and time.monotonic() < self._scan_until):
            # a tree scan (tar, cp -r) lists a directory and then reads what is below it:
            # start on that now, in the order of the walk, so no directory starts cold
            self._prefetch_tree(view, path, listing)
        entries, attrs = listing.entries, listing.attrs
        plus = buf.plus
        base = generation << 32
        added = []
        for i in range(start, len(entries)):
            s = entries[i]
            a = attrs[i]
            if a is None:
                path = os.fsencode(s.path) if s.path != "/" else b""
                a = attrs[i] = self._attrs(s, self.inodes.for_stat(path, s, view, generation))
            if not buf.add(s.entry.name, a, base | (i + 1)):
                break
            if plus:
                added.append((a[0], s.path))
        # readdirplus: the kernel counts every entry of the reply as a lookup; counted here
        # only once the reply is complete (an exception above answers the request with an
        # error, and the kernel counts nothing; a reply that fails is forgotten by the C side)
        for ino, entry_path in added:
            self._looked_up(ino, os.fsencode(entry_path))

    def _listing(self, view: RevisionView, path: bytes) -> _Listing:
        key = (id(view), path)
        listing = self._listings.get(key)
        if listing is None:  # a revision is immutable: listings can be reused
            before = view.loaded_catalog_count()
            listing = _Listing(view.scandir(path or b"/"))
            if view.loaded_catalog_count() != before:
                self._note_mountpoints(view)
            with self._lock:
                if len(self._listings) >= 4096:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[key] = listing
        return listing

    @_handler
    def statfs(self, inode: int) -> tuple[int, int, int]:
        stats = self.view.root_catalog.statistics()
        entries = sum(stats[f"{s}_{k}"] for s in ("self", "subtree")
                      for k in ("regular", "symlink", "special", "dir"))
        return entries, 4096, 255

    def _xattr_stat(self, inode: int) -> tuple[bytes, RevisionView, Stat]:
        """A file's revision and attributes as it was looked up (a file kept open across a
        revision switch shows its own), else the path's in the revision served now."""
        path = self.inodes.path(inode)
        origin = self.inodes.origin(inode)
        if origin is not None:
            return path, origin[0], origin[1]
        view = self.view
        return path, view, self._stat(view, path)

    @_handler
    def getxattr(self, inode: int, name: bytes) -> bytes:
        key = os.fsdecode(name)
        path, view, s = self._xattr_stat(inode)
        value = self._magic(path, view, s, key) if key in _MAGIC_ROOT + _MAGIC_FILE else None
        if value is not None:
            return value
        stored = s.entry.xattrs(what=os.fsdecode(path))
        if name in stored:
            return stored[name]
        raise FuseError(errno.ENODATA)

    @_handler
    def listxattr(self, inode: int) -> list[bytes]:
        path, _view, s = self._xattr_stat(inode)
        if not (s.is_file or s.is_dir):
            return []  # the kernel lets nobody read user.* of symlinks and special files
        names = list(s.entry.xattrs(what=os.fsdecode(path)))
        visibility = self.options.magic_xattrs
        if visibility == "never" or (visibility == "rootonly" and path):
            return names
        # only names getxattr answers (`getfattr -d`, `cp -a` read every name listed): a
        # chunked file without a bulk hash has no user.hash, as in stock
        magic = _MAGIC_ROOT + (() if not s.is_file else _MAGIC_FILE if s.hash else
                               tuple(n for n in _MAGIC_FILE if n not in _MAGIC_HASH))
        return [*(n.encode() for n in magic), *(n for n in names if os.fsdecode(n) not in magic)]

    # -- read-ahead ----------------------------------------------------------------------
    def _prefetch_siblings(self, view: RevisionView, path: bytes) -> None:
        """Read-ahead of whole small files: when files of a directory listing are opened in
        order (``tar``, ``cp -r``, a build reading its sources), the next ones are downloaded
        in the background while the current one is read."""
        cut = path.rfind(b"/")
        listing = self._listings.get((id(view), path[:cut]))
        if listing is None:
            return
        i = listing.position(path[cut + 1:])
        if i is None:
            return
        entries = listing.entries
        last = listing.last_opened
        # the next file of the listing (directories and links in between are not opened, and
        # files in the cache were opened by the C session without coming here)
        # (a scan starting again at the first file is sequential, whatever came before)
        start = last + 1 if last >= 0 else listing.first_file
        sequential = i == listing.first_file or (
            0 <= start <= i and (i - start <= SEQUENTIAL_GAP) and all(
                not entries[k].is_file or self._opened_in_c(entries[k]) for k in range(start, i)))
        listing.last_opened = i
        if not sequential:
            return
        self._scan_until = time.monotonic() + SCAN_GRACE
        self._prefetch_from(listing, i + 1)

    def _opened_in_c(self, s: Stat) -> bool:
        """Whether an open of this listing entry may have been answered by the C session
        without Python (an unchunked file whose object is in the cache)."""
        e = s.entry
        return (not self._pins and e.hash is not None and not e.is_chunked
                and self.repo.cache.contains(e.hash))

    def _cached_listing(self, view: RevisionView, path: bytes) -> _Listing | None:
        """The listing of ``path`` if known or readable without a download, else None."""
        key = (id(view), path)
        listing = self._listings.get(key)
        if listing is None:
            entries = view.scandir_loaded(path)
            if entries is None:
                return None
            listing = _Listing(entries)
            with self._lock:
                if len(self._listings) >= 4096:
                    self._listings.pop(next(iter(self._listings)))
                self._listings[key] = listing
        return listing

    def _prefetch_tree(self, view: RevisionView, path: bytes, listing: _Listing) -> None:
        """During a tree scan, as the directory ``path`` is listed: keep read-ahead
        TREE_AHEAD_ENTRIES entries (at most TREE_AHEAD_BYTES) ahead in the order of a
        depth-first walk in listing order, the order of ``tar``, ``cp -r`` and ``find``.

        One walk (:class:`_TreeWalk`) goes on from one listing to the next: it remembers where
        in its order it entered each directory, so a listing it passed already only moves it
        on, and each entry is visited once. A listing it has not passed (the reader went
        elsewhere) starts a new walk there."""
        if not self._walk_lock.acquire(blocking=False):
            return  # another thread is walking: this one has nothing to add
        try:
            walk = self._walk
            at = walk.entered.get(path) if walk is not None and walk.view is view else None
            if at is None:
                walk = self._walk = _TreeWalk(self, view, path, listing)
                at = (0, 0)
            walk.advance(at[0] + TREE_AHEAD_ENTRIES, at[1] + TREE_AHEAD_BYTES, self.prefetcher)
        finally:
            self._walk_lock.release()

    def _prefetch_from(self, listing: _Listing, i: int) -> None:
        """Keep PREFETCH_FILES of ``listing`` from position ``i`` downloading: each call hands
        over only the files that came into that window, not the whole window again."""
        prefetcher = self.prefetcher
        entries = listing.entries
        j = max(i, listing.ahead + 1)
        end = min(len(entries), i + PREFETCH_FILES)
        while j < end and prefetcher.has_room():
            e = entries[j].entry
            if (e.is_regular and not e.is_chunked and not e.is_external and e.hash is not None
                    and 0 < e.size <= PREFETCH_MAX_SIZE):
                prefetcher.submit(e.hash, ObjectKind.FILE, e.compression, e.size)
            listing.ahead = j
            j += 1

    # -- extended attributes -------------------------------------------------------------
    def _magic(self, path: bytes, view: RevisionView, s: Stat, name: str) -> bytes | None:
        src = self.repo.source
        m = self.repo.state.manifest
        if name == "user.fqrn":
            return (self.repo.fqrn or "").encode()
        if name == "user.revision":
            return str(self.view.revision if self.view.revision is not None
                       else self.view.root_catalog.revision).encode()
        if name == "user.root_hash":
            return str(self.view.root_hash).encode()
        if name == "user.timestamp":
            return str(m.publish_timestamp).encode()
        if name == "user.host":
            return str(getattr(src, "current_url", None) or src.describe("")).encode()
        if name == "user.proxy":
            return str(getattr(src, "current_proxy", None) or "DIRECT").encode()
        if name == "user.expires":
            return str(max(0, int((self.expires - time.time()) / 60))).encode()
        if name == "user.nclg":
            return str(self.view.loaded_catalog_count()).encode()
        if name == "user.nioerr":  # I/O errors returned plus every network failure met
            stats = getattr(src, "stats", {}) or {}
            net = sum(int(stats.get(k, 0)) for k in ("nioerr", "failovers", "bad_data",
                                                      "proxy_failovers"))
            return str(self.io_errors + net).encode()
        if name == "user.version":
            return f"pycvmfs {__version__}".encode()
        if name == "user.uptime":
            return str(int((time.time() - self.started) / 60)).encode()
        if name == "user.pid":
            return str(os.getpid()).encode()
        if name == "user.fuse_requests":  # pycvmfs's own: requests served so far, per kind
            counters = self.session.counters() if self.session is not None else {}
            return json.dumps(counters, sort_keys=True).encode()
        if name in _MAGIC_FILE and s.is_file:
            if name == "user.hash":
                return str(s.hash).encode() if s.hash else None
            if name == "user.lhash":
                return str(s.hash).encode() if s.hash else None
            if name == "user.chunks":
                return str(max(1, len(view.chunks(path or b"/")))).encode()
            if name == "user.compression":
                return s.compression.config_name.encode()
        return None

    # -- life cycle ----------------------------------------------------------------------
    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
            log.info("read-ahead %s; cache %s", self.prefetcher.stats, self.repo.cache.stats)
        for v in self._views:
            v.close()


def run_mount(repo: Repository, mountpoint: str, options: MountOptions | None = None) -> None:
    """Mount and serve until unmounted (``pycvmfs umount`` / ``fusermount3 -u``) or signalled.

    SIGINT, SIGTERM and SIGHUP detach the mount lazily: it is gone from the name space at
    once and served until its last user (an open file, a working directory) lets go, as
    ``umount -l`` does. A second signal aborts the connection: whatever still uses the mount
    then gets ENOTCONN instead of waiting.
    """
    options = options or MountOptions()
    fs = CvmfsFilesystem(repo, options)
    fuse_options = ["ro", f"fsname={repo.fqrn}", "subtype=pycvmfs"]
    if options.check_permissions:
        fuse_options.append("default_permissions")
    if options.allow_other:
        fuse_options.append("allow_other")
    if options.debug:
        fuse_options.append("debug")
    # resolved before the mount: once mounted, a look at the path is a request to ourselves
    real_mountpoint = os.path.realpath(mountpoint)
    try:
        session = _fuse_lowlevel.Session(fs, mountpoint, fuse_options)
    except BaseException:
        fs.close()
        raise
    fs.session = session
    stopper = _Stopper(real_mountpoint)
    ended = threading.Event()

    def work() -> None:
        try:
            session.loop()
        except Exception:
            log.exception("FUSE worker failed")
        finally:
            ended.set()

    workers = [threading.Thread(target=work, name=f"pycvmfs-fuse-{i}", daemon=True)
               for i in range(max(1, options.threads))]
    for t in workers:
        t.start()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, lambda *_: stopper.request())
    try:
        while not ended.wait(max(0.05, min(_JANITOR_PERIOD, fs.expires - time.time()))):
            try:
                fs.housekeeping()
            except Exception:
                log.exception("housekeeping failed")
    finally:
        # the kernel ends the connection (every loop() returns) once the mount is gone
        if not _join(workers, _STOP_WAIT / 2):
            stopper.detach()
            if not _join(workers, _STOP_WAIT / 2):
                stopper.abort()
                _join(workers, _STOP_WAIT)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("FUSE requests: %s", session.counters())
        fs.close()
        if not any(t.is_alive() for t in workers):
            session.close()  # /dev/fuse is closed only now: no reply can go astray
            del session
            fs.session = None


def unmount(mountpoint: str, *, lazy: bool = False) -> subprocess.CompletedProcess:
    """Unmount a FUSE mount as its owner may (``fusermount3 -u``, else ``umount``); ``lazy``:
    detach it now and let it go when its last user does (``-z`` / ``-l``)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), mountpoint]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), mountpoint]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


def _join(threads: list[threading.Thread], seconds: float) -> bool:
    """Wait for all ``threads`` together at most ``seconds``; whether all ended."""
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


class _Stopper:
    """How a mount is ended from inside: a lazy unmount, then an abort of the connection.

    The connection is found at mount time (``/proc/self/mountinfo``: the mount's device
    number names it under ``/sys/fs/fuse/connections``), because a detached mount is no
    longer listed. Nothing here looks at the mount point itself: from this process, that
    would be a request to its own workers (``mountpoint`` is resolved before the mount).
    """

    def __init__(self, mountpoint: str) -> None:
        self.mountpoint = mountpoint
        self.connection = _fuse_connection(mountpoint)
        self.detached = False

    def request(self) -> None:
        """A signal: the first detaches, the next aborts."""
        if self.detached:
            self.abort()
        else:
            self.detach()

    def detach(self) -> None:
        if self.detached:
            return
        self.detached = True
        log.info("unmounting %s (lazily: served until its last user lets go)", self.mountpoint)
        try:
            proc = unmount(self.mountpoint, lazy=True)
        except (OSError, subprocess.SubprocessError) as e:
            log.warning("%s: cannot unmount: %s", self.mountpoint, e)
            return
        if proc.returncode != 0:
            log.warning("%s: %s", self.mountpoint, proc.stderr.strip() or "unmount failed")

    def abort(self) -> None:
        if self.connection is None:
            log.warning("%s: cannot abort the FUSE connection (not found in /proc/self/"
                        "mountinfo)", self.mountpoint)
            return
        control = Path("/sys/fs/fuse/connections") / str(self.connection) / "abort"
        try:
            if not control.exists() and os.geteuid() == 0:
                subprocess.run(["mount", "-t", "fusectl", "fusectl",
                                "/sys/fs/fuse/connections"], capture_output=True, check=False)
            control.write_text("1\n")
            log.info("aborted the FUSE connection of %s", self.mountpoint)
        except OSError as e:
            log.warning("%s: cannot abort the FUSE connection (%s): %s", self.mountpoint,
                        control, e.strerror or e)


def _fuse_connection(mountpoint: str) -> int | None:
    """The FUSE connection number of the mount at ``mountpoint`` (its device's minor)."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and unescape_mountinfo(fields[4]) == mountpoint:
                    rest = fields[fields.index("-") + 1:] if "-" in fields else []
                    if rest and rest[0].startswith("fuse"):
                        found = int(fields[2].split(":")[1])  # the last one: on top
    except (OSError, ValueError, IndexError):
        return None
    return found


def unescape_mountinfo(field: str) -> str:
    """A path field of ``/proc/*/mountinfo`` as the path it names (mountinfo writes space,
    tab, newline and backslash as octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
