"""The FUSE file system: a read-only mount of a verified repository through libfuse3 (pyfuse3)."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import pyfuse3
import trio

from pycvmfs import __version__
from pycvmfs.client.fetcher import FetchProcess
from pycvmfs.client.files import Prefetcher, RepoFile, WouldBlock
from pycvmfs.client.repository import Repository
from pycvmfs.client.stat import Stat
from pycvmfs.client.view import RevisionView
from pycvmfs.errors import CvmfsError, PathError
from pycvmfs.format.hashes import ObjectKind
from pycvmfs.storage.batch import BatchFetcher
from pycvmfs.storage.http import HttpSource

__all__ = ["CvmfsFilesystem", "MountOptions", "run_mount"]

log = logging.getLogger("pycvmfs.fuse")

_MAGIC_ROOT = ("user.fqrn", "user.revision", "user.root_hash", "user.host", "user.proxy",
               "user.expires", "user.nclg", "user.nioerr", "user.version", "user.uptime",
               "user.timestamp", "user.pid")
_MAGIC_FILE = ("user.hash", "user.lhash", "user.chunks", "user.compression")


@dataclass
class MountOptions:
    ttl: int | None = None  # manifest re-check period; None: the root catalog's TTL
    max_ttl: int | None = None  # CVMFS_MAX_TTL cap
    allow_other: bool = False
    debug: bool = False
    selector: dict = field(default_factory=dict)  # tag / revision / root_hash / date: pinned
    prefetch_workers: int = 6  # read-ahead threads (0: no read-ahead; HTTP: batch transfers)
    prefetch_process: bool = True  # over HTTP: read-ahead in a child process (2nd core)
    catalog_idle: float = 600.0  # unload nested catalogs unused this long (0: never by time)


#: a sequential scan of a directory downloads the next files of its listing ahead of the reader
PREFETCH_FILES = 256
PREFETCH_MAX_SIZE = 4 << 20  # unchunked files up to this size
#: after files were read in listing order, the next directories listed within this many
#: seconds are read ahead from their first file
SCAN_GRACE = 2.0
#: read-ahead over HTTP: transfers at once, and requests queued at most
BATCH_PARALLEL = 16
BATCH_BACKLOG = 128
_JANITOR_PERIOD = 2.0  # seconds between closing dropped catalogs / unloading idle ones
_RETIRE_GRACE = 5.0  # a dropped catalog is closed this long after no lookup can reach it


def _make_prefetcher(repo: Repository, workers: int,
                     in_process: bool = False) -> Prefetcher | FetchProcess:
    """Read-ahead for a mount: over HTTP as batch transfers (many at once on keep-alive
    connections, the HTTP work in C), in a child process unless ``in_process``; else in
    ``workers`` threads."""
    cache, source = repo.cache, repo.source
    if isinstance(source, HttpSource):
        if not in_process:
            return FetchProcess(source, cache, parallel=BATCH_PARALLEL)
        batch = BatchFetcher(source, parallel=BATCH_PARALLEL,
                             on_error=lambda e: log.warning("read-ahead: %s", e))
        return Prefetcher(lambda h, kind, comp: cache.fetch(source, h, kind, comp),
                          cache.contains, batch=batch, begin=cache.begin_download,
                          backlog=BATCH_BACKLOG)
    return Prefetcher(lambda h, kind, comp: cache.fetch(source, h, kind, comp),
                      cache.contains, workers=workers)


class _Listing:
    """A directory listing of one revision, with the reply attributes computed once."""

    __slots__ = ("ahead", "attrs", "entries", "first_file", "index", "last_opened")

    def __init__(self, entries: list[Stat]) -> None:
        self.entries = entries
        self.attrs: list[pyfuse3.EntryAttributes | None] = [None] * len(entries)
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
        for mp in mps:
            self.open_refs[mp] = self.open_refs.get(mp, 0) + 1

    def closed(self, mps: tuple[bytes, ...]) -> None:
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
        tables = (self.open_refs, self.refs) if kernel else (self.open_refs,)
        return any(m == mp or m.startswith(below) for t in tables for m in t)


class _Inodes:
    """Kernel inode numbers. A directory keeps one number per path across revisions; a file
    or link gets one per path *and content*, and remembers the revision it came from, so the
    kernel's page cache of an inode never mixes two contents and open files keep theirs.
    Members of a hard-link group share one number."""

    def __init__(self) -> None:
        self._by_key: dict[object, int] = {b"": pyfuse3.ROOT_INODE}
        self._paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: b""}
        self._origin: dict[int, tuple[RevisionView, Stat]] = {}
        self._next = pyfuse3.ROOT_INODE + 1
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

    def path(self, ino: int) -> bytes:
        try:
            return self._paths[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None

    def origin(self, ino: int) -> tuple[RevisionView, Stat] | None:
        """For a file or link: the revision and attributes it was looked up in."""
        return self._origin.get(ino)


class CvmfsFilesystem(pyfuse3.Operations):
    """Serves one repository; a newer revision becomes visible to new lookups after the TTL
    while files already open keep reading the revision they were opened in."""

    enable_writeback_cache = False

    def __init__(self, repo: Repository, options: MountOptions | None = None) -> None:
        super().__init__()
        self.repo = repo
        self.options = options or MountOptions()
        self.started = time.time()
        self._ttl = 0
        self._ttl_for: RevisionView | None = None
        self.generation = 0
        self.view: RevisionView = repo.open_revision(**self.options.selector)
        self._views = [self.view]
        self.inodes = _Inodes()
        self._files: dict[int, RepoFile] = {}
        self._dirs: dict[int, tuple[_Listing, RevisionView]] = {}
        self._listings: dict[tuple[int, bytes], _Listing] = {}  # (view, dir) -> listing
        self._handle_mps: dict[int, tuple[bytes, ...]] = {}  # open handle -> mount points
        self.use = _CatalogUse()
        self._mountpoints: set[bytes] = set()  # nested catalog mount points seen so far
        self._forgotten: set[bytes] = set()  # mount points whose last inode was forgotten
        self.prefetcher: Prefetcher | FetchProcess | None = None
        if self.options.prefetch_workers > 0:
            self.prefetcher = _make_prefetcher(repo, self.options.prefetch_workers,
                                               not self.options.prefetch_process)
            self.view.readahead = self.prefetcher.submit
        self._next_fh = 1
        self._lock = threading.Lock()
        self.expires = time.time() + self.ttl
        self.io_errors = 0
        self._scan_until = 0.0  # sequential reading was seen until this long ago

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
            new.readahead = self.prefetcher.submit
        with self._lock:
            self.view = new
            self._views.append(new)
            self.generation += 1
        log.info("now serving revision %s (%s)", new.revision, new.root_hash)
        self._invalidate_entries()
        return True

    def _invalidate_entries(self) -> None:
        """Ask the kernel to forget every name it cached, so the next access of any path looks
        it up in the new revision (open files keep their inodes and contents)."""
        for parent, name in self.inodes.names():
            try:
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
            except Exception as e:
                log.debug("invalidate %r: %s", name, e)
                return

    async def updater(self) -> None:
        while True:
            await trio.sleep(max(1.0, self.expires - time.time()))
            await trio.to_thread.run_sync(self.check_for_update)

    # -- nested catalogs: loaded on first use, dropped when unused -----------------------
    def _note_mountpoints(self, view: RevisionView) -> None:
        """Remember the mount points of nested catalogs loaded (after work that may load)."""
        self._mountpoints.update(mp for mp in view.loaded_mountpoints() if mp)

    def unneeded_catalogs(self) -> list[bytes]:
        """Mount points to unload now: those whose inodes the kernel forgot, and those idle
        for ``catalog_idle`` seconds, unless a file or directory below them is open (or, for
        the first kind, the kernel learnt of an inode below them again)."""
        pending, self._forgotten = self._forgotten, set()
        out = [mp for mp in pending if not self.use.needed(mp)]
        if self.options.catalog_idle > 0:
            for v in self._views:
                out += [mp for mp in v.idle_mountpoints(self.options.catalog_idle)
                        if not self.use.needed(mp, kernel=False)]
        return out

    def drop_catalogs(self, mountpoints: list[bytes]) -> int:
        """Unload the catalogs at ``mountpoints`` (and below) in every revision served, and
        close those dropped more than a grace period ago; returns how many were dropped."""
        dropped = 0
        for mp in dict.fromkeys(mountpoints):
            for v in self._views:
                if v.drop_catalog(mp):
                    dropped += 1
                    log.debug("unloaded nested catalog %s", os.fsdecode(mp))
        for v in self._views:
            v.close_retired(_RETIRE_GRACE)
        return dropped

    async def janitor(self) -> None:
        while True:
            await trio.sleep(_JANITOR_PERIOD)
            todo = self.unneeded_catalogs()
            if todo or any(v.has_retired() for v in self._views):
                await trio.to_thread.run_sync(self.drop_catalogs, todo)

    async def forget(self, inode_list):
        for ino, n in inode_list:
            self._forgotten.update(self.use.forget(ino, n))

    def _looked_up(self, ino: int, path: bytes) -> None:
        self.use.looked_up(ino, path, self._mountpoints)

    # -- helpers -------------------------------------------------------------------------
    def _attrs(self, s: Stat, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = self.ttl
        a.attr_timeout = self.ttl
        a.st_mode = s.st_mode
        a.st_nlink = s.st_nlink
        a.st_uid = s.st_uid
        a.st_gid = s.st_gid
        a.st_rdev = s.st_rdev
        a.st_size = s.st_size
        a.st_blksize = 4096
        a.st_blocks = s.st_blocks
        ns = s.st_mtime_ns
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        return a

    def _call(self, path: bytes, fn, *args):
        """``fn(*args)`` with repository errors turned into FUSE errors (logged as I/O
        errors unless the path simply does not resolve)."""
        try:
            return fn(*args)
        except PathError as e:
            raise pyfuse3.FUSEError(e.errno or errno.ENOENT) from None
        except CvmfsError as e:
            self.io_errors += 1
            log.error("%s: %s", os.fsdecode(path) or "/", e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _stat_path(self, path: bytes) -> Stat:
        return self._call(path, self.view.lstat_canonical, path)

    async def _stat_fast(self, path: bytes) -> Stat:
        """The path's attributes: on the event loop when its catalog is loaded (one SQLite
        query), else in a thread (the catalog is downloaded and verified first)."""
        view = self.view
        try:
            s = self._call(path, view.lstat_loaded, path)
        except pyfuse3.FUSEError:
            raise
        except Exception:  # as in _run: one bad request never ends the mount
            self.io_errors += 1
            log.exception("lookup of %s failed", os.fsdecode(path) or "/")
            raise pyfuse3.FUSEError(errno.EIO) from None
        if s is None:
            s = await self._run(self._stat_path, path)
            self._note_mountpoints(view)
        return s

    async def _run(self, fn, *args):
        """Blocking work (catalog and object downloads) off the event loop. Anything but a
        FUSE error becomes EIO with a log line: one bad request never ends the mount."""
        try:
            return await trio.to_thread.run_sync(fn, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            self.io_errors += 1
            log.exception("request failed")
            raise pyfuse3.FUSEError(errno.EIO) from None

    # -- pyfuse3.Operations --------------------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self.inodes.path(parent_inode)
        if name == b".":
            path = parent
        elif name == b"..":
            path = parent[:parent.rfind(b"/")] if parent else b""
        else:
            path = parent + b"/" + name
        view = self.view
        s = await self._stat_fast(path)
        ino = self.inodes.for_stat(path, s, view, self.generation)
        self._looked_up(ino, path)
        return self._attrs(s, ino)

    async def getattr(self, inode, ctx=None):
        origin = self.inodes.origin(inode)
        if origin is not None:
            return self._attrs(origin[1], inode)
        s = await self._stat_fast(self.inodes.path(inode))
        return self._attrs(s, inode)

    async def readlink(self, inode, ctx):
        origin = self.inodes.origin(inode)
        s = origin[1] if origin else await self._run(self._stat_path, self.inodes.path(inode))
        if not s.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return s.symlink_target or b""

    async def opendir(self, inode, ctx):
        path = self.inodes.path(inode)
        view = self.view
        key = (id(view), path)
        listing = self._listings.get(key)
        if listing is None:  # a revision is immutable: listings can be reused
            entries = await self._run(self._call, path, view.scandir, path or b"/")
            self._note_mountpoints(view)
            listing = _Listing(entries)
            if len(self._listings) >= 4096:
                self._listings.pop(next(iter(self._listings)))
            self._listings[key] = listing
        if self.prefetcher is not None and time.monotonic() < self._scan_until:
            # a tree scan (tar, cp -r) lists a directory and then reads its files: start on
            # them now rather than at the first open, so no directory starts cold
            self._prefetch_from(listing, 0)
        mps = _CatalogUse.covering(path, self._mountpoints)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = (listing, view)
        if mps:
            self._handle_mps[fh] = mps
            self.use.opened(mps)
        return fh

    async def readdir(self, fh, start_id, token):
        got = self._dirs.get(fh)
        if got is None:
            return
        listing, view = got
        entries, attrs = listing.entries, listing.attrs
        for i in range(start_id, len(entries)):
            s = entries[i]
            a = attrs[i]
            if a is None:
                path = os.fsencode(s.path) if s.path != "/" else b""
                a = attrs[i] = self._attrs(s, self.inodes.for_stat(path, s, view,
                                                                   self.generation))
            if not pyfuse3.readdir_reply(token, s.entry.name, a, i + 1):
                break
            # readdirplus: the kernel counts every entry returned as a lookup
            self._looked_up(a.st_ino, os.fsencode(s.path))

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)
        self.use.closed(self._handle_mps.pop(fh, ()))

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        path = self.inodes.path(inode)
        origin = self.inodes.origin(inode)
        view = origin[0] if origin else self.view

        if origin is not None and origin[1].is_file and not origin[1].is_chunked:
            f: RepoFile = self._call(path, view.open_stat, origin[1])  # no I/O until read
            if self.prefetcher is not None:
                self._prefetch_siblings(view, path)
        else:
            f = await self._run(self._call, path, view.open, path)
            self._note_mountpoints(view)
        with self._lock:
            fh = self._next_fh
            self._next_fh += 1
            self._files[fh] = f
        mps = _CatalogUse.covering(path, self._mountpoints)
        if mps:
            self._handle_mps[fh] = mps
            self.use.opened(mps)
        fi = pyfuse3.FileInfo(fh=fh)
        fi.keep_cache = True  # a revision is immutable: the page cache stays valid
        return fi

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
        # the next file of the listing (directories and links in between are not opened)
        sequential = i == listing.first_file or (
            0 <= last < i and not any(entries[k].is_file for k in range(last + 1, i)))
        listing.last_opened = i
        if not sequential:
            return
        self._scan_until = time.monotonic() + SCAN_GRACE
        self._prefetch_from(listing, i + 1)

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
                prefetcher.submit(e.hash, ObjectKind.FILE, e.compression)
            listing.ahead = j
            j += 1

    async def read(self, fh, off, size):
        f = self._files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:  # bytes in the cache are read on the event loop: no thread hop
            return f.pread_nowait(size, off)
        except (WouldBlock, CvmfsError, OSError):
            pass  # a download, or an error: read (and report) from a thread

        def do_read() -> bytes:
            try:
                return f.pread(size, off)
            except CvmfsError as e:
                self.io_errors += 1
                log.error("%s: %s", f.name, e)
                raise pyfuse3.FUSEError(errno.EIO) from None

        return await self._run(do_read)

    async def release(self, fh):
        f = self._files.pop(fh, None)
        if f is not None:
            f.close()
        self.use.closed(self._handle_mps.pop(fh, ()))

    async def statfs(self, ctx):
        st = pyfuse3.StatvfsData()
        stats = self.view.root_catalog.statistics()
        entries = sum(stats[f"{s}_{k}"] for s in ("self", "subtree")
                      for k in ("regular", "symlink", "special", "dir"))
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 0
        st.f_files = entries
        st.f_ffree = st.f_favail = 0
        st.f_namemax = 255
        return st

    # -- extended attributes -------------------------------------------------------------
    def _magic(self, path: bytes, s: Stat, name: str) -> bytes | None:
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
        if name in _MAGIC_FILE and s.is_file:
            if name == "user.hash":
                return str(s.hash).encode() if s.hash else None
            if name == "user.lhash":
                return str(s.hash).encode() if s.hash else None
            if name == "user.chunks":
                return str(max(1, len(self.view.chunks(path or b"/")))).encode()
            if name == "user.compression":
                return s.compression.config_name.encode()
        return None

    async def getxattr(self, inode, name, ctx):
        path = self.inodes.path(inode)
        key = os.fsdecode(name)

        def get() -> bytes:
            s = self._stat_path(path)
            value = self._magic(path, s, key) if key in _MAGIC_ROOT + _MAGIC_FILE else None
            if value is not None:
                return value
            stored = s.entry.xattrs(what=os.fsdecode(path))
            if name in stored:
                return stored[name]
            raise pyfuse3.FUSEError(errno.ENODATA)

        return await self._run(get)

    async def listxattr(self, inode, ctx):
        path = self.inodes.path(inode)
        s = await self._run(self._stat_path, path)
        names = list(s.entry.xattrs(what=os.fsdecode(path)))
        magic = _MAGIC_ROOT + (_MAGIC_FILE if s.is_file else ())
        return [*(n.encode() for n in magic), *(n for n in names if os.fsdecode(n) not in magic)]

    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True


def run_mount(repo: Repository, mountpoint: str, options: MountOptions | None = None) -> None:
    """Mount and serve until unmounted (``pycvmfs umount`` / ``fusermount3 -u``) or signalled."""
    options = options or MountOptions()
    fs = CvmfsFilesystem(repo, options)
    fuse_options = set(pyfuse3.default_options)
    fuse_options.discard("default_permissions")
    fuse_options |= {"ro", f"fsname={repo.fqrn}", "subtype=pycvmfs", "default_permissions"}
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.debug:
        fuse_options.add("debug")
    pyfuse3.init(fs, mountpoint, fuse_options)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.updater)
            nursery.start_soon(fs.janitor)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)
        if fs.prefetcher is not None:
            fs.prefetcher.close()
            log.info("read-ahead %s; cache %s", fs.prefetcher.stats, fs.repo.cache.stats)
        for v in fs._views:
            v.close()

