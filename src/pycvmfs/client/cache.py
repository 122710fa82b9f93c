"""The client's local object cache: verified, decompressed objects keyed by content hash."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pycvmfs.client.quota import remove_dead_temporaries
from pycvmfs.format.compression import Compression
from pycvmfs.format.hashes import ContentHash, ObjectKind
from pycvmfs.storage.base import Source
from pycvmfs.storage.objects import CheckedBody

if TYPE_CHECKING:
    from pycvmfs.client.quota import QuotaManager

__all__ = ["Breadcrumb", "Download", "ObjectCache", "default_cache_dir"]


#: How long a reader waits for a download running elsewhere before fetching by itself.
ELSEWHERE_WAIT = 60.0


def default_cache_dir() -> Path:
    """``$PYCVMFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pycvmfs``, else ``~/.cache/pycvmfs``."""
    env = os.environ.get("PYCVMFS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pycvmfs"


@dataclass(frozen=True)
class Breadcrumb:
    """The newest revision accepted for a repository: ``<root hash>T<timestamp>R<revision>``."""

    root_hash: ContentHash
    timestamp: int
    revision: int

    def to_text(self) -> str:
        return f"{self.root_hash}T{self.timestamp}R{self.revision}"

    @classmethod
    def from_text(cls, text: str) -> Breadcrumb | None:
        text = text.strip()
        try:
            h, rest = text.split("T", 1)
            ts, rev = rest.split("R", 1)
            return cls(ContentHash.parse(h), int(ts), int(rev))
        except Exception:
            return None


class Download:
    """One object on its way into the cache: its compressed blocks are hashed and inflated into
    a temporary file in the cache's ``txn`` folder as they arrive; :meth:`finish` checks the
    hash and moves the object into place (after the quota recorded it), :meth:`abort` drops it.

    Made by :meth:`ObjectCache.begin_download`, which holds the cache's lock on the object until
    the download finishes or is aborted, so the object is in flight at most once: readers that
    need it meanwhile wait for it. A download that is neither finished nor aborted keeps that
    lock, so every path must end in one of them.
    """

    def __init__(self, cache: ObjectCache, h: ContentHash, kind: ObjectKind,
                 compression: Compression, what: str, release: Callable[[], None],
                 max_size: int | None = None) -> None:
        self.h, self.kind, self.what = h, kind, what
        self.max_size = max_size
        self.relpath = h.object_path(kind)
        self._cache = cache
        self._compression = compression
        self._release: Callable[[], None] | None = release
        self._fd = -1  # the temporary file, created with the first bytes by the writer
        self._tmp = ""
        self._size = 0  # decompressed bytes written
        self.reset()

    def _put(self, piece: bytes) -> None:
        if self._fd < 0:
            self._fd, self._tmp = self._cache.temporary("obj")
        view = memoryview(piece)
        while view:
            n = os.pwrite(self._fd, view, self._size)
            self._size += n
            view = view[n:]

    def reset(self) -> None:
        """Start over (a source retries the download from another server)."""
        if self._fd >= 0:
            os.ftruncate(self._fd, 0)
        self._size = 0
        self._body = CheckedBody(self.h, self._compression, self.what, self.max_size)

    @property
    def stored(self) -> int:
        """Compressed bytes received."""
        return self._body.stored

    def write(self, block: bytes) -> None:
        """Take the next block of the compressed body (see :class:`CheckedBody`: the temporary
        file never holds more than ``max_size + 1`` bytes; stored bytes past what that size
        allows raise :class:`SizeLimitError` at once)."""
        self._body.feed(block, self._put)

    def verify(self) -> int:
        """Check the body received: the hash of the compressed bytes, then the compression;
        returns the number of compressed bytes. Raises :class:`HashMismatchError` or
        :class:`IntegrityError` (the download stays open: a source may :meth:`reset` it)."""
        self._body.finish(self._put)
        return self._body.stored

    def commit(self) -> Path:
        """Move the verified object into the cache (call :meth:`verify` first)."""
        cache = self._cache
        dest = cache.path_for(self.h)
        try:
            if self._fd < 0:  # an empty object has had no bytes to write
                self._fd, self._tmp = cache.temporary("obj")
            size = self._size
            os.close(self._fd)
            self._fd = -1
            if cache.quota is not None:
                cache.quota.insert(self.h, size, self.kind)  # makes room before it appears
            try:
                os.replace(self._tmp, dest)
            except FileNotFoundError:  # first object of its <2 hex> directory
                dest.parent.mkdir(exist_ok=True)
                os.replace(self._tmp, dest)
        except BaseException:
            self.abort()
            raise
        cache.stats["bytes_downloaded"] += self.stored
        self._done()
        return dest

    def finish(self) -> Path:
        """:meth:`verify` and :meth:`commit`; on any error the download is aborted."""
        try:
            self.verify()
        except BaseException:
            self.abort()
            raise
        return self.commit()

    def abort(self) -> None:
        """Drop the temporary file (safe to call more than once, and after :meth:`finish`)."""
        if self._release is None:
            return
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)
        self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class ObjectCache:
    """Decompressed objects at ``<dir>/<2 hex>/<rest of textual hash>``.

    Objects are written to ``<dir>/txn/`` and renamed into place only after their hash was
    verified, so a crash never leaves a half-written object under its final name; temporary
    files of processes that died are removed when the cache is opened. Concurrent
    requests for one object within a process are collapsed into one download.

    With a :class:`~pycvmfs.client.quota.QuotaManager`, every object is recorded (and room made
    for it under the quota) before it is moved into place, cache hits are touched, and
    ``fetch(..., pin=True)`` pins the object (before looking for it, so that no other process
    can evict it between the lookup and the caller opening it) until :meth:`unpin`.
    """

    def __init__(self, directory: str | os.PathLike, quota: QuotaManager | None = None) -> None:
        self.directory = Path(directory)
        self._dir = str(self.directory)
        self._names = itertools.count()
        self.quota = quota
        self.txn = self.directory / "txn"
        self.txn.mkdir(parents=True, exist_ok=True)
        if quota is None:  # (a QuotaManager does this when it opens)
            remove_dead_temporaries(self.txn)
        self._locks: dict[str, threading.Lock] = {}
        #: elsewhere(h): an event set when another process (the mount's download process)
        #: has finished downloading ``h`` into this cache, or None when it is not doing so
        self.elsewhere: Callable[[ContentHash], threading.Event | None] | None = None
        self._locks_guard = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "bytes_downloaded": 0, "waits": 0}

    def temporary(self, prefix: str) -> tuple[int, str]:
        """A new file in ``txn/``, named ``<prefix>.<pid>.<cache>.<n>`` so that what a dead
        process left behind is recognised and removed (:func:`remove_dead_temporaries`)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            path = f"{self._dir}/txn/{prefix}.{os.getpid()}.{id(self):x}.{next(self._names)}"
            try:
                return os.open(path, flags, 0o644), path
            except FileExistsError:  # left by an earlier process that had the same pid
                continue

    def path_for(self, h: ContentHash) -> Path:
        return Path(self._where(h))

    def _where(self, h: ContentHash) -> str:
        """``path_for`` as a string: the hot paths (every open and read of a mount) check and
        open it without building a Path."""
        text = h.digest.hex() + h.algorithm.suffix
        return f"{self._dir}/{text[:2]}/{text[2:]}"

    def object_file_bytes(self, h: ContentHash) -> bytes:
        """:meth:`path_for` as bytes (what the FUSE session opens by itself)."""
        return os.fsencode(self._where(h))

    def contains(self, h: ContentHash) -> bool:
        return os.path.isfile(self._where(h))

    def _lock_for(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with self._lock_for(key):
            yield

    def fetch(self, source: Source, h: ContentHash, kind: ObjectKind,
              compression: Compression = Compression.ZLIB, *, what: str | None = None,
              pin: bool = False, max_size: int | None = None) -> Path:
        """The path of the decompressed object, downloading and verifying it if needed.

        With ``pin`` (and a quota), the object stays pinned until :meth:`unpin` is called.
        ``max_size`` bounds the decompressed size (the catalog's size of a file, a fixed cap
        for a certificate): a body past it fails (:class:`SizeLimitError`, the source tries
        its next server) having written at most that much, and leaves no temporary file.
        """
        if not pin or self.quota is None:
            return self._fetch(source, h, kind, compression, what, max_size)
        self.quota.pin(h)
        try:
            return self._fetch(source, h, kind, compression, what, max_size)
        except BaseException:
            self.quota.unpin(h)
            raise

    def lookup(self, h: ContentHash, *, pin: bool = False) -> Path | None:
        """The path of ``h`` if it is in the cache (counted as a hit), else None: never
        downloads. With ``pin`` (and a quota) a found object stays pinned until :meth:`unpin`."""
        if pin and self.quota is not None:
            self.quota.pin(h)
        dest = self._where(h)
        if os.path.isfile(dest):
            return self._hit(h, Path(dest))
        if pin and self.quota is not None:
            self.quota.unpin(h)
        return None

    def pin(self, h: ContentHash) -> None:
        """Protect a cached object from eviction (no-op without a quota)."""
        if self.quota is not None:
            self.quota.pin(h)

    def unpin(self, h: ContentHash) -> None:
        """Release one pin taken by :meth:`pin` or ``fetch(..., pin=True)``."""
        if self.quota is not None:
            self.quota.unpin(h)

    def begin_download(self, h: ContentHash, kind: ObjectKind,
                       compression: Compression = Compression.ZLIB, *,
                       what: str | None = None, max_size: int | None = None) -> Download | None:
        """A :class:`Download` of ``h`` into the cache, to be fed by the caller (for instance
        by a :class:`~pycvmfs.storage.batch.BatchFetcher`); None when the object is cached
        already or being downloaded by someone else right now. Never blocks. ``max_size``:
        as for :meth:`fetch`."""
        lock = self._lock_for(str(h))
        if not lock.acquire(blocking=False):
            return None
        try:
            if os.path.isfile(self._where(h)):
                lock.release()
                return None
            download = Download(self, h, kind, compression, what or h.describe(kind),
                                lock.release, max_size)
        except BaseException:
            if lock.locked():
                lock.release()
            raise
        self.stats["misses"] += 1
        return download

    def _fetch(self, source: Source, h: ContentHash, kind: ObjectKind,
               compression: Compression, what: str | None, max_size: int | None) -> Path:
        dest = self._where(h)
        if os.path.isfile(dest):
            return self._hit(h, Path(dest))
        waiter = self.elsewhere(h) if self.elsewhere is not None else None
        if waiter is not None:  # another process is downloading it: wait instead of a 2nd GET
            self.stats["waits"] += 1
            waiter.wait(ELSEWHERE_WAIT)
            if os.path.isfile(dest):
                return self._hit(h, Path(dest))
        lock = self._lock_for(str(h))
        lock.acquire()  # waits for a download of h in flight (a reader's or read-ahead's)
        if os.path.isfile(dest):
            lock.release()
            return self._hit(h, Path(dest))
        try:
            self.stats["misses"] += 1
            label = what or h.describe(kind)
            download = Download(self, h, kind, compression, label, lock.release, max_size)
        except BaseException:
            lock.release()
            raise
        try:

            def consume(blocks: Iterator[bytes]) -> int:
                download.reset()
                for block in blocks:
                    download.write(block)
                return download.verify()

            source.fetch(download.relpath, consume, what=label)
        except BaseException:
            download.abort()
            raise
        return download.commit()

    def _hit(self, h: ContentHash, dest: Path) -> Path:
        self.stats["hits"] += 1
        if self.quota is not None:
            self.quota.touch(h)
        return dest

    # -- breadcrumbs ---------------------------------------------------------------------
    def _breadcrumb_path(self, fqrn: str) -> Path:
        return self.directory / f"cvmfschecksum.{fqrn}"

    def read_breadcrumb(self, fqrn: str) -> Breadcrumb | None:
        try:
            return Breadcrumb.from_text(self._breadcrumb_path(fqrn).read_text())
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def write_breadcrumb(self, fqrn: str, crumb: Breadcrumb) -> None:
        """Record ``crumb`` unless a newer revision is recorded already."""
        with self._lock("breadcrumb:" + fqrn):
            old = self.read_breadcrumb(fqrn)
            newer = (crumb.revision, crumb.timestamp)
            if old is not None and (old.revision, old.timestamp) >= newer:
                return
            fd, tmp = tempfile.mkstemp(dir=self.txn, prefix=f"crumb.{os.getpid()}.")
            with os.fdopen(fd, "w") as f:
                f.write(crumb.to_text())
            os.replace(tmp, self._breadcrumb_path(fqrn))
